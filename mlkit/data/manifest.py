"""The manifest: the one input format every stage reads.

A manifest is a CSV (or JSON Lines) file with a header. Columns:

    image     path, relative to the manifest's folder or absolute (required)
    labels    label names joined by "|" (multilabel and multiclass)
    target    number(s) joined by "|" (regression)
    caption   free text for the caption branch (optional)
    split     train / val / test, or empty (optional; `mlkit data split` fills it)

Any other column is kept and carried through unchanged. Reading validates
every row and names the file, the row and the line of anything wrong, so a
bad manifest fails here in a second instead of an hour into stage 1. Image
files are not opened here: stage 1 reports unreadable images.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mlkit.errors import ManifestError
from mlkit.files import StrPath, atomic_path
from mlkit.vocabulary import SPLITS, TASKS

LABEL_SEP = "|"
JSON_SUFFIXES = (".jsonl", ".json")
# The columns the reader interprets; every other column passes through untouched.
KNOWN_COLUMNS = ("image", "labels", "target", "caption", "split")


@dataclass
class Manifest:
    """A validated manifest.

    `rows` holds one row per image: `image` (the path as written), `labels`
    (a tuple of names) or `target` (a tuple of floats), `caption` (str or
    None) when the file has that column, `split` ("" when none), and every
    other column as read.

    Example:
        manifest = read_manifest("data/manifest.csv")
        y = manifest.label_array()
        train = manifest.splits() == "train"
    """

    path: Path
    task: str
    rows: pd.DataFrame
    label_names: list = field(default_factory=list)
    target_names: list = field(default_factory=list)

    @property
    def root(self):
        """The manifest's folder, which relative image paths start from."""
        return Path(self.path).parent

    def image_paths(self):
        """Absolute image paths, relative ones resolved against `root`."""
        root = self.root
        return [Path(os.path.normpath(root / image)) for image in self.rows["image"]]

    def label_array(self):
        """Labels as arrays.

        Returns:
            multilabel: uint8 (N, L) multi-hot in `label_names` order;
            multiclass: int32 (N,) indices into `label_names`;
            regression: float32 (N, T) targets.
        """
        if self.task == "regression":
            return np.array(list(self.rows["target"]), dtype=np.float32).reshape(len(self.rows), -1)
        index = {name: i for i, name in enumerate(self.label_names)}
        labels = self.rows["labels"]
        if self.task == "multiclass":
            return np.array([index[names[0]] for names in labels], dtype=np.int32)
        multi_hot = np.zeros((len(labels), len(self.label_names)), dtype=np.uint8)
        row_index = np.repeat(np.arange(len(labels)), [len(names) for names in labels])
        column_index = [index[name] for names in labels for name in names]
        multi_hot[row_index, column_index] = 1
        return multi_hot

    def refuse_constant_labels(self):
        """Raises ManifestError when every row has the same labels (or target): there is nothing to learn."""
        message = constant_labels_message(self.label_array(), self.task, self.label_names)
        if message:
            raise ManifestError(f"{self.path}: every one of its {len(self.rows)} rows {message}; a model "
                                "cannot learn anything from that. Add rows of other labels")

    def splits(self):
        """The split of each row as an object array of str ("" where none)."""
        return np.array(list(self.rows["split"]), dtype=object)

    def captions(self):
        """The caption of each row (str or None), or None without a caption column."""
        if "caption" not in self.rows:
            return None
        return list(self.rows["caption"])

    def manifest_hash(self):
        """sha256 hex digest of the canonical rows, in order.

        Covers the image path, the label set (sorted) or targets, the split and
        the caption: what a cache built from this manifest depends on. Extra
        columns and formatting (quoting, label order, spacing) do not count.
        """
        if self.task == "regression":
            answers = [list(target) for target in self.rows["target"]]
        else:
            answers = [sorted(labels) for labels in self.rows["labels"]]
        captions = self.captions() or [None] * len(self.rows)
        digest = hashlib.sha256()
        for record in zip(self.rows["image"], answers, self.rows["split"], captions):
            digest.update(json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode())
            digest.update(b"\n")
        return digest.hexdigest()


def constant_labels_message(labels, task, names=()):
    """What all `labels` rows share when they are all the same ("has the labels cat"), else None."""
    labels = np.asarray(labels)
    if len(labels) == 0 or not (labels == labels[:1]).all():
        return None
    first = labels[0]
    if task == "regression":
        return f"has the target {', '.join(f'{v:g}' for v in np.ravel(first))}"
    chosen = [int(first)] if task == "multiclass" else np.flatnonzero(first).tolist()
    shown = [str(names[i]) if i < len(names) else str(i) for i in chosen]
    return f"has the label{'s' if len(shown) != 1 else ''} {' | '.join(shown) or '(none)'}"


class _RowLocator:
    """Names a data row for error messages: "FILE row 3 (line 4)".

    CSV line numbers are worked out only when an error needs one, since a
    quoted caption may span lines and finding them means a second parse.
    """

    def __init__(self, path, lines=None):
        self.path = path
        self._lines = lines

    def __call__(self, index):
        if self._lines is None:
            self._lines = _csv_record_lines(self.path)
        line = self._lines[index] if index < len(self._lines) else "?"
        return f"{self.path} row {index + 1} (line {line})"


# Python's csv refuses fields over 131,072 characters; a long caption is a fine field. Its limit is
# process-wide, so it is raised where mlkit makes a reader.
CSV_FIELD_LIMIT = 2**31 - 1


def csv_reader(lines):
    """`csv.reader(lines)` with no practical limit on a field's length."""
    csv.field_size_limit(CSV_FIELD_LIMIT)
    return csv.reader(lines)


def _csv_record_lines(path):
    """The file line on which each data record starts (the header is line 1)."""
    starts = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv_reader(handle)
        next(reader, None)
        start = reader.line_num + 1
        for record in reader:
            # pandas skips blank lines, so they must not count as rows here either.
            if record:
                starts.append(start)
            start = reader.line_num + 1
    return starts


def _read_csv(path):
    try:
        # index_col=False: a first row with an extra field must not silently become the row index;
        # pandas then warns (ParserWarning) instead, which is turned into an error here.
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", index_col=False)
    except pd.errors.ParserWarning:
        raise ManifestError(_extra_field_message(path)) from None
    except FileNotFoundError:
        raise ManifestError(f"manifest {path} not found; check the path") from None
    except pd.errors.EmptyDataError:
        raise ManifestError(f"manifest {path} is empty; it needs a header row with an 'image' column") from None
    except UnicodeDecodeError:
        raise ManifestError(_encoding_message(path)) from None
    except pd.errors.ParserError as error:
        raise ManifestError(_parser_message(path, error)) from None
    table.columns = [str(name).strip() for name in table.columns]
    # Short rows leave NaN even with keep_default_na=False.
    return table.fillna(""), _RowLocator(path)


def _row_at_line(path, line):
    """"FILE row R (line L)" for the record that holds file line `line` (the header is line 1)."""
    text = Path(path).read_bytes().decode("latin-1")  # never fails: only row boundaries matter here
    reader = csv_reader(text.splitlines(keepends=True))
    next(reader, None)
    row = 0
    for record in reader:
        row += bool(record)  # pandas skips blank lines, so they are not rows
        if reader.line_num >= line:
            return f"{path} row {max(row, 1)} (line {line})"
    return f"{path} line {line}"


def _encoding_message(path):
    """Where a manifest stops being UTF-8, and how to convert it."""
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8-sig")
        return f"manifest {path} is not valid UTF-8; save it as UTF-8"
    except UnicodeDecodeError as error:
        offset = error.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
    line = data[:offset].count(b"\n") + 1
    line_text = data.splitlines()[line - 1].decode("latin-1") if data.splitlines() else ""
    return (f"{_row_at_line(path, line)}: byte 0x{data[offset]:02x} is not UTF-8 (in {line_text.strip()[:60]!r} "
            "read as Latin-1); the file is in another encoding, such as Latin-1 or Windows-1252. Save it as UTF-8, "
            f"e.g. iconv -f latin1 -t utf-8 {path} > utf8.csv")


def _extra_field_message(path):
    """Names the first record with more fields than the header."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
        reader = csv_reader(handle)
        header = next(reader, [])
        start = reader.line_num + 1
        for record in reader:
            if len(record) > len(header):
                return _fields_message(path, start, len(header), len(record))
            start = reader.line_num + 1
    return f"manifest {path} has a row with more fields than its header; quote fields that contain commas"


def _fields_message(path, line, expected, saw):
    return (f"{_row_at_line(path, line)} has {saw} fields where the header has {expected}. Quote fields that "
            "contain commas, or build the manifest with an adapter (mlkit data from-csv handles unquoted captions)")


def _parser_message(path, error):
    """A CSV the parser rejects: say which line and why, in words."""
    fields = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(error))
    if fields:
        expected, line, saw = map(int, fields.groups())
        return _fields_message(path, line, expected, saw)
    return (f"manifest {path} is not a valid CSV: {error}. Quote fields that contain commas or line breaks, or "
            "build the manifest with an adapter (mlkit data from-csv handles unquoted captions)")


def _read_json_lines(path):
    """JSON Lines (one object per line), or a JSON array of objects."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ManifestError(f"manifest {path} not found; check the path") from None
    if text.lstrip().startswith("["):
        numbered = [(None, record) for record in _load_json(path, text, "the file")]
    else:
        numbered = [
            (number, _load_json(path, line, f"line {number}"))
            for number, line in enumerate(text.splitlines(), start=1)
            if line.strip()
        ]
    for index, (number, record) in enumerate(numbered):
        if not isinstance(record, dict):
            where = f"line {number}" if number else f"item {index + 1}"
            raise ManifestError(f"{path} {where}: expected a JSON object per row, got {record!r}")
    table = pd.DataFrame([_flatten_json_record(record, f"{path} line {number}" if number else f"{path} item {index + 1}")
                          for index, (number, record) in enumerate(numbered)])
    for column in KNOWN_COLUMNS:
        if column in table:
            table[column] = table[column].fillna("")
    return table, _RowLocator(path, [number or "?" for number, _ in numbered])


def _load_json(path, text, where):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ManifestError(f"{path} {where} is not valid JSON: {error}") from None


def _flatten_json_record(record, where):
    """Turns the known columns into the CSV cell form, so one parser serves both formats.

    A list's items are separate already, so an item holding the separator is
    refused rather than split (as `from-folders` refuses such a folder name):
    the label would not survive a round trip through a CSV manifest.
    """
    flat = dict(record)
    for column in KNOWN_COLUMNS:
        value = record.get(column)
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            joined = [str(item) for item in value if LABEL_SEP in str(item)]
            if joined:
                raise ManifestError(
                    f"{where}: {column} item {joined[0]!r} contains '{LABEL_SEP}', which manifests use to join "
                    f"{column}; rename it (list items are kept whole, never split)")
            flat[column] = LABEL_SEP.join(str(item) for item in value)
        else:
            flat[column] = str(value)
    return flat


def _read_table(path):
    """The manifest's cells as read (strings for the known columns), and a row locator."""
    if Path(path).is_dir():
        inside = sorted(p.name for p in Path(path).glob("*") if p.suffix.lower() in (".csv", *JSON_SUFFIXES))
        hint = f" such as {Path(path) / inside[0]}" if inside else ""
        raise ManifestError(f"manifest {path} is a folder; give the manifest file{hint} (or make one with "
                            "mlkit data from-folders)")
    if Path(path).suffix.lower() in JSON_SUFFIXES:
        return _read_json_lines(path)
    return _read_csv(path)


def update_column(path, column, values):
    """Rewrites one column of a manifest atomically, leaving every other cell as read.

    Args:
        path: the manifest file.
        column: the column to set (added when missing).
        values: one value per data row, in file order.

    Returns:
        The manifest's path.
    """
    cells, _ = _read_table(Path(path))
    if len(values) != len(cells):
        raise ManifestError(f"cannot update {path}: {len(values)} values for {len(cells)} rows")
    cells[column] = list(values)
    return write_manifest(cells, path)


def _split_cell(cell):
    """Names in one `|`-joined cell: stripped, empty pieces dropped, duplicates dropped."""
    return tuple(dict.fromkeys(piece.strip() for piece in cell.split(LABEL_SEP) if piece.strip()))


def _infer_task(table, path, allow_unlabelled):
    if "target" in table:
        return "regression"
    if "labels" not in table:
        raise ManifestError(
            f"manifest {path} has neither a 'labels' nor a 'target' column (columns found: "
            f"{', '.join(table.columns)}). Add 'labels' (names joined by '|') for classification "
            "or 'target' (numbers) for regression"
        )
    counts = table["labels"].map(lambda cell: len(_split_cell(cell)))
    if (counts > 1).any() or (allow_unlabelled and (counts == 0).any()):
        return "multilabel"
    return "multiclass"


def _parse_labels(table, task, where, allow_unlabelled):
    labels = [_split_cell(cell) for cell in table["labels"]]
    for index, names in enumerate(labels):
        if not names and (task == "multiclass" or not allow_unlabelled):
            raise ManifestError(_empty_labels_message(where(index), task))
        if task == "multiclass" and len(names) > 1:
            raise ManifestError(
                f"{where(index)}: a multiclass row needs exactly one label, got {len(names)}: "
                f"{table['labels'].iloc[index]!r}. Use --task multilabel if images can have several labels"
            )
    return labels


def _empty_labels_message(location, task):
    if task == "multiclass":
        return (
            f"{location}: empty label set; a multiclass row needs exactly one label. "
            "Drop the row, or use --task multilabel --allow-unlabelled if the data is multilabel"
        )
    return (
        f"{location}: empty label set. Fix or drop the row, or pass --allow-unlabelled: such rows "
        "then train as all-negative and are left out of evaluation"
    )


def _parse_targets(table, where):
    targets = []
    for index, cell in enumerate(table["target"]):
        pieces = [piece.strip() for piece in cell.split(LABEL_SEP)]
        try:
            values = tuple(float(piece) for piece in pieces)
        except ValueError:
            values = ()
        if not values or not all(math.isfinite(value) for value in values):
            raise ManifestError(
                f"{where(index)}: target {cell!r} is not a finite number (several targets are joined by "
                f"'{LABEL_SEP}'); fix the value or drop the row"
            )
        if targets and len(values) != len(targets[0]):
            raise ManifestError(
                f"{where(index)}: {len(values)} targets ({cell!r}) where row 1 has {len(targets[0])}; "
                "every row needs the same number of targets"
            )
        targets.append(values)
    return targets


# NUL ends a C string (h5py, file systems); a lone surrogate cannot be encoded as UTF-8 at all.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _check_characters(table, where):
    """Refuses a cell that no file or HDF5 string can hold, naming the row, column and character."""
    for column in ("image", "labels", "target", "caption", "split"):
        if column not in table:
            continue
        for index, cell in enumerate(table[column]):
            found = UNSTORABLE.search(cell) if isinstance(cell, str) else None
            if found:
                what = "a NUL character" if found.group() == "\x00" else f"a lone surrogate (U+{ord(found.group()):04X})"
                raise ManifestError(f"{where(index)}: the {column} {cell[:80]!r} holds {what} at position "
                                    f"{found.start()}, which cannot be stored; remove it")


def _check_images(table, where):
    images = [cell.strip() for cell in table["image"]]
    seen = {}
    for index, image in enumerate(images):
        if not image:
            raise ManifestError(f"{where(index)}: empty image path; give the image file's path or drop the row")
        key = os.path.normcase(os.path.normpath(image))
        if key in seen:
            raise ManifestError(
                f"{where(index)}: duplicate image {image!r}, already listed at {where(seen[key])}; "
                "list every image once (merge its labels into one row)"
            )
        seen[key] = index
    return images


def _parse_splits(table, where):
    if "split" not in table:
        return [""] * len(table)
    splits = [cell.strip().lower() for cell in table["split"]]
    for index, split in enumerate(splits):
        if split and split not in SPLITS:
            raise ManifestError(
                f"{where(index)}: unknown split {table['split'].iloc[index]!r}; use train, val, test or "
                "leave it empty (mlkit data split fills empty ones)"
            )
    return splits


def read_manifest(path: StrPath, task: str | None = None, allow_unlabelled: bool = False) -> Manifest:
    """Reads and validates a manifest.

    CSV, or JSON Lines when the suffix is `.jsonl` or `.json` (lists are
    accepted there for `labels` and `target`). Cells are read as text, so
    labels such as "NA" or "None" survive.

    Args:
        path: the manifest file.
        task: "multilabel", "multiclass" or "regression". When None it is
            inferred: a `target` column means regression; otherwise
            multilabel if any row has more than one label (or, with
            `allow_unlabelled`, none), else multiclass. Defaults to None.
        allow_unlabelled: accept multilabel rows with an empty label set;
            they train as all-negative and are left out of evaluation.
            Defaults to False.

    Returns:
        A `Manifest`.

    Raises:
        ManifestError: naming the file, row, line and value of the first
            problem found.

    Example:
        manifest = read_manifest("data/manifest.csv", task="multilabel")
    """
    path = Path(path)
    if task is not None and task not in TASKS:
        raise ManifestError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    table, where = _read_table(path)
    if "image" not in table:
        raise ManifestError(
            f"manifest {path} has no 'image' column (columns found: {', '.join(map(str, table.columns))}); "
            "name the column holding image paths 'image', or build the manifest with mlkit data from-csv"
        )
    if table.empty:
        raise ManifestError(f"manifest {path} has no data rows; list one image per row below the header")
    task = task or _infer_task(table, path, allow_unlabelled)
    answer_column = "target" if task == "regression" else "labels"
    if answer_column not in table:
        raise ManifestError(
            f"manifest {path} has no '{answer_column}' column, which task {task!r} needs "
            f"(columns found: {', '.join(map(str, table.columns))})"
        )
    _check_characters(table, where)
    rows = table.copy()
    rows["image"] = _check_images(table, where)
    if task == "regression":
        rows["target"] = pd.Series(_parse_targets(table, where), index=rows.index, dtype=object)
    else:
        rows["labels"] = pd.Series(_parse_labels(table, task, where, allow_unlabelled), index=rows.index, dtype=object)
    rows["split"] = _parse_splits(table, where)
    if "caption" in rows:
        rows["caption"] = pd.Series([cell if cell.strip() else None for cell in table["caption"]], index=rows.index, dtype=object)
    return _build_manifest(path, task, rows)


def _build_manifest(path, task, rows):
    if task == "regression":
        width = len(rows["target"].iloc[0]) if len(rows) else 1
        target_names = ["target"] if width == 1 else [f"target{i}" for i in range(width)]
        return Manifest(path=path.absolute(), task=task, rows=rows, target_names=target_names)
    label_names = sorted({name for names in rows["labels"] for name in names})
    return Manifest(path=path.absolute(), task=task, rows=rows, label_names=label_names)


def _format_number(value):
    """Shortest text that reads back as the same float ("3" for 3.0)."""
    value = float(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _csv_cell(column, value):
    if isinstance(value, (tuple, list, np.ndarray)):
        items = [_format_number(item) for item in value] if column == "target" else [str(item) for item in value]
        return LABEL_SEP.join(items)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column == "target" and isinstance(value, (int, float, np.number)):
        return _format_number(value)
    return value


def _json_value(column, value):
    if isinstance(value, (tuple, list, np.ndarray)):
        items = list(value)
        if column == "target":
            return items[0] if len(items) == 1 else items
        return items
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _ordered_columns(rows):
    first = [column for column in KNOWN_COLUMNS if column in rows]
    return first + [column for column in rows.columns if column not in first]


def write_manifest(rows: pd.DataFrame, path: StrPath) -> Path:
    """Writes a manifest atomically (a temporary file in the same folder, then a rename).

    Label tuples are joined by "|", target tuples too; None captions are
    written empty. Known columns come first (image, labels, target,
    caption, split), the rest follow in their order.

    Args:
        rows: a DataFrame with at least an `image` column, as in
            `Manifest.rows` or with the cells already joined.
        path: where to write; `.jsonl`/`.json` writes JSON Lines, anything
            else CSV. Its folder is created if needed.

    Returns:
        The path written, as a `Path`.

    Example:
        manifest = read_manifest("a.csv")
        write_manifest(manifest.rows[manifest.splits() == "test"], "test.csv")
    """
    path = Path(path)
    if "image" not in rows:
        raise ManifestError(f"cannot write manifest {path}: the rows have no 'image' column")
    rows = rows[_ordered_columns(rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        if path.suffix.lower() in JSON_SUFFIXES:
            for record in rows.to_dict("records"):
                record = {column: _json_value(column, value) for column, value in record.items()}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            cells = pd.DataFrame({column: [_csv_cell(column, value) for value in rows[column]] for column in rows})
            cells.to_csv(handle, index=False, lineterminator="\n")
        handle.flush()
        os.fsync(handle.fileno())
    return path
