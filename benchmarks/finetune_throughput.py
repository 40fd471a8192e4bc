"""How close does `mlkit finetune`'s training come to the network's own train-step speed?

Generates seeded JPEGs of about 300 x 400 px and a multilabel manifest (as
cache_throughput.py does), caches features and tunes one top (weights none),
then in one process measures, for the same network, batch size and freezing:

  finetune img/s   the training phase of `mlkit.models.finetune`: images read from
                   disk, decoded (PIL) and resized in parallel through tf.data,
                   augmented per batch, prefetched, trained with Keras `fit` and the
                   finetune callbacks. Epochs after the first, which pays for
                   tracing and for filling the in-memory image cache.
  train-step img/s `fit` of the same compiled network on in-memory float32
                   tensors of the same shape and count: no decoding, no
                   augmentation, no callbacks. Also epochs after the first.

The ratio is the pipeline's overhead. Target: 0.8 on a GPU, where the train
step is fast enough for the input pipeline to matter; on a 2-core CPU the
train step dominates and decoding competes with it for the same cores.

Run:
    python benchmarks/finetune_throughput.py                                 # mobilenetv2, 96 px, freeze 0
    python benchmarks/finetune_throughput.py --backbone resnet50 --size 224 --images 256 --freeze all
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cache_throughput import make_images


class EpochTimer:
    """Keras callback recording each epoch's wall time."""

    def __new__(cls):
        import keras

        class Timer(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.seconds = []

            def on_epoch_begin(self, epoch, logs=None):
                self.started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self.started)

        return Timer()


def steady_rate(images, seconds):
    """Images per second over the epochs after the first."""
    later = seconds[1:] or seconds
    return images * len(later) / sum(later)


def measure(args, folder):

    from mlkit.bottlenecks.extract import cache_features
    from mlkit.models.augment import augmentation_layers
    from mlkit.models.finetune import FinetuneConfig, _Job, make_strategy
    from mlkit.models.network import apply_freeze
    from mlkit.tuning.search import tune_top

    manifest = make_images(folder / "data", args.images, seed=0)
    from mlkit.data.split import split_manifest

    split_manifest(manifest, val=0.1, test=0.1, seed=0)
    work = folder / "ws"
    cache = cache_features(manifest, work, backbone=args.backbone, weights="none", image_size=args.size,
                           batch_size=64, progress=False)
    tune_top(cache.path, work, layers=1, units=64, lr=0.01, batch=args.batch, epochs=1, verbose=False)
    config = FinetuneConfig(freeze=args.freeze, batch=args.batch, epochs=args.epochs, augment=args.augment,
                            lr=1e-4).validate()
    from mlkit.bottlenecks.cache import open_cache
    from mlkit.models.finetune import select_top

    opened = open_cache(cache.path)
    job = _Job(opened, work, select_top(work, opened, "best"), config, make_strategy("none"), None)
    apply_freeze(job.network, job.backbone, config.frozen)
    job.compile()
    train_paths, train_labels = job.rows.split("train")
    count = len(train_paths)

    timer = EpochTimer()
    pipeline = job.rows.dataset(train_paths, job.targets(train_labels), batch_size=args.batch, shuffle=True,
                                augment=augmentation_layers(config.augment, 0))
    job.network.fit(pipeline, epochs=args.epochs, callbacks=[timer], verbose=0, shuffle=False)
    finetune_rate = steady_rate(count, timer.seconds)

    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (count, args.size, args.size, 3)).astype("float32")
    targets = job.targets(train_labels)
    timer = EpochTimer()
    job.network.fit(pixels, targets, batch_size=args.batch, epochs=args.epochs, callbacks=[timer], verbose=0)
    step_rate = steady_rate(count, timer.seconds)
    return count, finetune_rate, step_rate


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="mobilenetv2")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--images", type=int, default=320, help="images generated (80%% train)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--freeze", default="0", help="all, a number of layers or a block name (default 0)")
    parser.add_argument("--augment", default="hwf")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per measurement; the first is not timed")
    args = parser.parse_args(argv)
    import tensorflow as tf

    device = "GPU" if tf.config.list_physical_devices("GPU") else f"CPU ({os.cpu_count()} cores)"
    with tempfile.TemporaryDirectory() as folder:
        count, finetune_rate, step_rate = measure(args, Path(folder))
    print(f"finetune throughput on {device}, {platform.python_version()}, TF {tf.__version__}")
    print(f"{args.backbone} at {args.size} px, batch {args.batch}, freeze {args.freeze}, augment {args.augment}, "
          f"{count} training images, epochs 2-{args.epochs}")
    print(f"  finetune   {finetune_rate:8.1f} img/s")
    print(f"  train step {step_rate:8.1f} img/s")
    print(f"  ratio      {finetune_rate / step_rate:8.2f}   (target 0.8 on a GPU)")


if __name__ == "__main__":
    main()
