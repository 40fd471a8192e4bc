"""The grid's own progress record, kept beside the trial files in `tuning/`.

KerasTuner's GridSearch cannot resume an interrupted search (keras-tuner
#1055), so mlkit decides what is done itself: a run is finished when its
`<run>.json` exists, and that file is written (atomically) only after the
run's weights and log. Every start, finish and skip is also appended to
`progress.jsonl` (one JSON object a line, appends from several workers do
not interleave), so a person or a test can see which trial ran when and
where.
"""

import json
import os
import socket
import time
from pathlib import Path

import pandas as pd

from mlkit.bottlenecks.cache import identity_differences
from mlkit.branches import branch_of
from mlkit.files import atomic_path, is_temporary, write_json
from mlkit.tuning.config import OBJECTIVES
from mlkit.workspace import run_files

PROGRESS = "progress.jsonl"
SUMMARY = "summary.csv"


class Progress:
    """Reads finished runs and appends events for one `tuning/` folder.

    Args:
        folder: the `tuning/` folder; created if missing.
        tuner_id: who writes the events (KerasTuner's tuner id). Defaults to "tuner0".
    """

    def __init__(self, folder, tuner_id="tuner0"):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tuner_id = tuner_id

    def record_path(self, run):
        return run_files(self.folder, run)["json"]

    def finished(self, run, identity=None):
        """The run's record when it finished, else None.

        With a cache's `identity`, a run tuned on an earlier cache of the same
        name that has since been rebuilt (other rows, weights or preprocessing)
        does not count as finished: its top no longer fits the cache. Records
        that predate identities count.
        """
        path = self.record_path(run)
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if record.get("status") != "complete":
            return None
        if identity and identity_differences(record["config"].get("cache_identity") or {}, identity):
            return None
        return record

    def finished_runs(self):
        """Names of every finished run in the folder, whichever grid or cache it came from."""
        # A killed writer's `.partial-<pid>-<run>.json` holds a whole record that was never published.
        return sorted(path.name[: -len(".json")] for path in self.folder.glob("*.json")
                      if not is_temporary(path) and self.finished(path.name[: -len(".json")]) is not None)

    def finish(self, run, config, result):
        """Writes the run's record: the resolved config and its result. Call last."""
        write_json(self.record_path(run), {"run": str(run), "status": "complete", "config": config, "result": result})

    def log(self, event, run, **extra):
        line = json.dumps({
            "event": event, "run": str(run), "tuner": self.tuner_id, "host": socket.gethostname(),
            "pid": os.getpid(), "time": round(time.time(), 3), **extra,
        })
        # One write per line with O_APPEND: concurrent workers' lines stay whole.
        fd = os.open(self.folder / PROGRESS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def events(self):
        """All events so far, oldest first."""
        path = self.folder / PROGRESS
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summary_frame(progress, runs, task, objective):
    """One row per finished run of `runs`, best objective first.

    Columns: rank, run, cache (the file name of the cache it was tuned on),
    image_size (that cache's input size, so caches at several sizes rank
    side by side), the objective, best_epoch (counted from 1, as Keras's progress bar
    counts; the per-epoch CSV and the record count from 0, as Keras's
    CSVLogger does), epochs, seconds (training wall time), the validation
    metrics at the best epoch, and the run's settings (with the caption
    branch's, and which branches it has, for caption runs).
    """
    rows = []
    for run in runs:
        record = progress.finished(run)
        if record is None:
            continue
        result, config = record["result"], record["config"]
        rows.append({
            "run": str(run), "cache": Path(config.get("cache", "")).name,
            "image_size": (config.get("cache_identity") or {}).get("image_size"), objective: result["metrics"].get(objective),
            "best_epoch": result["best_epoch"] + 1, "epochs": result["epochs"], "seconds": result["fit_seconds"],
            # The training loss is renamed: "loss" is the loss function's name here.
            **{("train_loss" if k == "loss" else k): v for k, v in result["metrics"].items() if k != objective},
            **{k: config[k] for k in ("layers", "units", "reg", "lr", "batch", "loss", "optimizer", "schedule")},
            "diverged": result.get("diverged", False),
            **caption_columns(config),
        })
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    ascending = OBJECTIVES[task][objective] == "min"
    frame = frame.sort_values(objective, ascending=ascending, na_position="last", kind="stable")
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame.reset_index(drop=True)


def caption_columns(config):
    """The caption branch's settings for a summary row; none for an image-only run."""
    if not config.get("text"):
        return {}
    # The record's own fields, not a TopConfig: a summary lists every record, even one that no longer validates.
    return {"branch": branch_of(config.get("text"), config.get("text_only")), **{key: config[key] for key in ("text", "text_units", "embed_dim")}}


def write_summary(frame, folder):
    """Writes `summary.csv` atomically; returns its path."""
    path = Path(folder) / SUMMARY
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path
