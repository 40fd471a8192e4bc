"""`finetune --strategy multiworker` with two real worker processes on 127.0.0.1, each with its TF_CONFIG."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from stage3 import tuned_workspace

pytestmark = pytest.mark.slow

# A worker that loses its peer fails its next collective after this many seconds at most (MLKIT_WORKER_TIMEOUT).
# The killed-worker test waits that long for the survivor, so it keeps it short; a run that kills no one gives
# a peer slowed by a loaded machine more time (20 s failed it once under a load of 8 on 2 cores).
WORKER_TIMEOUT = 20
CALM_TIMEOUT = 120


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(cache, work, *options, timeout=WORKER_TIMEOUT):
    """Two `mlkit finetune --strategy multiworker` processes; worker 0 is the chief."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", MLKIT_WORKER_TIMEOUT=str(timeout),
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "mlkit", "finetune", str(cache), "--workdir", str(work), "--strategy", "multiworker",
             "--batch", "8", "--augment", "none", "--no-progress", *options],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return processes


def finish(processes, timeout=180):
    outputs = []
    for process in processes:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            pytest.fail("a multi-worker run hung")
        outputs.append((process.returncode, out, err))
    return outputs


def test_two_workers_finish_and_only_the_chief_writes(tmp_path):
    work, cache, _ = tuned_workspace(tmp_path, n=40)
    (chief_rc, chief_out, chief_err), (worker_rc, worker_out, worker_err) = finish(
        start_workers(cache, work, "--epochs", "2", timeout=CALM_TIMEOUT))
    assert chief_rc == 0, chief_err[-3000:]
    assert worker_rc == 0, worker_err[-3000:]
    assert "test micro F1:" in chief_out
    assert "worker: finished training in step with the chief" in worker_out
    written = sorted(path.name for path in (work / "models").iterdir() if path.is_file())
    assert [name.rsplit(".", 1)[1] for name in written] == ["csv", "json", "keras"], written
    # Beside them, the chief's TensorBoard folder models/<run>/ and nothing else (no worker's files).
    folders = [path.name for path in (work / "models").iterdir() if path.is_dir()]
    assert folders == [written[0][: -len(".csv")]], folders
    assert len((work / "models" / written[0]).read_text().splitlines()) == 3  # header and two epochs


def test_a_killed_worker_stops_the_other_with_a_clear_error_and_a_restart_resumes(tmp_path):
    work, cache, _ = tuned_workspace(tmp_path, n=40)
    options = ("--epochs", "3", "--patience", "3")
    chief, worker = start_workers(cache, work, *options)
    deadline = time.monotonic() + 180
    while not list((work / "models").glob(".*.work/backup_main/state.json")):
        assert time.monotonic() < deadline and chief.poll() is None and worker.poll() is None, chief.stderr.read()
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    # The survivor must stop on its own, not hang: finish() fails the test past this bound.
    [(rc, out, err)] = finish([chief], timeout=WORKER_TIMEOUT + 90)
    worker.communicate()
    assert rc == 1, err[-3000:]
    assert "lost the other workers" in err and "Restart every worker with the same command" in err, err[-3000:]
    resumed = finish(start_workers(cache, work, *options, timeout=CALM_TIMEOUT))
    assert [rc for rc, _, _ in resumed] == [0, 0], resumed[0][2][-3000:] + resumed[1][2][-3000:]
    [log] = (work / "models").glob("*.csv")
    epochs = [line.split(",")[1] for line in log.read_text().splitlines()[1:]]
    assert epochs == ["0", "1", "2"], log.read_text()
