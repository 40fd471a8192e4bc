"""How good are `mlkit crop`'s boxes, does cropping help the model, and what do crop and look cost?

Stamps from Debian's tuxpaint-stamps-default carry an alpha channel, so each one's true object box is
known. Each is pasted at a random position and scale (its longer side 20-60% of the canvas's shorter
side) on a 320 x 240 canvas:

  plain     a white background;
  textured  a random 320 x 240 window of a photograph from Debian's plasma-workspace-wallpapers
            (`apt-get install plasma-workspace-wallpapers`: Autumn, BytheWater, ColdRipple, DarkestHour,
            EveningGlow, FallenLeaf, Grey, Kite, OneStandsOut, Path, summer_1am; the two drawings,
            FlyingKonqui and PastelHills, are left out).

Boxes: mean IoU with the true box of (a) mlkit's crop by each --methods (`Cropper`, no margin, no
minimum size), (b) a centre crop of the same area and shape as (a)'s, and (c) a "differs from the border colour"
threshold crop: the box of the pixels farther than --border-tolerance from the median colour of the
image's outer ring.

Model: a multilabel manifest of the pasted stamps (labels: the stamp's folders, as `mlkit data
from-folders --labels path`), split 70/15/15; cache-features + a small tune-top grid, once on the
canvases and once on `mlkit crop`'s crops; the best top's validation micro-F1 (cardinality rule) of each.

Time: seconds per image of `Cropper.boxes` (each method) against the backbone's forward pass (pooled
features) at the same size, each on batches of --batch images, on this machine's CPU; and of `mlkit look`'s
per-image work (the crop method's map and box, Grad-CAM for 3 labels, the scores; a 10-label top of
random weights, which costs what a trained one does; the PNG drawing left out), one image at a time as
look runs.

The method's settings were tuned on --seed 0 (60 textured, 40 plain images); BENCHMARKS.md reports --seed 1.

Run:
    python benchmarks/crop_quality.py --seed 1                # boxes and timing (about 5 minutes)
    python benchmarks/crop_quality.py --model-images 600      # also the micro-F1 with and without crop
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PRETRAINED = REPO.parent / "shared" / "pretrained" / "mobilenetv2_nsfwjs.weights.h5"
STAMPS = Path("/usr/share/tuxpaint/stamps")
WALLPAPERS = Path("/usr/share/wallpapers")
DRAWINGS = {"FlyingKonqui", "PastelHills"}
CANVAS = (240, 320)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="pasted stamps per background kind")
    parser.add_argument("--model-images", type=int, default=0, help="pasted stamps for the micro-F1 comparison "
                        "(0: skip it); the crops are the first of --methods'")
    parser.add_argument("--model-background", default="textured", choices=("plain", "textured"),
                        help="the canvases of the micro-F1 comparison")
    parser.add_argument("--skip-boxes", action="store_true", help="only the micro-F1 comparison")
    parser.add_argument("--weights", default=str(PRETRAINED), help="MobileNetV2 weights file")
    parser.add_argument("--size", type=int, default=None, help="side the crop's backbone sees (default: each "
                        "method's own, as mlkit crop's --image-size)")
    parser.add_argument("--layers", type=int, default=8, help="--layers of mlkit crop")
    parser.add_argument("--methods", default="auto,auto:1,auto:border,sokolova,border", help="--method values of "
                        "mlkit crop to compare; auto:border is auto with --photo-map border, auto:1 auto with --heads 1")
    parser.add_argument("--threshold", type=float, default=None, help="--threshold of mlkit crop (default: each "
                        "method's own)")
    parser.add_argument("--stride", type=int, default=4, help="--stride of mlkit crop (border)")
    parser.add_argument("--window", type=int, default=3, help="--window of mlkit crop (sokolova)")
    parser.add_argument("--min-std", type=float, default=0.05, help="--min-std of mlkit crop")
    parser.add_argument("--border-tolerance", type=float, default=30.0, help="colour distance (0-441) from the "
                        "border's median colour that counts as object in the threshold baseline, and --tolerance of "
                        "mlkit crop (auto)")
    parser.add_argument("--batch", type=int, default=16, help="images per batch when timing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results here")
    return parser.parse_args(argv)


def photos():
    found = sorted(p for p in WALLPAPERS.glob("*/contents/images/1920x1080.jpg") if p.parts[-4] not in DRAWINGS)
    if not found:
        raise SystemExit("no photographs in /usr/share/wallpapers: apt-get install plasma-workspace-wallpapers")
    return found


def stamp_paths():
    found = sorted(STAMPS.rglob("*.png"))
    if not found:
        raise SystemExit("no stamps in /usr/share/tuxpaint/stamps: apt-get install tuxpaint-stamps-default")
    return found


def paste(rng, stamp_path, background):
    """A canvas with the stamp pasted on `background` (PIL RGB, canvas-sized); returns (pixels, true box)."""
    with Image.open(stamp_path) as opened:
        stamp = opened.convert("RGBA")
    solid = stamp.getchannel("A").point(lambda a: 255 if a > 127 else 0).getbbox()
    stamp = stamp.crop(solid)
    height, width = CANVAS
    scale = rng.uniform(0.2, 0.6) * min(height, width) / max(stamp.size)
    stamp = stamp.resize((max(1, round(stamp.width * scale)), max(1, round(stamp.height * scale))),
                         Image.Resampling.LANCZOS)
    left = int(rng.integers(0, width - stamp.width + 1))
    top = int(rng.integers(0, height - stamp.height + 1))
    canvas = background.copy()
    canvas.paste(stamp, (left, top), stamp)
    rows, cols = np.nonzero(np.asarray(stamp.getchannel("A")) > 127)
    return np.asarray(canvas), (top + rows.min(), left + cols.min(), top + rows.max() + 1, left + cols.max() + 1)


def backgrounds(rng, kind, count):
    """`count` canvas-sized backgrounds: white, or random windows of the photographs."""
    height, width = CANVAS
    library = {}
    if kind == "plain":
        return [Image.new("RGB", (width, height), "white")] * count
    chosen = []
    for path in rng.choice(photos(), count):
        if path not in library:
            with Image.open(path) as opened:
                library[path] = opened.convert("RGB").resize((640, 360), Image.Resampling.LANCZOS)
        x, y = int(rng.integers(0, 640 - width)), int(rng.integers(0, 360 - height))
        chosen.append(library[path].crop((x, y, x + width, y + height)))
    return chosen


def pasted_set(kind, count, seed):
    rng = np.random.default_rng(seed)
    stamps = stamp_paths()
    chosen = [stamps[i] for i in rng.choice(len(stamps), count, replace=count > len(stamps))]
    return [(*paste(rng, stamp, ground), stamp) for stamp, ground in zip(chosen, backgrounds(rng, kind, count))]


def centre_box(box, shape):
    """A box of `box`'s size centred in the image."""
    tall, wide = box[2] - box[0], box[3] - box[1]
    top, left = (shape[0] - tall) // 2, (shape[1] - wide) // 2
    return (top, left, top + tall, left + wide)


def border_box(pixels, tolerance):
    """The box of the pixels farther than `tolerance` from the median colour of the image's outer ring."""
    ring = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                           pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)]).astype("float64")
    distance = np.linalg.norm(pixels.astype("float64") - np.median(ring, axis=0), axis=-1)
    rows, cols = np.nonzero(distance > tolerance)
    if rows.size == 0:
        return (0, 0, pixels.shape[0], pixels.shape[1])
    return (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)


def box_quality(args, croppers):
    from mlkit.cropping.boxes import iou

    results = {}
    for kind in ("plain", "textured"):
        items = pasted_set(kind, args.images, args.seed)
        images = [pixels for pixels, _, _ in items]
        scores = {"border threshold": [iou(border_box(pixels, args.border_tolerance), truth)
                                       for pixels, truth, _ in items]}
        for method, cropper in croppers.items():
            found = []
            for start in range(0, len(items), args.batch):
                found += cropper.boxes(images[start:start + args.batch])
            scores[method] = [iou(box, truth) for (_, truth, _), box in zip(items, found)]
            scores[f"centre ({method}'s area)"] = [iou(centre_box(box, pixels.shape), truth)
                                                   for (pixels, truth, _), box in zip(items, found)]
        results[kind] = {name: float(np.mean(values)) for name, values in scores.items()}
        results[kind]["images"] = len(items)
        print(f"{kind:<9} mean IoU ({len(items)} images): "
              + ", ".join(f"{name} {value:.3f}" for name, value in results[kind].items() if name != "images"),
              flush=True)
    return results


def per_image(run, batches, count):
    """Seconds per image of `run(batch)` over `batches` holding `count` images, after one warm-up call."""
    run(batches[0])
    started = time.perf_counter()
    for batch in batches:
        run(batch)
    return (time.perf_counter() - started) / count


def timing(args, croppers):
    """Milliseconds per image: each method's boxes, look's per-image work, the backbone's pooled forward pass."""
    import keras

    from mlkit.backbones import build_backbone

    items = pasted_set("textured", args.batch * 3, args.seed + 1)
    images = [pixels for pixels, _, _ in items]
    results = {}
    for size in sorted({cropper.config.image_size for cropper in croppers.values()}):
        backbone, _ = build_backbone("mobilenetv2", args.weights, size)
        resized = np.stack([np.asarray(Image.fromarray(p).resize((size, size))) for p in images])
        resized = resized.astype("float32") / 127.5 - 1
        results[f"forward_{size}_ms"] = 1000 * per_image(backbone.predict_on_batch, [
            resized[i:i + args.batch] for i in range(0, len(resized), args.batch)], len(images))
    batches = [images[i:i + args.batch] for i in range(0, len(images), args.batch)]
    for method, cropper in croppers.items():
        results[f"crop_{method}_ms"] = per_image(cropper.boxes, batches, len(images)) * 1000
        eyes = look_eyes(cropper.config, args)
        results[f"look_{method}_ms"] = per_image(lambda batch, eyes=eyes: [look_one(eyes, p) for p in batch],
                                                 batches[:1], len(batches[0])) * 1000
    keras.backend.clear_session()
    forward = {name: value for name, value in results.items() if name.startswith("forward")}
    print("time per image: backbone forward pass " + ", ".join(f"{value:.1f} ms at {name.split('_')[1]} px"
                                                               for name, value in forward.items()), flush=True)
    for method, cropper in croppers.items():
        base = results[f"forward_{cropper.config.image_size}_ms"]
        print(f"  {method} at {cropper.config.image_size} px: crop {results[f'crop_{method}_ms']:.1f} ms "
              f"({results[f'crop_{method}_ms'] / base:.1f}x the forward pass), look "
              f"{results[f'look_{method}_ms']:.1f} ms ({results[f'look_{method}_ms'] / base:.1f}x)", flush=True)
    return results


def look_eyes(config, args):
    """`mlkit look`'s per-network object on the crop's backbone with a 10-label top of random weights."""
    import keras

    from mlkit.looking.look import Eyes
    from mlkit.looking.networks import backbone_parts

    parts = backbone_parts("mobilenetv2", args.weights, config.image_size)
    parts.top = keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10, activation="sigmoid")])
    return Eyes(parts, config)


def look_one(eyes, pixels):
    """What `mlkit look` computes for one image and one network, the drawing left out."""
    eyes.early_map(pixels)
    scores = eyes.scores(pixels)
    eyes.grad_cam(pixels, list(np.argsort(-scores)[:3]))


def model_quality(args):
    """Validation micro-F1 of the best tuned top, on the canvases and on their crops."""
    import pandas as pd

    import mlkit

    rng = np.random.default_rng(args.seed)
    results = {}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        rows = []
        (work / "images").mkdir()
        for index, (pixels, _, stamp) in enumerate(pasted_set(args.model_background, args.model_images, args.seed + 2)):
            name = f"images/{index:05d}.png"
            Image.fromarray(pixels).save(work / name)
            labels = tuple(stamp.relative_to(STAMPS).parts[:-1])
            rows.append({"image": name, "labels": labels, "split": rng.choice(["train", "val", "test"],
                                                                                p=[0.7, 0.15, 0.15])})
        manifest = mlkit.write_manifest(pd.DataFrame(rows), work / "canvas.csv")
        cropped = mlkit.crop(manifest, work / "cropped", progress=False,
                             **crop_settings(args, args.methods.split(",")[0])).manifest
        for name, path in (("canvas", manifest), ("cropped", cropped)):
            space = work / f"ws_{name}"
            cache = mlkit.cache_features(path, space, backbone="mobilenetv2", weights=args.weights, image_size=96,
                                         progress=False)
            summary = mlkit.tune_top(cache.path, space, units=[64, 256], layers=[1], reg="d2", optimizer="adam",
                                     lr=0.001, epochs=40, patience=6, seed=args.seed, verbose=False)
            results[name] = float(summary["val_f1"].max())
        print(f"{args.model_background} canvases, validation micro-F1 of the best top at 96 px: canvases {results['canvas']:.3f}, "
              f"mlkit crops {results['cropped']:.3f} ({args.model_images} images)", flush=True)
    return results


def crop_settings(args, method):
    """The `mlkit.crop` settings of one method, as the command line gave them ("auto:border": auto, --photo-map
    border; "auto:1": auto, --heads 1)."""
    from mlkit.cropping.objectness import HEAD_FILES, HEADS

    method, _, variant = method.partition(":")
    return {"method": method, "photo_map": "objectness" if variant in HEAD_FILES or not variant else variant,
            "heads": variant if variant in HEAD_FILES else HEADS, "weights": args.weights,
            "image_size": args.size, "layers": args.layers,
            "threshold": args.threshold, "window": args.window, "stride": args.stride, "min_std": args.min_std,
            "tolerance": args.border_tolerance,
            "margin": 0.0, "min_size": 0.0}


def main(argv=None):
    args = parse_args(argv)
    from mlkit.cropping.config import CropConfig
    from mlkit.looking.crop import Cropper

    results = {"settings": vars(args)}
    if not args.skip_boxes:
        croppers = {method: Cropper(CropConfig(**crop_settings(args, method))) for method in args.methods.split(",")}
        results.update(boxes=box_quality(args, croppers), time=timing(args, croppers))
    if args.model_images:
        results["model"] = model_quality(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
