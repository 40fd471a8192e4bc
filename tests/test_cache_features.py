import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pandas as pd
import pytest

from mlkit.backbones import build_backbone, feature_extractor, get_backbone
from mlkit.bottlenecks import cache as cache_module
from mlkit.bottlenecks import cache_features, open_cache
from mlkit.bottlenecks.cache import partial_path, read_rows
from mlkit.cli import main
from mlkit.data import read_manifest, split_manifest, synthesize
from mlkit.errors import CacheError
from mlkit.images import load_image, resize_images

SETTINGS = {"backbone": "mobilenetv2", "weights": "none", "image_size": 32, "pooling": "avg", "progress": False}


@pytest.fixture
def manifest(tmp_path):
    path = synthesize(tmp_path / "synth", task="multilabel", n=24, size=40, seed=3)
    split_manifest(path, val=0.2, test=0.2, seed=0)
    return path


def test_cache_holds_every_row_with_features_equal_to_a_direct_forward_pass(manifest, tmp_path):
    result = cache_features(manifest, tmp_path / "ws", batch_size=5, **SETTINGS)
    table = read_manifest(manifest)
    cache = open_cache(result.path)
    assert result.path.name == "synth_all_mobilenetv2_inet_avg.h5"
    assert (result.rows, result.computed, result.skipped) == (24, 24, 0)
    assert cache.task == "multilabel" and cache.label_names == table.label_names
    np.testing.assert_array_equal(cache.read("labels"), table.label_array())
    assert list(cache.read("split")) == list(table.splits())
    assert cache.attrs["image_size"] == 32 and cache.attrs["complete"]

    model, _ = build_backbone("mobilenetv2", weights="none", image_size=32, pooling="avg")
    extractor = feature_extractor(model, get_backbone("mobilenetv2"), "inet", 32)
    pixels = np.stack([np.asarray(resize_images(load_image(p).astype("float32"), 32)) for p in table.image_paths()[:6]])
    np.testing.assert_allclose(cache.read("features", range(6)), extractor.predict(pixels, verbose=0), rtol=1e-4, atol=1e-16)
    assert result.summary_path.exists() and not partial_path(result.path).exists()


def test_a_rerun_reuses_the_rows_of_identical_image_files(manifest, tmp_path):
    """Two rows with the same picture (one icon shipped by two themes) reuse one earlier row: h5py reads
    rows in increasing order, each once, so the rerun used to fail with "Indexing elements must be in
    increasing order"."""
    from PIL import Image

    paths = read_manifest(manifest).image_paths()
    paths[5].write_bytes(paths[3].read_bytes())
    cache_features(manifest, tmp_path / "ws", **SETTINGS)
    Image.new("RGB", (40, 40), (0, 200, 0)).save(paths[7])
    again = cache_features(manifest, tmp_path / "ws", **SETTINGS)
    assert (again.computed, again.reused) == (1, 23)
    cache = open_cache(again.path)
    for name in ("features", *(f"taps/{layer}" for layer in cache.taps)):
        np.testing.assert_array_equal(cache.read(name)[5], cache.read(name)[3], err_msg=name)


def test_rerun_recomputes_only_the_image_that_changed(manifest, tmp_path):
    first = cache_features(manifest, tmp_path / "ws", **SETTINGS)
    before = open_cache(first.path).read("features")
    changed = read_manifest(manifest).image_paths()[7]
    from PIL import Image

    Image.new("RGB", (40, 40), (0, 200, 0)).save(changed)
    again = cache_features(manifest, tmp_path / "ws", **SETTINGS)
    after = open_cache(again.path).read("features")
    assert (again.computed, again.reused) == (1, 23)
    assert not np.array_equal(after[7], before[7])
    np.testing.assert_array_equal(np.delete(after, 7, axis=0), np.delete(before, 7, axis=0))
    unchanged = cache_features(manifest, tmp_path / "ws", **SETTINGS)
    assert unchanged.computed == 0


def test_unreadable_images_are_reported_with_their_reason_and_keep_their_labels(manifest, tmp_path):
    paths = read_manifest(manifest).image_paths()
    paths[0].write_bytes(b"")
    paths[1].write_bytes(paths[1].read_bytes()[:60])
    paths[2].write_bytes(b"not an image at all")
    paths[3].unlink()
    result = cache_features(manifest, tmp_path / "ws", **SETTINGS)
    skipped = pd.read_csv(result.skipped_path)
    assert list(skipped["row"]) == [1, 2, 3, 4]
    reasons = " ".join(skipped["reason"])
    for word in ("empty", "truncated", "missing file"):
        assert word in reasons
    cache = open_cache(result.path)
    assert result.skipped == 4 and len(cache.indices()) == 20
    np.testing.assert_array_equal(cache.read("labels")[:4], read_manifest(manifest).label_array()[:4])

    with pytest.raises(CacheError, match="--strict: 4 image"):
        cache_features(manifest, tmp_path / "strict", strict=True, **SETTINGS)
    assert partial_path(tmp_path / "strict" / "bottlenecks" / result.path.name).exists()


def test_same_name_with_other_settings_is_refused_unless_overwritten(manifest, tmp_path):
    cache_features(manifest, tmp_path / "ws", **SETTINGS)
    with pytest.raises(CacheError, match="image_size 32 -> 48"):
        cache_features(manifest, tmp_path / "ws", **dict(SETTINGS, image_size=48))
    result = cache_features(manifest, tmp_path / "ws", overwrite=True, **dict(SETTINGS, image_size=48))
    assert open_cache(result.path).attrs["image_size"] == 48


def test_float16_features_round_trip_in_half_the_bytes_and_are_part_of_the_cache_identity(manifest, tmp_path):
    # A random-weight vgg16 gives features in float16's range; a random mobilenetv2's (1e-12) are not.
    common = dict(SETTINGS, backbone="vgg16", augment_copies=1, batch_size=8)
    full = cache_features(manifest, tmp_path / "full", **common)
    half = cache_features(manifest, tmp_path / "half", dtype="float16", **common)
    with h5py.File(half.path, "r") as h5, h5py.File(full.path, "r") as reference:
        assert h5["features"].dtype == np.float16 and h5["augmented"].dtype == np.float16
        assert h5.attrs["dtype"] == "float16" and reference.attrs["dtype"] == "float32"
        np.testing.assert_allclose(h5["features"][...], reference["features"][...], rtol=1e-3, atol=1e-6)
        assert h5["features"].id.get_storage_size() * 2 == reference["features"].id.get_storage_size()
    assert open_cache(half.path).load("train", augmented=True)[0].dtype == np.float32
    assert cache_features(manifest, tmp_path / "half", dtype="float16", **common).computed == 0
    with pytest.raises(CacheError, match="dtype 'float16' -> 'float32'"):
        cache_features(manifest, tmp_path / "half", **common)
    with pytest.raises(CacheError, match="do not fit float16 .*use --dtype float32"):
        cache_features(manifest, tmp_path / "tiny", dtype="float16", **SETTINGS)


def test_augmented_views_are_cached_for_training_rows_and_reproducible(manifest, tmp_path):
    result = cache_features(manifest, tmp_path / "a", augment_copies=2, preprocess="zmuv", **SETTINGS)
    cache = open_cache(result.path)
    train = cache.indices("train")
    x, y = cache.load("train", augmented=True)
    assert x.shape == (3 * len(train), 1280) and len(y) == len(x)
    views = cache.read("augmented", train)
    assert not np.array_equal(views[:, 0], views[:, 1])
    assert len(cache.attrs["zmuv_mean"]) == 3
    again = open_cache(cache_features(manifest, tmp_path / "b", augment_copies=2, preprocess="zmuv", **SETTINGS).path)
    np.testing.assert_allclose(again.read("augmented", train), views, rtol=1e-5, atol=1e-16)


KILLABLE = textwrap.dedent(
    """
    import sys
    from mlkit.bottlenecks import cache_features
    def on_batch(done, total):
        print("BATCH", done, flush=True)
    cache_features(sys.argv[1], sys.argv[2], backbone="mobilenetv2", weights="none", image_size=32,
                   pooling="avg", batch_size=3, progress=False, on_batch=on_batch)
    """
)


def run_and_kill(manifest, workdir, after_batches=None, after_seconds=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen([sys.executable, "-c", KILLABLE, str(manifest), str(workdir)], stdout=subprocess.PIPE, text=True, env=env)
    if after_batches is not None:
        seen = 0
        while seen < after_batches:
            line = process.stdout.readline()
            assert line, "the run ended before it could be killed"
            seen += line.startswith("BATCH")
    else:
        time.sleep(after_seconds)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_same_features(manifest, tmp_path):
    reference = open_cache(cache_features(manifest, tmp_path / "reference", **SETTINGS).path).read("features")
    run_and_kill(manifest, tmp_path / "killed", after_batches=3)
    partial = partial_path(tmp_path / "killed" / "bottlenecks" / "synth_all_mobilenetv2_inet_avg.h5")
    with h5py.File(partial, "r") as h5:
        done_before = int(h5["done"][...].sum())
    assert 0 < done_before < 24
    assert not partial.with_name("synth_all_mobilenetv2_inet_avg.h5").exists()
    resumed = cache_features(manifest, tmp_path / "killed", **SETTINGS)
    assert resumed.reused == done_before and resumed.computed == 24 - done_before
    np.testing.assert_allclose(open_cache(resumed.path).read("features"), reference, rtol=1e-4, atol=1e-16)

    run_and_kill(manifest, tmp_path / "early", after_seconds=1.0)  # most likely while starting up
    early = cache_features(manifest, tmp_path / "early", **SETTINGS)
    np.testing.assert_allclose(open_cache(early.path).read("features"), reference, rtol=1e-4, atol=1e-16)


def test_cli_runs_the_issue_example_and_help_explains_every_option(manifest, tmp_path, capsys):
    code = main(["cache-features", str(manifest), "--backbone", "mobilenetv2", "--weights", "none",
                 "--image-size", "32", "--pooling", "avg", "--workdir", str(tmp_path / "ws"), "--no-progress",
                 "--captions", "--max-len", "3"])
    assert code == 0
    assert len(list((tmp_path / "ws" / "bottlenecks").glob("*.h5"))) == 1
    out = capsys.readouterr().out
    assert "24 computed" in out and "3 tokens each; 0 rows without a caption" in out
    with pytest.raises(SystemExit):
        main(["cache-features", "--help"])
    text = capsys.readouterr().out
    for option in ("--backbone", "--weights", "--image-size", "--preprocess", "--pooling", "--augment-copies",
                   "--strict", "--background", "--overwrite", "--allow-unlabelled", "KERAS_HOME", "--captions",
                   "--num-words", "--max-len", "training split", "--dtype", "float16"):
        assert option in text


def test_captions_are_cached_as_token_ids_with_a_vocabulary_fitted_on_the_training_split(manifest, tmp_path):
    import json

    from mlkit.data.manifest import update_column
    from mlkit.text import encode_captions, fit_vocabulary

    captions = [None if row in (1, 4) else caption for row, caption in enumerate(read_manifest(manifest).captions())]
    update_column(manifest, "caption", ["" if c is None else c for c in captions])
    splits = read_manifest(manifest).splits()
    result = cache_features(manifest, tmp_path / "ws", captions=True, num_words=8, **SETTINGS)
    cache = open_cache(result.path)
    vocabulary = fit_vocabulary([c for c, s in zip(captions, splits) if s == "train"], num_words=8)
    assert cache.vocabulary == vocabulary and vocabulary["size"] == 8
    tokens = cache.read("tokens")
    np.testing.assert_array_equal(tokens, encode_captions(captions, vocabulary))
    assert tokens.dtype == np.int32 and tokens.shape == (24, vocabulary["max_len"])
    assert not tokens[[1, 4]].any() and tokens[0].any()
    summary = json.loads(result.summary_path.read_text())["captions"]
    assert summary == result.captions and summary["rows_without_caption"] == 2 and summary["max_len"] == tokens.shape[1]


def test_tokens_follow_the_captions_and_vocabulary_settings_while_features_are_reused(manifest, tmp_path):
    from mlkit.data.manifest import update_column

    first = cache_features(manifest, tmp_path / "ws", captions=True, **SETTINGS)
    features = open_cache(first.path).read("features")
    assert cache_features(manifest, tmp_path / "ws", captions=True, **SETTINGS).computed == 0

    cut = cache_features(manifest, tmp_path / "ws", captions=True, num_words=4, max_len=1, **SETTINGS)
    cache = open_cache(cut.path)
    assert (cut.computed, cut.reused) == (0, 24) and cache.read("tokens").shape == (24, 1)
    assert cache.read("tokens").max() <= 3 and cache.vocabulary["num_words"] == 4
    np.testing.assert_array_equal(cache.read("features"), features)

    captions = read_manifest(manifest).captions()
    update_column(manifest, "caption", ["red circle"] * len(captions))
    changed = cache_features(manifest, tmp_path / "ws", captions=True, num_words=4, max_len=1, **SETTINGS)
    assert (changed.computed, changed.reused) == (0, 24)
    assert set(open_cache(changed.path).read("tokens")[:, 0]) == {open_cache(changed.path).vocabulary["forms"]["red"]}

    dropped = cache_features(manifest, tmp_path / "ws", **SETTINGS)
    assert dropped.computed == 0 and not open_cache(dropped.path).has("tokens") and dropped.captions is None
    assert open_cache(dropped.path).vocabulary is None


def test_captions_need_a_caption_column_and_a_training_split(tmp_path):
    classes = synthesize(tmp_path / "classes", task="multiclass", n=6, size=32, seed=0)
    with pytest.raises(CacheError, match="no caption column"):
        cache_features(classes, tmp_path / "ws", captions=True, **SETTINGS)
    unsplit = synthesize(tmp_path / "unsplit", task="multilabel", n=6, size=32, seed=0)
    with pytest.raises(CacheError, match="mlkit data split"):
        cache_features(unsplit, tmp_path / "ws", captions=True, **SETTINGS)


def test_read_rows_across_blocks_with_gaps_and_repeats(tmp_path, monkeypatch):
    # 3 rows of 12 float32 per block, so these rows span several blocks.
    monkeypatch.setattr(cache_module, "BLOCK_BYTES", 3 * 12 * 4)
    x = np.arange(40 * 12, dtype="float32").reshape(40, 12)
    rows = np.array([0, 0, 1, 2, 2, 7, 8, 9, 10, 25, 39, 39])
    with h5py.File(tmp_path / "x.h5", "w") as h5:
        h5["x"] = x
        h5["s"] = [f"row{i}" for i in range(40)]
        np.testing.assert_array_equal(read_rows(h5["x"], rows), x[rows])
        assert read_rows(h5["x"], rows[:0]).shape == (0, 12)
        assert [s.decode() for s in read_rows(h5["s"], rows)] == [f"row{i}" for i in rows]
        with pytest.raises(ValueError, match="increasing"):
            read_rows(h5["x"], rows[::-1])
