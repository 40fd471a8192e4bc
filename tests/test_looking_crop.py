"""mlkit crop: boxes around a shape on a plain background, the TensorFlow version's boxes, resume, failures."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from mlkit.cli import main
from mlkit.cropping.boxes import fit_box, iou
from mlkit.cropping.config import CropConfig
from mlkit.cropping.saliency import activation_map, activation_map_tf, peak_box, peak_box_tf
from mlkit.data.manifest import read_manifest, write_manifest
from mlkit.looking import crop as crop_module
from mlkit.looking.crop import Cropper, crop


def shape_image(height, width, box, kind="ellipse", background=(255, 255, 255), colour=(40, 90, 160), base=None):
    """An RGB image with one filled shape whose box is (top, left, bottom, right), on `background` or `base`."""
    image = Image.new("RGB", (width, height), background) if base is None else Image.fromarray(base)
    top, left, bottom, right = box
    draw = ImageDraw.Draw(image)
    getattr(draw, kind)((left, top, right - 1, bottom - 1), fill=colour)
    return np.asarray(image)


@pytest.mark.parametrize("method", ["sokolova", "border"])
def test_the_crop_of_one_shape_on_a_plain_background_is_its_box(method, pretrained_mobilenetv2):
    # Shapes sit at least 16 px from the edges: the outer cells of each map are zeroed (padding lights them).
    # Within about a map cell: 160 / 48 px for sokolova's stride-2 maps at 96 px, 160 / 24 for border's stride 4.
    tolerance = {"sokolova": 4, "border": 8}[method]
    cropper = Cropper(CropConfig(method=method, weights=pretrained_mobilenetv2, image_size=96, margin=0.0,
                                 min_size=0.0))
    boxes = [(20, 30, 70, 90), (50, 16, 100, 60), (16, 70, 46, 140)]
    found = cropper.boxes([shape_image(120, 160, box) for box in boxes])
    for box, box_found in zip(boxes, found):
        assert np.abs(np.subtract(box_found, box)).max() <= tolerance, (method, box_found, box)


def test_the_border_method_finds_a_shape_on_a_texture_the_early_layers_do_not(pretrained_mobilenetv2):
    # A disc on stripes: every stripe edge lights the first layers, the border ring's Gaussian explains them.
    rng = np.random.default_rng(0)
    stripes = np.repeat((np.sin(np.arange(160) / 2.0 + rng.normal(0, 0.3, 160)) > 0)[None], 120, axis=0)
    image = np.where(stripes[..., None], 200, 60).astype(np.uint8).repeat(3, axis=-1)
    box = (40, 60, 90, 110)
    found = {}
    for method in ("sokolova", "border"):
        config = CropConfig(method=method, weights=pretrained_mobilenetv2, image_size=96, margin=0.0, min_size=0.0)
        found[method] = iou(Cropper(config).boxes([shape_image(120, 160, box, background=None, base=image)])[0], box)
    assert found["border"] >= 0.7 and found["border"] > found["sokolova"] + 0.2, found


def test_the_tensorflow_ops_give_the_numpy_boxes(pretrained_mobilenetv2):
    cropper = Cropper(CropConfig(weights=pretrained_mobilenetv2, image_size=96))
    rng = np.random.default_rng(1)
    images = [shape_image(96, 96, (int(top), int(left), int(top) + 40, int(left) + 30),
                          colour=tuple(rng.integers(0, 200, 3))) for top, left in rng.integers(0, 50, (6, 2))]
    images.append(np.asarray(Image.effect_noise((96, 96), 60).convert("RGB")))
    outputs = [np.asarray(o) for o in cropper.finder.model(np.stack(images).astype("float32"))]
    heat_tf = np.asarray(activation_map_tf(outputs))
    boxes_tf = np.asarray(peak_box_tf(heat_tf))
    for i in range(len(images)):
        heat = activation_map([o[i] for o in outputs])
        assert np.allclose(heat, heat_tf[i], atol=1e-9)
        assert np.abs(np.subtract(peak_box(heat), boxes_tf[i])).max() <= 1


def test_the_box_takes_margin_minimum_size_and_aspect():
    assert fit_box((10, 20, 30, 60), (100, 200), margin=0.0, min_size=0.0) == (10, 20, 30, 60)
    assert fit_box((10, 20, 30, 60), (100, 200), margin=0.5, min_size=0.0) == (0, 0, 40, 80)
    assert fit_box((40, 90, 50, 100), (100, 200), margin=0.0, min_size=0.3) == (30, 65, 60, 125)
    square = fit_box((10, 20, 30, 60), (100, 200), margin=0.0, min_size=0.0, aspect="square")
    assert square[2] - square[0] == square[3] - square[1] == 40
    top, left, bottom, right = fit_box((10, 20, 30, 60), (100, 200), margin=0.0, min_size=0.0, aspect="image")
    assert (right - left) == 2 * (bottom - top)
    assert fit_box((0, 0, 100, 200), (100, 200), aspect="square") == (0, 0, 100, 200)  # clipped to the image
    assert iou((0, 0, 10, 10), (0, 5, 10, 15)) == pytest.approx(1 / 3)


def test_bad_settings_are_refused_with_the_value():
    with pytest.raises(Exception, match="--threshold 1.5"):
        CropConfig(threshold=1.5)
    with pytest.raises(Exception, match="aspect"):
        CropConfig(aspect="wide")


def collection(folder, n=5):
    """A manifest of n shape images, one missing file and one corrupt one, with an extra column."""
    images = folder / "images"
    images.mkdir(parents=True)
    rows = []
    for i in range(n):
        Image.fromarray(shape_image(64, 80, (10 + i, 12, 50, 60 + i))).save(images / f"shape{i}.png")
        rows.append({"image": f"images/shape{i}.png", "labels": ("round",), "split": "train", "note": f"n{i}"})
    (images / "corrupt.png").write_bytes(b"not a png")
    rows += [{"image": "images/corrupt.png", "labels": ("round",), "split": "val", "note": "bad"},
             {"image": "images/missing.png", "labels": ("round",), "split": "test", "note": "gone"}]
    return write_manifest(pd.DataFrame(rows), folder / "manifest.csv")


SETTINGS = {"weights": "none", "image_size": 64, "batch_size": 2}


class Killed(Exception):
    """Stands in for SIGKILL: the run stops between two batches."""


def test_crop_resumes_after_an_interruption_and_lists_bad_images(tmp_path, monkeypatch):
    manifest = collection(tmp_path / "data")
    fresh = crop(manifest, tmp_path / "fresh", progress=False, **SETTINGS)
    calls = []
    real_boxes = Cropper.boxes

    def interrupted(self, images):
        calls.append(len(images))
        if len(calls) == 2:
            raise Killed  # as a kill mid-run: nothing after the first batch is recorded
        return real_boxes(self, images)

    monkeypatch.setattr(Cropper, "boxes", interrupted)
    with pytest.raises(Killed):
        crop(manifest, tmp_path / "out", progress=False, **SETTINGS)
    with open(tmp_path / "out" / crop_module.PROGRESS, "a") as handle:
        handle.write('{"row": 4, "sou')  # the line a kill cut short
    calls.clear()
    monkeypatch.setattr(Cropper, "boxes", lambda self, images: calls.append(len(images)) or real_boxes(self, images))
    result = crop(manifest, tmp_path / "out", progress=False, **SETTINGS)
    assert sum(calls) == 3  # rows 0-1 were kept; 2, 3, 4 cropped now (the bad rows are recorded, not retried)

    table = read_manifest(result.manifest)
    assert list(table.rows["note"]) == [f"n{i}" for i in range(5)]
    assert list(table.rows["split"]) == ["train"] * 5
    assert list(table.rows["crop_box"]) == list(read_manifest(fresh.manifest).rows["crop_box"])
    assert all(path.is_file() for path in table.image_paths())
    failed = pd.read_csv(result.failed)
    assert [name.rsplit("/", 1)[-1] for name in failed["image"]] == ["corrupt.png", "missing.png"]
    assert failed["reason"].str.len().min() > 0 and "missing" in failed["reason"].iloc[1]
    assert result.contact_sheet.is_file()
    summary = json.loads((tmp_path / "out" / "crop.json").read_text())
    assert summary["status"] == "complete" and summary["failed"] == 2


def test_other_settings_crop_again_and_the_cli_runs(tmp_path, capsys):
    manifest = collection(tmp_path / "data", n=2)
    first = crop(manifest, tmp_path / "out", progress=False, **SETTINGS)
    boxes = list(read_manifest(first.manifest).rows["crop_box"])
    code = main(["crop", str(manifest), "--out", str(tmp_path / "out"), "--weights", "none", "--image-size", "64",
                 "--aspect", "square", "--min-size", "0.7"])
    assert code == 0 and "2 image(s) cropped, 2 failed" in capsys.readouterr().out
    squares = read_manifest(tmp_path / "out" / "manifest.csv").rows["crop_box"]
    assert list(squares) != boxes
    for cell in squares:
        top, left, bottom, right = map(int, cell.split(","))
        assert bottom - top == right - left >= 56  # at least 0.7 of the 80 px width
