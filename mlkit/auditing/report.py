"""Writes an audit's files: issues.csv, review.csv (the shortlist), summary.json, groups.csv, scores.npz and
contact sheets.

Every file is written under a temporary name in its folder and renamed into
place, so a reader never sees half a file. Contact sheets are drawn on
matplotlib's Agg canvas (no pyplot, no display): the top findings of one
kind as thumbnails, pairs side by side, captioned with the given and
suggested labels.
"""

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from mlkit.auditing.config import ISSUES_CSV, KINDS, PAIR_KINDS, REVIEW_COLUMN, REVIEW_CSV, SCORES_NPZ, SUMMARY_JSON
from mlkit.data.split import GROUPS_CSV
from mlkit.files import atomic_path, write_json
from mlkit.images import ImageReadError, load_image

THUMB = 112
SHEET_COLUMNS = 4
CAPTION_WIDTH = 34


def thumbnail(path, size=THUMB):
    """An RGB `size` x `size` thumbnail on white, or a grey square when the image cannot be read."""
    canvas = Image.new("RGB", (size, size), "white")
    try:
        # Read as every stage reads images: regular files only, decompression bombs refused.
        image = Image.fromarray(load_image(path))
    except ImageReadError:
        canvas.paste((170, 170, 170), (0, 0, size, size))
        return np.asarray(canvas)
    image.thumbnail((size, size))
    canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return np.asarray(canvas)


def finding_picture(finding, root):
    """The finding's thumbnail, or its two thumbnails side by side for a pair."""
    picture = thumbnail(root / finding["image"])
    if finding["kind"] in PAIR_KINDS and finding["partner_image"]:
        gap = np.full((THUMB, 6, 3), 255, dtype=np.uint8)
        picture = np.concatenate([picture, gap, thumbnail(root / finding["partner_image"])], axis=1)
    return picture


def finding_caption(finding):
    """Row, score, and the labels: given -> suggested (partner's labels for pairs)."""
    head = f"row {finding['row']}" + (f" & {finding['partner_row']}" if finding["kind"] in PAIR_KINDS else "")
    head += f"  {finding['match'] + ' ' if finding['match'] else ''}{finding['score']:.2f}"
    if finding["kind"] in PAIR_KINDS:
        body = f"{finding['given'] or '-'} / {finding['partner_given'] or '-'}"
        if finding["split"] != finding["partner_split"]:
            body += f"  [{finding['split'] or '-'}/{finding['partner_split'] or '-'}]"
    elif finding["suggested"]:
        body = f"{finding['given']} -> {finding['suggested']}"
    else:
        body = finding["given"]
    return head + "\n" + textwrap.shorten(body, 2 * CAPTION_WIDTH, placeholder="...")


def contact_sheet(path, findings, root, title):
    """Writes one kind's top findings as a grid of captioned thumbnails; returns the path."""
    columns = min(SHEET_COLUMNS, len(findings))
    lines = len(findings) // columns + (len(findings) % columns > 0)
    figure = Figure(figsize=(3.2 * columns, 2.6 * lines + 0.4))
    FigureCanvasAgg(figure)
    for position, (_, finding) in enumerate(findings.iterrows()):
        axes = figure.add_subplot(lines, columns, position + 1)
        axes.imshow(finding_picture(finding, root))
        axes.set_axis_off()
        axes.set_title("\n".join(textwrap.wrap(finding_caption(finding), CAPTION_WIDTH, replace_whitespace=False)[:4]),
                       fontsize=7, loc="left")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=72, format="png")
    return Path(path)


def shortlisted(issues):
    """The shortlist in review order."""
    chosen = issues[issues[REVIEW_COLUMN] > 0]
    return chosen.sort_values(REVIEW_COLUMN, kind="stable")


def contact_sheets(folder, issues, root, size):
    """One contact sheet `<kind>.png` per kind on the shortlist, its first `size` findings; removes stale ones."""
    written = {}
    review = shortlisted(issues)
    for kind in KINDS:
        path = folder / f"{kind}.png"
        chosen = review[review["kind"] == kind].head(size)
        if chosen.empty:
            path.unlink(missing_ok=True)
            continue
        title = f"{kind.replace('_', ' ')}: top {len(chosen)} of {int((issues['kind'] == kind).sum())}"
        written[kind] = contact_sheet(path, chosen, root, title)
    return written


def write_groups(path, table, duplicate_group, exact_group):
    """groups.csv: every row in a duplicate group, with its group and exact-hash group."""
    import pandas as pd

    members = np.flatnonzero(duplicate_group >= 0)
    frame = pd.DataFrame({"row": table["rows"][members], "image": table["image"][members],
                          "split": table["split"][members], "group": duplicate_group[members],
                          "exact_group": exact_group[members]})
    with atomic_path(path) as tmp:
        frame.sort_values(["group", "row"]).to_csv(tmp, index=False)


def write_scores(path, table, outlier, labels):
    """scores.npz: per audited row, its manifest row, outlier score and (with the label check) out-of-fold
    scores (the fold tops' and the linear witness's averaged, and each apart), the label probabilities
    combined from every witness, and the label score."""
    arrays = {"row": table["rows"], "outlier_score": outlier}
    if labels is not None:
        arrays.update(oof_scores=labels["scores"], top_scores=labels["top_scores"], fold=labels["folds"],
                      label_probabilities=labels["probabilities"], label_score=labels["quality"].score,
                      label_flagged=labels["quality"].flagged, labels=table["labels"])
        if "linear_scores" in labels:
            arrays["linear_scores"] = labels["linear_scores"]
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def review_counts(issues, size):
    """summary.json's "review": the shortlist's size, and per kind how many are on it and beyond it."""
    on = issues[REVIEW_COLUMN] > 0
    return {"size": size, "shortlisted": int(on.sum()),
            "on_shortlist": {kind: int((on & (issues["kind"] == kind)).sum()) for kind in KINDS},
            "beyond": {kind: int((~on & (issues["kind"] == kind)).sum()) for kind in KINDS}}


def summarise(cache, table, issues, duplicate_group, exact_group, near, near_record, labels, config, timer, sheets):
    """The contents of summary.json."""
    counts = issues.groupby(["kind", "match"]).size()
    return {
        "cache": str(cache.path.resolve()), "task": cache.task, "rows": int(len(table["rows"])),
        "manifest": cache.attrs.get("manifest_path", ""), "manifest_root": cache.attrs.get("manifest_root", ""),
        "findings": {kind: int((issues["kind"] == kind).sum()) for kind in KINDS},
        "review": review_counts(issues, config.review),
        "pairs": {f"{kind}_{match}": int(count) for (kind, match), count in counts.items() if match},
        "exact_groups": int(exact_group.max() + 1) if len(exact_group) else 0,
        "near_pairs": int(len(near[0])), "near_duplicates": near_record, "duplicate_groups": int(duplicate_group.max() + 1) if len(duplicate_group) else 0,
        "rows_in_duplicate_groups": int((duplicate_group >= 0).sum()),
        "label_check": None if labels is None else {"flagged": int(labels["quality"].flagged.sum()), "folds": config.folds,
                                                    "repeats": config.repeats, "taps": labels["taps"],
                                                    "score": labels["score_description"]},
        "contact_sheets": {kind: path.name for kind, path in sheets.items()},
        "config": config.to_dict(), "timings": timer.parts,
    }


def write_all(folder, cache, table, issues, duplicate_group, exact_group, near, near_record, outlier, labels, config,
              timer):
    """Writes every file of the audit into `folder` and returns the summary."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / ISSUES_CSV) as tmp:
        issues.to_csv(tmp, index=False, float_format="%.4f")
    with atomic_path(folder / REVIEW_CSV) as tmp:
        shortlisted(issues).to_csv(tmp, index=False, float_format="%.4f")
    write_groups(folder / GROUPS_CSV, table, duplicate_group, exact_group)
    write_scores(folder / SCORES_NPZ, table, outlier, labels)
    root = Path(cache.attrs.get("manifest_root", "."))
    sheets = contact_sheets(folder, issues, root, config.sheet_size)
    timer.done("report")
    summary = summarise(cache, table, issues, duplicate_group, exact_group, near, near_record, labels, config, timer,
                        sheets)
    write_json(folder / SUMMARY_JSON, summary)
    return summary
