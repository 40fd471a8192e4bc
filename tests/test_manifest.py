"""Reading, validating and writing manifests."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from mlkit.data.manifest import TASKS, read_manifest, update_column, write_manifest
from mlkit.errors import ManifestError


def write_text(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def multilabel_rows():
    return pd.DataFrame({
        "image": ["a.png", "sub/b.png", "c.png"],
        "labels": [("culture::french", "tag::utilitarian objects"), ("NA",), ("None", "tag::men")],
        "caption": ["a vase, with flowers", None, 'two "men"\non a horse'],
        "split": ["train", "", "test"],
        "source": ["met", "met", "NA"],
    })


@pytest.mark.parametrize("name", ["manifest.csv", "manifest.jsonl"])
def test_round_trip_keeps_labels_captions_and_extra_columns(tmp_path, name):
    path = write_manifest(multilabel_rows(), tmp_path / name)
    manifest = read_manifest(path)
    assert manifest.task == "multilabel"
    assert list(manifest.rows["labels"]) == list(multilabel_rows()["labels"])
    assert manifest.label_names == sorted(["culture::french", "tag::utilitarian objects", "NA", "None", "tag::men"])
    assert manifest.captions() == ["a vase, with flowers", None, 'two "men"\non a horse']
    assert list(manifest.splits()) == ["train", "", "test"]
    assert list(manifest.rows["source"]) == ["met", "met", "NA"]
    assert manifest.root == tmp_path


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    path = write_manifest(multilabel_rows(), tmp_path / "m.csv")
    before = path.read_bytes()

    def failing_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        write_manifest(multilabel_rows().iloc[:1], path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]


def test_labels_are_stripped_and_deduplicated(tmp_path):
    path = write_text(tmp_path / "m.csv", "image,labels\na.png, red | blue |red\nb.png,green\n")
    manifest = read_manifest(path)
    assert list(manifest.rows["labels"]) == [("red", "blue"), ("green",)]


@pytest.mark.parametrize(
    "text, task",
    [
        ("image,labels\na.png,x|y\nb.png,x\n", "multilabel"),
        ("image,labels\na.png,x\nb.png,y\n", "multiclass"),
        ("image,target\na.png,1.5\nb.png,2\n", "regression"),
    ],
)
def test_task_is_inferred(tmp_path, text, task):
    assert read_manifest(write_text(tmp_path / "m.csv", text)).task == task


def test_unlabelled_rows_make_the_inferred_task_multilabel(tmp_path):
    path = write_text(tmp_path / "m.csv", "image,labels\na.png,x\nb.png,\n")
    manifest = read_manifest(path, allow_unlabelled=True)
    assert manifest.task == "multilabel"
    assert manifest.label_array().tolist() == [[1], [0]]


def test_label_arrays_per_task(tmp_path):
    multilabel = read_manifest(write_text(tmp_path / "ml.csv", "image,labels\na.png,b|a\nb.png,c\n"))
    assert multilabel.label_array().dtype == np.uint8
    assert multilabel.label_array().tolist() == [[1, 1, 0], [0, 0, 1]]
    multiclass = read_manifest(write_text(tmp_path / "mc.csv", "image,labels\na.png,dog\nb.png,cat\n"))
    assert multiclass.label_array().dtype == np.int32
    assert multiclass.label_array().tolist() == [1, 0]
    regression = read_manifest(write_text(tmp_path / "r.csv", "image,target\na.png,1.5|10\nb.png,-2|3e2\n"))
    assert regression.target_names == ["target0", "target1"]
    assert regression.label_names == []
    assert regression.label_array().dtype == np.float32
    assert regression.label_array().tolist() == [[1.5, 10.0], [-2.0, 300.0]]
    single = read_manifest(write_text(tmp_path / "r1.csv", "image,target\na.png,1820\n"))
    assert single.target_names == ["target"]
    assert single.label_array().shape == (1, 1)


def test_image_paths_resolve_against_the_manifest_folder(tmp_path):
    absolute = (tmp_path / "elsewhere" / "z.png").as_posix()
    (tmp_path / "data").mkdir()
    path = write_text(tmp_path / "data" / "m.csv", f"image,labels\nimages/a.png,x\n../b.png,y\n{absolute},x\n")
    manifest = read_manifest(path)
    assert manifest.image_paths() == [tmp_path / "data" / "images" / "a.png", tmp_path / "b.png",
                                      tmp_path / "elsewhere" / "z.png"]
    assert list(manifest.rows["image"]) == ["images/a.png", "../b.png", absolute]


def test_json_lines_accept_lists_and_numbers(tmp_path):
    lines = [{"image": "a.png", "target": 3}, {"image": "b.png", "target": [4.5]}]
    path = write_text(tmp_path / "m.jsonl", "\n".join(json.dumps(line) for line in lines) + "\n\n")
    manifest = read_manifest(path)
    assert manifest.task == "regression"
    assert manifest.label_array().tolist() == [[3.0], [4.5]]


def test_a_json_array_is_read_too(tmp_path):
    path = write_text(tmp_path / "m.json", json.dumps([{"image": "a.png", "labels": ["x", "y"]}]))
    assert read_manifest(path).label_array().tolist() == [[1, 1]]


def test_manifest_hash_covers_rows_in_order_but_not_formatting(tmp_path):
    base = read_manifest(write_text(tmp_path / "a.csv", "image,labels,extra\na.png,x|y,1\nb.png,z,2\n"))
    reformatted = read_manifest(write_text(tmp_path / "b.csv", 'image,labels,extra\n"a.png", y | x ,9\nb.png,z,8\n'))
    reordered = read_manifest(write_text(tmp_path / "c.csv", "image,labels\nb.png,z\na.png,x|y\n"))
    with_split = read_manifest(write_text(tmp_path / "d.csv", "image,labels,split\na.png,x|y,train\nb.png,z,\n"))
    assert len(base.manifest_hash()) == 64
    assert base.manifest_hash() == reformatted.manifest_hash()
    assert base.manifest_hash() != reordered.manifest_hash()
    assert base.manifest_hash() != with_split.manifest_hash()


def test_update_column_leaves_other_cells_as_written(tmp_path):
    path = write_text(tmp_path / "m.csv", "image,labels,note\na.png, x |y,NA\nb.png,z,\n")
    update_column(path, "split", ["train", "val"])
    assert path.read_text() == "image,labels,split,note\na.png, x |y,train,NA\nb.png,z,val,\n"


def error_for(tmp_path, text, name="m.csv", **kwargs):
    path = write_text(tmp_path / name, text)
    with pytest.raises(ManifestError) as caught:
        read_manifest(path, **kwargs)
    return str(caught.value)


def test_missing_image_column_lists_the_columns_found(tmp_path):
    message = error_for(tmp_path, "path,labels\na.png,x\n")
    assert "m.csv" in message and "'image'" in message and "path, labels" in message


def test_missing_labels_column_for_the_task(tmp_path):
    message = error_for(tmp_path, "image,target\na.png,1\n", task="multilabel")
    assert "'labels'" in message and "multilabel" in message
    assert "neither" in error_for(tmp_path, "image,caption\na.png,hi\n")


def test_unknown_task_lists_the_tasks(tmp_path):
    message = error_for(tmp_path, "image,labels\na.png,x\n", task="multi-label")
    assert "'multi-label'" in message and all(task in message for task in TASKS)


def test_empty_label_set_names_row_and_line_and_suggests_allow_unlabelled(tmp_path):
    message = error_for(tmp_path, "image,labels\na.png,x|y\nb.png, \n")
    assert "m.csv row 2 (line 3)" in message
    assert "--allow-unlabelled" in message and "all-negative" in message and "evaluation" in message


def test_empty_label_set_is_always_an_error_for_multiclass(tmp_path):
    message = error_for(tmp_path, "image,labels\na.png,x\nb.png,\n", task="multiclass", allow_unlabelled=True)
    assert "row 2 (line 3)" in message and "exactly one label" in message


def test_multiclass_row_with_two_labels(tmp_path):
    message = error_for(tmp_path, "image,labels\na.png,x\nb.png,x|y\n", task="multiclass")
    assert "row 2 (line 3)" in message and "'x|y'" in message and "multilabel" in message


@pytest.mark.parametrize("value", ["twelve", "", "nan", "1|"])
def test_non_numeric_target(tmp_path, value):
    message = error_for(tmp_path, f"image,target\na.png,1\nb.png,{value}\n")
    assert "row 2 (line 3)" in message and repr(value) in message


def test_ragged_targets(tmp_path):
    assert "same number of targets" in error_for(tmp_path, "image,target\na.png,1|2\nb.png,3\n")


def test_duplicate_image_names_both_rows(tmp_path):
    message = error_for(tmp_path, "image,labels\na.png,x\nb.png,y\n./a.png,z\n")
    assert "row 3 (line 4)" in message and "row 1 (line 2)" in message and "'./a.png'" in message


def test_unknown_split_value(tmp_path):
    message = error_for(tmp_path, "image,labels,split\na.png,x,train\nb.png,y,validation\n")
    assert "row 2 (line 3)" in message and "'validation'" in message and "train, val, test" in message


def test_line_numbers_count_quoted_multiline_captions(tmp_path):
    text = 'image,labels,caption\na.png,x,"line one\nline two"\n\nb.png,,short\n'
    assert "row 2 (line 5)" in error_for(tmp_path, text, task="multilabel")


def test_json_lines_errors_name_the_line(tmp_path):
    text = '{"image": "a.png", "labels": "x"}\n\n{"image": "b.png", "labels": []}\n'
    assert "m.jsonl row 2 (line 3)" in error_for(tmp_path, text, name="m.jsonl", task="multilabel")
    assert "line 2" in error_for(tmp_path, '{"image": "a.png"}\n{oops\n', name="m.jsonl")


@pytest.mark.parametrize("text", ["", "image,labels\n"])
def test_empty_manifest(tmp_path, text):
    assert "m.csv" in error_for(tmp_path, text)


def test_missing_file(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.csv")
