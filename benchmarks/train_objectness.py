"""Trains the objectness heads that `mlkit crop --method auto` ships with (mlkit/cropping/objectness_mobilenetv2_2.npz).

The head (`mlkit.cropping.objectness`) reads MobileNetV2's ImageNet feature maps up to block 10 and the
boundary prior's map, and gives each cell of a 1/8 grid the share of it an object covers. It learns that
from cut-outs pasted on photographs, none of which `benchmarks/crop_quality.py` uses:

  objects      every PNG of at least 128 x 128 pixels with an alpha channel under /usr/share/icons
               (Debian's adwaita-icon-theme, gnome-icon-theme, mate-icon-theme, oxygen-icon-theme,
               elementary-xfce-icon-theme, lxde-icon-theme); a share --fill of them is drawn as its
               silhouette filled with a window of another background, its colours scaled and shifted,
               so that the head sees photographic objects too, not only drawings;
  backgrounds  every JPEG, PNG and WebP under /usr/share/backgrounds (Debian's gnome-backgrounds,
               mate-backgrounds, ukui-wallpapers): a random window of 50-100% of each side, resized to
               a canvas of 320 x 240, 240 x 320, 256 x 256, 400 x 225 or 400 x 300.

Each object's longer side is 15-70% of the canvas's shorter side, at a random position; the target of
each grid cell is the share of it the object's alpha covers. The benchmark's stamps (Tux Paint) and
photographs (plasma-workspace-wallpapers) are never read, so its boxes measure the head on objects and
backgrounds it has not seen.

The backbone is the pretrained MobileNetV2 of ../shared/pretrained (ImageNet weights up to block 10,
which is all the head reads; Keras's `imagenet` file has the same). The head is trained with Adam
(1e-3), binary cross-entropy, batches of 32, on 90% of the composites; the loss on the other 10% is printed.

Two heads are trained, from seeds 0 and 1 (each its own composites and initial weights); mlkit averages
their maps (+0.02 mean IoU over either alone on crop_quality.py's seed-0 photographs).

Run (about 25 minutes a head on 2 CPU cores; peak memory about 8 GB at 10,000 images):
    python benchmarks/train_objectness.py --seeds 0,1
The shipped file (--heads 2) was written as two runs of one seed each, joined:
    python benchmarks/train_objectness.py --seeds 0 --out /tmp/s0.npz
    python benchmarks/train_objectness.py --seeds 1 --out /tmp/s1.npz
    python benchmarks/train_objectness.py --seeds "" --join /tmp/s0.npz /tmp/s1.npz \
        --out mlkit/cropping/objectness_mobilenetv2_2.npz
The first release's heads (--heads 1, objectness_mobilenetv2.npz) were written alike with --dilations 1,2,4.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PRETRAINED = REPO.parent / "shared" / "pretrained" / "mobilenetv2_nsfwjs.weights.h5"
ICONS = Path("/usr/share/icons")
BACKGROUNDS = Path("/usr/share/backgrounds")
CANVASES = ((240, 320), (320, 240), (256, 256), (225, 400), (300, 400))
IMAGE_SIZE = 224


def parse_args(argv=None):
    from mlkit.cropping import objectness

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10000, help="composites to train on")
    parser.add_argument("--fill", type=float, default=0.5, help="share of objects drawn as a silhouette filled "
                        "with a window of a photograph")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--weights", default=str(PRETRAINED), help="MobileNetV2 weights file (ImageNet)")
    parser.add_argument("--out", default=str(REPO / "mlkit" / "cropping" / "objectness_mobilenetv2_2.npz"))
    parser.add_argument("--dilations", default=",".join(map(str, objectness.DILATIONS)), help="the dilation of each 3 x 3 "
                        "convolution of the head (the first shipped heads, --heads 1: 1,2,4)")
    parser.add_argument("--seeds", default="0,1", help="one head per seed, each on its own composites; the "
                        "shipped file holds two, whose maps mlkit averages")
    parser.add_argument("--join", nargs="*", default=[], help="head files (.npz) whose heads go into --out "
                        "first (to join runs of one seed each)")
    return parser.parse_args(argv)


def icon_paths():
    """PNGs of at least 128 x 128 pixels with an alpha channel, under /usr/share/icons."""
    found = []
    for path in sorted(ICONS.rglob("*.png")):
        try:
            with Image.open(path) as opened:
                if min(opened.size) >= 128 and opened.mode in ("RGBA", "LA", "P"):
                    found.append(path)
        except OSError:
            continue
    if not found:
        raise SystemExit("no icons in /usr/share/icons: apt-get install oxygen-icon-theme mate-icon-theme")
    return found


def background_paths():
    found = sorted(p for p in BACKGROUNDS.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    if not found:
        raise SystemExit("no backgrounds in /usr/share/backgrounds: apt-get install gnome-backgrounds "
                         "mate-backgrounds")
    return found


class Library:
    """Background photographs read once, at most 720 pixels on the longer side."""

    def __init__(self, paths):
        self.paths, self.read = paths, {}

    def window(self, rng, shape):
        """A random window (50-100% of each side) of a random photograph, resized to `shape` (h, w)."""
        path = self.paths[int(rng.integers(len(self.paths)))]
        if path not in self.read:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
            scale = 720 / max(image.size)
            self.read[path] = image.resize((max(shape[1] + 1, round(image.width * scale)),
                                            max(shape[0] + 1, round(image.height * scale))), Image.Resampling.LANCZOS)
        image = self.read[path]
        share = rng.uniform(0.5, 1.0)
        wide = max(min(image.width, int(shape[1] / share)), 16)
        tall = max(min(image.height, int(shape[0] / share)), 16)
        left, top = int(rng.integers(0, image.width - wide + 1)), int(rng.integers(0, image.height - tall + 1))
        return image.crop((left, top, left + wide, top + tall)).resize((shape[1], shape[0]), Image.Resampling.BILINEAR)


def composite(rng, icon_path, background, fill=None):
    """(uint8 canvas, float32 alpha of the object on it), or None for an icon with nothing opaque."""
    with Image.open(icon_path) as opened:
        cutout = opened.convert("RGBA")
    solid = cutout.getchannel("A").point(lambda a: 255 if a > 127 else 0).getbbox()
    if solid is None:
        return None
    cutout = cutout.crop(solid)
    height, width = background.height, background.width
    scale = rng.uniform(0.15, 0.7) * min(height, width) / max(cutout.size)
    cutout = cutout.resize((max(1, round(cutout.width * scale)), max(1, round(cutout.height * scale))),
                           Image.Resampling.LANCZOS)
    if fill is not None:
        patch = np.asarray(fill.resize(cutout.size, Image.Resampling.BILINEAR), np.float32)
        patch = patch * rng.uniform(0.6, 1.4, 3).astype(np.float32) + rng.uniform(-40, 40)
        filled = Image.fromarray(np.clip(patch, 0, 255).astype(np.uint8)).convert("RGBA")
        filled.putalpha(cutout.getchannel("A"))
        cutout = filled
    left = int(rng.integers(0, width - cutout.width + 1))
    top = int(rng.integers(0, height - cutout.height + 1))
    canvas = background.copy()
    canvas.paste(cutout, (left, top), cutout)
    alpha = np.zeros((height, width), np.float32)
    alpha[top:top + cutout.height, left:left + cutout.width] = np.asarray(cutout.getchannel("A")) / 255.0
    return np.asarray(canvas), alpha


def training_set(args, seed, model):
    """(inputs (N, g, g, 233) float16, targets (N, g, g, 1) float16) of --images composites."""
    from mlkit.cropping.objectness import CHANNELS, GRID_STRIDE, head_inputs
    from mlkit.images import resize_array

    rng = np.random.default_rng(seed)
    icons, library = icon_paths(), Library(background_paths())
    print(f"{len(icons)} icons, {len(library.paths)} backgrounds", flush=True)
    side = IMAGE_SIZE // GRID_STRIDE
    # Filled in place: a list of batches joined at the end held twice the memory, and more to fragmentation.
    inputs = np.empty((args.images, side, side, sum(CHANNELS) + 1), np.float16)
    targets = np.empty((args.images, side, side, 1), np.float16)
    pending, made_count = [], 0
    started = time.perf_counter()
    while made_count < args.images:
        background = library.window(rng, CANVASES[int(rng.integers(len(CANVASES)))])
        fill = library.window(rng, (200, 200)) if rng.random() < args.fill else None
        made = composite(rng, icons[int(rng.integers(len(icons)))], background, fill)
        if made is None:
            continue
        pending.append(made)
        targets[made_count] = resize_array(made[1][..., None], side)
        made_count += 1
        if len(pending) == 32 or made_count == args.images:
            batch = np.stack([resize_array(canvas, IMAGE_SIZE) for canvas, _ in pending]) / 127.5 - 1
            maps = [np.asarray(output) for output in model(batch, training=False)]
            inputs[made_count - len(pending):made_count] = head_inputs(maps)
            pending = []
            if made_count % 1024 < 32:
                print(f"{made_count} composites, {time.perf_counter() - started:.0f} s", flush=True)
    return inputs, targets


def batches(keras):
    """A `keras.utils.PyDataset` of standardised float32 batches, read from the float16 arrays as they are needed
    (fit on whole float32 copies took more than 24 GB at 10,000 composites)."""

    class Batches(keras.utils.PyDataset):
        def __init__(self, inputs, targets, mean, std, rows, shuffle=False, size=32):
            super().__init__()
            self.inputs, self.targets, self.mean, self.std = inputs, targets, mean, std
            self.rows, self.shuffle, self.size = np.array(rows), shuffle, size
            self.rng = np.random.default_rng(0)
            self.on_epoch_end()

        def __len__(self):
            return -(-len(self.rows) // self.size)

        def __getitem__(self, index):
            rows = np.sort(self.order[index * self.size:(index + 1) * self.size])
            return ((self.inputs[rows].astype(np.float32) - self.mean) / self.std,
                    self.targets[rows].astype(np.float32))

        def on_epoch_end(self):
            self.order = self.rng.permutation(self.rows) if self.shuffle else self.rows

    return Batches


def train_head(args, seed, model, keras):
    """(head, mean, std): one head trained on --images composites drawn with `seed`."""
    from mlkit.cropping.objectness import build_head

    keras.utils.set_random_seed(seed)
    inputs, targets = training_set(args, seed, model)
    Batches = batches(keras)
    mean = np.mean([chunk.astype(np.float32).mean(axis=(0, 1, 2)) for chunk in np.array_split(inputs, 32)], axis=0)
    std = np.sqrt(np.mean([(np.square(chunk.astype(np.float32) - mean)).mean(axis=(0, 1, 2))
                           for chunk in np.array_split(inputs, 32)], axis=0)) + 1e-3
    held = len(inputs) // 10
    head = build_head(inputs.shape[-1], tuple(int(d) for d in args.dilations.split(",")))
    head.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
    head.fit(Batches(inputs, targets, mean, std, range(held, len(inputs)), shuffle=True),
             validation_data=Batches(inputs, targets, mean, std, range(held)), epochs=args.epochs, verbose=2)
    return head, mean, std


def main(argv=None):
    args = parse_args(argv)
    import keras

    from mlkit.backbones import build_backbone
    from mlkit.cropping.objectness import LAYERS, load_heads, save_heads

    backbone, _ = build_backbone("mobilenetv2", args.weights, IMAGE_SIZE)
    model = keras.Model(backbone.input, [backbone.get_layer(name).output for name in LAYERS])
    heads = [head for path in args.join for head in load_heads(path)]
    heads += [train_head(args, int(seed), model, keras) for seed in args.seeds.split(",") if seed]
    save_heads(heads, args.out)
    print(f"wrote {args.out} ({len(heads)} heads)", flush=True)


if __name__ == "__main__":
    main()
