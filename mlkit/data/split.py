"""Seeded, stratified train/val/test splits that stay put when rows are added.

All three tasks go through one algorithm, iterative stratification (Sechidis,
Tsoumakas and Vlahavas, 2011): multilabel rows stratify on their label sets,
multiclass rows on their class, regression rows on quantile bins of the
(first) target. The algorithm is implemented here rather than taken from
`iterstrat`, because (1) rows that already have a split must keep it and
count toward the targets, which iterstrat cannot express; (2) it splits
three ways in one pass; and (3) it works on sparse label lists, where
iterstrat recounts a dense N x L matrix once per label (hours for iMet's
100k x 1,103). A test cross-checks its label balance against iterstrat.
"""

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from mlkit.data.manifest import read_manifest, update_column
from mlkit.errors import MlkitError
from mlkit.vocabulary import SPLITS

# The duplicate groups `mlkit audit` writes into its folder, which `split --group-duplicates` reads.
GROUPS_CSV = "groups.csv"

logger = logging.getLogger(__name__)

# At most this many quantile bins for a regression target; fewer for small sets.
MAX_TARGET_BINS = 10


def _choose_fold(label_need, row_need, open_folds, rng):
    """The fold that most needs this label; ties go to the fold needing the most rows, then at random."""
    need = np.where(open_folds, label_need, -np.inf)
    best = np.flatnonzero(need == need.max())
    if len(best) > 1:
        rows = row_need[best]
        best = best[rows == rows.max()]
    return int(best[rng.integers(len(best))]) if len(best) > 1 else int(best[0])


def _rows_by_label(row_labels, order, n_labels):
    """For each label, the rows to assign that carry it, in the shuffled `order`."""
    rows = np.repeat(order, [len(row_labels[row]) for row in order])
    labels = np.concatenate([row_labels[row] for row in order] + [np.zeros(0, dtype=np.int64)])
    by_label = np.argsort(labels, kind="stable")
    bounds = np.cumsum(np.bincount(labels, minlength=n_labels))
    return np.split(rows[by_label], bounds[:-1]), np.bincount(labels, minlength=n_labels)


def iterative_stratification(row_labels, n_labels, fractions, assigned, seed=0):
    """Assigns rows to folds by iterative stratification (Sechidis et al. 2011).

    The desired number of rows, and of each label, per fold is worked out over
    all rows; rows already assigned are subtracted from their fold's targets,
    so the new rows fill toward the proportions. Then, repeatedly, the label
    with the fewest unassigned rows is taken, and each of its rows goes to the
    fold that most needs that label. Rows without labels fill the folds that
    need the most rows.

    Args:
        row_labels: one integer array of label indices per row.
        n_labels: the number of labels.
        fractions: the desired proportion of each fold; a fold with 0 gets no rows.
        assigned: int array, the fold of each row, or -1 for rows to assign.
        seed: seeds the shuffle and the tie-breaks. Defaults to 0.

    Returns:
        int array, the fold of every row.
    """
    rng = np.random.default_rng(seed)
    fractions = np.asarray(fractions, dtype=float)
    result = np.asarray(assigned, dtype=np.int64).copy()
    n_rows = len(row_labels)
    label_totals = np.bincount(np.concatenate(list(row_labels) + [np.zeros(0, dtype=np.int64)]), minlength=n_labels)
    row_need = fractions * n_rows
    label_need = np.outer(fractions, label_totals)
    for row in np.flatnonzero(result >= 0):
        row_need[result[row]] -= 1
        label_need[result[row], row_labels[row]] -= 1
    order = rng.permutation(np.flatnonzero(result < 0))
    rows_by_label, remaining = _rows_by_label(row_labels, order, n_labels)
    open_folds = fractions > 0
    # A fixed random order breaks ties between labels with equally few rows.
    tiebreak = rng.random(n_labels)
    while remaining.any():
        live = np.flatnonzero(remaining > 0)
        label = live[np.lexsort((tiebreak[live], remaining[live]))[0]]
        for row in rows_by_label[label]:
            if result[row] >= 0:
                continue
            fold = _choose_fold(label_need[:, label], row_need, open_folds, rng)
            result[row] = fold
            row_need[fold] -= 1
            label_need[fold, row_labels[row]] -= 1
            remaining[row_labels[row]] -= 1
    for row in order:
        if result[row] < 0:
            fold = _choose_fold(row_need, row_need, open_folds, rng)
            result[row] = fold
            row_need[fold] -= 1
    return result


def _target_bins(values):
    """Quantile bin of each value; the distinct values themselves when there are few."""
    distinct, codes = np.unique(values, return_inverse=True)
    bins = min(MAX_TARGET_BINS, max(1, len(values) // 20))
    if len(distinct) <= bins:
        return codes, len(distinct)
    codes = pd.qcut(values, q=bins, labels=False, duplicates="drop")
    return codes.astype(np.int64), int(codes.max()) + 1


def _strata(manifest):
    """What to stratify on: label indices per row, and how many labels there are."""
    if manifest.task == "regression":
        codes, n_bins = _target_bins(manifest.label_array()[:, 0])
        return [np.array([code]) for code in codes], n_bins
    index = {name: i for i, name in enumerate(manifest.label_names)}
    row_labels = [np.array([index[name] for name in names], dtype=np.int64) for names in manifest.rows["labels"]]
    return row_labels, len(manifest.label_names)


def _check_fractions(val, test):
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise MlkitError(
            f"split: --val {val} and --test {test} must each be in [0, 1) and leave some rows for training "
            "(val + test < 1); e.g. --val 0.15 --test 0.15"
        )


def split_by_groups(row_labels, n_labels, fractions, assigned, groups, seed=0):
    """Iterative stratification over groups of rows, so each group lands in one fold.

    Each group becomes one unit carrying the union of its rows' labels (a
    group counts as one row toward the fold sizes). A group with an assigned
    row follows that row; rows that already have a fold keep it.

    Args:
        row_labels, n_labels, fractions, assigned, seed: as `iterative_stratification`.
        groups: int array, a group id per row; rows with -1 are alone.

    Returns:
        int array, the fold of every row.
    """
    groups = np.asarray(groups, dtype=np.int64)
    alone = groups < 0
    groups = np.where(alone, groups.max(initial=-1) + 1 + np.cumsum(alone), groups)
    units, unit_of = np.unique(groups, return_inverse=True)
    unit_fold = np.full(len(units), -1, dtype=np.int64)
    known = np.flatnonzero(np.asarray(assigned) >= 0)
    unit_fold[unit_of[known[::-1]]] = np.asarray(assigned)[known[::-1]]
    members = pd.Series(np.arange(len(groups))).groupby(unit_of).agg(list)
    unit_labels = [np.unique(np.concatenate([row_labels[row] for row in rows])).astype(np.int64) for rows in members]
    unit_fold = iterative_stratification(unit_labels, n_labels, fractions, unit_fold, seed=seed)
    return np.where(np.asarray(assigned) >= 0, assigned, unit_fold[unit_of])


def split_manifest(path, val=0.15, test=0.15, seed=0, resplit=False, groups=None):
    """Fills the manifest's `split` column with a stratified train/val/test split.

    Rows that already have a split keep it; only rows with an empty split
    are assigned, so rows appended to a split manifest never move old rows
    between splits (the cache and any reported test scores stay valid). The
    new rows fill toward the requested proportions, stratified while taking
    the existing assignment into account. The file is rewritten atomically;
    its other cells are left as they were.

    Args:
        path: the manifest file.
        val: the fraction of rows for validation. Defaults to 0.15.
        test: the fraction of rows for testing. Defaults to 0.15.
        seed: the same seed and manifest give the same split. Defaults to 0.
        resplit: reassign every row, discarding existing splits. Defaults to False.
        groups: {image: group id} (`read_duplicate_groups`):
            rows of one group go to one split. Defaults to None.

    Returns:
        The `Manifest` with its new splits.

    Example:
        manifest = split_manifest("data/manifest.csv", val=0.1, test=0.1, seed=1)
    """
    _check_fractions(val, test)
    manifest = read_manifest(path, allow_unlabelled=True)
    current = np.where(resplit, "", manifest.splits()).astype(object)
    todo = current == ""
    if not todo.any():
        logger.info("split: every row of %s already has a split; pass --resplit to reassign them", path)
        return manifest
    assigned = np.array([SPLITS.index(split) if split else -1 for split in current])
    row_labels, n_labels = _strata(manifest)
    fractions = [1 - val - test, val, test]
    if groups:
        row_groups = np.array([groups.get(image, -1) for image in manifest.rows["image"]], dtype=np.int64)
        folds = split_by_groups(row_labels, n_labels, fractions, assigned, row_groups, seed=seed)
    else:
        folds = iterative_stratification(row_labels, n_labels, fractions, assigned, seed=seed)
    splits = [SPLITS[fold] for fold in folds]
    update_column(manifest.path, "split", splits)
    manifest.rows["split"] = splits
    new = pd.Series(splits)[todo].value_counts()
    logger.info(
        "split: assigned %d rows (%s), %d kept their split; %s now has %s",
        todo.sum(), ", ".join(f"{fold} {new.get(fold, 0)}" for fold in SPLITS), (~todo).sum(), path,
        ", ".join(f"{fold} {splits.count(fold)}" for fold in SPLITS),
    )
    return manifest


def read_duplicate_groups(audit):
    """{image: group} for every image in a duplicate group, from an audit folder (`mlkit audit`) or its groups.csv."""
    path = Path(audit)
    path = path / GROUPS_CSV if path.is_dir() else path
    if not path.exists():
        raise MlkitError(f"no duplicate groups at {path}; run `mlkit audit CACHE` and pass its audit/<cache>/ folder")
    groups = pd.read_csv(path, dtype={"image": str, "group": int}, keep_default_na=False)
    return dict(zip(groups["image"], groups["group"]))
