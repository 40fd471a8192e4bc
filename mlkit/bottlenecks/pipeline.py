"""cache-features' input pipeline: images to batches of pixels, and pixels to features.

`image_batches` reads, hashes, decodes, augments and resizes images (and
shrinks each clean image to its pixel thumbnail, for the audit) through
tf.data; `compiled_forward` runs the frozen extractor on them as one traced
graph. Neither knows about the HDF5 file (mlkit.bottlenecks.write) or about
which rows need computing (mlkit.bottlenecks.plan).
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mlkit.images import ImageReadError, augment_view, decode_image, read_bytes, resize_array, sha256_bytes, view_seed
from mlkit.thumbnails import THUMBNAIL_SHAPE, thumbnail


def compiled_forward(extractor, batch_size):
    """The extractor as one traced graph (2-3x faster than eager calls on CPU).

    A short last batch is padded to `batch_size`, so the graph is traced once.
    Tracing and the first (slowest) call run at once on a blank batch in a
    background thread, while the input pipeline decodes the first real batch.

    Returns:
        `forward(pixels) -> features` (a NumPy array, or a list of them, one per
        output, for an extractor with taps); `forward.wait()` joins the warm-up
        thread, which must end before the process may exit.
    """
    import tensorflow as tf

    def run(pixels):
        return extractor(pixels, training=False)

    graph = tf.function(run, autograph=False)
    size = extractor.input_shape[1:]
    failure = []

    def warm_up():
        try:
            graph(tf.zeros((batch_size, *size), tf.float32))
        except Exception as error:  # reported on the first real call, in the caller's thread
            failure.append(error)

    warming = threading.Thread(target=warm_up, name="mlkit-warm-up", daemon=True)
    warming.start()

    def forward(pixels):
        if warming.is_alive() or failure:
            warming.join()
            if failure:
                raise failure[0]
        count = int(pixels.shape[0])
        if count < batch_size:
            pixels = tf.pad(pixels, [[0, batch_size - count], [0, 0], [0, 0], [0, 0]])
        outputs = graph(pixels)
        if isinstance(outputs, (list, tuple)):
            return [output.numpy()[:count] for output in outputs]
        return outputs.numpy()[:count]

    forward.wait = warming.join
    return forward


def image_batches(units, paths, *, image_size, background, seed, batch_size, failures):
    """Reads, decodes and resizes batches of images in parallel through tf.data, with prefetch.

    Each batch is one Python call that reads, hashes, decodes, augments (views
    > 0) and resizes (`resize_array`, the exported model's resize) its images
    on a thread per core; PIL and SciPy release the GIL for the heavy parts.
    One call per batch rather than per image saves about a millisecond of
    tf.data and GIL overhead per image, a third of the work (BENCHMARKS.md).
    Two batches load at once and two more wait, prefetched. tf.data's
    autotuner is off: nothing is left for it to tune, and at the end of a run
    its model thread held the iterator's destruction for 20 s.

    Args:
        units: (row, view) pairs in increasing row order; view 0 is the clean image.
        paths: every row's image path.
        image_size: square output side in pixels.
        background: RGB colour transparent pixels are composited on.
        seed: seeds the augmented views.
        batch_size: images per batch.
        failures: a dict that receives `row: reason` for each unreadable image.

    Yields:
        (rows, views, sha256s, ok, thumbnails, pixels) per batch: `thumbnails` uint8
        (B, 8, 8, 3), zero for augmented views; `pixels` a float32 tensor.
    """
    import tensorflow as tf

    rows = np.array([u[0] for u in units], dtype="int64")
    views = np.array([u[1] for u in units], dtype="int64")

    def load(row, view):
        path = paths[row]
        try:
            data = read_bytes(path)
            sha = sha256_bytes(data)
            pixels = decode_image(data, path, background)
            if view:
                pixels = augment_view(pixels, view_seed(f"{sha}:{seed}", view), background)
                return resize_array(pixels, image_size), sha.encode(), None
            return resize_array(pixels, image_size), sha.encode(), thumbnail(pixels)
        except ImageReadError as error:
            failures[row] = error.reason
            return None, b"", None

    workers = ThreadPoolExecutor(max(1, os.cpu_count() or 1), thread_name_prefix="mlkit-decode")

    def load_batch(batch_rows, batch_views):
        pixels = np.zeros((len(batch_rows), image_size, image_size, 3), np.float32)
        shas = np.empty(len(batch_rows), dtype=object)
        ok = np.zeros(len(batch_rows), bool)
        thumbnails = np.zeros((len(batch_rows), *THUMBNAIL_SHAPE), np.uint8)
        loaded = workers.map(load, batch_rows.tolist(), batch_views.tolist())
        for k, (image, shas[k], small) in enumerate(loaded):
            if image is not None:
                pixels[k], ok[k] = image, True
            if small is not None:
                thumbnails[k] = small
        return pixels, shas.astype(bytes), ok, thumbnails

    def load_tf(batch_rows, batch_views):
        pixels, shas, ok, thumbnails = tf.numpy_function(
            load_batch, [batch_rows, batch_views], [tf.float32, tf.string, tf.bool, tf.uint8], stateful=False)
        pixels.set_shape([None, image_size, image_size, 3])
        return batch_rows, batch_views, shas, ok, thumbnails, pixels

    data = tf.data.Dataset.from_tensor_slices((rows, views)).batch(batch_size)
    data = data.map(load_tf, num_parallel_calls=2, deterministic=True).prefetch(2)
    options = tf.data.Options()
    options.autotune.enabled = False
    data = data.with_options(options)
    try:
        for row, view, sha, ok, thumbnails, pixels in data:
            yield row.numpy(), view.numpy(), sha.numpy(), ok.numpy(), thumbnails.numpy(), pixels
    finally:
        workers.shutdown(wait=False, cancel_futures=True)


def progress_bar(iterable, enabled, description, total=None, unit="img"):
    """A tqdm bar over `iterable` when `enabled`, else the iterable itself (None when it is None)."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=description, unit=unit, smoothing=0.1, dynamic_ncols=True)
