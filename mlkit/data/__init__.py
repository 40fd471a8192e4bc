"""Data: manifests, adapters, splits, stats and the synthetic dataset."""

from mlkit.data.adapters import from_coco
from mlkit.data.adapters import from_csv
from mlkit.data.adapters import from_folders
from mlkit.data.adapters import from_imet
from mlkit.data.manifest import LABEL_SEP
from mlkit.data.manifest import TASKS
from mlkit.data.manifest import Manifest
from mlkit.data.manifest import read_manifest
from mlkit.data.manifest import update_column
from mlkit.data.manifest import write_manifest
from mlkit.data.split import iterative_stratification
from mlkit.data.split import split_manifest
from mlkit.data.stats import format_stats
from mlkit.data.stats import manifest_stats
from mlkit.data.synth import synthesize
