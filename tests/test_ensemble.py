"""Ensembles from the cache: averaged scores, the decision, the run name, export, predict, and bad --top."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from stage3 import SIZE

from mlkit.bottlenecks.cache import open_cache
from mlkit.errors import MlkitError
from mlkit.images import load_image
from mlkit.models.ensemble import ensemble, ensemble_run_name
from mlkit.runs import parse_run_name

MEMBERS = 3


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A tiny multilabel workspace with four tuned tops on one cache."""
    from mlkit.bottlenecks.extract import cache_features
    from mlkit.data.split import split_manifest
    from mlkit.data.synth import synthesize
    from mlkit.tuning.search import tune_top

    root = tmp_path_factory.mktemp("ensemble")
    synthesize(root / "data", task="multilabel", n=60, size=SIZE, seed=0)
    split_manifest(root / "data" / "manifest.csv", val=0.25, test=0.25, seed=0)
    work = root / "ws"
    cache = cache_features(root / "data" / "manifest.csv", work, backbone="mobilenetv2", weights="none",
                           image_size=SIZE, batch_size=32, progress=False, taps="last").path
    summary = tune_top(cache, work, layers=1, units=[8, 16, 32, 64], lr=0.01, batch=16, epochs=2, verbose=False)
    return work, cache, list(summary.run)


@pytest.fixture(scope="module")
def made(tuned):
    work, cache, _ = tuned
    return ensemble(cache, f"best:{MEMBERS}", work)


def member_scores(work, runs, cache, split):
    """Each named top's scores on the cached features, through Keras alone (not mlkit's averaging)."""
    import keras

    from mlkit.tuning.config import TopConfig
    from mlkit.tuning.top import build_top_model

    features, labels = cache.load(split)
    scores = []
    for run in runs:
        config = TopConfig.from_dict(json.loads((work / "tuning" / f"{run}.json").read_text())["config"])
        top = build_top_model(config, config.input_shape, config.num_outputs, config.task)
        top.load_weights(work / "tuning" / f"{run}.weights.h5")
        scores.append(keras.ops.convert_to_numpy(top(features)))
    return np.stack(scores), labels


def test_an_ensemble_name_is_its_best_members_with_ens_k_and_round_trips():
    members = ["synth_all_mobilenetv2_inet_avg_1x16d5_lr12_b16_opt-adam", "synth_all_mobilenetv2_inet_avg_1x8d5_lr12_b16"]
    name = ensemble_run_name(members)
    assert name == "synth_all_mobilenetv2_inet_avg_1x16d5_lr12_b16_ens-2_opt-adam"
    run = parse_run_name(name)
    assert run.option("ens") == "2" and run.option("opt") == "adam" and str(run) == name
    assert parse_run_name(members[0]).option("ens") is None, "names without ens- parse as before"
    with pytest.raises(MlkitError, match="fine-tuned run"):
        ensemble_run_name(["synth_all_mobilenetv2_inet_avg_1x16d5_lr12_b16_all_lr14_b16_hf"])


@pytest.mark.parametrize("top, message", [
    ("best:0", "whole number >= 1"),
    ("best:x", "whole number >= 1"),
    ("best:9", "lists only 4 finished run"),
    ("not_a_run", "fields"),
])
def test_bad_top_specs_are_refused_with_what_to_do(tuned, top, message):
    work, cache, _ = tuned
    with pytest.raises(MlkitError, match=message):
        ensemble(cache, top, work)


@pytest.mark.slow
def test_the_ensemble_averages_the_k_best_members_and_fits_its_rule_on_validation(tuned, made):
    from mlkit.evaluation.decisions import parse_rule

    work, cache_path, ranked = tuned
    cache = open_cache(cache_path)
    assert made.members == ranked[:MEMBERS]
    assert made.run == ensemble_run_name(ranked[:MEMBERS]) and "_ens-3" in made.run
    record = json.loads(made.json_path.read_text())
    assert record["members"] == ranked[:MEMBERS] and record["status"] == "complete"

    val, val_labels = member_scores(work, made.members, cache, "val")
    test, test_labels = member_scores(work, made.members, cache, "test")
    rule = parse_rule("cardinality")
    train_labels = cache.read("labels", cache.indices("train"))
    rule.fit(val.mean(axis=0), val_labels, train_cardinality=float(train_labels.sum(axis=1).mean()))
    assert record["decision"]["threshold"] == pytest.approx(rule.to_dict()["threshold"], abs=1e-6)
    decided = rule.apply(test.mean(axis=0)).astype(bool)
    truth = test_labels.astype(bool)
    true_positives = (decided & truth).sum()
    micro_f1 = 2 * true_positives / (decided.sum() + truth.sum())
    assert made.report["micro"]["f1"] == pytest.approx(micro_f1, abs=1e-9)
    # The baseline is the best member alone, decided the same way.
    rule.fit(val[0], val_labels, train_cardinality=float(train_labels.sum(axis=1).mean()))
    alone = rule.apply(test[0]).astype(bool)
    assert made.baseline["micro"]["f1"] == pytest.approx(2 * (alone & truth).sum() / (alone.sum() + truth.sum()))


def some_test_images(cache_path, count=6):
    cache = open_cache(cache_path)
    rows = cache.indices("test")[:count]
    paths = [Path(cache.attrs["manifest_root"]) / p for p in cache.read("image", rows)]
    return rows, paths, np.stack([load_image(p) for p in paths])


@pytest.mark.slow
def test_the_exported_model_scores_images_as_the_members_mean_on_their_cached_features(tuned, made):
    from mlkit.models.export import load_model

    work, cache_path, _ = tuned
    cache = open_cache(cache_path)
    rows, _, images = some_test_images(cache_path)
    model, record = load_model(made.model_path)
    scores = np.asarray(model.predict_on_batch(images)["scores"])
    features = cache.read("features", rows)
    members = []
    for run in made.members:
        from mlkit.tuning.top import load_top

        members.append(load_top(work, run)[0].predict(features, verbose=0))
    np.testing.assert_allclose(scores, np.mean(members, axis=0), atol=1e-5)
    assert record["input"]["image_size"] == SIZE and record["label_names"] == cache.label_names


SERVE = """
import sys
import numpy as np
import tensorflow as tf
path, images_path, out_path = sys.argv[1:]
served = tf.saved_model.load(path)
outputs = served.serve(tf.constant(np.load(images_path)))
np.savez(out_path, scores=outputs["scores"].numpy(), labels=outputs["labels"].numpy(),
         mlkit_imported=np.array("mlkit" in sys.modules))
"""


@pytest.mark.slow
def test_the_savedmodel_serves_the_same_scores_without_mlkit(made, tuned, tmp_path):
    from mlkit.models.export import export_model, load_model

    _, cache_path, _ = tuned
    _, _, images = some_test_images(cache_path)
    model, _ = load_model(made.model_path)
    here = model.predict_on_batch(images)
    saved = export_model(made.model_path, ["savedmodel"], out_dir=tmp_path)["savedmodel"]
    np.save(tmp_path / "images.npy", images)
    (tmp_path / "serve.py").write_text(SERVE)
    subprocess.run([sys.executable, str(tmp_path / "serve.py"), str(saved), str(tmp_path / "images.npy"),
                    str(tmp_path / "out.npz")], check=True, cwd=tmp_path, timeout=300,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=""))
    served = np.load(tmp_path / "out.npz")
    assert not served["mlkit_imported"]
    np.testing.assert_allclose(served["scores"], np.asarray(here["scores"]), atol=1e-6)
    np.testing.assert_array_equal(served["labels"], np.asarray(here["labels"]))


@pytest.mark.slow
def test_predict_labels_images_with_the_ensemble_by_its_rule(made, tuned):
    from mlkit.evaluation.decisions import rule_from_dict
    from mlkit.models.export import load_model
    from mlkit.models.predict import predict

    work, cache_path, _ = tuned
    _, paths, images = some_test_images(cache_path)
    results = predict(made.run, [str(p) for p in paths], workdir=work, top=100)
    model, record = load_model(made.model_path)
    decided = rule_from_dict(record["decision"]).apply(np.asarray(model.predict_on_batch(images)["scores"]))
    names = record["label_names"]
    for result, row in zip(results, decided):
        assert not result.error
        assert sorted(result.decided) == sorted(names[i] for i in np.flatnonzero(row))


@pytest.mark.slow
def test_a_finished_ensemble_is_reused_and_one_of_other_members_is_remade(made, tuned, monkeypatch):
    work, cache, ranked = tuned
    monkeypatch.setattr("mlkit.models.ensemble.build_ensemble", lambda *a: pytest.fail("made again"))
    again = ensemble(cache, f"best:{MEMBERS}", work)
    assert again.run == made.run and again.report == made.report
    named = [ranked[0], ranked[3], ranked[1]]
    with pytest.raises(pytest.fail.Exception, match="made again"):
        ensemble(cache, ",".join(named), work)


@pytest.mark.slow
def test_the_cli_makes_an_ensemble_and_prints_each_member(tuned, capsys):
    from mlkit.cli import main

    work, cache, ranked = tuned
    assert main(["ensemble", str(cache), "--top", "best:2", "--workdir", str(work)]) == 0
    out = capsys.readouterr().out
    assert "for the 2 tops averaged" in out and ranked[0] in out and ranked[1] in out
    assert main(["ensemble", str(cache), "--top", "best:0", "--workdir", str(work)]) == 1
    assert "best:K" in capsys.readouterr().err


def test_finetune_takes_one_top_and_points_best_k_at_ensemble(tuned):
    from mlkit.models.finetune import select_top

    work, cache, ranked = tuned
    assert select_top(work, open_cache(cache), "best:1") == select_top(work, open_cache(cache), "best") == ranked[0]
    with pytest.raises(MlkitError, match="mlkit ensemble .* --top best:3"):
        select_top(work, open_cache(cache), "best:3")


@pytest.mark.slow
def test_with_pretrained_weights_the_exported_ensemble_scores_images_as_its_members_mean(pretrained_mobilenetv2,
                                                                                         tmp_path):
    """Random weights give features of 1e-12 that hide a wrong preprocessing or batch norm; real ones do not."""
    from mlkit.bottlenecks.extract import cache_features
    from mlkit.data.split import split_manifest
    from mlkit.data.synth import synthesize
    from mlkit.models.export import load_model
    from mlkit.tuning.search import tune_top
    from mlkit.tuning.top import load_top

    synthesize(tmp_path / "data", task="multilabel", n=40, size=64, seed=0)
    split_manifest(tmp_path / "data" / "manifest.csv", val=0.25, test=0.25, seed=0)
    work = tmp_path / "ws"
    cache_path = cache_features(tmp_path / "data" / "manifest.csv", work, backbone="mobilenetv2",
                                weights=pretrained_mobilenetv2, image_size=64, batch_size=32, progress=False,
                                taps="last").path
    tune_top(cache_path, work, layers=1, units=[16, 32], optimizer="adam", lr=0.001, batch=16, epochs=3, verbose=False)
    result = ensemble(cache_path, "best:2", work)
    rows, _, images = some_test_images(cache_path)
    model, _ = load_model(result.model_path)
    scores = np.asarray(model.predict_on_batch(images)["scores"])
    features = open_cache(cache_path).read("features", rows)
    members = [load_top(work, run)[0].predict(features, verbose=0) for run in result.members]
    assert np.ptp(np.mean(members, axis=0)) > 0.05, "the members' scores vary, so the comparison means something"
    np.testing.assert_allclose(scores, np.mean(members, axis=0), atol=1e-5)


@pytest.mark.slow
def test_an_ensemble_of_tapped_tops_takes_the_best_runs_taps_and_scores_images_as_their_mean(tmp_path):
    """best:K after a taps grid takes only runs reading the best run's taps; the export computes those taps."""
    from mlkit.bottlenecks.extract import cache_features
    from mlkit.data.split import split_manifest
    from mlkit.data.synth import synthesize
    from mlkit.models.export import load_model
    from mlkit.tuning.search import tune_top
    from mlkit.tuning.top import load_top

    synthesize(tmp_path / "data", task="multilabel", n=48, size=SIZE, seed=1)
    split_manifest(tmp_path / "data" / "manifest.csv", val=0.25, test=0.25, seed=0)
    work = tmp_path / "ws"
    cache_path = cache_features(tmp_path / "data" / "manifest.csv", work, backbone="mobilenetv2", weights="none",
                                image_size=SIZE, batch_size=32, progress=False, taps="high,pre").path
    summary = tune_top(cache_path, work, layers=1, units=[8, 16], lr=0.01, batch=16, epochs=2, verbose=False,
                       taps="last,last+high+pre")
    made = ensemble(cache_path, "best:2", work)
    member_taps = {parse_run_name(run).option("taps") for run in made.members}
    assert len(member_taps) == 1 and len(summary) == 4, "both members read the best run's taps"
    taps = member_taps.pop()
    cache = open_cache(cache_path)
    rows, _, images = some_test_images(cache_path)
    model, _ = load_model(made.model_path)
    scores = np.asarray(model.predict_on_batch(images)["scores"])
    tops = [load_top(work, run) for run in made.members]
    features = cache.read_taps(tops[0][1].tap_list, rows)
    members = [top.predict(features, verbose=0) for top, _ in tops]
    np.testing.assert_allclose(scores, np.mean(members, axis=0), atol=1e-5)
    with pytest.raises(MlkitError, match="share one feature input"):
        mixed = [run for run in summary.run if parse_run_name(run).option("taps") != taps][:1]
        ensemble(cache_path, ",".join([made.members[0], *mixed]), work)
