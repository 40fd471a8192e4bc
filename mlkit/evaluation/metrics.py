"""Metrics for multilabel, multiclass and regression predictions.

Pure NumPy and vectorised: a full multilabel report on iMet's size (100,000
images x 1,103 labels) with average precision and ROC AUC takes about a
second (see benchmarks/decisions_speed.py).

Definitions are the standard ones (the COCO report's equations 1-9 swap the precision
and recall denominators; these do not):

    precision = TP / (TP + FP)      recall = TP / (TP + FN)
    F-beta    = (1 + beta^2) TP / ((1 + beta^2) TP + beta^2 FN + FP)

- micro: TP, FP and FN summed over every (image, label) pair, then the ratios.
- macro: the ratios per label, then their mean over the labels with at least
  one positive. Labels without positives have no recall; averaging them in as
  0 (or as 1) would say more about the split than about the model, so they are
  left out and counted in `excluded`.
- samples (per image): the ratios per image, then their mean over all images,
  exactly as scikit-learn's `average="samples"` with `zero_division=0`: an image
  whose ratio is 0/0 scores 0. Images without labels are therefore kept and
  score 0 recall; the report counts them.
- map: mean average precision over labels with at least one positive
  (scikit-learn's `average_precision_score`, ties grouped).
- auc: mean ROC AUC over labels that have both positives and negatives
  (scikit-learn's `roc_auc_score`, ties counted half).

Nothing returns NaN: undefined per-label values are masked in arrays and None
in reports, and every denominator that can be zero is guarded.
"""

from typing import NamedTuple

import numpy as np

from mlkit.errors import MlkitError

# The iMet report (tables 3 and 4) ranks labels "with more than 20 examples in the test set".
DEFAULT_MIN_SUPPORT = 20
# Columns sorted together: 128 x 100,000 float32 keys is 51 MB, an eighth of iMet's scores.
_BLOCK_COLUMNS = 128
# Rows copied per step when transposing a column block; small enough to stay in cache.
_ROW_STEP = 1024
# Elements handled per step by row-chunked loops (16 MB of float32).
CHUNK_ELEMENTS = 1 << 22


def row_chunks(n_rows, n_cols):
    """Row slices covering `n_rows` rows with about CHUNK_ELEMENTS elements each.

    Args:
        n_rows: number of rows.
        n_cols: number of columns per row.

    Returns:
        A list of slices.
    """
    step = max(1, CHUNK_ELEMENTS // max(n_cols, 1))
    return [slice(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]


def as_score_matrix(scores, name="scores") -> np.ndarray:
    """Scores as a 2-D float32 or float64 array (other dtypes become float64).

    Args:
        scores: array-like (images x labels).
        name: what to call it in errors. Defaults to "scores".

    Returns:
        The array, not copied when it is already float32 or float64.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise MlkitError(f"{name} must be a 2-D array (images x labels); got shape {scores.shape}")
    if scores.dtype not in (np.float32, np.float64):
        scores = scores.astype(np.float64)
    return scores


def as_multi_hot(labels, shape=None, name="labels") -> np.ndarray:
    """A 0/1 matrix as a boolean array, without copying uint8 or int8 input.

    Args:
        labels: array-like (images x labels) holding only 0 and 1.
        shape: the shape it must have, or None for any 2-D shape. Defaults to None.
        name: what to call it in errors. Defaults to "labels".

    Returns:
        A bool array of the same shape.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise MlkitError(f"{name} must be a 2-D multi-hot array (images x labels); got shape {labels.shape}")
    if shape is not None and labels.shape != tuple(shape):
        raise MlkitError(f"{name} has shape {labels.shape} but the scores have shape {tuple(shape)}; "
                         "pass one row per image and one column per label for both")
    if labels.dtype == bool:
        return labels
    if labels.dtype.kind in "iu" and labels.size and (labels.min() < 0 or labels.max() > 1):
        raise MlkitError(f"{name} must hold only 0 and 1; found values from {labels.min()} to {labels.max()}")
    if labels.dtype in (np.uint8, np.int8):
        return labels.view(bool)
    if labels.dtype.kind not in "iu" and np.any((labels != 0) & (labels != 1)):
        raise MlkitError(f"{name} must hold only 0 and 1; binarise them (e.g. labels >= 0.5) first")
    return labels.astype(bool)


def positives_by_label(labels):
    """Coordinates of the positive entries, grouped by label.

    Args:
        labels: bool (N, L) multi-hot matrix.

    Returns:
        (rows, cols): int64 arrays, sorted by column and by row within a column.
    """
    # flatnonzero + divmod is ten times faster than 2-D np.nonzero on large matrices.
    rows, cols = np.divmod(np.flatnonzero(labels), labels.shape[1])
    order = np.argsort(cols, kind="stable")
    return rows[order], cols[order]


def sortable_keys(values, in_place=False):
    """Unsigned integer keys that sort and compare like the float values.

    float32 becomes uint32 and anything else float64 then uint64: the sign bit
    is set on non-negative values and every bit flipped on negative ones, and
    -0.0 becomes +0.0. Integer sorts are about twice as fast as float sorts in
    NumPy, and keys make the histogram bins used by the decision rules exact.

    Args:
        values: array of scores.
        in_place: overwrite `values` (a float32 or float64 array the caller
            owns) with the keys, saving a copy. Defaults to False.

    Returns:
        An array of keys with the same shape.
    """
    values = np.asarray(values)
    if values.dtype != np.float32 and values.dtype != np.float64:
        values, in_place = values.astype(np.float64), True
    values = values if in_place else np.array(values, order="C")
    uint = np.uint32 if values.dtype == np.float32 else np.uint64
    width = uint(8 * values.itemsize - 1)
    bits = values.view(uint)
    sign = uint(1) << width
    inf_bits = np.array(np.inf, values.dtype).view(uint)
    if bits.size and bits.max() > inf_bits:
        if np.isnan(values).any():
            raise MlkitError("scores contain NaN; check the model's outputs (a diverged run?) before evaluating")
        values += 0.0  # -0.0 becomes +0.0, so equal scores get equal keys
        bits ^= (bits >> width) * (sign - uint(1))
    bits ^= sign
    return bits


def keys_to_values(keys, dtype):
    """The inverse of `sortable_keys`.

    Args:
        keys: keys from `sortable_keys`.
        dtype: the scores' dtype (float32 or float64).

    Returns:
        The float values.
    """
    dtype = np.dtype(np.float32 if np.dtype(dtype) == np.float32 else np.float64)
    uint = np.uint32 if dtype == np.float32 else np.uint64
    keys = np.asarray(keys, dtype=uint)
    sign = uint(1) << uint(8 * dtype.itemsize - 1)
    bits = np.where(keys >= sign, keys ^ sign, ~keys)
    return bits.view(dtype)


class RankCounts(NamedTuple):
    """Where every positive sits among its label's scores.

    One entry per positive (image, label) pair, grouped by label and ascending
    by score within a label. Everything rank-based (AP, ROC AUC, the per-label
    F-beta threshold) follows from these counts without sorting again.
    """

    label: np.ndarray   # label index of each positive
    key: np.ndarray     # its score, as a sortable key
    ge: np.ndarray      # images whose score for that label is >= this one
    gt: np.ndarray      # images scoring > this one
    pos_ge: np.ndarray  # positives of that label scoring >= this one
    pos_gt: np.ndarray  # positives scoring > this one
    n_pos: np.ndarray   # (L,) positives per label
    n_images: int


def rank_counts(labels, scores, positives=None):
    """Counts how many images score at or above each positive, per label.

    Sorts each label's column once, as integer keys, in blocks of columns
    transposed to be contiguous; labels without positives are not sorted.

    Args:
        labels: (N, L) multi-hot.
        scores: (N, L) scores.
        positives: (rows, cols) from `positives_by_label`, when already known.
            Defaults to None.

    Returns:
        RankCounts.
    """
    scores = as_score_matrix(scores)
    if scores.size and np.isnan(np.min(scores)):
        raise MlkitError("scores contain NaN; check the model's outputs (a diverged run?) before evaluating")
    n_images, n_labels = scores.shape
    rows, cols = positives if positives is not None else positives_by_label(as_multi_hot(labels, scores.shape))
    n_pos = np.bincount(cols, minlength=n_labels)
    keys = sortable_keys(scores[rows, cols], in_place=True)
    order = np.lexsort((keys, cols))
    cols, keys = cols[order], keys[order]
    starts = np.concatenate(([0], np.cumsum(n_pos)))
    ge, gt, pos_ge, pos_gt = (np.empty(len(keys), np.int64) for _ in range(4))
    for j0 in range(0, n_labels, _BLOCK_COLUMNS):
        j1 = min(j0 + _BLOCK_COLUMNS, n_labels)
        active = np.flatnonzero(n_pos[j0:j1])
        if not active.size:
            continue
        for column, j in zip(_sorted_column_keys(scores, j0, j1, active), active + j0):
            part = slice(starts[j], starts[j + 1])
            pos = keys[part]
            ge[part] = n_images - np.searchsorted(column, pos, "left")
            gt[part] = n_images - np.searchsorted(column, pos, "right")
            pos_ge[part] = len(pos) - np.searchsorted(pos, pos, "left")
            pos_gt[part] = len(pos) - np.searchsorted(pos, pos, "right")
    return RankCounts(cols, keys, ge, gt, pos_ge, pos_gt, n_pos, n_images)


def _sorted_column_keys(scores, j0, j1, active):
    """Sorted keys of columns j0:j1 (only the `active` ones), one row per column."""
    block = np.empty((j1 - j0, scores.shape[0]), scores.dtype)
    # Copying row slabs keeps reads and writes cache-friendly: twice as fast as one big .T copy.
    for r0 in range(0, scores.shape[0], _ROW_STEP):
        block[:, r0:r0 + _ROW_STEP] = scores[r0:r0 + _ROW_STEP, j0:j1].T
    keys = sortable_keys(block, in_place=True)
    if len(active) < j1 - j0:
        keys = keys[active]
    keys.sort(axis=1)
    return keys


def average_precision_per_label(labels, scores, counts=None):
    """Average precision of each label, as scikit-learn's average_precision_score.

    AP = sum over positives of precision at that positive's score, divided by
    the number of positives (tied scores share one threshold).

    Args:
        labels: (N, L) multi-hot.
        scores: (N, L) scores.
        counts: RankCounts already computed for these arrays. Defaults to None.

    Returns:
        A float64 masked array (L,): masked (data 0.0, never NaN) where a label
        has no positives. `.mean()` averages the defined labels only.
    """
    counts = counts if counts is not None else rank_counts(labels, scores)
    n_labels = len(counts.n_pos)
    precision_sum = np.bincount(counts.label, counts.pos_ge / counts.ge, minlength=n_labels)
    ap = precision_sum / np.maximum(counts.n_pos, 1)
    return np.ma.masked_array(ap, mask=counts.n_pos == 0)


def roc_auc_per_label(labels, scores, counts=None):
    """ROC AUC of each label, as scikit-learn's roc_auc_score.

    AUC = the share of (positive, negative) pairs ranked correctly, ties
    counting half (the Mann-Whitney U statistic).

    Args:
        labels: (N, L) multi-hot.
        scores: (N, L) scores.
        counts: RankCounts already computed for these arrays. Defaults to None.

    Returns:
        A float64 masked array (L,): masked (data 0.0) where a label lacks
        positives or negatives.
    """
    counts = counts if counts is not None else rank_counts(labels, scores)
    n_labels, n_pos = len(counts.n_pos), counts.n_pos
    n_neg = counts.n_images - n_pos
    negatives_below = (counts.n_images - counts.ge) - (n_pos[counts.label] - counts.pos_ge)
    negatives_tied = (counts.ge - counts.gt) - (counts.pos_ge - counts.pos_gt)
    pairs_won = np.bincount(counts.label, negatives_below + 0.5 * negatives_tied, minlength=n_labels)
    defined = (n_pos > 0) & (n_neg > 0)
    auc = np.where(defined, pairs_won / np.maximum(n_pos * n_neg, 1), 0.0)
    return np.ma.masked_array(auc, mask=~defined)


def label_curve_counts(labels_col, scores_col):
    """Cumulative counts at each distinct threshold of one label, for curves.

    Args:
        labels_col: (N,) 0/1 truth of one label.
        scores_col: (N,) its scores.

    Returns:
        (thresholds, tp, fp): descending distinct scores and, for each, how many
        positives and negatives score at or above it.
    """
    order = np.argsort(-np.asarray(scores_col, np.float64), kind="stable")
    scores_sorted = np.asarray(scores_col, np.float64)[order]
    truth = np.asarray(labels_col, bool)[order]
    last_of_tie = np.r_[scores_sorted[1:] != scores_sorted[:-1], True]
    tp = np.cumsum(truth)[last_of_tie]
    fp = np.cumsum(~truth)[last_of_tie]
    return scores_sorted[last_of_tie], tp, fp


def _divide(numerator, denominator):
    """numerator / denominator as float64, 0 where the denominator is 0."""
    numerator = np.asarray(numerator, np.float64)
    denominator = np.asarray(denominator, np.float64)
    return np.divide(numerator, denominator, out=np.zeros(np.broadcast(numerator, denominator).shape),
                     where=denominator > 0)


def _ratios(tp, predicted, true):
    """Precision, recall, F1 and F2 from counts, 0 where a ratio is 0/0."""
    tp = np.asarray(tp, np.float64)
    return {
        "precision": _divide(tp, predicted),
        "recall": _divide(tp, true),
        "f1": _divide(2 * tp, np.add(true, predicted)),
        "f2": _divide(5 * tp, 4 * np.asarray(true, np.float64) + predicted),
    }


def _mean_ratios(ratios, keep=None):
    """The mean of each ratio (over `keep` when given), as floats; None when nothing is kept."""
    if keep is not None and not np.any(keep):
        return dict.fromkeys(ratios)
    return {name: float(np.mean(value if keep is None else value[keep])) for name, value in ratios.items()}


class DecisionCounts(NamedTuple):
    """TP, predicted and true counts per label and per image."""

    tp_label: np.ndarray
    predicted_label: np.ndarray
    true_label: np.ndarray
    tp_image: np.ndarray
    predicted_image: np.ndarray
    true_image: np.ndarray


def decision_counts(decisions, positives, shape):
    """Counts TP, predicted and true labels per label and per image.

    TP comes from looking up the decisions at the (few) positive entries, so
    the only full passes are two sums over the decisions.

    Args:
        decisions: bool (N, L) decisions.
        positives: (rows, cols) of the true labels, from `positives_by_label`.
        shape: (N, L).

    Returns:
        DecisionCounts.
    """
    rows, cols = positives
    n_images, n_labels = shape
    hit = decisions[rows, cols]
    predicted_label = np.zeros(n_labels, np.int64)
    predicted_image = np.empty(n_images, np.int64)
    for part in row_chunks(n_images, n_labels):
        predicted_label += decisions[part].sum(axis=0, dtype=np.int64)
        predicted_image[part] = decisions[part].sum(axis=1, dtype=np.int64)
    return DecisionCounts(
        np.bincount(cols[hit], minlength=n_labels), predicted_label, np.bincount(cols, minlength=n_labels),
        np.bincount(rows[hit], minlength=n_images), predicted_image, np.bincount(rows, minlength=n_images),
    )


def multilabel_report(labels, decisions, scores=None, label_names=None, min_support=DEFAULT_MIN_SUPPORT):
    """Every multilabel metric for one set of decisions.

    Args:
        labels: (N, L) multi-hot truth.
        decisions: (N, L) 0/1 decisions (from a decision rule).
        scores: (N, L) scores, for "map", "auc" and the per-label AP/AUC; without
            them those are None. Defaults to None.
        label_names: L names. Defaults to None ("label_0", "label_1", ...).
        min_support: the fewest test positives a label needs to appear in
            "best_labels"/"worst_labels". Defaults to 20 (the iMet report).

    Returns:
        A dict with stable keys: "micro", "macro", "samples" (each "precision",
        "recall", "f1", "f2"); "map"; "auc"; "hamming"; "subset_accuracy";
        "cardinality" {"true", "predicted"} (mean labels per image);
        "excluded" {"labels_without_positives", "images_without_labels",
        "labels_without_both_classes"} (counts) and "excluded_from" (what each
        was left out of); "per_label" (one dict per label: name, support, ap,
        auc, f1, precision, recall; None where undefined); "best_labels" and
        "worst_labels" (from `best_worst_labels`); "n_images", "n_labels".

    Example:
        report = multilabel_report(y_test, rule.apply(scores), scores, names)
        print(report["micro"]["f1"], report["map"])
    """
    labels = as_multi_hot(labels)
    decisions = as_multi_hot(decisions, labels.shape, "decisions")
    n_images, n_labels = labels.shape
    names = _label_names(label_names, n_labels)
    positives = positives_by_label(labels)
    counts = decision_counts(decisions, positives, labels.shape)
    report = _count_metrics(counts, n_images, n_labels)
    ap = auc = None
    if scores is not None:
        scores = as_score_matrix(scores)
        if scores.shape != labels.shape:
            raise MlkitError(f"scores have shape {scores.shape} but labels {labels.shape}; pass one score per label")
        ranks = rank_counts(labels, scores, positives)
        ap, auc = average_precision_per_label(labels, scores, ranks), roc_auc_per_label(labels, scores, ranks)
        report["map"] = float(ap.mean()) if ap.count() else None
        report["auc"] = float(auc.mean()) if auc.count() else None
    report["per_label"] = _per_label_rows(names, counts, ap, auc)
    report["best_labels"], report["worst_labels"] = best_worst_labels(report, n=10, min_support=min_support)
    return report


def _count_metrics(counts, n_images, n_labels):
    """The metrics that need only the decision counts."""
    has_positives = counts.true_label > 0
    mismatches = counts.predicted_image + counts.true_image - 2 * counts.tp_image
    cells = max(n_images * n_labels, 1)
    return {
        "micro": _mean_ratios(_ratios(counts.tp_label.sum(), counts.predicted_label.sum(), counts.true_label.sum())),
        "macro": _mean_ratios(_ratios(counts.tp_label, counts.predicted_label, counts.true_label), has_positives),
        "samples": (_mean_ratios(_ratios(counts.tp_image, counts.predicted_image, counts.true_image))
                    if n_images else dict.fromkeys(("precision", "recall", "f1", "f2"))),
        "map": None,
        "auc": None,
        "hamming": float(mismatches.sum() / cells),
        "subset_accuracy": float(np.mean(mismatches == 0)) if n_images else None,
        "cardinality": {
            "true": float(counts.true_image.sum() / max(n_images, 1)),
            "predicted": float(counts.predicted_image.sum() / max(n_images, 1)),
        },
        "excluded": {
            "labels_without_positives": int(np.sum(~has_positives)),
            "images_without_labels": int(np.sum(counts.true_image == 0)),
            "labels_without_both_classes": int(np.sum(~has_positives | (counts.true_label == n_images))),
        },
        "excluded_from": {
            "labels_without_positives": "macro precision/recall/F1/F2, map and the best/worst labels",
            "images_without_labels": "nothing: they count in micro, hamming and subset accuracy, and score 0 "
                                     "in samples precision/recall/F (scikit-learn's zero_division=0)",
            "labels_without_both_classes": "auc",
        },
        "n_images": int(n_images),
        "n_labels": int(n_labels),
    }


def _label_names(label_names, n_labels):
    """The given names as strings, or label_0, label_1, ...; checks the count."""
    if label_names is None:
        return [f"label_{j}" for j in range(n_labels)]
    names = [str(name) for name in label_names]
    if len(names) != n_labels:
        raise MlkitError(f"got {len(names)} label names for {n_labels} label columns; pass one name per column")
    return names


def _per_label_rows(names, counts, ap, auc):
    """One dict per label; None for anything undefined (never NaN)."""
    ratios = _ratios(counts.tp_label, counts.predicted_label, counts.true_label)
    rows = []
    for j, name in enumerate(names):
        defined = counts.true_label[j] > 0
        rows.append({
            "name": name,
            "support": int(counts.true_label[j]),
            "ap": float(ap[j]) if ap is not None and not ap.mask[j] else None,
            "auc": float(auc[j]) if auc is not None and not auc.mask[j] else None,
            "f1": float(ratios["f1"][j]) if defined else None,
            "precision": float(ratios["precision"][j]) if counts.predicted_label[j] else None,
            "recall": float(ratios["recall"][j]) if defined else None,
        })
    return rows


def best_worst_labels(report, n=10, min_support=DEFAULT_MIN_SUPPORT):
    """The best and worst labels by ROC AUC (by F1 when there are no scores).

    The iMet report's tables 3 and 4: only labels with at least `min_support`
    positives in the evaluated set are ranked, since a rare label's AUC is noise.

    Args:
        report: a `multilabel_report` result.
        n: how many of each. Defaults to 10.
        min_support: the fewest positives a label needs to be ranked. Defaults to 20.

    Returns:
        (best, worst): lists of per-label dicts, best first and worst first.
    """
    rows = report["per_label"]
    metric = "auc" if any(row["auc"] is not None for row in rows) else "f1"
    ranked = [row for row in rows if row["support"] >= min_support and row[metric] is not None]
    best = sorted(ranked, key=lambda row: (-row[metric], row["name"]))[:n]
    worst = sorted(ranked, key=lambda row: (row[metric], row["name"]))[:n]
    return best, worst


def topk_best_possible(labels, k):
    """The "best possible" row of the COCO report's table 2: a perfect ranker forced to pick k labels.

    With k labels per image, an image with fewer than k true labels must get
    false positives and one with more must lose true ones, so even a perfect
    model cannot reach 100%. The oracle ranks every true label above every
    false one. Micro and samples values do not depend on which labels it
    picks; macro values do, so it picks the rarest of an image's true labels
    first and fills the remaining slots with the most frequent labels (where a
    false positive costs a label's precision least).

    Args:
        labels: (N, L) multi-hot truth.
        k: labels per image.

    Returns:
        {"k", "micro", "macro", "samples"} with the same inner keys as
        `multilabel_report`.
    """
    labels = as_multi_hot(labels)
    n_images, n_labels = labels.shape
    if int(k) != k or k < 1:
        raise MlkitError(f"k must be a positive whole number of labels; got {k!r}")
    k = min(int(k), n_labels)
    support = labels.sum(axis=0, dtype=np.int64)
    by_frequency = np.empty(n_labels, np.int32)
    by_frequency[np.argsort(support, kind="stable")] = np.arange(n_labels)
    decisions = np.zeros(labels.shape, bool)
    for part in row_chunks(n_images, n_labels):
        # True labels score L..2L-1 (rarer higher), false ones 0..L-1 (more frequent higher): no ties.
        oracle = np.where(labels[part], 2 * n_labels - 1 - by_frequency, by_frequency)
        top = np.argpartition(-oracle, k - 1, axis=1)[:, :k] if k < n_labels else np.arange(n_labels)[None, :]
        np.put_along_axis(decisions[part], np.broadcast_to(top, (oracle.shape[0], k)), True, axis=1)
    report = multilabel_report(labels, decisions)
    return {"k": k, "micro": report["micro"], "macro": report["macro"], "samples": report["samples"]}


def multiclass_report(labels_idx, scores, label_names=None):
    """Accuracy, macro precision/recall/F1 and the confusion matrix.

    Args:
        labels_idx: (N,) true class indices (a one-hot (N, C) array is accepted).
        scores: (N, C) scores, decided by argmax, or (N,) predicted indices.
        label_names: C class names. Defaults to None ("label_0", ...).

    Returns:
        {"accuracy", "macro_f1", "macro" {"precision","recall","f1"},
        "confusion_matrix" (list of lists, rows = true class, columns =
        predicted), "label_names", "per_label" (name, support, precision,
        recall, f1), "excluded" {"classes_without_examples"}, "n_images"}.
        Macro values average the classes with at least one true example.
    """
    truth = np.asarray(labels_idx)
    truth = truth.argmax(axis=1) if truth.ndim == 2 else truth
    scores = np.asarray(scores)
    predicted = scores.argmax(axis=1) if scores.ndim == 2 else scores
    n_classes = len(label_names) if label_names is not None else (
        scores.shape[1] if scores.ndim == 2 else int(max(truth.max(initial=0), predicted.max(initial=0))) + 1)
    names = _label_names(label_names, n_classes)
    truth, predicted = _class_indices(truth, n_classes, "labels"), _class_indices(predicted, n_classes, "predictions")
    if truth.shape != predicted.shape:
        raise MlkitError(f"got {len(truth)} labels but {len(predicted)} predictions; pass one of each per image")
    confusion = np.bincount(truth * n_classes + predicted, minlength=n_classes * n_classes)
    confusion = confusion.reshape(n_classes, n_classes)
    tp, true, pred = np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0)
    ratios = _ratios(tp, pred, true)
    macro = _mean_ratios({key: ratios[key] for key in ("precision", "recall", "f1")}, true > 0)
    return {
        "accuracy": float(tp.sum() / max(len(truth), 1)),
        "macro_f1": macro["f1"],
        "macro": macro,
        "confusion_matrix": confusion.tolist(),
        "label_names": names,
        "per_label": [{"name": name, "support": int(true[c]), "precision": float(ratios["precision"][c]),
                       "recall": float(ratios["recall"][c]), "f1": float(ratios["f1"][c])}
                      for c, name in enumerate(names)],
        "excluded": {"classes_without_examples": int(np.sum(true == 0))},
        "n_images": int(len(truth)),
    }


def _class_indices(values, n_classes, name):
    """Checks that `values` are whole class indices in [0, n_classes)."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise MlkitError(f"{name} must be one class index per image; got shape {values.shape}")
    as_int = values.astype(np.int64)
    if values.size and (np.any(as_int != values) or as_int.min() < 0 or as_int.max() >= n_classes):
        raise MlkitError(f"{name} must be class indices from 0 to {n_classes - 1}; "
                         f"found values from {values.min()} to {values.max()}")
    return as_int


def regression_report(targets, predictions, target_names=None):
    """Mean absolute error and root mean squared error, per target and averaged.

    Values are in the units given: callers unscale predictions and targets
    (e.g. back to years) before calling this.

    Args:
        targets: (N,) or (N, T) true values.
        predictions: the same shape.
        target_names: T names. Defaults to None ("target_0", ...).

    Returns:
        {"mae", "rmse" (each the mean over targets, as scikit-learn's
        uniform_average), "per_target" [{"name", "mae", "rmse"}], "n_images"}.
    """
    targets = np.asarray(targets, np.float64)
    predictions = np.asarray(predictions, np.float64)
    targets = targets.reshape(len(targets), -1)
    predictions = predictions.reshape(len(predictions), -1)
    if targets.shape != predictions.shape:
        raise MlkitError(f"targets have shape {targets.shape} but predictions {predictions.shape}; "
                         "pass one prediction per target")
    if not targets.size:
        raise MlkitError("no targets to evaluate; the evaluated split is empty")
    if not (np.isfinite(targets).all() and np.isfinite(predictions).all()):
        raise MlkitError("targets or predictions contain NaN or infinity; drop those rows or fix the model")
    errors = predictions - targets
    mae = np.abs(errors).mean(axis=0)
    rmse = np.sqrt((errors ** 2).mean(axis=0))
    names = [f"target_{t}" for t in range(targets.shape[1])] if target_names is None else [str(n) for n in target_names]
    if len(names) != targets.shape[1]:
        raise MlkitError(f"got {len(names)} target names for {targets.shape[1]} targets; pass one per target")
    return {
        "mae": float(mae.mean()),
        "rmse": float(rmse.mean()),
        "per_target": [{"name": name, "mae": float(mae[t]), "rmse": float(rmse[t])} for t, name in enumerate(names)],
        "n_images": int(len(targets)),
    }
