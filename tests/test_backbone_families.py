"""Every backbone family's fine-tuning network computes the same in training mode as in inference mode.

`fit` calls the network with `training=True`; batch norm must still use its moving statistics
(mlkit.models.network.apply_freeze), whichever blocks are unfrozen. Random weights, the smallest input
each family accepts, and dropout off, so any difference comes from normalisation.
"""

import keras
import numpy as np
import pytest

from mlkit.backbones import build_backbone, feature_extractor, get_backbone
from mlkit.models.network import apply_freeze, build_network, resolve_freeze, walk_layers
from mlkit.tuning.config import TopConfig
from mlkit.tuning.top import build_top_model, set_input_statistics

# One registry entry per keras.applications family, at the smallest size it accepts.
FAMILIES = {"vgg16": 32, "resnet50": 32, "resnet50v2": 32, "inceptionv3": 75, "xception": 71, "mobilenet": 32,
            "mobilenetv2": 32, "mobilenetv3small": 32, "densenet121": 32, "nasnetmobile": 32, "efficientnetb0": 32,
            "efficientnetv2b0": 32, "convnexttiny": 32}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_training_mode_equals_inference_mode_with_half_the_backbone_unfrozen(name):
    size = FAMILIES[name]
    backbone, info = build_backbone(name, "none", size, "avg")
    top = build_top_model(TopConfig(units=8, reg="d0"), info["feature_shape"], 3, "multilabel")
    attrs = {"image_size": size, "preprocess": "inet"}
    network = build_network(backbone, get_backbone(name), attrs, top)
    for layer in walk_layers(network):
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    pixels = np.random.default_rng(0).uniform(0, 255, (4, size, size, 3)).astype("float32")
    features = np.asarray(feature_extractor(backbone, get_backbone(name), "inet", size)(pixels))
    set_input_statistics(top, np.mean(features, axis=0), np.var(features, axis=0), features.min(0), features.max(0))
    apply_freeze(network, backbone, resolve_freeze(backbone, str(len(backbone.layers) // 2)))
    assert backbone.trainable_weights, "the later half trains"
    np.testing.assert_allclose(network(pixels, training=True), network(pixels, training=False), rtol=1e-4, atol=1e-6)
