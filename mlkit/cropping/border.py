"""Where an image differs from its own border: the `border` method of `mlkit crop`.

A boundary prior (Wei et al. 2012, "Geodesic saliency using background
priors"; Zhu et al. 2014, "Saliency optimization from robust background
detection"): the cells along an image's border are mostly background, so
an object is what differs from them. Take one feature map of the backbone
(the deepest block output at 1/`stride` of the input side: for MobileNetV2
at stride 4, `block_2_add`), fit a Gaussian (mean and covariance) to the feature vectors
of a ring of cells just inside the border, and score every cell by its
Mahalanobis distance to it. A textured background (leaves, water, sky) has
a wide covariance along the directions its texture varies in, so its other
edges score low, where the early-layer map of `saliency.py` lights up every
edge. The box is the connected region above `threshold` that holds the
highest cell (`region_box`).

The map is measured against `saliency.activation_map` in BENCHMARKS.md
(`benchmarks/crop_quality.py --methods sokolova,border`).
"""

import numpy as np

from mlkit.errors import MlkitError

# The outermost cells are skipped: zero padding shifts them whatever the image holds.
SKIP = 1
# The ring of background cells just inside the skipped ones, in cells.
RING = 1
# Covariance shrinkage: a multiple of the mean per-channel variance (the ring's, or the image's when the
# ring is flatter), added to the diagonal, so a flat border (a white page) does not make every faint
# difference infinitely far.
SHRINK = 0.01


def stride_layer(backbone, stride, image_size):
    """The backbone's deepest narrowest layer whose feature map is 1/`stride` of the input side.

    The narrowest (fewest channels) is a block's output, not the wide
    expansion inside the next block: for MobileNetV2 at stride 4,
    `block_2_add` (24 channels), not `block_3_expand_relu` (144), which
    measured worse and costs 6 times as much.

    Raises:
        MlkitError: when no layer has that size.
    """
    side = int(image_size) // int(stride)
    found = [layer for layer in backbone.layers if not layer.name.startswith("input")
             and len(layer.output.shape) == 4 and layer.output.shape[1] == side]
    if not found:
        raise MlkitError(f"--stride {stride}: {backbone.name} at {image_size} px has no {side} x {side} feature "
                         "map; give a stride its blocks use (2, 4, 8, 16 or 32)")
    narrowest = min(layer.output.shape[-1] for layer in found)
    return [layer for layer in found if layer.output.shape[-1] == narrowest][-1]


def border_ring(height, width):
    """bool (height, width): the `RING` cells just inside the outer `SKIP` cells."""
    ring = np.zeros((height, width), bool)
    ring[SKIP:height - SKIP, SKIP:width - SKIP] = True
    ring[SKIP + RING:height - SKIP - RING, SKIP + RING:width - SKIP - RING] = False
    return ring


def border_map(features):
    """One image's distance-from-the-border map, in [0, 1].

    Args:
        features: the image's (h, w, c) feature map.

    Returns:
        float64 (h, w): each cell's Mahalanobis distance to the ring's Gaussian, divided by the
        largest; the skipped outer cells are 0.
    """
    features = np.asarray(features, dtype="float64")
    height, width, channels = features.shape
    if min(height, width) <= 2 * (SKIP + RING):
        raise MlkitError(f"a {height} x {width} feature map is too small for a border ring; give a smaller "
                         "--stride or a larger --image-size")
    cells = features.reshape(-1, channels)
    ring = cells[border_ring(height, width).ravel()]
    covariance = np.atleast_2d(np.cov(ring.T))
    scale = max(np.trace(covariance) / channels, cells.var(axis=0).mean())
    covariance += np.eye(channels) * (SHRINK * scale + 1e-12)
    difference = cells - ring.mean(axis=0)
    distance = np.sqrt(np.maximum((difference @ np.linalg.inv(covariance) * difference).sum(axis=1), 0))
    distance = distance.reshape(height, width)
    distance[:SKIP], distance[-SKIP:], distance[:, :SKIP], distance[:, -SKIP:] = 0, 0, 0, 0
    return distance / max(distance.max(), 1e-12)


def region_box(heat, threshold=0.4, by="peak"):
    """The box of one connected region above `threshold` of the map's maximum.

    Each cell stands for its centre, so the box runs from the first cell's
    centre to the last one's: a feature cell at an object's edge already
    responds to it, and counting it whole made every box a cell too large.

    Args:
        heat: a map (H, W).
        threshold: the share of the map's maximum the region stays above. Defaults to 0.4.
        by: which region: "peak", the one holding the highest cell, or "mass", the one of the largest sum.
            Defaults to "peak".

    Returns:
        (top, left, bottom, right) in map cells, floats; the whole map when it is flat.
    """
    from scipy import ndimage

    heat = np.asarray(heat, dtype="float64")
    if heat.max() <= 0:
        return (0.0, 0.0, float(heat.shape[0]), float(heat.shape[1]))
    regions, count = ndimage.label(heat >= threshold * heat.max())
    if by == "mass":
        chosen = 1 + int(np.argmax(ndimage.sum(heat, regions, np.arange(1, count + 1))))
    else:
        chosen = regions[np.unravel_index(np.argmax(heat), heat.shape)]
    rows, cols = np.nonzero(regions == chosen)
    return (rows.min() + 0.5, cols.min() + 0.5, rows.max() + 0.5, cols.max() + 0.5)
