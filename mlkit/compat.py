"""Every use of a private Keras, KerasTuner or TensorFlow name, in one place.

mlkit needs a few things the public APIs do not offer. Each is wrapped here with
the versions it was checked on and the upstream issue or reason, so a dependency
upgrade touches this file alone; `tests/test_private_hooks.py` fails first, naming
the hook, when a release moves one. setup.cfg's upper version bounds are the
ranges below.

| hook | private name | checked on |
| --- | --- | --- |
| `recording_downloads` | `keras.src.utils.file_utils.get_file` | Keras 3.3-3.15 |
| `set_initial_epoch`, `backup_epoch` | `Model._initial_epoch`, `BackupAndRestore._current_epoch` / `._save_model` | Keras 3.3-3.15 |
| `queue_next_trial` | `GridSearchOracle._populate_next` | KerasTuner 1.4.7-1.4.8 |
| `build_from_local_batch` | `Model._symbolic_build`, `._maybe_symbolic_build` | Keras 3.15 (keras-team/keras#20329) |
| `average_logs_over_workers` | `keras.src.backend.tensorflow.trainer.reduce_per_replica` | Keras 3.15 |
| `hub_preset_location`, `explaining_hub_downloads` | `keras_hub.src.utils.preset_utils.BUILTIN_PRESETS` | KerasHub 0.32 |
| `optimizer_variable_key` | `Optimizer._var_key` | Keras 3.15 |
| `unrolled_vit` | `ViTEncoder.call`'s body: its `dropout`, `encoder_layers`, `layer_norm` | KerasHub 0.32 |
"""

import contextlib


@contextlib.contextmanager
def recording_downloads():
    """Records what Keras's `get_file` was asked for while the block runs: {"fname", "origin", "cache_subdir"}.

    Keras's download error names neither the file nor where it belongs; the
    backbone registry uses the record to tell an offline user both. Keras
    has no hook for this, so the module function is wrapped for the block.
    """
    from keras.src.utils import file_utils

    original = file_utils.get_file
    asked = {}

    def recording_get_file(fname=None, origin=None, *args, **kwargs):
        asked.update(fname=fname, origin=origin, cache_subdir=kwargs.get("cache_subdir", "datasets"))
        return original(fname, origin, *args, **kwargs)

    file_utils.get_file = recording_get_file
    try:
        yield asked
    finally:
        file_utils.get_file = original


def set_initial_epoch(model, epoch):
    """Makes `fit` resume at `epoch`, as Keras's own BackupAndRestore does (it sets the same attribute)."""
    model._initial_epoch = int(epoch)


def backup_epoch(callback):
    """The epoch a BackupAndRestore callback is about to save (Keras keeps it in `_current_epoch`).

    mlkit's atomic backup overrides `BackupAndRestore._save_model`, the method
    Keras calls to write a backup, so a kill never leaves a half-written one.
    """
    return int(callback._current_epoch)


def queue_next_trial(oracle, trial_id):
    """Asks KerasTuner's grid oracle to make the combination after `trial_id`'s when it is next asked.

    Upstream queues this only for the first trial at its start and for others
    when they end, which leaves parallel workers idle (see
    `mlkit.tuning.tuner.ParallelGridSearchOracle`).
    """
    oracle._populate_next.append(trial_id)


def build_from_local_batch(network):
    """Lets Keras 3 build the optimizer and metrics from this worker's part of the first batch.

    With two or more workers, `fit` averages the first batch across workers to build them
    (`_maybe_symbolic_build`), which fails on any batch that is a structure, such as (images, labels):
    "Attempt to convert a value (PerReplica...) ... to a Tensor" (keras-team/keras#20329, Keras 3.15).
    Building needs only shapes and dtypes, which every worker's part has.
    """
    import tensorflow as tf
    from keras import tree

    strategy = network.distribute_strategy

    def local(value):
        return strategy.experimental_local_results(value)[0] if isinstance(value, tf.distribute.DistributedValues) else value

    def symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tree.map_structure(local, next(batches))
                break
        with strategy.scope():
            network._symbolic_build(data_batch=data_batch)

    network._maybe_symbolic_build = symbolic_build


def average_logs_over_workers():
    """Makes Keras 3 average each step's logs over all workers, as it means to.

    Keras 3.15 reduces the logs of every train and test step with `reduction="auto"`, which
    across workers becomes `strategy.reduce("MEAN", value, axis=0)` and fails on the scalar
    logs ("Invalid reduction dimension 0 for input with 0 dimensions"), so no multi-worker `fit`
    runs. Here "auto" across workers is the mean over all replicas (axis None): every worker
    logs, early-stops and checkpoints on the same numbers. Only multi-worker processes, which
    must be processes of their own (`mlkit.models.distribute.make_strategy`), call this.
    """
    from keras import tree
    from keras.src.backend.tensorflow import trainer

    original = trainer.reduce_per_replica
    if getattr(original, "averages_over_workers", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction == "auto" and trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(lambda value: strategy.reduce("MEAN", value, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica.averages_over_workers = True
    trainer.reduce_per_replica = reduce_per_replica


def hub_preset_location(preset):
    """(Kaggle handle or "", kagglehub's cache folder) for a KerasHub preset name.

    KerasHub resolves a preset name to a Kaggle handle through its table of
    built-in presets and downloads it with kagglehub, whose cache folder is
    `$KAGGLEHUB_CACHE` or ~/.cache/kagglehub. Neither names the handle in
    its offline error; the table has no public accessor.
    """
    from kagglehub.config import get_cache_folder
    from keras_hub.src.utils import preset_utils

    entry = preset_utils.BUILTIN_PRESETS.get(preset) or {}
    handle = entry.get("kaggle_handle", "")
    if not handle and str(preset).startswith("kaggle://"):
        handle = str(preset)
    return handle, get_cache_folder()


@contextlib.contextmanager
def explaining_hub_downloads(preset, error_class, message):
    """Turns a failed KerasHub download inside the block into `error_class(message(preset, handle, folder, error))`.

    A local preset folder is not a download: its errors pass through unchanged.
    """
    from pathlib import Path

    try:
        yield
    except error_class:
        raise
    except Exception as error:
        if Path(preset).is_dir() or not _looks_like_download_failure(error):
            raise
        handle, folder = hub_preset_location(preset)
        raise error_class(message(preset, handle, folder, error)) from None


def _looks_like_download_failure(error):
    """Connection, HTTP and missing-file errors (requests, kagglehub, huggingface_hub), not model errors."""
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {"ConnectionError", "OSError", "HTTPError", "FileNotFoundError", "KaggleApiHTTPError",
                         "LocalEntryNotFoundError", "TimeoutError"}) or "resolve" in str(error).lower()


def optimizer_variable_key(optimizer, variable):
    """The key a Keras optimiser files `variable` under, the same for a Keras variable and the backend's.

    `update_step` is handed the backend's variable (a tf.Variable, or one
    replica's under tf.distribute), not the Keras variable the optimiser was
    built with; Keras's own optimisers find a variable's slots through this
    private key (`Optimizer._var_key`, Keras 3.15), and mlkit.optimizers finds
    its learning-rate factor the same way. Keras offers no public mapping.
    """
    return optimizer._var_key(variable)


def unrolled_vit(image_model):
    """A KerasHub ViTBackbone's encoder as graph nodes: ([each block's output tokens], the final tokens).

    `ViTEncoder` runs its blocks inside its own `call` (dropout, the blocks in
    `encoder_layers`, then `layer_norm`; KerasHub 0.32), so no block's output
    is a node of the backbone's graph and none can be tapped. This replays
    that `call` on the same layers (same weights) from the backbone's input;
    tests/test_private_hooks.py checks the body still reads so.
    """
    embedding = image_model.get_layer("vit_patching_and_embedding")
    encoder = image_model.get_layer("vit_encoder")
    x = encoder.dropout(embedding(image_model.inputs[0]))
    blocks = []
    for block in encoder.encoder_layers:
        x = block(x)
        blocks.append(x)
    return blocks, encoder.layer_norm(x)
