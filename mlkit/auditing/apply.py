"""Acting on an audit: a corrected manifest from an edited issues.csv, and the duplicate groups for splitting."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from mlkit.auditing.config import ACCEPT, DECISION_COLUMN, REJECT, SUMMARY_JSON
from mlkit.data.manifest import LABEL_SEP, read_manifest, write_manifest
from mlkit.data.split import read_duplicate_groups  # noqa: F401 (re-exported: audit's groups.csv reader)
from mlkit.errors import MlkitError
from mlkit.files import StrPath

logger = logging.getLogger(__name__)


def read_issues(path):
    """issues.csv as text cells, its decisions checked (accept, reject or empty)."""
    path = Path(path)
    if not path.exists():
        raise MlkitError(f"no issues file at {path}; run `mlkit audit CACHE` first")
    issues = pd.read_csv(path, dtype=str, keep_default_na=False)
    if DECISION_COLUMN not in issues or "action" not in issues:
        raise MlkitError(f"{path} has no {DECISION_COLUMN!r} or 'action' column; is it an audit's issues.csv?")
    issues[DECISION_COLUMN] = issues[DECISION_COLUMN].str.strip().str.lower()
    wrong = ~issues[DECISION_COLUMN].isin(("", ACCEPT, REJECT))
    if wrong.any():
        line = int(wrong.to_numpy().argmax())
        raise MlkitError(f"{path} line {line + 2}: decision {issues[DECISION_COLUMN].iloc[line]!r}; "
                         f"write {ACCEPT}, {REJECT} or leave it empty")
    return issues


def default_manifest(issues_path):
    """The manifest named in the summary.json beside issues.csv."""
    summary = Path(issues_path).with_name(SUMMARY_JSON)
    manifest = json.loads(summary.read_text()).get("manifest") if summary.exists() else None
    if not manifest:
        raise MlkitError(f"no manifest recorded in {summary}; pass --manifest PATH")
    return Path(manifest)


def audited_path(manifest):
    manifest = Path(manifest)
    return manifest.with_name(f"{manifest.stem}.audited{manifest.suffix}")


def parse_labels(text, task, where):
    """Suggested labels as the manifest holds them: a tuple of names, or of floats for regression."""
    names = tuple(dict.fromkeys(part.strip() for part in str(text).split(LABEL_SEP) if part.strip()))
    if task == "multiclass" and len(names) != 1:
        raise MlkitError(f"{where}: a multiclass row needs exactly one suggested label, got {text!r}")
    if task != "regression":
        return names
    try:
        return tuple(float(name) for name in names)
    except ValueError:
        raise MlkitError(f"{where}: suggested target {text!r} is not a number") from None


def apply_corrections(issues: StrPath, manifest: StrPath | None = None, out: StrPath | None = None) -> Path:
    """Writes a corrected manifest from the accepted findings of an edited issues.csv.

    Accepted findings whose action is "drop" remove their row's image; those
    whose action is "relabel" give it the `suggested` labels (as edited).
    Rejected and undecided findings change nothing. A row both dropped and
    relabelled is dropped.

    Args:
        issues: the edited issues.csv.
        manifest: the manifest to correct. Defaults to the one recorded in
            the summary.json beside `issues`.
        out: the corrected manifest. Defaults to `<manifest stem>.audited<suffix>` beside it.

    Returns:
        The path written.

    Raises:
        MlkitError: when `out` is the manifest itself, or a decision or suggestion cannot be used.
    """
    table = read_issues(issues)
    manifest = Path(manifest) if manifest else default_manifest(issues)
    out = Path(out) if out else audited_path(manifest)
    if out.resolve() == manifest.resolve():
        raise MlkitError(f"--out {out} is the manifest itself; the audit never overwrites it: choose another path")
    data = read_manifest(manifest, allow_unlabelled=True)
    rows = data.rows.copy()
    where = {image: index for index, image in enumerate(rows["image"])}
    accepted = table[table[DECISION_COLUMN] == ACCEPT]
    missing = sorted(set(accepted["image"]) - set(where))
    if missing:
        raise MlkitError(f"{len(missing)} accepted images are not in {manifest}, e.g. {missing[0]!r}: "
                         "is this the manifest the audited cache was made from? Pass --manifest")
    column = "target" if data.task == "regression" else "labels"
    relabel = accepted[accepted["action"] == "relabel"]
    for line, finding in relabel.iterrows():
        rows.at[rows.index[where[finding["image"]]], column] = parse_labels(
            finding["suggested"], data.task, f"{issues} line {line + 2}")
    dropped = set(accepted.loc[accepted["action"] == "drop", "image"])
    write_manifest(rows[~rows["image"].isin(dropped)], out)
    logger.info("audit: %d findings accepted (%d rows relabelled, %d dropped); wrote %s",
                len(accepted), relabel["image"].nunique(), len(dropped), out)
    return out
