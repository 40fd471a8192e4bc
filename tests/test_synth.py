"""The built-in synthetic dataset, and the synth -> split -> stats chain."""

import re

import numpy as np
import pytest
from PIL import Image

from mlkit.cli import main
from mlkit.data.manifest import read_manifest
from mlkit.data.synth import COLOURS, SHAPES, synthesize
from mlkit.errors import MlkitError

LABEL_WORDS = set(SHAPES) | set(COLOURS)


def folder_bytes(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}


@pytest.mark.parametrize("task", ["multilabel", "multiclass", "regression"])
def test_same_seed_gives_the_same_bytes(tmp_path, task):
    synthesize(tmp_path / "a", task=task, n=20, size=32, seed=5)
    synthesize(tmp_path / "b", task=task, n=20, size=32, seed=5)
    synthesize(tmp_path / "c", task=task, n=20, size=32, seed=6)
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")
    assert folder_bytes(tmp_path / "a") != folder_bytes(tmp_path / "c")


def test_a_larger_n_extends_a_smaller_one(tmp_path):
    synthesize(tmp_path / "small", n=5, size=32)
    synthesize(tmp_path / "large", n=8, size=32)
    small, large = folder_bytes(tmp_path / "small"), folder_bytes(tmp_path / "large")
    assert all(large[name] == data for name, data in small.items() if name.endswith(".png"))


@pytest.fixture(scope="module")
def multilabel(tmp_path_factory):
    return read_manifest(synthesize(tmp_path_factory.mktemp("synth") / "ml", n=300, size=48))


def test_multilabel_images_open_at_the_requested_size(multilabel):
    assert multilabel.task == "multilabel"
    for path in multilabel.image_paths()[:20]:
        with Image.open(path) as image:
            assert image.size == (48, 48) and image.mode == "RGB"


def test_multilabel_label_balance_is_sane(multilabel):
    assert set(multilabel.label_names) == LABEL_WORDS
    frequency = multilabel.label_array().mean(axis=0)
    assert frequency.min() > 0.15 and frequency.max() < 0.8
    shapes_per_image = multilabel.label_array()[:, [multilabel.label_names.index(s) for s in SHAPES]].sum(axis=1)
    assert shapes_per_image.min() >= 1 and shapes_per_image.max() <= 3


def test_captions_never_name_an_absent_label_and_are_only_partial(multilabel):
    named_true, named_none = 0, 0
    for labels, caption in zip(multilabel.rows["labels"], multilabel.captions()):
        words = set(re.findall(r"[a-z]+", caption)) & LABEL_WORDS
        assert words <= set(labels), (caption, labels)
        assert len(words) < len(labels) or len(labels) <= 2
        named_true += bool(words)
        named_none += not words
    assert 0.6 < named_true / len(multilabel.rows) < 0.9
    assert named_none > 0


def test_multiclass_has_five_mildly_imbalanced_classes(tmp_path):
    manifest = read_manifest(synthesize(tmp_path, task="multiclass", n=300, size=32))
    assert manifest.task == "multiclass"
    counts = np.bincount(manifest.label_array(), minlength=5)
    assert manifest.label_names == sorted(SHAPES)
    assert counts.min() >= 15 and counts.max() <= 130


def test_regression_target_counts_shapes(tmp_path):
    manifest = read_manifest(synthesize(tmp_path, task="regression", n=200, size=48))
    assert manifest.task == "regression" and manifest.target_names == ["target"]
    assert set(manifest.label_array()[:, 0]) == {1.0, 2.0, 3.0, 4.0, 5.0, 6.0}


def test_bad_arguments(tmp_path):
    with pytest.raises(MlkitError, match="unknown task"):
        synthesize(tmp_path, task="detection")
    with pytest.raises(MlkitError, match="size >= 16"):
        synthesize(tmp_path, size=8)


def test_cli_synth_split_stats(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", "--task", "multilabel", "--n", "600", "--size", "64", "--out", str(out)]) == 0
    manifest_path = str(out / "manifest.csv")
    assert main(["data", "split", manifest_path, "--val", "0.15", "--test", "0.15", "--seed", "0"]) == 0
    assert main(["data", "stats", manifest_path]) == 0
    printed = capsys.readouterr().out
    assert "multilabel, 600 rows" in printed and "600 checked, 0 unreadable" in printed
    splits = read_manifest(manifest_path).splits()
    assert abs((splits == "val").sum() - 90) <= 6 and abs((splits == "test").sum() - 90) <= 6
