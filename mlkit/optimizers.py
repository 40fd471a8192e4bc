"""The one optimiser factory: stage 2 and stage 3 build the same optimiser from the same name."""

from mlkit.vocabulary import OPTIMIZERS


def make_optimizer(name, lr, momentum=0.9, clipnorm=None):
    """A Keras optimiser by name: Adam, or SGD with momentum (the COCO report, docs/references.md).

    Args:
        name: "adam" or "sgd".
        lr: the initial learning rate.
        momentum: SGD's momentum. Defaults to 0.9.
        clipnorm: clip the gradients to this global norm. Defaults to None (no clipping).
    """
    import keras

    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=lr, global_clipnorm=clipnorm)
    return keras.optimizers.SGD(learning_rate=lr, momentum=momentum, global_clipnorm=clipnorm)
