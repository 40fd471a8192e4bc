"""Checkpoints that a kill at any instant cannot corrupt (mlkit.models.checkpoints)."""

import json

import keras
import numpy as np

from mlkit.models.checkpoints import backup_and_restore, best_weights_checkpoint, save_weights_atomic


def tiny_model(seed):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def same_weights(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))


def test_save_weights_atomic_replaces_the_file_and_leaves_no_partial(tmp_path):
    path = tmp_path / "best.weights.h5"
    path.write_bytes(b"an older, complete file")
    model = tiny_model(0)
    save_weights_atomic(model, path)
    other = tiny_model(1)
    other.load_weights(path)
    assert same_weights(model, other)
    assert [p.name for p in tmp_path.iterdir()] == ["best.weights.h5"]


def test_backup_resumes_from_the_last_complete_state_whatever_was_left_half_written(tmp_path):
    trained = tiny_model(0)
    backup = backup_and_restore(tmp_path / "backup")
    backup.set_model(trained)
    backup._current_epoch = 2  # as on_epoch_end sets it after the second epoch
    backup._save_model()
    # A kill during the third epoch's save leaves a half-written file beside the good state;
    # Keras's own callback would have truncated the only copy in place.
    (tmp_path / "backup" / "epoch3.weights.h5").write_bytes(b"\x89HDF\r\n")
    (tmp_path / "backup" / ".partial-123-epoch3.weights.h5").write_bytes(b"\x89HDF")
    assert json.loads((tmp_path / "backup" / "state.json").read_text())["epoch"] == 2

    fresh = tiny_model(1)
    assert not same_weights(trained, fresh)
    restore = backup_and_restore(tmp_path / "backup")
    restore.set_model(fresh)
    restore.on_train_begin()
    assert same_weights(trained, fresh)
    assert fresh._initial_epoch == 2


def test_backup_with_nothing_saved_starts_from_scratch(tmp_path):
    model = tiny_model(0)
    before = model.get_weights()
    restore = backup_and_restore(tmp_path / "none")
    restore.set_model(model)
    restore.on_train_begin()
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_fit_with_the_backup_resumes_at_the_saved_epoch(tmp_path):
    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    y = x.sum(1, keepdims=True)
    model = tiny_model(0)
    backup = backup_and_restore(tmp_path / "backup")
    backup.set_model(model)
    model.fit(x, y, epochs=2, verbose=0)
    backup._current_epoch = 2
    backup._save_model()
    resumed = tiny_model(5)
    history = resumed.fit(x, y, epochs=4, verbose=0, callbacks=[backup_and_restore(tmp_path / "backup")])
    assert len(history.history["loss"]) == 2  # epochs 3 and 4 only
    assert not (tmp_path / "backup").exists()  # a finished fit removes its backup


def test_best_weights_saves_only_improvements_below_the_threshold(tmp_path):
    path = tmp_path / "best.weights.h5"
    model = tiny_model(0)
    best = best_weights_checkpoint(path, "val_loss", initial_value_threshold=1.0)
    best.set_model(model)
    best.on_epoch_end(0, {"val_loss": 2.0})
    assert not path.exists()
    best.on_epoch_end(1, {"val_loss": 0.5})
    saved = path.stat().st_mtime_ns
    best.on_epoch_end(2, {"val_loss": 0.7})
    best.on_epoch_end(3, {"val_loss": float("nan")})
    assert path.stat().st_mtime_ns == saved and best.best == 0.5
