"""Stage 2: top models tuned on the cached features.

Public names are re-exported here by hand, one line each, but imported on
first use: `mlkit --help` and a rerun of a finished grid never pay for
importing TensorFlow.
"""

import importlib

_EXPORTS = {
    "tune_top": "mlkit.tuning.search",
    "build_top_model": "mlkit.tuning.top",
    "load_top": "mlkit.tuning.top",
    "trainable_top": "mlkit.tuning.top",
    "TopConfig": "mlkit.tuning.config",
    "lr_find": "mlkit.tuning.lr_range",
    "load_runs": "mlkit.tuning.compare",
    "plot_runs": "mlkit.tuning.compare",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mlkit.tuning' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
