"""The network a crop reads, as the pieces the crop needs: preprocessing layers, backbone, input side."""

from dataclasses import dataclass

import keras

from mlkit.backbones import build_backbone, get_backbone, preprocessing_layers


@dataclass
class ModelParts:
    """A network's pieces: preprocessing layers, backbone, top (None for a bare backbone), input side.

    `exported` is the whole exported model when the pieces came from one.
    """

    preprocessing: list
    backbone: keras.Model
    top: object
    image_size: int
    name: str
    exported: object = None


def backbone_parts(backbone="mobilenetv2", weights="imagenet", image_size=224):
    """A registry backbone with its own ImageNet preprocessing, as `ModelParts` without a top."""
    spec = get_backbone(backbone)
    model, _ = build_backbone(spec.name, weights, image_size, pooling="none")
    return ModelParts(preprocessing_layers(spec, "inet"), model, None, int(image_size), f"{spec.name} ({weights})")
