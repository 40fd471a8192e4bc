"""What is in a manifest: rows per split, label counts, cardinality, image sizes.

`manifest_stats` returns the numbers as a dict (JSON-ready); `format_stats`
turns them into the table `mlkit data stats` prints.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from mlkit.data.manifest import read_manifest
from mlkit.files import StrPath
from mlkit.images import ImageReadError, open_image_file
from mlkit.vocabulary import SPLITS

logger = logging.getLogger(__name__)

SPLIT_ORDER = (*SPLITS, "")
# Image headers are read in threads: the work is file-open latency, not CPU.
HEADER_READ_THREADS = 8
UNREADABLE_EXAMPLES = 5


def _image_size(path):
    """(width, height) from the image header, or the reason it cannot be read."""
    try:
        with open_image_file(path) as handle, Image.open(handle) as image:
            return image.size
    except ImageReadError as error:
        return error.reason
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        return f"{type(error).__name__}: {error}"


def _summary(values):
    values = np.asarray(values, dtype=float)
    return {"min": float(values.min()), "median": float(np.median(values)), "max": float(values.max())}


def image_size_stats(paths):
    """Width and height distribution of images, read from their headers.

    Args:
        paths: image file paths.

    Returns:
        A dict: `checked`, `unreadable` (a count), `unreadable_examples`
        (up to 5 "path: reason" strings), and `width`/`height` with min,
        median and max (absent when no image could be read).
    """
    with ThreadPoolExecutor(HEADER_READ_THREADS) as pool:
        sizes = list(pool.map(_image_size, paths))
    failures = [f"{path}: {size}" for path, size in zip(paths, sizes) if isinstance(size, str)]
    readable = np.array([size for size in sizes if not isinstance(size, str)]).reshape(-1, 2)
    stats = {"checked": len(paths), "unreadable": len(failures), "unreadable_examples": failures[:UNREADABLE_EXAMPLES]}
    if len(readable):
        stats["width"] = _summary(readable[:, 0])
        stats["height"] = _summary(readable[:, 1])
    return stats


def _classification_stats(manifest, splits, names):
    """Label counts per split, cardinality, density and unlabelled rows."""
    y = manifest.label_array()
    if manifest.task == "multiclass":
        y = np.eye(len(manifest.label_names), dtype=np.uint8)[y]
    per_row = y.sum(axis=1)
    counts = {label: {"all": int(count)} for label, count in zip(manifest.label_names, y.sum(axis=0))}
    cardinality = {"all": float(per_row.mean())}
    for split in names:
        chosen = splits == split
        for label, count in zip(manifest.label_names, y[chosen].sum(axis=0)):
            counts[label][split] = int(count)
        cardinality[split] = float(per_row[chosen].mean())
    return {
        "labels": counts,
        "cardinality": cardinality,
        "density": cardinality["all"] / max(1, len(manifest.label_names)),
        "unlabelled": int((per_row == 0).sum()),
    }


def _regression_stats(manifest, splits, names):
    y = manifest.label_array()
    targets = {}
    for column, target in enumerate(manifest.target_names):
        targets[target] = {}
        for split in ("all",) + tuple(names):
            values = y[:, column] if split == "all" else y[splits == split, column]
            targets[target][split] = {"min": float(values.min()), "mean": float(values.mean()), "max": float(values.max())}
    return {"targets": targets}


def manifest_stats(path: StrPath, read_images: bool = True) -> dict:
    """Counts what a manifest holds.

    Args:
        path: the manifest file.
        read_images: read every image's header for the size distribution and
            the count of unreadable files. Defaults to True.

    Returns:
        A dict with `manifest`, `task`, `rows`, `splits` (rows per split,
        "" for rows without one), then for classification `labels` (count
        per label, overall as "all" and per split), `cardinality` (mean
        labels per image, overall and per split), `density` (cardinality /
        number of labels) and `unlabelled`; for regression `targets`
        (min/mean/max overall and per split); and `images` (see
        `image_size_stats`) unless `read_images` is False.

    Example:
        stats = manifest_stats("data/manifest.csv", read_images=False)
        print(stats["cardinality"]["all"])
    """
    manifest = read_manifest(path, allow_unlabelled=True)
    splits = manifest.splits()
    present = [split for split in SPLIT_ORDER if (splits == split).any()]
    stats = {
        "manifest": str(manifest.path),
        "task": manifest.task,
        "rows": len(manifest.rows),
        "splits": {split: int((splits == split).sum()) for split in present},
    }
    if manifest.task == "regression":
        stats.update(_regression_stats(manifest, splits, present))
    else:
        stats.update(_classification_stats(manifest, splits, present))
    if read_images:
        stats["images"] = image_size_stats(manifest.image_paths())
    return stats


def _split_name(split):
    return split or "(none)"


def _table(header, rows):
    """Left-aligned first column, right-aligned numbers."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = []
    for row in [header, *rows]:
        cells = [str(row[0]).ljust(widths[0])] + [str(cell).rjust(width) for cell, width in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    return lines


def _classification_lines(stats, max_labels):
    splits = list(stats["splits"])
    lines = [f"label cardinality {stats['cardinality']['all']:.3f} (mean labels per image), density "
             f"{stats['density']:.4f}, rows with no labels {stats['unlabelled']}", ""]
    ranked = sorted(stats["labels"].items(), key=lambda item: (-item[1]["all"], item[0]))
    shown = ranked if max_labels <= 0 else ranked[:max_labels]
    header = ["label", *map(_split_name, splits), "all"]
    lines += _table(header, [[label, *(counts[s] for s in splits), counts["all"]] for label, counts in shown])
    if len(shown) < len(ranked):
        rest = ranked[len(shown):]
        lines.append(f"... {len(rest)} more labels with {rest[-1][1]['all']} to {rest[0][1]['all']} rows each "
                     "(--max-labels 0 lists all)")
    return lines


def _regression_lines(stats):
    lines = []
    for target, per_split in stats["targets"].items():
        rows = [[_split_name(split), f"{v['min']:.4g}", f"{v['mean']:.4g}", f"{v['max']:.4g}"]
                for split, v in per_split.items()]
        lines += _table([target, "min", "mean", "max"], rows)
    return lines


def _image_lines(images):
    lines = [f"images: {images['checked']} checked, {images['unreadable']} unreadable"]
    if "width" in images:
        rows = [[axis, *(f"{images[axis][key]:g}" for key in ("min", "median", "max"))] for axis in ("width", "height")]
        lines += _table(["size (px)", "min", "median", "max"], rows)
    lines += [f"  unreadable: {example}" for example in images["unreadable_examples"]]
    return lines


def format_stats(stats, max_labels=50):
    """The stats as a printable table.

    Args:
        stats: what `manifest_stats` returned.
        max_labels: list at most this many labels, most frequent first; 0
            lists all. Defaults to 50.

    Returns:
        The table as one string.
    """
    splits = stats["splits"]
    lines = [f"{stats['manifest']}: {stats['task']}, {stats['rows']} rows"]
    lines += _table(["split", *map(_split_name, splits), "all"], [["rows", *splits.values(), stats["rows"]]])
    lines.append("")
    if stats["task"] == "regression":
        lines += _regression_lines(stats)
    else:
        lines += _classification_lines(stats, max_labels)
    if "images" in stats:
        lines += [""] + _image_lines(stats["images"])
    return "\n".join(lines)
