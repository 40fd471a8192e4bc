"""mlkit.auditing.evidence and the label score: the witnesses cross-checked against plain loops, and the audit
reading taps and fold ensembles."""

import json

import numpy as np
import pytest

from mlkit.auditing import evidence
from mlkit.auditing.labels import MIN_SEPARATION, label_errors, multiclass_quality, multilabel_quality
from mlkit.bottlenecks.cache import write_cache
from mlkit.errors import MlkitError


def test_neighbour_votes_match_a_plain_loop():
    rng = np.random.default_rng(0)
    labels = (rng.random((50, 6)) < 0.3).astype(np.float32)
    positions = rng.integers(0, 50, (50, 12))
    positions[rng.random(positions.shape) < 0.2] = -1
    positions[3] = -1
    votes = evidence.neighbour_votes(labels, positions, 8)
    for row in range(50):
        found = [p for p in positions[row, :8] if p >= 0]
        expected = labels[found].mean(axis=0) if found else labels.mean(axis=0)
        np.testing.assert_allclose(votes[row], expected, rtol=1e-6)


def test_partner_votes_match_a_plain_loop():
    rng = np.random.default_rng(1)
    labels = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 30)]
    pairs = np.array([[5, 2], [9, 2], [9, 5], [20, 11]])
    votes, has_partner = evidence.partner_votes(labels, pairs[:, 0], pairs[:, 1])
    for row in range(30):
        partners = [b for a, b in pairs if a == row] + [a for a, b in pairs if b == row]
        assert has_partner[row] == bool(partners)
        np.testing.assert_allclose(votes[row], labels[partners].mean(axis=0) if partners else 0.0)


def test_combine_weighs_the_witnesses_and_partners_only_where_there_are_some():
    scores, votes, partners = np.full((2, 3), 0.2), np.full((2, 3), 0.6), np.full((2, 3), 1.0)
    combined = evidence.combine(scores, votes, partners, np.array([True, False]), neighbour_weight=0.25,
                                partner_weight=0.5)
    np.testing.assert_allclose(combined[1], 0.75 * 0.2 + 0.25 * 0.6)
    np.testing.assert_allclose(combined[0], 0.5 * (0.75 * 0.2 + 0.25 * 0.6) + 0.5)


def test_label_errors_match_a_plain_loop():
    rng = np.random.default_rng(2)
    given = rng.random((40, 5)) < 0.3
    given[:, 4] = False
    scores = rng.random((40, 5))
    errors = label_errors(given, scores)
    for label in range(5):
        on, off = scores[given[:, label], label], scores[~given[:, label], label]
        with_label = on.mean() if len(on) else 1.0
        gap = max(with_label - off.mean(), MIN_SEPARATION)
        for row in range(40):
            expected = (1 - scores[row, label] / with_label if given[row, label]
                        else (scores[row, label] - off.mean()) / gap)
            assert errors[row, label] == pytest.approx(expected)


def test_a_rare_label_the_models_barely_learn_is_not_suspect_on_every_row_that_has_it():
    """Raw self-confidence ranks the rare label's rows (scored 0.1) above a false common label (scored 0.15)."""
    rng = np.random.default_rng(3)
    labels = np.zeros((200, 3), np.uint8)
    labels[:, 0] = rng.random(200) < 0.5
    labels[:8, 1] = 1
    labels[:, 2] = labels[:, 0] == 0
    scores = np.where(labels == 1, 0.9, 0.05)
    scores[:8, 1] = 0.1
    noisy = labels.copy()
    wrong = int(np.flatnonzero(labels[:, 0] == 0)[20])
    noisy[wrong, 0] = 1
    scores[wrong, 0] = 0.15
    quality = multilabel_quality(noisy, scores, ["a", "rare", "c"])
    assert np.argmax(quality.score) == wrong
    assert quality.score[wrong] > quality.score[:8].max()


def test_neighbours_catch_a_label_the_fold_scores_vouch_for():
    """Fold scores that learned a wrong label (0.9 on it) are outvoted by ten neighbours that all disagree."""
    labels = np.repeat(np.arange(3), 40)
    scores = np.full((120, 3), 0.05)
    scores[np.arange(120), labels] = 0.9
    noisy = labels.copy()
    noisy[10] = 2
    scores[10] = [0.05, 0.05, 0.9]
    positions = np.array([[j for j in np.flatnonzero(labels == labels[i]) if j != i][:10] for i in range(120)])
    hot = evidence.one_hot(noisy, "multiclass", 3)
    alone = multiclass_quality(noisy, scores, ["a", "b", "c"])
    combined = multiclass_quality(noisy, evidence.combine(scores, evidence.neighbour_votes(hot, positions, 10)),
                                  ["a", "b", "c"])
    assert not alone.flagged[10] and alone.score[10] <= np.median(alone.score)
    assert np.argmax(combined.score) == 10 and combined.suggested[10] == 0


def tapped_cache(tmp_path):
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 90)
    features = rng.normal(size=(90, 6)) + labels[:, None]
    path = tmp_path / "bottlenecks" / "toy_all_mobilenetv2_inet_avg.h5"
    path.parent.mkdir()
    write_cache(path, features=features, labels=labels, split=["train"] * 90,
                attrs={"task": "multiclass", "label_names": ["a", "b", "c"]},
                taps={"block_13_expand_relu": rng.normal(size=(90, 4))})
    return path


def test_fold_tops_read_the_caches_taps_and_average_repeated_draws(tmp_path):
    import mlkit

    path = tapped_cache(tmp_path)
    small = {"folds": 2, "epochs": 1, "units": 8}
    tapped = mlkit.audit(path, workdir=tmp_path / "a", repeats=2, **small)
    assert tapped.summary["label_check"]["taps"] == ["last", "block_13_expand_relu"]
    assert tapped.summary["label_check"]["repeats"] == 2
    draws = [np.load(mlkit.audit(path, workdir=tmp_path / f"s{seed}", seed=seed, **small).folder / "scores.npz")
             for seed in (0, 1000)]
    mean = (draws[0]["top_scores"] + draws[1]["top_scores"]) / 2
    np.testing.assert_allclose(np.load(tapped.folder / "scores.npz")["top_scores"], mean, atol=1e-5)
    alone = mlkit.audit(path, workdir=tmp_path / "b", taps="last", **small)
    assert alone.summary["label_check"]["taps"] == ["last"]
    assert json.loads((alone.folder / "summary.json").read_text())["config"]["taps"] == "last"
    with pytest.raises(MlkitError, match="no tap .pre."):
        mlkit.audit(path, workdir=tmp_path / "c", taps="last+pre", **small)


def test_voting_neighbours_are_cosines_of_z_scored_weighted_taps():
    from mlkit.auditing.folds import column_weights
    from mlkit.auditing.neighbours import standardised_neighbours
    from mlkit.tuning import TopConfig
    from mlkit.tuning.top_data import tap_column_weights

    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(size=(40, 6)) * 50, rng.normal(size=(40, 2))], axis=1).astype(np.float32)
    weights = column_weights(TopConfig(task="multilabel"), [6, 2])
    np.testing.assert_allclose(weights, tap_column_weights([6, 2]))
    assert column_weights(TopConfig(task="multilabel"), None) is None
    assert column_weights(TopConfig(task="multilabel", tap_weights="none"), [6, 2]) is None
    z = (features - features.mean(0)) / (features.std(0) + 1e-6) * weights
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    cosines = z @ z.T
    np.fill_diagonal(cosines, -np.inf)
    _, positions = standardised_neighbours(features.copy(), 3, weights)
    np.testing.assert_array_equal(positions, np.argsort(-cosines, axis=1)[:, :3])
