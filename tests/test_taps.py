"""Taps (issue 19): pooled features from several depths, cached in one pass, combined by tune-top."""

import h5py
import keras
import numpy as np
import pytest

from mlkit.backbones import BACKBONES, build_backbone
from mlkit.bottlenecks import cache_features, fit_zmuv_stats, merge_shards, open_cache
from mlkit.bottlenecks.cache import partial_path, write_cache
from mlkit.data import read_manifest, split_manifest, synthesize
from mlkit.errors import CacheError, MlkitError
from mlkit.images import load_image, resize_images
from mlkit.runs import parse_run_name
from mlkit.taps import cache_taps, combinations, decode, encode, resolve
from mlkit.tuning.config import TopConfig
from mlkit.tuning.top_data import TopData, tap_column_weights

SETTINGS = {"backbone": "mobilenetv2", "weights": "none", "image_size": 32, "pooling": "avg", "progress": False}
MOBILENETV2_TAPS = ("block_6_expand_relu", "block_10_project_BN", "block_13_expand_relu", "block_16_project_BN")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    path = synthesize(tmp_path_factory.mktemp("taps") / "synth", task="multilabel", n=24, size=40, seed=3)
    split_manifest(path, val=0.2, test=0.2, seed=0)
    return path


@pytest.fixture(scope="module")
def tapped(manifest, tmp_path_factory):
    """A cache of every named depth of a random MobileNetV2, with one augmented view per training image."""
    return cache_features(manifest, tmp_path_factory.mktemp("ws"), taps="all", augment_copies=1, batch_size=5, **SETTINGS)


def test_named_depths_resolve_to_layers_and_all_means_every_one():
    assert cache_taps("mobilenetv2", "all") == MOBILENETV2_TAPS
    assert cache_taps("mobilenetv2", "last") == ()
    assert cache_taps("mobilenetv2", "last,high+block_5_add") == ("block_13_expand_relu", "block_5_add")
    assert cache_taps("efficientnetb3", "all") == ("block3c_add", "block4e_add", "block5e_add", "block6f_add")
    with pytest.raises(MlkitError, match="declares no named depths"):
        cache_taps("xception", "mid")


@pytest.mark.parametrize("name", ["mobilenetv2", "vgg16", "resnet50", "efficientnetb0", "convnexttiny"])
def test_every_declared_named_depth_is_a_layer_of_the_family(name):
    model, _ = build_backbone(name, "none", 32, "avg")
    layers = {layer.name for layer in model.layers}
    assert dict(BACKBONES[name].taps) and set(dict(BACKBONES[name].taps).values()) <= layers


def test_tap_extraction_equals_a_plain_keras_models_pooled_intermediate_outputs(manifest, tapped):
    cache = open_cache(tapped.path)
    assert cache.taps == MOBILENETV2_TAPS and cache.taps_shape(("last", *cache.taps)) == (2464,)
    model, _ = build_backbone("mobilenetv2", "none", 32, "avg")
    images = read_manifest(manifest).image_paths()[:6]
    pixels = np.stack([np.asarray(resize_images(load_image(p).astype("float32"), 32)) for p in images])
    pixels = pixels / 127.5 - 1  # MobileNetV2's own preprocess_input
    for layer in MOBILENETV2_TAPS:
        maps = keras.Model(model.input, model.get_layer(layer).output).predict(pixels, verbose=0)
        expected = maps.mean(axis=(1, 2))  # global average pooling, in NumPy
        np.testing.assert_allclose(cache.read(f"taps/{layer}", range(6)), expected, rtol=0,
                                   atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(cache.read("features", range(6)), model.predict(pixels, verbose=0), rtol=1e-4, atol=1e-16)
    train = cache.indices("train")
    assert np.abs(cache.read("augmented_taps/block_6_expand_relu", train)).max() > 0


def test_the_default_cache_taps_every_named_depth_and_a_cache_with_other_taps_is_refused(manifest, tapped, tmp_path):
    default = open_cache(cache_features(manifest, tmp_path, **SETTINGS).path)
    assert default.taps == MOBILENETV2_TAPS  # --taps auto: every named depth of a family that declares them
    for layer in ("features", *(f"taps/{layer}" for layer in MOBILENETV2_TAPS)):
        np.testing.assert_allclose(default.read(layer), open_cache(tapped.path).read(layer), rtol=1e-4, atol=1e-16)
    plain = open_cache(cache_features(manifest, tmp_path / "last", taps="last", **SETTINGS).path)
    with h5py.File(plain.path, "r") as h5:
        assert "taps" not in h5 and "taps" not in h5.attrs
    assert cache_taps("xception", "auto") == () and cache_taps("mobilenetv2", "auto", pooling="none") == ()
    assert cache_taps("mobilenetv2", "auto", task="regression") == ()
    assert cache_taps("mobilenetv2", "auto", task="multiclass") == MOBILENETV2_TAPS
    with pytest.raises(CacheError, match="taps"):
        cache_features(manifest, tmp_path, taps="high", **SETTINGS)
    again = cache_features(manifest, tmp_path, taps="high", overwrite=True, **SETTINGS)
    assert again.computed == 24 and open_cache(again.path).taps == ("block_13_expand_relu",)
    with pytest.raises(MlkitError, match="no layer of that name"):
        cache_features(manifest, tmp_path / "other", taps="block_99", **SETTINGS)
    with pytest.raises(MlkitError, match="--pooling none"):
        cache_features(manifest, tmp_path / "other", taps="all", **{**SETTINGS, "pooling": "none"})


def test_an_interrupted_tapped_cache_resumes_to_the_same_features(manifest, tapped, tmp_path):
    class Interrupted(Exception):
        pass

    def stop(done, total):
        if done >= 10:
            raise Interrupted

    with pytest.raises(Interrupted):
        cache_features(manifest, tmp_path, taps="all", augment_copies=1, batch_size=5, on_batch=stop, **SETTINGS)
    partial = partial_path(tmp_path / "bottlenecks" / tapped.path.name)
    with h5py.File(partial, "r") as h5:
        done = int(h5["done"][...].sum())
    resumed = cache_features(manifest, tmp_path, taps="all", augment_copies=1, batch_size=5, **SETTINGS)
    assert resumed.reused == done and 0 < done < 24 and resumed.computed == 24 - done
    expected = open_cache(tapped.path)
    for name in ("features", "augmented", *(f"{group}/{layer}" for group in ("taps", "augmented_taps")
                                           for layer in MOBILENETV2_TAPS)):
        reference = expected.read(name)
        np.testing.assert_allclose(open_cache(resumed.path).read(name), reference, rtol=0,
                                   atol=1e-5 * np.abs(reference).max(), err_msg=name)


def test_tapped_shards_merge_into_the_unsharded_cache(manifest, tapped, tmp_path):
    settings = dict(SETTINGS, taps="high,pre", augment_copies=1, preprocess="zmuv")
    whole = open_cache(cache_features(manifest, tmp_path / "whole", **settings).path)
    fit_zmuv_stats(manifest, tmp_path / "sharded", **{k: SETTINGS[k] for k in ("backbone", "image_size", "pooling")})
    for index in range(2):
        cache_features(manifest, tmp_path / "sharded", shard=(index, 2), **settings)
    merged = open_cache(merge_shards(whole.path.name[:-3], tmp_path / "sharded"))
    assert merged.taps == whole.taps == ("block_13_expand_relu", "block_16_project_BN")
    with h5py.File(merged.path, "r") as a, h5py.File(whole.path, "r") as b:
        assert sorted(a["taps"]) == sorted(b["taps"]) and sorted(a["augmented_taps"]) == sorted(b["augmented_taps"])
    for name in ("taps/block_13_expand_relu", "augmented_taps/block_16_project_BN", "features"):
        reference = whole.read(name)
        np.testing.assert_allclose(merged.read(name), reference, rtol=0, atol=1e-5 * np.abs(reference).max())


def test_combinations_resolve_in_cache_order_and_their_codes_round_trip():
    cached = MOBILENETV2_TAPS + ("block_5_add",)
    combos = combinations("last, last+high ,all,pre+last,block_5_add+mid")
    resolved = [resolve(combo, "mobilenetv2", cached) for combo in combos]
    assert resolved == [("last",), ("last", "block_13_expand_relu"), ("last", *cached),
                        ("last", "block_16_project_BN"), ("block_10_project_BN", "block_5_add")]
    codes = [encode(taps, "mobilenetv2") for taps in resolved]
    assert codes[:4] == [None, "lh", "lemhp" + codes[2][5:], "lp"] and codes[4].startswith("mx")
    assert [decode(code, "mobilenetv2", cached) for code in codes] == resolved
    with pytest.raises(MlkitError, match="holds no tap 'early'"):
        resolve(("early",), "mobilenetv2", ("block_13_expand_relu",))


def tapped_cache(folder, rows=120, seed=0, scales=(1.0, 100.0, 0.01)):
    """A learnable synthetic cache with two taps beside its features (6, 4 and 3 wide, at `scales`); the labels need
    the taps."""
    rng = np.random.default_rng(seed)
    last, mid, high = (rng.normal(scale=scale, size=(rows, width)).astype("float32")
                       for scale, width in zip(scales, (6, 4, 3)))
    logits = np.concatenate([last / scales[0], mid / scales[1], high / scales[2]], axis=1) @ rng.normal(size=(13, 3))
    split = np.array(["train", "train", "train", "val", "test"])[np.arange(rows) % 5]
    attrs = {"task": "multilabel", "dataset": "synth", "subset": "t", "backbone": "mobilenetv2", "preprocess": "inet",
             "pooling": "avg", "label_names": ["a", "b", "c"]}
    return write_cache(folder / "synth_t_mobilenetv2_inet_avg.h5", features=last, labels=(logits > 0.5).astype("uint8"),
                       split=list(split), attrs=attrs,
                       taps={"block_10_project_BN": mid, "block_13_expand_relu": high})


def test_top_data_reads_the_taps_side_by_side_in_memory_and_streamed(tmp_path):
    cache = open_cache(tapped_cache(tmp_path))
    taps = ("last", "block_13_expand_relu")
    expected = np.concatenate([cache.read("features"), cache.read("taps/block_13_expand_relu")], axis=1)
    for memory in ("1G", 1):
        data = TopData(cache, max_memory=memory, taps="+".join(taps))
        assert data.feature_shape == (9,)
        val = data.predict_val(keras.Sequential([keras.Input((9,)), keras.layers.Identity()]))
        np.testing.assert_array_equal(val, expected[cache.indices("val")])
        mean, _ = data.input_statistics()
        np.testing.assert_allclose(mean, expected[cache.indices("train")].mean(0), rtol=1e-6, atol=1e-6)
        low, high = data.input_range()
        np.testing.assert_array_equal(low, expected[cache.indices("train")].min(0))
        np.testing.assert_array_equal(high, expected[cache.indices("train")].max(0))
    np.testing.assert_array_equal(cache.load("val", taps=taps)[0], expected[cache.indices("val")])


def standardised_block_variances(features, widths, weights):
    """Plain NumPy: z-score every column, scale each tap's block by its weight, sum each block's variances."""
    z = (features - features.mean(0)) / features.std(0)
    edges = np.cumsum([0, *widths])
    return [float((z[:, start:stop] * weight).var(0).sum()) for start, stop, weight in zip(edges, edges[1:], weights)]


@pytest.mark.parametrize("tap_weights", ["equal", "none"])
def test_equal_tap_weights_give_every_tap_the_same_total_variance_after_the_tops_standardisation(tmp_path, tap_weights):
    from mlkit.tuning.top import STANDARDISE, build_top_model, set_input_statistics

    # Scales 1e5 apart in variance; smaller ones would meet the standardisation's variance floor.
    cache = open_cache(tapped_cache(tmp_path, scales=(1.0, 30.0, 0.1)))
    taps = ("last", "block_10_project_BN", "block_13_expand_relu")
    data = TopData(cache, taps="+".join(taps))
    assert data.tap_widths == [6, 4, 3]
    config = TopConfig(units=4, taps="+".join(taps), tap_weights=tap_weights)
    top = build_top_model(config, data.feature_shape, 3, "multilabel")
    set_input_statistics(top, *data.input_statistics(config.tap_weights), *data.input_range())
    standardise = keras.Model(top.input, top.get_layer(STANDARDISE).output)
    features = cache.load("train", taps=taps)[0].astype("float64")
    weights = [np.sqrt(13 / (3 * width)) for width in (6, 4, 3)] if tap_weights == "equal" else [1.0, 1.0, 1.0]
    expected = standardised_block_variances(features, [6, 4, 3], weights)
    standardised = np.asarray(standardise(features), "float64")
    np.testing.assert_allclose(standardised.mean(0), 0, atol=1e-4)
    got = [float(block.var(0).sum()) for block in np.split(standardised, [6, 10], axis=1)]
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    np.testing.assert_allclose(expected, [13 / 3] * 3 if tap_weights == "equal" else [6, 4, 3], rtol=1e-9)


def test_tap_column_weights_leave_one_tap_alone_and_refuse_empty_widths():
    np.testing.assert_array_equal(tap_column_weights([1280]), np.ones(1280))
    np.testing.assert_allclose(tap_column_weights([2, 1]), [0.75**0.5, 0.75**0.5, 1.5**0.5])
    with pytest.raises(MlkitError, match="one positive width per tap"):
        tap_column_weights([])


def test_tap_weights_are_named_only_when_off_the_default_on_several_taps_and_round_trip(tmp_path):
    from mlkit.tuning.search import tune_top
    from mlkit.tuning.top import load_top

    cache = tapped_cache(tmp_path)
    summary = tune_top(cache, tmp_path, taps="last,all", tap_weights="none", units=8, epochs=2, patience=2,
                       verbose=False)
    names = {parse_run_name(run).option("taps"): parse_run_name(run) for run in summary.run}
    assert names[None].option("tw") is None and names["lmh"].option("tw") == "none"
    assert str(names["lmh"]).endswith("_taps-lmh_tw-none")
    for run in summary.run:
        assert str(parse_run_name(run)) == run
        _, config = load_top(tmp_path, run)
        name = parse_run_name(run)
        assert config.tap_weights == "none"
        assert str(config.run_name((name.dataset, name.subset, name.backbone, name.prep), "avg")) == run
    assert TopConfig(taps="last+block_13_expand_relu").run_options() == {}
    assert TopConfig(taps="last", tap_weights="none").run_options() == {}
    # A record written before tap weighting existed was trained without it.
    assert TopConfig.from_dict({"taps": "last+block_13_expand_relu"}).tap_weights == "none"
    assert TopConfig.from_dict(TopConfig(taps="last+block_13_expand_relu").to_dict()).tap_weights == "equal"
    with pytest.raises(MlkitError, match="--tap-weights 'half'"):
        TopConfig(tap_weights="half")


def test_tune_top_takes_taps_as_a_grid_axis_and_names_each_run_by_them(tmp_path):
    from mlkit.tuning.search import tune_top
    from mlkit.tuning.top import load_top

    cache = tapped_cache(tmp_path)
    summary = tune_top(cache, tmp_path, taps="last,last+high,all", units=8, epochs=2, patience=2, verbose=False)
    runs = {parse_run_name(run).option("taps") for run in summary.run}
    assert runs == {None, "lh", "lmh"}
    for run in summary.run:
        top, config = load_top(tmp_path, run)
        assert config.input_shape == [{"last": 6, "last+block_13_expand_relu": 9}.get(config.taps, 13)]
        assert top.input_shape == (None, config.input_shape[0])
    with pytest.raises(MlkitError, match="holds no tap 'early'"):
        tune_top(cache, tmp_path, taps="early", verbose=False)


def test_the_commands_offer_taps(capsys):
    from mlkit.cli import main

    for command in ("cache-features", "tune-top", "lr-find"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert "--taps" in out and ("--tap-weights" in out) == (command != "cache-features"), command


def test_auto_caches_every_named_depth_where_the_family_declares_them_and_features_are_pooled():
    from mlkit.taps import cache_taps

    assert cache_taps("mobilenetv2", "auto") == cache_taps("mobilenetv2", "all") and cache_taps("mobilenetv2", "auto")
    assert cache_taps("mobilenetv2", "auto", pooling="none") == ()
    assert cache_taps("xception", "auto") == ()


def test_tune_tops_default_reads_every_cached_tap_and_a_config_without_a_cache_reads_the_output():
    import inspect

    from mlkit.taps import combinations
    from mlkit.tuning.config import TopConfig
    from mlkit.tuning.search import tune_top

    assert TopConfig().taps == "last" and TopConfig().tap_list == ("last",)
    assert inspect.signature(tune_top).parameters["taps"].default == ""
    assert combinations("all") == [("all",)]
