"""The audit: duplicates, split leaks, likely label errors and outliers, found from a cache.

`mlkit.audit(cache)` is the entry point (the package is named `auditing`, so
that `mlkit.audit` stays the function). Public names are imported on first
use, so `mlkit --help` never pays for TensorFlow or faiss.
"""

import importlib

_EXPORTS = {
    "audit": "mlkit.auditing.run",
    "AuditResult": "mlkit.auditing.run",
    "AuditConfig": "mlkit.auditing.config",
    "apply_corrections": "mlkit.auditing.apply",
    "read_duplicate_groups": "mlkit.data.split",
    "label_quality": "mlkit.auditing.labels",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mlkit.auditing' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
