"""Facts with one home: defaults written once, configs that check themselves, derived cache facts, run paths."""

import argparse
import dataclasses
import inspect

import numpy as np
import pytest

from mlkit.bottlenecks.cache import TargetScale, open_cache, write_cache
from mlkit.branches import BRANCH_INPUTS
from mlkit.errors import MlkitError
from mlkit.files import atomic_folder
from mlkit.models.finetune import FinetuneConfig, finetune
from mlkit.options import add_options, defaults_of
from mlkit.tuning.config import TopConfig
from mlkit.tuning.lr_range import lr_find
from mlkit.tuning.search import tune_top
from mlkit.workspace import run_paths


def parse(register, argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(argv)


@pytest.mark.parametrize("settings", [{"lr": -1}, {"layers": -1}, {"reg": "x5"}, {"optimizer": "rmsprop"},
                                      {"task": "multiclass", "loss": "bce"}, {"text_only": True}])
def test_a_top_config_with_an_unusable_setting_cannot_be_made(settings):
    with pytest.raises(MlkitError):
        TopConfig(**settings)
    with pytest.raises(MlkitError):
        dataclasses.replace(TopConfig(), **settings)


@pytest.mark.parametrize("settings", [{"lr": 0}, {"batch": 0}, {"augment": "q"}, {"strategy": "tpu"}])
def test_a_finetune_config_with_an_unusable_setting_cannot_be_made(settings):
    with pytest.raises(MlkitError):
        FinetuneConfig(**settings)


def test_tune_top_and_lr_find_take_their_defaults_from_top_config_alone():
    defaults = defaults_of(TopConfig)
    for function in (tune_top, lr_find):
        parameters = inspect.signature(function).parameters
        shared = [name for name in parameters if name in defaults and name not in ("text", "text_units", "embed_dim")]
        assert len(shared) >= 8
        for name in shared:
            assert parameters[name].default == defaults[name], (function.__name__, name)


def test_finetune_states_every_setting_and_takes_its_defaults_from_finetune_config():
    parameters = inspect.signature(finetune).parameters
    assert not any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    for name, default in defaults_of(FinetuneConfig).items():
        if name != "frozen":
            assert parameters[name].default == default, name


def test_command_line_defaults_are_the_config_defaults():
    from mlkit.models.cli import register as register_models
    from mlkit.tuning.cli import register as register_tuning

    args = parse(register_models, ["finetune", "cache.h5"])
    for name, default in defaults_of(FinetuneConfig).items():
        if hasattr(args, name):
            assert getattr(args, name) == default, name
    args = parse(register_tuning, ["tune-top", "cache.h5"])
    for name in ("epochs", "patience", "momentum", "step_every", "step_gamma", "objective", "cap", "seed"):
        assert getattr(args, name) == getattr(TopConfig(), name), name
    # Grid axes left out arrive as None, so tune_top's own defaults (TopConfig's) apply.
    assert args.layers is None and args.lr is None


def test_option_help_ends_with_the_fields_default():
    @dataclasses.dataclass
    class Config:
        from mlkit.options import option

        rate: float = option(0.25, "a rate")
        name: str = option("", "a name", shown="the task's")
        switch: bool = option(False, "a switch")
        mode: str = option("", "a mode", const="on")

    parser = add_options(argparse.ArgumentParser(), Config)
    text = parser.format_help()
    assert "a rate (default 0.25)" in text and "a name (default the task's)" in text
    args = parser.parse_args(["--switch", "--mode"])
    assert args.rate == 0.25 and args.switch is True and args.mode == "on"
    assert parser.parse_args([]).mode == ""


def test_a_top_configs_branch_and_inputs_come_from_one_rule():
    vocabulary = {"size": 5, "max_len": 3}
    assert TopConfig().branch == "image" and TopConfig().inputs == ("features",)
    both = TopConfig(text="lstm", vocabulary=vocabulary)
    only = TopConfig(text="lstm", text_only=True, vocabulary=vocabulary)
    assert (both.branch, only.branch) == ("both", "caption")
    assert both.inputs == BRANCH_INPUTS["both"] == ("features", "tokens") and only.inputs == ("tokens",)
    name = only.run_name(("d", "s", "b", "inet"), "avg")
    assert name.branch == only.branch


def test_run_paths_name_every_file_of_a_run(tmp_path):
    tuning = run_paths(tmp_path, "r")
    assert tuning == {"json": tmp_path / "tuning" / "r.json", "weights": tmp_path / "tuning" / "r.weights.h5",
                      "csv": tmp_path / "tuning" / "r.csv"}
    models = run_paths(tmp_path, "r", "models")
    assert models["keras"] == tmp_path / "models" / "r.keras" and models["work"] == tmp_path / "models" / ".r.work"
    with pytest.raises(MlkitError):
        run_paths(tmp_path, "r", "bottlenecks")


def make_cache(path, task, labels, attrs=None):
    n = len(labels)
    split = ["train"] * (n - 2) + ["val", "test"]
    names = {"multilabel": ["a", "b", "c"], "multiclass": ["a", "b", "c"], "regression": []}[task]
    base = {"task": task, "label_names": names, "dataset": "ds", "subset": "sub", "backbone": "tiny", "preprocess": "inet",
                "pooling": "avg"}
    return open_cache(write_cache(path, features=np.zeros((n, 4)), labels=labels, split=split,
                                  attrs={**base, **(attrs or {})}))


def test_a_cache_answers_its_outputs_name_fields_and_target_scale(tmp_path):
    multilabel = make_cache(tmp_path / "a.h5", "multilabel", np.eye(3, dtype="uint8")[[0, 1, 2, 0, 1]])
    multiclass = make_cache(tmp_path / "b.h5", "multiclass", np.array([0, 1, 2, 1, 0]))
    targets = np.array([[1.0, 5.0], [3.0, 5.0], [2.0, 5.0], [9.0, 0.0], [-9.0, 0.0]])
    regression = make_cache(tmp_path / "c.h5", "regression", targets)
    assert (multilabel.num_outputs, multiclass.num_outputs, regression.num_outputs) == (3, 3, 2)
    assert regression.name_fields == ("ds", "sub", "tiny", "inet", "avg") and regression.dataset == "ds"
    assert multilabel.target_scale is None
    # No recorded range: it comes from the training rows (the first three), and a constant target gets width 1.
    scale = regression.target_scale
    np.testing.assert_allclose(scale.low, [1.0, 5.0])
    np.testing.assert_allclose(scale.high, [3.0, 6.0])
    np.testing.assert_allclose(regression.targets(targets[:3]), [[0.0, 0.0], [1.0, 0.0], [0.5, 0.0]])
    np.testing.assert_allclose(scale.unscale(scale.scale(targets)), targets)
    recorded = make_cache(tmp_path / "d.h5", "regression", targets, {"target_min": [0, 0], "target_max": [10, 10]})
    np.testing.assert_allclose(recorded.targets(targets[:1]), [[0.1, 0.5]])
    assert multiclass.targets([2]).dtype == np.int32


def test_target_scale_round_trips_against_a_plain_loop():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(20, 3))
    scale = TargetScale.of(values.min(0), values.max(0))
    scaled = scale.scale(values)
    for i in range(20):
        for j in range(3):
            expected = (values[i, j] - values[:, j].min()) / (values[:, j].max() - values[:, j].min())
            assert abs(scaled[i, j] - expected) < 1e-6


def test_atomic_folder_keeps_the_old_folder_when_writing_fails(tmp_path):
    target = tmp_path / "model.savedmodel"
    with atomic_folder(target) as partial:
        partial.mkdir()
        (partial / "v").write_text("1")
    with pytest.raises(RuntimeError), atomic_folder(target) as partial:
        partial.mkdir()
        (partial / "v").write_text("2")
        raise RuntimeError("converter failed")
    assert (target / "v").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["model.savedmodel"]
    with atomic_folder(target) as partial:
        partial.mkdir()
        (partial / "v").write_text("3")
    assert (target / "v").read_text() == "3"


def test_cache_features_takes_its_defaults_and_checks_from_cache_options():
    from mlkit.bottlenecks.cli import register
    from mlkit.bottlenecks.extract import cache_features, fit_zmuv_stats
    from mlkit.bottlenecks.options import CacheOptions

    defaults = defaults_of(CacheOptions)
    for function in (cache_features, fit_zmuv_stats):
        parameters = inspect.signature(function).parameters
        for name in set(parameters) & set(defaults) - {"preprocess"}:
            assert parameters[name].default == defaults[name], (function.__name__, name)
    args = parse(register, ["cache-features", "manifest.csv"])
    assert {name: getattr(args, name) for name in defaults} == defaults
    for bad in ({"batch_size": 0}, {"augment_copies": -1}, {"dtype": "int8"}, {"pooling": "sum"}):
        with pytest.raises(MlkitError):
            CacheOptions(**bad)


def test_runs_reads_a_copied_tuning_folder_under_any_name(tmp_path, monkeypatch):
    from mlkit.tuning.compare import load_runs

    run = str(TopConfig(units=8, lr=0.01, batch=16).run_name(("ds", "sub", "tiny", "inet"), "avg"))
    folder = tmp_path / "experiment-3"
    folder.mkdir()
    (folder / f"{run}.csv").write_text("epoch,loss,val_loss,seconds\n0,1.0,0.9,1.0\n1,0.8,0.7,1.0\n")
    (folder / f"{run}.json").write_text("{}")
    assert load_runs(folder)["status"].tolist() == ["complete"]
    monkeypatch.chdir(folder)
    assert load_runs(".")["status"].tolist() == ["complete"]


def test_options_parse_to_their_fields_types():
    from mlkit.models.cli import register

    args = parse(register, ["finetune", "cache.h5", "--epochs", "3", "--lr", "0.01", "--max-labels", "2"])
    assert (args.epochs, args.lr, args.max_labels) == (3, 0.01, 2)
    assert type(args.epochs) is int and type(args.lr) is float


def test_stale_temporaries_of_killed_writers_are_removed_files_and_folders(tmp_path):
    from mlkit.files import remove_stale_temporaries, temporary_path

    target = tmp_path / "run.keras"
    stale_file = tmp_path / ".partial-12345-run.keras"
    stale_folder = tmp_path / ".partial-23456-run.keras"
    stale_file.write_text("x")
    stale_folder.mkdir()
    (stale_folder / "inside").write_text("x")
    other = tmp_path / ".partial-34567-other.keras"
    other.write_text("x")
    assert temporary_path(target).name.startswith(".partial-")
    remove_stale_temporaries(target)
    assert not stale_file.exists() and not stale_folder.exists() and other.exists()


def test_every_public_function_states_its_arguments():
    import mlkit
    from mlkit.auditing.config import AuditConfig
    from mlkit.auditing.run import audit

    functions = [getattr(mlkit, name) for name in mlkit.__all__ if inspect.isfunction(getattr(mlkit, name))]
    assert len(functions) >= 8 and audit in functions
    for function in functions:
        kinds = [p.kind for p in inspect.signature(function).parameters.values()]
        assert inspect.Parameter.VAR_KEYWORD not in kinds, function.__name__
    parameters = inspect.signature(audit).parameters
    for name, default in defaults_of(AuditConfig).items():
        assert parameters[name].default == default, name
