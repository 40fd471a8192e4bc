"""Stage 3 end to end: fine-tune, decide, export, reload in a new process, serve, predict."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from stage3 import SIZE, tuned_workspace

from mlkit.bottlenecks.cache import open_cache
from mlkit.errors import MlkitError
from mlkit.images import load_image, resize_images
from mlkit.models.finetune import finetune, read_log
from mlkit.models.network import walk_layers

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def multilabel(tmp_path_factory):
    work, cache, run = tuned_workspace(tmp_path_factory.mktemp("multilabel"))
    result = finetune(cache, "best", work, freeze="all", epochs=2, batch=16, augment="hf", progress=False)
    return work, cache, run, result


def test_network_starts_from_exactly_the_cached_tops_scores(multilabel):
    from mlkit.models.network import build_network, rebuild_backbone
    from mlkit.tuning.top import load_top

    work, cache_path, run, _ = multilabel
    cache = open_cache(cache_path)
    backbone, spec = rebuild_backbone(cache.attrs)
    top, _ = load_top(work, run)
    network = build_network(backbone, spec, cache.attrs, top)
    rows = cache.indices("val")[:8]
    images = [load_image(Path(cache.attrs["manifest_root"]) / p) for p in cache.read("image", rows)]
    pixels = np.stack([resize_images(image.astype("float32"), SIZE) for image in images])
    features = cache.read("features", rows)
    np.testing.assert_allclose(network.predict(pixels, verbose=0), top.predict(features, verbose=0), atol=1e-5)


def test_finetune_writes_model_record_and_log_under_the_extended_run_name(multilabel):
    work, cache, run, result = multilabel
    assert result.run == f"{run}_all_lr14_b16_hf"
    for path in (result.model_path, result.json_path, result.csv_path):
        assert path.exists() and path.parent == work / "models"
    assert not list((work / "models").glob(".*")), "work files are removed after a finished run"
    record = json.loads(result.json_path.read_text())
    assert record["status"] == "complete" and record["task"] == "multilabel"
    assert record["label_names"] == open_cache(cache).label_names
    assert record["decision"]["spec"] == "cardinality" and record["decision"]["threshold"] is not None
    assert record["decision"]["fit"], "the rule was fitted on validation scores"
    assert record["test"]["fitted_on"] == "validation scores" and record["baseline"]["fitted_on"] == "validation scores"
    assert set(record["headline"]) == {"metric", "finetuned", "cached_top"}
    assert [row["epoch"] for row in read_log(result.csv_path)] == ["0", "1"]


def test_a_finished_finetune_is_not_redone(multilabel, monkeypatch):
    work, cache, _, result = multilabel
    monkeypatch.setattr("mlkit.models.finetune._Job.train", lambda *a: pytest.fail("trained again"))
    again = finetune(cache, "best", work, freeze="all", epochs=2, batch=16, augment="fh", progress=False)
    assert again.run == result.run and again.report == result.report


EXPORT_CHECK = """
import json, sys
import numpy as np
mode, model_path, images_path, out_path = sys.argv[1:]
images = np.load(images_path)
if mode == "keras":
    from mlkit.models.export import load_model
    model, _ = load_model(model_path)
    out = model.predict_on_batch(images)
    files = {}
else:
    import tensorflow as tf
    served = tf.saved_model.load(model_path)
    out = served.serve(tf.constant(images))
    data = [open(p, "rb").read() for p in json.load(open(images_path + ".files.json"))]
    files = {k: v.numpy() for k, v in served.serve_bytes(tf.constant(data)).items()}
    assert "mlkit" not in sys.modules
np.savez(out_path, scores=np.asarray(out["scores"]), labels=np.asarray(out["labels"]),
         file_scores=files.get("scores", np.zeros(0)), file_labels=files.get("labels", np.zeros(0)),
         mlkit_imported=np.array("mlkit" in sys.modules))
"""


def run_check(tmp_path, mode, model_path, images, files=()):
    images_path = tmp_path / f"{mode}_images.npy"
    np.save(images_path, images)
    Path(f"{images_path}.files.json").write_text(json.dumps([str(f) for f in files]))
    out = tmp_path / f"{mode}_out.npz"
    script = tmp_path / "check.py"
    script.write_text(EXPORT_CHECK)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run([sys.executable, str(script), mode, str(model_path), str(images_path), str(out)], check=True,
                   env=env, cwd=tmp_path, timeout=300)
    return np.load(out)


def test_exported_model_round_trips_in_a_new_process_and_as_a_savedmodel_with_tensorflow_alone(multilabel, tmp_path):
    from mlkit.models.export import export_model, load_model

    work, cache_path, _, result = multilabel
    cache = open_cache(cache_path)
    paths = [Path(cache.attrs["manifest_root"]) / p for p in cache.read("image", cache.indices("test")[:6])]
    images = np.stack([load_image(p) for p in paths])
    model, record = load_model(result.model_path)
    from mlkit.layers import FeatureBounds

    bounds = [layer for layer in walk_layers(model) if isinstance(layer, FeatureBounds)]
    assert len(bounds) == 1 and np.isfinite(np.asarray(bounds[0].high)).all(), "the top's bounds are in the export"
    here = model.predict_on_batch(images)
    from mlkit.evaluation.decisions import rule_from_dict

    np.testing.assert_array_equal(here["labels"], rule_from_dict(record["decision"]).apply(here["scores"]))

    there = run_check(tmp_path, "keras", result.model_path, images)
    np.testing.assert_array_equal(there["scores"], here["scores"])
    np.testing.assert_array_equal(there["labels"], here["labels"])

    saved = export_model(result.model_path, ["savedmodel"])["savedmodel"]
    served = run_check(tmp_path, "savedmodel", saved, images, files=paths)
    assert not served["mlkit_imported"]
    np.testing.assert_allclose(served["scores"], here["scores"], atol=1e-6)
    np.testing.assert_array_equal(served["labels"], here["labels"])
    # PNG bytes decode to the same pixels in TensorFlow as in PIL.
    np.testing.assert_allclose(served["file_scores"], here["scores"], atol=1e-4)  # one image per call
    np.testing.assert_array_equal(served["file_labels"], here["labels"])


def test_larger_images_are_resized_inside_the_model_as_the_cache_did(multilabel):
    from mlkit.models.export import load_model

    _, _, _, result = multilabel
    model, _ = load_model(result.model_path)
    big = np.random.default_rng(0).integers(0, 256, (2, 77, 51, 3)).astype("uint8")
    small = np.asarray(resize_images(big.astype("float32"), SIZE))
    network = model.get_layer("network")
    np.testing.assert_allclose(model.predict_on_batch(big)["scores"], network.predict_on_batch(small), atol=1e-6)
    # Called directly, as a Keras user would: the top's dropout stays off (Resizing's training=True default
    # used to reach it, and the scores changed from call to call). Run eagerly, Keras's Resizing rounds an
    # integer input's resized pixels to integers, so the direct call is compared with itself, not predict.
    assert any(isinstance(layer, keras.layers.Dropout) and layer.rate > 0 for layer in walk_layers(network))
    direct = np.asarray(model(big, training=False)["scores"])
    for _ in range(2):
        np.testing.assert_array_equal(np.asarray(model(big)["scores"]), direct)


def test_tflite_export_matches_the_keras_model_at_its_own_size(multilabel):
    import tensorflow as tf

    from mlkit.models.export import export_model, load_model

    _, _, _, result = multilabel
    path = export_model(result.model_path, ["tflite"])["tflite"]
    model, _ = load_model(result.model_path)
    image = np.random.default_rng(1).integers(0, 256, (1, SIZE, SIZE, 3)).astype("uint8")
    interpreter = tf.lite.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner("serve")
    out = runner(images=image)
    expected = model.predict_on_batch(image)
    np.testing.assert_allclose(out["scores"], expected["scores"], atol=1e-4)


def test_onnx_export_matches_when_tf2onnx_is_installed(multilabel):
    pytest.importorskip("tf2onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    from mlkit.models.export import export_model, load_model

    _, _, _, result = multilabel
    path = export_model(result.model_path, ["onnx"])["onnx"]
    model, _ = load_model(result.model_path)
    image = np.random.default_rng(2).integers(0, 256, (3, SIZE, SIZE, 3)).astype("uint8")
    session = onnxruntime.InferenceSession(str(path))
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, {session.get_inputs()[0].name: image})))
    expected = model.predict_on_batch(image)
    scores = next(v for k, v in out.items() if v.dtype == np.float32)
    np.testing.assert_allclose(scores, expected["scores"], atol=1e-4)


def test_predict_ranks_labels_marks_decisions_and_reports_a_corrupt_image(multilabel, tmp_path, capsys):
    from mlkit.cli import main

    work, cache_path, _, result = multilabel
    cache = open_cache(cache_path)
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in cache.read("image", cache.indices("test")[:3]):
        (folder / Path(p).name).write_bytes((Path(cache.attrs["manifest_root"]) / p).read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out_csv = tmp_path / "out.csv"
    assert main(["predict", str(result.model_path), str(folder), "--top", "3", "--csv", str(out_csv)]) == 0
    printed = capsys.readouterr().out
    assert "broken.png" in printed and "unreadable" in printed
    assert "3 images labelled, 1 unreadable" in printed
    import pandas as pd

    table = pd.read_csv(out_csv, keep_default_na=False)
    assert len(table) == 4
    broken = table[table.image.str.endswith("broken.png")].iloc[0]
    assert broken.error and not broken.labels
    good = table[table.error == ""]
    assert all(len(r.split("|")) >= 3 for r in good.ranked)

    manifest = Path(cache.attrs["manifest_path"])
    assert main(["predict", str(result.model_path), str(manifest), "--top", "2"]) == 0
    assert "+" in capsys.readouterr().out, "true labels from a manifest are marked"


def test_an_image_only_model_ignores_a_caption_with_a_warning(multilabel, caplog):
    from mlkit.models.predict import predict

    _, cache_path, _, result = multilabel
    cache = open_cache(cache_path)
    image = str(Path(cache.attrs["manifest_root"]) / cache.read("image", cache.indices("test")[:1])[0])
    plain = predict(result.model_path, [image])
    with caplog.at_level("WARNING", logger="mlkit.models.predict"):
        captioned = predict(result.model_path, [image], caption="a red circle")
    assert "takes no caption: --caption is ignored" in caplog.text
    assert captioned[0].ranked == plain[0].ranked and captioned[0].caption is None


def test_a_top_from_another_cache_or_other_weights_is_refused(multilabel, tmp_path):
    import h5py

    work, cache_path, run, _ = multilabel
    copy = tmp_path / cache_path.name
    copy.write_bytes(cache_path.read_bytes())
    with h5py.File(copy, "r+") as h5:
        h5.attrs["weights_sha256"] = "0" * 64
    with pytest.raises(MlkitError, match="not the network the cache was made with"):
        finetune(copy, run, work, epochs=1, progress=False)
    with pytest.raises(MlkitError, match="needs .*summary.csv"):
        finetune(cache_path, "best", tmp_path, epochs=1, progress=False)


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_multiclass_and_regression_fine_tune_end_to_end(tmp_path, task):
    from mlkit.models.export import load_model

    work, cache_path, _, = tuned_workspace(tmp_path, task=task)[:3]
    freeze = "block_16" if task == "multiclass" else "all"
    result = finetune(cache_path, "best", work, freeze=freeze, epochs=1, batch=16, augment="none", progress=False)
    record = json.loads(result.json_path.read_text())
    model, _ = load_model(result.model_path)
    cache = open_cache(cache_path)
    rows = cache.indices("test")
    images = np.stack([load_image(Path(cache.attrs["manifest_root"]) / p) for p in cache.read("image", rows)])
    out = model.predict_on_batch(images)
    truth = cache.read("labels", rows)
    if task == "multiclass":
        assert record["decision"]["spec"] == "argmax"
        np.testing.assert_array_equal(out["labels"].argmax(1), out["scores"].argmax(1))
        assert record["test"]["accuracy"] == pytest.approx(np.mean(out["scores"].argmax(1) == truth), abs=1e-6)
    else:
        # Reported in original units (object counts), computed here from the exported model's output.
        mae = np.abs(out["scores"] - truth.reshape(out["scores"].shape)).mean()
        assert record["test"]["mae"] == pytest.approx(mae, rel=1e-4)
        assert out["scores"].min() > truth.min() - 10 * (truth.max() - truth.min() + 1)


def test_mixed_precision_xla_and_mirrored_strategy_run_on_cpu(multilabel):
    work, cache, _, _ = multilabel
    result = finetune(cache, "best", work, freeze="all", epochs=1, batch=16, augment="f", mixed_precision=True,
                      jit=True, strategy="mirrored", progress=False, overwrite=True)
    import keras

    assert keras.config.dtype_policy().name == "float32", "the global policy is restored"
    from mlkit.models.export import load_model

    model, _ = load_model(result.model_path)
    assert model.get_layer("network").get_layer("scores").compute_dtype == "float32"
    assert all(w.dtype == "float32" for w in model.weights)


def test_a_killed_finetune_resumes_from_its_last_epoch(multilabel, tmp_path):
    work, cache, _, _ = multilabel
    args = [sys.executable, "-m", "mlkit", "finetune", str(cache), "--workdir", str(work), "--freeze", "all",
            "--epochs", "4", "--batch", "16", "--augment", "w", "--patience", "10", "--no-progress"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = None
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        logs = list((work / "models").glob(".*_w.work/main.csv"))
        if logs and len(read_log(logs[0])) >= 2:
            log = logs[0]
            break
        time.sleep(0.2)
    assert log is not None, "the run did not reach its second epoch"
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(read_log(log))
    assert done_before < 4
    finished = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    csv_path = next((work / "models").glob("*_w.csv"))
    assert [row["epoch"] for row in read_log(csv_path)] == ["0", "1", "2", "3"]
    assert "Epoch 1/" not in finished.stdout, "the resumed run started again from epoch 1"


def test_quick_demo_runs_every_stage_and_prints_its_metrics(tmp_path, capsys):
    from mlkit.cli import main

    assert main(["demo", "--quick", "--workdir", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    for stage in ("data:", "stage 1 of 3", "stage 2 of 3", "stage 3 of 3", "export", "label three", "summary"):
        assert f"== {stage}" in printed
    assert "random weights (--quick: nothing is downloaded)" in printed
    assert "with the cached top alone" in printed and "fine-tuned" in printed and "(* decided" in printed
    assert "+ true label" not in printed  # images given by path have no known labels
    assert list((tmp_path / "demo" / "models").glob("*.savedmodel/saved_model.pb"))
    assert len(list((tmp_path / "demo" / "models").glob("*.keras"))) == 1


def test_a_resumed_finetune_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    # Issue 24, item 8: the shuffle order restarted on resume, so a resumed run repeated epoch 1's order.
    import shutil

    import mlkit.models.finetune as finetune_module

    work, cache, _ = tuned_workspace(tmp_path / "t", n=48)
    settings = {"freeze": "all", "epochs": 3, "batch": 8, "augment": "none", "patience": 10, "progress": False,
                "seed": 3}
    other = tmp_path / "ws2"
    shutil.copytree(work, other)
    whole = finetune(cache, "best", work, **settings)
    real = finetune_module.epoch_order

    class Killed(Exception):
        pass

    def killed_at_epoch_2(rows, offset=0):
        order = real(rows, offset)
        begin = order.on_epoch_begin

        def on_epoch_begin(epoch, logs=None):
            if epoch == 2:
                raise Killed
            begin(epoch, logs)

        order.on_epoch_begin = on_epoch_begin
        return order

    monkeypatch.setattr(finetune_module, "epoch_order", killed_at_epoch_2)
    with pytest.raises(Killed):
        finetune(cache, "best", other, **settings)
    monkeypatch.setattr(finetune_module, "epoch_order", real)
    resumed = finetune(cache, "best", other, **settings)
    logs = [read_log(run / "models" / f"{result.run}.csv") for run, result in ((work, whole), (other, resumed))]
    assert [row["epoch"] for row in logs[1]] == ["0", "1", "2"]
    for first, second in zip(*logs):
        assert float(first["loss"]) == pytest.approx(float(second["loss"]), rel=1e-5)
    numbers = [{k: v for k, v in result.report.items() if isinstance(v, float)} for result in (whole, resumed)]
    assert numbers[0] and numbers[1] == pytest.approx(numbers[0], rel=1e-5)
