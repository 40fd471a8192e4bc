"""A regression top on a pretrained backbone's features: test MAE against a mean predictor.

The synthetic regression set (`mlkit.data.synthesize(task="regression")`: the number of shapes, 1 to 6)
at 80 images of 64 px, split 25/25 (41 training images), cached once with the pretrained MobileNetV2
(../shared/pretrained/) and every named tap. Each top is tune-top's 1 x 16 d5, SGD 0.01, 4 epochs, on
the backbone's output (`last`) or on every tap (`all`), one tune-top workspace per seed (`--epochs`,
`--optimizer` change the training: at 41 images an epoch is one step, so 4 epochs barely fit the head). With
`--finetune`, each `last` top is also fine-tuned end to end (freeze 75 %, 2 epochs, no augmentation).

Printed per arm: the test MAE (original units) per seed and its mean, the largest |z| a test image's
standardised feature reaches beside the training rows' own largest, and the mean predictor's test MAE
(the training targets' mean for every image), which a useful head must beat.

Run:
    python benchmarks/regression_bounds.py                      # as recorded in BENCHMARKS.md
    python benchmarks/regression_bounds.py --seeds 0 --finetune
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

PRETRAINED = Path(__file__).resolve().parents[2] / "shared" / "pretrained" / "mobilenetv2_nsfwjs.weights.h5"
ARMS = ("last", "all")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(PRETRAINED), help="MobileNetV2 weights file")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds (the data and split stay fixed)")
    parser.add_argument("--epochs", type=int, default=4, help="most epochs per top (41 images: one step an epoch)")
    parser.add_argument("--optimizer", default="sgd", help="the top's optimizer, sgd or adam")
    parser.add_argument("--finetune", action="store_true", help="also fine-tune each `last` top")
    parser.add_argument("--workdir", help="keep the data, cache and tops here (default: a temporary folder)")
    parser.add_argument("--json", help="also write the rows to this file")
    return parser.parse_args(argv)


def regression_cache(root, weights):
    from mlkit.bottlenecks.cache import open_cache
    from mlkit.bottlenecks.extract import cache_features
    from mlkit.data.split import split_manifest
    from mlkit.data.synth import synthesize

    manifest = synthesize(root / "data", task="regression", n=80, size=64, seed=0)
    split_manifest(manifest, val=0.25, test=0.25, seed=0)
    return open_cache(cache_features(manifest, root / "ws", backbone="mobilenetv2", weights=weights, image_size=64,
                                     taps="all", progress=False).path)


def test_scores(work, run):
    """(test MAE in original units, the largest |z| of a test row's standardised feature, of a training row's)."""
    import keras

    from mlkit.bottlenecks.cache import open_cache
    from mlkit.tuning.top import STANDARDISE, load_top

    top, config = load_top(work, run)
    cache = open_cache(config.cache)
    (xr, _), (xt, yt) = (cache.load(split, taps=config.tap_list) for split in ("train", "test"))
    predictions = cache.target_scale.unscale(top.predict(xt, verbose=0))
    standardise = keras.Model(top.input, top.get_layer(STANDARDISE).output)
    z_test, z_train = (float(np.abs(standardise.predict(x, verbose=0)).max()) for x in (xt, xr))
    return float(np.abs(predictions - yt.reshape(predictions.shape)).mean()), z_test, z_train


def finetuned_mae(cache, work, run):
    from mlkit.models.finetune import finetune

    result = finetune(cache.path, run, work, augment="none", epochs=2, warmup_epochs=0, batch=16, progress=False)
    return float(result.report["mae"])


def main(argv=None):
    args = parse_args(argv)
    if not Path(args.weights).exists():
        sys.exit(f"{args.weights} is missing: the pretrained weights (../shared/pretrained/)")
    import keras
    import tensorflow as tf

    from mlkit.tuning.search import tune_top

    print(f"{platform.node()}: {os.cpu_count()} CPUs, TensorFlow {tf.__version__}, Keras {keras.__version__}")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.workdir or scratch)
        cache = regression_cache(root, args.weights)
        train, test = (cache.read("labels", cache.indices(split)).astype("float64") for split in ("train", "test"))
        baseline = float(np.abs(test - train.mean(0)).mean())
        print(f"{len(train)} training, {len(test)} test images; mean predictor's test MAE {baseline:.3f}")
        for seed in (int(value) for value in args.seeds.split(",")):
            work = root / f"seed{seed}"
            summary = tune_top(cache.path, work, units=16, lr=0.01, epochs=args.epochs, optimizer=args.optimizer,
                               taps=",".join(ARMS), seed=seed, verbose=False)
            for run in summary.run:
                arm = "last" if "_taps-" not in run else "all"
                mae, z_test, z_train = test_scores(work, run)
                row = {"seed": seed, "arm": arm, "mae": mae, "max_z_test": z_test, "max_z_train": z_train,
                       "baseline": baseline, "run": run}
                if args.finetune and arm == "last":
                    row["finetuned_mae"] = finetuned_mae(cache, work, run)
                rows.append(row)
                print(row, flush=True)
    for arm in ARMS:
        group = [row for row in rows if row["arm"] == arm]
        maes = ", ".join(f"{row['mae']:.3f}" for row in group)
        print(f"{arm:<5} test MAE {np.mean([row['mae'] for row in group]):.3f} ({maes}); "
              f"max |z| test {max(row['max_z_test'] for row in group):.1f}, "
              f"train {max(row['max_z_train'] for row in group):.1f}; mean predictor {baseline:.3f}")
        if any("finetuned_mae" in row for row in group):
            print(f"      fine-tuned test MAE {np.mean([row['finetuned_mae'] for row in group]):.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
