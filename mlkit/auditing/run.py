"""`mlkit.audit`: every check on one cache, written to `audit/<cache>/`."""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlkit.auditing import duplicates, evidence, findings, report
from mlkit.auditing import neighbours as knn
from mlkit.auditing.config import AUDIT_DIR, AuditConfig
from mlkit.auditing.labels import label_quality
from mlkit.auditing.linear import linear_scores
from mlkit.auditing.near import near_duplicates
from mlkit.auditing.page import write_review_page
from mlkit.bottlenecks.cache import open_cache
from mlkit.errors import MlkitError
from mlkit.files import StrPath
from mlkit.options import defaults_of
from mlkit.taps import LAST, split_names
from mlkit.taps import resolve as resolve_taps

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)
# The keyword defaults are AuditConfig's (mlkit.options): written once, there.
AUDIT = defaults_of(AuditConfig)
# Seeds of successive fold draws lie this far apart, so no draw reuses another's fold models' seeds.
REPEAT_SEED_STEP = 1000


@dataclass
class AuditResult:
    """What `audit` found and where it wrote it.

    Attributes:
        folder: `audit/<cache>/`.
        issues: the findings (the rows of issues.csv), a DataFrame.
        summary: the contents of summary.json.
        timings: seconds per part.
    """

    folder: Path
    issues: pd.DataFrame
    summary: dict
    timings: dict = field(default_factory=dict)


class _Timer:
    """Seconds and peak resident memory (MiB, since the process started) after each named part."""

    def __init__(self):
        self.parts = {}
        self.start = time.perf_counter()

    def done(self, name):
        now = time.perf_counter()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.parts[name] = {"seconds": round(now - self.start, 2), "peak_mib": round(peak)}
        logger.info("audit: %s in %.1f s (peak memory %.0f MiB)", name, now - self.start, peak)
        self.start = now


def load_rows(cache):
    """The rows with features, and their images, splits, labels and image hashes."""
    rows = cache.indices()
    if len(rows) < 2:
        raise MlkitError(f"{cache.path} has {len(rows)} rows with features; an audit needs at least 2")
    sha256 = cache.read("image_sha256", rows) if cache.has("image_sha256") else np.full(len(rows), b"")
    return {
        "rows": rows, "image": cache.read("image", rows), "split": cache.read("split", rows),
        "labels": cache.read("labels", rows), "sha256": np.asarray(sha256).astype("S64"),
    }


def fold_features(cache, rows, config):
    """The features the fold tops read: the configured taps side by side, in memory."""
    taps = resolve_taps(split_names(config.taps), cache.name_fields[2], cache.taps)
    if taps == (LAST,):
        return knn.read_vectors(cache.path, rows), taps
    return cache.read_taps(taps, rows), taps


def fold_scores(cache, table, config, workdir):
    """Out-of-fold scores, or None without a label check.

    The fold tops' scores ("top_scores", averaged over `config.repeats` draws of the folds) are averaged
    with the linear witness's on the first draw's folds ("linear_scores"; classification only) into
    "scores" (`mix_witnesses`). Then a matrix of several taps gives the neighbours whose labels vote
    (`vote_neighbours`, "vote_positions"; classification only). On the output alone the votes come from
    the cosine search of the other checks, as before: z-scoring it gained nothing measurable
    (BENCHMARKS.md).
    """
    if not config.folds:
        return None
    if len(table["rows"]) < 2 * config.folds:
        logger.warning("audit: %d rows are too few for %d folds; label check skipped", len(table["rows"]), config.folds)
        return None
    from mlkit.auditing.folds import assign_folds, out_of_fold_scores

    features, taps = fold_features(cache, table["rows"], config)
    widths = [int(cache.taps_shape((tap,))[-1]) for tap in taps] if len(taps) > 1 else None
    # The first draw's folds, which its tops train on too. The linear witness fits on them before the
    # tops train: fitted after them, it left the audit's peak higher still (BENCHMARKS.md).
    folds = assign_folds(table["labels"], cache.task, config.folds, config.seed)
    linear = linear_witness(features, table["labels"], cache, folds, tap_weights(cache, taps, config, workdir), config)
    draws = []
    for repeat in range(config.repeats):
        draw = replace(config, seed=config.seed + REPEAT_SEED_STEP * repeat)
        draws.append(out_of_fold_scores(
            features, table["labels"], cache.task, cache.num_outputs, draw, workdir,
            progress=lambda fold, total: logger.info("audit: fold %d of %d trained", fold, total), tap_widths=widths,
            folds=folds if repeat == 0 else None)[0])
    out_of_fold = {"folds": folds, "taps": list(taps),
                   **mix_witnesses(np.mean(draws, axis=0).astype(np.float32), linear, config)}
    if cache.task != "regression" and len(taps) > 1:
        out_of_fold["vote_positions"] = vote_neighbours(cache, features, taps, config, workdir)
    del features
    return out_of_fold


def tap_weights(cache, taps, config, workdir):
    """The column weights the fold tops give several taps (`folds.column_weights`), or None."""
    from mlkit.auditing.folds import column_weights, fold_top_config

    widths = [int(cache.taps_shape((tap,))[-1]) for tap in taps] if len(taps) > 1 else None
    return column_weights(fold_top_config(config, cache.task, workdir), widths)


def linear_witness(features, labels, cache, folds, weights, config):
    """The linear witness's out-of-fold scores (`linear.linear_scores`) on `folds`, or None for regression
    or a `config.linear_weight` of 0."""
    if cache.task == "regression" or not config.linear_weight:
        return None
    return linear_scores(features, evidence.one_hot(labels, cache.task, cache.num_outputs), cache.task, folds, weights)


def mix_witnesses(top_scores, linear, config):
    """"top_scores", "linear_scores" where there are some, and "scores": the two averaged at
    `config.linear_weight`, or the tops' alone."""
    if linear is None:
        return {"top_scores": top_scores, "scores": top_scores}
    scores = (1 - config.linear_weight) * top_scores + config.linear_weight * linear
    return {"top_scores": top_scores, "linear_scores": linear, "scores": scores.astype(np.float32)}


def vote_neighbours(cache, features, taps, config, workdir):
    """Neighbours whose labels vote: by the fold features, weighted as the fold tops weight them.

    Overwrites `features` (`knn.standardised_neighbours`).
    """
    return knn.standardised_neighbours(features, config.neighbours, tap_weights(cache, taps, config, workdir))[1]


def check_labels(cache, table, folds, positions, pairs, config):
    """Label quality judged on the fold scores, the neighbours' labels and the duplicate partners' labels.

    Args:
        cache: the opened cache.
        table: the audited rows (`load_rows`).
        folds: `fold_scores`, or None (then so is the result).
        positions: (N, K) nearest neighbours by features; the fold features' neighbours
            (`fold_scores`' "vote_positions") vote in their place where there are any.
        pairs: (P, 2) exact and near duplicate pairs.
        config: the `AuditConfig`.
    """
    if folds is None:
        return None
    names = cache.label_names or list(cache.attrs.get("target_names") or [])
    probabilities = folds["scores"]
    if cache.task != "regression":
        labels = evidence.one_hot(table["labels"], cache.task, cache.num_outputs)
        partners, has_partner = evidence.partner_votes(labels, pairs[:, 0], pairs[:, 1])
        voters = folds.get("vote_positions", positions)
        probabilities = evidence.combine(folds["scores"], evidence.neighbour_votes(labels, voters, config.neighbours),
                                         partners, has_partner, config.vote_weight)
    quality = label_quality(cache.task, table["labels"], probabilities, names, config.residual_z)
    return {**folds, "probabilities": probabilities, "quality": quality, "names": names,
            "score_description": score_description(cache.task, "linear_scores" in folds, config)}


def score_description(task, linear, config):
    """What a label error's score is, in words, for summary.json."""
    if task == "regression":
        return "the largest residual of the fold tops' predictions, in robust standard units"
    top_weight = 1 - config.vote_weight
    tops = (f"fold tops {top_weight * (1 - config.linear_weight):.3g}, linear witness "
            f"{top_weight * config.linear_weight:.3g}" if linear else f"fold tops {top_weight:.3g}")
    witnesses = (f"out-of-fold scores ({tops}) and the labels of {config.neighbours} nearest neighbours "
                 f"({config.vote_weight:.3g}), and where a row has duplicate partners their labels "
                 f"({evidence.PARTNER_WEIGHT:.3g} of the whole)")
    if task == "multiclass":
        return f"1 - the probability of the given class, from {witnesses}"
    return (f"the row's worst label against what is usual for that label (labels.label_errors), on probabilities "
            f"from {witnesses}")


def audit(
    cache: StrPath, workdir: StrPath = ".", *, near_threshold: float = AUDIT["near_threshold"],
    near_verify_threshold: float = AUDIT["near_verify_threshold"],
    near_colour_difference: float = AUDIT["near_colour_difference"],
    near_unverified_threshold: float = AUDIT["near_unverified_threshold"], near_agreement: float = AUDIT["near_agreement"],
    near_feature_threshold: float = AUDIT["near_feature_threshold"], neighbours: int = AUDIT["neighbours"],
    outlier_k: int = AUDIT["outlier_k"], outlier_z: float = AUDIT["outlier_z"], folds: int = AUDIT["folds"],
    top: str = AUDIT["top"], units: int = AUDIT["units"], epochs: int = AUDIT["epochs"], batch: int = AUDIT["batch"],
    lr: float = AUDIT["lr"], taps: str = AUDIT["taps"], repeats: int = AUDIT["repeats"],
    linear_weight: float = AUDIT["linear_weight"], vote_weight: float = AUDIT["vote_weight"], residual_z: float = AUDIT["residual_z"],
    review: int = AUDIT["review"], sheet_size: int = AUDIT["sheet_size"],
    seed: int = AUDIT["seed"],
) -> AuditResult:
    """Finds duplicates, split leaks, likely label errors and outliers in a bottleneck cache.

    Writes `WORKDIR/audit/<cache>/`: `issues.csv` (one row per finding, leaks
    first), `review.csv` (the shortlist of `review` findings ranked across
    kinds, with the same columns), `review.html` (a page to review that
    shortlist with the keyboard and save the decisions), `summary.json`, `groups.csv` (duplicate groups, for `mlkit data
    split --group-duplicates`), `scores.npz` (out-of-fold scores and per-row
    scores) and a contact sheet `<kind>.png` per kind found.

    Args:
        cache: the `.h5` cache from `mlkit cache-features`.
        workdir: the workspace; also where `tuning/` is looked up for `top`. Defaults to ".".
        near_threshold, near_verify_threshold, near_colour_difference, near_unverified_threshold,
            near_agreement, near_feature_threshold, neighbours, outlier_k, outlier_z,
            folds, top, units, epochs, batch, lr, taps, repeats, linear_weight, vote_weight, residual_z,
            review, sheet_size, seed:
            the `AuditConfig` settings; each field there says what it does and
            `mlkit audit --help` prints them with their defaults.

    Returns:
        An `AuditResult`.

    Example:
        result = mlkit.audit("bottlenecks/stamps_all_mobilenetv2_inet_avg.h5", folds=5)
        print(result.issues.head())
    """
    config = AuditConfig(
        near_threshold=near_threshold, near_verify_threshold=near_verify_threshold,
        near_colour_difference=near_colour_difference, near_unverified_threshold=near_unverified_threshold,
        near_agreement=near_agreement, near_feature_threshold=near_feature_threshold,
        neighbours=neighbours, outlier_k=outlier_k, outlier_z=outlier_z, folds=folds, top=top, units=units,
        epochs=epochs, batch=batch, lr=lr, taps=taps, repeats=repeats, linear_weight=linear_weight,
        vote_weight=vote_weight, residual_z=residual_z,
        review=review, sheet_size=sheet_size, seed=seed,
    )
    timer = _Timer()
    features = open_cache(cache)
    table = load_rows(features)
    groups = duplicates.exact_groups(table["sha256"])
    timer.done("exact duplicates")
    # The fold tops hold the whole feature matrix beside TensorFlow: they train first, on a heap
    # that the neighbour searches have not yet fragmented, and free the matrix before they start.
    folds = fold_scores(features, table, config, workdir)
    timer.done("fold scores")
    similarities, positions = knn.nearest_neighbours(features.path, table["rows"], config.neighbours)
    outlier = findings.outlier_scores(similarities, config.outlier_k)
    timer.done("nearest neighbours")
    near, near_record = near_duplicates(features, table, (similarities, positions), groups, config)
    del similarities
    timer.done("near duplicates")
    pairs = np.concatenate([duplicates.exact_pairs(groups), np.stack(near[:2], axis=1).astype(np.int64)])
    labels = check_labels(features, table, folds, positions, pairs, config)
    del positions
    timer.done("label check")
    issues, duplicate_group = findings.collect(features, table, groups, near, outlier, labels, config)
    folder = Path(workdir) / AUDIT_DIR / features.name
    summary = report.write_all(folder, features, table, issues, duplicate_group, groups, near, near_record, outlier,
                               labels, config, timer)
    write_review_page(folder, issues, Path(features.attrs.get("manifest_root", ".")), features.name)
    return AuditResult(folder, issues, summary, timer.parts)
