"""The objectness head of `mlkit crop --method auto`: its grid against a plain loop, the shipped weights, the
mirror average, which backbones get it, and, with the pretrained MobileNetV2, a box on a photograph-like
texture that the boundary prior alone misses."""

import numpy as np
import pytest

from mlkit.cropping import objectness
from mlkit.cropping.auto import is_plain
from mlkit.cropping.boxes import iou
from mlkit.cropping.config import CropConfig
from mlkit.cropping.objectness import STRIDES, load_heads, save_heads, to_grid
from mlkit.cropping.parts import backbone_parts
from mlkit.looking.crop import Cropper


def test_to_grid_averages_finer_maps_and_repeats_coarser_ones_as_a_loop_does():
    rng = np.random.default_rng(0)
    size, side = 64, 8
    maps = [rng.normal(size=(2, size // stride, size // stride, 3)).astype("float32") for stride in STRIDES]
    grid = to_grid(maps, (side, side))
    assert grid.shape == (2, side, side, 3 * len(STRIDES))
    expected = np.zeros_like(grid)
    for n in range(2):
        for row in range(side):
            for col in range(side):
                parts = []
                for features, stride in zip(maps, STRIDES):
                    if stride <= 8:
                        factor = 8 // stride
                        parts.append(features[n, row * factor:(row + 1) * factor,
                                              col * factor:(col + 1) * factor].mean(axis=(0, 1)))
                    else:
                        factor = stride // 8
                        parts.append(features[n, row // factor, col // factor])
                expected[n, row, col] = np.concatenate(parts)
    np.testing.assert_allclose(grid, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("version, dilations", [("1", [1, 2, 4]), ("2", [1, 2, 4, 8])])
def test_the_shipped_heads_load_and_save_back_unchanged(tmp_path, version, dilations):
    path = objectness.HEAD_FILES[version]
    assert path.is_file(), "the objectness heads' weights must ship inside the package"
    heads = load_heads(path)
    assert len(heads) == 2
    for head, mean, std in heads:
        assert objectness.head_dilations(head) == dilations
        assert head.input.shape[-1] == len(mean) == len(std) == sum(objectness.CHANNELS) + 1
        assert np.all(std > 0) and np.all(np.isfinite(mean))
    save_heads(heads, tmp_path / "copy.npz")
    copies = load_heads(tmp_path / "copy.npz")
    inputs = np.random.default_rng(1).normal(size=(1, 6, 6, len(heads[0][1]))).astype("float32")
    for (head, mean, _), (copy, copy_mean, _) in zip(heads, copies):
        np.testing.assert_allclose(np.asarray(copy(inputs)), np.asarray(head(inputs)), rtol=1e-6)
        np.testing.assert_array_equal(copy_mean, mean)
    # The two heads differ (two seeds), so their mean is not either one's map.
    assert not np.allclose(np.asarray(heads[0][0](inputs)), np.asarray(heads[1][0](inputs)))


def test_each_head_keeps_its_own_dilations_and_a_file_without_them_reads_as_the_first_heads(tmp_path):
    channels = 5
    inputs = np.random.default_rng(2).normal(size=(1, 9, 9, channels)).astype("float32")
    heads = [(objectness.build_head(channels, dilations), np.zeros(channels), np.ones(channels))
             for dilations in ((1, 2, 4), (1, 2, 4, 8))]
    save_heads(heads, tmp_path / "mixed.npz")
    copies = load_heads(tmp_path / "mixed.npz")
    assert [objectness.head_dilations(copy) for copy, _, _ in copies] == [[1, 2, 4], [1, 2, 4, 8]]
    for (head, _, _), (copy, _, _) in zip(heads, copies):
        np.testing.assert_allclose(np.asarray(copy(inputs)), np.asarray(head(inputs)), rtol=1e-6)
    # A file from before heads recorded their dilations (the first shipped file) holds (1, 2, 4) heads.
    with np.load(tmp_path / "mixed.npz") as stored:
        older = {key: stored[key] for key in stored.files if not key.endswith("_dilations") and
                 not key.startswith("h1_")}
    older["heads"] = np.array(1)
    np.savez(tmp_path / "older.npz", **older)
    (copy, _, _), = load_heads(tmp_path / "older.npz")
    assert objectness.head_dilations(copy) == [1, 2, 4]


def test_a_missing_head_file_is_a_clear_error(tmp_path):
    from mlkit.errors import MlkitError

    with pytest.raises(MlkitError, match="objectness head"):
        load_heads(tmp_path / "absent.npz")


def test_the_mirror_average_makes_a_mirrored_image_give_the_mirrored_map():
    parts = backbone_parts("mobilenetv2", "none", 64)
    model = objectness_model(parts)
    image = np.random.default_rng(2).integers(0, 256, (1, 64, 64, 3)).astype("float32")
    ahead, mirror = run(model, image), run(model, image[:, :, ::-1])
    first = objectness.objectness_maps(ahead, mirror)[0]
    second = objectness.objectness_maps(mirror, ahead)[0]
    np.testing.assert_allclose(second, first[:, ::-1], rtol=1e-5, atol=1e-6)
    assert first.shape == (8, 8) and 0 <= first.min() and first.max() <= 1


def objectness_model(parts):
    from mlkit.cropping.saliency import activation_model

    return activation_model(parts.backbone, objectness.head_layers(parts.backbone), parts.preprocessing, 64)


def run(model, batch):
    return [np.asarray(output) for output in model(np.ascontiguousarray(batch), training=False)]


@pytest.mark.parametrize("size", [100, 230])
def test_the_heads_run_at_a_side_that_is_not_a_multiple_of_32(size):
    # MobileNetV2's maps round up there (230 px: 115, 58, 29, 15 cells): every map goes to the stride-8 grid.
    image = np.random.default_rng(4).integers(0, 256, (120, 160, 3)).astype(np.uint8)
    cropper = Cropper(CropConfig(weights="none", image_size=size))
    assert cropper.finder.learned
    (top, left, bottom, right), = cropper.boxes([image])
    assert 0 <= top < bottom <= 120 and 0 <= left < right <= 160


def test_only_a_backbone_with_the_heads_layers_gets_the_head():
    assert objectness.applies(backbone_parts("mobilenetv2", "none", 64).backbone)
    other = backbone_parts("efficientnetb0", "none", 64).backbone
    assert not objectness.applies(other)
    config = CropConfig(backbone="efficientnetb0", weights="none", image_size=64)
    assert not Cropper(config).finder.learned
    assert Cropper(CropConfig(weights="none", image_size=64)).finder.learned
    assert not Cropper(CropConfig(method="border", weights="none", image_size=64)).finder.learned


def leafy(height, width, seed):
    """uint8 (height, width, 3): a photograph-like texture, blobs of greens and browns at several scales."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    layers = [ndimage.gaussian_filter(rng.normal(size=(height, width)), sigma) * sigma for sigma in (2, 6, 14)]
    texture = sum(layers)
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    palette = np.array([[40, 70, 30], [90, 120, 40], [120, 90, 50], [60, 100, 60]], float)
    index = np.clip((texture * 3.999).astype(int), 0, 3)
    return (palette[index] + rng.normal(0, 8, (height, width, 3))).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("heads", sorted(objectness.HEAD_FILES))
def test_auto_finds_a_red_object_on_a_leafy_texture(pretrained_mobilenetv2, heads):
    from test_looking_crop import shape_image

    cropper = Cropper(CropConfig(weights=pretrained_mobilenetv2, margin=0.0, min_size=0.0, heads=heads))
    boxes = [(60, 80, 150, 170), (30, 180, 110, 290), (120, 40, 210, 120)]
    images = [shape_image(240, 320, box, colour=(200, 30, 40), background=None, base=leafy(240, 320, seed))
              for seed, box in enumerate(boxes)]
    assert not any(is_plain(image, 30) for image in images)
    found = cropper.boxes(images)
    assert all(iou(box_found, box) >= 0.8 for box_found, box in zip(found, boxes)), found
    # The boundary prior alone (auto before the head) goes to the texture's own blobs on these.
    border = Cropper(CropConfig(weights=pretrained_mobilenetv2, margin=0.0, min_size=0.0, photo_map="border"))
    assert np.mean([iou(box_found, box) for box_found, box in zip(border.boxes(images), boxes)]) < 0.5


def test_a_crop_json_from_before_the_head_replays_with_the_border_map():
    """predict rebuilds a crop from crop.json: one written before --photo-map existed was made with border."""
    before = CropConfig().fingerprint()
    before.pop("photo_map")
    assert CropConfig.from_settings(before).photo_map == "border"
    assert CropConfig.from_settings(CropConfig().fingerprint()).photo_map == "objectness"


def test_a_crop_json_from_the_first_heads_replays_with_them_and_the_two_sets_give_other_maps():
    """A crop.json written before --heads existed was cut with the first heads; predict must crop with them."""
    first = CropConfig().fingerprint()
    first.pop("heads")
    assert CropConfig.from_settings(first).heads == "1"
    assert CropConfig.from_settings(CropConfig().fingerprint()).heads == objectness.HEADS == "2"
    rng = np.random.default_rng(4)
    maps = [rng.normal(size=(1, 64 // stride, 64 // stride, channels)).astype("float32")
            for stride, channels in zip(STRIDES, objectness.CHANNELS)]
    first_map, second_map = (objectness.objectness_maps(maps, path=objectness.HEAD_FILES[heads])[0]
                             for heads in ("1", "2"))
    assert first_map.shape == second_map.shape == (8, 8)
    assert not np.allclose(first_map, second_map, atol=1e-3)


def test_photo_map_is_a_flag_of_crop_and_look_and_a_bad_value_is_refused():
    from mlkit.cli import build_parser
    from mlkit.errors import MlkitError

    parser = build_parser()
    assert parser.parse_args(["crop", "m.csv", "--out", "o"]).photo_map == "objectness"
    assert parser.parse_args(["crop", "m.csv", "--out", "o", "--photo-map", "border"]).photo_map == "border"
    assert parser.parse_args(["look", "run", "i.png", "--out", "o", "--photo-map", "border"]).photo_map == "border"
    with pytest.raises(MlkitError, match="--photo-map"):
        CropConfig(photo_map="edges")
    assert parser.parse_args(["crop", "m.csv", "--out", "o"]).heads == "2"
    assert parser.parse_args(["crop", "m.csv", "--out", "o", "--heads", "1"]).heads == "1"
    assert parser.parse_args(["look", "run", "i.png", "--out", "o", "--heads", "1"]).heads == "1"
    with pytest.raises(MlkitError, match="--heads"):
        CropConfig(heads="3")


def training_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "train_objectness.py"
    spec = importlib.util.spec_from_file_location("train_objectness", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_heads_training_target_is_the_pasted_cutouts_alpha(tmp_path):
    from PIL import Image, ImageDraw

    script = training_script()
    icon = Image.new("RGBA", (60, 40), (0, 0, 0, 0))
    ImageDraw.Draw(icon).rectangle((10, 5, 49, 34), fill=(250, 10, 10, 255))
    icon.save(tmp_path / "icon.png")
    background = Image.fromarray(np.full((120, 160, 3), 30, np.uint8))
    fill = Image.fromarray(np.full((50, 50, 3), 200, np.uint8))
    for source in (None, fill):
        canvas, alpha = script.composite(np.random.default_rng(3), tmp_path / "icon.png", background, source)
        assert canvas.shape == (120, 160, 3) and alpha.shape == (120, 160)
        changed = np.any(canvas != 30, axis=-1)
        covered = alpha > 0.5
        assert covered.sum() > 0 and np.array_equal(changed, covered)
        green = canvas[covered][:, 1]
        # Drawn as it is, the icon's red (green 10); as a silhouette, the fill's grey 200 scaled by 0.6-1.4 and
        # shifted by up to 40 (green at least 80).
        assert (green == 10).all() if source is None else (green >= 80).all()


def test_auto_on_mobilenetv2_reads_images_at_320_px_and_the_rest_at_224_unless_told():
    assert CropConfig().image_size == 320
    assert CropConfig(photo_map="border").image_size == 224
    assert CropConfig(method="sokolova").image_size == 224
    assert CropConfig(backbone="efficientnetb0").image_size == 224
    assert CropConfig(image_size=96).image_size == 96
    assert CropConfig().fingerprint()["image_size"] == 320  # crop.json holds the size used, not "default"
