"""The private Keras, KerasTuner and TensorFlow names mlkit relies on still exist.

Every use of them lives in `mlkit/compat.py`, with the versions it was checked on. setup.cfg pins
each dependency by an upper version bound; when a release moves a name, this file fails first and
names the hook in compat.py to revisit, rather than a stage failing deep inside a run.
"""

import inspect

import keras
import keras_tuner as kt


def test_keras_private_hooks_exist():
    from keras.src.backend.tensorflow import trainer
    from keras.src.utils import file_utils

    assert callable(file_utils.get_file), "compat.recording_downloads wraps it"
    assert callable(trainer.reduce_per_replica), "compat.average_logs_over_workers replaces it"
    assert callable(getattr(trainer, "_collective_all_reduce_multi_worker", None)), "compat.average_logs_over_workers"
    for name in ("_symbolic_build", "_maybe_symbolic_build"):
        assert callable(getattr(keras.Model, name, None)), f"compat.build_from_local_batch uses Model.{name}"
    assert callable(getattr(keras.optimizers.Adam(), "_var_key", None)), "compat.optimizer_variable_key"
    source = inspect.getsource(keras.callbacks.BackupAndRestore)
    assert "_initial_epoch" in source, "compat.set_initial_epoch sets model._initial_epoch as Keras's own callback does"
    assert "_current_epoch" in source and "def _save_model" in source, \
        "compat.backup_epoch reads _current_epoch; checkpoints overrides _save_model"


def test_keras_tuner_private_hooks_exist():
    oracle = kt.oracles.GridSearchOracle(objective="val_loss", max_trials=1)
    assert isinstance(getattr(oracle, "_populate_next", None), list), "compat.queue_next_trial appends to it"


def test_every_private_name_is_used_from_compat_alone():
    """No module but mlkit/compat.py reaches into keras.src or patches a private attribute."""
    from pathlib import Path

    import mlkit

    root = Path(mlkit.__file__).parent
    offenders = [str(path.relative_to(root)) for path in root.rglob("*.py") if path.name != "compat.py" and
                 any(marker in path.read_text() for marker in ("keras.src", "._populate_next", "._initial_epoch",
                                                               "._current_epoch", "._symbolic_build", "._var_key",
                                                               "reduce_per_replica"))]
    assert not offenders, offenders


def test_keras_hub_private_hooks_exist():
    import pytest

    pytest.importorskip("keras_hub")
    from keras_hub.src.utils import preset_utils

    assert "kaggle_handle" in preset_utils.BUILTIN_PRESETS["dinov2_small"], "compat.hub_preset_location reads it"
    from keras_hub.src.models.vit.vit_layers import ViTEncoder

    body = inspect.getsource(ViTEncoder.call)
    assert all(name in body for name in ("self.dropout(", "self.encoder_layers[", "self.layer_norm(")), \
        "compat.unrolled_vit replays ViTEncoder.call"
