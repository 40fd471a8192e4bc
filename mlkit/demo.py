"""`mlkit demo`: the three stages on the built-in synthetic dataset, on CPU, in a few minutes.

Synthesise and split a multilabel set -> stage 1, cache a frozen backbone's
features -> stage 2, tune a small grid of tops on the cache -> stage 3,
fine-tune the best top end to end until validation stops improving, fit the
decision and report on test -> export a SavedModel -> label a few test images
-> a summary of what was made and measured. Every step is the public function
a user would call, so the demo doubles as a worked example.

It shows the pretrained path when it can: MobileNetV2 with Keras's ImageNet
weights, taken from Keras's cache or downloaded (it says which), or from a
weights file given with --weights. Offline with nothing cached, it says so in
one line and uses random weights instead (a VGG16 at 32 px, whose head alone
is trained), so the run still shows every stage, but not what a pretrained
backbone reaches.
"""

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from mlkit.models.finetune import finetune


@dataclass(frozen=True)
class DemoSettings:
    """The demo's sizes and settings for one kind of backbone weights."""

    images: int
    size: int
    backbone: str
    units: tuple = (64, 128)
    top_lr: float = 0.01
    top_epochs: int = 40
    freeze: str = "75%"
    ft_optimizer: str = "adam"
    ft_lr: float = 1e-4
    ft_epochs: int = 20
    ft_patience: int = 3
    augment: str = "hwzf"


# ImageNet MobileNetV2 at 96 px: fine-tuning its last quarter with finetune's own defaults.
PRETRAINED = DemoSettings(images=400, size=96, backbone="mobilenetv2")
# Random weights cannot be fine-tuned usefully in minutes: the head trains alone, on augmented images, with SGD
# (measured on the demo's own data), until validation stops improving.
RANDOM = DemoSettings(images=480, size=32, backbone="vgg16", freeze="all", ft_optimizer="sgd", ft_lr=0.01,
                      ft_epochs=40, ft_patience=5, augment="hwf")
QUICK = DemoSettings(images=120, size=32, backbone="mobilenetv2", units=(16,), top_epochs=3, freeze="all",
                     ft_epochs=1, augment="hwf")
# Keras's file name for MobileNetV2's headless ImageNet weights at the demo's size.
IMAGENET_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"
DOWNLOAD_HOST = ("storage.googleapis.com", 443)


def step(title):
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def keras_cache_file():
    """Where Keras keeps the demo's ImageNet weights once downloaded."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models" / IMAGENET_FILE


def choose_weights(weights=None, quick=False):
    """(settings, weights, one line saying which weights the demo uses and where they came from).

    A given weights file wins; then Keras's cache; then a download when the
    host answers within 3 s; else random weights, said plainly.
    """
    if quick:
        return QUICK, "none", "random weights (--quick: nothing is downloaded)"
    if weights:
        return PRETRAINED, str(weights), f"weights from {weights}"
    cached = keras_cache_file()
    if cached.is_file():
        return PRETRAINED, "imagenet", f"ImageNet weights from Keras's cache ({cached})"
    try:
        socket.create_connection(DOWNLOAD_HOST, timeout=3).close()
    except OSError:
        return RANDOM, "none", (f"offline, and no ImageNet weights in Keras's cache ({cached.parent}): random "
                                "weights instead, so the numbers show the pipeline working, not what a pretrained "
                                "backbone reaches")
    return PRETRAINED, "imagenet", f"ImageNet weights downloaded by Keras into its cache ({cached})"


def run_demo(workdir="demo", quick=False, weights=None):
    """Runs the three stages in `workdir`, prints a summary, and returns the fine-tuning result.

    Args:
        workdir: folder for the data and the workspace (bottlenecks/, tuning/, models/). Defaults to "demo".
        quick: the smaller CI version (random weights, a few epochs). Defaults to False.
        weights: a MobileNetV2 weights file to use instead of Keras's ImageNet weights. Defaults to None.
    """
    settings, weights, source = choose_weights(weights, quick)
    work = Path(workdir)
    started = time.perf_counter()
    times = {}
    print(f"mlkit demo: {settings.backbone} at {settings.size} px, {source}", flush=True)
    data = make_data(work, settings)
    times["data"] = time.perf_counter() - started
    cache, summary, result, times["stages"] = run_stages(work, data, settings, weights)
    export = export_and_label(work, data, result)
    print_summary(work, settings, source, cache, summary, result, export, times, time.perf_counter() - started)
    return result


def make_data(work, settings):
    from mlkit.data.split import split_manifest
    from mlkit.data.synth import synthesize

    data = work / "data"
    step(f"data: synthesise {settings.images} multilabel images of {settings.size} px (shapes and colours), split "
         "70/15/15")
    synthesize(data, task="multilabel", n=settings.images, size=settings.size, seed=0)
    split_manifest(data / "manifest.csv", val=0.15, test=0.15, seed=0)
    print(f"manifest: {data / 'manifest.csv'}")
    return data


def run_stages(work, data, settings, weights):
    """Stages 1-3; returns the cache, the tuning summary, the fine-tuning result and each stage's seconds."""
    from mlkit.bottlenecks.extract import cache_features
    from mlkit.tuning.search import tune_top

    seconds = {}
    began = step(f"stage 1 of 3: cache {settings.backbone} features once (mlkit cache-features)")
    cache = cache_features(data / "manifest.csv", work, backbone=settings.backbone, weights=weights,
                           image_size=settings.size, progress=True)
    print(f"cache: {cache.path} ({cache.rows} rows)")
    seconds["cache-features"] = time.perf_counter() - began
    began = step(f"stage 2 of 3: tune top models on the cached features (mlkit tune-top; units "
                 f"{', '.join(map(str, settings.units))}, each until validation stops improving)")
    summary = tune_top(cache.path, work, layers=1, units=list(settings.units), lr=settings.top_lr, batch=32,
                       epochs=settings.top_epochs, verbose=True)
    seconds["tune-top"] = time.perf_counter() - began
    began = step(f"stage 3 of 3: fine-tune the best top with its backbone (mlkit finetune; --freeze {settings.freeze}, "
                 f"--augment {settings.augment}, stops when validation loss stops improving)")
    result = finetune(cache.path, "best", work, freeze=settings.freeze, optimizer=settings.ft_optimizer,
                      lr=settings.ft_lr, batch=32, epochs=settings.ft_epochs, augment=settings.augment,
                      patience=settings.ft_patience, progress=True)
    print(result.describe())
    seconds["finetune"] = time.perf_counter() - began
    return cache, summary, result, seconds


def export_and_label(work, data, result):
    """Exports a SavedModel and labels three test images with the model; returns the SavedModel's path."""
    import pandas as pd

    from mlkit.models.export import export_model
    from mlkit.models.predict import format_predictions, predict

    step("export a SavedModel that serves with TensorFlow alone (mlkit export)")
    path = export_model(result.model_path, ["savedmodel"])["savedmodel"]
    print(f"savedmodel: {path}")
    step("label three test images with the fine-tuned model (mlkit predict --top 3)")
    table = pd.read_csv(data / "manifest.csv")
    images = [str(data / p) for p in table[table.split == "test"].image[:3]]
    print(format_predictions(predict(result.model_path, images, top=3)))
    return path


def finetune_epochs(result):
    """(epochs run, best epoch), counted from 1, from the fine-tuning log."""
    from mlkit.models.finetune import read_log

    log = read_log(result.csv_path)
    losses = [float(row["val_loss"]) for row in log if row.get("val_loss")]
    return len(log), (losses.index(min(losses)) + 1 if losses else 0)


def print_summary(work, settings, source, cache, summary, result, export, times, total):
    seconds = times["stages"]
    name, finetuned, cached = result.headline
    ran, best = finetune_epochs(result)
    rows = [
        ("data", f"{cache.rows} synthetic images in {work / 'data'} ({times['data']:.0f} s)"),
        ("backbone", f"{settings.backbone} at {settings.size} px, {source}"),
        ("stage 1", f"features cached once: {cache.path} ({seconds['cache-features']:.0f} s)"),
        ("stage 2", f"{len(summary)} tops tuned; best {summary.run.iloc[0]}, val_loss "
                    f"{summary.val_loss.iloc[0]:.3f} ({seconds['tune-top']:.0f} s)"),
        ("stage 3", f"fine-tuned {ran} epochs, stopped {ran - best} after the best (epoch {best}) "
                    f"({seconds['finetune']:.0f} s)"),
        ("test", f"{name} {cached:.3f} with the cached top alone, {finetuned:.3f} fine-tuned"),
        ("model", f"{result.model_path}, SavedModel {export}"),
        ("total", f"{total / 60:.1f} min"),
    ]
    step("summary")
    print("\n".join(f"{key:<9} {value}" for key, value in rows))
    print(f"\nnext: mlkit predict {result.model_path} {work / 'data' / 'manifest.csv'} --split test --top 3 "
          f"--workdir {work}")


def register(subparsers):
    """Adds `mlkit demo`."""
    parser = subparsers.add_parser(
        "demo", help="the three stages on built-in synthetic data, on CPU, in a few minutes",
        description="Synthesise a multilabel image set, cache a backbone's features (stage 1), tune a small grid of "
                    "top models (stage 2), fine-tune the best end to end until validation stops improving (stage "
                    "3), export it, label a few images and print a summary. Uses MobileNetV2 with ImageNet weights "
                    "from Keras's cache or a download (it says which); offline with none cached, random weights.")
    parser.add_argument("--workdir", default="demo", help="workspace folder for everything (default: ./demo)")
    parser.add_argument("--weights", default=None,
                        help="a MobileNetV2 weights file to use instead of Keras's ImageNet weights")
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (for CI): random weights, "
                        "fewer images and epochs")
    parser.set_defaults(func=_run_demo_command)


def _run_demo_command(args):
    run_demo(args.workdir, quick=args.quick, weights=args.weights)
    return 0
