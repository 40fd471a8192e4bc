"""KerasHub backbones (`hub:PRESET`) and the user's own `.keras` backbone, without any download.

Each supported family is built from a tiny config with random weights and saved as a local preset
folder (what `Backbone.save_to_preset` writes), so `--backbone hub:FOLDER` goes through the same
`from_preset` path as a KerasHub preset name, offline.
"""

import shutil

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")  # the [hub] extra; CI installs it with [test]

from mlkit.backbones import build_backbone, feature_extractor, freeze_units, get_backbone, tapped_backbone  # noqa: E402
from mlkit.errors import MlkitError  # noqa: E402
from mlkit.models.network import apply_freeze, build_network, resolve_freeze, walk_layers  # noqa: E402
from mlkit.taps import cache_taps  # noqa: E402
from mlkit.tuning.config import TopConfig  # noqa: E402
from mlkit.tuning.top import build_top_model, set_input_statistics  # noqa: E402

SIZE = 32
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def tiny(family):
    """(backbone, image converter, patch-token prefix) of a tiny random `family`."""
    models, layers = keras_hub.models, keras_hub.layers
    torch_scale = [1 / (255 * s) for s in IMAGENET_STD]
    torch_offset = [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    vit_args = {"patch_size": 8, "num_layers": 3, "num_heads": 2, "hidden_dim": 16}
    if family == "vit":
        return (models.ViTBackbone(image_shape=(SIZE, SIZE, 3), mlp_dim=32, **vit_args),
                layers.ViTImageConverter(image_size=(SIZE, SIZE), scale=1 / 127.5, offset=-1.0), 1)
    if family == "dinov2":
        return (models.DINOV2Backbone(intermediate_dim=32, image_shape=(SIZE, SIZE, 3), num_register_tokens=2,
                                      position_embedding_shape=(SIZE, SIZE, 3), **vit_args),
                layers.DINOV2ImageConverter(image_size=(SIZE, SIZE), scale=torch_scale, offset=torch_offset), 3)
    if family == "siglip":
        vision = models.SigLIPVisionEncoder(intermediate_dim=32, image_shape=(SIZE, SIZE, 3), **vit_args)
        text = models.SigLIPTextEncoder(vocabulary_size=20, embedding_dim=16, hidden_dim=16, num_layers=1, num_heads=2,
                                        intermediate_dim=32, max_sequence_length=8)
        return (models.SigLIPBackbone(vision, text),
                layers.SigLIPImageConverter(image_size=(SIZE, SIZE), scale=1 / 127.5, offset=-1.0), 0)
    if family == "clip":
        vision = models.CLIPVisionEncoder(intermediate_dim=32, image_shape=(SIZE, SIZE, 3), **vit_args)
        text = models.CLIPTextEncoder(vocabulary_size=20, embedding_dim=16, hidden_dim=16, num_layers=1, num_heads=2,
                                      intermediate_dim=32, max_sequence_length=8)
        return (models.CLIPBackbone(vision, text, projection_dim=16),
                layers.CLIPImageConverter(image_size=(SIZE, SIZE), scale=torch_scale, offset=torch_offset), 1)
    if family == "resnet":
        return (models.ResNetBackbone(input_conv_filters=[64], input_conv_kernel_sizes=[3],
                                      stackwise_num_filters=[64, 32], stackwise_num_blocks=[1, 1],
                                      stackwise_num_strides=[1, 2], block_type="basic_block",
                                      image_shape=(None, None, 3)),
                layers.ResNetImageConverter(image_size=(SIZE, SIZE), scale=torch_scale, offset=torch_offset), None)
    raise ValueError(family)


FAMILIES = ("vit", "dinov2", "siglip", "clip", "resnet")


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """{family: (preset folder, the tiny backbone, its converter, prefix)}, built once."""
    root = tmp_path_factory.mktemp("presets")
    made = {}
    for family in FAMILIES:
        keras.utils.set_random_seed(1)
        backbone, converter, prefix = tiny(family)
        folder = root / family
        backbone.save_to_preset(str(folder))
        converter.save_to_preset(str(folder))
        made[family] = (folder, backbone, converter, prefix)
    return made


def reference_features(backbone, converter, prefix, pixels):
    """Features computed with KerasHub alone: its converter, its model, numpy pooling."""
    image_model = getattr(backbone, "vision_encoder", None) or backbone
    inputs = np.asarray(converter(pixels))
    if prefix is None:
        return np.asarray(image_model(inputs)).mean(axis=(1, 2))
    if isinstance(image_model, keras_hub.models.SigLIPVisionEncoder):
        norm = [layer for layer in image_model.layers if layer.name.endswith("post_layer_norm")][0]
        tokens = keras.Model(image_model.inputs, norm.output)(inputs)
    else:
        tokens = image_model(inputs)
    return np.asarray(tokens)[:, prefix:].mean(axis=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_features_are_the_preset_converter_then_the_mean_of_patch_tokens(presets, family):
    folder, backbone, converter, prefix = presets[family]
    model, info = build_backbone(f"hub:{folder}", "imagenet", None, "avg")
    pixels = np.random.default_rng(0).uniform(0, 255, (3, SIZE, SIZE, 3)).astype("float32")
    ours = np.asarray(feature_extractor(model, info["spec"], "inet", info["image_size"])(pixels))
    np.testing.assert_allclose(ours, reference_features(backbone, converter, prefix, pixels), rtol=1e-4, atol=1e-5)
    assert info["image_size"] == SIZE and info["spec"].name == f"hub-{family}"
    assert info["settings"]["backbone_source"] == f"hub:{folder}"
    again = build_backbone(f"hub:{folder}", "imagenet", None, "avg")[1]
    random = build_backbone(f"hub:{folder}", "none", None, "avg", seed=3)[1]
    assert again["weights_sha256"] == info["weights_sha256"] != random["weights_sha256"]


@pytest.mark.parametrize("family", ("vit", "dinov2", "clip", "siglip"))
def test_cls_pooling_is_the_models_own_image_embedding(presets, family):
    folder, backbone, converter, prefix = presets[family]
    model, _ = build_backbone(f"hub:{folder}", "imagenet", None, "cls")
    image_model = getattr(backbone, "vision_encoder", None) or backbone
    inputs = np.asarray(converter(np.full((2, SIZE, SIZE, 3), 100.0, "float32")))
    expected = np.asarray(image_model(inputs))
    expected = expected if expected.ndim == 2 else expected[:, 0]
    np.testing.assert_allclose(np.asarray(model(inputs)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family, blocks", [("vit", ["transformer_block_1", "transformer_block_2", "transformer_block_3"]),
                                            ("dinov2", ["layers_0", "layers_1", "layers_2"]),
                                            ("siglip", [f"sig_lip_vision_encoder_encoder_block_{i}" for i in range(3)]),
                                            ("clip", [f"clip_vision_encoder_encoder_block_{i}" for i in range(3)])])
def test_freeze_counts_a_transformers_embedding_blocks_and_head(presets, family, blocks):
    model, _ = build_backbone(f"hub:{presets[family][0]}", "imagenet", None, "avg")
    names = [name for name, _ in freeze_units(model)]
    assert names[1:4] == blocks and len(names) == 5, names
    assert resolve_freeze(model, "75%") == 4 and resolve_freeze(model, blocks[1]) == 2
    assert resolve_freeze(model, "block_2") == 2 and resolve_freeze(model, "block_3") == 3  # as the taps are named
    apply_freeze(model, model, resolve_freeze(model, blocks[1]))
    trainable = {id(v) for v in model.trainable_weights}
    units = dict(freeze_units(model))
    assert not any(id(v) in trainable for layer in units[blocks[0]] for v in layer.weights)
    assert all(id(v) in trainable for layer in units[blocks[1]] for v in layer.trainable_weights or layer.weights)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_mode_equals_inference_mode_with_half_the_backbone_unfrozen(presets, family):
    model, info = build_backbone(f"hub:{presets[family][0]}", "imagenet", None, "avg")
    top = build_top_model(TopConfig(units=8, reg="d0"), info["feature_shape"], 3, "multilabel")
    network = build_network(model, info["spec"], {"image_size": SIZE, "preprocess": "inet"}, top)
    for layer in walk_layers(network):
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    pixels = np.random.default_rng(0).uniform(0, 255, (4, SIZE, SIZE, 3)).astype("float32")
    features = np.asarray(feature_extractor(model, info["spec"], "inet", SIZE)(pixels))
    set_input_statistics(top, features.mean(0), features.var(0), features.min(0), features.max(0))
    apply_freeze(network, model, resolve_freeze(model, "50%"))
    assert model.trainable_weights and len(model.trainable_weights) < len(model.weights)
    np.testing.assert_allclose(network(pixels, training=True), network(pixels, training=False), rtol=1e-4, atol=1e-5)


def plain_forward(image_model, inputs, blocks):
    """The first `blocks` blocks' output tokens, computed eagerly layer by layer (a CNN: its first stage's map)."""
    family = type(image_model).__name__
    if family == "ViTBackbone":
        encoder = image_model.get_layer("vit_encoder")
        x = image_model.get_layer("vit_patching_and_embedding")(inputs)
        return keras.Sequential(encoder.encoder_layers[:blocks])(x)
    if family == "ResNetBackbone":
        return keras.Model(image_model.inputs, image_model.get_layer("stack0_block0_out").output)(inputs)
    if family == "DINOV2Backbone":
        x = image_model.embeddings(inputs)
        return keras.Sequential(image_model.encoder.layers[:blocks])(x)
    layers = [layer for layer in image_model.layers[1:] if "encoder_block_" in layer.name][:blocks]
    x = image_model.layers[1](inputs)  # the embedding
    x = image_model.layers[2](x) if family == "CLIPVisionEncoder" else x  # CLIP's pre_layer_norm
    return keras.Sequential(layers)(x)


def test_tapped_features_are_the_pooled_outputs_of_the_named_blocks_and_stages(presets):
    inputs = np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)).astype("float32")
    for family, tap in (("vit", "block_2"), ("dinov2", "block_2"), ("siglip", "block_2"), ("clip", "block_2"),
                        ("resnet", "stage_1")):
        folder, _, _, prefix = presets[family]
        model, _ = build_backbone(f"hub:{folder}", "imagenet", None, "avg")
        features, tapped = tapped_backbone(model, ("last", tap))(inputs)
        np.testing.assert_allclose(features, model(inputs), rtol=1e-5, atol=1e-6)
        plain = np.asarray(plain_forward(model.image_model, inputs, blocks=2))
        expected = plain.mean(axis=(1, 2)) if prefix is None else plain[:, prefix:].mean(axis=1)
        np.testing.assert_allclose(tapped, expected, rtol=1e-4, atol=1e-5, err_msg=family)
    with pytest.raises(MlkitError, match="Blocks are offered by ViT, DINOv2"):
        tapped_backbone(model, ("last", "block_9"))
    with pytest.raises(MlkitError, match="block_1, block_2"):
        cache_taps(f"hub:{presets['dinov2'][0]}", "all")


def test_get_backbone_parses_hub_and_file_names_without_reading_anything(tmp_path):
    assert get_backbone("hub:dinov2_small").name == "hub-dinov2-small"
    assert get_backbone("hub:siglip_base_patch16_224").source == "siglip_base_patch16_224"
    spec = get_backbone(str(tmp_path / "My_Model.keras"))
    assert (spec.kind, spec.name, spec.source) == ("file", "file-my-model", str(tmp_path / "My_Model.keras"))
    with pytest.raises(MlkitError, match="hub:PRESET"):
        get_backbone("dinov2")


def test_offline_preset_names_the_preset_and_kerashubs_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path))
    with pytest.raises(MlkitError) as raised:
        build_backbone("hub:dinov2_small")  # conftest blocks the network: must not download
    message = str(raised.value)
    assert "dinov2_small" in message and str(tmp_path) in message and "keras/dinov2" in message


def test_a_cnn_preset_refuses_cls_pooling_and_a_tap(presets):
    with pytest.raises(MlkitError, match="CNN"):
        build_backbone(f"hub:{presets['resnet'][0]}", "imagenet", None, "cls")
    with pytest.raises(MlkitError, match="--tap"):
        build_backbone(f"hub:{presets['resnet'][0]}", tap="pool")


@pytest.fixture
def no_presets_left(tmp_path):
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)
