"""Compliance: consent ledger, retention, data-subject requests and a tamper-evident audit log.

Modules: `consent` (per user, modality and purpose), `audit` (hash chain + signed seals),
`subjects` (export / erasure across registered data holders), `retention` (policy file and
purge), `models` (the tables). The phone's encrypted raw-event store is the app's own
(`mobile_client/raw_store.py`).
Imports stay light here; import the submodule you need.
"""
