"""`tune_top`: a grid search of top models on one bottleneck cache.

The grid is the product of the listed values (the COCO report, table 1: layers,
units, regulariser, learning rate, batch size; plus loss, optimiser, schedule
and, for raw feature maps, how the top pools them; with captions, the caption
branch's recurrent layer, its units and the embedding width). KerasTuner's
`GridSearch` walks it, alone or as a chief with workers; each trial writes its log,
best-epoch weights and resolved config under its run name. Finished runs are
recognised by their record (mlkit.tuning.records), so rerunning a command
after a crash resumes it, and rerunning a finished one returns at once
without importing TensorFlow.

This module stays free of TensorFlow imports; the training side lives in
mlkit.tuning.tuner and is imported only when a trial has to run.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, TypeVar

from mlkit.bottlenecks.cache import identity_differences, open_cache
from mlkit.errors import MlkitError
from mlkit.files import StrPath, stage_folder, sweep_temporaries
from mlkit.locks import hold_lock
from mlkit.options import defaults_of
from mlkit.taps import ALL as ALL_TAPS
from mlkit.taps import combinations as tap_combinations
from mlkit.taps import resolve as resolve_taps
from mlkit.tuning.config import (
    DEFAULT_EMBED_DIM,
    DEFAULT_TEXT,
    DEFAULT_TEXT_UNITS,
    LOSSES,
    UNNAMED_SETTINGS,
    TopConfig,
)
from mlkit.tuning.memory import parse_memory
from mlkit.tuning.records import Progress, summary_frame, write_summary
from mlkit.tuning.top_data import MAX_MEMORY

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)
# The Python API's defaults are TopConfig's (mlkit.options): written once, there.
TOP = defaults_of(TopConfig)

# Order of the grid's axes: KerasTuner's GridSearch varies the last one fastest.
TUNABLE = ("taps", "layers", "units", "reg", "lr", "batch", "loss", "optimizer", "schedule", "top_pool", "text", "text_units",
           "embed_dim")
_T = TypeVar("_T")
# A tuned argument of `tune_top`: one value, a list of values, or a comma-separated string of them.
Tuned: TypeAlias = "_T | Sequence[_T] | str"
# Held by a search tuning alone or by the chief (mlkit.locks).
LOCK = ".tune-top.lock"
DISTRIBUTED_VARIABLES = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")


@dataclass
class Grid:
    """The trials of one search: the tuned values and the settings they share.

    Args:
        values: tuned setting -> list of values, in `TUNABLE` order.
        base: the first trial's `TopConfig`; the others replace its tuned values.
        cache_fields: the cache's dataset, subset, backbone and preprocessing.
        pooling: the cache's pooling (avg, max, or none for raw maps).
        tap_shapes: each value of the `taps` axis -> the shape its top reads.
            Defaults to {} (no taps axis: every top reads the base's shape).
    """

    values: dict
    base: TopConfig
    cache_fields: tuple
    pooling: str
    tap_shapes: dict = field(default_factory=dict)
    runs: list = field(default_factory=list, init=False)

    def __post_init__(self):
        self.runs = [config.run for config in self.configs()]
        duplicates = sorted({run for run in self.runs if self.runs.count(run) > 1})
        if duplicates:
            raise MlkitError(f"the grid names several trials alike ({duplicates[0]}); list each value once")

    def configs(self):
        """Every trial's resolved config, in the order GridSearch runs them."""
        names = list(self.values)
        return [self.config(dict(zip(names, combo))) for combo in itertools.product(*self.values.values())]

    def config(self, values):
        """The resolved config (with its run name) for one combination of tuned values."""
        config = replace(self.base, **values)
        if config.taps in self.tap_shapes:
            config.input_shape = list(self.tap_shapes[config.taps])
        config.run = str(config.run_name(self.cache_fields, self.pool_field(config)))
        return config

    def pool_field(self, config):
        """The run name's pool field: the cache's pooling, or how the top pools raw maps."""
        shape = config.input_shape
        if len(shape) != 3:
            return self.pooling
        return f"{shape[0]}{shape[1]}" if config.top_pool == "flatten" else config.top_pool

    @property
    def inputs(self):
        """The inputs every trial's top takes (mlkit.tuning.config.TopConfig.inputs)."""
        return self.base.inputs


def as_list(value, name, cast):
    """A grid axis from a scalar, a list, or a comma-separated string."""
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    elif not isinstance(value, (list, tuple)):
        value = [value]
    try:
        values = [cast(v.strip() if isinstance(v, str) else v) for v in value]
    except (TypeError, ValueError) as error:
        raise MlkitError(f"--{name.replace('_', '-')} {value!r}: {error}") from error
    if not values:
        raise MlkitError(f"--{name.replace('_', '-')} needs at least one value")
    return list(dict.fromkeys(values))


def make_grid(cache, *, layers, units, reg, lr, batch, loss, optimizer, schedule, top_pool, augmented, captions=False,
              text=None, text_units=None, embed_dim=None, text_only=False, fixed=None, taps=TOP["taps"]):
    """The grid for one cache, its settings checked before anything trains.

    The tuned axes each take a value, a list or a comma-separated string;
    `fixed` holds the `TopConfig` settings every trial shares (epochs,
    patience, objective, seed, ...). See `tune_top` for each setting.
    """
    if cache.task not in LOSSES:
        raise MlkitError(f"{cache.path} has task {cache.task!r}; tune-top handles {', '.join(LOSSES)}")
    dataset, subset, backbone, prep, pooling = cache.name_fields
    captions = check_caption_settings(cache, captions or text_only, text, text_units, embed_dim, text_only, augmented)
    if augmented and not cache.augment_copies:
        raise MlkitError(f"--augmented: {cache.path} has no augmented views; rebuild it with cache-features --augment K")
    tap_shapes = tap_axis(cache, taps, text_only)
    shape = list(cache.taps_shape(next(iter(tap_shapes)).split("+")))
    values = {
        "layers": as_list(layers, "layers", int), "units": as_list(units, "units", int),
        "reg": as_list(reg, "reg", str), "lr": as_list(lr, "lr", float), "batch": as_list(batch, "batch", int),
        "loss": as_list(loss or LOSSES[cache.task][0], "loss", str),
        "optimizer": as_list(optimizer, "optimizer", str), "schedule": as_list(schedule, "schedule", str),
    }
    if list(tap_shapes) != ["last"]:
        values = {"taps": list(tap_shapes), **values}
    if len(shape) == 3:
        values["top_pool"] = as_list(top_pool, "top_pool", str)
    elif as_list(top_pool, "top_pool", str) != ["flatten"]:
        logger.warning("--top-pool only applies to raw feature maps; %s holds pooled vectors", cache.path.name)
    if captions:
        values["text"] = as_list(text or DEFAULT_TEXT, "text", str)
        values["text_units"] = as_list(text_units or DEFAULT_TEXT_UNITS, "text_units", int)
        values["embed_dim"] = as_list(embed_dim or DEFAULT_EMBED_DIM, "embed_dim", int)
    clash = sorted(set(fixed or {}) & set(values))
    if clash:
        raise MlkitError(f"{', '.join(clash)}: tuned settings take their values from the grid's axes, not `fixed`")
    scale = cache.target_scale
    # The first trial's config: a TopConfig checks itself when made, so it needs real values for the tuned settings.
    base = TopConfig(
        task=cache.task, cache=str(cache.path), cache_identity=cache.identity, input_shape=shape,
        num_outputs=cache.num_outputs, label_names=cache.label_names,
        target_min=scale.to_dict()["low"] if scale else [], target_max=scale.to_dict()["high"] if scale else [],
        views=cache.augment_copies if augmented else 0, text_only=bool(text_only),
        vocabulary=cache.vocabulary if captions else {}, **{name: axis[0] for name, axis in values.items()}, **(fixed or {}),
    )
    return Grid(values, base, (dataset, subset, backbone, prep), pooling, tap_shapes if "taps" in values else {})


def tap_axis(cache, taps, text_only=False):
    """{taps as a top reads them ("last+<layer>..."): the shape it reads} for tune-top's `--taps` axis."""
    # A text-only top reads no image features: by default, the cache's taps are not an axis for it.
    default = "last" if text_only else ALL_TAPS
    combos = [resolve_taps(combo, cache.name_fields[2], cache.taps) for combo in tap_combinations(taps or default)]
    axis = {"+".join(combo): None for combo in combos}
    if text_only and list(axis) != ["last"]:
        raise MlkitError("--taps chooses image features; a --text-only top reads none")
    return {value: cache.taps_shape(value.split("+")) for value in axis}


def check_caption_settings(cache, captions, text, text_units, embed_dim, text_only, augmented):
    """Whether the grid has a caption branch; raises MlkitError for caption settings that cannot apply."""
    if not captions:
        given = [name for name, value in (("--text", text), ("--text-units", text_units), ("--embed-dim", embed_dim))
                 if value not in (None, "")]
        if given:
            raise MlkitError(f"{', '.join(given)} set the caption branch; add --captions (or --text-only)")
        return False
    if not cache.has("tokens") or not cache.vocabulary:
        raise MlkitError(f"{cache.path} has no caption tokens; rebuild it with "
                         "`mlkit cache-features MANIFEST --captions` (same settings otherwise)")
    if text_only and augmented:
        raise MlkitError("--augmented trains on augmented image views; a --text-only top has no image branch")
    return True


def distributed_env(chief=False, worker=None, oracle=None):
    """The KERASTUNER_* variables for this process's role ({} when tuning alone).

    Args:
        chief: run KerasTuner's oracle service, which hands trials to workers.
        worker: this worker's index (its tuner id is `tuner<index>`).
        oracle: the chief's "HOST:PORT". Defaults to KERASTUNER_ORACLE_IP/PORT.
    """
    if not chief and worker is None:
        if oracle:
            raise MlkitError("--oracle goes with --chief or --worker N")
        return {}
    if chief and worker is not None:
        raise MlkitError("a process is either the --chief or a --worker, not both")
    address = oracle or (
        f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
        if "KERASTUNER_ORACLE_IP" in os.environ and "KERASTUNER_ORACLE_PORT" in os.environ else None)
    host, _, port = (address or "").rpartition(":")
    if not host or not port.isdigit():
        raise MlkitError(f"--oracle {address!r}: give the chief's HOST:PORT, e.g. 127.0.0.1:8000")
    tuner_id = "chief" if chief else f"tuner{int(worker)}"
    return {"KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": host, "KERASTUNER_ORACLE_PORT": port}


@contextlib.contextmanager
def environment(variables):
    """Sets environment variables for the block, restoring the old values after."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def current_role():
    """'chief', 'worker' or 'alone', from the KERASTUNER_* variables KerasTuner reads."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "alone"
    return "chief" if "chief" in os.environ.get("KERASTUNER_TUNER_ID", "") else "worker"


def warn_changed_settings(progress, configs):
    """Says when a finished run was trained with settings its name does not show, or on a rebuilt cache."""
    for config in configs:
        record = progress.finished(config.run)
        if record is None:
            continue
        rebuilt = identity_differences(record["config"].get("cache_identity") or {}, config.cache_identity)
        if rebuilt:
            logger.warning("%s was tuned on an earlier %s (%s); training it again", config.run,
                           Path(config.cache).name, "; ".join(rebuilt))
            continue
        changed = []
        # Read as a config, so a setting the record predates takes the value its top was trained with.
        recorded = TopConfig.from_dict(record["config"])
        for key in UNNAMED_SETTINGS:
            old, new = getattr(recorded, key), getattr(config, key)
            if old != new:
                # A vocabulary is too long to print; saying it changed is enough.
                changed.append(f"{key} changed" if isinstance(new, dict) else f"{key} {old} -> {new}")
        if changed:
            logger.warning("%s finished earlier with other settings (%s); kept as it is. Delete %s to retrain it.",
                           config.run, ", ".join(changed), progress.record_path(config.run).name)


def tune_top(
    cache_path: StrPath, workdir: StrPath = ".", *, layers: Tuned[int] = TOP["layers"],
    units: Tuned[int] = TOP["units"], reg: Tuned[str] = TOP["reg"], lr: Tuned[float] = TOP["lr"],
    batch: Tuned[int] = TOP["batch"], loss: Tuned[str] = TOP["loss"], optimizer: Tuned[str] = TOP["optimizer"],
    schedule: Tuned[str] = TOP["schedule"], top_pool: Tuned[str] = TOP["top_pool"], epochs: int = TOP["epochs"],
    patience: int = TOP["patience"], objective: str = TOP["objective"], momentum: float = TOP["momentum"],
    step_every: int = TOP["step_every"], step_gamma: float = TOP["step_gamma"], augmented: bool = False,
    sample_weights: str | bool = TOP["sample_weights"], cap: int = TOP["cap"], oversample: int = TOP["oversample"],
    max_memory: int | str = MAX_MEMORY, seed: int = TOP["seed"], chief: bool = False, worker: int | None = None,
    oracle: str | None = None, verbose: bool = True, captions: bool = False, text: Tuned[str] | None = None,
    text_units: Tuned[int] | None = None, embed_dim: Tuned[int] | None = None, text_only: bool = TOP["text_only"],
    taps: Tuned[str] = TOP["taps"], tap_weights: str = TOP["tap_weights"],
    no_tensorboard: bool = TOP["no_tensorboard"],
) -> pd.DataFrame:
    """Grid-searches top models on a bottleneck cache and returns the summary.

    Each tuned argument takes one value, a list, or a comma-separated string;
    the grid is their product. Every trial writes `<workdir>/tuning/<run>.csv`
    (per-epoch loss, validation metrics, seconds), `<run>.weights.h5` (the
    best epoch by `objective`) and `<run>.json` (the resolved config and
    result), and stops early after `patience` epochs without improvement.
    Rerunning the same call skips finished trials and restarts an interrupted
    one.

    Args:
        cache_path: the `.h5` bottleneck cache (stage 1).
        workdir: the workspace folder. Defaults to ".".
        layers, units, reg, lr, batch: hidden layers, units per layer, `dN`
            (dropout N/10) or `bn`, learning rate, batch size.
        loss: multilabel bce|focal|wbce, multiclass cce|focal, regression
            mse|mae|huber. Defaults to "" (the task's first).
        optimizer: sgd (momentum `momentum`) or adam. Defaults to "sgd".
        schedule: constant, step (x `step_gamma` every `step_every` epochs),
            plateau or cosine. Defaults to "constant".
        top_pool: for raw feature maps: flatten, avg or max. Defaults to "flatten".
        epochs, patience: the most epochs, and epochs without improvement
            before stopping. Default to 20 and 5.
        objective: val_loss, or val_map / val_f1 / val_auc (multilabel),
            val_accuracy / val_f1 (multiclass), val_mae / val_rmse (regression).
            Defaults to "val_loss".
        augmented: also train on the cache's augmented views. Defaults to False.
        sample_weights: "balanced" (or True) weights training rows by inverse class
            frequency. Defaults to "" (unweighted).
        cap, oversample: at most `cap` / at least `oversample` training rows
            per class (0: off). The validation and test splits are untouched.
        max_memory: features larger than this stream from HDF5. Defaults to "4G".
        seed: seeds weights, shuffling and resampling. Defaults to 0.
        no_tensorboard: write no TensorBoard event files. By default each
            trial writes `tuning/<run>/` (per-epoch scalars, and the run
            name's fields as hparams): `tensorboard --logdir tuning`.
            Defaults to False.
        chief, worker, oracle: distributed tuning (see `distributed_env`).
        verbose: print one line per trial. Defaults to True.
        captions: add the caption branch (the cache needs `cache-features
            --captions`): the cached token ids feed an embedding and an
            (Bi)LSTM merged with the image features. Defaults to False.
        text: the caption branch's recurrent layer, lstm or bilstm (tuned).
            Defaults to "bilstm" (the caption report).
        text_units: its units per direction (tuned). Defaults to 128.
        embed_dim: the token embedding's width (tuned). Defaults to 128.
        text_only: train the caption branch alone, without the image
            features (implies `captions`), for the ablation. Defaults to False.
        taps: which cached taps each top reads (tuned; mlkit.taps):
            combinations separated by commas, each of `last`, `all` (every
            cached tap), named depths (early, mid, high, pre) or layer names
            joined by "+", e.g. "last,last+high,all". The run name records a
            combination as `taps-<codes>`. Defaults to every tap the cache holds
            (the measured best on both collections: BENCHMARKS.md, "Taps"),
            which is "last" alone on a cache made with `--taps last`.
        tap_weights: how a multi-tap top scales its standardised taps:
            "equal" (each tap the same total variance) or "none" (each column
            unit variance; the run name adds `tw-none`). Tops on one tap are
            never scaled. Defaults to "equal".

    Returns:
        A pandas DataFrame, one row per finished trial of this grid, best first.
        `tuning/summary.csv` (not written by workers) ranks every finished run
        in the folder the same way, earlier grids included, with each run's cache.

    Raises:
        LockedError: when another tune-top (alone, or a chief) is using the folder.

    Example:
        summary = tune_top("bottlenecks/coco_2017_vgg16_zmuvs_avg.h5", layers=[1, 2], units=[1024, 4096])
    """
    cache = open_cache(cache_path)
    grid = make_grid(
        cache, layers=layers, units=units, reg=reg, lr=lr, batch=batch, loss=loss, optimizer=optimizer,
        schedule=schedule, top_pool=top_pool, augmented=augmented, captions=captions, text=text,
        text_units=text_units, embed_dim=embed_dim, text_only=text_only, taps=taps,
        fixed={"epochs": int(epochs), "patience": int(patience), "objective": objective, "momentum": float(momentum),
                   "step_every": int(step_every), "step_gamma": float(step_gamma),
                   "sample_weights": "balanced" if sample_weights else "", "cap": int(cap or 0),
                   "oversample": int(oversample or 0), "seed": int(seed), "tap_weights": tap_weights,
                   "no_tensorboard": bool(no_tensorboard)},
    )
    memory = parse_memory(max_memory)
    folder = stage_folder(workdir, "tuning")
    with environment(distributed_env(chief, worker, oracle)):
        role = current_role()
        # Workers share the chief's folder by design; anyone else tuning here would clobber this search.
        lock = contextlib.nullcontext() if role == "worker" else hold_lock(folder / LOCK, f"tuning folder {folder}")
        with lock:
            if role != "worker":  # before any worker has a trial: the chief starts the search
                sweep_temporaries(folder)
            progress = Progress(folder, os.environ.get("KERASTUNER_TUNER_ID", "tuner0"))
            warn_changed_settings(progress, grid.configs())
            pending = [run for run in grid.runs if progress.finished(run, cache.identity) is None]
            if pending or role != "alone":
                from mlkit.tuning.tuner import run_search

                run_search(grid, cache, progress, role=role, max_memory=memory, verbose=verbose)
            elif verbose:
                print(f"all {len(grid.runs)} trials of this grid are finished in {folder}", flush=True)
            summary = summary_frame(progress, grid.runs, cache.task, objective)
            if role != "worker" and not summary.empty:
                # Every finished run in the folder, earlier grids and other caches too (the `cache` column).
                every = summary_frame(progress, progress.finished_runs(), cache.task, objective)
                path = write_summary(every, folder)
                if verbose:
                    print(f"summary: {path} ({len(every)} runs; best of this grid: {summary.run.iloc[0]}, {objective} "
                          f"{summary[objective].iloc[0]:.4g})")
    return summary
