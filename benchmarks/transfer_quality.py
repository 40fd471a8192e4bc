"""mlkit's whole pipeline against the transfer-learning scripts users write instead, on real images.

One run, one collection, one split, the same pretrained weights, image size and decision rule:

  (a) mlkit     cache-features, a small tune-top grid, then finetune with its defaults
                (or the finetune settings given here).
  (b) keras     the Keras transfer-learning guide's recipe as written: a frozen base with a
                new head trained through the base every epoch, then the whole base unfrozen
                at lr 1e-5. Its base is called with training=False, which Keras 3 drops once
                the base is unfrozen (keras-team/keras#20285): batch norm trains.
  (c) keras-bn  the same recipe as an expert writes it after keras#20285: the base's
                batch-norm layers stay trainable=False when it unfreezes.
  (d) mlkit, BN trains   optional: (a) with the unfrozen blocks' batch norm in training mode
                (batch statistics, moving statistics updated), as stage 3 ran before the fix:
                measures whether adapting batch-norm statistics to the new images helps.

Each side's scores are decided by the cardinality rule fitted on the validation split
(mlkit.evaluation.evaluate), so only the models differ. The table gives test micro-F1, mAP and wall
time per side and seed, then each side's mean and spread, mlkit's fine-tuned model against
its own cached top, and mlkit's time against the better Keras recipe's.

The collection is Debian's tuxpaint-stamps-default (`apt-get install tuxpaint-stamps-default`):
about 800 PNG stamps in nested category folders, every folder level a label (from-folders
--labels path). The weights are the ImageNet-trained MobileNetV2 in ../shared/pretrained/.

Run:
    python benchmarks/transfer_quality.py                               # 3 seeds, all sides
    python benchmarks/transfer_quality.py --seeds 0,1,2 --keras-seeds 0 --sides a,b,c,d   # as recorded
    python benchmarks/transfer_quality.py --seeds 0 --sides a --freeze block_15 --lr 3e-4
    python benchmarks/transfer_quality.py --sides a --backbone hub:dinov2_small   # a KerasHub preset, if cached
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

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO.parent / "shared" / "pretrained" / "mobilenetv2_nsfwjs.weights.h5"
STAMPS = Path("/usr/share/tuxpaint/stamps")
# Finetune settings the benchmark can override; unset ones keep FinetuneConfig's defaults.
FINETUNE_OPTIONS = {"freeze": str, "lr": float, "optimizer": str, "epochs": int, "warmup_epochs": int,
                    "augment": str, "patience": int, "batch": int}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(STAMPS), help="the image tree (every folder level a label)")
    parser.add_argument("--weights", default=str(PRETRAINED), help="MobileNetV2 weights file")
    parser.add_argument("--backbone", default="mobilenetv2",
                        help="(a) the backbone: mobilenetv2 with --weights, or hub:PRESET (pip install -e \".[hub]\"), "
                             "which must already be in KerasHub's cache (nothing is downloaded)")
    parser.add_argument("--size", type=int, default=None, help="image size (default 96; a preset's own size)")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds (the split stays seed 0)")
    parser.add_argument("--sides", default="a,b,c",
                        help="a (mlkit), b (Keras guide), c (Keras guide, BN fixed), d (mlkit, BN trains)")
    parser.add_argument("--keras-seeds", help="seeds for sides b, c and d (default: --seeds)")
    parser.add_argument("--units", default="256,512", help="tune-top grid: units")
    parser.add_argument("--keras-head-epochs", type=int, default=20, help="(b, c) epochs with the base frozen")
    parser.add_argument("--keras-finetune-epochs", type=int, default=10, help="(b, c) epochs with the base unfrozen")
    parser.add_argument("--keras-batch", type=int, default=64, help="(b, c) batch size (the guide's)")
    parser.add_argument("--workdir", help="keep every file here (default: a temporary folder)")
    parser.add_argument("--json", help="also write the results here")
    for name, kind in FINETUNE_OPTIONS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"(a) finetune {name}")
    return parser.parse_args(argv)


def make_manifest(root, folder):
    """The collection's manifest, split 70/15/15 with seed 0 (shared by every side and seed)."""
    from mlkit.data.adapters import from_folders
    from mlkit.data.split import split_manifest

    manifest = from_folders(root, folder / "manifest.csv", labels="path")
    split_manifest(manifest, val=0.15, test=0.15, seed=0)
    return manifest


def run_mlkit(manifest, work, args, seed, train_bn=False):
    """(a): the three stages; returns the fine-tuned and cached-top reports and the stage times.

    With `train_bn` (side d) the unfrozen blocks' batch norm trains, as before the fix.
    """
    import mlkit.models.network
    from mlkit.bottlenecks.extract import cache_features
    from mlkit.models.finetune import finetune
    from mlkit.tuning.search import tune_top

    keep_statistics = mlkit.models.network.keep_statistics
    if train_bn:
        mlkit.models.network.keep_statistics = lambda model: None

    times = {}
    started = time.perf_counter()
    weights = args.weights if args.backbone == "mobilenetv2" else "imagenet"
    cache = cache_features(manifest, work, backbone=args.backbone, weights=weights, image_size=args.size,
                           progress=False)
    times["cache"] = time.perf_counter() - started
    tune_top(cache.path, work, units=args.units, reg="d2", optimizer="adam", lr=0.001, epochs=60, patience=8,
             seed=seed, verbose=False)
    times["tune"] = time.perf_counter() - started - times["cache"]
    settings = {name: getattr(args, name) for name in FINETUNE_OPTIONS if getattr(args, name) is not None}
    try:
        result = finetune(cache.path, "best", work, seed=seed, progress=False, **settings)
    finally:
        mlkit.models.network.keep_statistics = keep_statistics
    times["finetune"] = time.perf_counter() - started - times["cache"] - times["tune"]
    return result.report, result.baseline, times, result.run


def load_split_images(manifest_path, size):
    """Decoded, resized pixels and multi-hot labels per split, decoded as mlkit decodes (transparency on white)."""
    from mlkit.data.manifest import read_manifest
    from mlkit.images import load_image, resize_images

    manifest = read_manifest(manifest_path)
    names = manifest.label_names
    index = {name: i for i, name in enumerate(names)}
    data = {}
    for split in ("train", "val", "test"):
        rows = manifest.rows[manifest.splits() == split]
        paths = [manifest.path.parent / image for image in rows["image"]]
        pixels = np.stack([resize_images(load_image(path).astype("float32"), size) for path in paths])
        labels = np.zeros((len(rows), len(names)), "float32")
        for row, row_labels in enumerate(rows["labels"]):
            labels[row, [index[name] for name in row_labels]] = 1
        data[split] = (pixels, labels)
    return data, names


def run_keras_guide(manifest, args, seed, keep_bn_frozen):
    """(b) or (c): the Keras guide's two-phase recipe, with sigmoid outputs for multilabel."""
    import keras

    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    data, names = load_split_images(manifest, args.size)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = data["train"], data["val"], data["test"]
    base = keras.applications.MobileNetV2(include_top=False, weights=args.weights,
                                          input_shape=(args.size, args.size, 3))
    base.trainable = False
    augmentation = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1)])
    inputs = keras.Input((args.size, args.size, 3))
    x = augmentation(inputs)
    x = keras.layers.Rescaling(scale=1 / 127.5, offset=-1)(x)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(len(names))(x)
    model = keras.Model(inputs, outputs)
    loss = keras.losses.BinaryCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(), loss=loss)
    fit = {"batch_size": args.keras_batch, "validation_data": (x_val, y_val), "verbose": 0}
    model.fit(x_train, y_train, epochs=args.keras_head_epochs, **fit)
    base.trainable = True
    if keep_bn_frozen:
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss=loss)
    model.fit(x_train, y_train, epochs=args.keras_finetune_epochs, **fit)
    sigmoid = lambda x: 1 / (1 + np.exp(-model.predict(x, verbose=0)))
    report = decide_and_score(sigmoid(x_val), y_val, sigmoid(x_test), y_test, y_train, names)
    return report, time.perf_counter() - started


def decide_and_score(val_scores, val_labels, test_scores, test_labels, train_labels, names):
    """The cardinality rule fitted on validation, as mlkit's finetune fits it, and the test report."""
    from mlkit.evaluation.decisions import parse_rule
    from mlkit.evaluation.evaluate import evaluate_scores

    rule = parse_rule("cardinality")
    rule.fit(val_scores, val_labels, train_cardinality=float(train_labels.sum(axis=1).mean()))
    return evaluate_scores(test_scores, test_labels.astype("uint8"), names, decisions=[rule])


def headline(report):
    return report["micro"]["f1"], report["map"]


def summarise(rows):
    """Per side: mean and spread (max - min) of micro-F1 and mAP over seeds, mean seconds."""
    sides = {}
    for row in rows:
        sides.setdefault(row["side"], []).append(row)
    summary = {}
    for side, group in sides.items():
        f1 = np.array([r["micro_f1"] for r in group])
        mean_ap = np.array([r["map"] for r in group])
        seconds = np.array([r["seconds"] for r in group])
        summary[side] = {"micro_f1": f1.mean(), "f1_spread": f1.max() - f1.min(), "map": mean_ap.mean(),
                         "seconds": seconds.mean(), "seeds": len(group)}
    return summary


def print_table(rows, summary):
    print(f"\n{'side':<16} {'seed':>4} {'micro-F1':>9} {'mAP':>7} {'seconds':>8}  detail")
    for row in rows:
        print(f"{row['side']:<16} {row['seed']:>4} {row['micro_f1']:>9.4f} {row['map']:>7.4f} {row['seconds']:>8.1f}  "
              f"{row.get('detail', '')}")
    print(f"\n{'side':<16} {'seeds':>5} {'micro-F1':>9} {'spread':>7} {'mAP':>7} {'seconds':>8}")
    for side, s in summary.items():
        print(f"{side:<16} {s['seeds']:>5} {s['micro_f1']:>9.4f} {s['f1_spread']:>7.4f} {s['map']:>7.4f} "
              f"{s['seconds']:>8.1f}")
    if "mlkit" in summary and "mlkit cached top" in summary:
        gain = summary["mlkit"]["micro_f1"] - summary["mlkit cached top"]["micro_f1"]
        spread = max(summary["mlkit"]["f1_spread"], summary["mlkit cached top"]["f1_spread"])
        print(f"\nfine-tuned over cached top: {gain:+.4f} micro-F1 (seed spread {spread:.4f})")
    keras_sides = [side for side in ("keras guide", "keras guide, BN fixed") if side in summary]
    if "mlkit" in summary and keras_sides:
        better = max(keras_sides, key=lambda side: summary[side]["micro_f1"])
        print(f"mlkit vs the better Keras recipe ({better}): {summary['mlkit']['micro_f1'] - summary[better]['micro_f1']:+.4f} "
              f"micro-F1, time ratio {summary['mlkit']['seconds'] / summary[better]['seconds']:.2f} (target <= 0.5)")


def check_hub_preset(backbone):
    """Exits with a plain message when a hub: preset is not in KerasHub's cache (it cannot be downloaded here)."""
    from mlkit.backbones import HUB_PREFIX

    if not backbone.startswith(HUB_PREFIX):
        return
    from mlkit.hub_backbones import import_keras_hub, preset_is_cached

    import_keras_hub()
    preset = backbone[len(HUB_PREFIX):]
    if not preset_is_cached(preset):
        from kagglehub.config import get_cache_folder

        sys.exit(f"{backbone}: the preset is not in KerasHub's cache ({get_cache_folder()}) and this benchmark "
                 "downloads nothing. On a machine with network, load it once (keras_hub.models.Backbone."
                 f"from_preset('{preset}')) and copy the cache folder here, or pass hub:/path/to/preset-folder")


def main(argv=None):
    args = parse_args(argv)
    check_hub_preset(args.backbone)
    if args.size is None and args.backbone == "mobilenetv2":
        args.size = 96
    if args.backbone != "mobilenetv2" and set(args.sides.split(",")) - {"a"}:
        sys.exit("--backbone other than mobilenetv2 runs side a only (the Keras guide sides are MobileNetV2): "
                 "pass --sides a")
    for path, what in ((Path(args.root), "the image tree (apt-get install tuxpaint-stamps-default)"),
                       (Path(args.weights), "the pretrained weights (../shared/pretrained/)")):
        if not path.exists():
            sys.exit(f"{path} is missing: {what}")
    import keras
    import tensorflow as tf

    print(f"{platform.node()}: {os.cpu_count()} CPUs, TensorFlow {tf.__version__}, Keras {keras.__version__}")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.workdir or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        manifest = make_manifest(args.root, folder)
        sides = set(args.sides.split(","))
        rows = []
        seeds = [int(s) for s in args.seeds.split(",")]
        keras_seeds = [int(s) for s in (args.keras_seeds or args.seeds).split(",")]
        for seed in sorted(set(seeds) | set(keras_seeds)):
            for code, side, train_bn in (("a", "mlkit", False), ("d", "mlkit, BN trains", True)):
                if code in sides and seed in (seeds if code == "a" else keras_seeds):
                    started = time.perf_counter()
                    work = folder / f"{code}-seed{seed}"
                    report, baseline, times, run = run_mlkit(manifest, work, args, seed, train_bn)
                    seconds = time.perf_counter() - started
                    stages = ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
                    rows.append(dict(side=side, seed=seed, seconds=seconds, detail=f"{run} ({stages})",
                                     **dict(zip(("micro_f1", "map"), headline(report)))))
                    if code == "a":
                        rows.append(dict(side="mlkit cached top", seed=seed, seconds=times["cache"] + times["tune"],
                                         **dict(zip(("micro_f1", "map"), headline(baseline)))))
                    print(rows[-1], flush=True)
            for code, side, fixed in (("b", "keras guide", False), ("c", "keras guide, BN fixed", True)):
                if code in sides and seed in keras_seeds:
                    report, seconds = run_keras_guide(manifest, args, seed, fixed)
                    rows.append(dict(side=side, seed=seed, seconds=seconds,
                                     **dict(zip(("micro_f1", "map"), headline(report)))))
                    print(rows[-1], flush=True)
        summary = summarise(rows)
        print_table(rows, summary)
        if args.json:
            Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary, "args": vars(args)}, indent=1,
                                                  default=float))


if __name__ == "__main__":
    main()
