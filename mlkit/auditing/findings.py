"""The findings table: one row per finding, the rows of issues.csv.

Columns: kind (leak, conflict, duplicate, label_error, outlier), match (exact
or near, for pairs), row (the manifest row, 0-based), image, split, score,
given and suggested labels (names joined by "|"; targets for regression),
detail, the partner's row, image, split and labels for pairs, the duplicate
group, the action accepting it takes (drop or relabel), and an empty
`decision` column for the user to fill with accept or reject.

A pair is a leak when its two rows sit in different splits, a conflict when
their labels differ, and a plain duplicate otherwise. The row reported (the
one a "drop" removes) is the copy outside the training split, so accepting a
leak keeps the training data; for same-split pairs it is the later row.
"""

import numpy as np
import pandas as pd

from mlkit.auditing import duplicates
from mlkit.auditing.config import ACTIONS, DECISION_COLUMN, KINDS, REVIEW_COLUMN
from mlkit.data.manifest import LABEL_SEP, SPLITS

COLUMNS = ("kind", "match", "row", "image", "split", "score", "given", "suggested", "detail", "partner_row",
           "partner_image", "partner_split", "partner_given", "group", "action", REVIEW_COLUMN, DECISION_COLUMN)
MAD_TO_STD = 1.4826


def outlier_scores(similarities, k):
    """Mean cosine distance to each row's k nearest neighbours (missing neighbours count as distance 2)."""
    nearest = np.where(np.isfinite(similarities[:, :k]), similarities[:, :k], -1.0)
    return (1.0 - nearest).mean(axis=1)


def robust_z(values):
    """(value - median) / (1.4826 MAD): how unusual each value is, insensitive to the outliers themselves."""
    centre = np.median(values)
    scale = MAD_TO_STD * np.median(np.abs(values - centre))
    return (values - centre) / (scale if scale > 0 else values.std() + 1e-12)


def label_text(labels, task, names):
    """One row's labels as the manifest writes them: names joined by "|", a class name, or targets."""
    if task == "multilabel":
        return LABEL_SEP.join(names[j] for j in np.flatnonzero(labels))
    if task == "multiclass":
        return names[int(labels)]
    return LABEL_SEP.join(f"{value:.6g}" for value in np.atleast_1d(labels))


def split_rank(split):
    """Training first, then val, test, and rows without a split."""
    return SPLITS.index(split) if split in SPLITS else len(SPLITS)


def pair_frame(table, pairs, scores, match, text, by=""):
    """Findings for duplicate pairs: leak, conflict or duplicate, oriented as the module says.

    `by` says what each pair rests on ("images 0.97 (colour difference 9), thumbnails 0.91", "features"),
    for the detail; "" for exact pairs.
    """
    split = table["split"]
    a, b = pairs[:, 0], pairs[:, 1]
    swap = np.array([split_rank(split[x]) < split_rank(split[y]) for x, y in zip(a, b)], dtype=bool)
    row, partner = np.where(swap, b, a), np.where(swap, a, b)
    given, partner_given = [text[i] for i in row], [text[i] for i in partner]
    cross = split[row] != split[partner]
    differ = np.array([g != p for g, p in zip(given, partner_given)], dtype=bool)
    kind = np.where(cross, "leak", np.where(differ, "conflict", "duplicate"))
    by = np.broadcast_to(np.asarray(by, dtype=object), len(row))
    detail = ["; ".join(part for part in (f"by {b}" if b else "", "labels differ" if d else "",
                                          f"splits {split[r] or '-'}/{split[p] or '-'}" if c else "") if part)
              for r, p, c, d, b in zip(row, partner, cross, differ, by)]
    return pd.DataFrame({
        "kind": kind, "match": match, "row": row, "score": scores,
        "suggested": [partner_given[i] if k == "conflict" else "" for i, k in enumerate(kind)], "detail": detail,
        "partner_row": partner, "partner_given": partner_given,
    })


def label_frame(labels, task):
    """Findings for the rows the label check flags."""
    quality, names = labels["quality"], labels["names"]
    flagged = np.flatnonzero(quality.flagged)
    return pd.DataFrame({
        "kind": "label_error", "match": "", "row": flagged, "score": quality.score[flagged],
        "suggested": [label_text(quality.suggested[i], task, names) for i in flagged],
        "detail": [quality.detail[i] for i in flagged],
    })


def outlier_frame(outlier, z_threshold, k):
    z = robust_z(outlier)
    rows = np.flatnonzero(z > z_threshold)
    return pd.DataFrame({
        "kind": "outlier", "match": "", "row": rows, "score": z[rows], "suggested": "",
        "detail": [f"mean cosine distance to {k} nearest {outlier[i]:.3f}" for i in rows],
    })


def collect(cache, table, groups, near, outlier, labels, config):
    """All findings as one DataFrame in issues.csv's order, and each row's duplicate group.

    Returns:
        (issues, duplicate_group): the findings, and an int64 group id per
        audited row (-1 outside every group) joining exact and near duplicates.
    """
    names = cache.label_names or list(cache.attrs.get("target_names") or [])
    text = [label_text(value, cache.task, names) for value in table["labels"]]
    exact = duplicates.exact_pairs(groups)
    near_rows, near_partners, near_sims, near_by = near
    near_pairs = np.stack([near_rows, near_partners], axis=1)
    group = duplicates.duplicate_groups(len(groups), np.concatenate([exact, near_pairs]))
    frames = [
        pair_frame(table, exact, np.ones(len(exact)), "exact", text),
        pair_frame(table, near_pairs, near_sims, "near", text, near_by),
        outlier_frame(outlier, config.outlier_z, config.outlier_k),
    ]
    if labels is not None:
        frames.append(label_frame(labels, cache.task))
    found = [frame for frame in frames if len(frame)]
    issues = pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=COLUMNS)
    return shortlist(finish(issues, table, group, text), config.review), group


def finish(issues, table, group, text):
    """Fills the row-derived columns, maps audited rows to manifest rows, and orders the findings.

    Kinds come in KINDS order (leaks first), exact pairs before near ones,
    then by score, highest first.
    """
    if issues.empty:
        return pd.DataFrame(columns=COLUMNS).astype({REVIEW_COLUMN: np.int64})
    at = issues["row"].to_numpy(dtype=np.int64)
    partner = issues["partner_row"] if "partner_row" in issues else pd.Series(np.nan, index=issues.index)
    has_partner = partner.notna().to_numpy()
    paired = partner[has_partner].to_numpy(dtype=np.int64)
    issues = issues.assign(
        image=table["image"][at], split=table["split"][at], group=group[at], given=[text[i] for i in at],
        row=table["rows"][at], action=issues["kind"].map(ACTIONS), **{DECISION_COLUMN: ""})
    for column, values in (("partner_image", table["image"]), ("partner_split", table["split"])):
        cells = np.full(len(issues), "", dtype=object)
        cells[has_partner] = values[paired]
        issues[column] = cells
    partner_row = pd.array([pd.NA] * len(issues), dtype="Int64")
    partner_row[has_partner] = table["rows"][paired]
    issues["partner_row"] = partner_row
    order = np.lexsort((-issues["score"].to_numpy(dtype=float), (issues["match"] != "exact").to_numpy(),
                        issues["kind"].map(KINDS.index).to_numpy()))
    issues = issues.iloc[order].reset_index(drop=True)
    issues = issues.reindex(columns=COLUMNS).assign(**{REVIEW_COLUMN: 0})
    # A column no frame had (partner_given without pairs) comes back as float NaN: make it text first.
    text_columns = ["match", "suggested", "detail", "partner_given"]
    issues[text_columns] = issues[text_columns].astype(object).fillna("")
    return issues


def shortlist(issues, size):
    """Ranks the findings across kinds for review: each kind's next best in turn, `size` of them.

    Scores of different kinds do not compare (a correlation, a z-score, a
    label score), so no kind's scale decides: the first finding of every
    kind comes first (in KINDS order, leaks first), then every kind's second,
    and so on; a kind with fewer findings leaves its turns to the others.

    Args:
        issues: the findings in issues.csv's order (`finish`).
        size: findings to shortlist; 0 for all.

    Returns:
        The findings with their `review` rank (1 = first; 0 beyond the shortlist).
    """
    within = issues.groupby("kind", sort=False).cumcount().to_numpy()
    order = np.lexsort((issues["kind"].map(KINDS.index).to_numpy(), within))
    rank = np.zeros(len(issues), dtype=np.int64)
    chosen = order if not size else order[:size]
    rank[chosen] = np.arange(1, len(chosen) + 1)
    return issues.assign(**{REVIEW_COLUMN: rank})
