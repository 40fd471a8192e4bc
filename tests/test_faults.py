"""Faults a user can cause: foreign tops, concurrent runs, full disks, bad paths and files (issue 12).

Each test reproduces one defect a probe found; the next probe can add its cases here. Most share one
tiny workspace: two synthetic datasets (`a` and `b`), a cache of each (VGG16 with random weights at
32 px) and one top tuned on `a`'s cache.
"""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlkit.bottlenecks.cache import open_cache, partial_path
from mlkit.bottlenecks.extract import cache_features
from mlkit.cli import main
from mlkit.data.manifest import read_manifest
from mlkit.data.split import split_manifest
from mlkit.data.synth import synthesize
from mlkit.errors import ManifestError, MlkitError
from mlkit.files import DiskFullError
from mlkit.locks import LockedError
from mlkit.models.finetune import FinetuneConfig, finetune, finetune_run_name, select_top
from mlkit.tuning.search import LOCK, tune_top

SIZE = 32
CACHE = {"backbone": "vgg16", "weights": "none", "image_size": SIZE, "batch_size": 32, "progress": False}
TOP = {"layers": 1, "units": 8, "lr": 0.01, "batch": 16, "epochs": 1, "verbose": False}


def make_data(folder, seed, n=24):
    manifest = synthesize(folder, task="multilabel", n=n, size=SIZE, seed=seed)
    split_manifest(manifest, val=0.25, test=0.25, seed=0)
    return manifest


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """{"work", "a", "b" (cache paths), "run" (a top tuned on a), "manifest_a"}."""
    root = tmp_path_factory.mktemp("faults")
    work = root / "ws"
    manifest_a, manifest_b = make_data(root / "a", 0), make_data(root / "b", 1)
    a = cache_features(manifest_a, work, **CACHE).path
    b = cache_features(manifest_b, work, preprocess="zmuvs", **CACHE).path
    run = tune_top(a, work, **TOP).run.iloc[0]
    return {"work": work, "a": a, "b": b, "run": run, "manifest_a": manifest_a, "root": root}


def hidden_leftovers(folder):
    """Temporary files a failed write could leave behind."""
    return sorted(p.name for p in Path(folder).rglob("*") if p.name.startswith(".partial-") or p.name.endswith(".tmp"))


# -- 1. a top tuned on another cache ------------------------------------------------------------

def test_finetune_refuses_a_top_tuned_on_another_cache(workspace):
    with pytest.raises(MlkitError, match=r"not tuned on .*b_all_vgg16_zmuvs_avg\.h5.*dataset a vs b; preprocess inet "
                                         r"vs zmuvs"):
        finetune(workspace["b"], workspace["run"], workspace["work"], epochs=1, progress=False)
    assert not list((workspace["work"] / "models").glob("*.keras"))


def test_a_record_without_the_cache_identity_is_compared_by_file_name(workspace, tmp_path):
    work = tmp_path / "ws"
    shutil.copytree(workspace["work"] / "tuning", work / "tuning")
    record_path = work / "tuning" / f"{workspace['run']}.json"
    record = json.loads(record_path.read_text())
    del record["config"]["cache_identity"]  # as written before identities were kept
    record_path.write_text(json.dumps(record))
    with pytest.raises(MlkitError, match="predates cache identities"):
        finetune(workspace["b"], workspace["run"], work, epochs=1, progress=False)


def test_a_rebuilt_cache_of_the_same_name_retunes_its_runs_and_best_skips_the_stale_ones(workspace, tmp_path):
    from mlkit.tuning.records import Progress

    work = tmp_path / "ws"
    shutil.copytree(workspace["work"] / "tuning", work / "tuning")
    cache = open_cache(workspace["a"])
    cache.attrs = dict(cache.attrs, manifest_sha256="0" * 64)  # as if rows had been added and the cache rebuilt
    with pytest.raises(MlkitError, match="1 run.s. tuned on an earlier a_all_vgg16_inet_avg.h5"):
        select_top(work, cache, "best")
    assert Progress(work / "tuning").finished(workspace["run"], cache.identity) is None


# -- 2. the summary ranks every run in the folder -----------------------------------------------

def test_summary_ranks_every_grid_and_cache_and_best_picks_per_cache(workspace, tmp_path, capsys):
    work = tmp_path / "ws"
    shutil.copytree(workspace["work"] / "tuning", work / "tuning")
    tune_top(workspace["a"], work, **dict(TOP, units=16, verbose=True))
    printed = capsys.readouterr().out
    tune_top(workspace["b"], work, **TOP)
    summary = pd.read_csv(work / "tuning" / "summary.csv")
    assert len(summary) == 3 and list(summary["rank"]) == [1, 2, 3]
    assert summary.groupby("cache").size().to_dict() == {"a_all_vgg16_inet_avg.h5": 2, "b_all_vgg16_zmuvs_avg.h5": 1}
    b_run = summary.run[summary.cache == "b_all_vgg16_zmuvs_avg.h5"].iloc[0]
    assert select_top(work, open_cache(workspace["b"]), "best") == b_run
    a_runs = summary.run[summary.cache == "a_all_vgg16_inet_avg.h5"]
    assert select_top(work, open_cache(workspace["a"]), "best") == a_runs.iloc[0]
    # 8. Epochs count from 1: the printed best epoch, the summary's, and the record's (0-based) + 1.
    run = a_runs[a_runs.str.contains("1x16")].iloc[0]
    record = json.loads((work / "tuning" / f"{run}.json").read_text())["result"]
    best = record["best_epoch"] + 1
    assert f"at epoch {best} of {record['epochs']}" in printed
    assert int(summary.best_epoch[summary.run == run].iloc[0]) == best


# -- 3. one writer at a time --------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from mlkit.locks import hold_lock
    with hold_lock(sys.argv[1], "test"):
        print("held", flush=True)
        time.sleep(120)
""")


def hold_in_another_process(path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def refused_then_free_after_kill(path, action):
    """`action` is refused while another process holds `path`, and runs once that process is SIGKILLed."""
    holder = hold_in_another_process(path)
    try:
        with pytest.raises(LockedError) as refused:
            action()
        message = str(refused.value)
        assert f"process {holder.pid} on host {socket.gethostname()}" in message and str(path) in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert path.exists()  # a killed holder leaves its lock file; it must not block
    return action()


def test_a_second_cache_features_is_refused_and_a_killed_holders_lock_does_not_block(workspace, tmp_path):
    work = tmp_path / "ws"
    result = refused_then_free_after_kill(work / "bottlenecks" / "a_all_vgg16_inet_avg.lock",
                                          lambda: cache_features(workspace["manifest_a"], work, **CACHE))
    assert result.computed == result.rows and not (work / "bottlenecks" / "a_all_vgg16_inet_avg.lock").exists()


def test_a_second_tune_top_on_the_workspace_is_refused(workspace, tmp_path):
    work = tmp_path / "ws"
    summary = refused_then_free_after_kill(work / "tuning" / LOCK, lambda: tune_top(workspace["a"], work, **TOP))
    assert len(summary) == 1


def test_a_second_finetune_of_the_same_run_is_refused(workspace):
    run = finetune_run_name(workspace["run"], "all", FinetuneConfig(top=workspace["run"]).validate())
    holder = hold_in_another_process(workspace["work"] / "models" / f".{run}.lock")
    try:
        with pytest.raises(LockedError, match=f"fine-tuning run {run} is being written by process {holder.pid}"):
            finetune(workspace["a"], workspace["run"], workspace["work"], freeze="all", epochs=1, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert not (workspace["work"] / "models" / f".{run}.work").exists()


def mlkit_command(*args):
    return [sys.executable, "-m", "mlkit", *map(str, args)]


@pytest.mark.slow
def test_two_cache_features_processes_on_one_cache(workspace, tmp_path):
    work = tmp_path / "ws"
    command = mlkit_command("cache-features", workspace["manifest_a"], "--backbone", "vgg16", "--weights", "none",
                            "--image-size", SIZE, "--workdir", work, "--no-progress")
    lock = work / "bottlenecks" / "a_all_vgg16_inet_avg.lock"
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not lock.exists() and first.poll() is None:
        time.sleep(0.05)
    second = subprocess.run(command, capture_output=True, text=True, timeout=120)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 1 and f"process {first.pid} on host {socket.gethostname()}" in second.stderr
    assert "Traceback" not in second.stderr and str(lock) in second.stderr
    assert open_cache(work / "bottlenecks" / "a_all_vgg16_inet_avg.h5").attrs["complete"]


# -- 4. a full disk -----------------------------------------------------------------------------

def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_creating_the_cache_is_one_error_and_a_rerun_finishes(workspace, tmp_path, monkeypatch):
    from mlkit.bottlenecks.write import CacheWriter

    work = tmp_path / "ws"
    create = CacheWriter._create

    def create_then_fail(self, h5):
        create(self, h5)
        h5.flush()
        full_disk()

    monkeypatch.setattr(CacheWriter, "_create", create_then_fail)
    with pytest.raises(DiskFullError, match=r"no space left on .* while writing .*a_all_vgg16_inet_avg\.partial\.h5; "
                                            r"free at least \d+ MB and rerun: finished work is kept"):
        cache_features(workspace["manifest_a"], work, **CACHE)
    assert hidden_leftovers(work) == [] and not partial_path(work / "bottlenecks" / "a_all_vgg16_inet_avg.h5").exists()
    monkeypatch.undo()
    assert cache_features(workspace["manifest_a"], work, **CACHE).rows == 24


def test_too_little_room_for_the_cache_is_refused_before_writing(workspace, tmp_path, monkeypatch):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 1000))
    with pytest.raises(DiskFullError, match="free at least 1 MB"):
        cache_features(workspace["manifest_a"], tmp_path, **CACHE)
    assert not list((tmp_path / "bottlenecks").glob("*.h5*"))


def test_a_temporary_file_left_by_a_killed_run_is_removed_by_the_next(workspace, tmp_path):
    # SIGKILL skips every clean-up; a cache's temporary file is as large as the cache.
    folder = tmp_path / "bottlenecks"
    folder.mkdir()
    left = folder / ".partial-999999-a_all_vgg16_inet_avg.partial.h5"
    left.write_bytes(b"\x89HDF")
    other = folder / ".partial-999999-x-a_all_vgg16_inet_avg.partial.h5"  # cache x-a's: another lock guards it
    other.write_bytes(b"\x89HDF")
    assert cache_features(workspace["manifest_a"], tmp_path, **CACHE).rows == 24
    assert hidden_leftovers(tmp_path) == [other.name]


def test_a_full_disk_while_writing_the_summary_keeps_the_cache(workspace, tmp_path, monkeypatch):
    from mlkit import files

    real = files.write_text

    def fail_on_json(path, text):
        if str(path).endswith(".json"):
            with files.atomic_path(path) as tmp:
                Path(tmp).write_text(text[:10])
                full_disk()
        return real(path, text)

    monkeypatch.setattr("mlkit.bottlenecks.write.write_text", fail_on_json)
    with pytest.raises(DiskFullError, match=r"a_all_vgg16_inet_avg\.json"):
        cache_features(workspace["manifest_a"], tmp_path, **CACHE)
    assert hidden_leftovers(tmp_path) == [] and (tmp_path / "bottlenecks" / "a_all_vgg16_inet_avg.h5").exists()
    monkeypatch.undo()
    assert cache_features(workspace["manifest_a"], tmp_path, **CACHE).computed == 0


def test_a_full_disk_while_saving_a_trial_is_one_error_and_a_rerun_finishes(workspace, tmp_path, monkeypatch):
    import keras

    save = keras.Model.save_weights

    def save_then_fail(self, path, *args, **kwargs):
        save(self, path, *args, **kwargs)
        full_disk()

    monkeypatch.setattr(keras.Model, "save_weights", save_then_fail)
    with pytest.raises(MlkitError, match=r"no space left on .* while writing \S*/tuning/a_all\S*\.weights\.h5; "
                                         r"free at least"):
        tune_top(workspace["a"], tmp_path, **TOP)
    assert hidden_leftovers(tmp_path / "tuning") == [] and not list((tmp_path / "tuning").glob("*.weights.h5"))
    monkeypatch.undo()
    assert len(tune_top(workspace["a"], tmp_path, **TOP)) == 1


@pytest.fixture
def tmpfs(tmp_path):
    """A 600 KB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def resize(mount, size):
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)


@pytest.mark.slow
def test_cache_features_and_tune_top_on_a_real_full_disk(tmp_path, tmpfs):
    manifest = make_data(tmp_path / "big", 0, n=400)  # 400 x 512 float32 features: 800 KB
    work = tmpfs / "ws"
    cache = mlkit_command("cache-features", manifest, "--backbone", "vgg16", "--weights", "none", "--image-size", SIZE,
                          "--taps", "last", "--workdir", work, "--no-progress")
    full = subprocess.run(cache, capture_output=True, text=True, timeout=300)
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr[-2000:]
    assert "no space left on" in full.stderr and "finished work is kept" in full.stderr
    assert hidden_leftovers(work) == [] and not list(work.rglob("*.h5"))
    resize(tmpfs, "2m")
    assert subprocess.run(cache, capture_output=True, text=True, timeout=300).returncode == 0
    tune = mlkit_command("tune-top", work / "bottlenecks" / "big_all_vgg16_inet_avg.h5", "--units", "2048",
                         "--epochs", "1", "--workdir", work)
    full = subprocess.run(tune, capture_output=True, text=True, timeout=300)
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr[-2000:]
    assert "no space left on" in full.stderr and hidden_leftovers(work) == []
    resize(tmpfs, "32m")
    done = subprocess.run(tune, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(pd.read_csv(work / "tuning" / "summary.csv")) == 1


# -- 5. a symlink loop --------------------------------------------------------------------------

def test_a_symlink_loop_is_an_unreadable_image_on_every_run(tmp_path):
    manifest = make_data(tmp_path / "data", 0, n=12)
    images = sorted((tmp_path / "data" / "images").iterdir())
    looped = images[0]
    looped.unlink()
    os.symlink(looped.name + ".other", looped)
    os.symlink(looped.name, looped.with_name(looped.name + ".other"))
    for _ in range(2):
        result = cache_features(manifest, tmp_path, **CACHE)
        assert result.skipped == 1
    assert "cannot read file" in result.skipped_path.read_text()


# -- 6. plain mistakes get one line, not a traceback ---------------------------------------------

def one_line_error(capsys, argv):
    code = main([str(arg) for arg in argv])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_plain_mistakes_give_one_line_and_rc_1(workspace, tmp_path, capsys):
    folder = workspace["manifest_a"].parent
    assert "is a folder; give the manifest file such as" in one_line_error(capsys, ["data", "stats", folder])
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "is a file, not a folder" in one_line_error(
        capsys, ["cache-features", workspace["manifest_a"], "--weights", "none", "--workdir", afile])
    assert "is a file, not a folder" in one_line_error(
        capsys, ["finetune", workspace["a"], "--top", workspace["run"], "--workdir", afile])
    text = tmp_path / "notweights.h5"
    text.write_text("not weights\n")
    assert "not a vgg16 weights file" in one_line_error(
        capsys, ["cache-features", workspace["manifest_a"], "--backbone", "vgg16", "--weights", text,
                 "--image-size", SIZE, "--workdir", tmp_path])
    assert "not a vgg16 weights file" in one_line_error(
        capsys, ["finetune", workspace["a"], "--top", workspace["run"], "--weights", text,
                 "--workdir", workspace["work"]])


def test_another_architectures_weights_give_the_error_without_kerass_warnings(workspace, tmp_path, capsys):
    import keras

    other = tmp_path / "mobilenetv2.weights.h5"
    keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)).save_weights(other)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        err = one_line_error(capsys, ["cache-features", workspace["manifest_a"], "--backbone", "vgg16", "--weights",
                                      other, "--image-size", SIZE, "--workdir", tmp_path])
    assert "not a vgg16 weights file" in err
    assert not [w for w in caught if "keras" in w.filename], "Keras's per-layer warnings come before the error"


# -- 7. list labels in JSON Lines -----------------------------------------------------------------

def test_a_list_label_holding_the_separator_is_refused_not_split(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"image": "a.png", "labels": ["jazz", "rock|roll"]}\n{"image": "b.png", "labels": ["x", "y"]}\n')
    with pytest.raises(ManifestError, match=r"m\.jsonl line 1: labels item 'rock\|roll' contains '\|'"):
        read_manifest(path)
    path.write_text('{"image": "a.png", "labels": ["jazz", "rock and roll"]}\n{"image": "b.png", "labels": ["x"]}\n')
    assert read_manifest(path).rows.labels[0] == ("jazz", "rock and roll")


# -- 8. messages that said the wrong thing ----------------------------------------------------------

def test_a_latin1_manifest_names_the_row_line_and_encoding(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes("image,labels,caption\na.png,x,plain\nb.png,y,caf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(ManifestError, match=r"row 2 \(line 3\): byte 0xe9 is not UTF-8 .*Latin-1") as error:
        read_manifest(path)
    assert "commas" not in str(error.value)


@pytest.mark.parametrize("text, where", [
    ("image,labels\na.png,x\nb.png,y,extra\n", r"row 2 \(line 3\)"),
    ("image,labels\na.png,x,extra\nb.png,y\n", r"row 1 \(line 2\)"),  # pandas made column 1 the index here
])
def test_a_row_with_an_extra_field_is_called_that(tmp_path, text, where):
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(ManifestError, match=where + " has 3 fields where the header has 2") as error:
        read_manifest(path)
    assert "UTF-8" not in str(error.value)


def test_evaluate_explains_one_dimensional_scores(tmp_path, capsys):
    path = tmp_path / "scores.npz"
    np.savez(path, scores=np.array([0.2, 0.8, 0.6]), labels=np.array([0, 1, 1]))
    assert "scores has shape (3,); it needs one score per label or class" in one_line_error(capsys, ["evaluate", path])


def test_predict_exits_non_zero_when_nothing_was_labelled(tmp_path, capsys, monkeypatch):
    from mlkit.models import predict

    failed = [predict.Prediction(image=str(tmp_path / "nope.png"), error="missing file")]
    monkeypatch.setattr(predict, "predict", lambda *args, **kwargs: failed)
    monkeypatch.setattr(predict, "format_predictions", lambda results: "")
    assert main(["predict", "model.keras", str(tmp_path / "nope.png")]) == 1
    assert "nothing was labelled" in capsys.readouterr().err


# -- 9. TensorFlow's CUDA noise -------------------------------------------------------------------

def run_python(code, *args):
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=120)


def test_the_cli_parser_and_data_commands_do_not_load_tensorflow():
    done = run_python("import sys; from mlkit.cli import build_parser; build_parser(); "
                      "print(sorted({'keras', 'tensorflow'} & set(sys.modules)))")
    assert done.stdout.strip() == "[]", done.stderr


def test_the_cli_filters_tensorflows_cuda_noise_but_not_other_output(workspace):
    done = run_python("import sys, warnings; from mlkit.cli import main; "
                      "main(['data', 'stats', sys.argv[1], '--no-images']); "
                      "warnings.warn('mlkit test warning'); import tensorflow; tensorflow.constant(1) + 1",
                      workspace["manifest_a"])
    assert done.returncode == 0, done.stderr
    assert "cuda drivers" not in done.stderr and "cuInit" not in done.stderr and "absl::InitializeLog" not in done.stderr
    assert "oneDNN" not in done.stderr  # issue 24, item 17: on every TensorFlow command, whatever TF_CPP_MIN_LOG_LEVEL
    assert "mlkit test warning" in done.stderr


def test_the_cli_keeps_faiss_and_savedmodel_info_lines_out_of_a_run(tmp_path):
    # 17. Twelve faiss "Could not load library" lines on every audit; "Assets written to: ...partial..." in exports.
    done = run_python("import logging, sys; from mlkit.cli import main; main(['data', 'stats', sys.argv[1]]); "
                      "import faiss, tensorflow as tf; logging.getLogger('tensorflow').info('Assets written to: x'); "
                      "logging.getLogger('mlkit.x').info('mlkit progress line')",
                      synthesize(tmp_path / "d", task="multilabel", n=4, size=SIZE, seed=0))
    assert done.returncode == 0, done.stderr
    assert "Could not load library" not in done.stderr and "Loading faiss" not in done.stderr
    assert "Assets written to" not in done.stderr and "mlkit progress line" in done.stderr


# -- issue 24: data safety and security -----------------------------------------------------------

def test_a_killed_tune_tops_temporary_record_is_not_ranked(workspace, tmp_path):
    # 1. A SIGKILL between writing a record and renaming it leaves a whole, valid-looking `.partial-*` record.
    work = tmp_path / "ws"
    shutil.copytree(workspace["work"] / "tuning", work / "tuning")
    record = json.loads((work / "tuning" / f"{workspace['run']}.json").read_text())
    record["result"]["metrics"]["val_loss"] = -1.0  # it would rank first
    (work / "tuning" / f".partial-999999-{workspace['run']}.json").write_text(json.dumps(record))
    tune_top(workspace["a"], work, **TOP)
    summary = pd.read_csv(work / "tuning" / "summary.csv")
    assert list(summary.run) == [workspace["run"]]
    assert select_top(work, open_cache(workspace["a"]), "best") == workspace["run"]


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_kept(workspace, tmp_path):
    # 2. On a shared workspace a planted link would make the lock overwrite another user's file.
    work = tmp_path / "ws"
    (work / "tuning").mkdir(parents=True)
    target = tmp_path / "somefile"
    target.write_text("precious\n")
    (work / "tuning" / LOCK).symlink_to(target)
    with pytest.raises(MlkitError, match=r"\.tune-top\.lock .*is a symbolic link"):
        tune_top(workspace["a"], work, **TOP)
    assert target.read_text() == "precious\n"
    assert (work / "tuning" / LOCK).is_symlink()


def copied_cache(workspace, tmp_path):
    work = tmp_path / "ws"
    (work / "bottlenecks").mkdir(parents=True)
    path = work / "bottlenecks" / workspace["a"].name
    shutil.copy(workspace["a"], path)
    return work, path


def test_non_finite_features_are_refused_naming_the_rows(workspace, tmp_path):
    # 3. NaN features trained a top of NaN weights while tune-top exited 0.
    import h5py

    work, path = copied_cache(workspace, tmp_path)
    with h5py.File(path, "r+") as h5:
        h5["features"][5:10] = np.nan
        image = h5["image"][5].decode()
    with pytest.raises(MlkitError, match=rf"features of row 5 \({image}\).* are not finite"):
        tune_top(path, work, **TOP)
    with pytest.raises(MlkitError, match="not finite"):
        open_cache(path).load("train")


def test_a_label_edited_inside_the_cache_is_rewritten_from_the_manifest(workspace, tmp_path):
    # 3. An edited label kept the manifest hash the cache records, and the rerun called the cache up to date.
    import h5py

    work, path = copied_cache(workspace, tmp_path)
    with h5py.File(path, "r") as h5:
        labels = h5["labels"][...]
    with h5py.File(path, "r+") as h5:
        h5["labels"][0] = 1 - labels[0]
    cache_features(workspace["manifest_a"], work, **CACHE)
    with h5py.File(path, "r") as h5:
        np.testing.assert_array_equal(h5["labels"][...], labels)


def test_an_image_swapped_for_another_with_its_old_mtime_is_recomputed(workspace, tmp_path):
    # 4. `cp B A; touch -r A.orig A` kept size and mtime, and the rerun called the cache up to date.
    import h5py

    root = tmp_path / "data"
    shutil.copytree(workspace["root"] / "a", root)
    manifest = root / Path(workspace["manifest_a"]).name
    path = cache_features(manifest, tmp_path / "ws", **CACHE).path
    images = sorted((root / "images").glob("*.png"))
    a = images[0]
    row, b = next((i, p) for i, p in enumerate(images) if p.stat().st_size < a.stat().st_size)
    original = a.stat()
    # B padded to A's size (PNG readers ignore bytes after the end), given A's mtime: only the content differs.
    a.write_bytes(b.read_bytes().ljust(original.st_size, b"\0"))
    os.utime(a, ns=(original.st_atime_ns, original.st_mtime_ns))
    assert (a.stat().st_size, a.stat().st_mtime_ns) == (original.st_size, original.st_mtime_ns)
    with h5py.File(path, "r") as h5:
        before, b_features = h5["features"][0].copy(), h5["features"][row].copy()
    cache_features(manifest, tmp_path / "ws", **CACHE)
    with h5py.File(path, "r") as h5:
        np.testing.assert_allclose(h5["features"][0], b_features, rtol=1e-5, atol=1e-6)
        assert not np.allclose(h5["features"][0], before)


@pytest.fixture
def alarm():
    """Fails a test that would hang instead of hanging the suite."""
    def timeout(*_):
        raise TimeoutError("hung reading the manifest's files")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_fifos_devices_and_folders_in_a_manifest_are_unreadable_rows_not_hangs(tmp_path, alarm):
    # 5. A FIFO hung `data stats` and cache-features; /dev/zero was read without bound.
    from mlkit.data.stats import manifest_stats
    from mlkit.images import MAX_IMAGE_BYTES, read_bytes

    manifest = synthesize(tmp_path / "d", task="multilabel", n=8, size=SIZE, seed=0)
    os.mkfifo(tmp_path / "d" / "fifo.png")
    (tmp_path / "d" / "folder.png").mkdir()
    with open(manifest, "a") as handle:
        handle.write("fifo.png,red,\n/dev/zero,red,\nfolder.png,red,\n../../../../../../../etc/hostname,red,\n")
    stats = manifest_stats(manifest)
    assert stats["rows"] == 12
    result = cache_features(manifest, tmp_path / "ws", **CACHE)
    skipped = pd.read_csv(result.skipped_path).set_index("image")["reason"].to_dict()
    assert skipped["fifo.png"] == "cannot read file: not a regular file (a FIFO)"
    assert skipped["/dev/zero"] == "cannot read file: not a regular file (a device or socket)"
    assert skipped["folder.png"] == "cannot read file: not a regular file (a folder)"
    assert "../../../../../../../etc/hostname" in skipped  # read (a regular file), then not an image
    assert (result.computed, result.skipped) == (8, 4)
    big = tmp_path / "big.png"
    with open(big, "wb") as handle:
        handle.truncate(MAX_IMAGE_BYTES + 1)  # sparse: no disk used
    with pytest.raises(Exception, match="file too large"):
        read_bytes(big)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to inject a kill at a write")
def test_a_kill_during_the_caches_final_flush_keeps_every_row(workspace, tmp_path):
    # 6. `strace -e inject=pwrite64:signal=KILL:when=N`: a kill in the last writes left the partial cache unreadable.
    def command(work, *strace):
        return ["strace", "-f", "-qq", "-o", os.devnull, *strace, *mlkit_command(
            "cache-features", workspace["manifest_a"], "--backbone", "vgg16", "--weights", "none", "--image-size", SIZE,
            "--batch-size", 4, "--workdir", work, "--no-progress")]

    trace = tmp_path / "trace.txt"
    counted = command(tmp_path / "count", "-e", "trace=pwrite64")
    counted[counted.index(os.devnull)] = str(trace)
    subprocess.run(counted, capture_output=True, check=True, timeout=600)
    total = sum(1 for line in trace.read_text().splitlines() if "pwrite64(" in line)
    # HDF5 is the only writer using pwrite64: the last ones are the cache's final attributes and close.
    for back in (0, 1, 3):
        work = tmp_path / f"ws{back}"
        killed = subprocess.run(command(work, "-e", f"inject=pwrite64:signal=KILL:when={total - back}"),
                                capture_output=True, timeout=600)
        assert killed.returncode != 0
        result = cache_features(workspace["manifest_a"], work, **dict(CACHE, batch_size=4))
        # At most the last batch of 4 rows, when the kill came before its rows were marked done.
        assert result.computed <= 4 and result.computed + result.reused == 24, back


def dead_pid():
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_tune_top_sweeps_the_temporaries_killed_runs_left(workspace, tmp_path):
    # 7. `.partial-*` JSON, CSV and weights of killed runs stayed for ever; a live process's are kept.
    work = tmp_path / "ws"
    shutil.copytree(workspace["work"] / "tuning", work / "tuning")
    pid, run = dead_pid(), workspace["run"]
    left = [work / "tuning" / f".partial-{pid}-{name}" for name in (f"{run}.csv", f"{run}.weights.h5", "summary.csv")]
    (work / "tuning" / f".partial-{pid}-x.savedmodel").mkdir()
    for path in left:
        path.write_text("x")
    live = work / "tuning" / f".partial-{os.getpid()}-{run}.json"
    live.write_text("{}")
    tune_top(workspace["a"], work, **TOP)
    assert hidden_leftovers(work) == [live.name]


def test_export_and_finetune_sweep_only_their_own_dead_temporaries(tmp_path):
    # 7. Each stage sweeps its own: an export's names in models/, and its scratch folder in the system temp dir.
    import tempfile

    from mlkit.files import scratch_folder, sweep_temporaries

    pid = dead_pid()
    mine, other = tmp_path / f".partial-{pid}-m.savedmodel", tmp_path / f".partial-{pid}-n.savedmodel"
    mine.mkdir()
    other.mkdir()
    assert sweep_temporaries(tmp_path, {"m.savedmodel", "m.tflite"}) == 1
    assert not mine.exists() and other.exists()
    stale = Path(tempfile.gettempdir()) / f"mlkit-export-{pid}-abc"
    stale.mkdir()
    with scratch_folder("export") as folder:
        assert Path(folder).name.startswith(f"mlkit-export-{os.getpid()}-")
        assert not stale.exists()
    assert not Path(folder).exists()


# -- issue 24: errors a user meets ------------------------------------------------------------------

def noise_cache(folder, n=4, labels=None, size=32):
    """A cache of `n` random-noise images (nothing alike) with orthogonal features."""
    from PIL import Image

    from mlkit.bottlenecks.cache import write_cache

    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    names = []
    for i in range(n):
        names.append(f"images/{i}.png")
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / names[-1])
    labels = np.eye(n, 2, dtype="uint8") if labels is None else labels
    cache = folder / "bottlenecks" / "clean_all_x_inet_avg.h5"
    cache.parent.mkdir()
    write_cache(cache, features=np.eye(n, 8), labels=labels, split=[""] * n, image=names,
                attrs={"task": "multilabel", "label_names": ["a", "b"][: labels.shape[1]], "manifest_root": str(folder)})
    return cache


def test_the_audit_of_a_clean_cache_reports_no_findings(tmp_path, capsys):
    # 9. `ValueError: No objects to concatenate` on a clean, tiny or one-label cache.
    import mlkit

    result = mlkit.audit(noise_cache(tmp_path), workdir=tmp_path, folds=0, outlier_z=50)
    assert result.issues.empty and list(result.issues.columns) == list(findings_columns())
    assert main(["audit", str(noise_cache(tmp_path / "one", labels=np.ones((4, 1), "uint8"))), "--workdir", str(tmp_path),
                 "--folds", "0", "--outlier-z", "50"]) == 0
    assert "no findings" in capsys.readouterr().out


def findings_columns():
    from mlkit.auditing.findings import COLUMNS

    return COLUMNS


def test_audit_contact_sheets_refuse_decompression_bombs(tmp_path):
    # 10. A 20000 x 20000 PNG in a duplicate pair gave a traceback in the contact sheet.
    from PIL import Image

    from mlkit.auditing.report import THUMB, thumbnail

    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 1 bit a pixel: 50 MB to make, a few kB on disk
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        picture = thumbnail(bomb)
    assert picture.shape == (THUMB, THUMB, 3) and (picture == 170).all()  # the grey square of an unreadable image
    Image.new("RGBA", (40, 20), (255, 0, 0, 255)).save(tmp_path / "red.png")
    assert (thumbnail(tmp_path / "red.png")[THUMB // 2, THUMB // 2] == (255, 0, 0)).all()


def test_a_manifest_or_cache_whose_rows_all_share_one_label_is_refused(tmp_path):
    # 11. Every row with the same single label was accepted, and tune-top reported val_loss 0.
    from mlkit.bottlenecks.cache import write_cache

    manifest = synthesize(tmp_path / "d", task="multilabel", n=6, size=SIZE, seed=0)
    table = pd.read_csv(manifest)
    table.assign(labels="red").to_csv(manifest, index=False)
    with pytest.raises(ManifestError, match="every one of its 6 rows has the label red"):
        cache_features(manifest, tmp_path / "ws", **CACHE)
    cache = tmp_path / "bottlenecks" / "same_all_x_inet_avg.h5"
    cache.parent.mkdir()
    write_cache(cache, features=np.random.default_rng(0).normal(size=(8, 4)), labels=np.zeros(8, "int32"),
                split=["train"] * 6 + ["val"] * 2, attrs={"task": "multiclass", "label_names": ["cat", "dog"]})
    with pytest.raises(MlkitError, match="every training row has the label cat"):
        tune_top(cache, tmp_path, **TOP)


@pytest.mark.parametrize("row, what", [
    ({"image": "a.png", "labels": "x", "caption": "a\ud800b"}, r"the caption .* holds a lone surrogate \(U\+D800\)"),
    ({"image": "a\0.png", "labels": "x"}, "the image .* holds a NUL character at position 1"),
    ({"image": "a.png", "labels": "x\0y"}, "the labels .* holds a NUL character"),
])
def test_nul_characters_and_lone_surrogates_are_refused_naming_the_row(tmp_path, row, what):
    # 12. They reached h5py or the UTF-8 encoder and gave tracebacks.
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps({"image": "b.png", "labels": "z"}) + "\n")
    with pytest.raises(ManifestError, match=rf"m\.jsonl row 1 \(line 1\): {what}"):
        read_manifest(path)


def test_a_caption_over_the_csv_field_limit_is_read_and_row_errors_still_name_the_row(tmp_path):
    # 13. `_csv.Error: field larger than field limit (131072)` in from-csv and in row error messages.
    from mlkit.data.adapters import from_csv

    long = "word " * 40000  # 200,000 characters
    source = tmp_path / "train.csv"
    source.write_text(f'ImageID,Labels,Caption\n1.jpg,cat,"{long}"\n2.jpg,dog,short\n')
    manifest = from_csv(source, tmp_path / "manifest.csv", "ImageID", "Labels", caption_col="Caption")
    assert len(read_manifest(manifest).rows) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text(f'image,labels,caption\na.png,cat,"{long}"\nb.png,,x\n')
    with pytest.raises(ManifestError, match=r"bad\.csv row 2 \(line 3\): empty label set"):
        read_manifest(bad, task="multiclass")


def test_every_option_is_checked_before_any_work(workspace, tmp_path, capsys, monkeypatch):
    # 16. Each was refused late (after TensorFlow loaded, after training or labelling) or with a misleading line.
    import mlkit.bottlenecks.extract as extract
    import mlkit.models.finetune as finetune_module

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the options were checked")

    monkeypatch.setattr(extract, "read_manifest", no_work)
    monkeypatch.setattr(finetune_module, "open_cache", no_work)
    assert "--background: background 'bogus' is not a colour" in one_line_error(
        capsys, ["cache-features", workspace["manifest_a"], "--background", "bogus", "--workdir", tmp_path])
    assert "--decision bogus" in one_line_error(capsys, ["finetune", workspace["a"], "--decision", "bogus"])
    assert "--freeze 150%: a percentage of the backbone's layers is between 0% and 100%" in one_line_error(
        capsys, ["finetune", workspace["a"], "--freeze", "150%"])
    text = tmp_path / "scores.npz"
    text.write_text("not scores\n")
    assert "is not a .npz file (not a zip archive)" in one_line_error(capsys, ["evaluate", text])
    assert f"the folder {tmp_path / 'missing'} does not exist" in one_line_error(
        capsys, ["predict", "no-such-model", workspace["manifest_a"], "--csv", tmp_path / "missing" / "out.csv"])


@pytest.fixture
def read_only_copy(workspace, tmp_path):
    """A read-only bind mount of a copy of the workspace and dataset `a` (root only)."""
    source, mount = tmp_path / "src", tmp_path / "ro"
    shutil.copytree(workspace["root"] / "a", source / "a")
    cache_features(source / "a" / "manifest.csv", source / "ws", **CACHE)
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "--bind", str(source), str(mount)], capture_output=True).returncode:
        pytest.skip("a read-only bind mount needs root")
    subprocess.run(["mount", "-o", "remount,ro,bind", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_read_only_workspace_gives_one_line_and_a_finished_cache_still_reads(read_only_copy, capsys):
    # 14. PermissionError tracebacks; a finished cache in a read-only folder could not be read for its lock.
    manifest, work = read_only_copy / "a" / "manifest.csv", read_only_copy / "ws"
    assert main(["cache-features", str(manifest), "--backbone", "vgg16", "--weights", "none", "--image-size",
                 str(SIZE), "--batch-size", "32", "--workdir", str(work), "--no-progress"]) == 0
    capsys.readouterr()
    cache = work / "bottlenecks" / "a_all_vgg16_inet_avg.h5"
    assert "read-only" in one_line_error(capsys, ["tune-top", cache, "--workdir", work, "--units", "8", "--epochs", "1"])
    assert "read-only" in one_line_error(capsys, ["data", "split", manifest, "--resplit"])
    assert "read-only" in one_line_error(capsys, ["audit", cache, "--workdir", work, "--folds", "0"])


def test_a_folder_with_accents_names_a_cache_every_stage_takes(tmp_path):
    # 15. "dätä-sét" passed stage 1 and failed stage 2 ("use letters, digits") without saying how to fix it.
    manifest = make_data(tmp_path / "dätä-sét", 0, n=12)
    path = cache_features(manifest, tmp_path / "ws", **CACHE).path
    assert path.name == "data-set_all_vgg16_inet_avg.h5"
    assert len(tune_top(path, tmp_path / "ws", **TOP)) == 1


# -- issue 24: the first hour -----------------------------------------------------------------------

def test_predict_top_keeps_at_most_top_rows_and_the_legend_says_only_what_can_appear(tmp_path):
    # 20. --top 3 printed 7 rows for an image with 7 decided labels (the CSV too); `+` explained where none can be.
    from mlkit.models.predict import Prediction, _run, format_predictions, write_csv

    names = [f"l{i}" for i in range(9)]
    scores = np.linspace(0.9, 0.1, 9, dtype="float32")[None]

    def model(images, training=False):
        return {"scores": scores, "labels": (scores > 0.2).astype("int32")}  # 7 decided

    results = [Prediction("a.png")]
    _run(model, [(0, np.zeros((4, 4, 3)))], results, names, "multilabel", 3)
    assert [name for name, _ in results[0].ranked] == ["l0", "l1", "l2"] and len(results[0].decided) == 7
    table = format_predictions(results)
    assert sum(line.lstrip()[:1].isdigit() for line in table.splitlines()) == 3
    assert "decided, ranked lower: l3, l4, l5, l6" in table and "+ true label" not in table
    write_csv(results, tmp_path / "p.csv")
    row = pd.read_csv(tmp_path / "p.csv").iloc[0]
    assert row.to_string().count("l0:") == 1 and "l3:" not in row.to_string()
    results[0].truth = ["l0"]
    assert "+ true label" in format_predictions(results)


def test_predict_split_labels_only_that_splits_rows(workspace):
    # 20. Predicting on a manifest scored every split; there was no --split.
    from mlkit.models.predict import expand_inputs

    table = read_manifest(workspace["manifest_a"])
    test_rows = [str(p) for p, s in zip(table.image_paths(), table.splits()) if s == "test"]
    assert [image for image, _, _ in expand_inputs([workspace["manifest_a"]], "test")] == test_rows
    assert len(expand_inputs([workspace["manifest_a"]])) == len(table.rows)


def test_mlkit_help_numbers_the_stages_one_way(capsys):
    # 20. `mlkit --help` said "1." in one list and "stage 1:" in another.
    import re

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert not re.search(r"^\s+\S.*\s[123]\. ", text, re.M), text
    for stage, command in (("1", "cache-features"), ("2", "tune-top"), ("3", "finetune")):
        assert len(re.findall(rf"{command}\s+stage {stage}:", text)) == 2, command  # the summary and the list
    quickstart = (Path(__file__).resolve().parents[1] / "examples" / "quickstart.sh").read_text()
    assert "so far" not in quickstart and "Stages 1 and 2" in quickstart
