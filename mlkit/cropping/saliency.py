"""Where a network's first layers respond: the activation map that `mlkit crop` cuts along.

The method is the auto-crop of K. Sokolova, "Multi-label classification of
art using deep neural networks" (Princeton, 2019; section 3.6): take the
activations of the backbone's first layers, normalise each feature map by
itself, drop the maps with a low standard deviation, sum the rest, bring the
sum to the image by nearest interpolation, and find its peaks; the peaks span
the crop. She scales each map by its minimum and maximum (VGG16, no batch
norm). On a batch-norm backbone that fails: a plain background sits mid-range
in most maps, the sum is a plateau of "peaks" (mean IoU 0.08 on pasted stamps
with the pretrained MobileNetV2, BENCHMARKS.md). So each map is centred on
its median and scaled by its largest deviation from it, and its outer `EDGE`
cells, which zero padding lights up whatever the image holds, are zeroed.

The arithmetic is here twice:

- in NumPy and SciPy (`activation_map`, `peak_box`), what `mlkit crop` runs;
- in TensorFlow ops (`activation_map_tf`, `peak_box_tf`), for a model that
  carries the crop inside it. tests/test_looking_crop.py checks that both
  give the same box.

Feature maps are brought to the size of the largest one with integer index
arithmetic (`nearest_indices`), not an image resize, so the two versions
pick exactly the same cells.
"""

import numpy as np

from mlkit.errors import MlkitError

EPSILON = 1e-12
# Cells at each map's edge that zero padding lights up whatever the image holds.
EDGE = 2


def nearest_indices(source, target):
    """Cell of a `source`-long axis that each of `target` cells copies (nearest, top-left aligned)."""
    return (np.arange(target) * source) // target


def early_layers(backbone, count):
    """The backbone's first `count` layers after its input whose outputs are feature maps.

    Args:
        backbone: a functional Keras model (a `keras.applications` backbone).
        count: how many layers, counted as Keras lists them (Sokolova, 2019, uses 8).

    Raises:
        MlkitError: when `count` is not a positive number of layers the backbone has.
    """
    layers = [layer for layer in backbone.layers if not layer.name.startswith("input")]
    if not 1 <= int(count) <= len(layers):
        raise MlkitError(f"--layers {count}: {backbone.name} has {len(layers)} layers; give 1 to {len(layers)}")
    chosen = [layer for layer in layers[: int(count)] if len(layer.output.shape) == 4]
    if not chosen:
        raise MlkitError(f"--layers {count}: none of {backbone.name}'s first {count} layers outputs feature maps")
    return chosen


def activation_model(backbone, layers, preprocessing=(), image_size=224):
    """float pixels (N, S, S, 3) in [0, 255] -> preprocessing -> the given layers' feature maps (a list).

    Args:
        backbone: the backbone the layers belong to.
        layers: its layers whose outputs are returned (e.g. `early_layers(backbone, 8)`).
        preprocessing: the Keras layers that turn pixels into the backbone's input.
        image_size: S. Defaults to 224.
    """
    import keras

    inner = keras.Model(backbone.input, [layer.output for layer in layers])
    pixels = keras.Input((image_size, image_size, 3), dtype="float32", name="pixels")
    x = pixels
    for layer in preprocessing:
        x = layer(x)
    outputs = inner(x)
    return keras.Model(pixels, list(outputs) if isinstance(outputs, (list, tuple)) else [outputs],
                       name="feature_maps")


def activation_map(maps, min_std=0.05):
    """One image's early-layer activation map, in [0, 1], at the largest map's size.

    Each feature map is centred on its own median, its outer `EDGE` cells are
    zeroed, and its absolute deviations are scaled to [0, 1] by their maximum;
    maps whose scaled standard deviation is below `min_std` (flat, or one hot
    pixel) are dropped; the rest are summed over every layer.

    Args:
        maps: the image's feature maps, one (h, w, c) array per layer.
        min_std: the standard deviation under which a scaled map is dropped. Defaults to 0.05.

    Returns:
        float64 (H, W), H and W the largest map's; all zeros when every map was dropped.
    """
    height = max(m.shape[0] for m in maps)
    width = max(m.shape[1] for m in maps)
    total = np.zeros((height, width))
    for layer_maps in maps:
        layer_maps = np.asarray(layer_maps, dtype="float64")
        deviation = np.abs(layer_maps - np.median(layer_maps, axis=(0, 1)))
        deviation[:EDGE], deviation[-EDGE:], deviation[:, :EDGE], deviation[:, -EDGE:] = 0, 0, 0, 0
        rows = nearest_indices(layer_maps.shape[0], height)
        cols = nearest_indices(layer_maps.shape[1], width)
        deviation = deviation[rows][:, cols]
        scaled = deviation / np.maximum(deviation.max(axis=(0, 1)), EPSILON)
        kept = scaled.std(axis=(0, 1)) >= min_std
        total += scaled[..., kept].sum(axis=-1)
    return total / max(total.max(), EPSILON)


def peak_box(heat, threshold=0.5, window=3):
    """The box spanning the map's peaks: local maxima at least `threshold` high.

    Args:
        heat: an activation map in [0, 1] (H, W).
        threshold: the lowest value a peak may have. Defaults to 0.5.
        window: a peak is the maximum of the `window` x `window` cells around it. Defaults to 3.

    Returns:
        (top, left, bottom, right) in map cells, bottom and right exclusive;
        the whole map when it has no peak.
    """
    from scipy import ndimage

    heat = np.asarray(heat, dtype="float64")
    # mode="nearest" equals a max-pool that ignores the outside, the TensorFlow version's padding.
    peaks = (heat == ndimage.maximum_filter(heat, size=window, mode="nearest")) & (heat >= threshold)
    rows, cols = np.nonzero(peaks)
    if rows.size == 0:
        return (0, 0, heat.shape[0], heat.shape[1])
    return (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)


def activation_map_tf(maps, min_std=0.05):
    """`activation_map` for a batch, in TensorFlow ops: a list of (N, h, w, c) -> (N, H, W)."""
    import tensorflow as tf

    height = max(int(m.shape[1]) for m in maps)
    width = max(int(m.shape[2]) for m in maps)
    total = 0.0
    for layer_maps in maps:
        layer_maps = tf.cast(layer_maps, tf.float64)
        rows, cols = int(layer_maps.shape[1]), int(layer_maps.shape[2])
        deviation = tf.abs(layer_maps - _median_tf(layer_maps))
        inner = np.zeros((rows, cols, 1))
        inner[EDGE:rows - EDGE, EDGE:cols - EDGE] = 1
        deviation = deviation * inner
        deviation = tf.gather(deviation, nearest_indices(rows, height), axis=1)
        deviation = tf.gather(deviation, nearest_indices(cols, width), axis=2)
        scaled = deviation / tf.maximum(tf.reduce_max(deviation, axis=(1, 2), keepdims=True), EPSILON)
        kept = tf.cast(tf.math.reduce_std(scaled, axis=(1, 2), keepdims=True) >= min_std, tf.float64)
        total += tf.reduce_sum(scaled * kept, axis=-1)
    return total / tf.maximum(tf.reduce_max(total, axis=(1, 2), keepdims=True), EPSILON)


def _median_tf(maps):
    """Each map's median over its cells, as `np.median` takes it (the mean of the middle two): (N, 1, 1, C)."""
    import tensorflow as tf

    cells = int(maps.shape[1]) * int(maps.shape[2])
    ordered = tf.sort(tf.reshape(maps, (-1, cells, int(maps.shape[3]))), axis=1)
    middle = (ordered[:, (cells - 1) // 2] + ordered[:, cells // 2]) / 2
    return middle[:, None, None, :]


def peak_box_tf(heat, threshold=0.5, window=3):
    """`peak_box` for a batch of maps (N, H, W), in TensorFlow ops: int32 (N, 4)."""
    import tensorflow as tf

    pooled = tf.nn.max_pool2d(heat[..., None], window, 1, "SAME")[..., 0]
    peaks = tf.logical_and(tf.equal(heat, pooled), heat >= threshold)
    height, width = tf.shape(heat)[1], tf.shape(heat)[2]
    rows = tf.reduce_any(peaks, axis=2)
    cols = tf.reduce_any(peaks, axis=1)

    def span(hit, length):
        index = tf.range(length)[None]
        first = tf.reduce_min(tf.where(hit, index, length), axis=1)
        last = tf.reduce_max(tf.where(hit, index, -1), axis=1) + 1
        found = tf.reduce_any(hit, axis=1)
        return tf.where(found, first, 0), tf.where(found, last, length)

    top, bottom = span(rows, height)
    left, right = span(cols, width)
    none = tf.logical_not(tf.reduce_any(rows, axis=1))
    top, left = tf.where(none, 0, top), tf.where(none, 0, left)
    bottom, right = tf.where(none, height, bottom), tf.where(none, width, right)
    return tf.stack([top, left, bottom, right], axis=1)
