"""float16 feature storage against float32: does a tuned top's quality hold? (issue 14, item 5)

One manifest is cached twice with the same pretrained backbone and settings, once with
`--dtype float32` and once with `--dtype float16`. The same tune-top grid then runs on each
cache with each seed, so a seed's two runs differ only in how the features were stored. For
the best trial of each run (by val_loss, tune-top's default objective) the table gives
tune-top's own val_loss and val_map, and the test split's micro-F1 (cardinality rule fitted
on validation, as stage 3 fits it) and mAP. The summary compares the float16 - float32
difference per seed with the seed-to-seed spread of the float32 runs: float16 holds the top's
quality when the difference is inside that spread.

The default manifest is mlkit's built-in synthetic multilabel set (shapes and colours); the
weights are the ImageNet-trained MobileNetV2 in ../shared/pretrained/ (random weights would
say nothing here, and a random MobileNetV2's features, about 1e-12, do not fit float16).

Run:
    python benchmarks/feature_dtype.py                      # 600 synthetic images, 5 seeds
    python benchmarks/feature_dtype.py --images 2000 --seeds 0,1,2
    python benchmarks/feature_dtype.py --manifest PATH/manifest.csv   # any split manifest
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO.parent / "shared" / "pretrained" / "mobilenetv2_nsfwjs.weights.h5"
DTYPES = ("float32", "float16")
METRICS = ("val_loss", "val_map", "test_f1", "test_map")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default=None, help="a split manifest (default: the synthetic set, made here)")
    parser.add_argument("--images", type=int, default=600, help="synthetic images when no --manifest (default 600)")
    parser.add_argument("--weights", default=str(PRETRAINED), help="MobileNetV2 weights file")
    parser.add_argument("--size", type=int, default=96, help="image size (default 96)")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="tune-top seeds (default 0,1,2,3,4)")
    parser.add_argument("--units", default="256,1024", help="the grid's units (default 256,1024)")
    parser.add_argument("--lr", default="0.01,0.1", help="the grid's learning rates (default 0.01,0.1)")
    parser.add_argument("--epochs", type=int, default=30, help="most epochs per trial (default 30)")
    parser.add_argument("--scratch", default=tempfile.gettempdir(), help="folder for the workspaces")
    return parser.parse_args(argv)


def make_manifest(folder, images):
    from mlkit.data import split_manifest, synthesize

    manifest = synthesize(Path(folder) / "synth", task="multilabel", n=images, size=96, seed=0)
    split_manifest(manifest, val=0.2, test=0.2, seed=0)
    return manifest


def best_top_scores(cache_path, work, summary):
    """tune-top's metrics for its best trial, and that top's test micro-F1 and mAP (cardinality rule)."""
    from mlkit.bottlenecks.cache import open_cache
    from mlkit.evaluation.decisions import parse_rule
    from mlkit.evaluation.evaluate import evaluate_scores
    from mlkit.tuning.top import load_top

    best = summary.iloc[0]
    top, _ = load_top(work, best.run)
    cache = open_cache(cache_path)
    (val_x, val_y), (test_x, test_y), (_, train_y) = (cache.load(split) for split in ("val", "test", "train"))
    rule = parse_rule("cardinality")
    scores = {split: np.asarray(top(x, training=False)) for split, x in (("val", val_x), ("test", test_x))}
    rule.fit(scores["val"], val_y, train_cardinality=float(train_y.sum(axis=1).mean()))
    report = evaluate_scores(scores["test"], test_y.astype("uint8"), cache.label_names, decisions=[rule])
    return {"run": best.run, "val_loss": float(best.val_loss), "val_map": float(best.val_map),
            "test_f1": report["micro"]["f1"], "test_map": report["map"]}


def summarise(rows, seeds):
    """Per metric: each dtype's mean, the float16 - float32 difference per seed, and float32's seed spread."""
    print(f"\n{'metric':<9} {'float32 mean':>12} {'float16 mean':>12} {'mean diff':>10} {'max |diff|':>10} "
          f"{'float32 seed sd':>15} {'seed range':>10}")
    for metric in METRICS:
        full = np.array([rows[seed, "float32"][metric] for seed in seeds])
        half = np.array([rows[seed, "float16"][metric] for seed in seeds])
        diff = half - full
        print(f"{metric:<9} {full.mean():>12.4f} {half.mean():>12.4f} {diff.mean():>+10.4f} {np.abs(diff).max():>10.4f} "
              f"{full.std(ddof=1) if len(seeds) > 1 else 0.0:>15.4f} {full.max() - full.min():>10.4f}")


def main(argv=None):
    args = parse_args(argv)
    from mlkit.bottlenecks.extract import cache_features
    from mlkit.tuning.search import tune_top

    if not Path(args.weights).exists():
        raise SystemExit(f"missing {args.weights}: the pretrained MobileNetV2 (../shared/pretrained/)")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="mlkit_dtype_", dir=args.scratch))
    manifest = args.manifest or make_manifest(folder, args.images)
    caches = {}
    for dtype in DTYPES:
        started = time.perf_counter()
        caches[dtype] = cache_features(manifest, folder / dtype, backbone="mobilenetv2", weights=args.weights,
                                       image_size=args.size, dtype=dtype, progress=False).path
        print(f"{dtype} cache: {caches[dtype].stat().st_size / 2**20:.1f} MiB on disk, "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    print(f"grid: units {args.units} x lr {args.lr}, SGD, batch 64, up to {args.epochs} epochs (patience 5)")
    print(f"{'seed':>4} {'dtype':<8} {'best run':<58} {'val_loss':>8} {'val_map':>7} {'test_f1':>7} {'test_map':>8}")
    rows = {}
    for seed in seeds:
        for dtype in DTYPES:
            work = folder / dtype / f"seed{seed}"
            summary = tune_top(caches[dtype], work, units=args.units, lr=args.lr, epochs=args.epochs, seed=seed,
                               verbose=False)
            row = rows[seed, dtype] = best_top_scores(caches[dtype], work, summary)
            print(f"{seed:>4} {dtype:<8} {row['run']:<58} {row['val_loss']:>8.4f} {row['val_map']:>7.4f} "
                  f"{row['test_f1']:>7.4f} {row['test_map']:>8.4f}", flush=True)
    summarise(rows, seeds)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
