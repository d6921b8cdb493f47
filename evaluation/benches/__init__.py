"""Bench modules: each registers one or more benches with `evaluation.bench.register`.

Keep top-level imports light (numpy at most); import heavy libraries inside the bench function.
"""
