"""Likely label errors from out-of-fold scores: per-row quality, flags and suggested corrections.

Given each row's out-of-fold scores (from models that never saw the row):

- multiclass: confident learning's prune by noise rate (Northcutt, Jiang and
  Chuang, 2021, section 3.2; cleanlab's default `find_label_issues`, written
  here from the paper and that function's source, since cleanlab is AGPL).
  A class's threshold is the mean score of that class over the rows labelled
  with it. Each row whose score reaches some class's threshold is counted in
  the confident joint at (given class, that class; the best-scored one when
  several reach theirs). The joint is calibrated to the given classes' counts
  and rounded, so its off-diagonal cell (k, j) estimates how many rows
  labelled k are truly j; that many rows labelled k, those with the largest
  margin score(j) - score(k), are flagged. A flagged row the model still
  scores highest in its given class is let go. Rows are ranked by
  self-confidence, the score of the given class; the suggestion is the
  confident class.
- multilabel: the same, one binary problem (label present or not) per label,
  so a label given but unlikely is "extra" and one not given but likely is
  "missing"; a row is flagged when any of its labels is. Rows are ranked by
  their worst label (`label_errors`), judged against what is usual for that
  label: a given label by how far its score falls below the mean score of
  the rows that carry it (1 - p / mean), a label not given by how far its
  score rises above the mean of the rows without it, in units of the gap
  between the two means (at least `MIN_SEPARATION`). A rare label the models
  barely learn is then not suspect on every row that has it, as it is when
  ranked by raw self-confidence (cleanlab's multilabel score, which ranked
  the injected errors of the Tux Paint stamps near chance: BENCHMARKS.md).
  Every label is judged, rare ones too.
- regression: the residual in robust standard units (median and MAD of all
  residuals), per target; the suggestion is the out-of-fold prediction.

All three return a `LabelQuality`: an error score per row (higher = more
likely wrong), a flag, and the suggested labels. BENCHMARKS.md compares the
flags with cleanlab's on the same scores.
"""

from dataclasses import dataclass

import numpy as np

# MAD times this estimates a normal distribution's standard deviation.
MAD_TO_STD = 1.4826
# A mean of equal scores can round above them; a score this close to its threshold counts as reaching it.
TOLERANCE = 1e-6
# The least gap between a label's mean score on rows with and without it that a missing label's
# score is measured in: a label the models barely separate would otherwise make every row suspect.
MIN_SEPARATION = 0.7


@dataclass
class LabelQuality:
    """Per-row results of a label check.

    Attributes:
        score: float (N,), higher means more likely mislabelled.
        flagged: bool (N,), the rows the method itself flags.
        suggested: multi-hot (N, L), class (N,) or targets (N, T): the suggested labels.
        detail: N short strings saying why (empty where nothing stands out).
    """

    score: np.ndarray
    flagged: np.ndarray
    suggested: np.ndarray
    detail: list


def class_thresholds(labels, scores):
    """Per-class mean score over the rows labelled with that class (above any score for an unused class)."""
    num_classes = scores.shape[1]
    counts = np.bincount(labels, minlength=num_classes)
    sums = np.zeros(num_classes)
    np.add.at(sums, labels, scores[np.arange(len(labels)), labels])
    return np.where(counts > 0, np.maximum(sums / np.maximum(counts, 1), 2 * TOLERANCE), 2.0)


def confident_classes(scores, thresholds):
    """Each row's confident class: the one whose score reaches its threshold, the best-scored one
    where several do, -1 where none does."""
    above = scores >= thresholds - TOLERANCE
    several = above.sum(axis=1) > 1
    confident = np.where(several, scores.argmax(axis=1), above.argmax(axis=1))
    return np.where(above.any(axis=1), confident, -1)


def round_keeping_row_sums(counts):
    """Counts rounded to integers whose rows still sum to their rounded totals (largest remainders win)."""
    rounded = np.round(counts)
    for row, target in enumerate(np.round(counts.sum(axis=1))):
        short = int(target - rounded[row].sum())
        if short:
            order = np.argsort(counts[row] - rounded[row])
            rounded[row, order[::-1][:short] if short > 0 else order[:-short]] += np.sign(short)
    return rounded.astype(np.int64)


def noise_counts(labels, confident, num_classes):
    """How many rows of each given class (rows) are truly each class (columns): the calibrated confident joint.

    Every class keeps at least one row of its own (the diagonal is at least
    1 before and after calibrating), so no class is flagged away whole.
    """
    counted = confident >= 0
    joint = np.zeros((num_classes, num_classes))
    np.add.at(joint, (labels[counted], confident[counted]), 1)
    np.fill_diagonal(joint, np.maximum(joint.diagonal(), 1))
    given = np.bincount(labels, minlength=num_classes)
    joint = joint / joint.sum(axis=1, keepdims=True) * given[:, None]
    joint = round_keeping_row_sums(joint * given.sum() / max(joint.sum(), 1e-12)).astype(float)
    diagonal = np.maximum(joint.diagonal(), 1)
    # What lifting the diagonal adds, the row's other non-zero cells give up, equally.
    others = np.maximum(np.count_nonzero(joint, axis=1) - 1, 1)
    joint = np.maximum(joint - ((diagonal - joint.diagonal()) / others)[:, None], 0)
    np.fill_diagonal(joint, diagonal)
    # Rounded keeping the totals per true class, as cleanlab's prune counts are.
    return round_keeping_row_sums(joint.T).T


def prune_by_noise_rate(labels, scores):
    """Confident learning's flags (see the module docstring) and each row's confident class.

    Args:
        labels: int (N,) given classes.
        scores: (N, C) out-of-fold class probabilities.

    Returns:
        (flagged, confident): bool (N,), and int (N,) with -1 where no class is confident.
    """
    num_classes = scores.shape[1]
    confident = confident_classes(scores, class_thresholds(labels, scores))
    counts = noise_counts(labels, confident, num_classes)
    flagged = np.zeros(len(labels), dtype=bool)
    for given in range(num_classes):
        members = np.flatnonzero(labels == given)
        if len(members) <= 1:
            continue
        for true in np.flatnonzero(counts[given]):
            if true != given:
                margin = scores[members, true] - scores[members, given]
                flagged[members[np.argsort(-margin, kind="stable")[: counts[given, true]]]] = True
    boosted = scores.copy()
    boosted[np.arange(len(labels)), labels] += TOLERANCE
    flagged &= boosted.argmax(axis=1) != labels
    return flagged, confident


def multiclass_quality(labels, scores, names):
    """Confident-learning flags and self-confidence ranks for class-index labels.

    Args:
        labels: int (N,) given classes.
        scores: (N, C) out-of-fold class probabilities.
        names: C class names, for the details.

    Returns:
        A `LabelQuality` whose suggestion is each row's confident class
        (its best other class where that is the given one or there is none).
    """
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    rows = np.arange(len(labels))
    flagged, confident = prune_by_noise_rate(labels, scores)
    others = scores.copy()
    others[rows, labels] = -1.0
    suggested = np.where((confident >= 0) & (confident != labels), confident, np.argmax(others, axis=1))
    self_confidence = scores[rows, labels]
    detail = [
        f"p({names[given]}) {self_confidence[i]:.2f}, p({names[best]}) {scores[i, best]:.2f}"
        for i, (given, best) in enumerate(zip(labels, suggested))
    ]
    return LabelQuality(1.0 - self_confidence, flagged, suggested, detail)


def label_errors(given, scores):
    """Per row and label, how suspect the given value is against what is usual for that label.

    Args:
        given: bool (N, L), the labels given.
        scores: (N, L) probabilities of each label.

    Returns:
        float64 (N, L): 1 - score / (mean score of the label's given rows)
        where the label is given; (score - mean score of its other rows) /
        max(gap between the two means, `MIN_SEPARATION`) where it is not.
        Higher is more suspect; the usual cell is near 0 or below.
    """
    counts = given.sum(axis=0)
    with_label = np.where(counts > 0, (scores * given).sum(axis=0) / np.maximum(counts, 1), 1.0)
    without = np.where(counts < len(given), (scores * ~given).sum(axis=0) / np.maximum(len(given) - counts, 1), 0.0)
    gap = np.maximum(with_label - without, MIN_SEPARATION)
    return np.where(given, 1 - scores / np.maximum(with_label, 1e-12), (scores - without) / gap)


def multilabel_quality(labels, scores, names):
    """Per-label confident learning (missing and extra labels) for multi-hot labels.

    Args:
        labels: (N, L) multi-hot given labels.
        scores: (N, L) out-of-fold label probabilities.
        names: L label names, for the details.

    Returns:
        A `LabelQuality` whose suggestion flips every flagged label of a row
        (its weakest label where none is flagged).
    """
    given = np.asarray(labels) > 0
    scores = np.asarray(scores, dtype=np.float64)
    flip = np.zeros(given.shape, dtype=bool)
    for label in range(given.shape[1]):
        binary = np.stack([1 - scores[:, label], scores[:, label]], axis=1)
        flip[:, label] = prune_by_noise_rate(given[:, label].astype(np.int64), binary)[0]
    errors = label_errors(given, scores)
    flagged = flip.any(axis=1)
    unflagged = np.flatnonzero(~flagged)
    suggestion = flip.copy()
    suggestion[unflagged, np.argmax(errors[unflagged], axis=1)] = True
    detail = [_multilabel_detail(scores[i], flip[i] & ~given[i], flip[i] & given[i], names) for i in range(len(given))]
    return LabelQuality(errors.max(axis=1), flagged, (given ^ suggestion).astype(np.uint8), detail)


def _multilabel_detail(scores, missing, extra, names):
    parts = [f"missing {names[j]} ({scores[j]:.2f})" for j in np.flatnonzero(missing)]
    parts += [f"extra {names[j]} ({scores[j]:.2f})" for j in np.flatnonzero(extra)]
    return "; ".join(parts)


def regression_quality(targets, predictions, names, z_threshold):
    """Standardised residuals; rows beyond `z_threshold` on any target are flagged.

    Args:
        targets: (N, T) given targets.
        predictions: (N, T) out-of-fold predictions.
        names: T target names.
        z_threshold: robust z above which a row is flagged.

    Returns:
        A `LabelQuality` whose suggestion is the prediction.
    """
    targets = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    predictions = np.asarray(predictions, dtype=np.float64).reshape(targets.shape)
    residuals = targets - predictions
    centre = np.median(residuals, axis=0)
    scale = MAD_TO_STD * np.median(np.abs(residuals - centre), axis=0)
    scale = np.where(scale > 0, scale, residuals.std(axis=0) + 1e-12)
    z = np.abs(residuals - centre) / scale
    score = z.max(axis=1)
    worst = z.argmax(axis=1)
    detail = [f"{names[t]}: residual {residuals[i, t]:+.3g} ({z[i, t]:.1f} sd)" for i, t in enumerate(worst)]
    return LabelQuality(score, score > z_threshold, predictions.astype(np.float32), detail)


def label_quality(task, labels, scores, names, z_threshold=3.0):
    """The task's label check on out-of-fold scores (see the module docstring)."""
    if task == "multiclass":
        return multiclass_quality(labels, scores, names)
    if task == "multilabel":
        return multilabel_quality(labels, scores, names)
    return regression_quality(labels, scores, names, z_threshold)
