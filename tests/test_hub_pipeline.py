"""A KerasHub backbone and a user's .keras backbone through the whole pipeline, and TensorBoard's event files.

cache-features -> tune-top -> finetune -> export, served by TensorFlow alone, for each tested KerasHub
family (tiny random presets saved to a folder: nothing is downloaded), and an mlkit model from
models/ used as the backbone of a new cache.
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

from test_hub_backbones import SIZE, tiny  # noqa: E402

from mlkit.bottlenecks.cache import open_cache  # noqa: E402
from mlkit.bottlenecks.extract import cache_features  # noqa: E402
from mlkit.data.split import split_manifest  # noqa: E402
from mlkit.data.synth import synthesize  # noqa: E402
from mlkit.errors import MlkitError  # noqa: E402
from mlkit.images import load_image  # noqa: E402
from mlkit.models.export import export_model, load_model  # noqa: E402
from mlkit.models.finetune import finetune  # noqa: E402
from mlkit.models.network import apply_freeze, build_network, rebuild_backbone, resolve_freeze, walk_layers  # noqa: E402
from mlkit.tensorboard_logs import run_hparams  # noqa: E402
from mlkit.tuning.search import tune_top  # noqa: E402
from mlkit.tuning.top import load_top  # noqa: E402


def dataset(root):
    data = root / "data"
    synthesize(data, task="multilabel", n=40, size=SIZE, seed=0)
    split_manifest(data / "manifest.csv", val=0.25, test=0.25, seed=0)
    return data / "manifest.csv"


def run_pipeline(manifest, work, backbone, lr_decay=1.0, **cache_options):
    cache = cache_features(manifest, work, backbone=backbone, batch_size=16, progress=False, **cache_options)
    summary = tune_top(cache.path, work, layers=1, units=8, lr=0.01, batch=8, epochs=2, verbose=False)
    result = finetune(cache.path, summary.run.iloc[0], work, freeze="50%", lr_decay=lr_decay, epochs=1, batch=8,
                      progress=False)
    return cache, summary, result


SERVE = """
import sys
import numpy as np
import tensorflow as tf
served = tf.saved_model.load(sys.argv[1])
np.save(sys.argv[3], served.serve(tf.constant(np.load(sys.argv[2])))["scores"].numpy())
assert "mlkit" not in sys.modules and "keras_hub" not in sys.modules
"""


def served_without_mlkit(tmp_path, savedmodel, images):
    """The SavedModel's scores, computed in a process that imports TensorFlow alone."""
    np.save(tmp_path / "images.npy", images)
    (tmp_path / "serve.py").write_text(SERVE)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run([sys.executable, str(tmp_path / "serve.py"), str(savedmodel), str(tmp_path / "images.npy"),
                    str(tmp_path / "scores.npy")], check=True, cwd=tmp_path, env=env, timeout=300)
    return np.load(tmp_path / "scores.npy")


def finetuned_network(work, cache, run, freeze):
    """The network `finetune` trains, built and frozen as it builds and freezes it, and its top."""
    backbone, spec = rebuild_backbone(cache.attrs)
    top, config = load_top(work, run)
    network = build_network(backbone, spec, cache.attrs, top, taps=config.tap_list)
    apply_freeze(network, backbone, resolve_freeze(backbone, freeze))
    for layer in walk_layers(network):
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    return network, backbone, top, config


# Two transformers (ViT rebuilds its encoder for them) and a CNN are cached with taps named for their blocks /
# stages (mlkit.hub_backbones).
TAPS = {"vit": "last,block_2", "dinov2": "last,block_2", "resnet": "last,stage_1"}


@pytest.mark.slow
@pytest.mark.parametrize("family", ("vit", "dinov2", "siglip", "clip", "resnet"))
def test_a_kerashub_family_caches_tunes_finetunes_and_serves_without_mlkit(tmp_path, family):
    keras.utils.set_random_seed(1)
    backbone, converter, _ = tiny(family)
    preset = tmp_path / "preset"
    backbone.save_to_preset(str(preset))
    converter.save_to_preset(str(preset))
    taps = {"taps": TAPS[family]} if family in TAPS else {}
    # One family fine-tunes with layer-wise learning-rate decay (tests/test_lr_decay.py checks the rates).
    decay = 0.8 if family == "siglip" else 1.0
    cache, summary, result = run_pipeline(dataset(tmp_path), tmp_path / "ws", f"hub:{preset}", decay, **taps)
    assert ("_lrd-81" in result.run) == (decay != 1.0)
    cache = open_cache(cache.path)
    assert cache.attrs["backbone_source"] == f"hub:{preset}"
    network, hub, top, config = finetuned_network(tmp_path / "ws", cache, summary.run.iloc[0], "50%")
    assert hub.trainable_weights and len(hub.trainable_weights) < len(hub.weights)
    assert config.tap_list == tuple(TAPS.get(family, "last").split(",")) and cache.taps == config.tap_list[1:]
    # Fine-tuning starts from the tuned top's scores on the cached features (the taps' too), in either mode.
    rows = cache.indices("train")[:4]
    pixels = np.stack([load_image(Path(cache.attrs["manifest_root"]) / path) for path in cache.read("image", rows)])
    cached = top.predict(cache.read_taps(config.tap_list, rows), verbose=0)
    np.testing.assert_allclose(network(pixels.astype("float32"), training=False), cached, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(network(pixels.astype("float32"), training=True), cached, rtol=1e-4, atol=1e-5)
    # The fine-tuned .keras loads back (in mlkit, which registers its layers) and serves as the SavedModel does.
    paths = export_model(result.model_path, formats=("savedmodel",))
    model, _ = load_model(result.model_path)
    images = np.random.default_rng(0).integers(0, 255, (2, 40, 48, 3), dtype="uint8")
    expected = model.predict_on_batch(images)["scores"]
    np.testing.assert_allclose(served_without_mlkit(tmp_path, paths["savedmodel"], images), expected, rtol=1e-4,
                               atol=1e-5)


@pytest.mark.slow
def test_an_mlkit_model_is_the_backbone_of_a_new_cache(tmp_path):
    manifest = dataset(tmp_path)
    # The first model on its output alone: its default tap is then its backbone (on taps, the "taps"
    # layer that joins their vectors, which the top reads).
    _, _, first = run_pipeline(manifest, tmp_path / "ws", "mobilenetv2", weights="none", image_size=SIZE, taps="last")
    cache, _, result = run_pipeline(manifest, tmp_path / "ws2", str(first.model_path))
    attrs = open_cache(cache.path).attrs
    assert attrs["tap"].startswith("network/mobilenetv2") and attrs["backbone_source"] == str(first.model_path)
    import hashlib

    assert attrs["weights_sha256"] == hashlib.sha256(first.model_path.read_bytes()).hexdigest()
    # The tap's features are the first model's own backbone features: the network's top sees the same values.
    source = keras.saving.load_model(first.model_path, compile=False)
    network = source.get_layer("network")
    inner = network.get_layer(attrs["tap"].split("/")[1])
    pixels = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    expected = inner(network.get_layer("inet_tf")(pixels))
    from mlkit.backbones import build_backbone, feature_extractor

    model, info = build_backbone(str(first.model_path))
    np.testing.assert_allclose(feature_extractor(model, info["spec"], "inet", SIZE)(pixels), expected, rtol=1e-5,
                               atol=1e-6)
    assert result.model_path.exists()


def test_a_lambda_layer_is_refused(tmp_path):
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Lambda(lambda x: x * 2)(keras.layers.Conv2D(2, 1)(inputs))
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(outputs))).save(path)
    from mlkit.backbones import build_backbone

    with pytest.raises(MlkitError, match="Lambda"):
        build_backbone(str(path))


def test_the_default_tap_is_the_layer_before_the_head_and_any_layer_can_be_named(tmp_path):
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(0.5)(x)
    path = tmp_path / "classifier.keras"
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(x)).save(path)
    from mlkit.backbones import build_backbone

    model, info = build_backbone(str(path))
    assert info["tap"] == "pool" and info["feature_shape"] == [4] and info["image_size"] == 16
    model, info = build_backbone(str(path), tap="conv", pooling="max")
    assert info["feature_shape"] == [4] and info["settings"]["tap"] == "conv"
    with pytest.raises(MlkitError, match="no layer 'nope'"):
        build_backbone(str(path), tap="nope")


def test_tune_top_writes_event_files_that_match_its_csv_and_run_name(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util.tensor_util import make_ndarray

    from mlkit.runs import parse_run_name

    manifest = dataset(tmp_path)
    cache = cache_features(manifest, tmp_path / "ws", backbone="mobilenetv2", weights="none", image_size=SIZE,
                           progress=False)
    summary = tune_top(cache.path, tmp_path / "ws", layers=1, units=8, lr="0.01,0.1", batch=8, epochs=3, verbose=False)
    for run in summary.run:
        events = EventAccumulator(str(tmp_path / "ws" / "tuning" / run), size_guidance={"tensors": 0}).Reload()
        with open(tmp_path / "ws" / "tuning" / f"{run}.csv") as handle:
            rows = list(csv.DictReader(handle))
        for column in ("loss", "val_loss"):
            logged = [(event.step, float(make_ndarray(event.tensor_proto))) for event in events.Tensors(column)]
            assert logged == [(int(row["epoch"]), pytest.approx(float(row[column]), rel=1e-5)) for row in rows]
        assert len(events.Tensors("epoch_seconds")) == len(rows)
        session = events.summary_metadata["_hparams_/session_start_info"].plugin_data.content
        start = plugin_data_pb2.HParamsPluginData.FromString(session).session_start_info
        hparams = {key: getattr(value, value.WhichOneof("kind")) for key, value in start.hparams.items()}
        fields = parse_run_name(run)
        assert hparams["lr"] == pytest.approx(fields.lr) and hparams["backbone"] == fields.backbone == "mobilenetv2"
        assert (hparams["units"], hparams["batch"], hparams["reg"]) == (fields.units, fields.batch, fields.reg) == (8, 8, "d5")
        assert set(hparams) == set(run_hparams(run)) and start.group_name == run


def test_no_tensorboard_writes_no_event_files(tmp_path):
    manifest = dataset(tmp_path)
    cache = cache_features(manifest, tmp_path / "ws", backbone="mobilenetv2", weights="none", image_size=SIZE,
                           progress=False)
    summary = tune_top(cache.path, tmp_path / "ws", layers=1, units=8, epochs=1, verbose=False, no_tensorboard=True)
    assert not (tmp_path / "ws" / "tuning" / summary.run.iloc[0]).exists()
