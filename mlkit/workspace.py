"""Where a run's files live in a workspace: tune-top's trials under tuning/, fine-tuned models under models/.

Every stage finds a run's files through `run_paths` (or `run_files` for a copy
of a stage folder); no other module spells a run file's suffix.
"""

from pathlib import Path

from mlkit.errors import MlkitError

# A run's files, by stage folder: tune-top's trials under tuning/, fine-tuned models under models/.
RUN_FILES = {
    "tuning": {"json": ".json", "weights": ".weights.h5", "csv": ".csv"},
    "models": {"keras": ".keras", "json": ".json", "csv": ".csv"},
}
SUFFIXES = tuple(dict.fromkeys(suffix for files in RUN_FILES.values() for suffix in files.values()))


def run_files(folder, run, stage="tuning"):
    """The files of one run in `folder`, a `stage` folder (or a copy of one), by kind; see `run_paths`."""
    if stage not in RUN_FILES:
        raise MlkitError(f"run files live under {' or '.join(RUN_FILES)}/, not {stage!r}")
    folder = Path(folder)
    paths = {kind: folder / f"{run}{suffix}" for kind, suffix in RUN_FILES[stage].items()}
    if stage == "models":
        paths["work"] = folder / f".{run}.work"
    return paths


def run_paths(workdir, run, stage="tuning"):
    """The files of one run under `<workdir>/<stage>/`, by kind (the one place they are named).

    tuning: "json" (config and result), "weights" (the top), "csv" (per-epoch log).
    models: "keras" (the exported model), "json" (its record), "csv" (the log),
    and "work" (the hidden folder of a run in progress: checkpoints, phase logs).

    Example:
        run_paths(".", "synth_ml_mobilenetv2_inet_avg_1x1024d5_lr11_b64")["weights"]
    """
    return run_files(Path(workdir) / stage, run, stage)


def strip_suffix(name):
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
