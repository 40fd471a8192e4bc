"""`mlkit look`: where a model looks, before and after fine-tuning (Sokolova 2019's figure 9, and Grad-CAM).

For each image one PNG grid, one row per network:

    image (+ caption) | early-layer map with its crop box | Grad-CAM: label 1 | label 2 | ...

The early-layer map is the one `mlkit crop` cuts along (`mlkit.cropping.saliency`).
Grad-CAM (Selvaraju et al., "Grad-CAM: visual explanations from deep networks", 2017) weights each channel of
the backbone's last convolutional block by the mean gradient of a label's
score with respect to it, sums them and keeps the positive part: the regions
that raise that label. The labels are the model's decided ones, highest score
first (then the next highest scores, marked "not decided", up to `top`).

`compare` adds a second row from the network before fine-tuning: "before"
(the run's own cache backbone and tuned top, i.e. the model fine-tuning
started from), a bottleneck cache (.h5: its backbone, with the run's tuned
top), or another exported run. Maps are drawn on the same scale within a
row, so a row compares its labels and the rows compare the networks.
"""

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mlkit.cropping.config import LOOK_METHOD, CropConfig
from mlkit.cropping.finder import BoxFinder
from mlkit.errors import MlkitError
from mlkit.files import atomic_path
from mlkit.images import load_image, resize_array
from mlkit.looking.networks import ModelParts, model_parts
from mlkit.looking.sheets import BOX_COLOUR, fitted, font
from mlkit.options import defaults_of

log = logging.getLogger(__name__)

TILE = 200
TITLE = 34


def last_conv_model(parts):
    """preprocessed input -> (last 4-D feature map of the backbone, the features the top reads), one graph.

    The features are the backbone's pooled output, or, for a network built on
    taps (the backbone then outputs one pooled vector per tap), those vectors
    side by side in the same order, as the network concatenates them.
    """
    import keras

    backbone = parts.backbone
    maps = [layer for layer in backbone.layers if len(layer.output.shape) == 4]
    if not maps:
        raise MlkitError(f"{backbone.name} has no convolutional feature maps for Grad-CAM")
    pooled = backbone.output
    if isinstance(pooled, (list, tuple)):
        pooled = keras.layers.Concatenate()(list(pooled)) if len(pooled) > 1 else pooled[0]
    return keras.Model(backbone.input, [maps[-1].output, pooled])


class Eyes:
    """One network's early-layer map, crop box and Grad-CAM maps for an image.

    Args:
        parts: the network's `ModelParts` (preprocessing, backbone, top).
        config: the `CropConfig` whose early-layer settings draw the map.
        tokens: for a caption network: a function caption -> the top's "tokens" input.
    """

    def __init__(self, parts, config, tokens=None):
        self.parts, self.config, self.tokens = parts, config, tokens
        self.finder = BoxFinder(parts, config)
        self.features = last_conv_model(parts)

    def early_map(self, pixels):
        """(the method's map (H, W) in [0, 1], crop box in the image's pixels)."""
        heat = self.finder.heat_maps([pixels])[0]
        return heat, self.finder.boxes([pixels], [heat])[0]

    def grad_cam(self, pixels, labels, caption=None):
        """{label index: Grad-CAM map (h, w) >= 0, not rescaled} and the network's scores (L,)."""
        import tensorflow as tf

        x = resize_array(pixels, self.parts.image_size)[None]
        for layer in self.parts.preprocessing:
            x = layer(x)
        maps = {}
        for label in labels:
            with tf.GradientTape() as tape:
                feature_map, pooled = self.features(x, training=False)
                scores = self._scores(pooled, caption)
                score = scores[0, label]
            gradient = tape.gradient(score, feature_map)[0]
            weights = tf.reduce_mean(gradient, axis=(0, 1))
            maps[label] = np.maximum(np.asarray(tf.reduce_sum(feature_map[0] * weights, axis=-1)), 0)
        return maps

    def scores(self, pixels, caption=None):
        x = resize_array(pixels, self.parts.image_size)[None]
        for layer in self.parts.preprocessing:
            x = layer(x)
        return np.asarray(self._scores(self.features(x, training=False)[1], caption))[0]

    def _scores(self, pooled, caption):
        if self.tokens is None:
            return self.parts.top(pooled, training=False)
        return self.parts.top({"features": pooled, "tokens": self.tokens(caption)}, training=False)


def caption_tokens(exported):
    """For a caption model: caption -> token ids, with the model's own vectoriser; else None."""
    from mlkit.models.network import takes_captions

    if not takes_captions(exported):
        return None
    network = exported.get_layer("network")
    vectorisers = [layer for layer in network.layers if "vectori" in type(layer).__name__.lower()
                   or "vectori" in layer.name.lower()]
    if not vectorisers:
        raise MlkitError("this caption model has no caption vectoriser layer inside its network")
    return lambda caption: vectorisers[0](np.asarray([caption or ""], dtype=object))


def before_parts(compare, record, workdir):
    """`ModelParts` of the network before fine-tuning, for --compare (see this module's docstring)."""
    from mlkit.backbones import preprocessing_layers, tapped_backbone
    from mlkit.bottlenecks.cache import open_cache
    from mlkit.models.network import rebuild_backbone
    from mlkit.tuning.top import load_top

    text = str(compare)
    if text != "before" and not text.endswith(".h5"):
        return model_parts(text, workdir)[0]
    cache_path = record.get("cache_path") if text == "before" else text
    if not cache_path or not Path(cache_path).exists():
        raise MlkitError(f"--compare {text}: no cache at {cache_path}; give the cache (.h5) the run was tuned on")
    attrs = dict(open_cache(cache_path).attrs)
    backbone, spec = rebuild_backbone(attrs)
    top, config = load_top(workdir, record["top_run"])
    if tuple(config.tap_list) != ("last",):  # a top on taps reads the backbone's taps, as the network does
        backbone = tapped_backbone(backbone, config.tap_list)
    preprocessing = preprocessing_layers(spec, attrs["preprocess"], attrs.get("zmuv_mean"), attrs.get("zmuv_std"))
    return ModelParts(preprocessing, backbone, top, int(attrs["image_size"]), f"before fine-tuning ({spec.name})")


# The Python API's defaults are CropConfig's (mlkit.options): written once, there.
CROP = defaults_of(CropConfig)


def look(model, images, out, *, workdir=".", compare=None, top=3, caption=None, method=LOOK_METHOD,
         backbone=CROP["backbone"], weights=CROP["weights"], layers=CROP["layers"], image_size=CROP["image_size"],
         min_std=CROP["min_std"], threshold=CROP["threshold"], photo_map=CROP["photo_map"],
         heads=CROP["heads"], tolerance=CROP["tolerance"], window=CROP["window"],
         stride=CROP["stride"], margin=CROP["margin"], min_size=CROP["min_size"], aspect=CROP["aspect"],
         background=CROP["background"],
         batch_size=CROP["batch_size"]):
    """Draws, for each image, where a fine-tuned model looks (and, with `compare`, where it looked before).

    Args:
        model: a `.keras` path or a run name under `<workdir>/models/`.
        images: image files, folders (searched recursively) and manifests.
        out: the folder for the PNG grids (one per image, named after it).
        workdir: the workspace. Defaults to ".".
        compare: "before", a cache (.h5) or another run: a second row of maps
            from that network. Defaults to None.
        top: Grad-CAM maps for this many labels. Defaults to 3.
        caption: for a caption model, the caption of every image (else each
            manifest row's). Defaults to None.
        method, backbone, weights, layers, image_size, min_std, threshold, photo_map, heads, tolerance,
            window, stride, margin, min_size, aspect, background, batch_size: the `CropConfig`
            settings for the early-layer map and its box (`mlkit look --help`).

    Returns:
        The list of PNG paths written, in input order.

    Example:
        look("stamps_run", ["photos/"], "look/", compare="before")
    """
    from mlkit.models.predict import attach_captions, expand_inputs

    config = CropConfig(method=method, backbone=backbone, weights=weights, layers=layers, image_size=image_size,
                        min_std=min_std, threshold=threshold, photo_map=photo_map, heads=heads, tolerance=tolerance, window=window,
                        stride=stride, margin=margin, min_size=min_size, aspect=aspect, background=background,
                        batch_size=batch_size)
    parts, record = model_parts(model, workdir)
    exported = parts.exported
    tokens = caption_tokens(exported)
    items = attach_captions(expand_inputs(images), caption, tokens is not None, model)
    label_names = list(record.get("label_names") or [])
    rows = [("fine-tuned: " + parts.name, Eyes(parts, config, tokens))]
    if compare:
        before = before_parts(compare, record, workdir)
        rows.append((f"--compare {compare}: {before.name}", Eyes(before, config, tokens)))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index, (path, _, text) in enumerate(items):
        pixels = load_image(path, record.get("input", {}).get("background") or (255, 255, 255))
        decided = decided_labels(exported, pixels, text)
        scores = rows[0][1].scores(pixels, text)
        labels = ranked_labels(scores, decided, top)
        target = out / f"{index:04d}_{Path(path).stem[:60]}.png"
        grid(target, pixels, text, rows, labels, scores, decided, label_names)
        written.append(target)
    return written


def decided_labels(exported, pixels, caption):
    """The exported model's decided labels (uint8 (L,)) for one image."""
    inputs = pixels[None]
    if isinstance(exported.input, dict):
        inputs = {"image": pixels[None], "caption": np.asarray([caption or ""], dtype=object)}
    return np.asarray(exported(inputs, training=False)["labels"])[0]


def ranked_labels(scores, decided, top):
    """Up to `top` label indices: decided ones by score, then the highest undecided."""
    order = np.argsort(-scores, kind="stable")
    chosen = [i for i in order if decided[i]] + [i for i in order if not decided[i]]
    return [int(i) for i in chosen[: max(int(top), 1)]]


def grid(path, pixels, caption, rows, labels, scores, decided, label_names):
    """Writes one image's grid: a row per network, columns image | early map | Grad-CAM per label."""
    columns = 2 + len(labels)
    caption_height = 30 if caption else 0
    sheet = Image.new("RGB", (columns * TILE, caption_height + len(rows) * (TILE + TITLE) + 20), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (name, eyes) in enumerate(rows):
        y = caption_height + row * (TILE + TITLE) + 20
        draw.text((4, y - 18), name, fill="black", font=font(13))
        heat, box = eyes.early_map(pixels)
        cams = eyes.grad_cam(pixels, labels, caption)
        ceiling = max(float(cam.max()) for cam in cams.values()) or 1.0
        row_scores = eyes.scores(pixels, caption) if row else scores
        tiles = [("image", pixels, None), (f"{eyes.config.method} map + crop", overlay(pixels, heat), box)]
        for label in labels:
            name_text = label_names[label] if label < len(label_names) else f"label {label}"
            mark = "" if decided[label] else " (not decided)"
            tiles.append((f"{name_text} {row_scores[label]:.2f}{mark}", overlay(pixels, cams[label] / ceiling), None))
        for column, (title, picture, crop_box) in enumerate(tiles):
            tile, scale = fitted(picture, TILE)
            x = column * TILE
            sheet.paste(tile, (x, y + TITLE - 14))
            if crop_box is not None:
                top, left, bottom, right = (v * scale for v in crop_box)
                draw.rectangle((x + left, y + TITLE - 14 + top, x + right - 1, y + TITLE - 14 + bottom - 1),
                               outline=BOX_COLOUR, width=2)
            draw.text((x + 4, y + 2), title[:30], fill="black", font=font(12))
    if caption:
        draw.text((4, 4), f"caption: {caption}"[:140], fill="black", font=font(13))
    with atomic_path(path) as partial:
        sheet.save(partial, format="PNG")


def overlay(pixels, heat):
    """The image darkened to half, with `heat` (0-1, any size) on it in a yellow-red scale."""
    height, width = pixels.shape[:2]
    heat = np.asarray(Image.fromarray(np.clip(heat * 255, 0, 255).astype(np.uint8)).resize(
        (width, height), Image.Resampling.BILINEAR), dtype=np.float32)[..., None] / 255
    colour = np.concatenate([np.ones_like(heat), 1 - 0.8 * heat, np.zeros_like(heat)], axis=-1) * 255
    blended = pixels.astype(np.float32) * (1 - 0.6 * heat) * 0.6 + colour * 0.6 * heat + pixels * 0.4 * (1 - heat)
    return np.clip(blended, 0, 255).astype(np.uint8)
