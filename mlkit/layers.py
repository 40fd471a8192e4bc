"""Every Keras layer mlkit's saved models hold beyond stock Keras and KerasHub, registered by one import.

Loading a `.keras` file that holds them needs `import mlkit.layers` (mlkit's
`load_model`, `predict` and `--backbone PATH.keras` do it): Keras rebuilds a
registered layer by its registered name (`mlkit>LabelDecision`), whatever
module it was saved from, so models saved when the decision layers lived in
mlkit.models.layers load unchanged. Defined here: the label decision,
target unscaling and a top's feature bounds, written in `keras.ops` only so they trace into a
TensorFlow SavedModel that serves without mlkit. Registered from their own
modules and re-exported: the caption vectoriser (mlkit.text) and a KerasHub
backbone's pooled features (mlkit.hub_backbones, which imports KerasHub only
when a model holding one is rebuilt), and the optimisers of `finetune
--lr-decay` (mlkit.layerwise), which a saved network's compile config names.
"""

import keras
import numpy as np
from keras import ops

from mlkit.evaluation.decisions import DEPLOYABLE_KINDS, DecisionRuleError
from mlkit.hub_backbones import HubFeatures
from mlkit.layerwise import LayerwiseAdam, LayerwiseSGD
from mlkit.text import CaptionVectorizer

__all__ = ["CaptionVectorizer", "FeatureBounds", "HubFeatures", "LabelDecision", "LayerwiseAdam", "LayerwiseSGD", "Unscale",
           "top_labels"]


def top_labels(scores, k):
    """0/1 float mask of each row's k highest scores (k a Python int)."""
    num_labels = scores.shape[-1]
    k = int(min(max(k, 0), num_labels))
    if k == 0:
        return ops.zeros_like(scores)
    _, indices = ops.top_k(scores, k=k, sorted=False)
    return ops.max(ops.one_hot(indices, num_labels, dtype=scores.dtype), axis=1)


@keras.saving.register_keras_serializable(package="mlkit")
class LabelDecision(keras.layers.Layer):
    """Scores (N, L) -> decided labels, uint8 (N, L): 1 where the rule says the label applies.

    Applies a fitted `mlkit.evaluation.decisions.Rule` exactly as `Rule.apply` does:
    `score >= tau` with one tau or one per label, the top K, or argmax, then
    the rule's min/max labels per image. Thresholds are kept as float32: a
    fitted tau is always one of the float32 scores it was fitted on, so the
    comparison is exact.

    Args:
        rule: the dict from `Rule.to_dict()` (a fitted, deployable rule).
    """

    def __init__(self, rule, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        kind = rule.get("kind")
        if kind not in DEPLOYABLE_KINDS:
            raise DecisionRuleError(f"rule {rule.get('spec')!r} cannot be built into a model; use one of "
                                    f"{', '.join(DEPLOYABLE_KINDS)}")
        if kind in ("threshold", "cardinality", "fbeta", "per-class") and rule.get("threshold") is None:
            raise DecisionRuleError(f"rule {rule.get('spec')!r} is not fitted: it has no threshold")
        self.rule = dict(rule)
        self.kind = kind
        threshold = rule.get("threshold")
        self.threshold = None if threshold is None else np.asarray(threshold, dtype="float32")

    def call(self, scores):
        scores = ops.cast(scores, "float32")
        if self.kind == "argmax":
            decided = ops.one_hot(ops.argmax(scores, axis=-1), scores.shape[-1], dtype="float32")
            return ops.cast(decided, "uint8")
        if self.kind == "topk":
            decided = top_labels(scores, self.rule["param"])
        else:
            decided = ops.cast(ops.greater_equal(scores, ops.convert_to_tensor(self.threshold)), "float32")
        if self.rule.get("min_labels"):
            decided = ops.maximum(decided, top_labels(scores, self.rule["min_labels"]))
        if self.rule.get("max_labels") is not None:
            ranked = ops.where(decided > 0, scores, ops.full_like(scores, -np.inf))
            decided = decided * top_labels(ranked, self.rule["max_labels"])
        return ops.cast(decided, "uint8")

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, scores):
        return keras.KerasTensor(scores.shape, dtype="uint8")

    def get_config(self):
        return {**super().get_config(), "rule": self.rule}


@keras.saving.register_keras_serializable(package="mlkit")
class Unscale(keras.layers.Layer):
    """Regression outputs from the [0, 1] the head was trained on back to original units.

    Args:
        low: per-target minimum of the training targets.
        high: per-target maximum (the top was trained on (y - low) / (high - low)).
    """

    def __init__(self, low, high, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.low = [float(v) for v in np.ravel(low)]
        self.high = [float(v) for v in np.ravel(high)]

    def call(self, predictions):
        low = ops.convert_to_tensor(np.asarray(self.low, "float32"))
        span = ops.convert_to_tensor(np.asarray(self.high, "float32") - np.asarray(self.low, "float32"))
        return ops.cast(predictions, "float32") * span + low

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "low": self.low, "high": self.high}


@keras.saving.register_keras_serializable(package="mlkit")
class FeatureBounds(keras.layers.Layer):
    """Clips each feature (the last axis) to a stored range: a top's standardised inputs to the training rows'.

    A unit that no training image switches on has almost no training
    variance, so a new image that does switch it on lands tens or hundreds of
    standard deviations out, and a linear (regression) head extrapolates from
    it without bound. Clipped to what training saw, a feature can move the
    head no further than the training rows moved it; the training rows
    themselves pass unchanged. The range starts unbounded (-inf, inf) and is
    set with the top's statistics (`mlkit.tuning.top.set_input_statistics`);
    it is a pair of non-trainable weights, so it travels in the weights file.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def build(self, input_shape):
        width = (int(input_shape[-1]),)
        self.low = self.add_weight(shape=width, initializer=keras.initializers.Constant(-np.inf), trainable=False,
                                   name="low")
        self.high = self.add_weight(shape=width, initializer=keras.initializers.Constant(np.inf), trainable=False,
                                    name="high")

    def call(self, features):
        return ops.minimum(ops.maximum(ops.cast(features, "float32"), self.low), self.high)

    def compute_output_shape(self, input_shape):
        return input_shape
