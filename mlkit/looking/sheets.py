"""Pictures a person reads: originals with their crop boxes, and grids of maps with titles."""

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mlkit.files import atomic_path
from mlkit.images import DEFAULT_BACKGROUND, ImageReadError, load_image

CELL = 160
BOX_COLOUR = (230, 30, 30)


def font(size=12):
    """PIL's bundled scalable font (no system fonts needed), at `size` pixels."""
    return ImageFont.load_default(size=size)


def fitted(pixels, side=CELL):
    """An RGB PIL image of `pixels` scaled to fit a `side` x `side` square; also the scale used."""
    image = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR), scale


def box_sheet(path, items, title, background=DEFAULT_BACKGROUND, columns=8):
    """A contact sheet of (image path, box, caption) items: each original with its box in red.

    Returns:
        The path written.
    """
    rows = max(1, -(-len(items) // columns))
    header, caption = 24, 16
    sheet = Image.new("RGB", (columns * CELL, header + rows * (CELL + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 4), title, fill="black", font=font(14))
    for index, (source, box, text) in enumerate(items):
        x = (index % columns) * CELL
        y = header + (index // columns) * (CELL + caption)
        try:
            picture, scale = fitted(load_image(source, background))
        except ImageReadError:
            continue
        sheet.paste(picture, (x, y))
        top, left, bottom, right = (v * scale for v in box)
        draw.rectangle((x + left, y + top, x + right - 1, y + bottom - 1), outline=BOX_COLOUR, width=2)
        draw.text((x + 2, y + CELL + 1), text[:26], fill="black", font=font(11))
    with atomic_path(path) as partial:
        sheet.save(partial, format="PNG")
    return path
