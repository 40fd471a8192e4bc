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

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mlkit.data.manifest import Manifest, read_manifest, update_column
from mlkit.errors import MlkitError
from mlkit.files import StrPath
from mlkit.vocabulary import SPLITS

# The duplicate groups `mlkit audit` writes into its folder, which `split --group-duplicates` reads.
GROUPS_CSV = "groups.csv"

logger = logging.getLogger(__name__)

# At most this many quantile bins for a regression target; fewer for small sets.
MAX_TARGET_BINS = 10
# The test fraction when neither `test` nor `test_where` is given.
DEFAULT_TEST = 0.15


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


def _column_values(manifest, column, option):
    """The column's cells as str, or an error that lists the columns there are."""
    if column not in manifest.rows:
        columns = ", ".join(manifest.rows.columns)
        raise MlkitError(f"split: {option} {column!r}: {manifest.path} has no column {column!r} (columns: {columns})")
    return manifest.rows[column].astype(str).to_numpy(dtype=object)


def _held_out_rows(manifest, test_where):
    """The rows that `test_where` ("COLUMN=VALUE") names as the test split."""
    column, equals, value = test_where.partition("=")
    if not equals or not column.strip():
        raise MlkitError(f"split: --test-where {test_where!r} is not COLUMN=VALUE; e.g. --test-where group=oxygen")
    values = _column_values(manifest, column.strip(), "--test-where")
    held_out = values == value
    if not held_out.any():
        known = sorted(set(values))
        more = ", ..." if len(known) > 12 else ""
        raise MlkitError(f"split: --test-where {test_where}: no row has {column.strip()} {value!r} "
                         f"(values there: {', '.join(map(repr, known[:12]))}{more})")
    return held_out


def _check_held_out(current, held_out, test_where, images):
    """Existing splits must agree with `test_where`: its rows test, no others."""
    clash = np.flatnonzero((current != "") & ((current == "test") != held_out))
    if len(clash):
        raise MlkitError(
            f"split: {len(clash)} rows already have a split that --test-where {test_where} contradicts "
            f"(e.g. {images[clash[0]]} is {current[clash[0]]!r}); pass --resplit to reassign every row"
        )


def _merge_groups(*labellings):
    """One group id per row, joining rows that share a group in any labelling (-1: no group there)."""
    # Imported here: scipy.sparse adds a quarter of a second to every `mlkit data` command's start.
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n_rows, rows, nodes, offset = len(labellings[0]), [], [], len(labellings[0])
    for ids in labellings:
        grouped = np.flatnonzero(ids >= 0)
        rows.append(grouped)
        nodes.append(ids[grouped] + offset)
        offset += int(ids.max(initial=-1)) + 1
    rows, nodes = np.concatenate(rows), np.concatenate(nodes)
    graph = coo_matrix((np.ones(len(rows)), (rows, nodes)), shape=(offset, offset))
    return connected_components(graph, directed=False)[1][:n_rows]


def _row_groups(manifest, group_by, duplicate_groups):
    """A group id per row (-1 for a row on its own), or None when nothing groups the rows."""
    labellings = []
    if group_by:
        values = _column_values(manifest, group_by, "--group-by")
        codes = pd.factorize(values)[0]
        labellings.append(np.where(values == "", -1, codes))
    if duplicate_groups:
        duplicates = [duplicate_groups.get(image, -1) for image in manifest.rows["image"]]
        labellings.append(np.array(duplicates, dtype=np.int64))
    if not labellings:
        return None
    return labellings[0] if len(labellings) == 1 else _merge_groups(*labellings)


def _warn_straddling_groups(row_groups, held_out, test_where):
    if row_groups is None or held_out is None:
        return
    grouped = row_groups >= 0
    straddling = np.intersect1d(row_groups[grouped & held_out], row_groups[grouped & ~held_out])
    if len(straddling):
        logger.warning("split: %d groups have rows both in --test-where %s and outside it; those rows are test "
                       "and the others train or val", len(straddling), test_where)


def _test_fraction(test, test_where):
    if test_where is None:
        return DEFAULT_TEST if test is None else test
    if test is not None:
        raise MlkitError(f"split: --test {test} and --test-where {test_where} both choose the test rows; give one")
    return 0.0


def split_manifest(
    path: StrPath, val: float = 0.15, test: float | None = None, seed: int = 0, resplit: bool = False,
    groups: Sequence[Hashable] | None = None, group_by: str | None = None, test_where: str | None = None,
) -> Manifest:
    """Fills the manifest's `split` column with a stratified train/val/test split.

    Rows that already have a split keep it; only rows with an empty split
    are assigned, so rows appended to a split manifest never move old rows
    between splits (the cache and any reported test scores stay valid). The
    new rows fill toward the requested proportions, stratified while taking
    the existing assignment into account. The file is rewritten atomically;
    its other cells are left as they were.

    Two options hold a source of variation out. `group_by` names a column
    (a photographer, a site, a theme): rows with the same value go to one
    split, so no group is seen in training and scored in testing; an empty
    cell is a row on its own. `test_where` ("COLUMN=VALUE") makes exactly
    the rows with that value the test split (one theme or microscope never
    trained on); the others are stratified into train and val. Rows of a
    `group_by` group outside the named test rows stay together.

    Args:
        path: the manifest file.
        val: the fraction of rows for validation; with `test_where`, of the
            rows outside the test split. Defaults to 0.15.
        test: the fraction of rows for testing; not with `test_where`.
            Defaults to None: 0.15, or only the `test_where` rows.
        seed: the same seed and manifest give the same split. Defaults to 0.
        resplit: reassign every row, discarding existing splits. Defaults to False.
        groups: {image: group id} (`read_duplicate_groups`):
            rows of one group go to one split. Defaults to None.
        group_by: a column whose equal values go to one split. Defaults to None.
        test_where: "COLUMN=VALUE", the rows that are the test split. Existing
            splits must agree (`resplit` otherwise). Defaults to None.

    Returns:
        The `Manifest` with its new splits.

    Example:
        manifest = split_manifest("data/manifest.csv", val=0.1, test=0.1, seed=1)
        manifest = split_manifest("icons/manifest.csv", val=0.15, test_where="group=oxygen")
    """
    test = _test_fraction(test, test_where)
    _check_fractions(val, test)
    manifest = read_manifest(path, allow_unlabelled=True)
    current = np.where(resplit, "", manifest.splits()).astype(object)
    held_out = _held_out_rows(manifest, test_where) if test_where else None
    row_groups = _row_groups(manifest, group_by, groups)
    if held_out is not None:
        _check_held_out(current, held_out, test_where, manifest.rows["image"].to_numpy())
    todo = current == ""
    if not todo.any():
        logger.info("split: every row of %s already has a split; pass --resplit to reassign them", path)
        return manifest
    if held_out is not None:
        current[held_out] = "test"
        _warn_straddling_groups(row_groups, held_out, test_where)
    splits = _assign_splits(manifest, current, held_out, row_groups, [1 - val - test, val, test], seed)
    update_column(manifest.path, "split", splits)
    manifest.rows["split"] = splits
    new = pd.Series(splits)[todo].value_counts()
    logger.info(
        "split: assigned %d rows (%s), %d kept their split; %s now has %s",
        todo.sum(), ", ".join(f"{fold} {new.get(fold, 0)}" for fold in SPLITS), (~todo).sum(), path,
        ", ".join(f"{fold} {splits.count(fold)}" for fold in SPLITS),
    )
    return manifest


def _assign_splits(manifest, current, held_out, row_groups, fractions, seed):
    """The split of every row: the held-out rows test, the others stratified (by group when grouped)."""
    row_labels, n_labels = _strata(manifest)
    assigned = np.array([SPLITS.index(split) if split else -1 for split in current])
    rest = np.flatnonzero(~held_out) if held_out is not None else np.arange(len(current))
    labels = [row_labels[row] for row in rest]
    if row_groups is not None:
        folds = split_by_groups(labels, n_labels, fractions, assigned[rest], row_groups[rest], seed=seed)
    else:
        folds = iterative_stratification(labels, n_labels, fractions, assigned[rest], seed=seed)
    assigned[rest] = folds
    return [SPLITS[fold] for fold in assigned]


def read_duplicate_groups(audit):
    """{image: group} for every image in a duplicate group, from an audit folder (`mlkit audit`) or its groups.csv."""
    path = Path(audit)
    path = path / GROUPS_CSV if path.is_dir() else path
    if not path.exists():
        raise MlkitError(f"no duplicate groups at {path}; run `mlkit audit CACHE` and pass its audit/<cache>/ folder")
    groups = pd.read_csv(path, dtype={"image": str, "group": int}, keep_default_na=False)
    return dict(zip(groups["image"], groups["group"]))
