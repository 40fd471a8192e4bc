"""Stage 3 with captions: fine-tune an image + caption top, export two inputs, serve, predict (issue 6)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from stage3 import CAPTION_BRANCH, SIZE, tuned_workspace

from mlkit.bottlenecks.cache import open_cache
from mlkit.errors import MlkitError
from mlkit.images import load_image, resize_images
from mlkit.models.finetune import finetune, select_top

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    work, cache, run = tuned_workspace(tmp_path_factory.mktemp("captioned"), captions="both")
    result = finetune(cache, "best", work, freeze="all", epochs=2, batch=16, augment="hf", progress=False)
    return work, cache, run, result


def test_caption_network_starts_from_exactly_the_cached_tops_scores_on_training_rows(captioned):
    from mlkit.models.network import build_network, rebuild_backbone
    from mlkit.tuning.top import load_top

    work, cache_path, run, _ = captioned
    cache = open_cache(cache_path)
    backbone, spec = rebuild_backbone(cache.attrs)
    top, config = load_top(work, run)
    network = build_network(backbone, spec, cache.attrs, top, config.vocabulary)
    assert sorted(network.input) == ["caption", "pixels"]
    # Training rows: every caption word was seen when fitting the vocabulary, so the in-graph
    # vectoriser gives exactly the cached token ids (unseen words may differ, see mlkit.text).
    rows = cache.indices("train")[:8]
    images = [load_image(Path(cache.attrs["manifest_root"]) / p) for p in cache.read("image", rows)]
    pixels = np.stack([resize_images(image.astype("float32"), SIZE) for image in images])
    captions = np.array(cache.read("caption", rows), dtype=object)
    tokens = cache.read("tokens", rows)
    np.testing.assert_array_equal(network.get_layer("caption_vectorizer")(captions), tokens)
    cached = top.predict({"features": cache.read("features", rows), "tokens": tokens}, verbose=0)
    scores = network.predict({"pixels": pixels, "caption": captions}, verbose=0)
    np.testing.assert_allclose(scores, cached, atol=1e-5)
    blank = network.predict({"pixels": pixels, "caption": np.full(len(rows), "", object)}, verbose=0)
    assert np.abs(blank - scores).max() > 1e-4, "the captions reach the scores"


def test_caption_model_takes_image_and_caption_and_records_its_vocabulary(captioned):
    from mlkit.models.export import load_model

    work, cache_path, run, result = captioned
    assert "_all_lr14_b16_hf_" in result.run and result.run.endswith("text-lstm8")
    model, record = load_model(result.model_path)
    assert {name: (tensor.dtype, tuple(tensor.shape)) for name, tensor in model.input.items()} == {
        "image": ("uint8", (None, None, None, 3)), "caption": ("string", (None,))}
    assert sorted(model.output) == ["labels", "scores"]
    vocabulary = open_cache(cache_path).vocabulary
    assert record["inputs"] == ["image", "caption"]
    assert record["caption_input"]["vocabulary_size"] == vocabulary["size"]
    assert record["caption_input"]["max_len"] == vocabulary["max_len"]
    assert record["top_config"]["vocabulary"] == vocabulary
    layer = model.get_layer("network").get_layer("caption_vectorizer")
    assert layer.get_config()["vocabulary"] == vocabulary, "the full vocabulary travels inside the .keras file"


# One new process: the SavedModel first, with TensorFlow alone, then mlkit's .keras loader.
CAPTION_CHECK = """
import json, sys
import numpy as np
import tensorflow as tf
savedmodel, keras_path, inputs_path, out_path = sys.argv[1:]
inputs = json.load(open(inputs_path))
images = np.load(inputs_path + ".npy")
served = tf.saved_model.load(savedmodel)
out = served.serve(tf.constant(images), tf.constant(inputs["captions"]))
data = [open(p, "rb").read() for p in inputs["files"]]
files = served.serve_bytes(tf.constant(data), tf.constant(inputs["captions"]))
mlkit_imported = "mlkit" in sys.modules
from mlkit.models.export import load_model
model, _ = load_model(keras_path)
reloaded = model.predict_on_batch({"image": images, "caption": np.array(inputs["captions"], dtype=object)})
np.savez(out_path, served_scores=out["scores"].numpy(), served_labels=out["labels"].numpy(),
         file_scores=files["scores"].numpy(), file_labels=files["labels"].numpy(),
         scores=reloaded["scores"], labels=reloaded["labels"], mlkit_imported=np.array(mlkit_imported))
"""


def test_caption_model_round_trips_in_a_new_process_and_as_a_savedmodel_with_tensorflow_alone(captioned, tmp_path):
    from mlkit.models.export import export_model, load_model

    work, cache_path, _, result = captioned
    cache = open_cache(cache_path)
    rows = cache.indices("test")[:6]
    paths = [Path(cache.attrs["manifest_root"]) / p for p in cache.read("image", rows)]
    images = np.stack([load_image(p) for p in paths])
    # The test split's own captions, one blank, and words never seen in training (OOV in the graph).
    captions = list(cache.read("caption", rows))
    captions[1], captions[2] = "", "Zebras, ÜBER-café, naïve 🦓!"
    model, _ = load_model(result.model_path)
    here = model.predict_on_batch({"image": images, "caption": np.array(captions, dtype=object)})
    saved = export_model(result.model_path, ["savedmodel"])["savedmodel"]

    inputs_path = tmp_path / "inputs.json"
    inputs_path.write_text(json.dumps({"captions": captions, "files": [str(p) for p in paths]}))
    np.save(f"{inputs_path}.npy", images)
    script, out = tmp_path / "caption_check.py", tmp_path / "out.npz"
    script.write_text(CAPTION_CHECK)
    subprocess.run([sys.executable, str(script), str(saved), str(result.model_path), str(inputs_path), str(out)],
                   check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), cwd=tmp_path, timeout=300)
    there = np.load(out)
    np.testing.assert_array_equal(there["scores"], here["scores"])
    np.testing.assert_array_equal(there["labels"], here["labels"])
    assert not there["mlkit_imported"]
    np.testing.assert_allclose(there["served_scores"], here["scores"], atol=1e-6)
    np.testing.assert_array_equal(there["served_labels"], here["labels"])
    # PNG bytes decode to the same pixels in TensorFlow as in PIL.
    np.testing.assert_allclose(there["file_scores"], here["scores"], atol=1e-4)
    np.testing.assert_array_equal(there["file_labels"], here["labels"])


def test_caption_models_refuse_tflite_and_onnx_and_point_to_the_savedmodel(captioned):
    from mlkit.models.export import export_model

    _, _, _, result = captioned
    for fmt in ("tflite", "onnx"):
        with pytest.raises(MlkitError, match="takes captions.*--format savedmodel"):
            export_model(result.model_path, [fmt])


def test_predict_takes_one_caption_for_all_images_or_each_manifest_rows_own(captioned, tmp_path, capsys):
    import pandas as pd

    from mlkit.cli import main
    from mlkit.models.export import load_model

    work, cache_path, _, result = captioned
    cache = open_cache(cache_path)
    folder = tmp_path / "photos"
    folder.mkdir()
    sources = [Path(cache.attrs["manifest_root"]) / p for p in cache.read("image", cache.indices("test")[:3])]
    for source in sources:
        (folder / source.name).write_bytes(source.read_bytes())
    out_csv = tmp_path / "out.csv"
    assert main(["predict", str(result.model_path), str(folder), "--caption", "a red circle", "--top", "20",
                 "--csv", str(out_csv)]) == 0
    assert "caption: 'a red circle'" in capsys.readouterr().out
    table = pd.read_csv(out_csv, keep_default_na=False)
    assert list(table.caption) == ["a red circle"] * 3
    model, _ = load_model(result.model_path)
    images = np.stack([load_image(folder / source.name) for source in sources])
    expected = model.predict_on_batch({"image": images, "caption": np.array(["a red circle"] * 3, dtype=object)})
    printed = [dict(pair.rsplit(":", 1) for pair in ranked.split("|")) for ranked in table.ranked]
    names = open_cache(cache_path).label_names
    for row, scores in enumerate(printed):
        np.testing.assert_allclose([float(scores[name]) for name in names], expected["scores"][row], rtol=1e-5)

    manifest = Path(cache.attrs["manifest_path"])
    assert main(["predict", str(result.model_path), str(manifest), "--csv", str(out_csv), "--quiet"]) == 0
    table = pd.read_csv(out_csv, keep_default_na=False)
    truth = pd.read_csv(manifest, keep_default_na=False)
    assert list(table.caption) == list(truth.caption), "each manifest row is predicted with its own caption"

    assert main(["predict", str(result.model_path), str(folder)]) == 1
    assert "takes a caption with each image" in capsys.readouterr().err


def test_a_caption_only_top_is_refused_and_best_passes_over_it(captioned):
    import pandas as pd

    from mlkit.tuning.search import tune_top

    work, cache_path, run, _ = captioned
    only = tune_top(cache_path, work, layers=1, units=16, lr=0.01, batch=16, epochs=1, verbose=False, captions=True,
                    text_only=True, **CAPTION_BRANCH).run.iloc[0]
    assert only.endswith("only")
    with pytest.raises(MlkitError, match="caption-only .* no backbone to fine-tune"):
        finetune(cache_path, only, work, epochs=1, progress=False)
    cache = open_cache(cache_path)
    summary = work / "tuning" / "summary.csv"
    pd.DataFrame({"run": [only, run]}).to_csv(summary, index=False)
    assert select_top(work, cache, "best") == run
    pd.DataFrame({"run": [only]}).to_csv(summary, index=False)
    with pytest.raises(MlkitError, match="other than 1 caption-only run"):
        select_top(work, cache, "best")


def test_jit_is_refused_for_caption_tops_whose_network_holds_string_ops(captioned):
    work, cache_path, run, _ = captioned
    with pytest.raises(MlkitError, match="--jit .* no string ops"):
        finetune(cache_path, run, work, epochs=1, jit=True, progress=False)
