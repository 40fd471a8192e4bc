"""`mlkit finetune` from the command line with a distribution strategy, in a process of its own."""

import os
import subprocess
import sys
from pathlib import Path

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


def test_finetune_warns_when_it_ends_below_the_cached_top():
    from mlkit.models.record import FinetuneResult

    def result(task, finetuned, cached):
        key = {"multiclass": "accuracy", "regression": "mae"}[task]
        return FinetuneResult("run", Path("m.keras"), Path("m.json"), Path("m.csv"), {"task": task, key: finetuned},
                              {"task": task, key: cached})

    assert "warning: fine-tuning ended below the cached top" in result("multiclass", 0.60, 0.70).describe()
    assert "warning" not in result("multiclass", 0.70, 0.60).describe()
    # For a regression head the headline is an error: higher is worse.
    assert result("regression", 3.0, 2.0).behind_cached_top and not result("regression", 2.0, 3.0).behind_cached_top
