"""mlkit look: one grid per image, maps that fine-tuning changes, captions shown, and crop --model;
predict crops as the model's training images were cropped."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mlkit.bottlenecks.extract import cache_features
from mlkit.cli import main
from mlkit.cropping.config import CropConfig, manifest_crop
from mlkit.data.manifest import read_manifest, write_manifest
from mlkit.data.split import split_manifest
from mlkit.data.synth import synthesize
from mlkit.looking.crop import Cropper, crop
from mlkit.looking.look import Eyes, before_parts, look
from mlkit.looking.networks import backbone_parts, model_parts
from mlkit.models.finetune import finetune
from mlkit.models.predict import predict
from mlkit.tuning.search import tune_top

SIZE = 48


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, pretrained_mobilenetv2):
    """(workdir, run, images): a pretrained MobileNetV2 fine-tuned end to end, hard, on synthetic shapes."""
    root = tmp_path_factory.mktemp("look")
    synthesize(root / "data", task="multilabel", n=48, size=SIZE, seed=0)
    split_manifest(root / "data" / "manifest.csv", val=0.25, test=0.25, seed=0)
    work = root / "ws"
    cache = cache_features(root / "data" / "manifest.csv", work, backbone="mobilenetv2", weights=pretrained_mobilenetv2,
                           image_size=SIZE, batch_size=32, progress=False)
    summary = tune_top(cache.path, work, units=16, lr=0.01, batch=16, epochs=2, verbose=False)
    result = finetune(cache.path, summary.run.iloc[0], work, freeze="0", lr=0.001, epochs=2, warmup_epochs=0,
                      augment="none", progress=False)
    images = sorted((root / "data" / "images").glob("*.png"))[:2]
    return work, result.run, images


def test_fine_tuning_changes_the_maps_and_compare_shows_the_network_before(finetuned, pretrained_mobilenetv2):
    work, run, images = finetuned
    config = CropConfig(image_size=SIZE)
    pixels = np.asarray(Image.open(images[0]).convert("RGB"))
    after = Eyes(model_parts(run, work)[0], config)
    record = model_parts(run, work)[1]
    before = Eyes(before_parts("before", record, work), config)
    imagenet = Eyes(backbone_parts("mobilenetv2", pretrained_mobilenetv2, SIZE), config)
    heat_after, heat_before, heat_imagenet = (eyes.early_map(pixels)[0] for eyes in (after, before, imagenet))
    # "before" is the ImageNet backbone the run started from; fine-tuning moved its first layers.
    assert np.allclose(heat_before, heat_imagenet, atol=1e-6)
    assert np.abs(heat_after - heat_before).mean() > 1e-3  # float noise is under 1e-6 (the line above)
    cam_after = after.grad_cam(pixels, [0])[0]
    cam_before = before.grad_cam(pixels, [0])[0]
    assert cam_after.shape == cam_before.shape and not np.allclose(cam_after, cam_before, atol=1e-6)


def test_look_writes_one_grid_per_image_and_crop_reads_the_runs_layers(finetuned, tmp_path, capsys):
    work, run, images = finetuned
    code = main(["look", run, *map(str, images), "--out", str(tmp_path / "look"), "--workdir", str(work),
                 "--compare", "before", "--top", "2"])
    assert code == 0 and "2 grid(s)" in capsys.readouterr().out
    grids = sorted((tmp_path / "look").glob("*.png"))
    assert [path.name.split("_", 1)[1] for path in grids] == [path.name for path in images]
    with Image.open(grids[0]) as picture:
        assert picture.width == 4 * 200 and picture.height > 2 * 200  # image, early map, 2 labels; 2 rows
    tuned = Cropper(CropConfig(model=run, layers=8), workdir=work)
    assert tuned.image_size == SIZE and tuned.source == run
    assert look(run, [str(images[0])], tmp_path / "again", workdir=work, top=1)[0].is_file()


@pytest.mark.parametrize("method", ["sokolova", "auto"])
def test_predict_crops_an_image_as_the_training_images_were_cropped(method, finetuned, pretrained_mobilenetv2, tmp_path,
                                                                   capsys):
    work, run, images = finetuned
    one_row = write_manifest(pd.DataFrame({"image": [str(images[0])], "labels": ["any"]}), tmp_path / "one.csv")
    cropped = crop(one_row, tmp_path / "cropped", method=method, weights=pretrained_mobilenetv2, image_size=SIZE,
                   tolerance=25.0, progress=False)
    # The record finetune writes for a cache of cropped.manifest (record.py), on a copy of the run.
    record = json.loads((work / "models" / f"{run}.json").read_text())
    record["crop"] = manifest_crop(cropped.manifest)
    settings = record["crop"]["settings"]
    assert (settings["image_size"], settings["method"], settings["tolerance"]) == (SIZE, method, 25.0)
    assert manifest_crop(images[0].parents[1] / "manifest.csv") is None
    shutil.copy(work / "models" / f"{run}.keras", tmp_path / "cropping.keras")
    (tmp_path / "cropping.json").write_text(json.dumps(record))
    model = str(tmp_path / "cropping.keras")
    assert main(["predict", model, str(images[0]), "--workdir", str(work), "--csv", str(tmp_path / "p.csv")]) == 0
    assert "1 image(s) cropped first" in capsys.readouterr().out
    row = pd.read_csv(tmp_path / "p.csv").iloc[0]
    precropped = next((tmp_path / "cropped" / "images").glob(f"*_{images[0].stem}.png"))  # what crop cut
    given = predict(model, [precropped], workdir=work, crop=False)[0]
    assert given.crop_box is None and row["crop_box"] == read_manifest(cropped.manifest).rows["crop_box"][0]
    scores = dict(pair.rsplit(":", 1) for pair in row["ranked"].split("|"))
    assert {name: float(score) for name, score in scores.items()} == pytest.approx(dict(given.ranked), rel=1e-5)
