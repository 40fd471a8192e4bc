"""Data: manifests, adapters, splits, stats and the synthetic dataset."""

from mlkit.data.adapters import from_coco, from_csv, from_folders, from_imet
from mlkit.data.manifest import LABEL_SEP, TASKS, Manifest, read_manifest, update_column, write_manifest
from mlkit.data.split import iterative_stratification, split_manifest
from mlkit.data.stats import format_stats, manifest_stats
from mlkit.data.synth import synthesize

__all__ = [
    "LABEL_SEP", "TASKS", "Manifest", "format_stats", "from_coco", "from_csv", "from_folders", "from_imet",
    "iterative_stratification", "manifest_stats", "read_manifest", "split_manifest", "synthesize", "update_column",
    "write_manifest",
]
