"""A second out-of-fold witness beside the fold tops: regularised least squares on the same features.

Every label (for multiclass, every class, one-hot) is regressed on the
features the fold tops read, each column z-scored and each tap weighted as
they weight them, by ridge regression (Hoerl and Kennard, 1970; used as a
classifier it is regularised least-squares classification, Rifkin, Yeo and
Poggio, 2003). Each fold's fit sees the other folds' rows and scores its own,
the folds the tops used, so it needs no draw of its own. The fit is exact
and cheap: one pass over all rows sums their Gram matrix, and each fold
subtracts its own rows' and solves one D x D system for every label at
once. The penalty is `RIDGE` times the mean eigenvalue of the fold's
centred Gram matrix (its trace over D), so it weighs the same against
the data whatever the number of rows or features.

Its predictions, clipped to [0, 1] (multiclass rows renormalised to sum to
one), are averaged with the tops' scores (`run.fold_scores`): the tops are
small networks stopped early on 10% of their rows, the linear fit uses every
training row, and averaging the two found more planted label errors on both
collections BENCHMARKS.md measures, for mlkit and for cleanlab on the same
averaged scores.
"""

from typing import NamedTuple

import numpy as np
from scipy.linalg import cho_factor, cho_solve

from mlkit.auditing.neighbours import row_statistics

# The penalty in units of the mean eigenvalue of a fold's centred Gram matrix (chosen on the seed-0
# plantings of the stamps and the icons among 0.1, 1, 3 and 10: BENCHMARKS.md).
RIDGE = 3.0
# Rows per block: each is gathered and z-scored in one float32 copy (5 MB at 1,280 features), small
# because the witness runs beside what the fold tops' TensorFlow still holds.
BLOCK_ROWS = 1024


class Sums(NamedTuple):
    """What a least-squares fit needs of some rows: how many, the sums of their scaled features z and
    targets y (float64), and the sums of z z' (the Gram matrix) and z y' (float32: the penalty keeps
    the system well conditioned, and a float64 D x D matrix raised the audit's peak memory)."""

    rows: int
    features: np.ndarray
    targets: np.ndarray
    gram: np.ndarray
    cross: np.ndarray

    def without(self, part):
        """The sums over these rows but `part`'s, written over `part`'s arrays (no D x D matrix more)."""
        return Sums(self.rows - part.rows, *(np.subtract(mine, theirs, out=theirs)
                                             for mine, theirs in zip(self[1:], part[1:])))


def standardised_blocks(features, rows, mean, scale, block_rows=BLOCK_ROWS):
    """(positions into `rows`, z-scored and weighted float32 features) blocks of the rows at `rows`."""
    for start in range(0, len(rows), block_rows):
        block = features[rows[start:start + block_rows]]
        block -= mean
        block *= scale
        yield slice(start, start + block_rows), block


def sums(features, targets, rows, mean, scale):
    """The `Sums` of the rows at `rows`, block by block."""
    dim, outputs = features.shape[1], targets.shape[1]
    gram, cross, feature_sums = np.zeros((dim, dim), np.float32), np.zeros((dim, outputs), np.float32), np.zeros(dim)
    for at, block in standardised_blocks(features, rows, mean, scale):
        gram += block.T @ block
        cross += block.T @ targets[rows[at]]
        feature_sums += block.sum(axis=0, dtype=np.float64)
    return Sums(len(rows), feature_sums, targets[rows].sum(axis=0, dtype=np.float64), gram, cross)


def ridge_fit(training, ridge=RIDGE):
    """Ridge regression from the `Sums` of the training rows, with an unpenalised intercept.

    Overwrites `training.gram`: at 2,464 features each D x D matrix is 24 MB.

    Returns:
        (weights (D, L), feature mean (D,), target mean (L,)): a row's prediction is
        (z - feature mean) @ weights + target mean.
    """
    feature_mean, target_mean = training.features / training.rows, training.targets / training.rows
    centred, weighted_mean = training.gram, (training.rows * feature_mean).astype(np.float32)
    centred -= np.outer(weighted_mean, feature_mean.astype(np.float32))
    centred_cross = training.cross - np.outer(weighted_mean, target_mean.astype(np.float32))
    centred[np.diag_indices_from(centred)] += ridge * max(np.trace(centred) / len(centred), 1e-12)
    # Symmetric, so its transpose (Fortran order, as LAPACK wants it) is factorised in place.
    factor = cho_factor(centred.T, overwrite_a=True, check_finite=False)
    return cho_solve(factor, centred_cross, check_finite=False), feature_mean, target_mean


def linear_scores(features, targets, task, folds, weights=None, ridge=RIDGE):
    """Every row's scores from the ridge fit on the other folds' rows.

    Args:
        features: (N, D) float32 feature vectors in memory, as the fold tops read them.
        targets: float (N, L) multi-hot or one-hot labels (`evidence.one_hot`).
        task: multilabel or multiclass.
        folds: (N,) each row's fold, as the tops were trained.
        weights: (D,) column weights after z-scoring (`folds.column_weights`), or None. Defaults to None.
        ridge: the penalty, in units of the mean eigenvalue of each fold's centred Gram matrix.
            Defaults to `RIDGE`.

    Returns:
        float32 (N, L) in [0, 1]; multiclass rows sum to one.
    """
    mean, variance = row_statistics(features, np.arange(len(features)))
    scale = 1.0 / (np.sqrt(variance) + 1e-6) * (1.0 if weights is None else weights)
    mean, scale = mean.astype(np.float32), scale.astype(np.float32)
    targets = np.asarray(targets, dtype=np.float32)
    total = sums(features, targets, np.arange(len(features)), mean, scale)
    scores = np.zeros(targets.shape, np.float32)
    for fold in np.unique(folds):
        held_out = np.flatnonzero(folds == fold)
        training = total.without(sums(features, targets, held_out, mean, scale))
        coefficients, feature_mean, target_mean = ridge_fit(training, ridge)
        offset = (target_mean - feature_mean @ coefficients).astype(np.float32)
        for at, block in standardised_blocks(features, held_out, mean, scale):
            scores[held_out[at]] = block @ coefficients + offset
    scores = np.clip(scores, 0.0, 1.0)
    if task == "multiclass":
        totals = scores.sum(axis=1, keepdims=True)
        scores = np.where(totals > 0, scores / np.maximum(totals, 1e-12), 1.0 / scores.shape[1])
    return scores.astype(np.float32)
