"""Ensembles of cached tops, and the image size chosen on the cache, on two real collections.

For each collection and image size, in one workspace per collection (the caches side by side,
told apart by `--subset all-<S>px`):

  1. cache-features with the pretrained MobileNetV2 (seconds per 1,000 images, wall clock);
  2. a small tune-top grid on that cache (enough tops for the largest ensemble);
  3. `mlkit ensemble --top best:K` for each K: the K best tops by the grid's objective (validation),
     averaged on the frozen backbone, the cardinality rule fitted on validation; test micro-F1 and mAP.

Then per collection: the size validation picks (the best top's val_loss across sizes, as
`mlkit runs --by image_size` shows it) against the size test would have picked.

Collections: the icon themes of benchmarks/icon_themes.py (/work/data/icons/manifest.csv; test = the
oxygen theme, never trained on; 64 px sources), and Debian's Tux Paint stamps split 70/15/15 with
seed 0 as benchmarks/transfer_quality.py splits them.

Run (about 20 minutes of CPU on 2 cores):
    python benchmarks/ensemble_size.py --json ensemble_size.json
    python benchmarks/ensemble_size.py --collections icons --sizes 96 --ks 1,3
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from transfer_quality import PRETRAINED, STAMPS, make_manifest

ICONS = Path("/work/data/icons/manifest.csv")
GRID = {"units": [256, 512, 1024], "reg": ["d2", "d5"], "optimizer": "adam", "lr": 0.001, "epochs": 60,
        "patience": 8}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collections", default="icons,stamps", help="icons, stamps, or both")
    parser.add_argument("--icons", default=str(ICONS), help="the icon-theme manifest (benchmarks/icon_themes.py)")
    parser.add_argument("--stamps", default=str(STAMPS), help="the Tux Paint stamps tree")
    parser.add_argument("--weights", default=str(PRETRAINED), help="MobileNetV2 weights file")
    parser.add_argument("--sizes", default="64,96,128,160", help="image sizes to cache")
    parser.add_argument("--ks", default="1,3,5", help="ensemble sizes (best:K)")
    parser.add_argument("--seed", type=int, default=0, help="tune-top seed")
    parser.add_argument("--workdir", help="keep every file here (default: a temporary folder)")
    parser.add_argument("--json", help="also write the results here")
    return parser.parse_args(argv)


def manifests(args, folder):
    """{collection: manifest path} for the collections asked for."""
    found = {}
    for name in args.collections.split(","):
        if name == "icons":
            found[name] = Path(args.icons)
        elif name == "stamps":
            found[name] = make_manifest(args.stamps, folder / "stamps")
        else:
            sys.exit(f"--collections {name!r}: use icons and/or stamps")
    return found


def remembered(work, key, seconds, computed):
    """`seconds` when this run computed the stage, else what the run that computed it recorded.

    A rerun with --workdir reuses caches and finished trials; their times stay the first run's.
    """
    timings = work / "timings.json"
    known = json.loads(timings.read_text()) if timings.exists() else {}
    if computed:
        known[key] = seconds
        timings.write_text(json.dumps(known))
    return known.get(key, float("nan"))


def measure_size(manifest, work, size, ks, args):
    """One cache at `size`, its grid, and the ensembles: one row per K."""
    import mlkit

    started = time.perf_counter()
    cache = mlkit.cache_features(manifest, work, backbone="mobilenetv2", weights=args.weights, image_size=size,
                                 subset=f"all-{size}px", progress=False)
    seconds = time.perf_counter() - started
    per_1000 = remembered(work, f"cache{size}", 1000 * seconds / max(cache.computed, 1), cache.computed)
    started = time.perf_counter()
    summary = mlkit.tune_top(cache.path, work, seed=args.seed, verbose=False, **GRID)
    tune_seconds = remembered(work, f"tune{size}", time.perf_counter() - started, cache.computed)
    best = summary.iloc[0]
    out = []
    for k in ks:
        started = time.perf_counter()
        result = mlkit.ensemble(cache.path, f"best:{k}", work)
        report = result.report
        out.append({"size": size, "k": k, "micro_f1": report["micro"]["f1"], "map": report["map"],
                    "best_member_f1": result.baseline["micro"]["f1"], "ensemble_seconds": time.perf_counter() - started,
                    "cache_seconds_per_1000": per_1000, "tune_seconds": tune_seconds,
                    "val_loss": float(best["val_loss"]), "val_f1": float(best.get("val_f1", float("nan"))),
                    "run": result.run})
        print(json.dumps(out[-1]), flush=True)
    return out


def print_table(collection, rows):
    print(f"\n{collection}")
    print(f"{'size':>4} {'K':>2} {'test micro-F1':>13} {'test mAP':>8} {'best val_loss':>13} {'val F1':>7} "
          f"{'s/1000 img':>10} {'tune s':>7}")
    for row in rows:
        print(f"{row['size']:>4} {row['k']:>2} {row['micro_f1']:>13.4f} {row['map']:>8.4f} {row['val_loss']:>13.4f} "
              f"{row['val_f1']:>7.4f} {row['cache_seconds_per_1000']:>10.1f} {row['tune_seconds']:>7.0f}")
    singles = [row for row in rows if row["k"] == min(r["k"] for r in rows)]
    by_val = min(singles, key=lambda row: row["val_loss"])
    by_test = max(singles, key=lambda row: row["micro_f1"])
    print(f"validation (val_loss of the best top) picks {by_val['size']} px: test micro-F1 {by_val['micro_f1']:.4f}; "
          f"the best size on test is {by_test['size']} px ({by_test['micro_f1']:.4f})")


def main(argv=None):
    args = parse_args(argv)
    if not Path(args.weights).exists():
        sys.exit(f"{args.weights} is missing: the pretrained weights (../shared/pretrained/)")
    import keras
    import tensorflow as tf

    print(f"{platform.node()}: {os.cpu_count()} CPUs, TensorFlow {tf.__version__}, Keras {keras.__version__}")
    sizes = [int(s) for s in args.sizes.split(",")]
    ks = [int(k) for k in args.ks.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.workdir or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for collection, manifest in manifests(args, folder).items():
            work = folder / f"work-{collection}"
            results[collection] = [row for size in sizes for row in measure_size(manifest, work, size, ks, args)]
        for collection, rows in results.items():
            print_table(collection, rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "args": vars(args), "grid": GRID}, indent=1))


if __name__ == "__main__":
    main()
