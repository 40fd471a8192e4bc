"""The names every stage shares, each defined once: tasks, splits, optimisers and image files.

Every other module imports these; none defines its own copy. The optimiser
factory sits here too, so stage 2 and stage 3 build the same optimiser from
the same name.
"""

TASKS = ("multilabel", "multiclass", "regression")
SPLITS = ("train", "val", "test")
OPTIMIZERS = ("sgd", "adam")
# Files read as images by the folder adapter and by `mlkit predict` on a folder (any case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def make_optimizer(name, lr, momentum=0.9, clipnorm=None):
    """A Keras optimiser by name: Adam, or SGD with momentum (seed 003).

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
