"""Crop boxes: from the peaks' span to the box that is cut, and how well two boxes agree.

Boxes are (top, left, bottom, right) in pixels, bottom and right exclusive,
the order NumPy slices an image in: `image[top:bottom, left:right]`.
"""

ASPECTS = ("free", "square", "image")


def _grow(low, high, length, limit):
    """The span [low, high) widened about its centre to `length`, then shifted to lie in [0, limit)."""
    length = min(max(length, high - low), limit)
    centre = (low + high) / 2
    low = min(max(centre - length / 2, 0), limit - length)
    return low, low + length


def fit_box(box, shape, margin=0.05, min_size=0.2, aspect="free"):
    """The box to cut: `box` with a margin, at least a minimum size, in an aspect ratio, inside the image.

    Args:
        box: (top, left, bottom, right) in pixels, floats allowed.
        shape: the image's (height, width).
        margin: added on each side, as a fraction of the box's side. Defaults to 0.05.
        min_size: the smallest side, as a fraction of the image's side. Defaults to 0.2.
        aspect: "free", "square", or "image" (height / width as the image's).
            A shape the image cannot hold is clipped to it. Defaults to "free".

    Returns:
        (top, left, bottom, right) ints, inside the image and at least 1 x 1.
    """
    height, width = shape
    top, left, bottom, right = (float(v) for v in box)
    tall = max(bottom - top, 0.0) * (1 + 2 * margin)
    wide = max(right - left, 0.0) * (1 + 2 * margin)
    tall, wide = max(tall, min_size * height), max(wide, min_size * width)
    if aspect == "square":
        tall = wide = max(tall, wide)
    elif aspect == "image":
        if tall / wide < height / width:
            tall = wide * height / width
        else:
            wide = tall * width / height
    top, bottom = _grow(top, bottom, tall, height)
    left, right = _grow(left, right, wide, width)
    # Sides are rounded once, then placed, so that a square stays square in whole pixels.
    tall, wide = max(round(bottom - top), 1), max(round(right - left), 1)
    top = min(max(round(top), 0), height - tall)
    left = min(max(round(left), 0), width - wide)
    return (int(top), int(left), int(top + tall), int(left + wide))


def iou(first, second):
    """Intersection over union of two boxes (0 when they do not overlap)."""
    top, left = max(first[0], second[0]), max(first[1], second[1])
    bottom, right = min(first[2], second[2]), min(first[3], second[3])
    inter = max(bottom - top, 0) * max(right - left, 0)

    def area(box):
        return max(box[2] - box[0], 0) * max(box[3] - box[1], 0)

    union = area(first) + area(second) - inter
    return inter / union if union > 0 else 0.0
