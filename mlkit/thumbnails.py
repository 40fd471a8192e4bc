"""Pixel thumbnails: what an image and its re-encoded, resized or slightly cropped copies share.

A thumbnail is the decoded image (upright and composited on the background, as
every stage reads it) shrunk to 8 x 8 RGB by box averaging: 192 bytes. Two
images are compared by the cosine of their thumbnails, each centred on its own
mean, which is the correlation of their pixels: a change of brightness or
contrast leaves it as it is, JPEG blocking and resampling average away, and a
crop of a few per cent moves the content by a fraction of a thumbnail pixel.

Backbone features are the wrong tool for this: pooled MobileNetV2 features at
96 px put JPEG q75 copies of the synthetic set at cosine 0.6-0.9 of their
source while distinct images reach 0.95. The thumbnails separate every copy
(JPEG q75, 0.8 resize, 5% crop, and all three at once) from every distinct
image there, and beat DCT and difference hashes on the synthetic set and the
Tux Paint stamps (`benchmarks/audit_near_duplicates.py`, BENCHMARKS.md).
They see the same picture, not the same object photographed twice.

Pure NumPy and PIL, so that stage 1 can store a thumbnail per row while it
decodes the image anyway, and the audit can compute them from the images of
an older cache.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from mlkit.images import DEFAULT_BACKGROUND, ImageReadError, decode_image, read_bytes, sha256_bytes

THUMBNAIL_SIZE = 8
THUMBNAIL_SHAPE = (THUMBNAIL_SIZE, THUMBNAIL_SIZE, 3)
# The cache's optional uint8 (N, 8, 8, 3) dataset; all zero in a row that has none.
THUMBNAIL_DATASET = "thumbnail"


def thumbnail(pixels):
    """The 8 x 8 RGB box-averaged thumbnail of a decoded image.

    Args:
        pixels: uint8 (H, W, 3), as `mlkit.images.decode_image` returns it.

    Returns:
        uint8 (8, 8, 3).
    """
    image = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
    return np.asarray(image.resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.BOX), dtype=np.uint8)


def thumbnail_vectors(thumbnails):
    """Thumbnails as unit vectors whose inner products are their pixels' correlations.

    Each thumbnail is centred on the mean of its 192 values and scaled to unit
    length; a thumbnail of one flat colour has no pattern to correlate and
    stays all zero (cosine 0 with everything).

    Args:
        thumbnails: uint8 (N, 8, 8, 3).

    Returns:
        float32 (N, 192), C-contiguous.
    """
    vectors = np.asarray(thumbnails, dtype=np.float32).reshape(len(thumbnails), -1)
    vectors -= vectors.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors /= np.where(norms > 1e-3, norms, np.inf)
    return np.ascontiguousarray(vectors)


def read_unchanged(path, background=DEFAULT_BACKGROUND, sha256="", draft=None):
    """An image file decoded as `mlkit.images.decode_image` does, if its bytes still match `sha256`.

    Args:
        path: the image file.
        background: RGB colour transparent pixels are composited on. Defaults to white.
        sha256: the hex digest the cache recorded, or "" to take the file as it is. Defaults to "".
        draft: (width, height) a JPEG may be decoded down to (`decode_image`). Defaults to None.

    Raises:
        ImageReadError: unreadable, undecodable, or "changed since it was cached"
            (it is not the image the rest of the cache describes).
    """
    data = read_bytes(path)
    if sha256 and sha256_bytes(data) != sha256:
        raise ImageReadError(path, "changed since it was cached")
    return decode_image(data, path, background, draft)


def read_thumbnails(paths, background=DEFAULT_BACKGROUND, sha256=None, workers=None):
    """Thumbnails of image files, read and decoded on a thread per core.

    Args:
        paths: image files.
        background: RGB colour transparent pixels are composited on. Defaults to white.
        sha256: optional hex digest per path: a file whose bytes no longer
            match is not used (it is not the image the rest of the cache describes).
        workers: threads. Defaults to the number of cores.

    Returns:
        (thumbnails, problems): uint8 (N, 8, 8, 3), zero where a file gave
        none, and {index: why} for those files.
    """
    def one(index):
        try:
            return thumbnail(read_unchanged(paths[index], background, "" if sha256 is None else sha256[index])), ""
        except ImageReadError as error:
            return None, error.reason

    thumbnails = np.zeros((len(paths), *THUMBNAIL_SHAPE), dtype=np.uint8)
    problems = {}
    with ThreadPoolExecutor(max(1, workers or os.cpu_count() or 1), thread_name_prefix="mlkit-thumbnail") as pool:
        for index, (found, why) in enumerate(pool.map(one, range(len(paths)))):
            if found is None:
                problems[index] = why
            else:
                thumbnails[index] = found
    return thumbnails, problems
