"""Likely label errors from out-of-fold scores: per-row quality, flags and suggested corrections.

Given each row's out-of-fold scores (from models that never saw the row):

- multiclass: confident learning (Northcutt, Jiang and Chuang, 2021). A class's
  threshold is the mean score of that class over the rows labelled with it;
  a row whose highest class above its threshold is not the given class is
  flagged, with that class as the suggestion. Rows are ranked by
  self-confidence, the score of the given class.
- multilabel: the same, one binary problem per label. A label given but
  scored below the mean score of the rows without it is "extra"; a label not
  given but scored above the mean score of the rows with it is "missing". A
  row is ranked by its weakest label: how far that label's score falls short
  of the label's typical given score, as a fraction of that threshold.
  Labels the fold models did not learn (their positives' mean score within
  `LEARNED_SEPARATION` of their negatives') are not judged: a rare label
  that every model scores near 0 says nothing about any one row, and judging
  it flagged almost every row of the Tux Paint stamps.
- regression: the residual in robust standard units (median and MAD of all
  residuals), per target; the suggestion is the out-of-fold prediction.

All three return a `LabelQuality`: an error score per row (higher = more
likely wrong), a flag, and the suggested labels.
"""

from dataclasses import dataclass

import numpy as np

# MAD times this estimates a normal distribution's standard deviation.
MAD_TO_STD = 1.4826
# A mean of equal scores can round above them; a score this close to its threshold counts as reaching it.
TOLERANCE = 1e-9
LEARNED_SEPARATION = 0.2


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
    """Per-class mean score over the rows labelled with that class (1.0 for an unused class)."""
    num_classes = scores.shape[1]
    counts = np.bincount(labels, minlength=num_classes)
    sums = np.zeros(num_classes)
    np.add.at(sums, labels, scores[np.arange(len(labels)), labels])
    return np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)


def multiclass_quality(labels, scores, names):
    """Confident-learning flags and self-confidence ranks for class-index labels.

    Args:
        labels: int (N,) given classes.
        scores: (N, C) out-of-fold class probabilities.
        names: C class names, for the details.

    Returns:
        A `LabelQuality` whose suggestion is each row's confident class
        (its best other class where it has none).
    """
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    rows = np.arange(len(labels))
    above = scores >= class_thresholds(labels, scores) - TOLERANCE
    confident = np.where(above.any(axis=1), np.argmax(np.where(above, scores, -1.0), axis=1), -1)
    flagged = (confident >= 0) & (confident != labels)
    others = scores.copy()
    others[rows, labels] = -1.0
    suggested = np.where(flagged, confident, np.argmax(others, axis=1))
    self_confidence = scores[rows, labels]
    detail = [
        f"p({names[given]}) {self_confidence[i]:.2f}, p({names[best]}) {scores[i, best]:.2f}"
        for i, (given, best) in enumerate(zip(labels, suggested))
    ]
    return LabelQuality(1.0 - self_confidence, flagged, suggested, detail)


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
    positives, negatives = given.sum(axis=0), (~given).sum(axis=0)
    # Typical score of rows with the label (t1) and typical "not this label" score of rows without it (t0).
    t1 = np.where(positives > 0, (scores * given).sum(axis=0) / np.maximum(positives, 1), 1.0)
    t0 = np.where(negatives > 0, ((1 - scores) * ~given).sum(axis=0) / np.maximum(negatives, 1), 1.0)
    learned = t1 - (1 - t0) >= LEARNED_SEPARATION
    missing = ~given & (scores >= t1 - TOLERANCE) & ((1 - scores < t0) | (scores > 0.5)) & learned
    extra = given & (1 - scores >= t0 - TOLERANCE) & ((scores < t1) | (scores < 0.5)) & learned
    # Shortfall of each label's self-confidence below its class's typical one, relative to it.
    shortfall = np.where(given, (t1 - scores) / np.maximum(t1, 1e-6), (t0 - (1 - scores)) / np.maximum(t0, 1e-6))
    shortfall = np.where(learned, shortfall, -1.0)
    weakest = np.argmax(shortfall, axis=1)
    flip = missing | extra
    none_flagged = ~flip.any(axis=1)
    flip[np.flatnonzero(none_flagged), weakest[none_flagged]] = True
    suggested = (given ^ flip).astype(np.uint8)
    detail = [_multilabel_detail(scores[i], missing[i], extra[i], names) for i in range(len(given))]
    score = np.clip(shortfall[np.arange(len(given)), weakest], 0.0, None)
    return LabelQuality(score, (missing | extra).any(axis=1), suggested, detail)


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
