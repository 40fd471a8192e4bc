"""`mlkit finetune` from the command line with a distribution strategy, in a process of its own."""

import os
import subprocess
import sys

import pytest
from stage3 import tuned_workspace

pytestmark = pytest.mark.slow


def test_multiworker_strategy_runs_as_a_single_cpu_worker_from_the_cli(tmp_path):
    # MultiWorkerMirroredStrategy must exist before TensorFlow does anything else in its process,
    # which only a fresh process guarantees; without TF_CONFIG it is one worker.
    work, cache, _ = tuned_workspace(tmp_path, n=40)
    env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    done = subprocess.run(
        [sys.executable, "-m", "mlkit", "finetune", str(cache), "--workdir", str(work), "--strategy", "multiworker",
         "--epochs", "1", "--batch", "8", "--augment", "none", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test micro F1:" in done.stdout
    assert list((work / "models").glob("*_116_lr14_b8_none.keras"))
