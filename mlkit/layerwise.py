"""Adam and SGD with a learning-rate factor per variable (`finetune --lr-decay`, mlkit.optimizers).

Registered (`mlkit>LayerwiseAdam`, `mlkit>LayerwiseSGD`) because a saved
network's compile config names its optimiser and Keras deserialises it even
when a model is loaded with `compile=False`; `import mlkit.layers` registers
them. The factors are keyed by the live variables, so they are not saved: a
loaded one steps every variable at the base rate.
"""

import keras

from mlkit.compat import optimizer_variable_key


class LayerwiseRates:
    """Mixin for a Keras 3 optimiser: `update_step` gets lr * the variable's factor.

    Args:
        lr_scales: {id(variable): factor}; variables not in it train at the
            optimiser's rate. Defaults to None (all of them).
        **kwargs: the optimiser's own arguments.
    """

    def __init__(self, lr_scales=None, **kwargs):
        super().__init__(**kwargs)
        self.lr_scales = dict(lr_scales or {})
        self.scale_by_key = {}

    def build(self, variables):
        super().build(variables)
        # update_step receives the backend's variable (a tf.Variable, or one replica's under tf.distribute),
        # not the Keras variable, so each factor is filed under the optimiser's own key for it.
        self.scale_by_key = {optimizer_variable_key(self, variable): float(self.lr_scales.get(id(variable), 1.0))
                             for variable in variables}

    def update_step(self, gradient, variable, learning_rate):
        scale = self.scale_by_key.get(optimizer_variable_key(self, variable), 1.0)
        super().update_step(gradient, variable, learning_rate if scale == 1.0 else learning_rate * scale)


@keras.saving.register_keras_serializable(package="mlkit")
class LayerwiseAdam(LayerwiseRates, keras.optimizers.Adam):
    """Adam with a learning-rate factor per variable (`LayerwiseRates`)."""


@keras.saving.register_keras_serializable(package="mlkit")
class LayerwiseSGD(LayerwiseRates, keras.optimizers.SGD):
    """SGD with a learning-rate factor per variable (`LayerwiseRates`)."""


LAYERWISE = {"adam": LayerwiseAdam, "sgd": LayerwiseSGD}
