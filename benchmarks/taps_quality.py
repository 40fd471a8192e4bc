"""Taps on the cache: which depths a top reads, how their scales are weighed, and how long it trains.

One run, two real multilabel collections, the pretrained MobileNetV2 at 96 px, each cached once
with `--taps all` (the backbone's output and its four named depths) and reused by every arm:

  stamps   Debian's tuxpaint-stamps-default, every folder level a label (from-folders --labels
           path), split 70/15/15 with seed 0 as benchmarks/transfer_quality.py does: no style shift.
  icons    freedesktop icon themes (--icons MANIFEST, with its split column): the test split is
           a theme no training image comes from, a style shift.

Arms, each a 1 x 512 d5 top (SGD 0.1, batch 64, the tune-top defaults otherwise) trained by
tune-top with one seed per workspace:

  last              the backbone's output alone (today's default; tap weighting cannot touch it)
  all, tw-none      every tap side by side, each column z-scored (unit variance)
  all, tw-equal     every tap side by side, each tap scaled to the same total variance

at `--epochs` (each with `--patience`). Every top's scores are decided by the cardinality rule
fitted on the validation split (as finetune's baseline is). The table gives, per collection,
epochs and arm, the mean over seeds and the spread (max - min) of the validation loss, mAP and
micro-F1 (what a user can choose on) beside the test micro-F1 and mAP (what they get), and the
best epoch. The choice of defaults is made on the validation columns only.

Run:
    python benchmarks/taps_quality.py                                  # as recorded in BENCHMARKS.md
    python benchmarks/taps_quality.py --collections stamps --seeds 0 --epochs 20
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

import numpy as np
from transfer_quality import PRETRAINED, STAMPS, make_manifest

ICONS = Path("/work/data/icons/manifest.csv")
# (arm, tune-top's --taps, --tap-weights): one tune-top call per distinct tap weighting.
ARMS = (("last", "last", "equal"), ("all, tw-equal", "all", "equal"), ("all, tw-none", "all", "none"))
COLUMNS = ("val_loss", "val_map", "val_f1", "test_f1", "test_map", "best_epoch")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collections", default="stamps,icons", help="stamps, icons or both")
    parser.add_argument("--icons", default=str(ICONS), help="the icon-theme manifest (with its split column)")
    parser.add_argument("--stamps", default=str(STAMPS), help="the Tux Paint stamps folder")
    parser.add_argument("--weights", default=str(PRETRAINED), help="MobileNetV2 weights file")
    parser.add_argument("--size", type=int, default=96, help="image size")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds (the splits stay fixed)")
    parser.add_argument("--units", type=int, default=512, help="units of the one hidden layer")
    parser.add_argument("--epochs", default="20,40", help="most epochs per top, one setting per value")
    parser.add_argument("--patience", type=int, default=5, help="early stopping patience")
    parser.add_argument("--workdir", help="keep the caches and tops here (default: a temporary folder)")
    parser.add_argument("--json", help="also write the rows to this file")
    return parser.parse_args(argv)


def collection_cache(name, folder, args):
    """The collection's cache with every named tap, made once per workdir and reused after."""
    from mlkit.bottlenecks.extract import cache_features

    folder.mkdir(parents=True, exist_ok=True)
    manifest = make_manifest(args.stamps, folder) if name == "stamps" else Path(args.icons)
    return cache_features(manifest, folder, backbone="mobilenetv2", weights=args.weights, image_size=args.size,
                          taps="all", progress=False)


def train_arms(cache, work, args, epochs, seed):
    """Tunes the three arms in one workspace; returns {arm: run name}."""
    from mlkit.tuning.search import tune_top

    runs = {}
    for weights in dict.fromkeys(weights for _, _, weights in ARMS):
        taps = ",".join(taps for _, taps, w in ARMS if w == weights)
        summary = tune_top(cache.path, work, units=args.units, taps=taps, tap_weights=weights, epochs=epochs,
                           patience=args.patience, seed=seed, verbose=False)
        for run in summary.run:
            config = json.loads((Path(work) / "tuning" / f"{run}.json").read_text())["config"]
            runs["last" if config["taps"] == "last" else f"all, tw-{weights}"] = run
    return runs


def score_run(work, run):
    """Validation and test scores of one tuned top, decided by the cardinality rule fitted on validation."""
    from mlkit.bottlenecks.cache import open_cache
    from mlkit.evaluation.decisions import parse_rule
    from mlkit.evaluation.evaluate import evaluate_scores
    from mlkit.tuning.top import load_top

    top, config = load_top(work, run)
    cache = open_cache(config.cache)
    (xv, yv), (xt, yt) = (cache.load(split, taps=config.tap_list) for split in ("val", "test"))
    train = cache.read("labels", cache.indices("train"))
    sv, st = (top.predict(x, batch_size=512, verbose=0) for x in (xv, xt))
    rule = parse_rule("cardinality")
    rule.fit(sv, yv, train_cardinality=float(train.sum(1).mean()))
    val = evaluate_scores(sv, yv, cache.label_names, decisions=[rule])
    test = evaluate_scores(st, yt, cache.label_names, decisions=[rule])
    record = json.loads((Path(work) / "tuning" / f"{run}.json").read_text())["result"]
    return {"val_loss": record["metrics"]["val_loss"], "val_map": val["map"], "val_f1": val["micro"]["f1"],
            "test_f1": test["micro"]["f1"], "test_map": test["map"], "best_epoch": record["best_epoch"] + 1,
            "run": run}


def print_table(rows):
    print(f"\n{'collection':<10} {'epochs':>6} {'arm':<14} {'seeds':>5} "
          + " ".join(f"{column:>15}" for column in COLUMNS))
    groups = {}
    for row in rows:
        groups.setdefault((row["collection"], row["epochs"], row["arm"]), []).append(row)
    order = [arm for arm, _, _ in ARMS]
    for (collection, epochs, arm), group in sorted(groups.items(), key=lambda item: (item[0][:2], order.index(item[0][2]))):
        cells = []
        for column in COLUMNS:
            values = np.array([row[column] for row in group], dtype="float64")
            cells.append(f"{values.mean():>8.3f} ±{(values.max() - values.min()) / 2:.3f}")
        print(f"{collection:<10} {epochs:>6} {arm:<14} {len(group):>5} " + " ".join(f"{cell:>15}" for cell in cells))
    print("(mean over seeds ± half the spread; val_f1 and test_f1 are micro-F1 under the cardinality rule)")


def main(argv=None):
    args = parse_args(argv)
    if not Path(args.weights).exists():
        sys.exit(f"{args.weights} is missing: the pretrained weights (../shared/pretrained/)")
    import keras
    import tensorflow as tf

    print(f"{platform.node()}: {os.cpu_count()} CPUs, TensorFlow {tf.__version__}, Keras {keras.__version__}")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.workdir or scratch)
        for name in args.collections.split(","):
            cache = collection_cache(name, root / name, args)
            for epochs in (int(value) for value in args.epochs.split(",")):
                for seed in (int(value) for value in args.seeds.split(",")):
                    work = root / name / f"e{epochs}-seed{seed}"
                    started = time.perf_counter()
                    runs = train_arms(cache, work, args, epochs, seed)
                    seconds = time.perf_counter() - started
                    for arm, run in runs.items():
                        rows.append({"collection": name, "epochs": epochs, "seed": seed, "arm": arm,
                                     **score_run(work, run)})
                        print(rows[-1], flush=True)
                    print(f"{name} epochs {epochs} seed {seed}: {seconds:.0f} s", flush=True)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
