import keras
import numpy as np
import pytest

from mlkit import backbones
from mlkit.errors import MlkitError


def apply_layers(layers, x):
    for layer in layers:
        x = layer(x)
    return np.asarray(x)


@pytest.mark.parametrize("name", sorted(backbones.BACKBONES))
def test_inet_layers_equal_keras_preprocess_input(name):
    """Every registry entry's inet layers equal the preprocess_input of the module its constructor lives in."""
    import sys

    spec = backbones.get_backbone(name)
    module = sys.modules[getattr(keras.applications, spec.constructor).__module__]
    pixels = np.random.default_rng(0).uniform(0, 255, size=(2, 8, 8, 3)).astype("float32")
    ours = apply_layers(backbones.preprocessing_layers(spec, "inet"), pixels)
    theirs = np.asarray(module.preprocess_input(pixels.copy()))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)


def test_zmuv_uses_given_statistics_and_zmuvs_standardises_each_image():
    pixels = np.random.default_rng(1).uniform(0, 255, size=(2, 6, 6, 3)).astype("float32")
    spec = backbones.get_backbone("mobilenetv2")
    mean, std = [10.0, 20.0, 30.0], [2.0, 4.0, 8.0]
    zmuv = apply_layers(backbones.preprocessing_layers(spec, "zmuv", mean, std), pixels)
    np.testing.assert_allclose(zmuv, (pixels - mean) / std, rtol=1e-5, atol=1e-4)
    zmuvs = apply_layers(backbones.preprocessing_layers(spec, "zmuvs"), pixels)
    per_image = pixels.reshape(2, -1)
    expected = (per_image - per_image.mean(1, keepdims=True)) / per_image.std(1, keepdims=True)
    np.testing.assert_allclose(zmuvs.reshape(2, -1), expected, rtol=1e-4, atol=1e-4)


def test_unknown_names_list_the_choices():
    with pytest.raises(MlkitError, match="resnet50"):
        backbones.get_backbone("resnet5")
    with pytest.raises(MlkitError, match="avg, max, none"):
        backbones.build_backbone("mobilenetv2", weights="none", image_size=32, pooling="mean")


def test_random_weights_are_seeded_so_a_rebuild_is_identical():
    _, first = backbones.build_backbone("mobilenetv2", weights="none", image_size=32, pooling="avg")
    _, again = backbones.build_backbone("mobilenetv2", weights="none", image_size=32, pooling="avg")
    _, other = backbones.build_backbone("mobilenetv2", weights="none", image_size=32, pooling="avg", seed=1)
    assert first["weights_sha256"] == again["weights_sha256"] != other["weights_sha256"]
    assert first["feature_shape"] == [1280]


def test_weights_path_gives_the_features_of_the_same_weights_in_memory(tmp_path):
    in_memory, info = backbones.build_backbone("mobilenetv2", weights="none", image_size=32, pooling="max", seed=7)
    path = tmp_path / "mine.weights.h5"
    in_memory.save_weights(path)
    from_file, file_info = backbones.build_backbone("mobilenetv2", weights=str(path), image_size=32, pooling="max")
    images = np.random.default_rng(2).uniform(-1, 1, size=(3, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(from_file.predict(images, verbose=0), in_memory.predict(images, verbose=0), rtol=1e-5, atol=1e-5)
    assert file_info["weights_sha256"] == info["weights_sha256"]


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(MlkitError, match="no such file"):
        backbones.build_backbone("mobilenetv2", weights=str(tmp_path / "nope.h5"), image_size=32)


def test_offline_imagenet_download_names_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    # Offline by design: conftest blocks the network, so the download must fail.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(MlkitError) as raised:
        backbones.build_backbone("mobilenetv2", weights="imagenet", image_size=96)  # offline: must raise
    message = str(raised.value)
    assert "mobilenet_v2_weights" in message
    assert str(tmp_path / "models") in message
    assert "--weights none" in message
