"""Classification tops on caches that already exist: scores to compare before and after a change to the top.

For each cache given, each seed trains tune-top's default 1 x 512 d5 top (SGD 0.1, batch 64) on the
backbone's output (`last`) and on every cached tap (`all`, equal tap weights) in a fresh workspace, and
scores it as benchmarks/taps_quality.py does: the cardinality rule fitted on the validation split,
then validation and test micro-F1 and mAP. Run it once on each version of mlkit (PYTHONPATH) with
the same caches; the caches are only read.

Run (the caches of benchmarks/taps_quality.py: the stamps and the icon themes, 96 px, every tap):
    python benchmarks/bounds_quality.py /tmp/aq4/bottlenecks/stamps_all_mobilenetv2_inet_avg.h5 \\
        /tmp/aq4/bottlenecks/icons_all_mobilenetv2_inet_avg.h5 --workdir /tmp/bq --json after.json
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from taps_quality import score_run

COLUMNS = ("val_loss", "val_map", "val_f1", "test_f1", "test_map", "best_epoch")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("caches", nargs="+", help="classification caches with every tap (cache-features --taps all)")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds")
    parser.add_argument("--epochs", type=int, default=20, help="most epochs per top")
    parser.add_argument("--workdir", help="keep the tops here (default: a temporary folder)")
    parser.add_argument("--json", help="also write the rows to this file")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from mlkit.tuning.search import tune_top

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.workdir or scratch)
        for cache in args.caches:
            name = Path(cache).stem.split("_")[0]
            for seed in (int(value) for value in args.seeds.split(",")):
                work = root / name / f"seed{seed}"
                summary = tune_top(cache, work, units=512, taps="last,all", epochs=args.epochs, seed=seed, verbose=False)
                for run in summary.run:
                    arm = "all" if "_taps-" in run else "last"
                    rows.append({"collection": name, "seed": seed, "arm": arm, **score_run(work, run)})
                    print(rows[-1], flush=True)
    print(f"\n{'collection':<10} {'arm':<5} {'seeds':>5} " + " ".join(f"{column:>15}" for column in COLUMNS))
    for collection in dict.fromkeys(row["collection"] for row in rows):
        for arm in ("last", "all"):
            group = [row for row in rows if row["collection"] == collection and row["arm"] == arm]
            cells = []
            for column in COLUMNS:
                values = np.array([row[column] for row in group], dtype="float64")
                cells.append(f"{values.mean():>8.3f} ±{(values.max() - values.min()) / 2:.3f}")
            print(f"{collection:<10} {arm:<5} {len(group):>5} " + " ".join(f"{cell:>15}" for cell in cells))
    print("(mean over seeds ± half the spread; micro-F1 under the cardinality rule)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
