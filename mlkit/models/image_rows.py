"""The images behind a bottleneck cache, as tf.data pipelines for fine-tuning and scoring.

Fine-tuning reads the same rows the cache holds (its `image` paths, labels and
splits; rows the cache skipped as unreadable stay out) and decodes them the
way the cache did: PIL in parallel through tf.data (EXIF rotation, CMYK,
16-bit, transparency on the cache's background), then the one shared resize
(`mlkit.images.resize_array`, equal to the exported model's resize). An image that cannot be read any more is
reported and given no weight, not fatal.

For a caption top the pipeline also yields each row's raw caption string
(the cache's `caption` dataset; "" for a row without one or a cache without
captions) beside the pixels, as {"pixels", "caption"}: the network
vectorises captions itself, exactly as the exported model will.
"""

import logging
from pathlib import Path

import numpy as np

from mlkit.errors import MlkitError
from mlkit.images import ImageReadError, decode_image, parse_background, read_bytes, resize_array

log = logging.getLogger(__name__)

# Decoded, resized float32 pixels are kept in memory across epochs below this size.
DEFAULT_MEMORY_CACHE = 2 << 30


class ImageRows:
    """Paths, labels and splits of a cache's usable rows.

    Args:
        cache: an open `FeatureCache`.
        image_root: folder that relative image paths are resolved against.
            Defaults to the folder of the manifest the cache was made from.
    """

    def __init__(self, cache, image_root=None):
        self.cache = cache
        root = Path(image_root or cache.attrs.get("manifest_root") or ".")
        self.rows = cache.indices()
        images = cache.read("image", self.rows)
        self.paths = np.array([str(p if Path(p).is_absolute() else root / p) for p in images], dtype=object)
        self.labels = cache.read("labels", self.rows)
        self.splits = np.asarray(cache.read("split", self.rows))
        self.captions = (np.asarray(cache.read("caption", self.rows), dtype=object) if cache.has("caption")
                         else np.full(len(self.rows), "", dtype=object))
        self.background = parse_background(cache.attrs.get("background", "255,255,255"))
        self.image_size = int(cache.attrs["image_size"])
        self.failures = {}
        # The epoch whose order shuffled datasets give next; `epoch_order` sets it as each epoch begins.
        self.epoch = 0
        missing = [p for p in self.paths[:1000] if not Path(p).exists()]
        if len(missing) == min(len(self.paths), 1000) and missing:
            raise MlkitError(
                f"none of the cache's images can be found (first: {missing[0]}); the cache was made from "
                f"{root}: pass --image-root with the folder that now holds them")

    def split(self, name):
        """(paths, labels) of one split; an error naming the splits there are when it is empty."""
        mask = self.splits == name
        if not mask.any():
            raise MlkitError(f"{self.cache.path} has no usable rows in split {name!r} (splits: "
                             f"{sorted(set(self.splits))}); run `mlkit data split MANIFEST` and rerun cache-features")
        return self.paths[mask], self.labels[mask]

    def split_captions(self, name):
        """The caption strings of one split's rows ("" where a row has none), aligned with `split`."""
        self.split(name)
        return self.captions[self.splits == name]

    def dataset(self, paths, targets=None, *, captions=None, batch_size, shuffle=False, augment=(), seed=0,
                memory_cache=DEFAULT_MEMORY_CACHE):
        """A batched, prefetched tf.data pipeline of float pixels in [0, 255] (and targets, weights).

        Args:
            paths: image paths.
            targets: per-row training targets, or None to yield inputs only. With
                targets each element is (inputs, targets, weight), weight 0
                for an image that could not be read.
            captions: per-row caption strings, or None. With them the inputs
                are {"pixels", "caption"}; without, the pixels alone.
            batch_size: images per batch.
            shuffle: a new order every epoch, a function of `seed` and the
                epoch that `EpochOrder` sets (not of how many epochs this process
                ran), so a resumed run sees the orders an uninterrupted one would.
                Defaults to False.
            augment: Keras preprocessing layers applied per batch. Defaults to none.
            seed: shuffling seed. Defaults to 0.
            memory_cache: keep decoded images in memory when they fit in this many bytes.
        """
        import tensorflow as tf

        size = self.image_size
        fits = len(paths) * size * size * 3 * 4 <= memory_cache
        # A shuffled pipeline keeps decoded images itself: tf.data's cache would replay the first epoch's order.
        decode = self._decoder(list(paths), size, memo={} if shuffle and fits else None)
        if shuffle:
            def order():
                return np.random.default_rng([seed, self.epoch]).permutation(len(paths)).astype("int64")

            # Evaluated when an epoch's iteration starts, after `EpochOrder` has set the epoch.
            data = tf.data.Dataset.from_tensors(0).flat_map(lambda _: tf.data.Dataset.from_tensor_slices(
                tf.ensure_shape(tf.numpy_function(order, [], tf.int64, stateful=True), [len(paths)])))
            data = data.apply(tf.data.experimental.assert_cardinality(len(paths)))
        else:
            data = tf.data.Dataset.from_tensor_slices(np.arange(len(paths), dtype="int64"))

        def load(i):
            pixels, ok = tf.numpy_function(decode, [i], [tf.float32, tf.bool], stateful=False)
            pixels.set_shape([size, size, 3])
            ok.set_shape([])
            return i, ok, pixels

        data = data.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if fits and not shuffle:
            data = data.cache()
        data = data.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE)
        caption_table = None if captions is None else tf.constant([str(c) for c in captions], tf.string)
        target_table = None if targets is None else tf.constant(np.asarray(targets))

        def element(i, ok, pixels):
            for layer in augment:
                pixels = layer(pixels, training=True)
            inputs = pixels if caption_table is None else {"pixels": pixels, "caption": tf.gather(caption_table, i)}
            if target_table is None:
                return inputs
            # An unreadable image stays in the batch as a blank with weight 0, so batches
            # keep their count (Keras knows the epoch's length) and labels stay aligned.
            return inputs, tf.gather(target_table, i), tf.cast(ok, tf.float32)

        data = data.map(element, num_parallel_calls=tf.data.AUTOTUNE)
        return data.prefetch(tf.data.AUTOTUNE)

    def _decoder(self, paths, size, memo=None):
        def decode(i):
            if memo is not None and int(i) in memo:
                return memo[int(i)]
            path = paths[int(i)]
            try:
                decoded = resize_array(decode_image(read_bytes(path), path, self.background), size), np.bool_(True)
            except ImageReadError as error:
                if path not in self.failures:
                    log.warning("skipping %s: %s", path, error.reason)
                self.failures[path] = error.reason
                decoded = np.zeros((size, size, 3), np.float32), np.bool_(False)
            if memo is not None:
                memo[int(i)] = decoded
            return decoded

        return decode

    def readable(self, paths):
        """Which of `paths` decode, as a bool mask (scoring needs rows aligned with labels)."""
        return np.array([path not in self.failures for path in paths])


def epoch_order(rows, offset=0):
    """A Keras callback that makes each epoch's randomness a function of the epoch alone.

    As epoch k begins it sets `rows.epoch` (the shuffle order) to `offset` + k
    and re-seeds every random layer of the model (dropout, augmentation) from
    its own seed and that number. Keras numbers a resumed fit's epochs from
    where it stopped, and a backup holds weights, not random states, so
    without this a resumed run would repeat its first epoch's order and masks.
    `offset` keeps the phases of one run (warm-up, main) apart.
    """
    import keras

    class EpochOrder(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.seeds = {id(generator): (generator, int(np.asarray(generator.state)[0]))
                          for generator in seed_generators(self.model)}

        def on_epoch_begin(self, epoch, logs=None):
            rows.epoch = offset + epoch
            for generator, seed in self.seeds.values():
                mixed = (seed * 1_000_003 + offset + epoch) % (1 << 32)
                generator.state.assign(np.array([mixed, 0], dtype=np.asarray(generator.state).dtype))

    return EpochOrder()


def seed_generators(model):
    """Every `keras.random.SeedGenerator` held by the model's layers, nested models included."""
    import keras

    found, stack = [], [model]
    while stack:
        layer = stack.pop()
        for value in vars(layer).values():
            if isinstance(value, keras.random.SeedGenerator):
                found.append(value)
        stack.extend(getattr(layer, "layers", []))
    return found
