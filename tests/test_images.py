"""mlkit.images: every kind of file real collections hold becomes RGB uint8 HxWx3, or a reason why not.

All images are made with PIL in tmp_path; nothing is downloaded.
"""

import hashlib
import io
import warnings

import numpy as np
import pytest
from PIL import Image

from mlkit.images import (
    DEFAULT_BACKGROUND,
    ImageReadError,
    augment_view,
    decode_image,
    load_image,
    parse_background,
    read_bytes,
    resize_array,
    resize_images,
    sha256_bytes,
    view_seed,
)

RED, BLUE = (255, 0, 0), (0, 0, 255)


def assert_rgb(array, height=None, width=None):
    assert isinstance(array, np.ndarray)
    assert array.dtype == np.uint8
    assert array.ndim == 3 and array.shape[2] == 3
    if height is not None:
        assert array.shape[:2] == (height, width)


def save(image, path, fmt=None, **params):
    image.save(path, fmt, **params)
    return path


def noisy_rgb(width=64, height=48, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def close(pixel, colour, tol=0):
    return all(abs(int(p) - int(c)) <= tol for p, c in zip(pixel, colour))


# ---------------------------------------------------------------- parse_background


@pytest.mark.parametrize(
    "text, expected",
    [
        ("white", (255, 255, 255)),
        ("black", (0, 0, 0)),
        ("  White ", (255, 255, 255)),
        ("#102030", (16, 32, 48)),
        ("#FFfF00", (255, 255, 0)),
        ("1,2,3", (1, 2, 3)),
        ("255, 0 ,10", (255, 0, 10)),
        ("grey", (128, 128, 128)),
    ],
)
def test_parse_background_forms(text, expected):
    assert parse_background(text) == expected


@pytest.mark.parametrize("text", ["", "purple", "#12345", "#gggggg", "1,2", "1,2,3,4", "256,0,0", "-1,0,0", "a,b,c", "1.5,2,3"])
def test_parse_background_rejects_bad_values(text):
    with pytest.raises(ValueError, match="not a colour"):
        parse_background(text)


# ---------------------------------------------------------------- modes


def test_rgb_png_round_trips_exactly(tmp_path):
    image = noisy_rgb()
    path = save(image, tmp_path / "rgb.png")
    array = load_image(path)
    assert_rgb(array, 48, 64)
    np.testing.assert_array_equal(array, np.asarray(image))


def test_grayscale_L(tmp_path):
    values = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    path = save(Image.fromarray(values, mode="L"), tmp_path / "gray.png")
    array = load_image(path)
    assert_rgb(array, 16, 16)
    for channel in range(3):
        np.testing.assert_array_equal(array[..., channel], values)


def test_one_bit(tmp_path):
    image = Image.new("1", (10, 6), 0)
    image.putpixel((3, 2), 1)
    path = save(image, tmp_path / "bits.png")
    array = load_image(path)
    assert_rgb(array, 6, 10)
    assert set(np.unique(array)) <= {0, 255}
    assert tuple(array[2, 3]) == (255, 255, 255)
    assert tuple(array[0, 0]) == (0, 0, 0)


def palette_image():
    image = Image.new("P", (8, 4), 0)
    palette = [0] * 768
    palette[0:3] = [10, 200, 30]  # index 0: green
    palette[3:6] = [250, 5, 5]  # index 1: red
    palette[6:9] = [0, 0, 0]  # index 2: black (used as the transparent index)
    image.putpalette(palette)
    image.putpixel((1, 1), 1)
    image.putpixel((5, 2), 2)
    return image


def test_palette_without_transparency(tmp_path):
    path = save(palette_image(), tmp_path / "pal.png")
    assert "transparency" not in Image.open(path).info
    array = load_image(path, background=(0, 0, 255))
    assert_rgb(array, 4, 8)
    assert tuple(array[0, 0]) == (10, 200, 30)
    assert tuple(array[1, 1]) == (250, 5, 5)
    # No transparency: index 2 stays black, the background is not used.
    assert tuple(array[2, 5]) == (0, 0, 0)


def test_palette_with_transparency(tmp_path):
    path = save(palette_image(), tmp_path / "pal_t.png", transparency=2)
    assert Image.open(path).info.get("transparency") == 2
    array = load_image(path, background=(0, 0, 255))
    assert_rgb(array, 4, 8)
    assert tuple(array[2, 5]) == (0, 0, 255)  # transparent index -> background
    assert tuple(array[1, 1]) == (250, 5, 5)
    assert tuple(array[0, 0]) == (10, 200, 30)


def test_palette_gif_with_transparency(tmp_path):
    path = save(palette_image(), tmp_path / "pal_t.gif", transparency=2)
    array = load_image(path, background=(1, 2, 3))
    assert_rgb(array, 4, 8)
    assert tuple(array[2, 5]) == (1, 2, 3)
    assert tuple(array[1, 1]) == (250, 5, 5)


def rgba_image():
    image = Image.new("RGBA", (6, 5), (0, 0, 0, 0))  # fully transparent
    image.putpixel((2, 3), (200, 100, 50, 255))  # opaque
    image.putpixel((4, 1), (0, 0, 0, 128))  # half-transparent black
    return image


@pytest.mark.parametrize("background", ["white", "black", "#102030", "1,2,3"])
def test_rgba_composited_on_background(tmp_path, background):
    colour = parse_background(background)
    path = save(rgba_image(), tmp_path / "rgba.png")
    array = load_image(path, background=colour)
    assert_rgb(array, 5, 6)
    assert tuple(array[0, 0]) == colour  # transparent pixel becomes the background
    assert tuple(array[3, 2]) == (200, 100, 50)  # opaque pixel keeps its colour
    # Half-transparent black over the background: about half the background.
    assert close(array[1, 4], [c * 127 / 255 for c in colour], tol=2)


def test_rgba_default_background_is_white():
    buffer = io.BytesIO()
    rgba_image().save(buffer, "PNG")
    array = decode_image(buffer.getvalue())
    assert DEFAULT_BACKGROUND == (255, 255, 255)
    assert tuple(array[0, 0]) == (255, 255, 255)
    assert tuple(array[3, 2]) == (200, 100, 50)


def test_rgba_webp(tmp_path):
    path = save(rgba_image().resize((24, 20), Image.Resampling.NEAREST), tmp_path / "rgba.webp", lossless=True)
    array = load_image(path, background=(0, 0, 0))
    assert_rgb(array, 20, 24)
    assert tuple(array[0, 0]) == (0, 0, 0)
    assert tuple(array[13, 9]) == (200, 100, 50)


def test_LA_composited(tmp_path):
    image = Image.new("LA", (5, 4), (0, 0))
    image.putpixel((1, 2), (90, 255))
    path = save(image, tmp_path / "la.png")
    assert Image.open(path).mode == "LA"
    array = load_image(path, background=(16, 32, 48))
    assert_rgb(array, 4, 5)
    assert tuple(array[0, 0]) == (16, 32, 48)
    assert tuple(array[2, 1]) == (90, 90, 90)


def test_cmyk_jpeg_keeps_colour(tmp_path):
    image = Image.new("CMYK", (32, 24), (0, 255, 255, 0))  # pure red in CMYK
    path = save(image, tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    array = load_image(path)
    assert_rgb(array, 24, 32)
    red, green, blue = (array[..., c].astype(int) for c in range(3))
    mostly_red = (red > 200) & (green < 60) & (blue < 60)
    assert mostly_red.mean() > 0.95


def test_draft_decodes_a_large_jpeg_smaller_and_leaves_a_png_whole(tmp_path):
    image = Image.new("RGB", (800, 600), RED)
    image.paste(BLUE, (400, 0, 800, 600))
    jpeg = save(image, tmp_path / "large.jpg", quality=90)
    small = decode_image(jpeg.read_bytes(), jpeg, draft=(128, 128))
    assert_rgb(small, 150, 200)
    assert close(small[75, 50], RED, tol=40) and close(small[75, 150], BLUE, tol=40)
    png = save(image, tmp_path / "large.png")
    assert_rgb(decode_image(png.read_bytes(), png, draft=(128, 128)), 600, 800)


def test_cmyk_jpeg_two_colours_not_inverted(tmp_path):
    image = Image.new("CMYK", (32, 16), (0, 0, 0, 0))  # white
    image.paste((255, 255, 0, 0), (16, 0, 32, 16))  # blue on the right half
    path = save(image, tmp_path / "cmyk2.jpg", quality=95)
    array = load_image(path)
    assert close(array[8, 4], (255, 255, 255), tol=40)
    assert close(array[8, 28], BLUE, tol=60)


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 32768, 65535, 257]], dtype=np.uint16).repeat(3, axis=0)
    path = save(Image.fromarray(values), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")  # I;16 (or I on older Pillow)
    array = load_image(path)
    assert_rgb(array, 3, 4)
    row = array[1, :, 0]
    assert row[0] == 0
    assert abs(int(row[1]) - 128) <= 1  # mid-grey, not clipped to white
    assert row[2] == 255
    assert row[3] == 1
    assert (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()


def test_32bit_int_and_float_grayscale_scaled(tmp_path):
    big = Image.fromarray(np.array([[0, 1_000_000, 2_000_000]], dtype=np.int32), mode="I")
    array = decode_image(_tiff_bytes(big))
    assert_rgb(array, 1, 3)
    assert array[0, 0, 0] == 0 and abs(int(array[0, 1, 0]) - 128) <= 1 and array[0, 2, 0] == 255

    floats = Image.fromarray(np.array([[-1.0, 0.0, 1.0]], dtype=np.float32), mode="F")
    array = decode_image(_tiff_bytes(floats))
    assert_rgb(array, 1, 3)
    assert array[0, 0, 0] == 0 and abs(int(array[0, 1, 0]) - 128) <= 1 and array[0, 2, 0] == 255


def _tiff_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, "TIFF")
    return buffer.getvalue()


# ---------------------------------------------------------------- EXIF orientation


def exif_jpeg(path, orientation):
    """40 wide x 20 tall as stored: left half red, right half blue."""
    image = Image.new("RGB", (40, 20), RED)
    image.paste(BLUE, (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


def test_exif_orientation_6_rotates_clockwise(tmp_path):
    array = load_image(exif_jpeg(tmp_path / "o6.jpg", 6))
    assert_rgb(array, 40, 20)  # width and height swapped
    # Rotated 90 degrees clockwise: the stored left (red) is now on top.
    assert close(array[5, 10], RED, tol=40)
    assert close(array[35, 10], BLUE, tol=40)


def test_exif_orientation_8_rotates_counterclockwise(tmp_path):
    array = load_image(exif_jpeg(tmp_path / "o8.jpg", 8))
    assert_rgb(array, 40, 20)
    # Rotated 90 degrees counter-clockwise: the stored left (red) is now at the bottom.
    assert close(array[5, 10], BLUE, tol=40)
    assert close(array[35, 10], RED, tol=40)


def test_exif_orientation_1_left_alone(tmp_path):
    array = load_image(exif_jpeg(tmp_path / "o1.jpg", 1))
    assert_rgb(array, 20, 40)
    assert close(array[10, 5], RED, tol=40)
    assert close(array[10, 35], BLUE, tol=40)


# ---------------------------------------------------------------- unreadable files


@pytest.mark.parametrize("fmt, suffix", [("JPEG", "jpg"), ("PNG", "png")])
def test_truncated_file(tmp_path, fmt, suffix):
    buffer = io.BytesIO()
    noisy_rgb(128, 96).save(buffer, fmt)
    data = buffer.getvalue()
    path = tmp_path / f"cut.{suffix}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as caught:
        load_image(path)
    reason = caught.value.reason
    assert "truncated" in reason or "corrupt" in reason
    assert caught.value.path == str(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("keep", [8, 40])
def test_header_only_file(tmp_path, keep):
    buffer = io.BytesIO()
    noisy_rgb().save(buffer, "PNG")
    with pytest.raises(ImageReadError) as caught:
        decode_image(buffer.getvalue()[:keep], path="x.png")
    assert "truncated" in caught.value.reason or "corrupt" in caught.value.reason


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError) as caught:
        load_image(path)
    assert "empty" in caught.value.reason


def test_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(ImageReadError) as caught:
        load_image(path)
    assert caught.value.reason == "missing file"
    assert caught.value.path == str(path)


def test_directory_is_not_readable(tmp_path):
    with pytest.raises(ImageReadError) as caught:
        read_bytes(tmp_path)
    assert "cannot read" in caught.value.reason


def test_random_garbage(tmp_path):
    path = tmp_path / "garbage.jpg"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ImageReadError) as caught:
        load_image(path)
    assert caught.value.reason


def test_jpeg_header_then_garbage(tmp_path):
    data = b"\xff\xd8\xff\xe0" + np.random.default_rng(2).integers(0, 256, 2048, dtype=np.uint8).tobytes()
    with pytest.raises(ImageReadError):
        decode_image(data)


def _png_100x100():
    buffer = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buffer, "PNG")
    return buffer.getvalue()


def test_decompression_bomb_warning_is_a_read_error_when_filter_armed(monkeypatch):
    # 10,000 pixels against a limit of 6,000: over the limit, under twice it (a warning in PIL).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageReadError) as caught:
            decode_image(_png_100x100())
    assert "too large" in caught.value.reason


def test_decompression_bomb_warning_is_a_read_error_without_help(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6_000)
    with pytest.raises(ImageReadError) as caught:
        decode_image(_png_100x100())
    assert "too large" in caught.value.reason


def test_huge_decompression_bomb_is_a_read_error(monkeypatch):
    # Over twice the limit: PIL raises DecompressionBombError instead of warning.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    with pytest.raises(ImageReadError) as caught:
        decode_image(_png_100x100())
    assert "too large" in caught.value.reason


def test_sha256_bytes():
    assert sha256_bytes(b"abc") == hashlib.sha256(b"abc").hexdigest()


# ---------------------------------------------------------------- augmentation and seeds


def test_augment_view_deterministic_per_seed():
    array = np.asarray(noisy_rgb(64, 48))
    before = array.copy()
    first = augment_view(array, 123)
    again = augment_view(array, 123)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(array, before)  # input untouched
    other = augment_view(array, 124)
    assert first.shape != other.shape or not np.array_equal(first, other)


def test_augment_view_output_is_rgb_uint8():
    array = np.asarray(noisy_rgb(64, 48))
    for seed in range(20):
        view = augment_view(array, seed)
        assert_rgb(view)
        # A crop of 85-100% of each side.
        assert 0.84 * 48 <= view.shape[0] <= 48
        assert 0.84 * 64 <= view.shape[1] <= 64


def test_augment_view_tiny_image():
    view = augment_view(np.zeros((1, 1, 3), dtype=np.uint8), 7)
    assert_rgb(view, 1, 1)


def test_augment_view_seeds_vary():
    array = np.asarray(noisy_rgb(32, 32))
    views = {augment_view(array, seed).tobytes() for seed in range(10)}
    assert len(views) == 10


def test_view_seed_is_stable():
    assert view_seed("cat.jpg", 0) == 7568063155349051293
    assert view_seed("cat.jpg", 1) == 5033409151106465601
    digest = hashlib.sha256(b"dog.png:3").digest()
    assert view_seed("dog.png", 3) == int.from_bytes(digest[:8], "little") >> 1
    assert view_seed("cat.jpg", 0) == view_seed("cat.jpg", 0)
    seeds = {view_seed(key, view) for key in ("a", "b", "c") for view in range(5)}
    assert len(seeds) == 15
    assert all(0 <= seed < 2**63 for seed in seeds)


# ---------------------------------------------------------------- resize


@pytest.mark.parametrize("size", [16, 80])
def test_resize_images_matches_keras_resizing(size):
    import keras

    images = np.random.default_rng(3).integers(0, 256, (2, 37, 53, 3), dtype=np.uint8).astype(np.float32)
    ours = np.asarray(resize_images(images, size))
    theirs = np.asarray(keras.layers.Resizing(size, size, antialias=True)(images))
    assert ours.shape == (2, size, size, 3)
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_resize_images_single_image():
    image = np.random.default_rng(4).integers(0, 256, (30, 20, 3), dtype=np.uint8).astype(np.float32)
    ours = np.asarray(resize_images(image, 12))
    assert ours.shape == (12, 12, 3)
    batched = np.asarray(resize_images(image[None], 12))[0]
    np.testing.assert_allclose(ours, batched, atol=1e-4)


@pytest.mark.parametrize(
    "shape",
    [(1, 1), (1, 7), (9, 1), (2, 3), (32, 32), (31, 33), (96, 96), (97, 95), (301, 407), (500, 20), (13, 611)],
)
def test_resize_array_equals_the_tf_resize_bit_for_bit(shape):
    """The pipelines' NumPy resize must be the exported model's resize exactly, shrinking and enlarging."""
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    for size in (1, 5, 32, 96, 224):
        ours = resize_array(image, size)
        theirs = np.asarray(resize_images(image.astype(np.float32), size))
        assert ours.dtype == np.float32 and ours.shape == (size, size, 3)
        np.testing.assert_array_equal(ours, theirs, err_msg=f"{shape} -> {size}")


def test_resize_array_keeps_channels_and_handles_float_input():
    image = np.random.default_rng(5).uniform(0, 255, (40, 30, 3)).astype(np.float32)
    np.testing.assert_array_equal(resize_array(image, 16), np.asarray(resize_images(image, 16)))
    gray = np.random.default_rng(6).integers(0, 256, (40, 30, 1), dtype=np.uint8)
    assert resize_array(gray, 8).shape == (8, 8, 1)


def test_resize_array_converts_a_block_at_a_time_and_stays_bit_for_bit(monkeypatch):
    """Issue 24, item 18: the whole photo became float32 before resizing (2 GB for 9000 x 9000)."""
    import tracemalloc

    import mlkit.images

    image = np.random.default_rng(7).integers(0, 256, (1500, 1400, 3), dtype=np.uint8)
    whole = resize_array(image, 96)
    monkeypatch.setattr(mlkit.images, "RESIZE_BLOCK_VALUES", 1 << 18)  # blocks of 1 MB, as 16 MB are to a big photo
    tracemalloc.start()
    resize_array(image, 96)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < image.size * 4 / 4, f"peak {peak >> 20} MB: the image was converted whole"
    monkeypatch.setattr(mlkit.images, "RESIZE_BLOCK_VALUES", 5000)  # many uneven blocks
    np.testing.assert_array_equal(resize_array(image, 96), whole)
    np.testing.assert_array_equal(resize_array(image[:301, :407], 224),
                                  np.asarray(resize_images(image[:301, :407].astype(np.float32), 224)))
