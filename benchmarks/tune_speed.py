"""How fast stage 2 is: three ratios measured in one process.

(a) One epoch of a top model on cached resnet50 features vs one epoch of the
    same top trained through the frozen resnet50 (weights=None) on images, per
    image, at batch 32 and 128. The image side uses 128 random images already
    decoded and sized in memory (no JPEG decoding or resizing, which favours
    it), timed per image and extrapolated to the feature side's row count;
    the feature side uses the tune-top data pipeline. Target: at least 100x.
(b) FLOP rate training a 2x1024 top on 10,000 x 2048 features (batch 128,
    80 sigmoid outputs) through the tune-top pipeline, divided by the rate of
    a plain 2048 x 2048 float32 matmul in the same process. Training FLOPs
    are counted as 6 per weight per row (forward 2, backward 4); biases,
    activations and dropout are not counted. Target: at least 0.5.
(c) Trial overhead outside `fit` in a `tune_top` grid of 10-epoch trials:
    1 - (sum of the trials' fit time) / (wall time of the tune_top call),
    so data loading, model building, KerasTuner bookkeeping and file writing
    all count as overhead. Target: under 5%.

Usage:
    python benchmarks/tune_speed.py [--images 128] [--rows 10000] [--trials 3]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

FEATURES = 2048
LABELS = 80


def make_feature_cache(folder, rows, seed=0):
    """A resnet50-shaped cache: `rows` training rows plus 20% as many validation rows."""
    from mlkit.bottlenecks.cache import write_cache

    rng = np.random.default_rng(seed)
    total = rows + rows // 5
    features = np.maximum(rng.normal(size=(total, FEATURES)), 0).astype("float32")
    labels = (rng.random((total, LABELS)) < 0.04).astype("uint8")
    attrs = {"task": "multilabel", "dataset": "bench", "subset": "speed", "backbone": "resnet50", "preprocess": "inet",
                 "pooling": "avg", "label_names": [f"label{i}" for i in range(LABELS)]}
    split = ["train"] * rows + ["val"] * (total - rows)
    return write_cache(Path(folder) / "bench_speed_resnet50_inet_avg.h5", features=features, labels=labels,
                       split=split, attrs=attrs)


def timed_epochs(model, dataset, epochs, best=False):
    """Seconds per epoch after one warm-up batch (which pays for tracing): the mean, or the best."""
    model.fit(dataset.take(1), epochs=1, verbose=0, shuffle=False)
    times = []
    for _ in range(epochs):
        started = time.perf_counter()
        model.fit(dataset, epochs=1, verbose=0, shuffle=False)
        times.append(time.perf_counter() - started)
    return min(times) if best else float(np.mean(times))


def feature_epoch(cache_path, config, epochs=2, best=False):
    """(seconds per epoch, rows per epoch) of a top trained on cached features."""
    from mlkit.bottlenecks.cache import open_cache
    from mlkit.tuning.top import build_top_model, compile_top
    from mlkit.tuning.top_data import TopData

    data = TopData(open_cache(cache_path))
    model = compile_top(build_top_model(config, (FEATURES,), LABELS, "multilabel"), config)
    return timed_epochs(model, data.train_dataset(config.batch), epochs, best), len(data.sample_rows)


def image_epoch(config, images):
    """Seconds per epoch of the same top trained through the frozen resnet50 on `images` images."""
    import keras
    import tensorflow as tf

    from mlkit.backbones import build_backbone, feature_extractor, get_backbone
    from mlkit.tuning.top import build_top_model, compile_top

    backbone, info = build_backbone("resnet50", weights="none", pooling="avg")
    backbone.trainable = False
    size = info["image_size"]
    extractor = feature_extractor(backbone, get_backbone("resnet50"), "inet", size)
    top = build_top_model(config, (FEATURES,), LABELS, "multilabel")
    model = compile_top(keras.Model(extractor.input, top(extractor.output)), config)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (images, size, size, 3)).astype("float32")
    labels = (rng.random((images, LABELS)) < 0.04).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((pixels, labels)).batch(config.batch).prefetch(2)
    return timed_epochs(model, dataset, epochs=1)


def matmul_rate(size=2048, repeats=10):
    """FLOP/s of a plain float32 square matmul, best of three timings."""
    import tensorflow as tf

    a, b = tf.random.normal((size, size)), tf.random.normal((size, size))
    multiply = tf.function(tf.matmul)
    multiply(a, b).numpy()
    best = np.inf
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(repeats):
            result = multiply(a, b)
        result.numpy()
        best = min(best, (time.perf_counter() - started) / repeats)
    return 2 * size ** 3 / best


def training_rate(cache_path, epochs=3):
    """FLOP/s training a 2x1024 top, batch 128, counted as 6 FLOPs per weight per row.

    The best of `epochs` epochs, as the matmul rate is the best of three
    timings: both sides measured the same way on a machine others share.
    """
    from mlkit.tuning.config import TopConfig

    config = TopConfig(layers=2, units=1024, reg="d5", lr=0.05, batch=128)
    seconds, rows = feature_epoch(cache_path, config, epochs, best=True)
    weights = FEATURES * 1024 + 1024 * 1024 + 1024 * LABELS
    return 6 * weights * rows / seconds


def trial_overhead(cache_path, workdir, trials):
    """Share of a tune_top call's wall time spent outside the trials' `fit`."""
    from mlkit.tuning import tune_top

    lrs = [0.1, 0.05, 0.02, 0.01, 0.005][:trials]
    started = time.perf_counter()
    tune_top(cache_path, workdir, layers=2, units=512, lr=lrs, batch=128, epochs=10, patience=10, verbose=False)
    wall = time.perf_counter() - started
    records = [json.loads(p.read_text()) for p in (Path(workdir) / "tuning").glob("*.json")]
    fit = sum(record["result"]["fit_seconds"] for record in records)
    return 1 - fit / wall, wall, fit, len(records)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=128, help="images for the through-the-backbone epoch")
    parser.add_argument("--rows", type=int, default=10_000, help="training rows of cached features")
    parser.add_argument("--trials", type=int, default=3, help="10-epoch trials for the overhead ratio")
    args = parser.parse_args(argv)
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    import tensorflow as tf

    from mlkit.tuning.config import TopConfig

    print("devices:", ", ".join(d.device_type for d in tf.config.list_physical_devices()),
          f"| tensorflow {tf.__version__} | {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as folder:
        cache = make_feature_cache(folder, args.rows)
        for batch in (32, 128):
            top = TopConfig(layers=2, units=1024, reg="d5", lr=0.05, batch=batch)
            feature_seconds, rows = feature_epoch(cache, top)
            image_seconds = image_epoch(top, args.images)
            per_row, per_image = feature_seconds / rows, image_seconds / args.images
            print(f"(a) top 2x1024d5, batch {batch}: {per_row * 1e6:.0f} us/row on features ({rows} rows, "
                  f"{feature_seconds:.2f} s/epoch) vs {per_image * 1e3:.1f} ms/image through frozen resnet50 "
                  f"({args.images} images, {image_seconds:.2f} s/epoch): {per_image / per_row:.0f}x (target >= 100x)")
        train, peak = training_rate(cache), matmul_rate()
        print(f"(b) training 2x1024 top, batch 128, {rows} x {FEATURES}: {train / 1e9:.1f} GFLOP/s; plain "
              f"2048^2 matmul {peak / 1e9:.1f} GFLOP/s: ratio {train / peak:.2f} (target >= 0.5)")
        overhead, wall, fit, count = trial_overhead(cache, folder, args.trials)
        print(f"(c) {count} trials x 10 epochs (2x512d5, batch 128): tune_top {wall:.1f} s, inside fit {fit:.1f} s: "
              f"overhead {overhead:.1%} (target < 5%)")


if __name__ == "__main__":
    main()
