"""mlkit.thumbnails: copies of an image correlate, distinct images and flat ones do not, unusable files are named."""

import numpy as np
from audit_data import VARIANTS, variant
from PIL import Image

from mlkit.data.synth import synthesize
from mlkit.images import load_image
from mlkit.thumbnails import read_thumbnails, thumbnail, thumbnail_vectors

THRESHOLD = 0.95  # AuditConfig().near_threshold


def test_copies_correlate_and_distinct_images_do_not(tmp_path):
    manifest = synthesize(tmp_path, task="multilabel", n=12, size=96, seed=0)
    images = sorted((manifest.parent / "images").glob("*.png"))
    for path in images[:3]:
        with Image.open(path) as image:
            copies = [variant(image, kind) for kind in VARIANTS]
        thumbnails = [thumbnail(load_image(path))] + [thumbnail(np.asarray(copy.convert("RGB"))) for copy in copies]
        vectors = thumbnail_vectors(np.stack(thumbnails))
        assert (vectors[1:] @ vectors[0] >= THRESHOLD).all()
    vectors = thumbnail_vectors(np.stack([thumbnail(load_image(path)) for path in images]))
    similarities = vectors @ vectors.T
    assert similarities[~np.eye(len(images), dtype=bool)].max() < THRESHOLD
    assert np.allclose(np.diag(similarities), 1.0, atol=1e-5)


def test_a_flat_image_has_no_pattern_to_match():
    flat = np.full((20, 30, 3), 200, np.uint8)
    assert thumbnail(flat).shape == (8, 8, 3)
    assert not thumbnail_vectors(thumbnail(flat)[None]).any()


def test_read_thumbnails_names_missing_and_changed_files(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels[::-1]).save(tmp_path / "b.png")
    paths = [tmp_path / "a.png", tmp_path / "b.png", tmp_path / "missing.png"]
    thumbnails, problems = read_thumbnails(paths, sha256=["", "0" * 64, ""])
    assert (thumbnails[0] == thumbnail(pixels)).all()
    assert problems == {1: "changed since it was cached", 2: "missing file"}
    assert not thumbnails[1:].any()
