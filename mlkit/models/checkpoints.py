"""Checkpoints that a kill at any instant cannot leave half written.

Keras writes `save_weights` files in place, so a SIGKILL while one is being
written leaves a truncated HDF5 file where the last good one was, and
BackupAndRestore then fails on resume ("truncated file"). Here every weights
file is written under a temporary name and renamed into place (a rename is
atomic on one file system), and the backup's epoch is recorded only after its
weights are complete, in a JSON file that names them. Whatever instant a run
dies, the files on disk are either the previous complete state or the new one.
"""

import json
from pathlib import Path

import numpy as np

from mlkit.compat import backup_epoch, set_initial_epoch
from mlkit.files import save_weights_atomic, write_json


def _backup_class():
    import keras

    class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
        """Keras's BackupAndRestore (per epoch), with a backup that survives a kill at any point.

        The backup folder holds `epoch<N>.weights.h5` files and `state.json`,
        which names the newest complete one and its epoch. Saving writes the
        weights atomically, then the state atomically, then removes older
        weights; resuming reads the state first, so it never opens weights
        that were still being written, and the epoch always matches them.
        """

        def __init__(self, backup_dir, restore_from=None):
            super().__init__(str(backup_dir), save_freq="epoch", delete_checkpoint=True)
            self._folder = Path(backup_dir)
            self._state = self._folder / "state.json"
            self._restore_from = Path(restore_from or backup_dir)

        def on_train_begin(self, logs=None):
            state = self.read_state()
            if state is None:
                return
            if self.model.optimizer is not None and not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)
            self.model.load_weights(str(self._restore_from / state["weights"]))
            set_initial_epoch(self.model, state["epoch"])

        def read_state(self):
            """{"epoch", "weights"} of the last complete backup, or None when there is none."""
            try:
                state = json.loads((self._restore_from / self._state.name).read_text())
            except FileNotFoundError:
                return None
            if not (self._restore_from / state["weights"]).exists():
                return None
            return state

        def _save_model(self):
            self._folder.mkdir(parents=True, exist_ok=True)
            epoch = backup_epoch(self)
            name = f"epoch{epoch}.weights.h5"
            save_weights_atomic(self.model, self._folder / name)
            write_json(self._state, {"epoch": epoch, "weights": name})
            for old in self._folder.glob("epoch*.weights.h5"):
                if old.name != name:
                    old.unlink(missing_ok=True)

    return AtomicBackupAndRestore


def backup_and_restore(backup_dir, restore_from=None):
    """A BackupAndRestore callback whose files are never half written (see the module's docstring).

    Args:
        backup_dir: the folder it writes its backups to.
        restore_from: the folder it resumes from: a multi-worker run's other
            workers resume from the chief's backup and write theirs elsewhere.
            Defaults to `backup_dir`.
    """
    return _backup_class()(backup_dir, restore_from)


def best_weights_checkpoint(path, monitor="val_loss", initial_value_threshold=None):
    """Saves the weights whenever `monitor` reaches a new minimum, atomically.

    Args:
        path: the `.weights.h5` file kept up to date with the best epoch.
        monitor: the logged value to minimise. Defaults to "val_loss".
        initial_value_threshold: only an epoch below this counts as best
            (the best value of the epochs before a resume). Defaults to None.
    """
    import keras

    class BestWeights(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best = np.inf if initial_value_threshold is None else float(initial_value_threshold)

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(monitor)
            if value is not None and np.isfinite(value) and value < self.best:
                self.best = float(value)
                save_weights_atomic(self.model, path)

    return BestWeights()
