"""Test data for the audit: the synthetic set with planted near duplicates, injected label errors, and
the flags compared with cleanlab's.

Shared by tests/test_audit*.py and benchmarks/audit_quality.py.
"""

import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

PRETRAINED = Path(__file__).resolve().parents[1].parent / "shared" / "pretrained" / "mobilenetv2_nsfwjs.weights.h5"
# One copy per edit the issue names, and one with all three at once.
VARIANTS = ("jpeg75", "resize80", "crop5", "all3")


def variant(image, kind):
    """The image re-encoded as JPEG q75, resized by 0.8, cropped by 5% (2.5% off each side), or all three.

    Transparency is kept, except in the JPEGs, which are composited on white as cache-features does.
    """
    image = image.convert("RGBA")
    if kind == "all3":
        return variant(variant(variant(image, "resize80"), "crop5"), "jpeg75")
    if kind == "jpeg75":
        flat = Image.new("RGBA", image.size, "white")
        flat.alpha_composite(image)
        buffer = io.BytesIO()
        flat.convert("RGB").save(buffer, format="JPEG", quality=75)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    if kind == "resize80":
        return image.resize((round(image.width * 0.8), round(image.height * 0.8)), Image.BILINEAR)
    dx, dy = round(image.width * 0.025), round(image.height * 0.025)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


def plant_near_duplicates(manifest_path, sources, seed=0):
    """Appends one copy of each variant of every source row to the manifest.

    Returns:
        The planted groups: a list of manifest-row index lists, the source first.
    """
    manifest_path = Path(manifest_path)
    table = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
    rng = np.random.default_rng(seed)
    splits = ("train", "val", "test")
    added, groups = [], []
    (manifest_path.parent / "images").mkdir(exist_ok=True)
    for source in sources:
        row = table.iloc[source]
        group = [int(source)]
        with Image.open(manifest_path.parent / row["image"]) as image:
            for kind in VARIANTS:
                name = f"images/{source}_{Path(row['image']).stem}_{kind}.{'jpg' if kind in ('jpeg75', 'all3') else 'png'}"
                variant(image, kind).save(manifest_path.parent / name)
                copy = row.copy()
                copy["image"] = name
                if "split" in copy:
                    copy["split"] = splits[rng.integers(3)]
                group.append(len(table) + len(added))
                added.append(copy)
        groups.append(group)
    pd.concat([table, pd.DataFrame(added)], ignore_index=True).to_csv(manifest_path, index=False)
    return groups


# Distinct pictures of one layout: national tricolours (their usual colours), vertical and horizontal
# stripes. Two of one orientation differ only in the colours of one, two or three stripes.
VERTICAL_FLAGS = {
    "france": ("#0055a4", "#ffffff", "#ef4135"), "italy": ("#009246", "#ffffff", "#ce2b37"),
    "ireland": ("#169b62", "#ffffff", "#ff883e"), "belgium": ("#000000", "#fdda24", "#ef3340"),
    "romania": ("#002b7f", "#fcd116", "#ce1126"), "mali": ("#14b53a", "#fcd116", "#ce1126"),
    "guinea": ("#ce1126", "#fcd116", "#009460"), "peru": ("#d91023", "#ffffff", "#d91023"),
    "nigeria": ("#008751", "#ffffff", "#008751"), "ivory_coast": ("#f77f00", "#ffffff", "#009e60"),
}
HORIZONTAL_FLAGS = {
    "germany": ("#000000", "#dd0000", "#ffce00"), "netherlands": ("#ae1c28", "#ffffff", "#21468b"),
    "russia": ("#ffffff", "#0039a6", "#d52b1e"), "hungary": ("#ce2939", "#ffffff", "#477050"),
    "bulgaria": ("#ffffff", "#00966e", "#d62612"), "lithuania": ("#fdb913", "#006a44", "#c1272d"),
    "estonia": ("#0072ce", "#000000", "#ffffff"), "austria": ("#ed2939", "#ffffff", "#ed2939"),
    "yemen": ("#ce1126", "#ffffff", "#000000"), "sierra_leone": ("#1eb53a", "#ffffff", "#0072c6"),
    "gabon": ("#009e60", "#fcd116", "#3a75c4"), "armenia": ("#d90012", "#0033a0", "#f2a800"),
    "luxembourg": ("#ed2939", "#ffffff", "#00a1de"),
}


def tricolour(colours, vertical, width=300, height=200):
    """A flag of three equal stripes: uint8 (height, width, 3)."""
    pixels = np.zeros((height, width, 3), np.uint8)
    for stripe, colour in enumerate(colours):
        rgb = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
        if vertical:
            pixels[:, stripe * width // 3:(stripe + 1) * width // 3] = rgb
        else:
            pixels[stripe * height // 3:(stripe + 1) * height // 3] = rgb
    return pixels


def write_flags(folder, names=None):
    """PNGs of the flags (all, or `names`) and their manifest (labels: the orientation); returns the manifest path."""
    folder = Path(folder)
    (folder / "flags").mkdir(parents=True, exist_ok=True)
    flags = {**VERTICAL_FLAGS, **HORIZONTAL_FLAGS}
    rows = []
    for name in names or flags:
        vertical = name in VERTICAL_FLAGS
        Image.fromarray(tricolour(flags[name], vertical)).save(folder / "flags" / f"{name}.png")
        rows.append({"image": f"flags/{name}.png", "labels": "vertical" if vertical else "horizontal"})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


NOISE_KINDS = ("swap", "add", "drop")


def inject_label_errors(labels, task, share=0.05, seed=0, kind="mixed"):
    """Corrupts `share` of the rows, and returns (noisy labels, corrupted row indices).

    Kinds: "swap" gives a row the labels of another row whose labels differ (for multiclass: a
    class flip, the same thing); "add" adds one false label; "drop" removes one true label (only
    from rows with two or more); "mixed" (multilabel) drops or adds, at random. Multiclass labels
    are always flipped to another class.
    """
    rng = np.random.default_rng(seed)
    labels = np.array(labels, copy=True)
    eligible = np.arange(len(labels))
    if task == "multilabel" and kind == "drop":
        eligible = np.flatnonzero(labels.sum(axis=1) >= 2)
    rows = np.sort(rng.choice(eligible, int(round(share * len(labels))), replace=False))
    original = labels.copy()
    for row in rows:
        if task == "multiclass":
            num_classes = int(labels.max()) + 1
            labels[row] = (labels[row] + rng.integers(1, num_classes)) % num_classes
            continue
        if kind == "swap":
            differ = np.flatnonzero((original != original[row]).any(axis=1))
            labels[row] = original[rng.choice(differ)]
            continue
        present, absent = np.flatnonzero(labels[row]), np.flatnonzero(labels[row] == 0)
        mixed_drop = kind == "mixed" and len(present) > 1 and (len(absent) == 0 or rng.random() < 0.5)
        drop = kind == "drop" or mixed_drop
        labels[row, rng.choice(present if drop else absent)] = 0 if drop else 1
    return labels, rows


def precision_recall(flagged_rows, true_rows):
    flagged, true = set(map(int, flagged_rows)), set(map(int, true_rows))
    hits = len(flagged & true)
    return hits / max(len(flagged), 1), hits / max(len(true), 1)


def ranked_flags(scores):
    """mlkit's flagged rows, most likely wrong first."""
    flagged = np.flatnonzero(scores["label_flagged"])
    return flagged[np.argsort(-scores["label_score"][flagged], kind="stable")]


def cleanlab_ranked_flags(task, labels, oof_scores):
    """cleanlab's `find_label_issues` flags (its default: prune by noise rate), ranked by self-confidence."""
    from cleanlab.filter import find_label_issues
    from cleanlab.multilabel_classification.filter import find_label_issues as find_multilabel_issues

    if task == "multilabel":
        return find_multilabel_issues([np.flatnonzero(row).tolist() for row in labels], oof_scores,
                                      return_indices_ranked_by="self_confidence", n_jobs=1)
    return find_label_issues(labels, oof_scores, return_indices_ranked_by="self_confidence", n_jobs=1)
