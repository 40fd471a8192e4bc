"""Reading images the way every stage needs them: RGB uint8, upright, or a reason why not.

PIL does the decoding because it handles what real collections hold and
`tf.io.decode_image` does not: EXIF orientation, CMYK JPEGs, palette and
16-bit PNGs, transparency. Every stage resizes with TensorFlow's antialiased
bilinear resize (`resize_images`), the op inside the exported model, so that
cached features are what the model computes. The input pipelines run the same
arithmetic on the CPU as two sparse matrix products (`resize_array`): the
same weights, summed in the same order, bit for bit, in a third of the time.
"""

import functools
import hashlib
import io
import os
import stat
import warnings

import numpy as np
from PIL import Image, ImageOps

DEFAULT_BACKGROUND = (255, 255, 255)
# Input values converted to float32 at a time by `resize_array` (16 MB).
RESIZE_BLOCK_VALUES = 4 << 20
# The most bytes read from one image file: a 100-megapixel PNG is under it, /dev/zero would never end.
MAX_IMAGE_BYTES = 512 << 20


class ImageReadError(Exception):
    """An image that cannot be used; `reason` is a short text for the skipped-images report."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def parse_background(text):
    """'255,255,255', 'white', 'black' or '#rrggbb' -> an RGB tuple."""
    named = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128), "grey": (128, 128, 128)}
    text = str(text).strip().lower()
    if text in named:
        return named[text]
    try:
        if text.startswith("#") and len(text) == 7:
            return tuple(int(text[i : i + 2], 16) for i in (1, 3, 5))
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise ValueError(f"background {text!r} is not a colour: use 'white', 'black', '#rrggbb' or 'R,G,B' (0-255)")
    return values


def open_image_file(path):
    """The image file opened for binary reading; ImageReadError unless it is a regular file of bounded size.

    A manifest names files for mlkit to read: a FIFO would block every reader
    for ever and a device (/dev/zero) never ends, so only regular files are
    read, and none over `MAX_IMAGE_BYTES`. Opening does not block on a FIFO.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ImageReadError(path, "missing file") from None
    except OSError as error:
        raise ImageReadError(path, f"cannot read file: {error.strerror or error}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device or socket"
        raise ImageReadError(path, f"cannot read file: not a regular file ({kind})")
    if info.st_size > MAX_IMAGE_BYTES:
        os.close(fd)
        raise ImageReadError(path, f"file too large ({info.st_size >> 20} MB; at most {MAX_IMAGE_BYTES >> 20} MB)")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_bytes(path):
    """The file's bytes, or ImageReadError with why not (see `open_image_file`)."""
    with open_image_file(path) as handle:
        try:
            data = handle.read(MAX_IMAGE_BYTES + 1)
        except OSError as error:
            raise ImageReadError(path, f"cannot read file: {error.strerror or error}") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageReadError(path, f"file too large (over {MAX_IMAGE_BYTES >> 20} MB)")
    if not data:
        raise ImageReadError(path, "empty file (0 bytes)")
    return data


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def decode_image(data, path="<bytes>", background=DEFAULT_BACKGROUND, draft=None):
    """Decodes image bytes to an upright RGB uint8 array (H, W, 3).

    Args:
        data: the encoded file's bytes.
        path: used in error messages only.
        background: RGB colour that transparent pixels are composited on.
            Defaults to white.
        draft: (width, height): a JPEG may be decoded at a reduced scale (PIL's
            `draft`, the DCT scaled by 1/2, 1/4 or 1/8) no smaller than this,
            for a caller that only needs a small picture. Defaults to None (full size).

    Raises:
        ImageReadError: truncated, corrupt, unknown format, or too large.
    """
    try:
        with warnings.catch_warnings():
            # Decompression bombs become unreadable rows, whatever the caller's warning filters.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if draft is not None:
                    image.draft(None, draft)
                image.load()
                # In place: a copy of a 50-megapixel photo is another 150 MB at the peak.
                ImageOps.exif_transpose(image, in_place=True)
                return _to_rgb(image, background)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise ImageReadError(path, f"too large to decode safely ({error})") from None
    except Image.UnidentifiedImageError:
        raise ImageReadError(path, "not an image PIL can identify (corrupt or unknown format)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(path, f"corrupt or truncated image ({error})") from None


def load_image(path, background=DEFAULT_BACKGROUND):
    """Reads and decodes one image file; see `decode_image`."""
    return decode_image(read_bytes(path), path, background)


def _to_rgb(image, background):
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _high_depth_to_rgb(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        image = canvas
    if image.mode != "RGB":
        # CMYK (PIL undoes Adobe's inverted CMYK), L, 1, P, YCbCr, LAB, HSV.
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def _high_depth_to_rgb(image):
    """16-bit and 32-bit grayscale: scale the type's range to 0-255 (not clip, which would whiten it)."""
    values = np.asarray(image)
    if image.mode.startswith("I;16") or (image.mode == "I" and values.max(initial=0) <= 65535 and values.min(initial=0) >= 0):
        scaled = values.astype(np.float32) / 257.0
    else:
        low, high = float(values.min()), float(values.max())
        scaled = (values.astype(np.float32) - low) * (255.0 / max(high - low, 1e-12))
    gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def augment_view(array, seed, background=DEFAULT_BACKGROUND):
    """One random but reproducible augmented view of an image (uint8 HxWx3).

    The same (image, seed) always gives the same view, so cached augmented
    features are identical after a resume. Applies, each at random: a
    horizontal flip, a rotation of up to 10 degrees, a zoom of up to 15% and
    shifts of up to 10% of each side (codes f, r, z, h, w).
    """
    rng = np.random.default_rng(seed)
    image = Image.fromarray(array)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    angle = float(rng.uniform(-10, 10))
    image = image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=background)
    width, height = image.size
    zoom = float(rng.uniform(0.85, 1.0))
    crop_w, crop_h = max(1, round(width * zoom)), max(1, round(height * zoom))
    max_dx, max_dy = width - crop_w + 0.1 * width, height - crop_h + 0.1 * height
    left = int(np.clip(rng.uniform(0, max_dx), 0, width - crop_w))
    top = int(np.clip(rng.uniform(0, max_dy), 0, height - crop_h))
    image = image.crop((left, top, left + crop_w, top + crop_h))
    return np.asarray(image, dtype=np.uint8)


def view_seed(key, view):
    """A 63-bit seed from a row key and a view index."""
    digest = hashlib.sha256(f"{key}:{view}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def resize_images(images, size):
    """The one resize every stage uses: bilinear with antialiasing, aspect ratio not kept.

    Equal to `keras.layers.Resizing(size, size, antialias=True)`, which the
    exported model uses, so cached features match what the model computes.
    `resize_array` computes the same values outside a graph, faster.
    """
    import tensorflow as tf

    return tf.image.resize(images, (size, size), method="bilinear", antialias=True)


def resize_array(pixels, size):
    """`resize_images` for one (H, W, C) array, in NumPy and SciPy: float32 (size, size, C).

    TensorFlow's antialiased bilinear resize (the ScaleAndTranslate op) is
    separable: each output row is a weighted sum of a span of input rows, then
    the same across columns. This builds those weights the way the op does, in
    float32 and summed in the same order, and applies them as two sparse
    matrix products, which on a 300 x 400 photo takes about a third of the op's
    CPU time. The result equals `resize_images` bit for bit
    (tests/test_images.py checks that on many shapes, up and down).
    """
    pixels = np.asarray(pixels)
    height, width, channels = pixels.shape
    rows, cols = _resize_weights(height, size), _resize_weights(width, size)
    image = pixels.reshape(height, width * channels)
    # The input becomes float32 a block of columns at a time, not whole: a 9000 x 9000 photo would take
    # 970 MB as float32. Each output column depends on its input column only, so the sums are unchanged.
    block = max(1, RESIZE_BLOCK_VALUES // height)
    tall = np.empty((size, width * channels), np.float32)
    for start in range(0, width * channels, block):
        tall[:, start:start + block] = rows @ np.ascontiguousarray(image[:, start:start + block], dtype=np.float32)
    tall = tall.reshape(size, width, channels)
    tall = np.ascontiguousarray(tall.transpose(1, 0, 2)).reshape(width, size * channels)
    return (cols @ tall).reshape(size, size, channels).transpose(1, 0, 2)


@functools.lru_cache(maxsize=512)
def _resize_weights(in_size, out_size):
    """The (out_size, in_size) triangle-kernel weights as a SciPy CSR matrix, as TF computes them.

    Follows ComputeSpansCore in TensorFlow's scale_and_translate_op.cc with
    no translation: output pixel x samples at (x + 0.5) / scale, the kernel
    widens by 1 / scale when shrinking (the antialiasing), and each span's
    weights are divided by their float32 sum, accumulated left to right.
    """
    f32 = np.float32
    scale = f32(out_size) / f32(in_size)
    inv_scale = f32(1) / scale
    kernel_scale = max(inv_scale, f32(1))  # radius of the triangle kernel (1) times the widening
    one_over_kernel_scale = f32(1) / kernel_scale
    centres = (np.arange(out_size, dtype=f32) + f32(0.5)) * inv_scale
    starts = np.ceil(centres - kernel_scale - f32(0.5)).astype(np.int64)
    ends = np.floor(centres + kernel_scale - f32(0.5)).astype(np.int64)
    starts = np.clip(starts, 0, in_size - 1)
    ends = np.clip(ends, 0, in_size - 1) + 1
    span = int((ends - starts).max())
    sources = starts[:, None] + np.arange(span)[None, :]
    inside = sources < ends[:, None]
    positions = (sources.astype(f32) + f32(0.5) - centres[:, None]) * one_over_kernel_scale
    weights = np.maximum(f32(0), f32(1) - np.abs(positions)).astype(f32)
    weights[~inside] = 0
    total = np.zeros(out_size, f32)
    for k in range(span):  # left to right, in float32, like the op
        total = (total + weights[:, k]).astype(f32)
    normalise = np.abs(total) >= 1000 * np.finfo(f32).eps
    weights[normalise] = weights[normalise] * (f32(1) / total[normalise])[:, None]
    from scipy import sparse

    indptr = np.concatenate([[0], np.cumsum(ends - starts)])
    return sparse.csr_matrix((weights[inside].astype(f32), sources[inside], indptr), shape=(out_size, in_size))

