"""Label decisions: turning scores into labels, fitted once and then frozen.

A rule is written as a short spec and fitted on validation scores; its
thresholds then travel with the exported model (`Rule.to_dict`,
`rule_from_dict`) and are applied unchanged to new images.

    threshold:T    every label scoring >= T (the COCO report, eq. 10)
    cardinality    one global tau so that the mean number of predicted labels
                   per image equals the training label cardinality (the COCO report,
                   eqs. 11-12; "PCut")
    fbeta:B        the global tau that maximises micro F-beta (F2 in the iMet report)
    per-class:B    one tau per label, maximising that label's F-beta; labels
                   with too few validation positives use the fbeta:B tau
    topk:K         the K highest-scoring labels of every image
    rank           each image's true number of labels (the COCO report's per-image
                   k): needs the truth, so an upper bound, never deployable
    argmax         multiclass: the highest-scoring class
    identity       regression: the predictions themselves

Fitting is exact and vectorised. Global thresholds come from a histogram of
the scores' bit patterns (2^20 bins, counted in row chunks) followed by an
exact search inside the few bins that can hold the optimum, so iMet's 110
million scores are never fully sorted. Thresholds are always a score seen
while fitting and labels are decided by `score >= tau`.

Example:
    rule = parse_rule("cardinality").fit(val_scores, train_cardinality=3.9)
    decisions = rule.apply(test_scores)          # uint8 (N, L)
    saved = json.dumps(rule.to_dict())
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mlkit.errors import MlkitError
from mlkit.evaluation.metrics import (
    as_multi_hot,
    as_score_matrix,
    keys_to_values,
    positives_by_label,
    rank_counts,
    row_chunks,
    sortable_keys,
)

RULE_FORMS = {
    "threshold:T": "every label whose score is at least T (e.g. threshold:0.5)",
    "cardinality": "one threshold, fitted so that images get as many labels on average as the training "
                   "images have (the COCO report, eqs. 11-12)",
    "fbeta:B": "one threshold, fitted to maximise F-beta over all labels (fbeta:2 favours recall, as iMet's F2)",
    "per-class:B": "one threshold per label, each maximising that label's F-beta; labels with too few "
                   "validation positives use the fbeta:B threshold",
    "topk:K": "the K highest-scoring labels of every image (e.g. topk:3)",
    "rank": "each image's true number of labels; it needs the answers, so it is an upper bound, never deployable",
    "argmax": "multiclass: the one highest-scoring class",
    "identity": "regression: the predictions as they are",
}
# Rules whose thresholds come from fitting on validation scores.
FITTED_KINDS = ("cardinality", "fbeta", "per-class")
# Rules an exported model applies (mlkit.layers.LabelDecision); "rank" needs the true labels and
# never ships.
DEPLOYABLE_KINDS = ("threshold", "cardinality", "fbeta", "per-class", "topk", "argmax")
DEFAULT_MIN_POSITIVES = 5
# Bins in the score histogram: 8 MB of counts, and about 100 scores per bin on iMet's size.
_HISTOGRAM_BITS = 20


class DecisionRuleError(MlkitError, ValueError):
    """A decision rule spec, option or saved rule that cannot be used."""


def _valid_forms():
    return "; ".join(RULE_FORMS)


class _Histogram(NamedTuple):
    """Counts of sortable score keys in 2^shift-wide bins starting at `base` (the smallest key)."""

    counts: np.ndarray
    base: int
    top: int
    shift: int
    key_dtype: type

    def bins(self, keys, in_place=False):
        """The bin of each key (overwriting `keys` when in_place)."""
        keys = keys if in_place else keys.copy()
        keys -= self.key_dtype(self.base)
        keys >>= self.key_dtype(self.shift)
        return keys.astype(np.intp, copy=False) if keys.dtype == np.uint64 else keys

    def key_range(self, lo_bin, hi_bin):
        """The smallest and largest key (inclusive) of bins lo_bin..hi_bin."""
        return self.base + (lo_bin << self.shift), min(self.base + ((hi_bin + 1) << self.shift) - 1, self.top)

    def count_at_or_above(self, counts=None):
        """counts summed from each bin to the top, with a trailing 0 (len = bins + 1)."""
        counts = self.counts if counts is None else counts
        return np.concatenate((np.cumsum(counts[::-1])[::-1], [0]))


def _key_histogram(scores):
    """Histogram of all scores' keys, in row chunks so memory stays small."""
    lowest, highest = np.min(scores), np.max(scores)
    if np.isnan(lowest) or np.isnan(highest):
        raise DecisionRuleError("scores contain NaN; check the model's outputs before fitting a decision rule")
    lo, hi = (int(key) for key in sortable_keys(np.array([lowest, highest], scores.dtype)))
    shift = max(0, (hi - lo).bit_length() - _HISTOGRAM_BITS)
    histogram = _Histogram(None, lo, hi, shift, np.uint32 if scores.dtype == np.float32 else np.uint64)
    n_bins = ((hi - lo) >> shift) + 1
    counts = np.zeros(n_bins, np.int64)
    for part in row_chunks(*scores.shape):
        counts += np.bincount(histogram.bins(sortable_keys(scores[part]), in_place=True).ravel(), minlength=n_bins)
    return histogram._replace(counts=counts)


def _gather_keys(scores, lo_key, hi_key):
    """All keys in [lo_key, hi_key], sorted."""
    # Keys and values order alike, so select on the floats and make keys of the few selected only.
    lo, hi = keys_to_values(np.array([lo_key, hi_key]), scores.dtype)
    found = [chunk[(chunk >= lo) & (chunk <= hi)] for chunk in (scores[part] for part in row_chunks(*scores.shape))]
    gathered = sortable_keys(np.concatenate(found), in_place=True)
    gathered.sort()
    return gathered


def _distinct(sorted_keys):
    """The distinct values of a sorted array."""
    return sorted_keys[np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]] if sorted_keys.size else sorted_keys


def _check_not_empty(scores):
    if not scores.size:
        raise DecisionRuleError(f"cannot fit a threshold on empty scores (shape {scores.shape}); "
                                "check that the validation split has images")


def cardinality_threshold(scores, target_cardinality):
    """The global threshold whose mean number of labels per image is closest to a target.

    The COCO report, eqs. 11-12. Among all thresholds (every distinct score, plus one
    above the highest), picks the one whose predicted count is closest to
    target x N; ties go to the higher threshold. Without tied scores the mean
    predicted cardinality is within 0.5 / N of the target.

    Args:
        scores: (N, L) validation scores.
        target_cardinality: mean labels per image to aim for (the training
            label cardinality).

    Returns:
        The threshold, a float: decide labels by `scores >= threshold`.
    """
    return _cardinality_search(as_score_matrix(scores), target_cardinality)[0]


def _cardinality_search(scores, target_cardinality):
    """(threshold, predicted label count on `scores`) for `cardinality_threshold`."""
    _check_not_empty(scores)
    target = float(target_cardinality)
    if not np.isfinite(target) or target < 0:
        raise DecisionRuleError(f"target cardinality must be a number of labels per image >= 0; got {target_cardinality!r}")
    target_count = target * scores.shape[0]
    histogram = _key_histogram(scores)
    at_or_above = histogram.count_at_or_above()
    if target_count > at_or_above[0]:
        return float(keys_to_values(histogram.base, scores.dtype)), int(at_or_above[0])
    # The bin where the count crosses the target, plus the next non-empty bin above it (its
    # lowest score is the threshold that predicts just fewer than the target).
    crossing = int(np.flatnonzero(at_or_above[:-1] >= target_count)[-1])
    above = np.flatnonzero(histogram.counts[crossing + 1:])
    top_bin = crossing + 1 + int(above[0]) if above.size else crossing
    gathered = _gather_keys(scores, *histogram.key_range(crossing, top_bin))
    candidates = _distinct(gathered)
    predicted = at_or_above[top_bin + 1] + len(gathered) - np.searchsorted(gathered, candidates, "left")
    if not above.size:
        # Nothing above: the only threshold predicting fewer is one just above the highest score.
        highest = keys_to_values(histogram.top, scores.dtype)
        candidates = np.append(candidates, sortable_keys(np.nextafter(highest, np.inf)))
        predicted = np.append(predicted, 0)
    distance = np.abs(predicted - target_count)
    best = len(distance) - 1 - int(np.argmin(distance[::-1]))
    return float(keys_to_values(candidates[best], scores.dtype)), int(predicted[best])


def fbeta_threshold(scores, labels, beta=2.0):
    """The global threshold that maximises micro F-beta on validation data.

    Exact: F-beta is evaluated at every distinct score that can be optimal
    (ties go to the higher threshold), found through a histogram of the
    scores and an upper bound per candidate, so only a few histogram bins are
    ever sorted.

    Args:
        scores: (N, L) validation scores.
        labels: (N, L) multi-hot validation labels.
        beta: weight of recall against precision. Defaults to 2.0 (F2).

    Returns:
        The threshold, a float.
    """
    scores = as_score_matrix(scores)
    return _fbeta_search(scores, as_multi_hot(labels, scores.shape), _check_beta(beta))[0]


def _check_beta(beta):
    beta = float(beta)
    if not np.isfinite(beta) or beta <= 0:
        raise DecisionRuleError(f"beta must be a positive number (e.g. 2 for F2); got {beta!r}")
    return beta


def _fbeta_search(scores, labels, beta):
    """(threshold, F-beta on the fit set) for `fbeta_threshold`."""
    _check_not_empty(scores)
    rows, cols = positives_by_label(labels)
    n_pos = len(rows)
    if not n_pos:
        raise DecisionRuleError("cannot fit an F-beta threshold: the fit labels have no positives; "
                                "fit on a validation split that has labels")
    beta2 = beta * beta

    def fbeta(tp, predicted):
        return (1 + beta2) * tp / (predicted + beta2 * n_pos)

    pos_keys = np.sort(sortable_keys(scores[rows, cols], in_place=True))
    histogram = _key_histogram(scores)
    at_or_above = histogram.count_at_or_above()
    pos_bins = histogram.bins(pos_keys)
    pos_at_or_above = histogram.count_at_or_above(np.bincount(pos_bins, minlength=len(histogram.counts)))
    # Exact F-beta at each bin's lowest score, then an upper bound for every positive's score
    # (the optimum sits at a positive's score): only bins whose bound reaches the best edge are searched.
    edge = np.where(histogram.counts > 0, fbeta(pos_at_or_above[:-1], at_or_above[:-1]), -1.0)
    best_edge = float(edge.max())
    best_bin = len(edge) - 1 - int(np.argmax(edge[::-1]))
    tp = n_pos - np.searchsorted(pos_keys, pos_keys, "left")
    bound = fbeta(tp, at_or_above[pos_bins + 1] + tp - pos_at_or_above[pos_bins + 1])
    search = np.append(pos_bins[bound >= best_edge], best_bin)
    lo_bin, hi_bin = int(search.min()), int(search.max())
    gathered = _gather_keys(scores, *histogram.key_range(lo_bin, hi_bin))
    candidates = _distinct(gathered)
    predicted = at_or_above[hi_bin + 1] + len(gathered) - np.searchsorted(gathered, candidates, "left")
    values = fbeta(n_pos - np.searchsorted(pos_keys, candidates, "left"), predicted)
    best = len(values) - 1 - int(np.argmax(values[::-1]))
    return float(keys_to_values(candidates[best], scores.dtype)), float(values[best])


def per_class_thresholds(scores, labels, beta=2.0, min_positives=DEFAULT_MIN_POSITIVES):
    """One threshold per label, each maximising that label's F-beta.

    A label's optimum sits at one of its positives' scores, so each column is
    sorted once (as integer keys) and F-beta evaluated at every positive; ties
    go to the higher threshold. A label with fewer than `min_positives`
    validation positives would get a threshold fitted to noise, so it uses the
    global `fbeta_threshold` instead.

    Args:
        scores: (N, L) validation scores.
        labels: (N, L) multi-hot validation labels.
        beta: weight of recall against precision. Defaults to 2.0.
        min_positives: fewest positives a label needs for its own threshold.
            Defaults to 5.

    Returns:
        (thresholds, fell_back, global_threshold): float64 (L,), bool (L,)
        marking the labels that use the global threshold, and that threshold
        (None when no label fell back).
    """
    scores = as_score_matrix(scores)
    labels = as_multi_hot(labels, scores.shape)
    beta, min_positives = _check_beta(beta), _check_min_positives(min_positives)
    _check_not_empty(scores)
    counts = rank_counts(labels, scores, positives_by_label(labels))
    beta2 = beta * beta
    fbeta = (1 + beta2) * counts.pos_ge / (counts.ge + beta2 * counts.n_pos[counts.label])
    # Sorted by label, then F-beta, then score: each label's last entry is its best, highest threshold.
    order = np.lexsort((counts.key, fbeta, counts.label))
    has_positives = counts.n_pos > 0
    best = order[np.cumsum(counts.n_pos)[has_positives] - 1]
    thresholds = np.zeros(len(counts.n_pos))
    thresholds[has_positives] = keys_to_values(counts.key[best], scores.dtype)
    fell_back = counts.n_pos < min_positives
    global_threshold = None
    if fell_back.any():
        global_threshold = _fbeta_search(scores, labels, beta)[0]
        thresholds[fell_back] = global_threshold
    return thresholds, fell_back, global_threshold


def _check_min_positives(min_positives):
    if int(min_positives) != min_positives or min_positives < 1:
        raise DecisionRuleError(f"min_positives must be a whole number >= 1; got {min_positives!r}")
    return int(min_positives)


def threshold_sweep(scores, labels=None, max_points=400):
    """Exact counts at up to `max_points` global thresholds, for curves and plots.

    Args:
        scores: (N, L) scores.
        labels: (N, L) multi-hot labels, for true-positive counts. Defaults to None.
        max_points: most thresholds returned. Defaults to 400.

    Returns:
        {"threshold" (ascending floats), "predicted" (labels predicted at
        >= each threshold), "true_positives" (or None), "n_positives" (or
        None), "n_images"}.
    """
    scores = as_score_matrix(scores)
    _check_not_empty(scores)
    histogram = _key_histogram(scores)
    nonempty = np.flatnonzero(histogram.counts)
    chosen = nonempty[np.unique(np.linspace(0, len(nonempty) - 1, max_points).round().astype(int))]
    edges = histogram.key_dtype(histogram.base) + (chosen.astype(histogram.key_dtype) << histogram.key_dtype(histogram.shift))
    sweep = {
        "threshold": keys_to_values(edges, scores.dtype).astype(np.float64),
        "predicted": histogram.count_at_or_above()[chosen],
        "true_positives": None,
        "n_positives": None,
        "n_images": scores.shape[0],
    }
    if labels is not None:
        rows, cols = positives_by_label(as_multi_hot(labels, scores.shape))
        pos_bins = histogram.bins(sortable_keys(scores[rows, cols]))
        pos_counts = np.bincount(pos_bins, minlength=len(histogram.counts))
        sweep["true_positives"] = histogram.count_at_or_above(pos_counts)[chosen]
        sweep["n_positives"] = len(rows)
    return sweep


def top_labels_mask(scores, m):
    """Each image's m highest-scoring labels (ties broken arbitrarily).

    Args:
        scores: (N, L) scores.
        m: labels per image: one number, or (N,) numbers.

    Returns:
        bool (N, L).
    """
    n_images, n_labels = scores.shape
    m = np.broadcast_to(np.clip(np.asarray(m, np.int64), 0, n_labels), (n_images,))
    mask = np.zeros(scores.shape, bool)
    for part in row_chunks(n_images, n_labels):
        wanted, chunk = m[part], scores[part]
        most = int(wanted.max(initial=0))
        if not most:
            continue
        # argpartition is linear per row; only the `most` kept columns are ever sorted.
        top = np.argpartition(chunk, n_labels - most, axis=1)[:, n_labels - most:]
        order = np.argsort(-np.take_along_axis(chunk, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        rows, ranks = np.nonzero(np.arange(most) < wanted[:, None])
        mask[part][rows, top[rows, ranks]] = True
    return mask


def _parse_spec(spec):
    """(kind, parameter, canonical spec) from a rule spec such as "fbeta:2"."""
    if not isinstance(spec, str):
        raise DecisionRuleError(f"a decision rule is written as text; got {spec!r}. Valid forms: {_valid_forms()}")
    kind, _, text = spec.strip().lower().partition(":")
    takes = {"threshold": float, "fbeta": float, "per-class": float, "topk": int}
    if kind not in {form.split(":")[0] for form in RULE_FORMS} or bool(text) != (kind in takes):
        raise DecisionRuleError(f"unknown decision rule {spec!r}; valid forms: {_valid_forms()}")
    if kind not in takes:
        return kind, None, kind
    try:
        param = takes[kind](text)
    except ValueError:
        raise DecisionRuleError(f"decision rule {spec!r}: {text!r} is not a {takes[kind].__name__}; "
                                f"valid forms: {_valid_forms()}") from None
    if not np.isfinite(param) or (kind != "threshold" and param <= 0):
        need = "a finite number" if kind == "threshold" else "a positive number"
        raise DecisionRuleError(f"decision rule {spec!r}: {kind} needs {need}; valid forms: {_valid_forms()}")
    return kind, param, f"{kind}:{text}"


class Rule:
    """A label decision rule: parsed from a spec, fitted on validation scores, then frozen.

    Args:
        spec: one of RULE_FORMS, e.g. "cardinality", "fbeta:2", "topk:3".
        min_labels: labels every image gets at least (its highest-scoring
            ones). Defaults to 0.
        max_labels: labels every image gets at most (the highest-scoring of
            those decided), or None for no limit. Defaults to None.
        min_positives: for per-class rules, the fewest validation positives a
            label needs for its own threshold. Defaults to 5.

    The label limits apply after the rule decides (so thresholds are fitted
    without them) and not to "rank", whose count per image is the truth's.

    Attributes:
        spec: the canonical spec.
        kind, param: the rule's name and number ("fbeta", 2.0).
        threshold: None until fitted; a float, or float64 (L,) for per-class.
        fit_info: what fitting found (target cardinality and its source,
            F-beta on the fit set, labels that fell back, ...).

    Example:
        rule = Rule("per-class:2", min_labels=1, max_labels=8).fit(val_scores, val_labels)
        decisions = rule.apply(test_scores)
    """

    def __init__(self, spec, *, min_labels=0, max_labels=None, min_positives=DEFAULT_MIN_POSITIVES):
        self.kind, self.param, self.spec = _parse_spec(spec)
        if int(min_labels) != min_labels or min_labels < 0:
            raise DecisionRuleError(f"min_labels must be a whole number >= 0; got {min_labels!r}")
        if max_labels is not None and (int(max_labels) != max_labels or max_labels < max(1, min_labels)):
            raise DecisionRuleError(f"max_labels must be a whole number >= 1 and >= min_labels ({min_labels}); "
                                    f"got {max_labels!r}")
        self.min_labels = int(min_labels)
        self.max_labels = None if max_labels is None else int(max_labels)
        self.min_positives = _check_min_positives(min_positives)
        self.threshold = self.param if self.kind == "threshold" else None
        self.fit_info = {}

    def __repr__(self):
        return f"Rule({self.spec!r}, fitted={not self.needs_fit})"

    @property
    def deployable(self):
        """False for "rank", which needs each image's true labels; regression's "identity" decides nothing."""
        return self.kind in DEPLOYABLE_KINDS or self.kind == "identity"

    @property
    def needs_fit(self):
        """True while a fitted rule has no thresholds yet."""
        return self.kind in FITTED_KINDS and self.threshold is None

    def fit(self, scores, labels=None, *, train_cardinality=None):
        """Fits the rule's thresholds on validation scores (a no-op for rules without any).

        Args:
            scores: (N, L) validation scores.
            labels: (N, L) multi-hot validation labels; needed by fbeta and
                per-class, and by cardinality without `train_cardinality`.
                Defaults to None.
            train_cardinality: the training label cardinality (mean labels per
                training image), the target of "cardinality". Defaults to None
                (use the cardinality of `labels`).

        Returns:
            self, fitted.
        """
        if self.kind not in FITTED_KINDS:
            return self
        scores = as_score_matrix(scores, "fit scores")
        if labels is not None:
            labels = as_multi_hot(labels, scores.shape, "fit labels")
        elif self.kind != "cardinality" or train_cardinality is None:
            raise DecisionRuleError(f"rule {self.spec!r} needs validation labels to fit"
                                    + ("" if self.kind != "cardinality" else " (or train_cardinality)"))
        info = {"n_fit_images": int(scores.shape[0])}
        if self.kind == "cardinality":
            source = "train_cardinality" if train_cardinality is not None else "fit labels"
            target = float(train_cardinality) if train_cardinality is not None else float(labels.sum() / max(len(labels), 1))
            self.threshold, predicted = _cardinality_search(scores, target)
            info.update(target_cardinality=target, target_source=source,
                        fit_cardinality=predicted / scores.shape[0])
        elif self.kind == "fbeta":
            self.threshold, fbeta = _fbeta_search(scores, labels, _check_beta(self.param))
            info.update(beta=self.param, fit_fbeta=fbeta)
        else:
            thresholds, fell_back, global_threshold = per_class_thresholds(
                scores, labels, self.param, self.min_positives)
            self.threshold = thresholds
            info.update(beta=self.param, n_fallback=int(fell_back.sum()),
                        fallback_labels=np.flatnonzero(fell_back).tolist(), global_threshold=global_threshold)
        self.fit_info = info
        return self

    def apply(self, scores, labels=None):
        """Decides labels for new scores.

        Args:
            scores: (N, L) scores ((N, T) predictions for "identity").
            labels: (N, L) multi-hot truth; only "rank" uses it. Defaults to None.

        Returns:
            uint8 (N, L) 0/1 decisions ("argmax": one-hot; "identity": the
            predictions unchanged).
        """
        if self.kind == "identity":
            return np.asarray(scores)
        if self.needs_fit:
            raise DecisionRuleError(f"rule {self.spec!r} is not fitted; call fit(validation_scores, "
                                    "validation_labels) first, or load a fitted rule with rule_from_dict")
        scores = as_score_matrix(scores)
        if scores.size and np.isnan(np.min(scores)):
            raise DecisionRuleError("scores contain NaN; check the model's outputs before deciding labels")
        if self.kind == "rank":
            if labels is None:
                raise DecisionRuleError("rule 'rank' needs the true labels (it is an upper bound, not deployable)")
            counts = as_multi_hot(labels, scores.shape).sum(axis=1)
            return top_labels_mask(scores, counts).view(np.uint8)
        if self.kind == "argmax":
            decisions = np.zeros(scores.shape, bool)
            decisions[np.arange(len(scores)), scores.argmax(axis=1)] = True
            return decisions.view(np.uint8)
        return self._limit(self._decide(scores), scores).view(np.uint8)

    def _decide(self, scores):
        """Decisions before the min/max labels limits."""
        if self.kind == "topk":
            return top_labels_mask(scores, self.param)
        threshold = self.threshold
        if np.ndim(threshold):
            if len(threshold) != scores.shape[1]:
                raise DecisionRuleError(f"rule {self.spec!r} was fitted on {len(threshold)} labels but the scores "
                                        f"have {scores.shape[1]}; refit it on scores for these labels")
            threshold = threshold[None, :]
        return scores >= threshold

    def _limit(self, decisions, scores):
        """Applies min_labels (add the top ones) and max_labels (keep the top ones)."""
        if self.min_labels:
            decisions |= top_labels_mask(scores, self.min_labels)
        if self.max_labels is not None:
            over = np.flatnonzero(decisions.sum(axis=1) > self.max_labels)
            if over.size:
                kept = decisions[over]
                ranked = np.where(kept, scores[over], -np.inf)
                decisions[over] = top_labels_mask(ranked, self.max_labels) & kept
        return decisions

    def to_dict(self):
        """The rule as JSON-serialisable data, fitted thresholds included."""
        threshold = self.threshold
        return {
            "spec": self.spec,
            "kind": self.kind,
            "param": self.param,
            "threshold": threshold.tolist() if isinstance(threshold, np.ndarray) else threshold,
            "min_labels": self.min_labels,
            "max_labels": self.max_labels,
            "min_positives": self.min_positives,
            "deployable": self.deployable,
            "fit": dict(self.fit_info),
        }


def parse_rule(
    spec: str, *, min_labels: int = 0, max_labels: int | None = None, min_positives: int = DEFAULT_MIN_POSITIVES,
) -> Rule:
    """A Rule from its spec; see RULE_FORMS and `Rule` for the options.

    Args:
        spec: e.g. "threshold:0.5", "cardinality", "fbeta:2", "per-class:2",
            "topk:3", "rank", "argmax", "identity".
        min_labels: at least this many labels per image. Defaults to 0.
        max_labels: at most this many labels per image. Defaults to None.
        min_positives: per-class fallback limit. Defaults to 5.

    Returns:
        An unfitted Rule (already usable for rules without thresholds to fit).
    """
    return Rule(spec, min_labels=min_labels, max_labels=max_labels, min_positives=min_positives)


def rule_from_dict(data):
    """The Rule that `Rule.to_dict` saved, thresholds included.

    Args:
        data: a dict from `Rule.to_dict` (e.g. read from a model's JSON).

    Returns:
        The Rule, ready to apply.
    """
    if not isinstance(data, dict) or "spec" not in data:
        raise DecisionRuleError(f"a saved decision rule is a dict with a 'spec' key; got {data!r:.200}")
    rule = Rule(data["spec"], min_labels=data.get("min_labels", 0), max_labels=data.get("max_labels"),
                min_positives=data.get("min_positives", DEFAULT_MIN_POSITIVES))
    threshold = data.get("threshold")
    if isinstance(threshold, (list, tuple)):
        threshold = np.asarray(threshold, np.float64)
    elif threshold is not None:
        threshold = float(threshold)
    if rule.kind in FITTED_KINDS and threshold is not None and (np.ndim(threshold) == 1) != (rule.kind == "per-class"):
        raise DecisionRuleError(f"saved rule {rule.spec!r} has a threshold of the wrong shape: {threshold!r:.100}")
    if rule.kind in FITTED_KINDS or rule.kind == "threshold":
        rule.threshold = threshold if threshold is not None else rule.threshold
    rule.fit_info = dict(data.get("fit", {}))
    return rule
