"""Per-modality event types, on-device feature extraction and scorers.

Importing this package (and `modalities.events`, and every ``*.features`` module) needs numpy
only: the same feature code runs on the phone, in federated clients and in the benches.
"""
