"""Near-duplicate candidates verified on their images: the same picture, aligned, at 32 x 32.

The 8 x 8 thumbnails (`mlkit.thumbnails`) propose candidates cheaply, but
at 8 x 8 distinct pictures of one layout match (two tricolour flags, one icon
drawn by two themes) and thin lines lose most of their pattern. So each
candidate pair is checked on its two images, read again: both are shrunk to
32 x 32 RGB and aligned by the best of a small search (one picture's centre
crops of 100, 97.5, 95, 92.5 and 90% against the other whole, each shifted by
up to a pixel, about 3% of the side), so that a copy resized or cropped by up
to 10% lines up again. Two numbers of the aligned pair decide:

- the correlation of their pixels (normalised cross-correlation, each
  picture centred on its own mean, as the thumbnails are; Lewis 1995): the
  same drawing, at four times the thumbnails' resolution;
- the largest colour difference between them in a 4 x 4 grid of blocks (the
  RGB distance of each block's mean colour, 0 to 441 levels): correlation
  forgives a change of colour, so two flags whose stripes differ in colour
  correlate at up to 0.96, while their blocks differ by 70 or more.
  A copy's blocks keep their colours.

This is the usual design of near-duplicate detection: a cheap descriptor
proposes candidates and each candidate is verified on the images (Ke et
al. 2004). The thresholds were chosen on planted copies and distinct
pictures of one layout (`benchmarks/audit_near_duplicates.py --verify`,
BENCHMARKS.md).
"""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from mlkit.images import DEFAULT_BACKGROUND, ImageReadError
from mlkit.thumbnails import read_unchanged

VERIFY_SIZE = 32
# Centre crops of one picture tried against the other whole: a copy cropped or padded by up to 10% lines up.
CROPS = (1.0, 0.975, 0.95, 0.925, 0.9)
SHIFT = 1
FLAT_VARIANCE = 0.25
COLOUR_GRID = 4
# A JPEG is decoded at 1/2 to 1/8 of its size where that keeps 4 times the compared size: a 6-megapixel
# photo then decodes in a few milliseconds instead of 150.
DRAFT = (4 * VERIFY_SIZE, 4 * VERIFY_SIZE)
# Candidate pairs whose images are held at once.
CHUNK_PAIRS = 2048


def crops(pixels):
    """The picture's centre crops (`CROPS`), each box-averaged to 32 x 32: uint8 (len(CROPS), 32, 32, 3)."""
    image = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
    width, height = image.size
    views = []
    for keep in CROPS:
        dx, dy = width * (1 - keep) / 2, height * (1 - keep) / 2
        box = (dx, dy, width - dx, height - dy)
        views.append(np.asarray(image.resize((VERIFY_SIZE, VERIFY_SIZE), Image.Resampling.BOX, box=box)))
    return np.stack(views)


def block_colours(picture):
    """Mean colour of each block of a `COLOUR_GRID` x `COLOUR_GRID` grid over the picture."""
    rows = np.linspace(0, picture.shape[0], COLOUR_GRID + 1).astype(int)[:-1]
    columns = np.linspace(0, picture.shape[1], COLOUR_GRID + 1).astype(int)[:-1]
    sums = np.add.reduceat(np.add.reduceat(picture, rows, axis=0), columns, axis=1)
    counts = np.outer(np.diff(np.append(rows, picture.shape[0])), np.diff(np.append(columns, picture.shape[1])))
    return sums / counts[..., None]


def centred_unit(pictures):
    """Each picture (N, H, W, 3) centred on its own mean and scaled to unit length; a flat one stays 0."""
    centred = pictures - pictures.mean(axis=(1, 2, 3), keepdims=True)
    norms = np.sqrt((centred * centred).sum(axis=(1, 2, 3), keepdims=True))
    return centred / np.where(norms > np.sqrt(FLAT_VARIANCE * centred[0].size), norms, np.inf)


def aligned_match(views_a, views_b):
    """(correlation, colour difference) of two pictures at their best alignment.

    One picture's crops are tried against the other whole, both ways; within
    each, the first picture's centre (a pixel in from every side) is
    compared with the second's windows shifted by up to `SHIFT` pixels.

    Args:
        views_a, views_b: `crops` of the two images.

    Returns:
        The highest correlation over the crops and shifts searched, and the
        largest RGB distance between the block colours of that alignment.
    """
    whole_a, whole_b = views_a[:1], views_b[:1]
    # Levels shifted by -128 (correlation does not see a shift) keep float32 sums of squares small and exact enough.
    first = np.concatenate([np.repeat(whole_a, len(views_b), axis=0), views_a[1:]]).astype(np.float32) - 128
    second = np.concatenate([views_b, np.repeat(whole_b, len(views_a) - 1, axis=0)]).astype(np.float32) - 128
    inner = VERIFY_SIZE - 2 * SHIFT
    centres = first[:, SHIFT:SHIFT + inner, SHIFT:SHIFT + inner]
    # (pairs tried, shift rows, shift columns, inner, inner, 3): every window of the second picture.
    windows = np.lib.stride_tricks.sliding_window_view(second, (inner, inner), axis=(1, 2)).transpose(0, 1, 2, 4, 5, 3)
    size = centres[0].size
    flat = np.ascontiguousarray(windows).reshape(len(first), -1, size)
    # The centres are centred, so their products with the raw windows are the windows' centred products.
    products = np.matmul(flat, centred_unit(centres).reshape(len(first), -1, 1))[..., 0]
    variances = np.einsum("pkn,pkn->pk", flat, flat) / size - (flat.sum(axis=-1) / size) ** 2
    # A window flatter than half a level (about float32's error in the sums here) has no pattern to correlate.
    spread = np.sqrt(size * np.where(variances > FLAT_VARIANCE, variances, np.inf))
    values = (products / spread).reshape(windows.shape[:3])
    tried, dy, dx = np.unravel_index(np.argmax(values), values.shape)
    difference = np.linalg.norm(block_colours(centres[tried]) - block_colours(windows[tried, dy, dx]), axis=-1).max()
    return float(values[tried, dy, dx]), float(difference)


def verify_pairs(paths, pairs, background=DEFAULT_BACKGROUND, sha256=None, workers=None):
    """Each candidate pair's aligned correlation and colour difference, from its two images.

    Args:
        paths: image file per position.
        pairs: (P, 2) positions into `paths`.
        background: RGB colour transparent pixels are composited on. Defaults to white.
        sha256: optional hex digest per position: a file whose bytes no longer
            match is not used. Defaults to None.
        workers: threads. Defaults to the number of cores.

    Returns:
        (correlations, differences, problems): float32 (P,) each, NaN for a
        pair with an image that could not be used; and {position: why} for
        those images.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    correlations = np.full(len(pairs), np.nan, np.float32)
    differences = np.full(len(pairs), np.nan, np.float32)
    problems = {}

    def read(position):
        try:
            pixels = read_unchanged(paths[position], background, "" if sha256 is None else sha256[position], DRAFT)
            return crops(pixels), ""
        except ImageReadError as error:
            return None, error.reason

    with ThreadPoolExecutor(max(1, workers or os.cpu_count() or 1), thread_name_prefix="mlkit-verify") as pool:
        for start in range(0, len(pairs), CHUNK_PAIRS):
            chunk = pairs[start:start + CHUNK_PAIRS]
            involved = np.unique(chunk)
            views = {}
            for position, (found, why) in zip(involved, pool.map(read, involved)):
                if found is None:
                    problems[int(position)] = why
                else:
                    views[int(position)] = found
            readable = [i for i, (a, b) in enumerate(chunk) if a in views and b in views]
            matches = pool.map(aligned_match, [views[chunk[i, 0]] for i in readable],
                               [views[chunk[i, 1]] for i in readable])
            for i, (value, difference) in zip(readable, matches):
                correlations[start + i], differences[start + i] = value, difference
    return correlations, differences, problems
