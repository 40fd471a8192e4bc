"""The networks `crop` and `look` read: a registry backbone, or the parts of a fine-tuned model.

A fine-tuned model (`models/<run>.keras`) is uint8 images -> resize ->
network; the network is pixels -> preprocessing layers -> backbone -> top.
`model_parts` takes those apart so that the same early layers, the same
preprocessing and the same last convolutional block can be read from a
backbone before and after fine-tuning.
"""

import keras

from mlkit.cropping.parts import ModelParts, backbone_parts
from mlkit.errors import MlkitError


def model_parts(model, workdir="."):
    """The pieces of an exported model (a `.keras` path or a run name under `<workdir>/models/`).

    Returns:
        (ModelParts, record): the record is the run's `<run>.json` (label names, decision, ...).
    """
    from mlkit.models.export import load_model

    exported, record = load_model(model, workdir)
    try:
        network = exported.get_layer("network")
    except ValueError:
        raise MlkitError(f"{model} is not a model exported by mlkit finetune: it has no 'network' layer") from None
    nested = [layer for layer in network.layers if isinstance(layer, keras.Model)]
    if len(nested) < 2:
        raise MlkitError(f"{model}: cannot find its backbone and top inside the network")
    backbone, top = nested[0], nested[1]
    preprocessing = [layer for layer in network.layers[: network.layers.index(backbone)]
                     if not isinstance(layer, keras.layers.InputLayer)]
    size = int((record.get("input") or {}).get("image_size") or backbone.input.shape[1])
    return ModelParts(preprocessing, backbone, top, size, str(record.get("run") or model), exported), record


def crop_parts(config, workdir="."):
    """The network a `CropConfig` reads: its `model`'s own (fine-tuned) backbone, or a registry backbone.

    With `config.model` set, that model's backbone, preprocessing and input
    size are used; `backbone`, `weights` and `image_size` are then ignored.
    """
    if config.model:
        return model_parts(config.model, workdir)[0]
    return backbone_parts(config.backbone, config.weights, config.image_size)
