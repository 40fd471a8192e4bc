"""Top models: the small dense networks trained on cached bottleneck features.

A top is a plain Keras Functional model whose input is one cached feature
(a pooled vector, or a raw H x W x C map that the top flattens or pools), so
stage 3 can put it on the backbone unchanged. Its first layers standardise
each feature with the training rows' mean and variance and clip it to the
range the training rows had (`FeatureBounds`), so a unit that training never
switched on cannot throw the head far off. Hidden layers are Dense + ReLU,
each followed by dropout (`dN`) or batch norm (`bn`) as in the COCO report; the head
is sigmoid (multilabel), softmax (multiclass) or linear (regression, targets
scaled to [0, 1]).

A caption top (the caption report) has a second input, "tokens": the cached int32 token
ids (max_len,), 0 = padding. They pass an Embedding(mask_zero=True) and an
LSTM or bidirectional LSTM, whose output is concatenated with the
standardised (and pooled) image features before the hidden layers. A
text-only top has the "tokens" input alone. Caption tops take a dict of
named inputs; image-only tops keep their single "features" input.
"""

import json
import math

import keras
import numpy as np

from mlkit.errors import MlkitError
from mlkit.layers import FeatureBounds
from mlkit.optimizers import make_optimizer
from mlkit.tuning.config import TopConfig
from mlkit.tuning.resampling import positive_weights
from mlkit.workspace import run_paths

HEADS = {"multilabel": "sigmoid", "multiclass": "softmax", "regression": "linear"}
FOCAL_GAMMA = 2.0
PLATEAU_FACTOR = 0.5
PLATEAU_PATIENCE = 2
PLATEAU_MIN_LR = 1e-5


def as_config(config):
    return config if isinstance(config, TopConfig) else TopConfig.from_dict(dict(config))


# Epsilon and variance floor far below any real feature scale: random-weight
# backbones give features of 1e-12 that still separate images once standardised.
STANDARDISE_EPSILON = 1e-30
STANDARDISE = "top_standardise"
BOUNDS = "top_bounds"


def standardise_layer():
    """Per-feature (per-channel for maps) standardisation with frozen statistics.

    A non-trainable BatchNormalization without centre or scale: it always runs
    in inference mode, so it applies exactly the mean and variance that
    `set_input_statistics` stores, and those travel in the weights file.
    """
    return keras.layers.BatchNormalization(
        center=False, scale=False, epsilon=STANDARDISE_EPSILON, trainable=False, dtype="float32", name=STANDARDISE)


def set_input_statistics(model, mean, variance, low=None, high=None):
    """Stores the training features' statistics in the top's first layers.

    Args:
        model: a top from `build_top_model`.
        mean, variance: per-feature (per-channel) mean and variance of the training rows.
        low, high: per-feature minimum and maximum of the same rows, needed by
            a top with bounds (`TopConfig.bounds`), which stores them
            standardised. Defaults to None (a top without bounds).
    """
    variance = np.asarray(variance, dtype="float64")
    floor = max(float(variance.mean()) * 1e-6, STANDARDISE_EPSILON)
    layer = model.get_layer(STANDARDISE)
    layer.moving_mean.assign(np.asarray(mean, dtype="float32"))
    layer.moving_variance.assign(np.maximum(variance, floor).astype("float32"))
    if BOUNDS not in {each.name for each in model.layers}:
        return
    if low is None or high is None:
        raise MlkitError("a top with feature bounds needs the training rows' per-feature minimum and maximum")
    # Standardised by the layer itself, in float32: it is monotonic, so every training row stays inside.
    extremes = np.stack([np.asarray(low, dtype="float32"), np.asarray(high, dtype="float32")])
    as_input = extremes.reshape((2,) + (1,) * (len(layer.input.shape) - 2) + (-1,))  # a map's channels: (2, 1, 1, C)
    z_low, z_high = keras.ops.convert_to_numpy(layer(as_input, training=False)).reshape(2, -1)
    bounds = model.get_layer(BOUNDS)
    bounds.low.assign(z_low)
    bounds.high.assign(z_high)


def build_top_model(config, input_shape, num_outputs, task):
    """Builds an uncompiled top model.

    Args:
        config: a `TopConfig` (or its dict) giving layers, units, reg and, for
            raw feature maps, `top_pool` (flatten, avg or max).
        input_shape: one cached feature's shape, e.g. (2048,) or (7, 7, 512).
        num_outputs: labels, classes or regression targets.
        task: multilabel, multiclass or regression.

    Returns:
        A `keras.Model` named "top" mapping features to scores.

    Example:
        model = build_top_model(TopConfig(layers=2, units=1024), (2048,), 80, "multilabel")
    """
    config = as_config(config)
    if task not in HEADS:
        raise MlkitError(f"task {task!r} is not one of {', '.join(HEADS)}")
    inputs, branches = {}, []
    if "features" in config.inputs:
        inputs["features"] = keras.Input(shape=tuple(int(d) for d in input_shape), name="features")
        branches.append(image_branch(inputs["features"], config))
    if "tokens" in config.inputs:
        inputs["tokens"] = keras.Input(shape=(int(config.vocabulary["max_len"]),), dtype="int32", name="tokens")
        branches.append(caption_branch(inputs["tokens"], config))
    x = keras.layers.Concatenate(name="top_merge")(branches) if len(branches) > 1 else branches[0]
    for layer in range(1, int(config.layers) + 1):
        x = keras.layers.Dense(int(config.units), activation="relu", name=f"top_dense{layer}")(x)
        if config.reg == "bn":
            x = keras.layers.BatchNormalization(name=f"top_bn{layer}")(x)
        elif config.dropout > 0:
            x = keras.layers.Dropout(config.dropout, name=f"top_dropout{layer}")(x)
    outputs = keras.layers.Dense(int(num_outputs), activation=HEADS[task], name="top_output")(x)
    return keras.Model(inputs if config.text else inputs["features"], outputs, name="top")


def image_branch(features, config):
    """Standardised (and, with `config.bounds`, clipped) features, flattened or pooled when they are H x W x C maps."""
    shape = tuple(features.shape[1:])
    x = standardise_layer()(features)
    if config.bounds:
        x = FeatureBounds(name=BOUNDS)(x)
    if len(shape) == 3:
        return {
            "flatten": keras.layers.Flatten(name="top_flatten"),
            "avg": keras.layers.GlobalAveragePooling2D(name="top_avg_pool"),
            "max": keras.layers.GlobalMaxPooling2D(name="top_max_pool"),
        }[config.top_pool](x)
    if len(shape) != 1:
        raise MlkitError(f"features of shape {shape} are neither vectors nor H x W x C maps")
    return x


def caption_branch(tokens, config):
    """Embedding (0 masked) and an LSTM or bidirectional LSTM over the caption's token ids.

    cuDNN's LSTM kernel rejects a fully masked row (Keras asserts on it), and a
    row without a caption is exactly that, so the portable kernel is used.
    """
    x = keras.layers.Embedding(int(config.vocabulary["size"]), int(config.embed_dim), mask_zero=True,
                               name="text_embedding")(tokens)
    lstm = keras.layers.LSTM(int(config.text_units), use_cudnn=False, name="text_lstm")
    if config.text == "bilstm":
        lstm = keras.layers.Bidirectional(lstm, name="text_bilstm")
    return lstm(x)


class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy with a per-label weight on the positive term.

    Keras's `class_weight` reduces a multi-hot target to its argmax, so label
    imbalance is handled here, inside the loss, instead.

    Args:
        pos_weight: one weight per label (negatives / positives on the training split).
    """

    def __init__(self, pos_weight, name="weighted_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pos_weight = np.asarray(pos_weight, dtype="float32")

    def call(self, y_true, y_pred):
        ops = keras.ops
        y_true = ops.cast(y_true, y_pred.dtype)
        p = ops.clip(y_pred, keras.config.epsilon(), 1.0 - keras.config.epsilon())
        terms = self.pos_weight * y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p)
        return -ops.mean(terms, axis=-1)

    def get_config(self):
        return {**super().get_config(), "pos_weight": self.pos_weight.tolist()}


class SparseFocalCrossentropy(keras.losses.Loss):
    """Categorical focal loss (gamma 2) on class-index targets."""

    def __init__(self, num_classes, name="sparse_focal", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.focal = keras.losses.CategoricalFocalCrossentropy(gamma=FOCAL_GAMMA, reduction=None)

    def call(self, y_true, y_pred):
        one_hot = keras.ops.one_hot(keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1,)), self.num_classes)
        return self.focal(one_hot, y_pred)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


def make_loss(config, num_outputs, pos_weight=None):
    """The loss named by `config.loss` for `config.task`."""
    if config.loss == "wbce":
        if pos_weight is None:
            raise MlkitError("loss wbce needs per-label positive weights from the training split")
        return WeightedBinaryCrossentropy(pos_weight)
    if config.task == "multiclass" and config.loss == "focal":
        return SparseFocalCrossentropy(num_outputs)
    return {
        "bce": lambda: keras.losses.BinaryCrossentropy(),
        "focal": lambda: keras.losses.BinaryFocalCrossentropy(gamma=FOCAL_GAMMA),
        "cce": lambda: keras.losses.SparseCategoricalCrossentropy(),
        "mse": lambda: keras.losses.MeanSquaredError(),
        "mae": lambda: keras.losses.MeanAbsoluteError(),
        "huber": lambda: keras.losses.Huber(),
    }[config.loss]()


def schedule_callbacks(config):
    """Callbacks that change the learning rate: none, StepLR, reduce-on-plateau or cosine.

    Step (the iMet report's StepLR) multiplies the rate by `step_gamma` every
    `step_every` epochs; plateau (the plankton report) halves it after 2 epochs without a
    better val_loss, down to 1e-5; cosine anneals it to 0 over `epochs`.
    """
    if config.schedule == "step":
        return [keras.callbacks.LearningRateScheduler(
            lambda epoch: config.lr * config.step_gamma ** (epoch // config.step_every))]
    if config.schedule == "plateau":
        return [keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=PLATEAU_FACTOR, patience=PLATEAU_PATIENCE, min_lr=PLATEAU_MIN_LR)]
    if config.schedule == "cosine":
        return [keras.callbacks.LearningRateScheduler(
            lambda epoch: config.lr * 0.5 * (1 + math.cos(math.pi * epoch / config.epochs)))]
    return []


def compile_top(model, config, pos_weight=None):
    """Compiles a top for training (no metrics: validation metrics come from a callback)."""
    model.compile(
        optimizer=make_optimizer(config.optimizer, config.lr, config.momentum),
        loss=make_loss(config, model.output_shape[-1], pos_weight),
    )
    return model


def trainable_top(config, input_shape, num_outputs, task, train_labels, mean, variance, low=None, high=None):
    """A top ready to `fit` on arrays: built, compiled, its input standardisation set.

    For code outside tune-top that trains a top on features it holds itself
    (the audit's fold models). `wbce` gets its positive weights from `train_labels`.

    Args:
        config: the `TopConfig`.
        input_shape: the feature shape, e.g. (1280,).
        num_outputs: labels, classes or targets.
        task: multilabel, multiclass or regression.
        train_labels: the training rows' labels (multi-hot for multilabel).
        mean, variance: per-feature statistics of the training rows.
        low, high: per-feature minimum and maximum of the training rows, for
            a top with bounds (`TopConfig.bounds`). Defaults to None.
    """
    pos_weight = positive_weights(train_labels) if config.loss == "wbce" else None
    model = compile_top(build_top_model(config, input_shape, num_outputs, task), config, pos_weight)
    set_input_statistics(model, mean, variance, low, high)
    return model


def load_top(workdir, run):
    """Rebuilds a trained top from `tuning/<run>.json` and `tuning/<run>.weights.h5`.

    Args:
        workdir: the workspace folder holding `tuning/`.
        run: the run name (a `RunName` or its string).

    Returns:
        (model, config): the uncompiled top with its best-epoch weights, and its `TopConfig`.

    Raises:
        MlkitError: when the run has not finished (no record or no weights).
    """
    paths = run_paths(workdir, run)
    if not paths["json"].exists() or not paths["weights"].exists():
        raise MlkitError(
            f"run {run} has no finished record in {paths['json'].parent} (need {paths['json'].name} and "
            f"{paths['weights'].name}); list finished runs with `mlkit runs {paths['json'].parent}`"
        )
    record = json.loads(paths["json"].read_text())
    config = TopConfig.from_dict(record["config"])
    model = build_top_model(config, config.input_shape, config.num_outputs, config.task)
    model.load_weights(paths["weights"])
    return model, config
