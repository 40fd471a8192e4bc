"""The private Keras and KerasTuner names mlkit relies on still exist.

Each is pinned in setup.cfg by an upper version bound; when a release moves one, this file fails
first and names it, rather than a stage failing deep inside a run.
"""

import inspect

import keras
import keras_tuner as kt


def test_keras_private_hooks_exist():
    from keras.src.backend.tensorflow import trainer
    from keras.src.utils import file_utils

    assert callable(file_utils.get_file), "backbones._explain_download_failure wraps it"
    assert callable(trainer.reduce_per_replica), "finetune._average_logs_over_workers replaces it"
    for name in ("_symbolic_build", "_maybe_symbolic_build"):
        assert callable(getattr(keras.Model, name, None)), f"finetune's multi-worker build uses Model.{name}"
    assert "_initial_epoch" in inspect.getsource(keras.callbacks.BackupAndRestore), \
        "checkpoints.backup_and_restore sets model._initial_epoch as Keras's own callback does"


def test_keras_tuner_private_hooks_exist():
    oracle = kt.oracles.GridSearchOracle(objective="val_loss", max_trials=1)
    assert isinstance(getattr(oracle, "_populate_next", None), list), "tuner.ParallelGridSearchOracle appends to it"
