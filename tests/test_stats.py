"""Manifest statistics and the printed table."""

import json

import pandas as pd
import pytest
from PIL import Image

from mlkit.cli import main
from mlkit.data.manifest import write_manifest
from mlkit.data.stats import format_stats, manifest_stats


@pytest.fixture
def multilabel_manifest(tmp_path):
    for name, size in (("a.png", (10, 20)), ("b.jpg", (30, 40)), ("c.png", (50, 60))):
        Image.new("RGB", size).save(tmp_path / name)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows = pd.DataFrame({
        "image": ["a.png", "b.jpg", "c.png", "broken.png", "missing.png"],
        "labels": [("cat", "dog"), ("cat",), ("tag::men", "cat", "dog"), (), ("dog",)],
        "split": ["train", "train", "val", "test", ""],
    })
    return write_manifest(rows, tmp_path / "manifest.csv")


def test_label_counts_cardinality_and_unlabelled(multilabel_manifest):
    stats = manifest_stats(multilabel_manifest, read_images=False)
    assert stats["task"] == "multilabel"
    assert stats["rows"] == 5
    assert stats["splits"] == {"train": 2, "val": 1, "test": 1, "": 1}
    assert stats["labels"]["cat"] == {"all": 3, "train": 2, "val": 1, "test": 0, "": 0}
    assert stats["labels"]["dog"] == {"all": 3, "train": 1, "val": 1, "test": 0, "": 1}
    assert stats["cardinality"]["all"] == pytest.approx(7 / 5)
    assert stats["cardinality"]["train"] == pytest.approx(1.5)
    assert stats["density"] == pytest.approx(7 / 5 / 3)
    assert stats["unlabelled"] == 1
    assert "images" not in stats


def test_image_sizes_come_from_headers_and_unreadable_files_are_counted(multilabel_manifest):
    images = manifest_stats(multilabel_manifest)["images"]
    assert images["checked"] == 5
    assert images["unreadable"] == 2
    assert images["width"] == {"min": 10, "median": 30, "max": 50}
    assert images["height"] == {"min": 20, "median": 40, "max": 60}
    assert any("missing.png" in example for example in images["unreadable_examples"])


def test_regression_targets(tmp_path):
    rows = pd.DataFrame({"image": ["a", "b", "c"], "target": [(1.0,), (2.0,), (6.0,)], "split": ["train", "train", "val"]})
    stats = manifest_stats(write_manifest(rows, tmp_path / "m.csv"), read_images=False)
    assert stats["targets"]["target"]["all"] == {"min": 1.0, "mean": 3.0, "max": 6.0}
    assert stats["targets"]["target"]["train"] == {"min": 1.0, "mean": 1.5, "max": 2.0}
    assert "target" in format_stats(stats)


def test_multiclass_counts(tmp_path):
    rows = pd.DataFrame({"image": ["a", "b", "c"], "labels": [("x",), ("y",), ("x",)]})
    stats = manifest_stats(write_manifest(rows, tmp_path / "m.csv"), read_images=False)
    assert stats["task"] == "multiclass"
    assert {name: counts["all"] for name, counts in stats["labels"].items()} == {"x": 2, "y": 1}
    assert stats["cardinality"]["all"] == 1.0


def test_table_lists_labels_by_frequency_and_caps_them(multilabel_manifest):
    table = format_stats(manifest_stats(multilabel_manifest), max_labels=2)
    assert "multilabel, 5 rows" in table
    assert "cardinality 1.400" in table
    assert "rows with no labels 1" in table
    assert "1 more labels" in table and "tag::men" not in table
    assert "2 unreadable" in table
    assert "width" in table


def test_cli_stats_table_and_json(multilabel_manifest, capsys):
    assert main(["data", "stats", str(multilabel_manifest), "--max-labels", "0"]) == 0
    assert "tag::men" in capsys.readouterr().out
    assert main(["data", "stats", str(multilabel_manifest), "--no-images", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["labels"]["cat"]["all"] == 3 and "images" not in stats
