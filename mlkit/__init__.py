"""mlkit: transfer learning on image collections with Keras 3.

Stage 1 caches a frozen backbone's features to HDF5, stage 2 grid-searches
small top models on that cache, stage 3 fine-tunes the best one end to end and
exports a model that takes raw images and returns labels.

Example:
    import mlkit
    manifest = mlkit.synthesize("data/synth", task="multilabel", n=600, size=64)
    mlkit.split_manifest(manifest, val=0.15, test=0.15)
    cache = mlkit.cache_features(manifest, backbone="mobilenetv2", weights="none", image_size=64)
    summary = mlkit.tune_top(cache.path, layers=[1, 2], units=[64, 128])
    result = mlkit.finetune(cache.path, "best", freeze="all", epochs=5)
    predictions = mlkit.predict(result.model_path, ["data/synth/images"])
"""

__version__ = "0.1.0"


# Public name -> the module that defines it. TensorFlow loads only when a stage function is
# first used, so `import mlkit` stays fast; `__all__` and `__dir__` still show every name.
_LAZY = {
    "cache_features": "mlkit.bottlenecks.extract",
    "fit_zmuv_stats": "mlkit.bottlenecks.extract",
    "merge_shards": "mlkit.bottlenecks.shards",
    "open_cache": "mlkit.bottlenecks.cache",
    "tune_top": "mlkit.tuning",
    "evaluate_scores": "mlkit.evaluation.evaluate",
    "read_manifest": "mlkit.data",
    "write_manifest": "mlkit.data",
    "split_manifest": "mlkit.data",
    "synthesize": "mlkit.data",
    "manifest_stats": "mlkit.data",
    "parse_run_name": "mlkit.runs",
    "format_run_name": "mlkit.runs",
    "parse_rule": "mlkit.evaluation.decisions",
    "finetune": "mlkit.models.finetune",
    "ensemble": "mlkit.models.ensemble",
    "predict": "mlkit.models.predict",
    "export_model": "mlkit.models.export",
    "load_model": "mlkit.models.export",
    "fit_vocabulary": "mlkit.text",
    "encode_captions": "mlkit.text",
    "caption_vectorizer": "mlkit.text",
    "audit": "mlkit.auditing.run",
    "apply_corrections": "mlkit.auditing.apply",
    "crop": "mlkit.looking.crop",
    "look": "mlkit.looking.look",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'mlkit' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
