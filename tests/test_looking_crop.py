"""mlkit crop: boxes around a shape on a plain or textured background, the TensorFlow version's boxes, auto's
two paths and its pieces, resume, failures, settings in crop.json."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from mlkit.cli import main
from mlkit.cropping.auto import colour_box, is_plain, pooled, refine_box
from mlkit.cropping.border import region_box
from mlkit.cropping.boxes import fit_box, iou
from mlkit.cropping.config import CropConfig, manifest_crop
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


@pytest.mark.parametrize("method", ["sokolova", "border", "auto"])
def test_the_crop_of_one_shape_on_a_plain_background_is_its_box(method, pretrained_mobilenetv2):
    # Shapes sit at least 16 px from the edges: the outer cells of each map are zeroed (padding lights them).
    # Within about a map cell: 160 / 48 px for sokolova's stride-2 maps at 96 px, 160 / 24 for border's stride 4;
    # auto sees a plain border and cuts along the shape's own pixels.
    tolerance = {"sokolova": 4, "border": 8, "auto": 0}[method]
    cropper = Cropper(CropConfig(method=method, weights=pretrained_mobilenetv2, image_size=96, margin=0.0,
                                 min_size=0.0))
    boxes = [(20, 30, 70, 90), (50, 16, 100, 60), (16, 70, 46, 140)]
    found = cropper.boxes([shape_image(120, 160, box) for box in boxes])
    for box, box_found in zip(boxes, found):
        assert np.abs(np.subtract(box_found, box)).max() <= tolerance, (method, box_found, box)


def stripes(height=120, width=160, seed=0):
    """uint8 (height, width, 3): irregular vertical grey stripes, 200 and 60."""
    rng = np.random.default_rng(seed)
    on = np.repeat((np.sin(np.arange(width) / 2.0 + rng.normal(0, 0.3, width)) > 0)[None], height, axis=0)
    return np.where(on[..., None], 200, 60).astype(np.uint8).repeat(3, axis=-1)


def test_the_border_methods_find_a_shape_on_a_texture_the_early_layers_do_not(pretrained_mobilenetv2):
    # A disc on stripes: every stripe edge lights the first layers, the border ring's Gaussian explains them.
    box = (40, 60, 90, 110)
    image = shape_image(120, 160, box, background=None, base=stripes())
    assert not is_plain(image, 30)
    found = {}
    for method in ("sokolova", "border", "auto"):
        config = CropConfig(method=method, weights=pretrained_mobilenetv2, image_size=96, margin=0.0, min_size=0.0)
        found[method] = Cropper(config).boxes([image])[0]
    assert iou(found["border"], box) >= 0.7 and iou(found["border"], box) > iou(found["sokolova"], box) + 0.2, found
    # auto's colour refinement brings the edges to the disc's own within a few pixels.
    assert np.abs(np.subtract(found["auto"], box)).max() <= 3, found


def test_auto_takes_the_plain_path_only_for_a_plain_border():
    box = (30, 40, 80, 100)
    white = shape_image(120, 160, box)
    assert is_plain(white, 30) and colour_box(white, 30) == box
    noisy = white.astype(int) + np.random.default_rng(0).integers(-6, 7, white.shape)  # sensor noise, within 15
    assert is_plain(np.clip(noisy, 0, 255).astype(np.uint8), 30)
    assert not is_plain(shape_image(120, 160, box, background=None, base=stripes()), 30)
    speck = white.copy()
    speck[5, 5] = 0  # one dust pixel does not stretch the box
    assert colour_box(speck, 30) == box


def test_auto_pieces_refine_pool_and_choose_the_region_of_most_mass():
    noise = np.random.default_rng(0).integers(90, 160, (120, 160, 3)).astype(np.uint8)
    image = shape_image(120, 160, (30, 40, 80, 100), kind="rectangle", background=None, base=noise,
                        colour=(250, 20, 20))
    # Feature-map boxes a few pixels off on every side (within the 4 px margin, 1/30 of the shorter side).
    for box in ((33, 43, 77, 97), (27, 37, 83, 103), (33, 37, 83, 97)):
        assert refine_box(image, box) == (30, 40, 80, 100), box
    assert refine_box(image, (0, 0, 120, 160)) == (0, 0, 120, 160)  # no band left to sample: kept
    fine = np.arange(4 * 6 * 2, dtype=float).reshape(4, 6, 2)
    assert np.allclose(pooled(fine, 2, 3), fine.reshape(2, 2, 3, 2, 2).mean(axis=(1, 3)))
    heat = np.zeros((20, 20))
    heat[2:4, 2:4] = 1.0  # the highest cell, a small region
    heat[10:18, 10:18] = 0.8  # less high, far more mass
    assert region_box(heat, 0.5) == (2.5, 2.5, 3.5, 3.5)
    assert region_box(heat, 0.5, by="mass") == (10.5, 10.5, 17.5, 17.5)


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
    with pytest.raises(Exception, match="--tolerance 500"):
        CropConfig(tolerance=500)


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


def test_auto_settings_round_trip_through_crop_json(tmp_path):
    manifest = collection(tmp_path / "data", n=2)
    result = crop(manifest, tmp_path / "out", progress=False, method="auto", tolerance=20.0, threshold=0.3,
                  margin=0.0, min_size=0.0, **SETTINGS)
    recorded = manifest_crop(result.manifest)["settings"]
    assert recorded["method"] == "auto" and recorded["tolerance"] == 20.0 and recorded["threshold"] == 0.3
    config = CropConfig(**recorded)  # what predict rebuilds
    assert config.fingerprint() == recorded
    # White shapes' own pixels: the plain path, exact boxes (shape i spans rows 10+i-50, cols 12-60+i).
    boxes = [tuple(map(int, cell.split(","))) for cell in read_manifest(result.manifest).rows["crop_box"]]
    assert boxes == [(10, 12, 50, 60), (11, 12, 50, 61)]


def test_crop_defaults_to_auto_and_look_to_the_first_layers_map(tmp_path):
    """crop's default is its most accurate method; look's is the map fine-tuning changes (sokolova)."""
    import inspect

    from mlkit.cli import build_parser
    from mlkit.looking.look import look

    manifest = collection(tmp_path / "data", n=2)
    result = crop(manifest, tmp_path / "out", progress=False, **SETTINGS)
    assert manifest_crop(result.manifest)["settings"]["method"] == "auto"
    parser = build_parser()
    assert parser.parse_args(["crop", "m.csv", "--out", "o"]).method == "auto"
    assert parser.parse_args(["look", "run", "img.png", "--out", "o"]).method == "sokolova"
    assert inspect.signature(look).parameters["method"].default == "sokolova"
