"""Layer-wise learning-rate decay (`finetune --lr-decay F`): per-variable rates, the blocks they count, the run name."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mlkit.backbones import depth_blocks
from mlkit.errors import MlkitError
from mlkit.models.finetune import FinetuneConfig, finetune_run_name
from mlkit.models.network import layerwise_lr_scales
from mlkit.optimizers import make_optimizer
from mlkit.runs import decode_lr, parse_run_name

LR = 0.01


def tiny_network(seed=0):
    """(backbone: stem, block_1, block_2; network: backbone + a dense top), seeded."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3), name="images")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="stem_conv")(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="block_1_conv")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="block_1_project")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="block_2_conv")(x)
    backbone = keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="pool")(x), name="tiny")
    pixels = keras.Input((8, 8, 3))
    network = keras.Model(pixels, keras.layers.Dense(2, name="top")(backbone(pixels)))
    return backbone, network


def batch():
    rng = np.random.default_rng(0)
    return rng.normal(size=(4, 8, 8, 3)).astype("float32"), rng.normal(size=(4, 2)).astype("float32")


def test_blocks_count_depth_from_the_last_and_the_top_keeps_the_learning_rate():
    backbone, network = tiny_network()
    assert [[layer.name for layer in block] for block in depth_blocks(backbone)] == [
        ["images", "stem_conv"], ["block_1_conv", "block_1_project"], ["block_2_conv", "pool"]]
    scales = layerwise_lr_scales(backbone, 0.5)
    by_layer = {layer.name: {scales[id(v)] for v in layer.weights} for layer in backbone.layers if layer.weights}
    assert by_layer == {"stem_conv": {0.25}, "block_1_conv": {0.5}, "block_1_project": {0.5}, "block_2_conv": {1.0}}
    assert not any(id(v) in scales for v in network.get_layer("top").weights) and layerwise_lr_scales(backbone, 1) == {}


def test_each_variable_steps_at_lr_times_its_factor_in_a_plain_loop():
    backbone, network = tiny_network()
    scales = layerwise_lr_scales(backbone, 0.5)
    optimizer = make_optimizer("sgd", LR, momentum=0.0, lr_scales=scales)
    x, y = batch()
    with tf.GradientTape() as tape:
        loss = keras.losses.MeanSquaredError()(y, network(x))
    variables = network.trainable_variables
    grads = tape.gradient(loss, variables)
    before = [np.asarray(v) for v in variables]
    optimizer.apply(grads, variables)
    for variable, grad, old in zip(variables, grads, before):
        expected = old - LR * scales.get(id(variable), 1.0) * np.asarray(grad)
        np.testing.assert_allclose(np.asarray(variable), expected, rtol=1e-5, atol=1e-7, err_msg=variable.path)


def test_with_decay_below_one_a_lower_block_moves_less_after_one_adam_step_in_fit():
    moved = {}
    for decay in (1.0, 0.5):
        backbone, network = tiny_network()
        before = {layer: np.asarray(backbone.get_layer(layer).kernel) for layer in ("stem_conv", "block_2_conv")}
        optimizer = make_optimizer("adam", LR, lr_scales=layerwise_lr_scales(backbone, decay))
        if decay == 1.0:  # the reference step, eagerly; the decayed one through fit's compiled train step
            with tf.GradientTape() as tape:
                loss = keras.losses.MeanSquaredError()(batch()[1], network(batch()[0]))
            optimizer.apply(tape.gradient(loss, network.trainable_variables), network.trainable_variables)
        else:
            network.compile(optimizer=optimizer, loss="mse")
            network.train_on_batch(*batch())
        moved[decay] = {layer: np.abs(np.asarray(backbone.get_layer(layer).kernel) - old).mean()
                        for layer, old in before.items()}
    # Adam's first step is about lr per weight whatever the gradient's scale: the stem's is F^2 = 1/4 of it.
    assert moved[0.5]["stem_conv"] == pytest.approx(moved[1.0]["stem_conv"] * 0.25, rel=1e-3)
    assert moved[0.5]["block_2_conv"] == pytest.approx(moved[1.0]["block_2_conv"], rel=1e-4)


def test_transformer_and_cnn_blocks_and_a_cnn_without_block_names_is_refused():
    backbone = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    blocks = depth_blocks(backbone)
    assert len(blocks) == 17 and blocks[1][0].name == "block_1_expand" and blocks[-1][-1].name.startswith("global_average")
    assert [layer.name for layer in blocks[0]][-1].startswith("expanded_conv")  # block 0 sits with the stem
    keras_hub = pytest.importorskip("keras_hub")
    vit = keras_hub.models.ViTBackbone(image_shape=(16, 16, 3), patch_size=8, num_layers=3, num_heads=2, hidden_dim=8,
                                       mlp_dim=16)
    names = [[layer.name for layer in block] for block in depth_blocks(vit)]
    assert names[1:3] == [["transformer_block_1"], ["transformer_block_2"]] and names[3][0] == "transformer_block_3"
    assert "vit_patching_and_embedding" in names[0] and "ln" in names[3]
    with pytest.raises(MlkitError, match="no block numbers"):
        depth_blocks(keras.applications.MobileNet(include_top=False, weights=None, input_shape=(32, 32, 3)))


def test_the_decay_is_a_run_name_option_that_round_trips_and_is_omitted_when_off():
    top = "synth_all_mobilenetv2_inet_avg_1x64d2_lr13_b32_opt-adam"
    name = finetune_run_name(top, 116, FinetuneConfig(lr_decay=0.8))
    assert name.endswith("_116_lr14_b32_hwzf_lrd-81_opt-adam")
    assert decode_lr(parse_run_name(name).option("lrd")) == 0.8 and str(parse_run_name(name)) == name
    assert "lrd" not in finetune_run_name(top, 116, FinetuneConfig())
    for bad in (0, 1.5, -0.5):
        with pytest.raises(MlkitError, match="--lr-decay"):
            FinetuneConfig(lr_decay=bad)
    from mlkit.cli import build_parser

    assert build_parser().parse_args(["finetune", "cache.h5", "--lr-decay", "0.8"]).lr_decay == 0.8
