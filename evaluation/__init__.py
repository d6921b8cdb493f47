"""Dataset loaders, protocols, metrics and the `cadence bench` harness."""
