"""Adapters: write a manifest from the layouts users already have.

Each adapter reads one source layout, writes a manifest with
`write_manifest` (image paths relative to the manifest's folder), reads it
back to validate it, logs what it did, and returns the manifest's path:

    from_folders   a class-per-folder tree (multiclass), or nested category
                   folders and the file name's words as labels (multilabel),
                   with sidecar captions and a folder level as a group column
    from_coco      COCO `instances_*.json` (multilabel, category names)
    from_imet      iMet 2019 `train.csv` + `labels.csv` (multilabel)
    from_csv       a generic CSV with space-separated label ids or names and
                   an optional caption column (the COMP5329 layout)
"""

import json
import logging
import os
import re
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd

from mlkit.data.manifest import LABEL_SEP, csv_reader, read_manifest, write_manifest
from mlkit.errors import MlkitError
from mlkit.vocabulary import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

# Source columns with these names would be read as manifest columns; carried ones are renamed.
RESERVED_COLUMNS = ("image", "labels", "target", "caption")


def _relative_image(image, manifest_dir):
    """The image path as the manifest should hold it: relative to its folder when possible."""
    image = Path(os.path.abspath(image))
    try:
        return Path(os.path.relpath(image, manifest_dir)).as_posix()
    except ValueError:  # another drive on Windows: no relative path exists
        return image.as_posix()


def _check_label_name(name, where):
    if LABEL_SEP in name:
        raise MlkitError(
            f"{where}: label name {name!r} contains '{LABEL_SEP}', which the manifest uses to join "
            "labels; rename it"
        )
    return name.strip()


def _finish(rows, out, task, source, allow_unlabelled=False):
    """Writes the rows, validates them by reading the manifest back, and logs a summary."""
    path = write_manifest(pd.DataFrame(rows), out)
    manifest = read_manifest(path, task=task, allow_unlabelled=allow_unlabelled)
    logger.info(
        "%s: wrote %d rows with %d labels (%s) to %s",
        source, len(manifest.rows), len(manifest.label_names), task, path,
    )
    return path


def _is_image(path):
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


FOLDER_LABELS = ("first", "path", "name", "path+name")
FOLDER_CAPTIONS = ("none", "sidecar")
# The column `from_folders(group_level=...)` writes, which `split --group-by` and `--test-where` read.
GROUP_COLUMN = "group"
# Where a file name splits into label words: edit-copy, edit_copy, "edit copy".
NAME_WORD_SEPARATORS = re.compile(r"[-_\s]+")


def name_words(stem):
    """The words of a file name's stem, in order, without repeats: "go-next_page" gives go, next, page."""
    return tuple(dict.fromkeys(word for word in NAME_WORD_SEPARATORS.split(stem) if word))


def _folder_labels(folders, stem, labels, where):
    """The label names of one image under `folders` (group level removed), for the `labels` choice."""
    names = {"first": folders[:1], "path": folders, "name": (), "path+name": folders}[labels]
    if labels in ("name", "path+name"):
        names = tuple(names) + name_words(stem)
    return tuple(dict.fromkeys(_check_label_name(name, where) for name in names))


def _check_folder_options(root, labels, captions, group_level, min_label_count):
    if labels not in FOLDER_LABELS:
        raise MlkitError(f"from-folders: --labels {labels!r}: use {', '.join(FOLDER_LABELS)}")
    if captions not in FOLDER_CAPTIONS:
        raise MlkitError(f"from-folders: --captions {captions!r}: use {' or '.join(FOLDER_CAPTIONS)}")
    if group_level is not None and (not isinstance(group_level, int) or group_level < 1):
        raise MlkitError(f"from-folders: --group-level {group_level!r}: give a folder level, 1 for the first "
                         "folder below the root")
    if not isinstance(min_label_count, int) or min_label_count < 1:
        raise MlkitError(f"from-folders: --min-label-count {min_label_count!r}: give a whole number of images, "
                         "1 or more")
    if not root.is_dir():
        raise MlkitError(f"from-folders: {root} is not a folder; give the folder holding one folder per class")


def _drop_rare_labels(rows, min_count, source):
    """Drops labels on fewer than `min_count` rows, and the rows left without a label."""
    counts = Counter(name for row in rows for name in row["labels"])
    rare = {name for name, count in counts.items() if count < min_count}
    if not rare:
        return rows
    kept = []
    for row in rows:
        row["labels"] = tuple(name for name in row["labels"] if name not in rare)
        if row["labels"]:
            kept.append(row)
    if not kept:
        common = ", ".join(f"{name} ({count})" for name, count in counts.most_common(3))
        raise MlkitError(f"{source}: no label is on {min_count} images or more (the most common: {common}); "
                         "lower --min-label-count")
    logger.info("%s: dropped %d of %d labels on fewer than %d images, and %d images left with no label",
                source, len(rare), len(counts), min_count, len(rows) - len(kept))
    return kept


def from_folders(root, out, labels="first", captions="none", group_level=None, min_label_count=1):
    """Writes a manifest from a tree of folders of images.

    With `labels="first"` (a class-per-folder tree), `root/<class>/.../<image>`
    is one multiclass row whose class is its first-level folder. With
    `labels="path"` (nested categories), every folder level becomes a label
    of a multilabel row: `food/fruit/cartoon/x.png` gets food|fruit|cartoon.
    `labels="name"` takes the words of the file name instead (split at `-`,
    `_` and spaces), and `labels="path+name"` both: an icon theme's
    `actions/edit-copy.png` gets actions|edit|copy.

    `group_level` records one folder level in a `group` column instead of
    reading it as a label, for trees that also say where each image came
    from: with `root/<theme>/<context>/<icon>.png` and `group_level=1`, the
    theme is the group (`mlkit data split --test-where group=oxygen` then
    tests on a theme never trained on), and the context the first label.

    Image files are those ending in .jpg .jpeg .png .bmp .gif .tif .tiff .webp
    (any case). Other files (text, sound, SVG, ...) are passed over and counted
    by extension in the log; hidden files and folders are skipped, and so are
    images with no folder (or name, for the name choices) to label them.

    Args:
        root: the top folder of the tree.
        out: the manifest to write (CSV, or JSON Lines for `.jsonl`).
        labels: "first" (multiclass), "path", "name" or "path+name"
            (multilabel). Defaults to "first".
        captions: "sidecar" takes each image's caption from the first line of
            the text file beside it with the same stem (`x.txt` for `x.png`),
            the layout many caption datasets use; images without one get an
            empty caption, and are counted. Defaults to "none".
        group_level: the folder level (1 for the first below `root`) to write
            as the `group` column; images above it are skipped and counted.
            Defaults to None (no group column).
        min_label_count: drop labels on fewer images than this, and images
            left with no label (a class, for "first"). Defaults to 1.

    Returns:
        The manifest's path.

    Example:
        from_folders("plankton/train", "plankton/manifest.csv")
        from_folders("/usr/share/tuxpaint/stamps", "stamps.csv", labels="path", captions="sidecar")
        from_folders("icons", "icons/manifest.csv", labels="path+name", group_level=1, min_label_count=20)
    """
    root, out = Path(root), Path(out)
    _check_folder_options(root, labels, captions, group_level, min_label_count)
    manifest_dir = out.absolute().parent
    rows, passed_over, uncaptioned, unlabelled = [], defaultdict(int), 0, 0
    for path in sorted(root.rglob("*")):
        folders = path.relative_to(root).parts[:-1]
        if any(part.startswith(".") for part in path.relative_to(root).parts) or not path.is_file():
            continue
        if not _is_image(path):
            passed_over[path.suffix.lower() or "(no extension)"] += 1
            continue
        row = {"image": _relative_image(path, manifest_dir)}
        if group_level is not None:
            if len(folders) < group_level:
                unlabelled += 1
                continue
            row[GROUP_COLUMN] = folders[group_level - 1]
            folders = folders[:group_level - 1] + folders[group_level:]
        row["labels"] = _folder_labels(folders, path.stem, labels, f"image {path}")
        if not row["labels"]:
            unlabelled += 1
            continue
        if captions == "sidecar":
            row["caption"] = _sidecar_caption(path)
            uncaptioned += not row["caption"]
        rows.append(row)
    _log_folder_skips(root, passed_over, unlabelled, group_level)
    if uncaptioned:
        logger.warning("from-folders: %d of %d images have no caption file beside them (x.txt for x.png); their "
                       "caption is empty", uncaptioned, len(rows))
    if not rows:
        raise MlkitError(
            f"from-folders: no images found in class folders under {root}; expected "
            f"{root}/<class>/<image> with extensions {' '.join(IMAGE_EXTENSIONS)}"
        )
    rows = _drop_rare_labels(rows, min_label_count, "from-folders")
    task = "multiclass" if labels == "first" else "multilabel"
    return _finish(rows, out, task, "from-folders")


def _log_folder_skips(root, passed_over, unlabelled, group_level):
    if unlabelled:
        why = (f"directly under {root} (no folder to label them)" if group_level is None else
               f"under {root} without a group folder at level {group_level} or a label besides it")
        logger.warning("from-folders: skipped %d images %s", unlabelled, why)
    if passed_over:
        logger.info("from-folders: passed over %d files that are not images (%s)", sum(passed_over.values()),
                    ", ".join(f"{count} {ext}" for ext, count in sorted(passed_over.items())))


def _sidecar_caption(image):
    """The first line of the text file beside `image` with its stem, or "" when there is none."""
    sidecar = image.with_suffix(".txt")
    if not sidecar.is_file():
        return ""
    try:
        with open(sidecar, encoding="utf-8-sig") as handle:
            return handle.readline().strip()
    except UnicodeDecodeError as error:
        raise MlkitError(f"from-folders: caption file {sidecar} is not UTF-8 text ({error.reason} at byte "
                         f"{error.start}); convert it to UTF-8") from None


def _load_json_file(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise MlkitError(f"{path} not found; check the path") from None
    except json.JSONDecodeError as error:
        raise MlkitError(f"{path} is not valid JSON: {error}") from None


def _coco_labels(data, path):
    """Category names per image id, from the annotations."""
    names = {category["id"]: _check_label_name(category["name"], f"{path} category {category['id']}")
             for category in data["categories"]}
    image_ids = {image["id"] for image in data["images"]}
    labels = defaultdict(set)
    for annotation in data["annotations"]:
        name = names.get(annotation["category_id"])
        if name is None or annotation["image_id"] not in image_ids:
            raise MlkitError(
                f"{path}: annotation {annotation.get('id')} refers to category {annotation['category_id']!r} "
                f"and image {annotation['image_id']!r}, and one of them is not listed; is the file complete?"
            )
        labels[annotation["image_id"]].add(name)
    return labels


def from_coco(instances_json, images_dir, out, keep_unlabelled=False):
    """Writes a multilabel manifest from a COCO `instances_*.json`.

    An image's labels are the category names of its annotations. Images
    with no annotations are dropped by default (their count is logged):
    with no labels they cannot be scored, so the COCO report kept them out of
    evaluation. `keep_unlabelled=True` keeps them with split "train", where
    they train as all-negative; stage 1 then needs `--allow-unlabelled`.

    Args:
        instances_json: the COCO file, e.g. `annotations/instances_val2017.json`.
        images_dir: the folder holding the images named by `file_name`.
        out: the manifest to write.
        keep_unlabelled: keep images without annotations (split "train").
            Defaults to False.

    Returns:
        The manifest's path. It has a `coco_id` column with COCO's image id.

    Example:
        from_coco("coco/annotations/instances_val2017.json", "coco/val2017", "coco/val.csv")
    """
    data = _load_json_file(instances_json)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or key not in data:
            raise MlkitError(
                f"from-coco: {instances_json} has no '{key}' list; give a COCO instances_*.json "
                "(captions_*.json has no categories)"
            )
    labels = _coco_labels(data, instances_json)
    manifest_dir = Path(out).absolute().parent
    rows = []
    for image in data["images"]:
        names = tuple(sorted(labels.get(image["id"], ())))
        if names or keep_unlabelled:
            rows.append({
                "image": _relative_image(Path(images_dir) / image["file_name"], manifest_dir),
                "labels": names,
                "split": "" if names else "train",
                "coco_id": image["id"],
            })
    unlabelled = sum(1 for image in data["images"] if image["id"] not in labels)
    if keep_unlabelled:
        logger.info("from-coco: kept %d images without labels as split 'train'; run cache-features with "
                    "--allow-unlabelled (they train as all-negative and stay out of evaluation)", unlabelled)
    elif unlabelled:
        logger.info("from-coco: dropped %d images without labels (pass --keep-unlabelled to keep them "
                    "for training)", unlabelled)
    if not rows:
        raise MlkitError(f"from-coco: {instances_json} lists no annotated images")
    return _finish(rows, out, "multilabel", "from-coco", allow_unlabelled=keep_unlabelled)


def _csv_records(path):
    """Yields (first line number, fields, raw text) for each non-blank record, header first."""
    consumed = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            def lines():
                for text in handle:
                    consumed.append(text)
                    yield text

            reader = csv_reader(lines())
            line = 1
            for fields in reader:
                raw = "".join(consumed)
                consumed.clear()
                if fields:
                    yield line, fields, raw
                line = reader.line_num + 1
    except FileNotFoundError:
        raise MlkitError(f"{path} not found; check the path") from None
    except UnicodeDecodeError as error:
        raise MlkitError(f"{path} is not UTF-8 text: {error}") from None


def _read_header(records, path, required):
    try:
        _, header, _ = next(records)
    except StopIteration:
        raise MlkitError(f"{path} is empty; it needs a header row") from None
    header = [name.strip() for name in header]
    missing = [name for name in required if name not in header]
    if missing:
        raise MlkitError(
            f"{path} has no column {', '.join(map(repr, missing))} (columns found: {', '.join(header)}); "
            "check the column names"
        )
    return header


def _read_id_name_map(path):
    """Reads a two-column `id,name` CSV with a header row into a dict."""
    records = _csv_records(path)
    header = _read_header(records, path, ())
    if len(header) < 2:
        raise MlkitError(f"{path} needs two columns, id and name (found: {', '.join(header)})")
    names = {}
    for line, fields, _ in records:
        if len(fields) < 2:
            raise MlkitError(f"{path} line {line}: expected 'id,name', got {fields!r}")
        names[fields[0].strip()] = _check_label_name(fields[1], f"{path} line {line}")
    return names


def _map_labels(tokens, label_map, where):
    if label_map is None:
        return tuple(dict.fromkeys(tokens))
    unknown = [token for token in tokens if token not in label_map]
    if unknown:
        known = ", ".join(list(label_map)[:8])
        raise MlkitError(f"{where}: label id {unknown[0]!r} is not in the label map (ids there: {known}, ...); "
                         "fix the id or add it to the map")
    return tuple(dict.fromkeys(label_map[token] for token in tokens))


def from_imet(train_csv, labels_csv, images_dir, out):
    """Writes a multilabel manifest from the iMet 2019 layout.

    `train.csv` has columns `id,attribute_ids` (space-separated integer ids);
    `labels.csv` has `attribute_id,attribute_name` (names such as
    `culture::french` or `tag::men`). Image `<id>` is `<images_dir>/<id>.png`.
    Rows without attribute ids are dropped and counted in the log.

    Args:
        train_csv: the iMet `train.csv`.
        labels_csv: the iMet `labels.csv`.
        images_dir: the folder holding `<id>.png`.
        out: the manifest to write.

    Returns:
        The manifest's path.

    Example:
        from_imet("imet/train.csv", "imet/labels.csv", "imet/train", "imet/manifest.csv")
    """
    names = _read_id_name_map(labels_csv)
    records = _csv_records(train_csv)
    header = _read_header(records, train_csv, ("id", "attribute_ids"))
    id_column, ids_column = header.index("id"), header.index("attribute_ids")
    manifest_dir = Path(out).absolute().parent
    rows, dropped = [], 0
    for line, fields, _ in records:
        where = f"{train_csv} line {line}"
        labels = _map_labels(fields[ids_column].split(), names, where)
        if not labels:
            dropped += 1
            continue
        image = Path(images_dir) / f"{fields[id_column].strip()}.png"
        rows.append({"image": _relative_image(image, manifest_dir), "labels": labels})
    if dropped:
        logger.info("from-imet: dropped %d rows without attribute ids", dropped)
    if not rows:
        raise MlkitError(f"from-imet: {train_csv} has no labelled rows")
    return _finish(rows, out, "multilabel", "from-imet")


def _last_cell_from_raw(raw, fields_before):
    """The last column of a one-line record: everything after the `fields_before`-th comma.

    Captions in some CSVs (the caption report's COMP5329 train.csv) hold unquoted commas,
    or quotes inside a quoted field, which a CSV parser splits or mangles.
    """
    cell = raw.rstrip("\r\n").split(",", fields_before)[-1].strip()
    if len(cell) >= 2 and cell[0] == cell[-1] == '"':
        cell = cell[1:-1].replace('""', '"')
    return cell


def _source_fields(header, fields, raw, where, repair_last):
    """One record's fields by column name, with a free-text last column repaired from the raw line."""
    width = len(header)
    one_line = "\n" not in raw.rstrip("\r\n")
    prefix = ",".join(fields[: width - 1]) + ","
    if repair_last and one_line and len(fields) >= width and raw.startswith(prefix):
        fields = fields[: width - 1] + [_last_cell_from_raw(raw, width - 1)]
    if len(fields) != width:
        raise MlkitError(
            f"{where}: {len(fields)} fields where the header has {width}; only a last column of free text "
            "(such as a caption) may hold unquoted commas: quote the field or move that column last"
        )
    return dict(zip(header, fields))


def from_csv(csv, out, image_col, labels_col, caption_col=None, label_map=None, image_dir=None, image_suffix=""):
    """Writes a multilabel manifest from a generic CSV (e.g. the caption report's COMP5329 layout).

    Labels are space-separated ids or names in one column (or joined by "|",
    for names with spaces). A last column of free text (not the image or
    labels column) may hold unquoted commas and stray quotes, as captions in
    the COMP5329 train.csv do: on a one-line record, everything after the
    other columns' commas is its value. Other columns are carried through
    (ones named like a manifest column get a `source_` prefix). Rows with no
    labels are dropped and counted in the log.

    Args:
        csv: the source CSV.
        out: the manifest to write.
        image_col: the column with image file names or paths.
        labels_col: the column with the labels.
        caption_col: the column with captions. Defaults to None (no captions).
        label_map: a two-column `id,name` CSV (with a header row) mapping the
            label ids to names. Defaults to None (the tokens are the names).
        image_dir: the folder image paths are relative to. Defaults to None,
            the CSV's folder.
        image_suffix: appended to each image value, e.g. ".jpg" when the CSV
            holds bare ids. Defaults to "".

    Returns:
        The manifest's path.

    Example:
        from_csv("COMP5329/train.csv", "COMP5329/manifest.csv", "ImageID", "Labels",
                 caption_col="Caption", image_dir="COMP5329/data")
    """
    names = _read_id_name_map(label_map) if label_map is not None else None
    records = _csv_records(csv)
    required = [image_col, labels_col] + ([caption_col] if caption_col else [])
    header = _read_header(records, csv, required)
    carried = {c: f"source_{c}" if c in RESERVED_COLUMNS else c for c in header if c not in required}
    # Image names and labels hold no commas, so overflow there is a real error, not a caption.
    repair_last = header[-1] not in (image_col, labels_col)
    base = Path(image_dir) if image_dir is not None else Path(csv).parent
    manifest_dir = Path(out).absolute().parent
    rows, dropped = [], 0
    for line, fields, raw in records:
        where = f"{csv} line {line}"
        cells = _source_fields(header, fields, raw, where, repair_last)
        cell = cells[labels_col]
        tokens = [t.strip() for t in cell.split(LABEL_SEP)] if LABEL_SEP in cell else cell.split()
        labels = _map_labels([t for t in tokens if t], names, where)
        if not labels:
            dropped += 1
            continue
        row = {"image": _relative_image(base / (cells[image_col].strip() + image_suffix), manifest_dir),
               "labels": labels}
        if caption_col:
            row["caption"] = cells[caption_col]
        row.update({carried[column]: cells[column] for column in carried})
        rows.append(row)
    if dropped:
        logger.info("from-csv: dropped %d rows with no labels", dropped)
    if not rows:
        raise MlkitError(f"from-csv: {csv} has no labelled rows")
    return _finish(rows, out, "multilabel", "from-csv")
