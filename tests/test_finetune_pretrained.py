"""Stage 3 with a real pretrained backbone: batch norm keeps its statistics while blocks train.

With random weights a batch norm's statistics barely matter, which is how a fine-tuning network that
normalised with batch statistics in `fit` (keras-team/keras#20285) passed every other test. These use
the ImageNet-trained MobileNetV2 in ../shared/pretrained/.
"""

from pathlib import Path

import keras
import numpy as np
import pytest

from mlkit.bottlenecks.cache import open_cache
from mlkit.bottlenecks.extract import cache_features
from mlkit.data.split import split_manifest
from mlkit.data.synth import synthesize
from mlkit.images import load_image, resize_images
from mlkit.models.finetune import finetune, read_log
from mlkit.models.network import apply_freeze, build_network, rebuild_backbone, resolve_freeze, walk_layers
from mlkit.tuning.search import tune_top
from mlkit.tuning.top import BOUNDS, STANDARDISE, load_top
from mlkit.tuning.top_data import tap_column_weights

SIZE = 96


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, pretrained_mobilenetv2):
    """A cache of pretrained MobileNetV2 output features alone (taps have their own tests below) and one top
    without dropout (so training mode is deterministic)."""
    root = tmp_path_factory.mktemp("pretrained")
    synthesize(root / "data", task="multilabel", n=80, size=64, seed=0)
    split_manifest(root / "data" / "manifest.csv", val=0.25, test=0.25, seed=0)
    work = root / "ws"
    cache = cache_features(root / "data" / "manifest.csv", work, backbone="mobilenetv2", weights=pretrained_mobilenetv2,
                           image_size=SIZE, batch_size=32, taps="last", progress=False)
    summary = tune_top(cache.path, work, units=32, reg="d0", optimizer="adam", lr=0.001, batch=16, epochs=8,
                       verbose=False)
    return work, open_cache(cache.path), summary.run.iloc[0]


def training_rows(cache, count=32):
    rows = cache.indices("train")[:count]
    images = [load_image(Path(cache.attrs["manifest_root"]) / path) for path in cache.read("image", rows)]
    pixels = np.stack([resize_images(image.astype("float32"), SIZE) for image in images])
    return pixels, cache.read("features", rows), cache.read("labels", rows).astype("float32")


def fine_tuning_network(work, cache, run, freeze):
    backbone, spec = rebuild_backbone(cache.attrs)
    top, _ = load_top(work, run)
    network = build_network(backbone, spec, cache.attrs, top)
    apply_freeze(network, backbone, resolve_freeze(backbone, freeze))
    return network, backbone, top


@pytest.mark.parametrize("freeze", ["block_13", "0"])
def test_training_mode_loss_equals_inference_mode_and_the_cached_tops(workspace, freeze):
    work, cache, run = workspace
    network, backbone, top = fine_tuning_network(work, cache, run, freeze)
    assert backbone.trainable_weights, "blocks are unfrozen"
    pixels, features, labels = training_rows(cache)
    loss = keras.losses.BinaryCrossentropy()
    cached = float(loss(labels, top(features, training=False)))
    inference = float(loss(labels, network(pixels, training=False)))
    training = float(loss(labels, network(pixels, training=True)))
    assert cached < 0.5
    assert inference == pytest.approx(cached, rel=1e-4)
    assert training == pytest.approx(inference, rel=1e-4), "batch norm normalised with batch statistics in training mode"


def test_a_training_step_keeps_every_batch_norms_statistics(workspace):
    work, cache, run = workspace
    network, backbone, _ = fine_tuning_network(work, cache, run, "block_13")
    norms = [layer for layer in walk_layers(backbone) if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) > 40
    before = [np.asarray(layer.moving_mean).copy() for layer in norms]
    weights_before = [np.asarray(w).copy() for w in backbone.trainable_weights]
    pixels, _, labels = training_rows(cache, 16)
    network.compile(optimizer=keras.optimizers.SGD(0.01), loss="binary_crossentropy")
    network.fit(pixels, labels, batch_size=8, epochs=1, verbose=0)
    for layer, mean in zip(norms, before):
        np.testing.assert_array_equal(np.asarray(layer.moving_mean), mean, err_msg=layer.name)
    assert any(not np.array_equal(np.asarray(w), old) for w, old in zip(backbone.trainable_weights, weights_before))


@pytest.mark.slow
def test_the_first_fine_tuning_epoch_starts_from_the_cached_tops_loss(workspace):
    """The issue's reproduction: before the fix this epoch's training loss was over 200."""
    work, cache, run = workspace
    top, _ = load_top(work, run)
    features, labels = cache.load("train")
    cached = float(keras.losses.BinaryCrossentropy()(labels.astype("float32"), top.predict(features, verbose=0)))
    # lr 1e-9: the epoch's mean loss must be the cached top's whatever the shuffle order. At 1e-5 Adam's
    # first steps already move it, so the mean depended on which images came first (0.27 or 0.34).
    result = finetune(cache.path, run, work, freeze="block_13", optimizer="adam", lr=1e-9, augment="none", epochs=1,
                      warmup_epochs=0, batch=16, progress=False)
    first = float(read_log(result.csv_path)[0]["loss"])
    assert first == pytest.approx(cached, rel=0.05)


TAPS = "last+high+pre"

EXPORT_SERVE = """
import sys
import numpy as np
import tensorflow as tf
served = tf.saved_model.load(sys.argv[1])
scores = served.serve(tf.constant(np.load(sys.argv[2])))["scores"].numpy()
assert "mlkit" not in sys.modules
np.save(sys.argv[3], scores)
"""


@pytest.fixture(scope="module")
def tapped_workspace(tmp_path_factory, pretrained_mobilenetv2):
    """A cache of every named depth of the pretrained MobileNetV2 (images already at its size) and a top on three taps."""
    root = tmp_path_factory.mktemp("tapped")
    synthesize(root / "data", task="multilabel", n=64, size=SIZE, seed=1)
    split_manifest(root / "data" / "manifest.csv", val=0.25, test=0.25, seed=0)
    work = root / "ws"
    cache = cache_features(root / "data" / "manifest.csv", work, backbone="mobilenetv2", weights=pretrained_mobilenetv2,
                           image_size=SIZE, batch_size=32, taps="all", progress=False)
    summary = tune_top(cache.path, work, taps=TAPS, units=32, reg="d0", optimizer="adam", lr=0.001, batch=16, epochs=6,
                       verbose=False)
    return work, open_cache(cache.path), summary.run.iloc[0]


def test_a_tapped_network_starts_from_the_cached_tops_scores_with_batch_norm_in_inference_mode(tapped_workspace):
    work, cache, run = tapped_workspace
    top, config = load_top(work, run)
    assert run.endswith("_taps-lhp") and config.input_shape == [1280 + 576 + 320] and config.tap_weights == "equal"
    # The top's standardisation holds each tap's variances over its squared weight, so the network must apply them.
    variance = cache.read_taps(config.tap_list, cache.indices("train")).astype("float64").var(0)
    live = variance > 1e-4 * variance.mean()
    stored = np.asarray(top.get_layer(STANDARDISE).moving_variance)
    np.testing.assert_allclose(stored[live], (variance / tap_column_weights([1280, 576, 320]) ** 2)[live], rtol=1e-3)
    backbone, spec = rebuild_backbone(cache.attrs)
    network = build_network(backbone, spec, cache.attrs, top, taps=config.tap_list)
    apply_freeze(network, backbone, resolve_freeze(backbone, "block_13"))
    assert backbone.trainable_weights and network.trainable_weights
    rows = cache.indices("train")[:32]
    images = [load_image(Path(cache.attrs["manifest_root"]) / path) for path in cache.read("image", rows)]
    pixels = np.stack([resize_images(image.astype("float32"), SIZE) for image in images])
    cached = top.predict(cache.read_taps(config.tap_list, rows), verbose=0)
    np.testing.assert_allclose(network(pixels, training=False), cached, atol=1e-5)
    np.testing.assert_allclose(network(pixels, training=True), cached, atol=1e-5)
    norms = [layer for layer in walk_layers(network) if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) > 40 and not any(layer.trainable for layer in norms)


def test_an_exported_tapped_model_served_without_mlkit_gives_the_cached_tops_scores(tapped_workspace, tmp_path):
    import subprocess
    import sys

    from mlkit.evaluation.decisions import parse_rule
    from mlkit.models.export import write_savedmodel
    from mlkit.models.network import build_export_model

    work, cache, run = tapped_workspace
    top, config = load_top(work, run)
    backbone, spec = rebuild_backbone(cache.attrs)
    network = build_network(backbone, spec, cache.attrs, top, taps=config.tap_list)
    rule = parse_rule("threshold:0.5").to_dict()
    saved = write_savedmodel(build_export_model(network, cache.attrs, rule, "multilabel"), tmp_path / "tapped.savedmodel")
    rows = cache.indices("test")[:8]
    # Stored at the cache's size, so the served model's resize leaves the pixels the cache saw.
    images = np.stack([load_image(Path(cache.attrs["manifest_root"]) / path) for path in cache.read("image", rows)])
    assert images.shape[1:3] == (SIZE, SIZE)
    np.save(tmp_path / "images.npy", images)
    (tmp_path / "serve.py").write_text(EXPORT_SERVE)
    subprocess.run([sys.executable, str(tmp_path / "serve.py"), str(saved), str(tmp_path / "images.npy"),
                    str(tmp_path / "scores.npy")], check=True, cwd=tmp_path, timeout=300)
    cached = top.predict(cache.read_taps(config.tap_list, rows), verbose=0)
    np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), cached, atol=1e-5)


@pytest.mark.slow
def test_finetune_of_a_tapped_top_reports_the_cached_tops_baseline_and_starts_from_its_loss(tapped_workspace):
    work, cache, run = tapped_workspace
    top, config = load_top(work, run)
    features, labels = cache.load("train", taps=config.tap_list)
    cached = float(keras.losses.BinaryCrossentropy()(labels.astype("float32"), top.predict(features, verbose=0)))
    # lr 1e-9: the epoch's mean loss must be the cached top's whatever the shuffle order. At 1e-5 Adam's
    # first steps already move it, so the mean depended on which images came first (0.27 or 0.34).
    result = finetune(cache.path, run, work, freeze="block_13", optimizer="adam", lr=1e-9, augment="none", epochs=1,
                      warmup_epochs=0, batch=16, progress=False)
    assert result.run.endswith("_none_opt-adam_taps-lhp")
    assert float(read_log(result.csv_path)[0]["loss"]) == pytest.approx(cached, rel=0.05)
    assert result.baseline["micro"]["f1"] >= 0


@pytest.fixture(scope="module")
def regression_workspace(tmp_path_factory, pretrained_mobilenetv2):
    """The pretrained MobileNetV2 on 41 synthetic regression images (targets 1-6), every named depth cached, and
    one small top on the last layer and one on every tap."""
    root = tmp_path_factory.mktemp("regression")
    synthesize(root / "data", task="regression", n=80, size=64, seed=0)
    split_manifest(root / "data" / "manifest.csv", val=0.25, test=0.25, seed=0)
    work = root / "ws"
    cache = cache_features(root / "data" / "manifest.csv", work, backbone="mobilenetv2", weights=pretrained_mobilenetv2,
                           image_size=64, batch_size=32, taps="all", progress=False)
    summary = tune_top(cache.path, work, units=16, lr=0.01, epochs=4, taps="last,all", verbose=False)
    return work, open_cache(cache.path), list(summary.run)


@pytest.mark.slow
def test_a_regression_top_stays_near_the_targets_on_images_that_switch_on_units_training_never_did(
        regression_workspace):
    """Before the tops' feature bounds, unseen units came out thousands of standard deviations high and the test
    MAE was 180 (last layer) and 73 (every tap) for targets of 1 to 6; bounded, 2.5 and 7.8 (BENCHMARKS.md)."""
    work, cache, runs = regression_workspace
    train, test = (cache.read("labels", cache.indices(split)).astype("float64") for split in ("train", "test"))
    mean_predictor = float(np.abs(test - train.mean()).mean())
    maes = {}
    for run in runs:
        top, config = load_top(work, run)
        features = cache.read_taps(config.tap_list, cache.indices("test"))
        standardised = keras.Model(top.input, top.get_layer(STANDARDISE).output).predict(features, verbose=0)
        assert np.abs(standardised).max() > 1000, "the fixture no longer has the unseen units the bounds are for"
        bounded = keras.Model(top.input, top.get_layer(BOUNDS).output).predict(features, verbose=0)
        assert np.abs(bounded).max() < 20
        predictions = cache.target_scale.unscale(top.predict(features, verbose=0)).ravel()
        maes["last" if config.taps == "last" else "all"] = float(np.abs(predictions - test.ravel()).mean())
    assert maes["last"] < 2 * mean_predictor, maes
    assert max(maes.values()) < 10, maes
