"""Stage 2 on tiny synthetic caches: data, top models, the grid search, the runs table."""

import json

import numpy as np
import pytest

from mlkit.bottlenecks.cache import open_cache, write_cache
from mlkit.errors import MlkitError
from mlkit.runs import parse_run_name
from mlkit.tuning.config import TopConfig
from mlkit.tuning.memory import parse_memory
from mlkit.tuning.records import Progress
from mlkit.tuning.resampling import balanced_weights, cap_rows, positive_weights, resample
from mlkit.tuning.top_data import TopData


def make_cache(folder, task="multilabel", rows=150, shape=(12,), labels=4, views=0, seed=0, pooling="avg",
               dtype="float32"):
    """A learnable synthetic cache named like stage 1's: synth_t_tiny_inet_<pooling>.h5."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows,) + tuple(shape)).astype("float32")
    logits = x.reshape(rows, -1) @ rng.normal(size=(int(np.prod(shape)), labels))
    attrs = {"task": task, "dataset": "synth", "subset": "t", "backbone": "tiny", "preprocess": "inet", "pooling": pooling,
                 "label_names": [f"label{i}" for i in range(labels)]}
    split = np.array(["train", "val", "test"])[np.arange(rows) % 5 // 3 + (np.arange(rows) % 5 == 4)]
    if task == "multilabel":
        y = (logits > 0.8).astype("uint8")
    elif task == "multiclass":
        y = logits.argmax(axis=1).astype("int32")
    else:
        y = (1900 + 10 * logits[:, :2]).astype("float32")
        attrs.update(label_names=[], target_names=["year", "other"], target_min=y[split == "train"].min(0).tolist(),
                     target_max=y[split == "train"].max(0).tolist())
    augmented = None
    if views:
        augmented = (x[:, None] + 0.05 * rng.normal(size=(rows, views) + tuple(shape))).astype("float32")
    path = folder / f"synth_t_tiny_inet_{pooling}.h5"
    return write_cache(path, features=x, labels=y, split=list(split), attrs=attrs, augmented=augmented, dtype=dtype)


def test_parse_memory_sizes():
    assert parse_memory("512M") == 512 << 20
    assert parse_memory("1.5G") == 3 << 29
    assert parse_memory("4GB") == 4 << 30
    with pytest.raises(MlkitError, match="--max-memory 'lots'"):
        parse_memory("lots")


def test_caps_and_oversampling_balance_classes_of_the_training_rows():
    labels = np.array([0] * 50 + [1] * 10 + [2] * 3)
    kept = resample(labels, "multiclass", cap=20, oversample=8, seed=1)
    assert np.bincount(labels[kept]).tolist() == [20, 10, 8]
    multi = np.zeros((40, 3), dtype="uint8")
    multi[:, 0] = 1
    multi[:4, 1] = 1
    kept = cap_rows(multi, "multilabel", 10, np.random.default_rng(0))
    assert multi[kept, 1].sum() == 4 and 10 <= multi[kept, 0].sum() <= 14
    with pytest.raises(MlkitError, match="regression"):
        resample(np.zeros((5, 1)), "regression", cap=2)


def test_balanced_weights_and_positive_weights():
    weights = balanced_weights(np.array([0, 0, 0, 1]), "multiclass")
    assert weights.mean() == pytest.approx(1.0) and weights[3] == pytest.approx(3 * weights[0])
    pos = positive_weights(np.array([[1, 0], [0, 0], [0, 0], [0, 1]]))
    assert pos.tolist() == [3.0, 3.0]


def test_streamed_data_matches_in_memory(tmp_path):
    cache = open_cache(make_cache(tmp_path, views=2))
    memory = TopData(cache, views=2, seed=3)
    streamed = TopData(cache, views=2, seed=3, max_memory=0)
    assert memory.in_memory and not streamed.in_memory
    assert len(memory.sample_rows) == 3 * len(cache.indices("train"))

    def epoch_rows(data):
        batches = list(data.train_dataset(16))
        assert all(len(b[0]) <= 16 for b in batches)
        return np.sort(np.concatenate([b[0].numpy().sum(axis=1) for b in batches]))

    np.testing.assert_allclose(epoch_rows(memory), epoch_rows(streamed), rtol=1e-5)
    views = cache.read("augmented", cache.indices("train")[:1])[0]
    seen = np.concatenate([b[0].numpy() for b in memory.train_dataset(64)])
    assert all(np.isclose(seen, view).all(axis=1).any() for view in views)


def test_a_float16_cache_takes_half_the_memory_and_trains_in_float32(tmp_path):
    from mlkit.tuning import tune_top

    cache = open_cache(make_cache(tmp_path, views=2, dtype="float16"))
    (tmp_path / "full").mkdir()
    full = open_cache(make_cache(tmp_path / "full", views=2))
    assert cache.feature_dtype == np.float16 and cache.attrs["dtype"] == "float16"
    assert TopData(cache, views=2).memory_bytes() * 2 == TopData(full, views=2).memory_bytes()
    assert cache.load("train", augmented=True)[0].dtype == np.float32
    memory, streamed = TopData(cache, views=2, seed=3), TopData(cache, views=2, seed=3, max_memory=0)
    rows = {}
    for name, data in (("memory", memory), ("streamed", streamed)):
        batches = list(data.train_dataset(16))
        assert all(b[0].dtype == "float32" for b in batches)
        rows[name] = np.sort(np.concatenate([b[0].numpy().sum(axis=1) for b in batches]))
    np.testing.assert_allclose(rows["memory"], rows["streamed"], rtol=1e-5)
    np.testing.assert_allclose(rows["memory"], np.sort(np.concatenate(
        [b[0].numpy().sum(axis=1) for b in TopData(full, views=2, seed=3).train_dataset(16)])), atol=0.02)
    result = tune_top(cache.path, tmp_path / "tuned", units=8, epochs=1, objective="val_map", verbose=False)
    assert 0 < result.val_map[0] <= 1


def test_keep_freed_memory_sets_glibc_top_pad():
    import platform

    from mlkit.tuning.memory import keep_freed_memory

    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")


def test_inputs_are_standardised_with_frozen_training_statistics_even_at_tiny_scales(tmp_path):
    import keras

    from mlkit.tuning.top import STANDARDISE, build_top_model, set_input_statistics

    # Random-weight backbones give features near 1e-12; standardised they still separate images.
    features = np.random.default_rng(0).normal(3.0, 2.0, size=(50, 6)) * 1e-12
    config = TopConfig(layers=1, units=4, reg="d5")
    model = build_top_model(config, (6,), 2, "multilabel")
    set_input_statistics(model, features.mean(0), features.var(0), features.min(0), features.max(0))
    standardise = keras.Model(model.input, model.get_layer(STANDARDISE).output)
    expected = (features - features.mean(0)) / features.std(0)
    np.testing.assert_allclose(standardise.predict(features.astype("float32"), verbose=0), expected, rtol=1e-3, atol=1e-3)
    path = tmp_path / "top.weights.h5"
    model.save_weights(path)
    again = build_top_model(config, (6,), 2, "multilabel")
    again.load_weights(path)
    np.testing.assert_allclose(again.predict(features.astype("float32"), verbose=0), model.predict(features.astype("float32"), verbose=0))


def bounded_top(features, shape=None, **settings):
    """A top on `features` with its statistics and bounds set, and a model of its clipped, standardised features."""
    import keras

    from mlkit.tuning.top import BOUNDS, build_top_model, set_input_statistics

    config = TopConfig(task="regression", layers=1, units=4, reg="d0", **settings)
    model = build_top_model(config, shape or features.shape[1:], 1, "regression")
    columns = features.reshape(-1, features.shape[-1])
    set_input_statistics(model, columns.mean(0), columns.var(0), columns.min(0), columns.max(0))
    return model, config, keras.Model(model.input, model.get_layer(BOUNDS).output)


def test_bounds_keep_every_training_row_and_clip_a_new_one_to_the_training_range(tmp_path):
    import keras

    from mlkit.tuning.top import BOUNDS, STANDARDISE, build_top_model

    rng = np.random.default_rng(1)
    features = np.abs(rng.normal(size=(40, 5))).astype("float32")
    features[:, 1] = 0.0  # a unit no training row switches on: its variance is floored
    features[3, 2] = 7.0  # one row alone switches this one on
    model, config, bounded = bounded_top(features)
    standardise = keras.Model(model.input, model.get_layer(STANDARDISE).output)
    np.testing.assert_array_equal(bounded.predict(features, verbose=0), standardise.predict(features, verbose=0))
    new = features[:2] + np.array([[0.0, 1.0, 0.0, 50.0, -50.0]], dtype="float32")
    z_new, z_clipped = standardise.predict(new, verbose=0), bounded.predict(new, verbose=0)
    assert abs(z_new[:, 1]).min() > 1e3, "an unseen unit comes out thousands of standard deviations high"
    z_train = standardise.predict(features, verbose=0)
    np.testing.assert_array_equal(z_clipped, np.clip(z_new, z_train.min(0), z_train.max(0)))
    # The range travels in the weights file, as the statistics do.
    model.save_weights(tmp_path / "top.weights.h5")
    again = build_top_model(config, (5,), 1, "regression")
    again.load_weights(tmp_path / "top.weights.h5")
    np.testing.assert_array_equal(keras.Model(again.input, again.get_layer(BOUNDS).output).predict(new, verbose=0),
                                  z_clipped)


def test_bounds_of_a_top_on_raw_maps_are_per_channel():
    maps = np.random.default_rng(2).normal(size=(20, 3, 3, 4)).astype("float32")
    model, _, bounded = bounded_top(maps, top_pool="avg")
    layer = model.get_layer("top_bounds")
    assert tuple(layer.low.shape) == (4,)
    np.testing.assert_array_equal(bounded.predict(maps, verbose=0) <= np.asarray(layer.high), True)
    assert (bounded.predict(maps * 10, verbose=0) == np.asarray(layer.high)).any()


def test_a_bounded_top_without_the_training_range_is_refused():
    from mlkit.tuning.top import build_top_model, set_input_statistics

    model = build_top_model(TopConfig(layers=1, units=4), (6,), 2, "multilabel")
    with pytest.raises(MlkitError, match="minimum and maximum"):
        set_input_statistics(model, np.zeros(6), np.ones(6))


def test_a_top_saved_before_bounds_existed_loads_and_predicts_as_it_was_saved(tmp_path):
    from mlkit.tuning.top import build_top_model, load_top, set_input_statistics
    from mlkit.workspace import run_paths

    features = np.random.default_rng(3).normal(size=(30, 6)).astype("float32")
    old = TopConfig(layers=1, units=4, reg="d0", input_shape=[6], num_outputs=2, run="synth_t_tiny_inet_avg_1x4d0_lr11_b64",
                    bounds=False)
    model = build_top_model(old, (6,), 2, "multilabel")
    assert "top_bounds" not in [layer.name for layer in model.layers]
    set_input_statistics(model, features.mean(0), features.var(0))
    paths = run_paths(tmp_path, old.run)
    paths["json"].parent.mkdir(parents=True)
    model.save_weights(paths["weights"])
    record = old.to_dict()
    del record["bounds"]  # as written before the setting existed
    paths["json"].write_text(json.dumps({"config": record}))
    loaded, config = load_top(tmp_path, old.run)
    assert config.bounds is False
    np.testing.assert_allclose(loaded.predict(features * 100, verbose=0), model.predict(features * 100, verbose=0))


def test_a_rerun_keeps_a_run_finished_before_bounds_existed_and_says_so(tmp_path, caplog):
    from mlkit.tuning import tune_top

    cache = make_cache(tmp_path)
    run = tune_top(cache, tmp_path, units=8, epochs=1, verbose=False).run.iloc[0]
    record_path = tmp_path / "tuning" / f"{run}.json"
    record = json.loads(record_path.read_text())
    del record["config"]["bounds"]
    record_path.write_text(json.dumps(record))
    with caplog.at_level("WARNING"):
        tune_top(cache, tmp_path, units=8, epochs=1, verbose=False)
    assert "bounds False -> True" in caplog.text and "kept as it is" in caplog.text


def test_top_models_follow_the_config(tmp_path):
    from mlkit.tuning.top import build_top_model

    model = build_top_model(TopConfig(layers=2, units=8, reg="d3"), (12,), 5, "multilabel")
    kinds = [layer.__class__.__name__ for layer in model.layers]
    assert kinds == ["InputLayer", "BatchNormalization", "FeatureBounds", "Dense", "Dropout", "Dense", "Dropout", "Dense"]
    assert model.get_layer("top_dropout1").rate == pytest.approx(0.3)
    assert model.get_layer("top_output").activation.__name__ == "sigmoid"
    for pool, size in (("flatten", 4 * 4 * 3), ("avg", 3), ("max", 3)):
        maps = build_top_model(TopConfig(layers=1, units=4, reg="bn", top_pool=pool), (4, 4, 3), 3, "multiclass")
        assert maps.layers[3].output.shape[-1] == size and maps.output_shape == (None, 3)
    assert build_top_model(TopConfig(task="regression", layers=0), (12,), 2, "regression").output_shape == (None, 2)


def test_weighted_bce_and_sparse_focal_match_their_definitions():
    import keras

    from mlkit.tuning.top import SparseFocalCrossentropy, WeightedBinaryCrossentropy

    y = np.array([[1, 0], [0, 1]], dtype="float32")
    p = np.array([[0.8, 0.3], [0.4, 0.6]], dtype="float32")
    w = np.array([2.0, 5.0], dtype="float32")
    expected = -np.mean(w * y * np.log(p) + (1 - y) * np.log(1 - p), axis=1).mean()
    assert float(WeightedBinaryCrossentropy(w)(y, p)) == pytest.approx(expected, rel=1e-5)
    scores = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], dtype="float32")
    focal = keras.losses.CategoricalFocalCrossentropy(gamma=2.0)(np.eye(3)[[0, 2]], scores)
    assert float(SparseFocalCrossentropy(3)(np.array([0, 2]), scores)) == pytest.approx(float(focal), rel=1e-5)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One small multilabel grid, tuned once for the tests that read its files."""
    from mlkit.tuning import tune_top

    folder = tmp_path_factory.mktemp("tuned")
    cache = make_cache(folder)
    summary = tune_top(cache, folder, layers=[1, 2], units="8,16", lr=[0.1], batch=32, epochs=3, verbose=False)
    return folder, cache, summary


def test_grid_writes_a_log_weights_and_config_per_run_and_a_sorted_summary(tuned):
    folder, cache, summary = tuned
    tuning = folder / "tuning"
    assert len(summary) == 4 and summary.val_loss.is_monotonic_increasing
    assert (tuning / "summary.csv").exists()
    for run in summary.run:
        parsed = parse_run_name(run)
        assert parsed.dataset == "synth" and parsed.pool == "avg" and parsed.batch == 32
        for suffix in (".csv", ".weights.h5", ".json"):
            assert (tuning / f"{run}{suffix}").exists()
    log = (tuning / f"{summary.run[0]}.csv").read_text().splitlines()
    assert {"epoch", "loss", "val_loss", "val_auc", "val_map", "val_f1", "seconds"} <= set(log[0].split(","))
    assert len(log) == 4


def test_load_top_restores_the_best_epoch(tuned):
    from mlkit.tuning import load_top
    from mlkit.tuning.top import make_loss

    folder, cache, summary = tuned
    model, config = load_top(folder, summary.run[0])
    x, y = open_cache(cache).load("val")
    val_loss = float(make_loss(config, config.num_outputs)(y.astype("float32"), model.predict(x, verbose=0)))
    assert val_loss == pytest.approx(summary.val_loss[0], rel=1e-4)
    assert config.run == summary.run[0] and config.units in (8, 16)
    with pytest.raises(MlkitError, match="no finished record"):
        load_top(folder, "synth_t_tiny_inet_avg_9x9d5_lr11_b32")


def test_rerunning_a_finished_grid_trains_nothing(tuned, monkeypatch):
    import mlkit.tuning.tuner
    from mlkit.tuning import tune_top

    folder, cache, _ = tuned
    progress = Progress(folder / "tuning")
    before = len(progress.events())
    # A finished grid must not even start KerasTuner (nor import TensorFlow from the CLI).
    monkeypatch.setattr(mlkit.tuning.tuner, "run_search", lambda *a, **k: pytest.fail("the search ran again"))
    summary = tune_top(cache, folder, layers=[1, 2], units="8,16", lr=[0.1], batch=32, epochs=3, verbose=False)
    assert len(progress.events()) == before and len(summary) == 4


def test_runs_table_filters_groups_and_plots(tuned, capsys):
    from mlkit.cli import main
    from mlkit.tuning.compare import load_runs, table_text

    folder, _, summary = tuned
    table = load_runs(folder / "tuning", where=["units=16", "lr=lr11"])
    assert sorted(table.layers) == [1, 2] and set(table.status) == {"complete"}
    assert "units = 8: 2 runs" in table_text(load_runs(folder / "tuning"), by="units")
    png = folder / "curves.png"
    assert main(["runs", str(folder / "tuning"), "--by", "units", "--plot", str(png), "--x", "time"]) == 0
    assert png.stat().st_size > 10_000 and "units = 16" in capsys.readouterr().out
    assert main(["runs", str(folder / "tuning"), "--where", "colour=red"]) == 1


def test_multiclass_focal_adam_cosine_on_raw_maps(tmp_path):
    from mlkit.tuning import tune_top

    cache = make_cache(tmp_path, task="multiclass", shape=(3, 3, 4), labels=3, pooling="none")
    summary = tune_top(cache, tmp_path, units=8, loss="focal", optimizer="adam", schedule="cosine", lr=0.01,
                       top_pool="flatten,avg", objective="val_f1", epochs=2, verbose=False)
    assert summary.val_f1.is_monotonic_decreasing
    names = sorted(summary.run)
    assert names == ["synth_t_tiny_inet_33_1x8d5_lr12_b64_loss-focal_opt-adam_sched-cos",
                     "synth_t_tiny_inet_avg_1x8d5_lr12_b64_loss-focal_opt-adam_sched-cos"]
    assert {"val_accuracy", "val_f1"} <= set(summary.columns)


def test_regression_reports_mae_in_original_units(tmp_path):
    from mlkit.tuning import load_top, tune_top

    cache = make_cache(tmp_path, task="regression", labels=2)
    summary = tune_top(cache, tmp_path, units=8, loss="huber", schedule="plateau", objective="val_mae",
                       epochs=2, verbose=False)
    model, config = load_top(tmp_path, summary.run[0])
    x, y = open_cache(cache).load("val")
    scale = np.array(config.target_max) - np.array(config.target_min)
    predicted = model.predict(x, verbose=0) * scale + np.array(config.target_min)
    assert summary.val_mae[0] == pytest.approx(np.abs(predicted - y).mean(), rel=1e-4)
    assert summary.run[0].endswith("_loss-huber_sched-plateau")


def test_imbalance_options_and_views_appear_in_run_names(tmp_path):
    from mlkit.tuning import tune_top

    cache = make_cache(tmp_path, views=2)
    summary = tune_top(cache, tmp_path, units=8, loss="wbce", augmented=True, sample_weights=True, cap=40,
                       oversample=10, epochs=1, verbose=False)
    run = parse_run_name(summary.run[0])
    assert dict(run.options) == {"cap": "40", "loss": "wbce", "over": "10", "sw": "bal", "views": "2"}
    record = json.loads((tmp_path / "tuning" / f"{run}.json").read_text())
    assert len(record["config"]["pos_weight"]) == 4 and record["config"]["views"] == 2


@pytest.mark.parametrize("options, message", [
    ({"objective": "val_mae"}, "objective for multilabel"),
    ({"loss": "cce"}, "loss for multilabel"),
    ({"reg": "d55"}, "--reg"),
    ({"augmented": True}, "no augmented views"),
    ({"lr": "0.1,fast"}, "--lr"),
    ({"worker": 0, "oracle": "nohost"}, "--oracle"),
])
def test_bad_settings_fail_before_training(tmp_path, options, message):
    from mlkit.tuning import tune_top

    with pytest.raises(MlkitError, match=message):
        tune_top(make_cache(tmp_path), tmp_path, verbose=False, **options)
    assert not list(tmp_path.glob("tuning/*.csv"))


def test_a_cache_over_max_memory_streams_with_sample_weights(tmp_path):
    from mlkit.tuning import tune_top

    cache = make_cache(tmp_path)
    common = {"units": 8, "epochs": 2, "objective": "val_map", "sample_weights": True, "verbose": False}
    streamed = tune_top(cache, tmp_path / "streamed", max_memory="1K", **common)
    in_memory = tune_top(cache, tmp_path / "memory", **common)
    assert streamed.run[0] == in_memory.run[0] and streamed.run[0].endswith("_sw-bal")
    assert 0 < streamed.val_map[0] <= 1 and np.isfinite(streamed.val_loss[0])


def test_distributed_roles_set_kerastuner_variables_and_gpu_pinning_is_a_cpu_no_op():
    import tensorflow as tf

    from mlkit.tuning.search import distributed_env
    from mlkit.tuning.tuner import pin_gpu

    assert distributed_env() == {}
    assert distributed_env(chief=True, oracle="10.0.0.1:8000") == {
        "KERASTUNER_TUNER_ID": "chief", "KERASTUNER_ORACLE_IP": "10.0.0.1", "KERASTUNER_ORACLE_PORT": "8000"}
    assert distributed_env(worker=3, oracle="host:9")["KERASTUNER_TUNER_ID"] == "tuner3"
    with pytest.raises(MlkitError, match="either"):
        distributed_env(chief=True, worker=1, oracle="host:9")
    before = tf.config.get_visible_devices()
    pin_gpu("tuner3")
    assert tf.config.get_visible_devices() == before


def test_a_finished_grid_reruns_from_the_cli_without_tensorflow(tuned):
    import subprocess
    import sys

    folder, cache, _ = tuned
    probe = ("import argparse, sys; from mlkit.tuning import cli; parser = argparse.ArgumentParser(); "
             "cli.register(parser.add_subparsers()); args = parser.parse_args(['tune-top', sys.argv[1], '--workdir', "
             "sys.argv[2], '--layers', '1,2', '--units', '8,16', '--batch', '32', '--epochs', '3']); args.func(args); "
             "assert 'tensorflow' not in sys.modules, 'imported TensorFlow'")
    result = subprocess.run([sys.executable, "-c", probe, str(cache), str(folder)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "all 4 trials of this grid are finished" in result.stdout


def test_every_metric_has_one_direction_and_objectives_take_theirs_from_it():
    from mlkit.tuning.config import METRIC_DIRECTIONS, OBJECTIVES, metric_direction

    assert metric_direction("val_mae") == "min" and metric_direction("val_macro_f1") == "max"
    assert all(direction == METRIC_DIRECTIONS[name] for names in OBJECTIVES.values() for name, direction in names.items())
    with pytest.raises(MlkitError, match="metric 'val_typo'"):
        metric_direction("val_typo")
