"""Data: manifests, adapters, splits, the synthetic dataset."""
