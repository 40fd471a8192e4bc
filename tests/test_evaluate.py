"""`evaluate_scores`, the table, the JSON file, the plots and the `mlkit evaluate` command."""

import argparse
import json
import logging

import numpy as np
import pytest

from mlkit.errors import MlkitError
from mlkit.evaluation import cli as evaluate_cli
from mlkit.evaluation.decisions import RULE_FORMS, parse_rule
from mlkit.evaluation.evaluate import evaluate_scores, format_labels_table, format_table

STABLE_KEYS = ("micro", "macro", "samples", "map", "auc", "hamming", "subset_accuracy", "decision")


def make_split(rng, n_images=300, n_labels=25):
    labels = (rng.random((n_images, n_labels)) < 0.15).astype(np.uint8)
    scores = (rng.random((n_images, n_labels)) * 0.6 + 0.4 * labels).astype(np.float32)
    return scores, labels


@pytest.fixture
def split():
    rng = np.random.default_rng(0)
    test_scores, test_labels = make_split(rng)
    val_scores, val_labels = make_split(rng)
    names = [f"tag::label {j}" for j in range(test_labels.shape[1])]
    return test_scores, test_labels, val_scores, val_labels, names


def run_cli(argv):
    """Parses with only this module's subcommand, as mlkit.cli does, and runs the handler."""
    parser = argparse.ArgumentParser(prog="mlkit")
    evaluate_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_rules_fitted_on_validation_and_reported(split):
    test_scores, test_labels, val_scores, val_labels, names = split
    report = evaluate_scores(test_scores, test_labels, names, decisions=("cardinality", "fbeta:2", "topk:3", "rank"),
                             fit_scores=val_scores, fit_labels=val_labels, train_cardinality=3.0)
    assert report["fitted_on"] == "validation scores"
    assert list(report["rules"]) == ["cardinality", "fbeta:2", "topk:3", "rank"]
    for entry in report["rules"].values():
        assert all(key in entry for key in STABLE_KEYS)
        assert set(entry["micro"]) == {"precision", "recall", "f1", "f2"}
        assert entry["map"] == report["map"]
    assert all(report[key] == report["rules"]["cardinality"][key] for key in STABLE_KEYS)
    expected_tau = parse_rule("cardinality").fit(val_scores, train_cardinality=3.0).threshold
    assert report["decision"]["threshold"] == expected_tau
    assert report["decision"]["fit"]["target_source"] == "train_cardinality"
    assert report["rules"]["rank"]["upper_bound"] and not report["rules"]["fbeta:2"]["upper_bound"]
    assert report["best_possible"]["topk:3"]["k"] == 3
    assert len(report["per_label"]) == 25 and report["best_labels"]
    json.dumps(report, allow_nan=False)


def test_fitting_on_the_evaluated_scores_is_said(split, caplog):
    test_scores, test_labels, _, _, names = split
    with caplog.at_level(logging.WARNING):
        report = evaluate_scores(test_scores, test_labels, names, decisions=["per-class:2"])
    assert report["fitted_on"].startswith("the evaluated scores")
    assert "optimistic" in caplog.text
    fitted = parse_rule("per-class:2").fit(test_scores, test_labels).apply(test_scores)
    assert report["micro"]["f1"] == pytest.approx(
        2 * (fitted & test_labels).sum() / (fitted.sum() + test_labels.sum()))


def test_already_fitted_rules_are_applied_unchanged(split):
    test_scores, test_labels, val_scores, val_labels, names = split
    rule = parse_rule("fbeta:2").fit(val_scores, val_labels)
    report = evaluate_scores(test_scores, test_labels, names, decisions=[rule])
    assert report["decision"]["threshold"] == rule.threshold


def test_format_table_has_seed_003_shape(split):
    test_scores, test_labels, val_scores, val_labels, names = split
    report = evaluate_scores(test_scores, test_labels, names, decisions=("cardinality", "topk:3", "rank", "per-class:2"),
                             fit_scores=val_scores, fit_labels=val_labels)
    table = format_table(report)
    header = table.splitlines()[0].split()
    assert header[-9:] == ["MP", "MR", "MF1", "uP", "uR", "uF1", "F2", "mAP", "AUC"]
    rows = {line.split()[0]: line for line in table.splitlines()[2:7]}
    assert "rank" in rows and "upper bound" in rows["rank"]
    assert "best possible (k=3)" in table
    mp = float(rows["topk:3"].split()[-9])
    assert mp == round(100 * report["rules"]["topk:3"]["macro"]["precision"], 1)
    assert "Best labels by AUC" in format_labels_table(report)


def test_multiclass_and_regression(tmp_path):
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 4, 120)
    scores = rng.random((120, 4)) + np.eye(4)[truth]
    report = evaluate_scores(scores, truth, list("abcd"), task="multiclass", plots_dir=tmp_path)
    assert report["accuracy"] == pytest.approx(np.mean(scores.argmax(1) == truth))
    assert report["decision"]["kind"] == "argmax"
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000
    assert "accuracy" in format_table(report)
    targets = rng.normal(1850, 40, 80)
    report = evaluate_scores(targets + 5, targets, ["year"], task="regression", plots_dir=tmp_path)
    assert report["mae"] == pytest.approx(5) and report["decision"]["kind"] == "identity"
    assert (tmp_path / "predicted_vs_true.png").stat().st_size > 1000
    assert "MAE" in format_table(report)
    with pytest.raises(MlkitError, match="argmax"):
        evaluate_scores(scores, truth, list("abcd"), task="multiclass", decisions=["fbeta:2"])


def test_bad_requests_are_explained(split):
    test_scores, test_labels, val_scores, val_labels, names = split
    with pytest.raises(MlkitError, match="given twice"):
        evaluate_scores(test_scores, test_labels, names, decisions=["topk:3", "topk:3"])
    with pytest.raises(MlkitError, match="fit labels given without fit scores"):
        evaluate_scores(test_scores, test_labels, names, fit_labels=val_labels)
    with pytest.raises(MlkitError, match="3 labels but the evaluated scores 25"):
        evaluate_scores(test_scores, test_labels, names, fit_scores=val_scores[:, :3], fit_labels=val_labels[:, :3])
    with pytest.raises(MlkitError, match="unknown task"):
        evaluate_scores(test_scores, test_labels, names, task="ranking")


def test_cli_writes_json_and_plots(split, tmp_path, capsys):
    test_scores, test_labels, val_scores, val_labels, names = split
    path = tmp_path / "scores.npz"
    np.savez(path, scores=test_scores, labels=test_labels, label_names=np.array(names),
             val_scores=val_scores, val_labels=val_labels, train_cardinality=3.2)
    out = tmp_path / "out" / "report.json"
    assert run_cli(["evaluate", str(path), "--decision", "cardinality", "--decision", "fbeta:2", "--decision",
                    "topk:3", "--json", str(out), "--plots", str(tmp_path / "plots"), "--min-labels", "1"]) == 0
    printed = capsys.readouterr().out
    assert "cardinality" in printed and "best possible (k=3)" in printed and "Worst labels" in printed
    report = json.loads(out.read_text())
    assert all(key in report for key in STABLE_KEYS)
    assert list(report["rules"]) == ["cardinality", "fbeta:2", "topk:3"]
    assert report["decision"]["min_labels"] == 1 and report["decision"]["fit"]["target_cardinality"] == 3.2
    assert [p.name for p in out.parent.iterdir()] == ["report.json"]  # no temporary file left behind
    for name in ("roc_per_label.png", "precision_recall.png", "threshold_curves.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000


def test_evaluate_file_is_the_library_call_behind_the_cli(split, tmp_path):
    from mlkit.evaluation.evaluate import evaluate_file

    test_scores, test_labels, val_scores, val_labels, names = split
    path = tmp_path / "scores.npz"
    np.savez(path, scores=test_scores, labels=test_labels, label_names=np.array(names), val_scores=val_scores,
             val_labels=val_labels)
    report = evaluate_file(path, ["fbeta:2"], json_path=tmp_path / "r.json")
    assert report["fitted_on"] == "validation scores" and list(report["rules"]) == ["fbeta:2"]
    assert json.loads((tmp_path / "r.json").read_text())["micro"] == pytest.approx(report["micro"])
    direct = evaluate_scores(test_scores, test_labels, names, decisions=["fbeta:2"], fit_scores=val_scores,
                             fit_labels=val_labels)
    assert report["micro"] == pytest.approx(direct["micro"])


def test_cli_regression_file_and_errors(tmp_path, capsys):
    path = tmp_path / "years.npz"
    np.savez(path, targets=np.array([1900.0, 1950.0]), predictions=np.array([1910.0, 1940.0]),
             target_names=np.array(["year"]))
    assert run_cli(["evaluate", str(path), "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["mae"] == 10.0
    with pytest.raises(MlkitError, match="not found"):
        run_cli(["evaluate", str(tmp_path / "missing.npz")])
    np.savez(tmp_path / "bad.npz", scores=np.zeros((2, 2)))
    with pytest.raises(MlkitError, match="lacks labels"):
        run_cli(["evaluate", str(tmp_path / "bad.npz")])


def test_help_explains_every_rule(capsys):
    with pytest.raises(SystemExit):
        run_cli(["evaluate", "--help"])
    text = capsys.readouterr().out
    for form, explanation in RULE_FORMS.items():
        assert form in text
        assert explanation.split()[0] in text
    assert "upper bound" in text and "--min-labels" in text
