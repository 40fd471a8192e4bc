"""Adapters, each on a small fixture in its source's real format."""

import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image

from mlkit.cli import main
from mlkit.data.adapters import from_coco, from_csv, from_folders, from_imet, name_words
from mlkit.data.manifest import read_manifest
from mlkit.errors import MlkitError

FIXTURES = Path(__file__).parent / "fixtures"
COCO = FIXTURES / "coco" / "annotations" / "instances_val2017.json"


def save_image(path, size=(8, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)
    return path


def test_from_folders_labels_by_first_level_folder(tmp_path):
    root = tmp_path / "photos"
    save_image(root / "cat" / "a.jpg")
    save_image(root / "cat" / "indoor" / "deep" / "b.PNG")
    save_image(root / "dog" / "c.jpeg")
    save_image(root / "dog" / ".hidden.png")
    save_image(root / "loose.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    manifest = read_manifest(from_folders(root, tmp_path / "out" / "manifest.csv"))
    assert manifest.task == "multiclass"
    assert manifest.label_names == ["cat", "dog"]
    assert list(manifest.rows["image"]) == ["../photos/cat/a.jpg", "../photos/cat/indoor/deep/b.PNG", "../photos/dog/c.jpeg"]
    assert [label for (label,) in manifest.rows["labels"]] == ["cat", "cat", "dog"]
    assert all(path.is_file() for path in manifest.image_paths())


def test_from_folders_without_images_explains_the_layout(tmp_path):
    save_image(tmp_path / "loose.png")
    with pytest.raises(MlkitError, match="<class>/<image>"):
        from_folders(tmp_path, tmp_path / "m.csv")


def test_from_folders_path_labels_make_every_folder_level_a_label_with_sidecar_captions(tmp_path, caplog):
    root = tmp_path / "stamps"
    save_image(root / "food" / "fruit" / "cartoon" / "apple.png")
    (root / "food" / "fruit" / "cartoon" / "apple.txt").write_text("A cartoon apple.\nfr.utf8=Une pomme.\n")
    (root / "food" / "fruit" / "cartoon" / "apple_desc_fr.ogg").write_bytes(b"OggS")
    save_image(root / "food" / "bread.jpg")
    (root / "food" / "bread.svg").write_text("<svg/>")
    save_image(root / "animals" / "birds" / "food" / "seed.png")
    (root / "animals" / "birds" / "food" / "seed.txt").write_text("\ufeffBird seed\n")
    save_image(root / "loose.png")
    with caplog.at_level(logging.INFO):
        path = from_folders(root, tmp_path / "stamps.csv", labels="path", captions="sidecar")
    manifest = read_manifest(path)
    assert manifest.task == "multilabel"
    assert list(manifest.rows["image"]) == ["stamps/animals/birds/food/seed.png", "stamps/food/bread.jpg",
                                            "stamps/food/fruit/cartoon/apple.png"]
    assert list(manifest.rows["labels"]) == [("animals", "birds", "food"), ("food",), ("food", "fruit", "cartoon")]
    assert list(manifest.rows["caption"]) == ["Bird seed", None, "A cartoon apple."]
    assert "passed over 4 files that are not images (1 .ogg, 1 .svg, 2 .txt)" in caplog.text
    assert "1 of 3 images have no caption file" in caplog.text
    assert "skipped 1 images directly under" in caplog.text


def test_from_folders_cli_takes_labels_and_captions(tmp_path):
    save_image(tmp_path / "tree" / "a" / "b" / "x.png")
    (tmp_path / "tree" / "a" / "b" / "x.txt").write_text("an x")
    assert main(["data", "from-folders", str(tmp_path / "tree"), "--labels", "path", "--captions", "sidecar",
                 "--out", str(tmp_path / "m.jsonl")]) == 0
    manifest = read_manifest(tmp_path / "m.jsonl")
    assert list(manifest.rows["labels"]) == [("a", "b")] and list(manifest.rows["caption"]) == ["an x"]


def icon_tree(root):
    """root/<theme>/<context>/<icon>.png: two themes drawing the same icon names."""
    for theme in ("oxygen", "mate"):
        for name in ("edit-copy", "edit-cut", "edit_paste", "go-next"):
            save_image(root / theme / "actions" / f"{name}.png")
        save_image(root / theme / "places" / "folder-remote.png")
    save_image(root / "oxygen" / "loose.png")
    save_image(root / "stray.png")


def test_name_words_split_the_stem_at_dashes_underscores_and_spaces():
    assert name_words("go-next_page  go") == ("go", "next", "page")
    assert name_words("--") == ()


def test_from_folders_name_labels_with_a_group_level_and_a_minimum_label_count(tmp_path, caplog):
    icon_tree(tmp_path / "icons")
    with caplog.at_level(logging.INFO):
        path = from_folders(tmp_path / "icons", tmp_path / "icons.csv", labels="path+name", group_level=1,
                            min_label_count=4)
    manifest = read_manifest(path)
    assert manifest.task == "multilabel"
    assert list(manifest.rows["group"]) == ["mate"] * 4 + ["oxygen"] * 4
    assert list(manifest.rows["labels"])[:4] == [("actions", "edit"), ("actions", "edit"), ("actions", "edit"),
                                                 ("actions",)]
    assert manifest.rows["image"][0] == "icons/mate/actions/edit-copy.png"
    assert "dropped 9 of 11 labels on fewer than 4 images, and 3 images left with no label" in caplog.text
    assert "skipped 1 images under" in caplog.text  # stray.png; oxygen/loose.png has a name


def test_from_folders_name_labels_alone_label_images_directly_under_the_root(tmp_path):
    save_image(tmp_path / "tree" / "red-apple.png")
    save_image(tmp_path / "tree" / "fruit" / "green_apple.png")
    manifest = read_manifest(from_folders(tmp_path / "tree", tmp_path / "m.csv", labels="name"))
    assert list(manifest.rows["labels"]) == [("green", "apple"), ("red", "apple")]
    assert "group" not in manifest.rows


def test_from_folders_min_label_count_drops_small_classes(tmp_path):
    for name in ("a", "b", "c"):
        save_image(tmp_path / "tree" / "big" / f"{name}.png")
    save_image(tmp_path / "tree" / "small" / "d.png")
    manifest = read_manifest(from_folders(tmp_path / "tree", tmp_path / "m.csv", min_label_count=2))
    assert manifest.task == "multiclass" and manifest.label_names == ["big"]
    with pytest.raises(MlkitError, match=r"no label is on 5 images or more \(the most common: big \(3\)"):
        from_folders(tmp_path / "tree", tmp_path / "m.csv", min_label_count=5)


@pytest.mark.parametrize("options, message", [
    ({"labels": "words"}, r"--labels 'words': use first, path, name, path\+name"),
    ({"group_level": 0}, r"--group-level 0: give a folder level, 1 for the first"),
    ({"min_label_count": 0}, r"--min-label-count 0: give a whole number"),
])
def test_from_folders_bad_options_name_the_value(tmp_path, options, message):
    save_image(tmp_path / "tree" / "a" / "x.png")
    with pytest.raises(MlkitError, match=message):
        from_folders(tmp_path / "tree", tmp_path / "m.csv", **options)


def test_cli_from_folders_group_level_feeds_split_test_where(tmp_path):
    icon_tree(tmp_path / "icons")
    out = tmp_path / "icons.csv"
    assert main(["data", "from-folders", str(tmp_path / "icons"), "--labels", "path+name", "--group-level", "1",
                 "--min-label-count", "2", "--out", str(out)]) == 0
    assert main(["data", "split", str(out), "--test-where", "group=oxygen", "--val", "0.25"]) == 0
    manifest = read_manifest(out)
    assert list(manifest.splits() == "test") == list(manifest.rows["group"] == "oxygen")


def test_from_coco_drops_images_without_annotations(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        path = from_coco(COCO, tmp_path / "val2017", tmp_path / "coco.csv")
    manifest = read_manifest(path)
    assert manifest.task == "multilabel"
    assert list(manifest.rows["image"]) == ["val2017/000000397133.jpg", "val2017/000000037777.jpg",
                                            "val2017/000000252219.jpg"]
    assert list(manifest.rows["labels"]) == [("bottle", "person"), ("microwave", "teddy bear"),
                                             ("person", "traffic light")]
    assert manifest.label_names == ["bottle", "microwave", "person", "teddy bear", "traffic light"]
    assert list(manifest.rows["coco_id"]) == ["397133", "37777", "252219"]
    assert "dropped 1 images without labels" in caplog.text


def test_from_coco_keeps_unlabelled_images_for_training(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        path = from_coco(COCO, tmp_path / "val2017", tmp_path / "coco.jsonl", keep_unlabelled=True)
    manifest = read_manifest(path, allow_unlabelled=True)
    assert len(manifest.rows) == 4
    assert manifest.rows["labels"].iloc[3] == ()
    assert list(manifest.splits()) == ["", "", "", "train"]
    assert "--allow-unlabelled" in caplog.text


def test_from_coco_rejects_a_captions_file(tmp_path):
    captions = tmp_path / "captions_val2017.json"
    captions.write_text('{"images": [], "annotations": []}')
    with pytest.raises(MlkitError, match="'categories'"):
        from_coco(captions, tmp_path, tmp_path / "m.csv")


def test_from_imet_maps_attribute_ids_to_names(tmp_path):
    path = from_imet(FIXTURES / "imet" / "train.csv", FIXTURES / "imet" / "labels.csv", tmp_path / "train",
                     tmp_path / "imet.csv")
    manifest = read_manifest(path)
    assert manifest.rows["image"].iloc[0] == "train/1000483014d91860.png"
    assert manifest.rows["labels"].iloc[0] == ("culture::french", "tag::flowers", "tag::men")
    assert manifest.rows["labels"].iloc[2] == ("culture::egyptian",)
    assert "tag::utilitarian objects" in manifest.label_names
    assert manifest.task == "multilabel"


def test_from_imet_unknown_attribute_id_names_the_line(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("id,attribute_ids\nabc,147\ndef,147 9999\n")
    with pytest.raises(MlkitError, match=r"train.csv line 3: label id '9999'"):
        from_imet(train, FIXTURES / "imet" / "labels.csv", tmp_path, tmp_path / "m.csv")


def comp5329_copy(tmp_path):
    source = tmp_path / "COMP5329"
    shutil.copytree(FIXTURES / "comp5329", source)
    return source


def test_from_csv_repairs_captions_with_commas_and_quotes(tmp_path, caplog):
    source = comp5329_copy(tmp_path)
    with caplog.at_level(logging.INFO):
        path = from_csv(source / "train.csv", tmp_path / "manifest.csv", "ImageID", "Labels", caption_col="Caption",
                        label_map=source / "label_names.csv", image_dir=source / "data")
    manifest = read_manifest(path)
    captions = dict(zip(manifest.rows["image"], manifest.captions()))
    assert captions["COMP5329/data/0.jpg"] == "Woman in swim suit holding parasol on sunny day."
    assert captions["COMP5329/data/5.jpg"] == "A man, a woman and a dog walking on a beach, at sunset."
    assert captions["COMP5329/data/6.jpg"] == 'A street sign that says "STOP, NOW" on a pole.'
    assert captions["COMP5329/data/7.jpg"] == 'A cat sitting on a "comfy" chair.'
    labels = dict(zip(manifest.rows["image"], manifest.rows["labels"]))
    assert labels["COMP5329/data/3.jpg"] == ("truck", "car", "stop sign")
    assert "COMP5329/data/8.jpg" not in labels
    assert "dropped 1 rows with no labels" in caplog.text


def test_from_csv_without_label_map_keeps_ids_and_finds_images_beside_the_csv(tmp_path):
    source = comp5329_copy(tmp_path)
    manifest = read_manifest(from_csv(source / "train.csv", source / "m.csv", "ImageID", "Labels"))
    assert manifest.rows["image"].iloc[1] == "1.jpg"
    assert manifest.rows["labels"].iloc[1] == ("1", "19")
    assert manifest.captions() is None
    # An unused caption column is carried through, repaired all the same.
    assert manifest.rows["Caption"].iloc[5] == "A man, a woman and a dog walking on a beach, at sunset."


def test_from_csv_image_suffix_and_extra_columns(tmp_path):
    source = tmp_path / "plain.csv"
    source.write_text("id,tags,image,style\n7,red|dark blue,x,oil\n8,green,y,ink\n")
    manifest = read_manifest(from_csv(source, tmp_path / "m.csv", "id", "tags", image_dir=tmp_path / "img",
                                      image_suffix=".png"))
    assert list(manifest.rows["image"]) == ["img/7.png", "img/8.png"]
    assert manifest.rows["labels"].iloc[0] == ("red", "dark blue")
    assert list(manifest.rows["source_image"]) == ["x", "y"]
    assert list(manifest.rows["style"]) == ["oil", "ink"]


def test_from_csv_overflow_where_labels_are_the_last_column_is_an_error(tmp_path):
    source = tmp_path / "bad.csv"
    source.write_text("Caption,ImageID,Labels\nhello,0.jpg,1\na, b,1.jpg,2\n")
    with pytest.raises(MlkitError, match=r"bad.csv line 3: 4 fields where the header has 3; only a last column of free text"):
        from_csv(source, tmp_path / "m.csv", "ImageID", "Labels", caption_col="Caption")


def test_from_csv_missing_column_lists_the_columns(tmp_path):
    with pytest.raises(MlkitError, match="ImageID, Labels, Caption"):
        from_csv(FIXTURES / "comp5329" / "train.csv", tmp_path / "m.csv", "image", "Labels")


def test_from_csv_unknown_label_id(tmp_path):
    source = tmp_path / "t.csv"
    source.write_text("ImageID,Labels\n0.jpg,1 12\n")
    with pytest.raises(MlkitError, match="line 2: label id '12'"):
        from_csv(source, tmp_path / "m.csv", "ImageID", "Labels", label_map=FIXTURES / "comp5329" / "label_names.csv")


def test_cli_from_coco_and_from_csv(tmp_path, capsys):
    out = tmp_path / "coco.csv"
    assert main(["data", "from-coco", str(COCO), "--images", str(tmp_path / "val2017"), "--out", str(out)]) == 0
    assert len(read_manifest(out).rows) == 3
    source = comp5329_copy(tmp_path)
    args = ["data", "from-csv", str(source / "train.csv"), "--out", str(tmp_path / "c.csv"), "--image-col", "ImageID",
            "--labels-col", "Labels", "--caption-col", "Caption", "--label-map", str(source / "label_names.csv")]
    assert main(args) == 0
    assert read_manifest(tmp_path / "c.csv").captions()[0].startswith("Woman")


def test_cli_reports_adapter_errors_without_a_traceback(tmp_path, capsys):
    assert main(["data", "from-folders", str(tmp_path / "missing"), "--out", str(tmp_path / "m.csv")]) == 1
    assert "is not a folder" in capsys.readouterr().err
