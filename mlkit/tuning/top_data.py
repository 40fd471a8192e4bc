"""Training and validation data for top models, read from a bottleneck cache.

The training split may be rebalanced (per-class caps, oversampling of small
classes, balanced sample weights: the plankton report) and extended with the cache's
augmented views; the validation split is used as it is, and the test split is
never read. Data that fits under `max_memory` is held as tensors and batched
by index; a larger cache streams from HDF5 in contiguous blocks, shuffled
block-wise and then within a buffer of blocks, so reads stay sequential.
Features are held in the dtype the cache stores (float16 caches take half
the memory) and reach the top as float32, one batch at a time.

Streaming is fast only with `keep_freed_memory()` in effect: `mlkit tune-top`
and `mlkit lr-find` set it, a Python user calls it once (see its docstring).

A top on several taps (mlkit.taps) reads their cached vectors side by side,
in the order its config names them, as one feature vector; the top's
standardisation then z-scores each column, so no tap's scale drowns another's.
With `tap_weights="equal"` (TopConfig's default) it also scales each tap's
block by sqrt(D / (T * d)) (D columns in all, T taps, d this tap's columns),
so every tap carries the same total variance, D / T, and a 1,280-wide last
layer does not outweigh a 64-wide early one twentyfold. The scale is folded
into the variance the top stores (`input_statistics`), so it travels in the
top's weights and stage 3 and the exported model apply it unchanged.

Caption tops also read the cached token ids (always held in memory: N x T
int32 is small); their inputs are then a dict {"features": ..., "tokens": ...}
(or {"tokens": ...} alone), while image-only tops get the bare features.
"""

import h5py
import numpy as np

from mlkit.bottlenecks.cache import BLOCK_BYTES, read_rows, tap_dataset
from mlkit.branches import BRANCH_INPUTS
from mlkit.data.manifest import constant_labels_message
from mlkit.errors import MlkitError, check_choice
from mlkit.tuning.config import TAP_WEIGHTS
from mlkit.tuning.memory import aligned_empty, host_tensor, parse_memory
from mlkit.tuning.resampling import balanced_weights, positive_weights, resample, train_cardinality

# Features larger than this stream from HDF5 during tune-top instead of loading into memory.
MAX_MEMORY = "4G"

BLOCKS_PER_BUFFER = 8
PREDICT_BATCH = 4096


def tap_column_weights(widths):
    """Each column's weight that gives every tap the same total variance once the columns are z-scored.

    Args:
        widths: each tap's number of columns (channels, for maps), in order.

    Returns:
        A float64 array of sum(widths) weights: sqrt(D / (T * d)) over each
        tap's d columns, D = sum(widths), T = len(widths); all 1 for one tap.
    """
    widths = np.asarray(widths, dtype="float64")
    if widths.ndim != 1 or not len(widths) or (widths < 1).any():
        raise MlkitError(f"tap widths {widths.tolist()}: need one positive width per tap")
    return np.repeat(np.sqrt(widths.sum() / (len(widths) * widths)), widths.astype("int64"))


def slice_inputs(x, start, stop):
    """Rows start:stop of a top's inputs (a tensor, or a dict of them)."""
    if isinstance(x, dict):
        return {name: value[start:stop] for name, value in x.items()}
    return x[start:stop]


class TopData:
    """One cache's training and validation data, shaped for a task's top model.

    Args:
        cache: an open `FeatureCache`.
        views: cached augmented views to train on besides the clean rows.
            Defaults to 0.
        sample_weights: "balanced" for inverse-frequency weights, "" for none.
        cap: the most training rows per class, 0 for no cap.
        oversample: the fewest training rows per class, 0 for no oversampling.
        max_memory: bytes (or a size such as "4G") the features may take in memory before streaming.
        seed: seeds the rebalancing and the shuffling. Defaults to 0.
        inputs: the top's inputs: ("features",), ("features", "tokens") or
            ("tokens",). Defaults to ("features",).
        taps: the cached taps whose vectors make the features, in order
            (mlkit.taps): a tuple, or names joined by "+". Defaults to ("last",).
    """

    def __init__(self, cache, *, views=0, sample_weights="", cap=0, oversample=0, max_memory=MAX_MEMORY, seed=0,
                 inputs=("features",), taps=("last",)):
        self.cache = cache
        self.taps = tuple(taps.split("+") if isinstance(taps, str) else taps)
        self.inputs = tuple(inputs)
        if self.inputs not in BRANCH_INPUTS.values():
            raise MlkitError(f"top inputs {inputs!r}: expected ('features',), ('features', 'tokens') or ('tokens',)")
        self.task = cache.task
        self.seed = seed
        self.views = int(views)
        train_rows = cache.indices("train")
        self.val_rows = cache.indices("val")
        train_labels = cache.read("labels", train_rows)
        same = constant_labels_message(train_labels, self.task, cache.label_names)
        if same:
            raise MlkitError(f"{cache.path}: every training row {same}; a top cannot learn anything from that. "
                             "Add rows of other labels to the manifest and rerun cache-features")
        self.val_labels = cache.read("labels", self.val_rows)
        self.cardinality = train_cardinality(train_labels) if self.task == "multilabel" else 0.0
        self.scale = cache.target_scale
        positions = resample(train_labels, self.task, cap, oversample, seed)
        self.sample_rows = np.repeat(train_rows[positions], 1 + self.views)
        self.sample_views = np.tile(np.arange(1 + self.views), len(positions))
        sample_labels = np.repeat(train_labels[positions], 1 + self.views, axis=0)
        self.train_targets = self.targets(sample_labels)
        self.val_targets = self.targets(self.val_labels)
        self.weights = balanced_weights(sample_labels, self.task) if sample_weights else None
        self.pos_weight = positive_weights(sample_labels) if self.task == "multilabel" else None
        self.feature_shape = tuple(cache.taps_shape(self.taps))
        self.feature_dtype = cache.feature_dtype
        self.tokens = cache.read("tokens").astype("int32") if "tokens" in self.inputs else None
        self.in_memory = "features" not in self.inputs or self.memory_bytes() <= parse_memory(max_memory)
        self._tables = None
        self._statistics = None

    @property
    def num_outputs(self):
        return self.cache.num_outputs

    def targets(self, labels):
        """Labels as the top trains on them (`FeatureCache.targets`)."""
        return self.cache.targets(labels)

    def unscale(self, predictions):
        """Regression predictions back in original units."""
        return self.scale.unscale(predictions)

    def memory_bytes(self):
        """Bytes the features take in memory (0 for a text-only top); tokens are not counted."""
        if "features" not in self.inputs:
            return 0
        row_bytes = self.feature_dtype.itemsize * int(np.prod(self.feature_shape))
        unique = len(np.unique(self.sample_rows))
        return row_bytes * (unique * (1 + self.views) + len(self.val_rows))

    def describe(self):
        mode = "in memory" if self.in_memory else "streamed from HDF5"
        parts = []
        if "features" in self.inputs:
            parts.append(f"features {self.feature_shape} {self.feature_dtype} {mode} ({self.memory_bytes() / 2**20:.0f} MiB)")
        if self.tokens is not None:
            parts.append(f"caption tokens ({self.tokens.shape[1]},)")
        return (f"{len(self.sample_rows)} training samples ({len(np.unique(self.sample_rows))} rows"
                f"{f', {self.views} views each' if self.views else ''}), {len(self.val_rows)} validation rows, "
                + ", ".join(parts))

    def model_inputs(self, features=None, tokens=None):
        """What the top takes: the bare features for an image-only top, else a dict by input name."""
        if self.inputs == ("features",):
            return features
        return {name: value for name, value in (("features", features), ("tokens", tokens)) if name in self.inputs}

    def train_dataset(self, batch):
        """A `tf.data.Dataset` of shuffled (x, y[, sample weight]) batches, reshuffled each epoch."""
        import tensorflow as tf

        if not self.in_memory:
            return self.streamed_train(batch).prefetch(tf.data.AUTOTUNE)
        table, index, y, w = self.tables()["train"]
        tokens = self.tables()["train_tokens"]
        count = len(self.sample_rows)

        def gather(positions):
            x = self.model_inputs(
                None if table is None else tf.cast(tf.gather(table, tf.gather(index, positions)), tf.float32),
                None if tokens is None else tf.gather(tokens, positions))
            if w is None:
                return x, tf.gather(y, positions)
            return x, tf.gather(y, positions), tf.gather(w, positions)

        dataset = tf.data.Dataset.range(count).shuffle(count, seed=self.seed, reshuffle_each_iteration=True)
        dataset = dataset.batch(batch).map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
        # tf.data's default graph rewrites serialise the pipeline, and with it the captured feature table:
        # one more copy of the table at every iterator (each epoch), for fusions this pipeline does not need.
        options = tf.data.Options()
        options.experimental_optimization.apply_default_optimizations = False
        return dataset.with_options(options)

    def predict_val(self, model):
        """The model's outputs on the validation split, as a numpy array."""
        if self.in_memory:
            # predict_on_batch skips the data adapter `predict` builds on every call.
            x = self.tables()["val"]
            return np.concatenate([model.predict_on_batch(slice_inputs(x, start, start + PREDICT_BATCH))
                                   for start in range(0, len(self.val_rows), PREDICT_BATCH)])
        return model.predict(self.streamed_val(), verbose=0)

    def tables(self):
        """Inputs as CPU tensors: one feature table of the needed rows (and views), in the cache's dtype, indexed
        by sample; tokens per sample; the validation inputs in float32."""
        if self._tables is None:
            self._tables = self.load_tables()
        return self._tables

    def load_tables(self):
        import tensorflow as tf

        with tf.device("/cpu:0"):
            targets = host_tensor(self.train_targets)
            weights = None if self.weights is None else host_tensor(self.weights)
            table, index, val = self.feature_tables() if "features" in self.inputs else (None, None, None)
            train_tokens = val_tokens = None
            if self.tokens is not None:
                train_tokens = host_tensor(self.tokens[self.sample_rows])
                val_tokens = host_tensor(self.tokens[self.val_rows])
        return {"train": (table, index, targets, weights), "train_tokens": train_tokens,
                "val": self.model_inputs(val, val_tokens)}

    def feature_tables(self):
        """A table of the needed rows' features (and views), each sample's index into it, and the validation features."""
        import tensorflow as tf

        train_unique = np.unique(self.sample_rows)
        rows = np.union1d(train_unique, self.val_rows)
        # One array, read in place and handed to TensorFlow as it is: the table is in memory once.
        features = aligned_empty((len(rows) + len(train_unique) * self.views,) + self.feature_shape, self.feature_dtype)
        with h5py.File(self.cache.path, "r") as h5:
            self.read_features(h5, rows, out=features[: len(rows)])
            if self.views:
                views = self.read_features(h5, train_unique, views=True)[:, : self.views]
                features[len(rows):] = views.reshape((-1,) + self.feature_shape)
        index = np.searchsorted(rows, self.sample_rows)
        viewed = self.sample_views > 0
        index[viewed] = len(rows) + np.searchsorted(train_unique, self.sample_rows[viewed]) * self.views + (
            self.sample_views[viewed] - 1)
        table = host_tensor(features)
        val = tf.cast(tf.gather(table, np.searchsorted(rows, self.val_rows)), tf.float32)
        return table, host_tensor(index), val

    @property
    def tap_widths(self):
        """Each tap's columns (channels, for maps), in the order the features hold them."""
        return [int(self.cache.taps_shape((tap,))[-1]) for tap in self.taps]

    def input_statistics(self, tap_weights="none"):
        """Per-feature (per-channel for maps) mean and variance of the clean training rows, in float64.

        Args:
            tap_weights: "none", or "equal" to divide each tap's variances by
                the square of its `tap_column_weights`, so the top's
                standardisation gives every tap the same total variance.
                Defaults to "none".
        """
        mean, variance = self.column_statistics()
        if check_choice(tap_weights, TAP_WEIGHTS, "tap weights") == "equal":
            variance = variance / tap_column_weights(self.tap_widths) ** 2
        return mean, variance

    def column_statistics(self):
        """Per-feature mean and variance of the clean training rows (computed once)."""
        mean, variance, _, _ = self.column_summary()
        return mean, variance

    def input_range(self):
        """Per-feature (per-channel for maps) minimum and maximum of the clean training rows, in float64."""
        _, _, low, high = self.column_summary()
        return low, high

    def column_summary(self):
        """Per-feature mean, variance, minimum and maximum of the clean training rows, in one pass, once."""
        if self._statistics is None:
            rows = np.unique(self.sample_rows)
            total = total_sq = 0.0
            low, high = np.inf, -np.inf
            count = 0
            with h5py.File(self.cache.path, "r") as h5:
                for start in range(0, len(rows), self.block_rows()):
                    block = self.read_features(h5, rows[start:start + self.block_rows()]).astype("float64")
                    block = block.reshape(-1, block.shape[-1])
                    total = total + block.sum(0)
                    total_sq = total_sq + np.square(block).sum(0)
                    low, high = np.minimum(low, block.min(0)), np.maximum(high, block.max(0))
                    count += len(block)
            mean = total / max(count, 1)
            self._statistics = mean, np.maximum(total_sq / max(count, 1) - mean**2, 0.0), low, high
        return self._statistics

    def block_rows(self):
        return max(1, BLOCK_BYTES // (self.feature_dtype.itemsize * int(np.prod(self.feature_shape))))

    def streamed_train(self, batch):
        """Training batches read block by block from HDF5 (caches over `max_memory`)."""
        import tensorflow as tf

        spec = [self.model_inputs(tf.TensorSpec((None,) + self.feature_shape, tf.float32), self.token_spec()),
                tf.TensorSpec((None,) + self.train_targets.shape[1:], tf.as_dtype(self.train_targets.dtype))]
        if self.weights is not None:
            spec.append(tf.TensorSpec((None,), tf.float32))
        epochs = iter(range(1 << 30))
        dataset = tf.data.Dataset.from_generator(
            lambda: self.stream_epoch(batch, self.seed * 100003 + next(epochs)), output_signature=tuple(spec))
        # A known length spares Keras from discovering it by running out of data.
        return dataset.apply(tf.data.experimental.assert_cardinality(-(-len(self.sample_rows) // batch)))

    def stream_epoch(self, batch, seed):
        """One epoch of shuffled batches: blocks in random order, rows shuffled within a buffer of blocks."""
        rng = np.random.default_rng(seed)
        blocks = self.sample_rows // self.block_rows()
        order = rng.permutation(np.unique(blocks))
        pending = np.zeros(0, dtype=np.int64)
        pending_x = np.zeros((0,) + self.feature_shape, dtype="float32")
        with h5py.File(self.cache.path, "r") as h5:
            for start in range(0, len(order), BLOCKS_PER_BUFFER):
                samples = np.flatnonzero(np.isin(blocks, order[start:start + BLOCKS_PER_BUFFER]))
                shuffle = rng.permutation(len(samples))
                pending = np.concatenate([pending, samples[shuffle]])
                pending_x = np.concatenate([pending_x, self.read_samples(h5, samples)[shuffle]])
                while len(pending) >= batch or (start + BLOCKS_PER_BUFFER >= len(order) and len(pending)):
                    yield self.batch_of(pending[:batch], pending_x[:batch])
                    pending, pending_x = pending[batch:], pending_x[batch:]

    def token_spec(self):
        import tensorflow as tf

        return None if self.tokens is None else tf.TensorSpec((None, self.tokens.shape[1]), tf.int32)

    def batch_of(self, samples, x):
        tokens = None if self.tokens is None else self.tokens[self.sample_rows[samples]]
        parts = (self.model_inputs(x, tokens), self.train_targets[samples])
        return parts if self.weights is None else parts + (self.weights[samples],)

    def read_samples(self, h5, samples):
        """Features of training samples (sorted positions): clean rows or their cached views."""
        rows, views = self.sample_rows[samples], self.sample_views[samples]
        x = np.empty((len(samples),) + self.feature_shape, dtype="float32")
        clean = views == 0
        x[clean] = self.read_features(h5, rows[clean])
        if (~clean).any():
            stacked = self.read_features(h5, rows[~clean], views=True)
            x[~clean] = stacked[np.arange(len(stacked)), views[~clean] - 1]
        return x

    def read_features(self, h5, rows, out=None, views=False):
        """The taps' features (or all cached views) of increasing `rows`, side by side along the last axis."""
        datasets = [h5[tap_dataset(tap, views)] for tap in self.taps]
        if len(datasets) == 1:
            return read_rows(datasets[0], rows, out=out)
        if out is None:
            shape = datasets[0].shape[1:-1] + (sum(d.shape[-1] for d in datasets),)
            out = np.empty((len(rows),) + shape, dtype=self.feature_dtype)
        start = 0
        for dataset in datasets:
            width = dataset.shape[-1]
            read_rows(dataset, rows, out=out[..., start:start + width])
            start += width
        return out

    def streamed_val(self):
        """Validation features in row order, block by block."""
        import tensorflow as tf

        def blocks():
            step = self.block_rows()
            with h5py.File(self.cache.path, "r") as h5:
                for start in range(0, len(self.val_rows), step):
                    rows = self.val_rows[start:start + step]
                    x = self.read_features(h5, rows, out=np.empty((len(rows),) + self.feature_shape, "float32"))
                    yield self.model_inputs(x,
                                            None if self.tokens is None else self.tokens[rows])

        spec = self.model_inputs(tf.TensorSpec((None,) + self.feature_shape, tf.float32), self.token_spec())
        dataset = tf.data.Dataset.from_generator(blocks, output_signature=spec)
        return dataset.apply(tf.data.experimental.assert_cardinality(-(-len(self.val_rows) // self.block_rows())))
