"""Decision rules, each cross-checked against a plain Python loop."""

import json

import numpy as np
import pytest

from mlkit.errors import MlkitError
from mlkit.evaluation import decisions
from mlkit.evaluation.decisions import (
    DecisionRuleError,
    Rule,
    cardinality_threshold,
    fbeta_threshold,
    parse_rule,
    per_class_thresholds,
    rule_from_dict,
    threshold_sweep,
    top_labels_mask,
)


def make_data(n_images=300, n_labels=12, seed=0, ties=False, shift=0.0, dtype=np.float32):
    """Multi-hot labels (with an empty label and empty images) and scores that favour positives."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n_images, n_labels)) < 0.2).astype(np.uint8)
    labels[:, 1] = 0
    labels[:5] = 0
    scores = rng.random((n_images, n_labels)) * 0.7 + 0.3 * labels
    if ties:
        scores = np.round(scores, 2)
    return (scores + shift).astype(dtype), labels


@pytest.fixture(params=[20, 3], ids=["fine-bins", "coarse-bins"])
def histogram_bits(request, monkeypatch):
    """Runs a test with the real histogram and with 8 bins, so the in-bin search does the work."""
    monkeypatch.setattr(decisions, "_HISTOGRAM_BITS", request.param)
    return request.param


# Plain-loop references ---------------------------------------------------------------------------


def loop_thresholds(scores):
    """Every candidate global threshold: each distinct score, then one above the highest."""
    values = sorted({float(v) for v in np.ravel(scores)})
    return values + [float(np.nextafter(scores.max(), np.inf))]


def loop_fbeta(tp, predicted, n_pos, beta):
    return (1 + beta * beta) * tp / (predicted + beta * beta * n_pos)


def loop_best_fbeta(scores, labels, beta):
    """(threshold, F) maximising micro F-beta; ties go to the higher threshold."""
    best = (-1.0, None)
    n_pos = int(labels.sum())
    for tau in loop_thresholds(scores)[:-1]:
        decided = scores >= tau
        value = loop_fbeta(int((decided & (labels == 1)).sum()), int(decided.sum()), n_pos, beta)
        if value >= best[0]:
            best = (value, tau)
    return best[1], best[0]


def loop_top(row, m):
    order = sorted(range(len(row)), key=lambda j: -row[j])
    chosen = np.zeros(len(row), bool)
    chosen[order[:m]] = True
    return chosen


# Global thresholds --------------------------------------------------------------------------------


@pytest.mark.parametrize("ties,shift", [(False, 0.0), (True, 0.0), (True, -0.5)])
def test_cardinality_matches_loop(histogram_bits, ties, shift):
    scores, labels = make_data(ties=ties, shift=shift)
    for target in (0.0, 0.37, 1.0, 2.5, 11.9, 12.0, 15.0):
        tau = cardinality_threshold(scores, target)
        want = target * len(scores)
        distances = {t: abs(int((scores >= t).sum()) - want) for t in loop_thresholds(scores)}
        best = min(distances.values())
        assert abs(int((scores >= tau).sum()) - want) == best
        assert tau == max(t for t, d in distances.items() if d == best)


def test_cardinality_within_one_assignment_of_target(histogram_bits):
    rng = np.random.default_rng(3)
    val_scores = rng.random((2000, 40), dtype=np.float32)
    for target in (0.8, 2.9, 3.14159, 7.5):
        rule = parse_rule("cardinality").fit(val_scores, train_cardinality=target)
        predicted = rule.apply(val_scores).sum(axis=1).mean()
        assert abs(predicted - target) <= 1 / len(val_scores)
        assert rule.fit_info["target_source"] == "train_cardinality"


def test_cardinality_defaults_to_fit_labels():
    scores, labels = make_data()
    rule = parse_rule("cardinality").fit(scores, labels)
    assert rule.fit_info["target_source"] == "fit labels"
    assert rule.fit_info["target_cardinality"] == pytest.approx(labels.sum() / len(labels))
    with pytest.raises(DecisionRuleError, match="labels"):
        parse_rule("cardinality").fit(scores)


@pytest.mark.parametrize("ties,shift,beta", [(False, 0.0, 2.0), (True, 0.0, 1.0), (True, -0.3, 0.5)])
def test_fbeta_matches_loop(histogram_bits, ties, shift, beta):
    scores, labels = make_data(n_images=200, n_labels=8, ties=ties, shift=shift, seed=1)
    tau_loop, best_loop = loop_best_fbeta(scores, labels, beta)
    rule = parse_rule(f"fbeta:{beta}").fit(scores, labels)
    assert rule.threshold == tau_loop
    assert rule.fit_info["fit_fbeta"] == pytest.approx(best_loop, abs=1e-12)
    assert fbeta_threshold(scores, labels, beta) == tau_loop


def test_fbeta_on_float64_scores(histogram_bits):
    scores, labels = make_data(n_images=150, n_labels=6, dtype=np.float64, seed=2, shift=-0.2)
    assert fbeta_threshold(scores, labels, 2.0) == loop_best_fbeta(scores, labels, 2.0)[0]


def test_fbeta_needs_positives():
    scores, labels = make_data()
    with pytest.raises(DecisionRuleError, match="no positives"):
        fbeta_threshold(scores, np.zeros_like(labels))


# Per-class thresholds -----------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
def test_per_class_matches_loop(ties):
    scores, labels = make_data(n_images=200, n_labels=10, ties=ties, seed=4)
    labels[:, 2] = 0
    labels[:3, 2] = 1  # 3 positives: below min_positives, falls back
    beta = 2.0
    thresholds, fell_back, global_tau = per_class_thresholds(scores, labels, beta, min_positives=5)
    assert global_tau == loop_best_fbeta(scores, labels, beta)[0]
    for j in range(labels.shape[1]):
        n_pos = int(labels[:, j].sum())
        if n_pos < 5:
            assert fell_back[j] and thresholds[j] == global_tau
            continue
        best = (-1.0, None)
        for tau in sorted(set(scores[:, j].tolist())):
            decided = scores[:, j] >= tau
            value = loop_fbeta(int((decided & (labels[:, j] == 1)).sum()), int(decided.sum()), n_pos, beta)
            if value >= best[0]:
                best = (value, tau)
        assert not fell_back[j] and thresholds[j] == best[1]


def test_per_class_rule_records_fallbacks():
    scores, labels = make_data(seed=5)
    rule = parse_rule("per-class:2", min_positives=5).fit(scores, labels)
    assert rule.fit_info["n_fallback"] == 1  # label 1 has no positives
    assert rule.fit_info["fallback_labels"] == [1]
    decided = rule.apply(scores)
    assert np.array_equal(decided, (scores >= rule.threshold[None, :]).astype(np.uint8))
    with pytest.raises(DecisionRuleError, match="fitted on 12 labels"):
        rule.apply(scores[:, :5])


# Rules without fitting ---------------------------------------------------------------------------


def test_threshold_topk_rank_argmax_identity_match_loops():
    scores, labels = make_data(seed=6)
    assert np.array_equal(parse_rule("threshold:0.5").apply(scores),
                          np.array([[int(s >= 0.5) for s in row] for row in scores], np.uint8))
    topk = parse_rule("topk:3").apply(scores)
    assert np.array_equal(topk, np.array([loop_top(row, 3) for row in scores], np.uint8))
    rank = parse_rule("rank").apply(scores, labels)
    assert np.array_equal(rank, np.array([loop_top(row, int(k)) for row, k in zip(scores, labels.sum(1))], np.uint8))
    argmax = parse_rule("argmax").apply(scores)
    assert np.array_equal(argmax.argmax(axis=1), scores.argmax(axis=1)) and (argmax.sum(axis=1) == 1).all()
    assert parse_rule("identity").apply(scores) is scores
    assert rank.dtype == topk.dtype == np.uint8


def test_min_and_max_labels_match_loop():
    scores, _ = make_data(seed=7)
    rule = parse_rule("threshold:0.6", min_labels=1, max_labels=3)
    expected = []
    for row in scores:
        decided = row >= 0.6
        if decided.sum() < 1:
            decided = loop_top(row, 1)
        if decided.sum() > 3:
            decided = loop_top(np.where(decided, row, -np.inf), 3)
        expected.append(decided)
    assert np.array_equal(rule.apply(scores), np.array(expected, np.uint8))


def test_top_labels_mask_with_per_row_counts():
    scores, _ = make_data(seed=8)
    counts = np.arange(len(scores)) % 14  # includes 0 and more than the 12 labels
    mask = top_labels_mask(scores, counts)
    assert np.array_equal(mask, np.array([loop_top(row, int(k)) for row, k in zip(scores, counts)]))


# Serialisation and errors -------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["threshold:0.5", "cardinality", "fbeta:2", "per-class:1.5", "topk:2", "rank"])
def test_rules_round_trip_through_json(spec):
    scores, labels = make_data(seed=9)
    rule = parse_rule(spec, min_labels=1, max_labels=4).fit(scores, labels)
    restored = rule_from_dict(json.loads(json.dumps(rule.to_dict())))
    assert restored.to_dict() == rule.to_dict()
    assert np.array_equal(restored.apply(scores, labels), rule.apply(scores, labels))
    assert restored.deployable == (spec != "rank")


def test_bad_specs_list_the_valid_forms():
    for spec in ("median", "topk", "topk:0", "topk:2.5", "fbeta:-1", "threshold:nan", "cardinality:3", 7):
        with pytest.raises(DecisionRuleError, match="per-class:B") as caught:
            parse_rule(spec)
        assert isinstance(caught.value, (MlkitError, ValueError))
    with pytest.raises(DecisionRuleError, match="max_labels"):
        Rule("topk:3", min_labels=3, max_labels=2)


def test_unfitted_nan_and_missing_labels_are_refused():
    scores, labels = make_data()
    with pytest.raises(DecisionRuleError, match="not fitted"):
        parse_rule("fbeta:2").apply(scores)
    with pytest.raises(DecisionRuleError, match="needs the true labels"):
        parse_rule("rank").apply(scores)
    with pytest.raises(DecisionRuleError, match="needs validation labels"):
        parse_rule("per-class:2").fit(scores)
    broken = scores.copy()
    broken[3, 4] = np.nan
    with pytest.raises(MlkitError, match="NaN"):
        parse_rule("fbeta:2").fit(broken, labels)
    with pytest.raises(MlkitError, match="NaN"):
        parse_rule("threshold:0.5").apply(broken)
    with pytest.raises(DecisionRuleError, match="wrong shape"):
        rule_from_dict({"spec": "per-class:2", "threshold": 0.5})


def test_threshold_sweep_counts_are_exact(histogram_bits):
    scores, labels = make_data(ties=True, seed=10, shift=-0.1)
    sweep = threshold_sweep(scores, labels, max_points=50)
    assert np.all(np.diff(sweep["threshold"]) > 0)
    for tau, predicted, tp in zip(sweep["threshold"], sweep["predicted"], sweep["true_positives"]):
        assert predicted == (scores >= tau).sum()
        assert tp == ((scores >= tau) & (labels == 1)).sum()
    assert sweep["n_positives"] == labels.sum()
