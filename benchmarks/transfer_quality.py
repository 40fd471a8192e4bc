"""mlkit's whole pipeline against the transfer-learning scripts users write instead, on real images.

One run, one or two collections (each with one split), the same pretrained weights, image size and
decision rule:

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
  (t) taps      (a) with `cache-features --taps all` and `tune-top --taps last,all`, then finetune
                the best top (features from several depths; issue 19).
  (e) taps + ensemble   `mlkit ensemble --top best:K` on (t)'s cache, with a wider grid (units
                256,512,1024 x reg d2,d5 x taps last,all): no fine-tuning.
  (s) chosen size + taps + ensemble   (t)'s cache and grid at every --sizes, the size whose best
                top has the lowest validation loss, then (e) at that size.
  (f) chosen size + taps, fine-tuned   (s)'s size, then finetune its best top.

Sides share what a user would share: one cache per collection, size and taps (seed-free), one
tune-top grid per cache and seed. A side's wall time counts every stage its pipeline needs, reused
or not (the time recorded when it was computed), so (s) and (f) pay for caching and tuning every size.

Each side's scores are decided by the cardinality rule fitted on the validation split
(mlkit.evaluation.evaluate), so only the models differ. The table gives test micro-F1, mAP and wall
time per side and seed, then each side's mean and spread, mlkit's fine-tuned model against
its own cached top, and mlkit's time against the better Keras recipe's.

Collections (--collections): "stamps", Debian's tuxpaint-stamps-default (`apt-get install
tuxpaint-stamps-default`): about 800 PNG stamps in nested category folders, every folder level a
label (from-folders --labels path), split 70/15/15 with seed 0; "icons", the icon themes of
benchmarks/icon_themes.py (--icons, a manifest used as it is, its split kept: the test split is a
theme never trained on, a style shift). The weights are the ImageNet-trained MobileNetV2 in
../shared/pretrained/.

With --workdir, every finished side and seed is kept in `<workdir>/<collection>/results.jsonl`
and not rerun: a rerun with more seeds or sides runs only what is new, and a run naming both
collections reports what separate runs measured.

Run:
    python benchmarks/transfer_quality.py                               # 3 seeds, all sides
    python benchmarks/transfer_quality.py --seeds 0,1,2 --keras-seeds 0 --sides a,b,c,d   # as recorded
    python benchmarks/transfer_quality.py --seeds 0 --sides a --freeze block_15 --lr 3e-4
    python benchmarks/transfer_quality.py --sides a --backbone hub:dinov2_small   # a KerasHub preset, if cached
    python benchmarks/transfer_quality.py --collections stamps,icons --sides a,t,e,s,f,c --seeds 0 \
        --keras-seeds 0 --sizes 96,160 --workdir tq                   # issue 19, as recorded
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

from mlkit.files import write_json

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO.parent / "shared" / "pretrained" / "mobilenetv2_nsfwjs.weights.h5"
STAMPS = Path("/usr/share/tuxpaint/stamps")
ICONS = Path("/work/data/icons/manifest.csv")
# Side codes, in the order a run takes them (cheap before dear), and what each is.
SIDES = {"a": "mlkit, today's defaults", "t": "taps", "e": "taps + ensemble", "s": "chosen size + taps + ensemble",
         "g": "given size + taps + ensemble", "c": "Keras guide, BN fixed", "f": "chosen size + taps, fine-tuned",
         "b": "Keras guide as written",
         "d": "mlkit, BN trains"}
KERAS_SEEDED = {"b", "c", "d"}
# The sides whose rows are measured against today's defaults and the Keras recipe (issue 19's targets).
TARGETS = {"micro_f1_over_today": 0.05, "micro_f1_over_keras": 0.08, "time_ratio": 0.5}
# Finetune settings the benchmark can override; unset ones keep FinetuneConfig's defaults.
FINETUNE_OPTIONS = {"freeze": str, "lr": float, "lr_decay": float, "optimizer": str, "epochs": int,
                    "warmup_epochs": int, "augment": str, "patience": int, "batch": int}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collections", default="stamps", help="stamps, icons, or both joined by ','")
    parser.add_argument("--root", default=str(STAMPS), help="the stamps' image tree (every folder level a label)")
    parser.add_argument("--icons", default=str(ICONS), help="the icon-theme manifest (benchmarks/icon_themes.py)")
    parser.add_argument("--weights", default=str(PRETRAINED), help="MobileNetV2 weights file")
    parser.add_argument("--backbone", default="mobilenetv2",
                        help="(a) the backbone: mobilenetv2 with --weights, or hub:PRESET (pip install -e \".[hub]\"), "
                             "which must already be in KerasHub's cache (nothing is downloaded)")
    parser.add_argument("--size", type=int, default=None, help="image size (default 96; a preset's own size)")
    parser.add_argument("--sizes", default="96,160", help="(s, f) the image sizes validation chooses from")
    parser.add_argument("--given-size", type=int, default=160,
                        help="(g) the size taken without a search: what s and f chose on both collections")
    parser.add_argument("--ensemble", type=int, default=3, help="(e, s) tops averaged: mlkit ensemble --top best:K")
    parser.add_argument("--ensemble-units", default="256,512,1024", help="(e, s, f) the ensemble grid: units")
    parser.add_argument("--ensemble-reg", default="d2,d5", help="(e, s, f) the ensemble grid: reg")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds (the split stays seed 0)")
    parser.add_argument("--sides", default="a,b,c", help=f"sides to run, joined by ',': {', '.join(SIDES)}")
    parser.add_argument("--keras-seeds", help="seeds for sides b, c and d (default: --seeds)")
    parser.add_argument("--units", default="256,512", help="tune-top grid: units")
    parser.add_argument("--keras-head-epochs", type=int, default=20, help="(b, c) epochs with the base frozen")
    parser.add_argument("--keras-finetune-epochs", type=int, default=10, help="(b, c) epochs with the base unfrozen")
    parser.add_argument("--keras-batch", type=int, default=64, help="(b, c) batch size (the guide's)")
    parser.add_argument("--workdir", help="keep every file here, and reuse finished sides (default: a temporary folder)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: report the sides and seeds asked for that --workdir already holds")
    for name, kind in FINETUNE_OPTIONS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"(a, d, t, f) finetune {name}")
    args = parser.parse_args(argv)
    unknown = set(args.sides.split(",")) - set(SIDES)
    if unknown:
        parser.error(f"--sides {args.sides!r}: unknown {', '.join(sorted(unknown))}; use {', '.join(SIDES)}")
    return args


def make_manifest(root, folder):
    """The collection's manifest, split 70/15/15 with seed 0 (shared by every side and seed)."""
    from mlkit.data.adapters import from_folders
    from mlkit.data.split import split_manifest

    manifest = from_folders(root, folder / "manifest.csv", labels="path")
    split_manifest(manifest, val=0.15, test=0.15, seed=0)
    return manifest


def collection_manifests(args, folder):
    """{collection: manifest path}: the stamps split here, the icons' manifest as it is."""
    found = {}
    for name in args.collections.split(","):
        if name == "stamps":
            (folder / name).mkdir(parents=True, exist_ok=True)
            found[name] = make_manifest(args.root, folder / name)
        elif name == "icons":
            if not Path(args.icons).exists():
                sys.exit(f"{args.icons} is missing: build it with benchmarks/icon_themes.py --test-theme oxygen")
            found[name] = Path(args.icons)
        else:
            sys.exit(f"--collections {name!r}: use stamps and/or icons")
    return found


class Stages:
    """One collection's caches and tune-top grids, each made once, with the wall time it took.

    Caches are seed-free and live in the collection's folder; grids live in one folder per seed. A
    stage found finished (a rerun with --workdir) is charged the time recorded when it was made,
    so every side pays what its whole pipeline costs however the sides share the work.
    """

    def __init__(self, manifest, folder, args):
        self.manifest, self.folder, self.args = manifest, folder, args
        self.timings_path = folder / "timings.json"

    def recorded(self, key):
        """A stage's recorded seconds, or None; read afresh, as runs on other seeds may share the file."""
        timings = json.loads(self.timings_path.read_text()) if self.timings_path.exists() else {}
        return timings.get(key), timings

    def remember(self, key, started, computed):
        seconds, timings = self.recorded(key)
        if computed or seconds is None:
            timings[key] = seconds = time.perf_counter() - started
            write_json(self.timings_path, timings)
        return seconds

    def cache(self, size, taps):
        """(cache path, seconds): `cache-features --image-size size --taps taps`."""
        from mlkit.bottlenecks.extract import cache_features

        started = time.perf_counter()
        subset = f"{taps}-{size}px"
        weights = self.args.weights if self.args.backbone == "mobilenetv2" else "imagenet"
        cache = cache_features(self.manifest, self.folder, backbone=self.args.backbone, weights=weights,
                               image_size=size, subset=subset, taps=taps, progress=False)
        return cache.path, self.remember(f"cache {subset}", started, cache.computed > 0)

    def tune(self, size, taps, work, wide=False):
        """(cache path, seconds for cache and grid, summary of the grid) on the cache of `size` and `taps`.

        The grid is (a)'s, and with taps also `--taps last,all`. `wide` adds the ensemble grid
        (--ensemble-units x --ensemble-reg x the same taps): an ensemble's members share the best
        top's taps, so (a)'s two units give too few of them; its time adds the new trials only.
        """
        path, seconds = self.cache(size, taps)
        grids = [("tune", {"units": self.args.units, "reg": "d2"})]
        if wide:
            grids.append(("tune-wide", {"units": self.args.ensemble_units, "reg": self.args.ensemble_reg}))
        for kind, grid in grids:
            key = f"{kind} {work.name} {path.stem}"
            started = time.perf_counter()
            summary = self.tune_grid(path, work, taps, **grid)
            seconds += self.remember(key, started, self.recorded(key)[0] is None)
        return path, seconds, summary

    def tune_grid(self, path, work, taps, units, reg):
        from mlkit.tuning.search import tune_top

        return tune_top(path, work, units=units, reg=reg, optimizer="adam", lr=0.001, epochs=60, patience=8,
                        seed=seed_of(work), verbose=False, taps="last" if taps == "last" else "last,all")

    def finetune(self, path, work, train_bn=False):
        """(FinetuneResult, seconds): the best top of `path`'s grid in `work`, fine-tuned.

        With `train_bn` (side d) the unfrozen blocks' batch norm trains, as before the fix.
        """
        import mlkit.models.network
        from mlkit.models.finetune import finetune

        keep_statistics = mlkit.models.network.keep_statistics
        if train_bn:
            mlkit.models.network.keep_statistics = lambda model: None
        settings = {name: getattr(self.args, name) for name in FINETUNE_OPTIONS if getattr(self.args, name) is not None}
        key = f"finetune {work.name} {path.stem}"
        started = time.perf_counter()
        try:
            result = finetune(path, "best", work, seed=seed_of(work), progress=False, **settings)
        finally:
            mlkit.models.network.keep_statistics = keep_statistics
        return result, self.remember(key, started, self.recorded(key)[0] is None)

    def chosen_size(self, work):
        """(size, cache path, seconds, detail): the size in --sizes whose best tapped top has the lowest val_loss."""
        tuned = {size: self.tune(size, "all", work, wide=True) for size in sorted({int(s) for s in self.args.sizes.split(",")})}
        losses = {size: float(summary["val_loss"].iloc[0]) for size, (_, _, summary) in tuned.items()}
        size = min(losses, key=losses.get)
        detail = "val_loss " + ", ".join(f"{s} px {loss:.4f}" for s, loss in losses.items())
        return size, tuned[size][0], sum(seconds for _, seconds, _ in tuned.values()), detail


def seed_of(work):
    return int(work.name.rsplit("seed", 1)[1])


def row(side, seed, report, seconds, detail=""):
    return {"side": side, "seed": seed, "seconds": seconds, "detail": detail, "micro_f1": report["micro"]["f1"],
            "map": report["map"]}


def side_mlkit(stages, seed, taps="last", train_bn=False):
    """(a), (t) or (d): cache, grid, then finetune the best top; the fine-tuned and the cached-top rows."""
    name = {"last": "mlkit", "all": "taps"}[taps]
    work = stages.folder / f"{'bn-trains-' if train_bn else ''}seed{seed}"
    path, seconds, _ = stages.tune(stages.args.size, taps, work)
    result, finetune_seconds = stages.finetune(path, work, train_bn)
    stages_detail = f"{result.run} (cache + tune {seconds:.0f} s, finetune {finetune_seconds:.0f} s)"
    if train_bn:
        return [row("mlkit, BN trains", seed, result.report, seconds + finetune_seconds, stages_detail)]
    return [row(name, seed, result.report, seconds + finetune_seconds, stages_detail),
            row(f"{name} cached top", seed, result.baseline, seconds)]


def side_ensemble(stages, seed, chosen=False, given=None):
    """(e), (s) or (g): `mlkit ensemble --top best:K` on the tapped grid, at --size, at the size validation
    chose (paying for every size tried), or at a size given (paying for that size alone)."""
    from mlkit.models.ensemble import ensemble

    work = stages.folder / f"seed{seed}"
    if chosen:
        size, path, seconds, detail = stages.chosen_size(work)
    else:
        size = given or stages.args.size
        (path, seconds, _), detail = stages.tune(size, "all", work, wide=True), ""
    started = time.perf_counter()
    result = ensemble(path, f"best:{stages.args.ensemble}", work)
    seconds += time.perf_counter() - started
    side = (f"{size} px + taps + ensemble" if chosen else f"{size} px given + taps + ensemble" if given
            else "taps + ensemble")
    best = result.baseline["micro"]["f1"]
    return [row(side, seed, result.report, seconds, f"{result.run}; best member {best:.4f}; {detail}".rstrip("; "))]


def side_chosen_finetune(stages, seed):
    """(f): the size validation chose, then finetune its best tapped top."""
    work = stages.folder / f"seed{seed}"
    size, path, seconds, detail = stages.chosen_size(work)
    result, finetune_seconds = stages.finetune(path, work)
    return [row(f"{size} px + taps", seed, result.report, seconds + finetune_seconds, f"{result.run}; {detail}"),
            row(f"{size} px + taps cached top", seed, result.baseline, seconds)]


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


def side_keras(stages, seed, keep_bn_frozen):
    """(b) or (c): the Keras guide's recipe at --size."""
    report, seconds = run_keras_guide(stages.manifest, stages.args, seed, keep_bn_frozen)
    return [row("keras guide, BN fixed" if keep_bn_frozen else "keras guide", seed, report, seconds)]


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


def print_table(collection, rows, summary):
    print(f"\n{collection}")
    print(f"{'side':<28} {'seed':>4} {'micro-F1':>9} {'mAP':>7} {'seconds':>8}  detail")
    for r in rows:
        print(f"{r['side']:<28} {r['seed']:>4} {r['micro_f1']:>9.4f} {r['map']:>7.4f} {r['seconds']:>8.1f}  "
              f"{r.get('detail', '')}")
    print(f"\n{'side':<28} {'seeds':>5} {'micro-F1':>9} {'spread':>7} {'mAP':>7} {'seconds':>8}")
    for side, s in summary.items():
        print(f"{side:<28} {s['seeds']:>5} {s['micro_f1']:>9.4f} {s['f1_spread']:>7.4f} {s['map']:>7.4f} "
              f"{s['seconds']:>8.1f}")
    if "mlkit" in summary and "mlkit cached top" in summary:
        gain = summary["mlkit"]["micro_f1"] - summary["mlkit cached top"]["micro_f1"]
        spread = max(summary["mlkit"]["f1_spread"], summary["mlkit cached top"]["f1_spread"])
        print(f"\nfine-tuned over cached top: {gain:+.4f} micro-F1 (seed spread {spread:.4f})")
    print_targets(summary)


def print_targets(summary):
    """Each side against today's defaults (a) and the Keras recipe with batch norm fixed (c)."""
    today, keras = summary.get("mlkit"), summary.get("keras guide, BN fixed")
    if not today and not keras:
        return
    print(f"\ntargets on the unseen style: >= {TARGETS['micro_f1_over_today']:+.2f} micro-F1 over today's defaults "
          f"(mlkit), >= {TARGETS['micro_f1_over_keras']:+.2f} over the Keras recipe with BN fixed in <= "
          f"{TARGETS['time_ratio']} of its time; no loss on a collection without a shift")
    for side, s in summary.items():
        if side in ("mlkit", "keras guide, BN fixed", "keras guide"):
            continue
        parts = []
        if today:
            parts.append(f"vs today {s['micro_f1'] - today['micro_f1']:+.4f}")
        if keras:
            parts.append(f"vs Keras BN fixed {s['micro_f1'] - keras['micro_f1']:+.4f}, "
                         f"time ratio {s['seconds'] / keras['seconds']:.2f}")
        print(f"  {side:<28} micro-F1 {'; '.join(parts)}")
    if today and keras:
        print(f"  {'mlkit (today)':<28} micro-F1 vs Keras BN fixed {today['micro_f1'] - keras['micro_f1']:+.4f}, "
              f"time ratio {today['seconds'] / keras['seconds']:.2f}")


RUNNERS = {
    "a": lambda stages, seed: side_mlkit(stages, seed),
    "t": lambda stages, seed: side_mlkit(stages, seed, taps="all"),
    "e": lambda stages, seed: side_ensemble(stages, seed),
    "s": lambda stages, seed: side_ensemble(stages, seed, chosen=True),
    "g": lambda stages, seed: side_ensemble(stages, seed, given=stages.args.given_size),
    "c": lambda stages, seed: side_keras(stages, seed, keep_bn_frozen=True),
    "f": side_chosen_finetune,
    "b": lambda stages, seed: side_keras(stages, seed, keep_bn_frozen=False),
    "d": lambda stages, seed: side_mlkit(stages, seed, train_bn=True),
}


def run_collection(stages, args):
    """Every side and seed asked for on one collection; finished ones (results.jsonl) are read back."""
    results = stages.folder / "results.jsonl"
    done = {}
    if results.exists():
        for line in results.read_text().splitlines():
            record = json.loads(line)
            done[record["code"], record["seed"]] = record["rows"]
    sides = args.sides.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    keras_seeds = [int(s) for s in (args.keras_seeds or args.seeds).split(",")]
    rows = []
    for seed in sorted(set(seeds) | set(keras_seeds)):
        for code in SIDES:
            if code not in sides or seed not in (keras_seeds if code in KERAS_SEEDED else seeds):
                continue
            if (code, seed) not in done and not args.report_only:
                done[code, seed] = RUNNERS[code](stages, seed)
                with results.open("a") as log:
                    log.write(json.dumps({"code": code, "seed": seed, "rows": done[code, seed]}, default=float) + "\n")
                for r in done[code, seed]:
                    print(json.dumps(r, default=float), flush=True)
            rows.extend(done.get((code, seed), []))
    return rows


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
    needed = [(Path(args.weights), "the pretrained weights (../shared/pretrained/)")]
    if "stamps" in args.collections.split(","):
        needed.append((Path(args.root), "the image tree (apt-get install tuxpaint-stamps-default)"))
    for path, what in needed:
        if not path.exists():
            sys.exit(f"{path} is missing: {what}")
    import keras
    import tensorflow as tf

    print(f"{platform.node()}: {os.cpu_count()} CPUs, TensorFlow {tf.__version__}, Keras {keras.__version__}")
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.workdir or scratch)
        for collection, manifest in collection_manifests(args, folder).items():
            rows = run_collection(Stages(manifest, folder / collection, args), args)
            results[collection] = {"rows": rows, "summary": summarise(rows)}
    for collection, result in results.items():
        print_table(collection, result["rows"], result["summary"])
    if args.json:
        write_json(args.json, {"results": results, "args": vars(args)})


if __name__ == "__main__":
    main()
