"""Metrics, cross-checked against scikit-learn on data with empty rows, empty columns and ties."""

import json

import numpy as np
import pytest
from sklearn import metrics as sk

from mlkit.errors import MlkitError
from mlkit.evaluation.metrics import (
    average_precision_per_label,
    best_worst_labels,
    keys_to_values,
    label_curve_counts,
    multiclass_report,
    multilabel_report,
    regression_report,
    roc_auc_per_label,
    sortable_keys,
    topk_best_possible,
)


@pytest.fixture(params=[(0, np.float32, False), (1, np.float32, True), (2, np.float64, True)],
                ids=["float32", "float32-ties-negative", "float64-ties-negative"])
def data(request):
    """Labels with empty images and a label without positives, scores, and decisions."""
    seed, dtype, ties = request.param
    rng = np.random.default_rng(seed)
    labels = (rng.random((250, 15)) < 0.2).astype(np.uint8)
    labels[:, 3] = 0
    labels[10:20] = 0
    scores = rng.random((250, 15)) * 0.6 + 0.4 * labels
    if ties:
        scores = np.round(scores, 2) - 0.5
    scores = scores.astype(dtype)
    decisions = (scores >= np.quantile(scores, 0.8)).astype(np.uint8)
    decisions[30:35] = 0
    return labels, decisions, scores


def test_counts_metrics_match_sklearn(data):
    labels, decisions, scores = data
    report = multilabel_report(labels, decisions, scores)
    with_positives = np.flatnonzero(labels.sum(axis=0))
    for average in ("micro", "macro", "samples"):
        options = {"labels": with_positives} if average == "macro" else {}
        precision, recall, f1, _ = sk.precision_recall_fscore_support(
            labels, decisions, average=average, zero_division=0, **options)
        f2 = sk.fbeta_score(labels, decisions, beta=2, average=average, zero_division=0, **options)
        assert report[average] == pytest.approx({"precision": precision, "recall": recall, "f1": f1, "f2": f2},
                                                 abs=1e-12)
    assert report["hamming"] == pytest.approx(sk.hamming_loss(labels, decisions))
    assert report["subset_accuracy"] == pytest.approx(sk.accuracy_score(labels, decisions))
    assert report["cardinality"] == pytest.approx({"true": labels.sum(1).mean(), "predicted": decisions.sum(1).mean()})


def test_ap_and_auc_match_sklearn(data):
    labels, decisions, scores = data
    ap = average_precision_per_label(labels, scores)
    auc = roc_auc_per_label(labels, scores)
    for j in range(labels.shape[1]):
        if labels[:, j].any():
            assert ap[j] == pytest.approx(sk.average_precision_score(labels[:, j], scores[:, j]), abs=1e-12)
        else:
            assert ap.mask[j]
        if 0 < labels[:, j].sum() < len(labels):
            assert auc[j] == pytest.approx(sk.roc_auc_score(labels[:, j], scores[:, j]), abs=1e-12)
        else:
            assert auc.mask[j]
    assert not np.isnan(ap.data).any() and not np.isnan(auc.data).any()
    report = multilabel_report(labels, decisions, scores)
    assert report["map"] == pytest.approx(np.mean([sk.average_precision_score(labels[:, j], scores[:, j])
                                                   for j in range(15) if j != 3]))
    assert report["auc"] == pytest.approx(np.mean([sk.roc_auc_score(labels[:, j], scores[:, j])
                                                   for j in range(15) if j != 3]))


def test_exclusions_are_counted_and_nothing_is_nan(data):
    labels, decisions, scores = data
    report = multilabel_report(labels, decisions, scores, label_names=[f"tag::{j}" for j in range(15)])
    empty_images = int((labels.sum(axis=1) == 0).sum())
    assert empty_images >= 10
    assert report["excluded"] == {"labels_without_positives": 1, "images_without_labels": empty_images,
                                  "labels_without_both_classes": 1}
    assert set(report["excluded_from"]) == set(report["excluded"])
    json.dumps(report, allow_nan=False)  # raises on any NaN or infinity
    row = report["per_label"][3]
    assert row["name"] == "tag::3" and row["support"] == 0 and row["ap"] is None and row["recall"] is None


def test_degenerate_inputs_give_none_not_nan():
    labels = np.zeros((6, 4), np.uint8)
    report = multilabel_report(labels, labels, np.zeros((6, 4), np.float32))
    assert report["map"] is None and report["auc"] is None and report["macro"]["f1"] is None
    assert report["samples"]["f1"] == 0.0 and report["subset_accuracy"] == 1.0
    assert report["excluded"]["labels_without_both_classes"] == 4
    json.dumps(report, allow_nan=False)
    labels[:, 2] = 1  # a label with only positives has AP 1 but no AUC
    report = multilabel_report(labels, labels, np.linspace(0, 1, 24).reshape(6, 4))
    assert report["map"] == 1.0 and report["auc"] is None
    assert report["excluded"]["labels_without_both_classes"] == 4


def test_bad_inputs_name_the_problem():
    labels = np.zeros((4, 3), np.uint8)
    with pytest.raises(MlkitError, match="only 0 and 1"):
        multilabel_report(labels + 2, labels)
    with pytest.raises(MlkitError, match=r"shape \(4, 2\)"):
        multilabel_report(labels, labels[:, :2])
    with pytest.raises(MlkitError, match="2 label names for 3"):
        multilabel_report(labels, labels, label_names=["a", "b"])
    with pytest.raises(MlkitError, match="NaN"):
        average_precision_per_label(labels, np.full((4, 3), np.nan))


def test_sortable_keys_order_like_floats():
    values = np.array([np.inf, -0.0, 0.0, -np.inf, 1e-38, -1e-38, 3.5, -3.5, 2.0, 1e-45], np.float32)
    for dtype in (np.float32, np.float64):
        keys = sortable_keys(values.astype(dtype))
        order = np.argsort(keys, kind="stable")
        assert np.array_equal(values.astype(dtype)[order], np.sort(values.astype(dtype)))
        assert keys[1] == keys[2]  # -0.0 == 0.0
        assert np.array_equal(keys_to_values(keys, dtype), values.astype(dtype))


def loop_best_possible(labels, k):
    """The COCO report's oracle in plain Python: rarest true labels first, then the most frequent false ones."""
    support = labels.sum(axis=0).astype(int)
    decisions = np.zeros_like(labels)
    for i, row in enumerate(labels):
        true = sorted(np.flatnonzero(row), key=lambda j: (support[j], j))
        false = sorted(np.flatnonzero(row == 0), key=lambda j: (-support[j], -j))
        decisions[i, (true + false)[:k]] = 1
    return decisions


def test_topk_best_possible_matches_oracle(data):
    labels, _, _ = data
    for k in (1, 3):
        best = topk_best_possible(labels, k)
        expected = multilabel_report(labels, loop_best_possible(labels, k))
        for average in ("micro", "macro", "samples"):
            assert best[average] == pytest.approx(expected[average])
        true_counts = labels.sum(axis=1)
        hits = np.minimum(true_counts, k).sum()
        assert best["micro"]["precision"] == pytest.approx(hits / (k * len(labels)))
        assert best["micro"]["recall"] == pytest.approx(hits / true_counts.sum())


def test_best_worst_labels_respect_min_support(data):
    labels, decisions, scores = data
    report = multilabel_report(labels, decisions, scores, min_support=40)
    best, worst = best_worst_labels(report, n=3, min_support=40)
    eligible = [row for row in report["per_label"] if row["support"] >= 40 and row["auc"] is not None]
    aucs = sorted(row["auc"] for row in eligible)
    assert [row["auc"] for row in best] == aucs[::-1][:3]
    assert [row["auc"] for row in worst] == aucs[:3]
    assert report["best_labels"] == best_worst_labels(report, n=10, min_support=40)[0]


def test_label_curve_counts_match_sklearn_roc(data):
    labels, _, scores = data
    thresholds, tp, fp = label_curve_counts(labels[:, 0], scores[:, 0])
    fpr, tpr, sk_thresholds = sk.roc_curve(labels[:, 0], scores[:, 0], drop_intermediate=False)
    assert np.allclose(thresholds, sk_thresholds[1:])
    assert np.allclose(tp / labels[:, 0].sum(), tpr[1:]) and np.allclose(fp / (labels[:, 0] == 0).sum(), fpr[1:])


def test_multiclass_report_matches_sklearn():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, 300)
    truth[truth == 4] = 3  # class 4 never occurs
    scores = rng.random((300, 5)) + 0.8 * np.eye(5)[truth]
    report = multiclass_report(truth, scores, label_names=list("abcde"))
    predicted = scores.argmax(axis=1)
    assert report["accuracy"] == pytest.approx(sk.accuracy_score(truth, predicted))
    assert report["macro_f1"] == pytest.approx(sk.f1_score(truth, predicted, labels=[0, 1, 2, 3], average="macro",
                                                           zero_division=0))
    assert report["confusion_matrix"] == sk.confusion_matrix(truth, predicted, labels=range(5)).tolist()
    assert report["excluded"]["classes_without_examples"] == 1
    assert multiclass_report(np.eye(5)[truth], predicted, list("abcde"))["accuracy"] == report["accuracy"]
    with pytest.raises(MlkitError, match="from 0 to 4"):
        multiclass_report(truth + 5, scores)


def test_regression_report_matches_sklearn():
    rng = np.random.default_rng(0)
    targets = rng.normal(1900, 50, (100, 2))
    predictions = targets + rng.normal(0, 10, (100, 2))
    report = regression_report(targets, predictions, ["year", "width"])
    assert report["mae"] == pytest.approx(sk.mean_absolute_error(targets, predictions))
    assert report["rmse"] == pytest.approx(sk.root_mean_squared_error(targets, predictions))
    assert report["per_target"][0]["name"] == "year"
    assert regression_report(targets[:, 0], predictions[:, 0])["mae"] == pytest.approx(report["per_target"][0]["mae"])
    with pytest.raises(MlkitError, match="NaN"):
        regression_report(targets, predictions * np.nan)
