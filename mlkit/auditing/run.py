"""`mlkit.audit`: every check on one cache, written to `audit/<cache>/`."""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlkit.auditing import duplicates, findings, report
from mlkit.auditing import neighbours as knn
from mlkit.auditing.config import AUDIT_DIR, AuditConfig
from mlkit.auditing.labels import label_quality
from mlkit.auditing.near import near_duplicates
from mlkit.bottlenecks.cache import open_cache
from mlkit.errors import MlkitError
from mlkit.files import StrPath
from mlkit.options import defaults_of

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)
# The keyword defaults are AuditConfig's (mlkit.options): written once, there.
AUDIT = defaults_of(AuditConfig)


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


def check_labels(cache, table, config, workdir):
    """Out-of-fold scores and label quality, or None when folds is 0 or there are too few rows."""
    if not config.folds:
        return None
    if len(table["rows"]) < 2 * config.folds:
        logger.warning("audit: %d rows are too few for %d folds; label check skipped", len(table["rows"]), config.folds)
        return None
    from mlkit.auditing.folds import out_of_fold_scores

    features = knn.read_vectors(cache.path, table["rows"])
    names = cache.label_names or list(cache.attrs.get("target_names") or [])
    scores, folds = out_of_fold_scores(
        features, table["labels"], cache.task, cache.num_outputs, config, workdir,
        progress=lambda fold, total: logger.info("audit: fold %d of %d trained", fold, total))
    del features
    quality = label_quality(cache.task, table["labels"], scores, names, config.residual_z)
    return {"scores": scores, "folds": folds, "quality": quality, "names": names}


def audit(
    cache: StrPath, workdir: StrPath = ".", *, near_threshold: float = AUDIT["near_threshold"],
    near_feature_threshold: float = AUDIT["near_feature_threshold"], neighbours: int = AUDIT["neighbours"],
    outlier_k: int = AUDIT["outlier_k"], outlier_z: float = AUDIT["outlier_z"], folds: int = AUDIT["folds"],
    top: str = AUDIT["top"], units: int = AUDIT["units"], epochs: int = AUDIT["epochs"], batch: int = AUDIT["batch"],
    lr: float = AUDIT["lr"], residual_z: float = AUDIT["residual_z"], sheet_size: int = AUDIT["sheet_size"],
    seed: int = AUDIT["seed"],
) -> AuditResult:
    """Finds duplicates, split leaks, likely label errors and outliers in a bottleneck cache.

    Writes `WORKDIR/audit/<cache>/`: `issues.csv` (one row per finding, leaks
    first), `summary.json`, `groups.csv` (duplicate groups, for `mlkit data
    split --group-duplicates`), `scores.npz` (out-of-fold scores and per-row
    scores) and a contact sheet `<kind>.png` per kind found.

    Args:
        cache: the `.h5` cache from `mlkit cache-features`.
        workdir: the workspace; also where `tuning/` is looked up for `top`. Defaults to ".".
        near_threshold, near_feature_threshold, neighbours, outlier_k, outlier_z,
            folds, top, units, epochs, batch, lr, residual_z, sheet_size, seed:
            the `AuditConfig` settings; each field there says what it does and
            `mlkit audit --help` prints them with their defaults.

    Returns:
        An `AuditResult`.

    Example:
        result = mlkit.audit("bottlenecks/stamps_all_mobilenetv2_inet_avg.h5", folds=5)
        print(result.issues.head())
    """
    config = AuditConfig(
        near_threshold=near_threshold, near_feature_threshold=near_feature_threshold, neighbours=neighbours,
        outlier_k=outlier_k, outlier_z=outlier_z, folds=folds, top=top, units=units, epochs=epochs, batch=batch, lr=lr,
        residual_z=residual_z, sheet_size=sheet_size, seed=seed,
    )
    timer = _Timer()
    features = open_cache(cache)
    table = load_rows(features)
    groups = duplicates.exact_groups(table["sha256"])
    timer.done("exact duplicates")
    # The label check holds the whole feature matrix beside TensorFlow: it runs first, on a heap
    # that the neighbour searches have not yet fragmented, and frees the matrix before they start.
    labels = check_labels(features, table, config, workdir)
    timer.done("label check")
    similarities, positions = knn.nearest_neighbours(features.path, table["rows"], config.neighbours)
    outlier = findings.outlier_scores(similarities, config.outlier_k)
    timer.done("nearest neighbours")
    near, near_record = near_duplicates(features, table, (similarities, positions), groups, config)
    del similarities, positions
    timer.done("near duplicates")
    issues, duplicate_group = findings.collect(features, table, groups, near, outlier, labels, config)
    folder = Path(workdir) / AUDIT_DIR / features.name
    summary = report.write_all(folder, features, table, issues, duplicate_group, groups, near, near_record, outlier,
                               labels, config, timer)
    return AuditResult(folder, issues, summary, timer.parts)
