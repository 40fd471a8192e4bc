"""`mlkit demo`: the whole pipeline on the built-in synthetic dataset, offline, on CPU.

Synthesise -> split -> cache features -> tune a small grid of tops ->
fine-tune the best end to end -> fit the decision on validation and report on
test -> export a SavedModel -> label a few test images. Every stage is the
public function a user would call, with the settings printed, so the demo
doubles as a worked example. The backbone has random weights (`--weights
none`: nothing is downloaded), so its numbers show the pipeline working,
not what an ImageNet backbone reaches.
"""

import time
from dataclasses import dataclass
from pathlib import Path

from mlkit.models.finetune import finetune


@dataclass(frozen=True)
class DemoSettings:
    """The demo's sizes: the full run, or `quick` for CI."""

    images: int = 600
    size: int = 32
    backbone: str = "vgg16"
    units: tuple = (64, 128)
    top_lr: float = 0.01
    top_epochs: int = 60
    # Random weights: the head trains on augmented images with SGD (measured on the demo's own data);
    # finetune's defaults are for pretrained backbones.
    freeze: str = "all"
    ft_optimizer: str = "sgd"
    ft_lr: float = 0.01
    ft_epochs: int = 100
    ft_patience: int = 30
    augment: str = "hwf"


FULL = DemoSettings()
QUICK = DemoSettings(images=120, backbone="mobilenetv2", units=(16,), top_epochs=3, ft_epochs=1)


def step(title):
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def run_demo(workdir="demo", quick=False):
    """Runs the pipeline in `workdir` and returns the fine-tuning result.

    Args:
        workdir: folder for the data and the workspace (bottlenecks/, tuning/, models/). Defaults to "demo".
        quick: the smaller CI version. Defaults to False.
    """
    from mlkit.bottlenecks.extract import cache_features
    from mlkit.data.split import split_manifest
    from mlkit.data.synth import synthesize
    from mlkit.models.export import export_model
    from mlkit.models.predict import format_predictions, predict
    from mlkit.tuning.search import tune_top

    settings = QUICK if quick else FULL
    work = Path(workdir)
    started = time.perf_counter()
    data = work / "data"
    step(f"1/6 synthesise {settings.images} multilabel images of {settings.size} px (shapes and colours)")
    synthesize(data, task="multilabel", n=settings.images, size=settings.size, seed=0)
    split_manifest(data / "manifest.csv", val=0.15, test=0.15, seed=0)
    print(f"manifest: {data / 'manifest.csv'}")

    step(f"2/6 cache {settings.backbone} features (random weights, nothing downloaded)")
    cache = cache_features(data / "manifest.csv", work, backbone=settings.backbone, weights="none",
                           image_size=settings.size, progress=False)
    print(f"cache: {cache.path} ({cache.rows} rows)")

    step(f"3/6 tune top models on the cache (units {', '.join(map(str, settings.units))})")
    summary = tune_top(cache.path, work, layers=1, units=list(settings.units), lr=settings.top_lr, batch=32,
                       epochs=settings.top_epochs, verbose=False)
    print(summary[["rank", "run", "val_loss"]].to_string(index=False))

    step(f"4/6 fine-tune the best top end to end (--freeze {settings.freeze}, --augment {settings.augment})")
    result = finetune(cache.path, "best", work, freeze=settings.freeze, optimizer=settings.ft_optimizer,
                      lr=settings.ft_lr, batch=32,
                      epochs=settings.ft_epochs, augment=settings.augment, patience=settings.ft_patience,
                      progress=False)
    print(result.describe())

    step("5/6 export a SavedModel that serves with TensorFlow alone")
    for fmt, path in export_model(result.model_path, ["savedmodel"]).items():
        print(f"{fmt}: {path}")

    step("6/6 label three test images with the exported model")
    import pandas as pd

    table = pd.read_csv(data / "manifest.csv")
    images = [str(data / p) for p in table[table.split == "test"].image[:3]]
    print(format_predictions(predict(result.model_path, images)))

    name, finetuned, cached = result.headline
    print(f"\ndone in {time.perf_counter() - started:.0f} s. Test {name}: cached top {cached:.3f}, "
          f"fine-tuned {finetuned:.3f}. Everything is under {work}/.")
    return result


def register(subparsers):
    """Adds `mlkit demo`."""
    parser = subparsers.add_parser(
        "demo", help="the whole pipeline on built-in synthetic data, offline, on CPU",
        description="Synthesise a multilabel image set, split it, cache features, tune a small grid of top "
                    "models, fine-tune the best end to end, export it and label a few images, printing where "
                    "each artifact goes and the test metrics of the cached top and of the fine-tuned model.")
    parser.add_argument("--workdir", default="demo", help="workspace folder for everything (default: ./demo)")
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (for CI): fewer images and epochs")
    parser.set_defaults(func=_run_demo_command)


def _run_demo_command(args):
    run_demo(args.workdir, quick=args.quick)
    return 0
