"""`mlkit runs`: compare trials from their logs, by the fields of their names.

Every `<run>.csv` in a folder becomes one row: the fields parsed from the run
name (mlkit.runs), epochs trained, the best epoch by a metric and the
validation metrics there, and training time. Rows can be filtered by field
(`units=4096`), grouped (`--by lr`), and their validation curves drawn
coloured by a field against epoch or wall time (the COCO report, figures 4 to 6; docs/references.md).
"""

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from mlkit.errors import MlkitError
from mlkit.runs import RunNameError, decode_lr, parse_run_name
from mlkit.tuning.config import metric_direction
from mlkit.tuning.records import SUMMARY
from mlkit.workspace import run_files

logger = logging.getLogger(__name__)

RESULT_COLUMNS = ("run", "epochs", "best_epoch", "seconds", "status")
MAX_LEGEND_RUNS = 12


def lower_is_better(metric):
    return metric_direction(metric) == "min"


def read_logs(folder):
    """{run name: its per-epoch log} for every parsable `<run>.csv` in `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MlkitError(f"{folder} is not a folder; point `mlkit runs` at a workspace's tuning/ folder")
    logs = {}
    for path in sorted(folder.glob("*.csv")):
        if path.name == SUMMARY:
            continue
        try:
            parse_run_name(path.name)
            log = pd.read_csv(path)
        except (RunNameError, pd.errors.EmptyDataError) as error:
            logger.debug("skipping %s: %s", path.name, error)
            continue
        if len(log):
            logs[path.name[: -len(".csv")]] = log
    return logs


def run_row(run, log, metric, folder):
    """One table row: name fields, epochs, best epoch by `metric` (counted from 1), metrics there, time."""
    if metric not in log:
        raise MlkitError(f"{run}.csv has no {metric!r} column (columns: {', '.join(log.columns)}); pick one with --metric")
    values = log[metric].to_numpy(dtype="float64")
    if np.isfinite(values).any():
        best = int(np.nanargmin(values) if lower_is_better(metric) else np.nanargmax(values))
    else:
        best = len(values) - 1
    seconds = log["seconds"].sum() if "seconds" in log else np.nan
    metrics = {name: log[name].iloc[best] for name in log.columns if name.startswith("val_")}
    finished = run_files(folder, run)["json"].exists()
    return {"run": run, **parse_run_name(run).fields(), "epochs": len(log), "best_epoch": int(log["epoch"].iloc[best]) + 1,
            **metrics, "seconds": float(seconds), "status": "complete" if finished else "partial"}


def load_runs(folder, where=(), metric="val_loss"):
    """A table of the runs logged in `folder`, best `metric` first.

    Args:
        folder: a `tuning/` folder.
        where: filters such as "units=4096" or "lr=0.1,0.05" (any of the values).
        metric: the column that picks each run's best epoch and orders the table.
            Defaults to "val_loss".

    Returns:
        A pandas DataFrame, one row per run (empty when none match).

    Example:
        table = load_runs("tuning", where=["layers=2"])
    """
    logs = read_logs(folder)
    frame = pd.DataFrame([run_row(run, log, metric, folder) for run, log in logs.items()])
    if frame.empty:
        return frame
    frame = filter_runs(frame, where)
    return frame.sort_values(metric, ascending=lower_is_better(metric), na_position="last", kind="stable").reset_index(
        drop=True)


def filter_runs(frame, where):
    """Rows whose fields match every "key=value[,value...]" filter."""
    for condition in where or ():
        key, equals, wanted = condition.partition("=")
        key = key.strip()
        if not equals or key not in frame.columns:
            raise MlkitError(
                f"--where {condition!r}: expected FIELD=VALUE with FIELD one of {', '.join(map(str, frame.columns))}")
        options = [parse_value(key, value.strip()) for value in wanted.split(",")]
        frame = frame[frame[key].map(lambda cell, options=options: any(same_value(cell, option) for option in options))]
    return frame


def parse_value(key, text):
    """A filter value; learning rates may also be written as in run names (lr11)."""
    if key in ("lr", "ft_lr") and text.startswith("lr"):
        return decode_lr(text[2:])
    return text


def same_value(cell, wanted):
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return False
    try:
        return float(cell) == float(wanted)
    except (TypeError, ValueError):
        return str(cell) == str(wanted)


def table_text(frame, by=None, metric="val_loss"):
    """The table as text: the run, the fields that vary, best epoch, metrics, time; grouped by `by`."""
    if frame.empty:
        return "no runs"
    varying = [f for f in field_columns(frame) if frame[f].astype(str).nunique() > 1]
    metrics = [c for c in frame.columns if c.startswith("val_")]
    columns = ["run"] + varying + ["epochs", "best_epoch"] + metrics + ["seconds", "status"]
    shown = frame[[c for c in dict.fromkeys(columns) if c in frame]]
    if not by:
        return shown.to_string(index=False, float_format=lambda v: f"{v:.4g}")
    check_field(frame, by)
    parts = []
    keys = frame[by].astype(str)
    for value in sorted(keys.unique(), key=natural_key):
        group = shown[keys == value]
        best = group.iloc[0]
        parts.append(f"{by} = {value}: {len(group)} runs, best {metric} {best[metric]:.4g} ({best['run']})")
        parts.append(group.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return "\n".join(parts)


def field_columns(frame):
    """The columns parsed from run names (fixed fields, arch, and options)."""
    return [c for c in frame.columns if c not in RESULT_COLUMNS and not c.startswith("val_")]


def check_field(frame, field):
    if field not in frame.columns:
        raise MlkitError(f"--by {field!r}: pick one of {', '.join(c for c in frame.columns if c != 'run')}")


def plot_runs(folder, out, *, where=(), by=None, x="epoch", metric="val_loss"):
    """Draws each run's validation curve, coloured by a name field, to a PNG.

    Args:
        folder: a `tuning/` folder.
        out: the image file to write.
        where: filters as for `load_runs`.
        by: the field that picks the colour (e.g. "lr", "units"); None: one colour per run.
        x: "epoch" or "time" (cumulative training seconds). Defaults to "epoch".
        metric: the curve drawn. Defaults to "val_loss".

    Returns:
        The runs table that was drawn.
    """
    import matplotlib
    import matplotlib.ticker

    from mlkit.evaluation.plots import new_figure

    if x not in ("epoch", "time"):
        raise MlkitError(f"--x {x!r}: use epoch or time")
    frame = load_runs(folder, where, metric)
    if frame.empty:
        raise MlkitError(f"no runs to plot in {folder}" + (f" matching {list(where)}" if where else ""))
    if by:
        check_field(frame, by)
    logs = read_logs(folder)
    groups = sorted(frame[by].astype(str).unique(), key=natural_key) if by else list(frame.run)
    palette = matplotlib.colormaps["tab10" if len(groups) <= 10 else "viridis"]
    colors = {g: palette(i if len(groups) <= 10 else i / (len(groups) - 1)) for i, g in enumerate(groups)}
    figure, axes = new_figure((9, 5.5))
    labelled = set()
    # Drawn group by group, so the legend lists the groups in order.
    order = frame.assign(_group=frame[by].astype(str) if by else frame.run)
    order = order.iloc[np.argsort([groups.index(g) for g in order._group], kind="stable")]
    for _, row in order.iterrows():
        log = logs[row.run]
        xs = log["epoch"] + 1 if x == "epoch" else elapsed(log)
        group = str(row[by]) if by else row.run
        label = f"{by}={group}" if by else (row.run if len(groups) <= MAX_LEGEND_RUNS else None)
        axes.plot(xs, log[metric], color=colors[group], alpha=0.85, lw=1.4, label=None if group in labelled else label)
        best = log["epoch"].tolist().index(row.best_epoch - 1)  # the log counts from 0, as Keras does
        axes.plot(xs.iloc[best], log[metric].iloc[best], "o", color=colors[group], ms=4)
        labelled.add(group)
    if x == "epoch":
        axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes.set_xlabel("epoch" if x == "epoch" else "training time (s)")
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} of {len(frame)} runs" + (f" by {by}" if by else "") + " (dots: best epoch)")
    axes.grid(alpha=0.3)
    if labelled and (by or len(groups) <= MAX_LEGEND_RUNS):
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    return frame


def elapsed(log):
    """Cumulative seconds at the end of each epoch (the COCO report, fig. 6b)."""
    if "elapsed" in log:
        return log["elapsed"]
    return log["seconds"].cumsum() if "seconds" in log else log["epoch"] + 1


def natural_key(text):
    """Sorts "64" before "128" and "0.05" before "0.1"; text after numbers."""
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)
