"""Plain border or photographed background, decided per image: the `auto` method of `mlkit crop`.

An image whose outer pixels are nearly one colour (a page, a backdrop) is
cut along the pixels that differ from that colour (`colour_box`); on white
that box is nearly exact, where the feature maps are a cell or two off.
Any other image goes to the learned objectness map (`objectness.py`) on a
MobileNetV2, which takes the boundary prior below as one of its inputs; on
other backbones, or with `--photo-map border`, to that prior alone, as
`--method border` (`border.py`: Wei et al. 2012; Zhu et al. 2014), with three
changes measured on benchmarks/crop_quality.py's seed-0 images (BENCHMARKS.md):

- the features: the block outputs at 1/`stride` and at 1/(`stride` / 2) of
  the input side (MobileNetV2: `block_2_add` and `expanded_conv_project_BN`),
  the finer one averaged to the coarser grid, each standardised, side by side
  (`stacked_features`);
- the region: of the connected regions above `threshold` of the highest
  distance, the one of most mass (summed distance), not the one holding the
  single highest cell;
- the edges: the box is refined in colour (`refine_box`): within the box and
  a margin around it, the pixels whose Lab colour (CIE 1976) is far, in
  Mahalanobis distance, from a band of pixels around it, as GrabCut
  (Rother et al. 2004) models the background from outside a box.
"""

import numpy as np

from mlkit.cropping.border import border_map, region_box

# Outer pixels read for the plain-border test and its colour, in pixels.
RING_PIXELS = 2
# The border is plain when this share of its pixels is within half the colour tolerance of their median colour.
PLAIN_SHARE = 0.9
# A plain border's colour box ignores connected specks smaller than this share of the image's pixels.
SPECK = 1e-4
# Refinement, as fractions of the image's shorter side: the margin searched around the box, and the width of
# the band outside it that stands for the background.
REFINE_MARGIN = 1 / 30
REFINE_BAND = 1 / 40
# Lab distance (in the band's standard deviations) that counts as object when refining.
REFINE_DISTANCE = 4.0
# Added to the band's Lab covariance: 5% of its mean variance, and a variance of 4 (2 Lab units, about a
# just-noticeable difference), so a flat band does not make every faint shade an object.
REFINE_SHRINK, REFINE_FLOOR = 0.05, 4.0
# A refined box smaller than this share of the box found is taken for a miss, and the box found kept.
REFINE_KEEP = 0.3
# Refinement reads the image with its shorter side at most this many times the network's input side (a large
# photo is shrunk first).
REFINE_SCALE = 2


def ring_colours(image):
    """float64 (n, 3): the RGB colours of the image's outer `RING_PIXELS` pixels."""
    width = RING_PIXELS
    sides = (image[:width], image[-width:], image[:, :width], image[:, -width:])
    return np.concatenate([side.reshape(-1, 3) for side in sides]).astype("float64")


def is_plain(image, tolerance):
    """Whether `PLAIN_SHARE` of the image's outer pixels lie within `tolerance` / 2 of their median colour."""
    ring = ring_colours(image)
    spread = np.linalg.norm(ring - np.median(ring, axis=0), axis=1)
    return float(np.mean(spread <= tolerance / 2)) >= PLAIN_SHARE


def colour_map(image):
    """float64 (H, W) in [0, 1]: each pixel's RGB distance to the median colour of the border, over 441."""
    distance = np.linalg.norm(image.astype("float64") - np.median(ring_colours(image), axis=0), axis=-1)
    return distance / np.sqrt(3 * 255.0 ** 2)


def colour_box(image, tolerance):
    """(top, left, bottom, right) pixels of the pixels farther than `tolerance` from the border's colour.

    Specks first leave (connected groups of fewer than `SPECK` of the image's
    pixels: sensor noise, dust), which would stretch the box; a thin line of
    the object stays, joined to the rest. The whole image when none is left.
    """
    from scipy import ndimage

    regions, count = ndimage.label(colour_map(image) * np.sqrt(3 * 255.0 ** 2) > tolerance, np.ones((3, 3), bool))
    sizes = np.bincount(regions.ravel(), minlength=count + 1)
    sizes[0] = 0
    rows, cols = np.nonzero(sizes[regions] >= max(SPECK * regions.size, 2))
    if rows.size == 0:
        return (0, 0, image.shape[0], image.shape[1])
    return (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)


def pooled(features, height, width):
    """(h, w, c) features averaged onto a coarser `height` x `width` grid (each coarse cell, its fine cells)."""
    rows = (np.arange(height) * features.shape[0]) // height
    cols = (np.arange(width) * features.shape[1]) // width
    sums = np.add.reduceat(np.add.reduceat(features, rows, axis=0), cols, axis=1)
    counts = np.diff(np.append(rows, features.shape[0]))[:, None] * np.diff(np.append(cols, features.shape[1]))
    return sums / counts[..., None]


def stacked_features(maps):
    """One (h, w, c1 + c2 ...) map: each map brought to the last (coarsest) one's grid and standardised.

    Standardised (centred, divided by the mean channel deviation) so that
    neither map's scale decides the distance; the Mahalanobis distance of
    `border_map` then weighs the channels by the ring's covariance.
    """
    height, width = maps[-1].shape[:2]
    stacked = []
    for features in maps:
        features = pooled(np.asarray(features, dtype="float64"), height, width)
        features = features - features.mean(axis=(0, 1))
        stacked.append(features / max(features.std(axis=(0, 1)).mean(), 1e-12))
    return np.concatenate(stacked, axis=-1)


def feature_heat(maps):
    """The border distance map (`border_map`) of the stacked feature maps, in [0, 1]."""
    return border_map(stacked_features(maps))


def feature_box(heat, threshold):
    """The box in map cells of the region above `threshold` of the map's maximum with the most mass."""
    return region_box(heat, threshold, by="mass")


def rgb_to_lab(pixels):
    """CIE 1976 L*a*b* of sRGB pixels (uint8 or floats in 0-255), D65 white."""
    rgb = np.asarray(pixels, dtype="float64") / 255.0
    linear = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = linear @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def refine_box(image, box, max_side=None):
    """`box` (pixels) moved to the edges of what differs in colour from a band of pixels around it.

    The box is widened by `REFINE_MARGIN` of the image's shorter side; the
    `REFINE_BAND`-wide band outside that is the background sample. Pixels
    inside farther than `REFINE_DISTANCE` from the band's Lab Gaussian, after
    a 3 x 3 opening, give the new box. The box found is kept when nothing
    differs, or when what differs spans less than `REFINE_KEEP` of its area.

    Args:
        image: uint8 (H, W, 3).
        box: (top, left, bottom, right) in pixels, floats allowed.
        max_side: when the image's shorter side is longer, it is shrunk to this first (the box is found
            at the feature map's coarseness anyway). Defaults to None (never).

    Returns:
        (top, left, bottom, right) in pixels, floats.
    """
    from PIL import Image
    from scipy import ndimage

    height, width = image.shape[:2]
    scale = min(1.0, max_side / min(height, width)) if max_side else 1.0
    if scale < 1:
        image = np.asarray(Image.fromarray(image).resize((max(round(width * scale), 1), max(round(height * scale), 1)),
                                                          Image.Resampling.BILINEAR))
    side, (rows, cols) = min(image.shape[:2]), image.shape[:2]
    margin, band = max(round(REFINE_MARGIN * side), 1), max(round(REFINE_BAND * side), 1)
    top, left, bottom, right = (round(v * scale) for v in box)
    inner = (max(top - margin, 0), max(left - margin, 0), min(bottom + margin, rows), min(right + margin, cols))
    outer = (max(inner[0] - band, 0), max(inner[1] - band, 0), min(inner[2] + band, rows), min(inner[3] + band, cols))
    lab = rgb_to_lab(image[outer[0]:outer[2], outer[1]:outer[3]])
    searched = np.zeros(lab.shape[:2], bool)
    searched[inner[0] - outer[0]:inner[2] - outer[0], inner[1] - outer[1]:inner[3] - outer[1]] = True
    background = lab[~searched]
    if len(background) < 10 * 3:
        return tuple(float(v) for v in box)  # the box fills the image: no band to sample
    covariance = np.cov(background.T)
    covariance += np.eye(3) * (REFINE_SHRINK * np.trace(covariance) / 3 + REFINE_FLOOR)
    difference = lab - background.mean(axis=0)
    distance = np.sqrt((difference @ np.linalg.inv(covariance) * difference).sum(axis=-1))
    found = ndimage.binary_opening((distance > REFINE_DISTANCE) & searched, np.ones((3, 3), bool))
    found_rows, found_cols = np.nonzero(found)
    refined = (found_rows.min(), found_cols.min(), found_rows.max() + 1, found_cols.max() + 1) if found_rows.size \
        else None
    area = (bottom - top) * (right - left)
    if refined is None or (refined[2] - refined[0]) * (refined[3] - refined[1]) < REFINE_KEEP * area:
        return tuple(float(v) for v in box)
    return tuple((value + outer[i % 2]) / scale for i, value in enumerate(refined))
