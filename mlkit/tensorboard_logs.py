"""TensorBoard event files for tune-top trials and fine-tuning runs.

Each run writes `<stage folder>/<run>/` beside its CSV: per-epoch scalars
(every value the CSV logs: loss, validation loss and metrics, learning rate)
at step = epoch, with their wall time, plus `epoch_seconds`; and the HParams
plugin's session record, whose hyperparameters are the fields of the run's
name (`mlkit.runs.RunName`: layers, units, reg, lr, batch, pooling, backbone,
...; options as `opt_<key>`). So

    tensorboard --logdir tuning     # or: --logdir models

lists every trial, plots their curves together, and the HPARAMS tab compares
them by hyperparameter. A fine-tuning run's warm-up epochs are logged under
`warmup/`. A resumed run appends to its folder. The files are written by
default; `--no-tensorboard` leaves them out.
"""

import shutil
import time
from pathlib import Path

import keras

from mlkit.runs import parse_run_name

WARMUP = "warmup"


def run_hparams(run):
    """The run name's fields as HParams values (str, float, int or bool); options as `opt_<key>`."""
    from dataclasses import asdict

    name = parse_run_name(run)
    fields = asdict(name)
    fields.pop("options")
    values = {key: value for key, value in fields.items() if value is not None}
    values.update({f"opt_{key}": str(value) for key, value in name.options})
    return {key: value if isinstance(value, (bool, int, float)) else str(value) for key, value in values.items()}


class EpochEvents(keras.callbacks.Callback):
    """Writes each epoch's logs as TensorBoard scalars and, once, the run's hparams.

    Args:
        folder: the run's event folder, `<stage folder>/<run>`.
        run: the run name (its fields become the hparams).
        prefix: a tag prefix for a phase, e.g. "warmup/". Defaults to "" (no prefix).
        fresh: remove the folder's earlier events first, for a run that
            trains again from its first epoch (a tune-top trial, whose CSV
            starts again too); a resumed fine-tuning run appends. Defaults to False.
    """

    def __init__(self, folder, run, prefix="", fresh=False):
        super().__init__()
        self.folder, self.run, self.prefix, self.fresh = Path(folder), str(run), prefix, fresh
        self.writer = None
        self.started = None

    def on_train_begin(self, logs=None):
        import tensorflow as tf
        from tensorboard.plugins.hparams import api as hp

        if self.fresh:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.writer = tf.summary.create_file_writer(str(self.folder))
        with self.writer.as_default():
            hp.hparams(run_hparams(self.run), trial_id=self.run)
        self.writer.flush()

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        values = dict(logs or {})
        if self.started is not None:
            values["epoch_seconds"] = time.perf_counter() - self.started
        with self.writer.as_default():
            for key, value in values.items():
                try:
                    tf.summary.scalar(f"{self.prefix}{key}", float(value), step=int(epoch))
                except (TypeError, ValueError):
                    continue  # a non-numeric log entry has no curve
        self.writer.flush()

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
