"""mlkit.auditing.linear, the audit's second out-of-fold witness: checked against scikit-learn's ridge
regression fold by fold, and what it adds to the audit."""

import json

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from mlkit.auditing import evidence
from mlkit.auditing.labels import multilabel_quality
from mlkit.auditing.linear import RIDGE, linear_scores
from mlkit.bottlenecks.cache import write_cache
from mlkit.errors import MlkitError


def learnable(rows=150, dims=12, labels=5, seed=0):
    rng = np.random.default_rng(seed)
    given = (rng.random((rows, labels)) < 0.3).astype(np.uint8)
    given[given.sum(axis=1) == 0, 0] = 1
    features = given @ rng.normal(size=(labels, dims)) + rng.normal(scale=0.7, size=(rows, dims))
    return (features * rng.uniform(0.1, 20, dims)).astype(np.float32), given


@pytest.mark.parametrize("weighted", [False, True])
def test_linear_scores_are_scikit_learns_ridge_fold_by_fold(weighted):
    """Columns z-scored over all rows (and weighted), then per fold sklearn's Ridge with an intercept and
    alpha = RIDGE times the mean eigenvalue of the training rows' centred Gram matrix."""
    features, given = learnable()
    folds = np.arange(len(given)) % 4
    weights = np.linspace(0.5, 2, features.shape[1]) if weighted else None
    z = (features - features.mean(0)) / (features.std(0) + 1e-6) * (1.0 if weights is None else weights)
    expected = np.zeros(given.shape)
    for fold in range(4):
        train = folds != fold
        centred = z[train] - z[train].mean(0)
        alpha = RIDGE * np.trace(centred.T @ centred) / z.shape[1]
        expected[~train] = Ridge(alpha=alpha).fit(z[train], given[train]).predict(z[~train])
    scores = linear_scores(features, given.astype(np.float32), "multilabel", folds, weights)
    np.testing.assert_allclose(scores, np.clip(expected, 0, 1), atol=1e-4)


def test_multiclass_linear_scores_are_probabilities():
    features, given = learnable(labels=3)
    classes = given.argmax(axis=1)
    scores = linear_scores(features, evidence.one_hot(classes, "multiclass", 3), "multiclass",
                           np.arange(len(classes)) % 3)
    assert scores.min() >= 0 and scores.max() <= 1
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)
    assert (scores.argmax(axis=1) == classes).mean() > 0.8


def test_a_swapped_row_outranks_every_clean_row():
    """A row given another row's whole label set is the worst row on the linear witness's scores alone."""
    features, given = learnable(rows=200, seed=1)
    noisy = given.copy()
    other = int(np.flatnonzero((given != given[7]).sum(axis=1) >= 3)[0])
    noisy[7] = given[other]
    scores = linear_scores(features, noisy.astype(np.float32), "multilabel", np.arange(200) % 5)
    quality = multilabel_quality(noisy, scores, [f"l{j}" for j in range(5)])
    assert np.argmax(quality.score) == 7 and quality.flagged[7]


def tapped_multilabel_cache(tmp_path):
    features, given = learnable(rows=90)
    path = tmp_path / "bottlenecks" / "toy_all_mobilenetv2_inet_avg.h5"
    path.parent.mkdir()
    write_cache(path, features=features, labels=given, split=["train"] * 90,
                attrs={"task": "multilabel", "label_names": [f"l{j}" for j in range(5)]},
                taps={"block_13_expand_relu": np.random.default_rng(0).normal(size=(90, 4))})
    return path


def test_the_audit_averages_the_fold_tops_with_the_linear_witness(tmp_path):
    import mlkit

    path = tapped_multilabel_cache(tmp_path)
    small = {"folds": 2, "epochs": 1, "units": 8}
    result = mlkit.audit(path, workdir=tmp_path / "a", **small)
    scores = np.load(result.folder / "scores.npz")
    np.testing.assert_allclose(scores["oof_scores"], (scores["top_scores"] + scores["linear_scores"]) / 2, atol=1e-6)
    summary = json.loads((result.folder / "summary.json").read_text())
    assert "linear witness 0.25" in summary["label_check"]["score"]
    assert summary["config"]["linear_weight"] == 0.5
    alone = np.load(mlkit.audit(path, workdir=tmp_path / "b", linear_weight=0, **small).folder / "scores.npz")
    assert "linear_scores" not in alone
    np.testing.assert_array_equal(alone["oof_scores"], alone["top_scores"])
    np.testing.assert_array_equal(alone["top_scores"], scores["top_scores"])
    with pytest.raises(MlkitError, match="linear-weight 1.5"):
        mlkit.audit(path, workdir=tmp_path / "c", linear_weight=1.5, **small)
