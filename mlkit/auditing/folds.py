"""Out-of-fold scores: k top models trained on the cache, each scoring the fold it never saw.

The folds are stratified by label (mlkit's iterative stratification) for
classification and random for regression. Each fold's top is mlkit's own
(`build_top_model`, `compile_top`), with either a tuned run's settings or a
small default (one hidden layer, dropout 0.5, Adam); 10% of its training
rows stop it early. Batches are gathered from the one in-memory feature
matrix, so no fold copies it. On several cached taps side by side, each
column is z-scored and, as tune-top does (`TopConfig.tap_weights` "equal",
`mlkit.tuning.top_data.tap_column_weights`), each tap's block scaled so that
every tap carries the same total variance.
"""

import dataclasses
import json
import logging
import math

import keras
import numpy as np

from mlkit.auditing.neighbours import row_statistics
from mlkit.data.split import iterative_stratification
from mlkit.errors import MlkitError
from mlkit.tuning import TopConfig, trainable_top
from mlkit.tuning.config import TAP_WEIGHTS
from mlkit.tuning.top_data import tap_column_weights
from mlkit.workspace import run_paths

logger = logging.getLogger(__name__)

STOPPING_SHARE = 0.1
PATIENCE = 3
# A small collection still gets this many steps per epoch: the default batch shrinks to fit.
MIN_STEPS_PER_EPOCH = 10
# Rows per scoring batch: each is gathered into a copy (5 MB at 1,280 features).
PREDICT_BATCH = 1024


def row_batches(source, rows, batch, seed=None):
    """A tf.data pipeline of (features, targets) batches gathered at `rows` of in-memory arrays.

    Only row indices pass through tf.data; each batch is gathered from the
    NumPy arrays, so no copy of the feature matrix is made (a tf.constant
    would be one). This costs less CPU per epoch than a keras PyDataset.
    Reshuffled each epoch when seeded.

    Args:
        source: a dict holding the "features" and "targets" arrays. TensorFlow
            keeps a `numpy_function`'s Python function registered for the rest
            of the process, so the function holds this dict, never the arrays:
            emptying it after training frees them (holding the arrays kept the
            whole feature matrix alive after every audit).
        rows: row indices to gather.
        batch: rows per batch.
        seed: shuffles the rows each epoch when given. Defaults to None.
    """
    import tensorflow as tf

    x_shape, y_shape = (None, *source["features"].shape[1:]), (None, *source["targets"].shape[1:])
    y_type = tf.as_dtype(source["targets"].dtype)

    def gather(index):
        x, y = tf.numpy_function(lambda i: (source["features"][i], source["targets"][i]), [index], (tf.float32, y_type))
        x.set_shape(x_shape)
        y.set_shape(y_shape)
        return x, y

    dataset = tf.data.Dataset.from_tensor_slices(np.asarray(rows, dtype=np.int64))
    if seed is not None:
        dataset = dataset.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    return dataset.batch(int(batch)).map(gather).prefetch(1).with_options(options)


def assign_folds(labels, task, folds, seed=0):
    """A fold number per row: stratified by label for classification, random for regression."""
    if task == "regression":
        return np.random.default_rng(seed).permutation(len(labels)) % folds
    if task == "multiclass":
        row_labels = [np.array([label]) for label in labels]
        num_labels = int(np.max(labels)) + 1 if len(labels) else 0
    else:
        row_labels = [np.flatnonzero(row) for row in labels]
        num_labels = labels.shape[1]
    return iterative_stratification(row_labels, num_labels, [1.0 / folds] * folds, np.full(len(labels), -1), seed=seed)


def fold_top_config(config, task, workdir="."):
    """The `TopConfig` each fold trains: a tuned run's settings, or the audit's small default."""
    if not config.top:
        return TopConfig(task=task, layers=1, units=config.units, reg="d5", lr=config.lr, batch=config.batch,
                         optimizer="adam", epochs=config.epochs, patience=PATIENCE, seed=config.seed)
    path = run_paths(workdir, config.top)["json"]
    if not path.exists():
        raise MlkitError(f"--top {config.top}: no tuned run record at {path}; list runs with `mlkit runs {path.parent}`")
    tuned = TopConfig.from_dict(json.loads(path.read_text())["config"])
    if tuned.task != task or tuned.text:
        raise MlkitError(f"--top {config.top} is a {tuned.task} top{' with a caption branch' if tuned.text else ''}; "
                         f"the audit trains image-only {task} tops: pick another run or leave --top out")
    return TopConfig.from_dict({**tuned.to_dict(), "views": 0, "cap": 0, "oversample": 0, "sample_weights": ""})


def training_targets(labels, task, rows):
    """Targets as the top trains on them: regression standardised on the training rows."""
    if task != "regression":
        return labels, None
    mean, std = labels[rows].mean(axis=0), labels[rows].std(axis=0) + 1e-12
    return ((labels - mean) / std).astype(np.float32), (mean, std)


def column_weights(top, tap_widths):
    """Each feature column's weight after z-scoring (`tap_column_weights`), or None to leave them at 1.

    Args:
        top: the fold's `TopConfig`; its `tap_weights` decides, as in tune-top.
        tap_widths: each tap's columns, in the order the features hold them; None for one tap.
    """
    if tap_widths is None or len(tap_widths) < 2 or top.tap_weights != TAP_WEIGHTS[0]:
        return None
    return tap_column_weights(tap_widths)


def train_fold(features, labels, task, num_outputs, top, train_rows, seed, weights=None):
    """One fold's top, trained on `train_rows` (10% of them held out to stop it early).

    `weights` (`column_weights`) scale the standardised columns: they divide the variances the top stores.
    """
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(train_rows)
    stop = max(1, int(len(shuffled) * STOPPING_SHARE))
    fit_rows, stop_rows = np.sort(shuffled[stop:]), np.sort(shuffled[:stop])
    targets, scale = training_targets(labels, task, fit_rows)
    keras.utils.set_random_seed(seed)
    mean, variance = row_statistics(features, fit_rows)
    if weights is not None:
        variance = variance / weights**2
    # Fold tops leave their inputs unbounded (tune-top's tops clip them to the training range, `top_bounds`):
    # the audit's label check was measured against cleanlab without the clip (BENCHMARKS.md); with it, unmeasured.
    model = trainable_top(dataclasses.replace(top, bounds=False), features.shape[1:], num_outputs, task,
                          labels[fit_rows], mean, variance)
    # XLA compiles each fold's new model for seconds of CPU (7 s against 2 s without, on 2 cores):
    # more than a small top's whole training.
    model.jit_compile = False
    batch = min(int(top.batch), max(1, math.ceil(len(fit_rows) / MIN_STEPS_PER_EPOCH)))
    source = {"features": features, "targets": targets}
    try:
        model.fit(
            row_batches(source, fit_rows, batch, seed=seed), epochs=top.epochs, verbose=0, shuffle=False,
            validation_data=row_batches(source, stop_rows, PREDICT_BATCH),
            callbacks=[keras.callbacks.EarlyStopping(patience=top.patience, restore_best_weights=True)],
        )
    finally:
        source.clear()
    return model, scale


def predict_rows(model, features, rows, scale):
    """Scores of `rows`, in large batches, unstandardised for regression."""
    parts = [np.asarray(model.predict_on_batch(features[rows[start:start + PREDICT_BATCH]]))
             for start in range(0, len(rows), PREDICT_BATCH)]
    scores = np.concatenate(parts) if parts else np.zeros((0, model.output_shape[-1]), np.float32)
    return scores if scale is None else scores * scale[1] + scale[0]


def out_of_fold_scores(features, labels, task, num_outputs, config, workdir=".", progress=None, tap_widths=None,
                       folds=None):
    """Every row's scores from the one fold model that did not train on it.

    Args:
        features: (N, D) float32 feature vectors, in memory.
        labels: multi-hot (N, L), class indices (N,) or targets (N, T).
        task: multilabel, multiclass or regression.
        num_outputs: labels, classes or targets.
        config: the `AuditConfig` (folds, seed, top settings).
        workdir: the workspace holding `tuning/` when `config.top` names a run. Defaults to ".".
        progress: called with (fold, folds) after each fold. Defaults to None.
        tap_widths: the columns of each tap `features` holds side by side, in
            order; None for one tap. Defaults to None.
        folds: each row's fold, already drawn (`assign_folds`); None draws them
            from `config.seed`. Defaults to None.

    Returns:
        (scores, folds): float32 scores shaped like the model's output, and each row's fold.
    """
    top = fold_top_config(config, task, workdir)
    if folds is None:
        folds = assign_folds(labels, task, config.folds, config.seed)
    weights = column_weights(top, tap_widths)
    scores = None
    for fold in range(config.folds):
        held_out, train_rows = np.flatnonzero(folds == fold), np.flatnonzero(folds != fold)
        model, scale = train_fold(features, labels, task, num_outputs, top, train_rows, config.seed + fold,
                                   weights)
        fold_scores = predict_rows(model, features, held_out, scale)
        if scores is None:
            scores = np.zeros((len(labels), fold_scores.shape[1]), np.float32)
        scores[held_out] = fold_scores
        # The model goes before the session is cleared, so its traced functions go with it.
        del model
        keras.backend.clear_session()
        if progress:
            progress(fold + 1, config.folds)
    return scores, folds
