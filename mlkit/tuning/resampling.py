"""Rebalancing a training split: per-class caps, oversampling, balanced and positive-label weights.

The methods for imbalanced data (capping large classes, oversampling small
ones, inverse-frequency weights) follow the plankton report (docs/references.md).
"""

import numpy as np

from mlkit.errors import MlkitError

# Positive weights for wbce are capped: a label seen once in 10,000 rows would
# otherwise get a weight of 10,000 and dominate every gradient.
MAX_POS_WEIGHT = 100.0


def train_cardinality(labels):
    """Mean number of labels per training row (multilabel), for the cardinality rule."""
    return float(np.asarray(labels).sum(axis=1).mean()) if len(labels) else 0.0


def class_counts(labels, task):
    """Rows per class: multi-hot columns summed, or class indices counted."""
    if task == "multilabel":
        return np.asarray(labels).sum(axis=0).astype(np.int64)
    return np.bincount(np.asarray(labels), minlength=int(np.max(labels)) + 1 if len(labels) else 0)


def cap_rows(labels, task, cap, rng):
    """Positions of training rows kept when each class is capped at `cap` rows.

    Multiclass: a random `cap` rows of each larger class. Multilabel: rows are
    visited in random order and kept while at least one of their labels is
    still under the cap (rows with no label are kept), so rare labels keep
    every row even when they co-occur with a frequent one.
    """
    order = rng.permutation(len(labels))
    if task == "multiclass":
        kept = [order[labels[order] == c][:cap] for c in np.unique(labels)]
        return np.sort(np.concatenate(kept)) if kept else order[:0]
    seen = np.zeros(labels.shape[1], dtype=np.int64)
    kept = []
    for position in order:
        positive = labels[position] > 0
        if not positive.any() or (seen[positive] < cap).any():
            kept.append(position)
            seen += positive
    return np.sort(np.asarray(kept, dtype=np.int64))


def oversample_rows(labels, task, target, rng):
    """Extra row positions (drawn with replacement) lifting each class to `target` rows.

    For multilabel data a row drawn for a rare label also counts for its other
    labels; labels are topped up rarest first, so the result is approximate.
    """
    counts = class_counts(labels, task).astype(np.int64)
    extra = []
    for label in np.argsort(counts):
        if counts[label] == 0 or counts[label] >= target:
            continue
        holders = np.flatnonzero(labels[:, label] > 0 if task == "multilabel" else labels == label)
        drawn = rng.choice(holders, size=target - counts[label], replace=True)
        extra.append(drawn)
        counts += class_counts(labels[drawn], task) if task == "multilabel" else np.bincount(
            labels[drawn], minlength=len(counts))
    return np.concatenate(extra) if extra else np.zeros(0, dtype=np.int64)


def resample(labels, task, cap=0, oversample=0, seed=0):
    """Training row positions after capping and oversampling (seeded).

    Raises:
        MlkitError: for regression targets, which have no classes to balance.
    """
    positions = np.arange(len(labels))
    if not (cap or oversample):
        return positions
    if task == "regression":
        raise MlkitError("--cap and --oversample balance classes; a regression cache has none: drop them")
    rng = np.random.default_rng(seed)
    if cap:
        positions = cap_rows(labels, task, cap, rng)
    if oversample:
        positions = np.sort(np.concatenate([positions, positions[oversample_rows(labels[positions], task, oversample, rng)]]))
    return positions


def balanced_weights(labels, task):
    """Per-row weights inversely proportional to class frequency, mean 1.

    A multilabel row's weight averages its labels' inverse frequencies; rows
    with no label get the mean weight.
    """
    if task == "regression":
        raise MlkitError("--sample-weights balanced needs classes; a regression cache has none: drop it")
    counts = np.maximum(class_counts(labels, task), 1).astype(np.float64)
    inverse = len(labels) / (len(counts) * counts)
    if task == "multiclass":
        weights = inverse[labels]
    else:
        positive = labels > 0
        totals = positive.sum(axis=1)
        weights = (positive * inverse).sum(axis=1) / np.maximum(totals, 1)
        weights[totals == 0] = weights[totals > 0].mean() if (totals > 0).any() else 1.0
    return (weights / weights.mean()).astype("float32")


def positive_weights(labels):
    """Per-label negatives/positives ratio for wbce, capped at MAX_POS_WEIGHT."""
    positives = np.asarray(labels).sum(axis=0).astype(np.float64)
    negatives = len(labels) - positives
    ratio = np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0)
    return np.clip(ratio, 1.0, MAX_POS_WEIGHT).astype("float32")
