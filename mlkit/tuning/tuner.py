"""The training side of `tune_top`: KerasTuner's GridSearch driving top-model trials.

`TopHyperModel.build` declares the grid and builds a top; `TopHyperModel.fit`
tunes the batch size and trains it. `TopTuner.run_trial` wraps that with
mlkit's own progress record, so a finished trial is never trained twice,
whether the search runs alone or as KerasTuner workers fed by a chief.
"""

import gc
import logging
import re
import time
from pathlib import Path

import keras
import keras_tuner as kt
import numpy as np

from mlkit.compat import queue_next_trial
from mlkit.errors import MlkitError
from mlkit.files import disk_full_error, save_weights_atomic
from mlkit.tensorboard_logs import EpochEvents
from mlkit.tuning.config import OBJECTIVES
from mlkit.tuning.top import build_top_model, compile_top, schedule_callbacks, set_input_statistics
from mlkit.tuning.top_data import TopData
from mlkit.workspace import run_paths

logger = logging.getLogger(__name__)

# Workers poll the chief while it waits on other workers' trials; a short
# sleep keeps that from spinning a CPU core on gRPC calls.
IDLE_POLL_SECONDS = 0.1


class TrialUserError(MlkitError, kt.errors.FatalError):
    """A user error inside a trial: stops the search instead of KerasTuner's silent retry."""


class ValidationMetrics(keras.callbacks.Callback):
    """Adds val_loss and the task's validation metrics to each epoch's logs.

    One prediction pass over the validation split per epoch gives the loss
    and every metric; multilabel F1 uses the cardinality rule fitted on that
    pass with the training split's label cardinality (the COCO report, eqs. 11-12).
    Also logs the epoch's learning rate, its wall time (`seconds`) and the
    running total (`elapsed`), for `mlkit runs --x time`. It must come first
    in the callback list: EarlyStopping, schedules and CSVLogger read its logs.

    Args:
        data: the trial's `TopData`.
        loss: the compiled loss, applied to the whole validation split.
    """

    def __init__(self, data, loss):
        super().__init__()
        self.data = data
        self.loss = loss
        self.elapsed = 0.0
        self.started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        scores = np.asarray(self.data.predict_val(self.model), dtype="float32")
        finite = bool(np.isfinite(scores).all()) and np.isfinite(logs.get("loss", 0.0))
        if finite:
            logs["val_loss"] = float(keras.ops.convert_to_numpy(self.loss(self.data.val_targets, scores)))
            logs.update(validation_metrics(self.data, scores))
        else:
            # Diverged: stop now; the record marks the run instead of crashing the search.
            logs.update({name: float("nan") for name in OBJECTIVES[self.data.task]})
            self.model.stop_training = True
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        logs["seconds"] = time.perf_counter() - self.started
        self.elapsed += logs["seconds"]
        logs["elapsed"] = self.elapsed


def validation_metrics(data, scores):
    """The task's validation metrics from mlkit.evaluation.metrics, keyed as they appear in the logs.

    A metric the split cannot define (mAP with no positive label) is logged as NaN.
    """
    return {key: float("nan") if value is None else float(value) for key, value in task_metrics(data, scores).items()}


def task_metrics(data, scores):
    from mlkit.evaluation import metrics

    if data.task == "multilabel":
        from mlkit.evaluation.decisions import parse_rule

        rule = parse_rule("cardinality").fit(scores, labels=data.val_labels, train_cardinality=data.cardinality)
        report = metrics.multilabel_report(data.val_labels, rule.apply(scores), scores=scores)
        return {"val_auc": report["auc"], "val_map": report["map"], "val_f1": report["micro"]["f1"],
                "val_macro_f1": report["macro"]["f1"]}
    if data.task == "multiclass":
        report = metrics.multiclass_report(data.val_labels, scores)
        return {"val_accuracy": report["accuracy"], "val_f1": report["macro_f1"]}
    report = metrics.regression_report(data.val_labels, data.unscale(scores))
    return {"val_mae": report["mae"], "val_rmse": report["rmse"]}


def trial_callbacks(config, data, loss, csv_path):
    direction = OBJECTIVES[config.task][config.objective]
    callbacks = [
        ValidationMetrics(data, loss),
        keras.callbacks.EarlyStopping(
            monitor=config.objective, mode=direction, patience=config.patience, restore_best_weights=True),
        *schedule_callbacks(config),
        keras.callbacks.CSVLogger(str(csv_path)),
    ]
    if not config.no_tensorboard:
        # Beside the CSV: tuning/<run>/, one TensorBoard run per trial.
        callbacks.append(EpochEvents(Path(csv_path).with_suffix(""), config.run, fresh=True))
    return callbacks


class TopHyperModel(kt.HyperModel):
    """The grid as a KerasTuner search space; batch size is tuned in `fit`.

    Args:
        grid: the `Grid` (mlkit.tuning.search).
        data: a callable returning the `TopData` for a trial's taps, called when a trial first trains.
    """

    def __init__(self, grid, data):
        super().__init__(name="top")
        self.grid = grid
        self.data = data

    def trial_config(self, hp):
        """Declares every axis of the grid on `hp` and returns the trial's resolved config."""
        return self.grid.config({name: hp.Choice(name, values) for name, values in self.grid.values.items()})

    def build(self, hp):
        config = self.trial_config(hp)
        # Seeded per trial, so a rerun trial starts from the same weights whatever ran before it.
        keras.utils.set_random_seed(config.seed)
        return build_top_model(config, config.input_shape, config.num_outputs, config.task)

    def fit(self, hp, model, *args, csv_path=None, **kwargs):
        config = self.trial_config(hp)
        data = self.data(config.taps)
        compile_top(model, config, data.pos_weight)
        if "features" in config.inputs:
            set_input_statistics(model, *data.input_statistics(config.tap_weights), *data.input_range())
        # The dataset reshuffles itself each epoch (shuffle=False only silences Keras).
        return model.fit(
            data.train_dataset(config.batch), epochs=config.epochs, verbose=0, shuffle=False,
            callbacks=trial_callbacks(config, data, model.loss, csv_path),
        )


class ParallelGridSearchOracle(kt.oracles.GridSearchOracle):
    """KerasTuner's grid oracle, handing out the next combination whenever a worker asks.

    Upstream queues a trial for "make the combination after mine" only when it
    ends (only the first trial is queued at its start), so with several
    workers all but one or two sit IDLE. Queuing every trial when it starts,
    as upstream does for the first, keeps every worker busy; the order and
    the coverage of the grid are unchanged, since the oracle already skips
    combinations it has handed out.
    """

    def populate_space(self, trial_id):
        response = super().populate_space(trial_id)
        if response["status"] == kt.engine.trial.TrialStatus.RUNNING:
            queue_next_trial(self, trial_id)
        return response


class TopTuner(kt.Tuner):
    """A grid-search tuner whose trials write mlkit's run files and skip runs already finished.

    Args:
        progress: the `Progress` record of the `tuning/` folder.
        objective: the `keras_tuner.Objective`.
        verbose: print a line when a trial starts and ends. Defaults to True.
        **kwargs: passed to `keras_tuner.Tuner` (hypermodel, directory, ...).
    """

    def __init__(self, progress, objective, verbose=True, **kwargs):
        super().__init__(oracle=ParallelGridSearchOracle(objective=objective), **kwargs)
        self.progress = progress
        self.verbose = verbose
        self.scores = {}

    def run_trial(self, trial, *args, **kwargs):
        hp = trial.hyperparameters
        config = self.hypermodel.trial_config(hp)
        record = self.progress.finished(config.run, config.cache_identity)
        if record is not None:
            self.progress.log("skip", config.run)
            return self.report(config, record["result"], skipped=True)
        self.progress.log("start", config.run)
        self.say(f"trial {self.position(config)} {config.run}")
        try:
            result = self.train(hp, config)
        except MlkitError as error:
            raise TrialUserError(str(error)) from error
        except Exception as error:
            full = disk_full_error(error)
            if full is not None:
                raise TrialUserError(str(full)) from error
            raise kt.errors.FatalError(f"trial {config.run} failed: {error!r}") from error
        self.progress.log("done", config.run, seconds=result["fit_seconds"])
        return self.report(config, result)

    def train(self, hp, config):
        """Builds, trains and saves one trial; returns its result."""
        paths = run_paths(self.progress.folder.parent, config.run)
        data = self.hypermodel.data(config.taps)
        model = self._try_build(hp)
        # Timed from here: what `fit` costs, data loading and building excluded.
        started = time.perf_counter()
        history = self.hypermodel.fit(hp, model, csv_path=paths["csv"])
        result = trial_result(history.history, config, time.perf_counter() - started)
        save_weights_atomic(model, paths["weights"])
        if config.loss == "wbce":
            config.pos_weight = data.pos_weight.tolist()
        self.progress.finish(config.run, config.to_dict(), result)
        return result

    def position(self, config):
        return f"{self.hypermodel.grid.runs.index(config.run) + 1}/{len(self.hypermodel.grid.runs)}"

    def report(self, config, result, skipped=False):
        """Prints the trial's outcome and the best so far; returns the objective for KerasTuner."""
        objective = config.objective
        value = result["metrics"].get(objective, float("nan"))
        minimize = OBJECTIVES[config.task][objective] == "min"
        # KerasTuner counts a NaN score as a failed trial and aborts after three.
        score = value if np.isfinite(value) else (np.inf if minimize else -np.inf)
        self.scores[config.run] = score
        best = (min if minimize else max)(self.scores, key=self.scores.get)
        if skipped:
            self.say(f"trial {self.position(config)} {config.run}: finished earlier, skipped ({objective} {value:.4g})")
        else:
            self.say(f"  {objective} {value:.4g} at epoch {result['best_epoch'] + 1} of {result['epochs']} "
                     f"({result['fit_seconds']:.1f} s){' DIVERGED' if result['diverged'] else ''}; "
                     f"best so far: {best} {self.scores[best]:.4g}")
        return {objective: float(score)}

    def say(self, line):
        if self.verbose:
            print(line, flush=True)


def trial_result(history, config, fit_seconds):
    """Best epoch (0-based, as in the CSV), epochs run, timing and the metrics at the best epoch."""
    values = np.asarray(history.get(config.objective, [np.nan]), dtype="float64")
    finite = np.isfinite(values)
    minimize = OBJECTIVES[config.task][config.objective] == "min"
    if finite.any():
        masked = np.where(finite, values, np.inf if minimize else -np.inf)
        best = int(np.argmin(masked) if minimize else np.argmax(masked))
    else:
        best = 0
    metrics = {key: float(series[best]) for key, series in history.items()
               if key.startswith("val_") or key == "loss"}
    seconds = history.get("seconds", [0.0])
    return {
        "best_epoch": best, "epochs": len(values), "fit_seconds": float(fit_seconds),
        "epoch_seconds": float(np.mean(seconds)), "metrics": metrics, "diverged": not finite.all(),
    }


class PatientOracleClient:
    """A worker's link to the chief that waits a moment after an IDLE answer instead of spinning."""

    def __init__(self, client):
        self.client = client

    def __getattr__(self, name):
        return getattr(self.client, name)

    def create_trial(self, tuner_id):
        trial = self.client.create_trial(tuner_id)
        if trial.status == kt.engine.trial.TrialStatus.IDLE:
            time.sleep(IDLE_POLL_SECONDS)
        return trial


def pin_gpu(tuner_id):
    """Gives worker `tunerN` its own GPU (N modulo the GPU count) when there are several.

    With one GPU or none (CPU) this does nothing. Must run before TensorFlow
    touches a GPU.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    index = re.search(r"(\d+)$", tuner_id or "")
    if len(gpus) > 1 and index:
        tf.config.set_visible_devices(gpus[int(index.group(1)) % len(gpus)], "GPU")
        logger.info("%s uses %s", tuner_id, gpus[int(index.group(1)) % len(gpus)].name)


def run_search(grid, cache, progress, *, role, max_memory, verbose=True):
    """Runs the grid's trials with KerasTuner: `role` "alone", "chief" or "worker"."""
    if role == "worker":
        pin_gpu(progress.tuner_id)
    loaded = {}

    def data(taps):
        # One combination of taps in memory at a time: the taps axis varies slowest, so each loads once.
        if taps not in loaded:
            loaded.clear()
            base = grid.base
            loaded[taps] = TopData(cache, views=base.views, sample_weights=base.sample_weights, cap=base.cap,
                                   oversample=base.oversample, max_memory=max_memory, seed=base.seed,
                                   inputs=grid.inputs, taps=taps)
            if verbose:
                print(f"data: {loaded[taps].describe()}{'' if taps == 'last' else f' (taps {taps})'}", flush=True)
        return loaded[taps]

    objective = grid.base.objective
    tuner = TopTuner(
        progress, verbose=verbose, hypermodel=TopHyperModel(grid, data),
        objective=kt.Objective(objective, OBJECTIVES[grid.base.task][objective]),
        directory=str(progress.folder), project_name="kerastuner" if role != "worker" else f"kerastuner-{progress.tuner_id}",
        # mlkit's own record decides what is finished; KerasTuner's state is scratch (keras-tuner #1055).
        overwrite=True,
    )
    if role == "worker":
        tuner.oracle = PatientOracleClient(tuner.oracle)
    if verbose:
        print(f"{len(grid.runs)} trials in the grid; {role if role != 'alone' else 'tuning alone'} "
              f"({progress.tuner_id}), files in {progress.folder}", flush=True)
    # KerasTuner collects garbage before every trial; with TensorFlow's
    # million long-lived objects that takes half a second. Freezing what
    # exists now (after one collection) leaves each trial's collection only
    # the previous trials' objects to scan.
    gc.collect()
    gc.freeze()
    try:
        tuner.search(verbose=0)
    finally:
        gc.unfreeze()
