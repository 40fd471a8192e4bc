"""A grid killed mid-trial resumes where it stopped; a chief and two workers share one grid."""

import collections
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from test_tuning import make_cache

from mlkit.tuning.records import Progress

TIMEOUT = 150


def tune_command(cache, workdir, *extra):
    return [sys.executable, "-m", "mlkit", "tune-top", str(cache), "--workdir", str(workdir), *extra]


def counts(events, kind):
    return collections.Counter(event["run"] for event in events if event["event"] == kind)


def wait_for(predicate, process, what):
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"gave up waiting for {what} (exit code {process.poll()})")
        time.sleep(0.02)


@pytest.mark.slow
def test_a_killed_grid_resumes_and_runs_each_trial_once(tmp_path):
    from mlkit.tuning import tune_top

    cache = make_cache(tmp_path, rows=1500, shape=(32,))
    grid = {"layers": "1", "units": "16,32,64", "lr": "0.05", "batch": "8", "epochs": "6", "patience": "6"}
    flags = [part for key, value in grid.items() for part in (f"--{key}", value)]
    progress = Progress(tmp_path / "tuning")
    process = subprocess.Popen(tune_command(cache, tmp_path, *flags, "-q"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    wait_for(lambda: sum(counts(progress.events(), "start").values()) >= 2, process, "the second trial")
    time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=TIMEOUT)
    before = list(counts(progress.events(), "start"))
    killed = [run for run in before if progress.finished(run) is None]
    finished = [run for run in before if progress.finished(run) is not None]
    assert len(killed) == 1 and len(finished) == 1, "the kill should land inside the second trial"

    summary = tune_top(cache, tmp_path, verbose=False, **grid)
    events = progress.events()
    assert len(summary) == 3
    assert set(counts(events, "done").values()) == {1}
    started = counts(events, "start")
    assert started[killed[0]] == 2 and all(n == 1 for run, n in started.items() if run != killed[0])
    assert counts(events, "skip") == {finished[0]: 1}


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_chief_and_two_workers_finish_a_grid_without_repeats(tmp_path):
    cache = make_cache(tmp_path)
    grid = ["--layers", "1,2", "--units", "8,16", "--epochs", "2", "--oracle", f"127.0.0.1:{free_port()}"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    roles = (["--chief"], ["--worker", "0"], ["--worker", "1"])
    processes = [subprocess.Popen(tune_command(cache, tmp_path, *grid, *role), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, env=env, text=True) for role in roles]
    try:
        outputs = [process.communicate(timeout=TIMEOUT)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    events = Progress(tmp_path / "tuning").events()
    assert len(counts(events, "done")) == 4 and set(counts(events, "start").values()) == {1}
    assert {event["tuner"] for event in events} == {"tuner0", "tuner1"}
    assert (tmp_path / "tuning" / "summary.csv").read_text().count("\n") == 5
