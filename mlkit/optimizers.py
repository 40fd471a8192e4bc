"""The one optimiser factory: stage 2 and stage 3 build the same optimiser from the same name.

Layer-wise learning-rate decay (`finetune --lr-decay F`, as in BEiT and the
DINOv2/MAE fine-tuning recipes, docs/references.md): each backbone variable
trains at lr times its own factor (`mlkit.models.network.layerwise_lr_scales`:
F to the power of its block's depth below the last block). Keras 3 has no
per-variable learning rate, so the optimiser's `update_step`, which every
Keras 3 optimiser runs once per variable with the step's learning rate, is
given the scaled rate (mlkit.layerwise, which imports Keras). Scaling the
gradients instead would not work for Adam, whose step is invariant to a
gradient's scale.
"""

from mlkit.vocabulary import OPTIMIZERS


def make_optimizer(name, lr, momentum=0.9, clipnorm=None, lr_scales=None):
    """A Keras optimiser by name: Adam, or SGD with momentum (the COCO report, docs/references.md).

    Args:
        name: "adam" or "sgd".
        lr: the initial learning rate.
        momentum: SGD's momentum. Defaults to 0.9.
        clipnorm: clip the gradients to this global norm. Defaults to None (no clipping).
        lr_scales: {id(variable): factor}: those variables train at lr * factor,
            the others at lr. Defaults to None (every variable at lr).
    """
    import keras

    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")
    base = keras.optimizers.Adam if name == "adam" else keras.optimizers.SGD
    kwargs = {"learning_rate": lr, "global_clipnorm": clipnorm, **({"momentum": momentum} if name == "sgd" else {})}
    if not lr_scales or all(scale == 1 for scale in lr_scales.values()):
        return base(**kwargs)
    from mlkit.layerwise import LAYERWISE

    return LAYERWISE[name](lr_scales=lr_scales, **kwargs)
