"""The built-in synthetic dataset: coloured shapes, for demos and tests offline.

Every image is drawn from its own generator seeded by (seed, index), so the
same seed gives byte-identical files, and a larger `n` extends a smaller one
instead of reshuffling it.

    multilabel  1-3 shapes in distinct quadrants; labels are the shape names and
                colour names present; a caption names at most two true labels
                (often one, sometimes none) among filler words, never a false one
    multiclass  one shape; the label is its name (mildly imbalanced classes)
    regression  1-6 shapes in distinct cells of a 3 x 3 grid; target = their number
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from mlkit.data.manifest import TASKS, write_manifest
from mlkit.errors import MlkitError
from mlkit.files import StrPath

logger = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle", "cross", "ring")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40)}
# Multiclass frequencies, in SHAPES order: mildly imbalanced, as real collections are.
CLASS_WEIGHTS = (0.3, 0.25, 0.2, 0.15, 0.1)
MIN_SIZE = 16

SHAPE_CAPTIONS = ("a {} in the picture", "there is a {} somewhere", "a drawing with a {}", "one {} and some other things")
COLOUR_CAPTIONS = ("something {} in the picture", "a {} thing on a background", "some {} here", "a picture with a bit of {}")
PAIR_CAPTIONS = ("a {} {}", "there is a {} {} in this one")
# Filler only: none of these words is a label name.
UNINFORMATIVE_CAPTIONS = ("a small picture", "some shapes on a background", "an image with a few things",
                          "a simple drawing", "a busy little scene")


def _background(rng, size):
    """A dull (low-saturation) base colour with a linear gradient in a random direction."""
    base = rng.uniform(80, 170) + rng.uniform(-15, 15, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.linspace(-1, 1, size)
    gradient = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
    return base[None, None, :] + rng.uniform(10, 40) * gradient[:, :, None]


def _rotated(points, angle, centre):
    cos, sin = np.cos(angle), np.sin(angle)
    return [(centre[0] + x * cos - y * sin, centre[1] + x * sin + y * cos) for x, y in points]


def _draw_shape(draw, shape, centre, radius, colour, angle):
    """Draws one shape of about `radius` around `centre`."""
    cx, cy = centre
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, round(radius * 0.35)))
    elif shape == "square":
        side = radius * 0.85
        draw.polygon(_rotated([(-side, -side), (side, -side), (side, side), (-side, side)], angle, centre), fill=colour)
    elif shape == "triangle":
        corners = [(radius * np.cos(a), radius * np.sin(a)) for a in (-np.pi / 2, np.pi / 6, 5 * np.pi / 6)]
        draw.polygon(_rotated(corners, angle, centre), fill=colour)
    else:  # cross: two bars
        half = max(1.0, radius * 0.25)
        for bar in ([(-radius, -half), (radius, -half), (radius, half), (-radius, half)],
                    [(-half, -radius), (half, -radius), (half, radius), (-half, radius)]):
            draw.polygon(_rotated(bar, angle, centre), fill=colour)


def _grid_placements(rng, size, grid, count):
    """Centres and radii for `count` shapes in distinct cells of a grid x grid layout, so none overlap."""
    cell = size / grid
    placements = []
    for index in rng.choice(grid * grid, size=count, replace=False):
        radius = rng.uniform(0.28, 0.45) * cell
        x0, y0 = (index % grid) * cell, (index // grid) * cell
        centre = (x0 + rng.uniform(radius, cell - radius), y0 + rng.uniform(radius, cell - radius))
        placements.append((centre, radius))
    return placements


def _render(rng, size, shapes, placements):
    """The image (uint8 H x W x 3) with the shapes drawn and noise added; colour names used."""
    canvas = Image.fromarray(np.clip(_background(rng, size), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    colour_names = []
    for shape, (centre, radius) in zip(shapes, placements):
        name = str(rng.choice(list(COLOURS)))
        colour = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in COLOURS[name])
        _draw_shape(draw, shape, centre, radius, colour, rng.uniform(0, np.pi / 2))
        colour_names.append(name)
    noisy = np.asarray(canvas, dtype=np.float32) + rng.normal(0, rng.uniform(2, 8), size=(size, size, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8), colour_names


def _caption(rng, shapes, colours):
    """Partial description: mostly one true label word, sometimes two, sometimes none."""
    kind = rng.choice(4, p=(0.3, 0.25, 0.2, 0.25))
    if kind == 0:
        return str(rng.choice(SHAPE_CAPTIONS)).format(rng.choice(shapes))
    if kind == 1:
        return str(rng.choice(COLOUR_CAPTIONS)).format(rng.choice(colours))
    if kind == 2:
        pick = rng.integers(len(shapes))
        return str(rng.choice(PAIR_CAPTIONS)).format(colours[pick], shapes[pick])
    return str(rng.choice(UNINFORMATIVE_CAPTIONS))


def _example(task, size, seed, index):
    """One image and its manifest fields (without the image path)."""
    rng = np.random.default_rng([seed, index])
    if task == "multiclass":
        shapes = [SHAPES[rng.choice(len(SHAPES), p=CLASS_WEIGHTS)]]
        radius = rng.uniform(0.18, 0.32) * size
        placements = [((rng.uniform(radius, size - radius), rng.uniform(radius, size - radius)), radius)]
    elif task == "regression":
        count = int(rng.integers(1, 7))
        shapes = [str(s) for s in rng.choice(SHAPES, size=count)]
        placements = _grid_placements(rng, size, 3, count)
    else:
        count = int(rng.integers(1, 4))
        shapes = [str(s) for s in rng.choice(SHAPES, size=count)]
        placements = _grid_placements(rng, size, 2, count)
    pixels, colours = _render(rng, size, shapes, placements)
    if task == "multiclass":
        return pixels, {"labels": (shapes[0],)}
    if task == "regression":
        return pixels, {"target": (float(len(shapes)),)}
    labels = tuple(name for name in SHAPES + tuple(COLOURS) if name in shapes or name in colours)
    return pixels, {"labels": labels, "caption": _caption(rng, shapes, colours)}


def synthesize(out: StrPath, task: str = "multilabel", n: int = 600, size: int = 64, seed: int = 0) -> Path:
    """Writes the synthetic dataset: PNGs under `out/images/` and `out/manifest.csv`.

    Args:
        out: the dataset folder (created if needed).
        task: "multilabel" (shape and colour names, with captions),
            "multiclass" (the shape's name) or "regression" (the number of
            shapes). Defaults to "multilabel".
        n: the number of images. Defaults to 600.
        size: the image width and height in pixels (at least 16). Defaults to 64.
        seed: the same seed gives byte-identical files. Defaults to 0.

    Returns:
        The manifest's path.

    Example:
        manifest_path = synthesize("data/synth", task="multilabel", n=600)
    """
    if task not in TASKS:
        raise MlkitError(f"synth: unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if n < 1 or size < MIN_SIZE:
        raise MlkitError(f"synth: need n >= 1 and size >= {MIN_SIZE}, got n={n}, size={size}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    digits = max(5, len(str(n - 1)))
    rows = []
    for index in range(n):
        pixels, fields = _example(task, size, seed, index)
        image = f"images/{index:0{digits}d}.png"
        Image.fromarray(pixels).save(out / image)
        rows.append({"image": image, **fields})
    path = write_manifest(pd.DataFrame(rows), out / "manifest.csv")
    logger.info("synth: wrote %d %s images of %d px and %s", n, task, size, path)
    return path
