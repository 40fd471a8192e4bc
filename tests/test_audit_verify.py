"""mlkit.auditing.verify: near-duplicate candidates verified on their images (flags, real stamps, files gone)."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from audit_data import VERTICAL_FLAGS, plant_near_duplicates, tricolour, variant, write_flags
from PIL import Image

import mlkit
from mlkit.auditing.config import AuditConfig
from mlkit.auditing.verify import aligned_match, crops, verify_pairs
from mlkit.bottlenecks.cache import write_cache
from mlkit.images import load_image, sha256_bytes
from mlkit.thumbnails import thumbnail, thumbnail_vectors

STAMPS = Path("/usr/share/tuxpaint/stamps")
# Thin outlines that a 5% crop moves by a fifth of a thumbnail pixel: 8 x 8 thumbnails alone missed their copies.
THIN_STAMPS = ("symbols/alphabets/english/outlined/lowercase/a_outline.png",
               "symbols/alphabets/english/outlined/uppercase/P_outline.png",
               "symbols/alphabets/english/outlined/uppercase/Z_outline.png", "symbols/chess/w_4_knight.png")
OTHER_STAMPS = ("symbols/alphabets/english/outlined/lowercase/b_outline.png",
                "symbols/alphabets/english/outlined/lowercase/d_outline.png",
                "symbols/alphabets/english/outlined/uppercase/R_outline.png", "symbols/chess/w_3_bishop.png")


def cache_of(manifest, thumbnails=False, sha256=False):
    """A cache of the manifest's rows with random features (near duplicates do not read them)."""
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    images = [manifest.parent / image for image in table["image"]]
    extra = {}
    if thumbnails:
        extra["thumbnail"] = np.stack([thumbnail(load_image(path)) for path in images])
    if sha256:
        extra["image_sha256"] = [sha256_bytes(path.read_bytes()) for path in images]
    path = manifest.parent / "bottlenecks" / "pictures_all_random_inet_avg.h5"
    path.parent.mkdir(exist_ok=True)
    write_cache(path, features=np.random.default_rng(0).normal(size=(len(table), 32)), labels=np.zeros(len(table), int),
                split=[""] * len(table), image=table["image"].tolist(),
                attrs={"task": "multiclass", "label_names": ["any"], "manifest_root": str(manifest.parent)}, **extra)
    return path


def near_pairs(result):
    near = result.issues[result.issues["match"] == "near"]
    return {(min(a, b), max(a, b)): detail for a, b, detail in
            zip(near["row"].astype(int), near["partner_row"].astype(int), near["detail"])}


def planted_pairs(groups):
    return {(a, b) for group in groups for a in group for b in group if a < b}


def test_a_copy_aligns_and_keeps_its_colours_where_another_flag_does_not():
    france = tricolour(VERTICAL_FLAGS["france"], vertical=True)
    cropped = np.asarray(variant(Image.fromarray(france), "crop5").convert("RGB"))
    match, difference = aligned_match(crops(france), crops(cropped))
    assert match > 0.99 and difference < 8
    match, difference = aligned_match(crops(france), crops(tricolour(VERTICAL_FLAGS["italy"], vertical=True)))
    assert difference > 70


def test_distinct_flags_of_one_layout_are_not_duplicates_but_their_copies_are(tmp_path):
    """Hungary and Yemen (red, white, then green or black) match as thumbnails (0.95): the images tell them apart."""
    manifest = write_flags(tmp_path, ["france", "italy", "ireland", "hungary", "yemen", "netherlands"])
    groups = plant_near_duplicates(manifest, [0])
    vectors = thumbnail_vectors(np.stack([thumbnail(load_image(manifest.parent / f"flags/{name}.png"))
                                          for name in ("hungary", "yemen")]))
    assert vectors[0] @ vectors[1] >= 0.95
    result = mlkit.audit(cache_of(manifest), workdir=tmp_path, folds=0)
    assert set(near_pairs(result)) == planted_pairs(groups)
    record = result.summary["near_duplicates"]
    assert record["rejected_on_images"] >= 3 and record["pairs"]["images"] == 10
    assert all(detail.startswith("by images") for detail in near_pairs(result).values())


def test_planted_copies_of_real_stamps_are_found(tmp_path):
    """Copies of thin-outline stamps (JPEG q75, 0.8 resize, 5% crop, all three) are found; other outlines are not paired.

    One of the 40 planted pairs (a_outline resized against its all-three copy) has thumbnails at 0.84,
    below the candidates' threshold: recall 0.975, the issue's target 0.95. The stamps are Debian's
    tuxpaint-stamps-default, which .ci/run installs: without them this test fails, it does not skip.
    """
    assert STAMPS.is_dir(), f"{STAMPS} is missing: apt-get install tuxpaint-stamps-default (as .ci/run does)"
    (tmp_path / "stamps").mkdir()
    for stamp in THIN_STAMPS + OTHER_STAMPS:
        shutil.copy(STAMPS / stamp, tmp_path / "stamps" / Path(stamp).name)
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"image": [f"stamps/{Path(stamp).name}" for stamp in THIN_STAMPS + OTHER_STAMPS],
                  "labels": "stamp"}).to_csv(manifest, index=False)
    groups = plant_near_duplicates(manifest, range(len(THIN_STAMPS)))
    result = mlkit.audit(cache_of(manifest, thumbnails=True), workdir=tmp_path, folds=0)
    found, truth = near_pairs(result), planted_pairs(groups)
    assert set(found) <= truth and len(found) >= 0.95 * len(truth)
    # The thumbnails alone (0.95, the check before this one) would have missed some of them.
    thumbnails = [float(detail.rsplit("thumbnails ", 1)[1]) for detail in found.values()]
    assert min(thumbnails) < 0.95 <= AuditConfig().near_unverified_threshold


def test_a_candidate_whose_image_is_gone_or_changed_keeps_its_thumbnail_verdict(tmp_path):
    """Not fatal: the pair stands where its thumbnails reach near_unverified_threshold, and the summary says why."""
    manifest = write_flags(tmp_path, ["france", "germany"])
    groups = plant_near_duplicates(manifest, [0])
    path = cache_of(manifest, thumbnails=True, sha256=True)
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    crop, resized = (manifest.parent / table["image"][row] for row in (groups[0][3], groups[0][2]))
    crop.unlink()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(resized)
    result = mlkit.audit(path, workdir=tmp_path, folds=0)
    found = near_pairs(result)
    record = result.summary["near_duplicates"]
    assert record["unreadable_images"] == {"missing file": 1, "changed since it was cached": 1}
    unverified = {pair: detail for pair, detail in found.items() if detail.startswith("by thumbnails")}
    assert unverified and all("images not verified" in detail for detail in unverified.values())
    assert record["pairs"]["thumbnails"] == len(unverified) == record["unverified_kept"]
    assert set(found) <= planted_pairs(groups) and len(found) >= 6


def test_verify_pairs_marks_unreadable_images(tmp_path):
    Image.fromarray(tricolour(VERTICAL_FLAGS["peru"], vertical=True)).save(tmp_path / "peru.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    paths = [tmp_path / "peru.png", tmp_path / "broken.png", tmp_path / "gone.png"]
    correlations, differences, problems = verify_pairs(paths, [[0, 0], [0, 1], [2, 0]])
    assert correlations[0] == pytest.approx(1.0) and differences[0] == pytest.approx(0.0)
    assert np.isnan(correlations[1:]).all() and np.isnan(differences[1:]).all()
    assert problems[2] == "missing file" and "PIL can identify" in problems[1]
