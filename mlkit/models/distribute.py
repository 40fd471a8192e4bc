"""Where fine-tuning runs: the tf.distribute strategy, each process's role, and the dtype policy.

`finetune --strategy mirrored` trains on every local GPU (or the CPU);
`multiworker` on the workers named by TF_CONFIG, where the chief (or worker 0)
writes the run's files and the others train in step. `--mixed-precision` sets
the Keras dtype policy for the run and restores it after.
"""

import contextlib
import logging
import os

from mlkit.errors import MlkitError

log = logging.getLogger(__name__)

STRATEGIES = ("none", "mirrored", "multiworker")


@contextlib.contextmanager
def precision_policy(mixed):
    """mixed_float16 on a GPU, mixed_bfloat16 on CPU (where float16 math is slow), restored after."""
    import keras
    import tensorflow as tf

    previous = keras.config.dtype_policy()
    if mixed:
        policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
        keras.config.set_dtype_policy(policy)
        log.info("mixed precision: %s", policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def make_strategy(name):
    """A tf.distribute strategy: the default (none), MirroredStrategy (all local GPUs, or the CPU),
    or MultiWorkerMirroredStrategy (workers from TF_CONFIG; one worker without it)."""
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        try:
            return tf.distribute.MultiWorkerMirroredStrategy(communication_options=tf.distribute.experimental.
                                                             CommunicationOptions(timeout_seconds=collective_timeout()))
        except (RuntimeError, ValueError) as error:
            raise MlkitError(f"--strategy multiworker must start before TensorFlow does anything else in the "
                             f"process, with TF_CONFIG set on every worker: {error}") from None
    return tf.distribute.get_strategy()


def collective_timeout():
    """Seconds a multi-worker step waits for the other workers before failing (`MLKIT_WORKER_TIMEOUT`, default 600).

    A worker that dies mid-run would otherwise leave the others waiting in their next
    all-reduce for ever.
    """
    value = os.environ.get("MLKIT_WORKER_TIMEOUT", "600")
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise MlkitError(f"MLKIT_WORKER_TIMEOUT={value!r}: give the seconds a worker waits for the others, e.g. 600")
    return seconds


def worker_role(strategy):
    """(is_chief, "type:index") of this process: TF_CONFIG's chief, else worker 0, writes the run's files."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if not task_type:
        return True, "chief"
    task_id = int(resolver.task_id or 0)
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief), f"{task_type}:{task_id}"


def lost_worker(error):
    """True when a multi-worker step failed because another worker died or stopped answering."""
    import tensorflow as tf

    return isinstance(error, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
                              tf.errors.AbortedError))
