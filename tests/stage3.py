"""A tiny tuned workspace for stage-3 tests: synthetic images, a cache, one tuned top."""

from pathlib import Path

from mlkit.bottlenecks.extract import cache_features
from mlkit.data.split import split_manifest
from mlkit.data.synth import synthesize
from mlkit.tuning.search import tune_top

SIZE = 32
BACKBONE = "mobilenetv2"
# A small caption branch: cheap to train, and enough to see captions change the scores.
CAPTION_BRANCH = {"text": "lstm", "text_units": 8, "embed_dim": 8}


def tuned_workspace(root, task="multilabel", n=60, backbone=BACKBONE, captions=""):
    """(workdir, cache path, top run name) for a tiny dataset of `task`.

    `captions`: "" for an image-only top, "both" for an image + caption top,
    "only" for a caption-only top (the cache then holds caption tokens).
    """
    root = Path(root)
    data = root / "data"
    synthesize(data, task=task, n=n, size=SIZE, seed=0)
    split_manifest(data / "manifest.csv", val=0.25, test=0.25, seed=0)
    work = root / "ws"
    result = cache_features(data / "manifest.csv", work, backbone=backbone, weights="none", image_size=SIZE,
                            batch_size=32, progress=False, captions=bool(captions), taps="last")
    text = dict(CAPTION_BRANCH, captions=True, text_only=captions == "only") if captions else {}
    summary = tune_top(result.path, work, layers=1, units=16, lr=0.01, batch=16, epochs=2, verbose=False, **text)
    return work, result.path, summary.run.iloc[0]
