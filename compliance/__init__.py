"""Compliance: consent ledger, retention, data-subject requests and a tamper-evident audit log.

Modules: `consent` (per user, modality and purpose), `audit` (hash chain + signed seals),
`subjects` (export / erasure across registered data holders), `retention` (policy file and
purge), `device_store` (encrypted raw events on the phone), `models` (the tables).
Imports stay light here; import the submodule you need.
"""
