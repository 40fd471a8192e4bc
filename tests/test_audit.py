"""mlkit.auditing on hand-made caches: duplicates, leaks, label checks, outputs, --apply, grouped splits."""

import json

import numpy as np
import pandas as pd
import pytest
from audit_data import plant_near_duplicates

from mlkit.auditing import duplicates, neighbours
from mlkit.auditing.apply import apply_corrections, read_duplicate_groups
from mlkit.auditing.config import AuditConfig
from mlkit.auditing.findings import robust_z
from mlkit.auditing.labels import multiclass_quality, multilabel_quality, regression_quality
from mlkit.auditing.neighbours import without_self
from mlkit.bottlenecks.cache import write_cache
from mlkit.cli import main
from mlkit.data.manifest import read_manifest, write_manifest
from mlkit.data.split import split_by_groups
from mlkit.data.synth import synthesize
from mlkit.errors import MlkitError

CLASSES = ("ant", "bee", "cat", "dog")


def test_exact_groups_find_every_shared_hash():
    sha = ["a", "b", "a", "c", "b", "a", ""]
    groups = duplicates.exact_groups(sha)
    assert groups.tolist() == [0, 1, 0, -1, 1, 0, -1]
    assert sorted(map(tuple, duplicates.exact_pairs(groups).tolist())) == [(2, 0), (4, 1), (5, 0)]


def test_near_pairs_once_each_without_exact_ones():
    similarities = np.array([[0.99, 0.5], [0.99, 0.95], [0.95, 0.2]], np.float32)
    positions = np.array([[1, 2], [0, 2], [1, 0]])
    rows, partners, sims = duplicates.near_pairs(similarities, positions, 0.9, np.array([0, 0, -1]))
    assert list(zip(rows, partners)) == [(2, 1)] and sims[0] == pytest.approx(0.95)


def test_duplicate_groups_join_chains():
    groups = duplicates.duplicate_groups(6, [[1, 0], [3, 1], [5, 4]])
    assert groups.tolist() == [0, 0, -1, 0, 1, 1]


def test_without_self_drops_own_id_wherever_it_ranks():
    sims = np.array([[1.0, 1.0, 0.5], [0.9, 0.8, 0.7]])
    ids = np.array([[3, 0, 2], [4, 5, 6]])
    kept_sims, kept_ids = without_self(sims, ids, np.array([0, 1]), 2)
    assert kept_ids.tolist() == [[3, 2], [4, 5]]


def test_inverted_file_search_finds_planted_pairs(monkeypatch):
    """Above EXACT_MAX_ROWS the search is approximate (an inverted file); close pairs are still found."""
    monkeypatch.setattr(neighbours, "EXACT_MAX_ROWS", 100)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3000, 24)).astype(np.float32)
    vectors[1500:1600] = vectors[:100] + 0.05 * rng.normal(size=(100, 24))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    similarities, positions = neighbours.nearest_in_memory(vectors, 5)
    assert (positions[:100, 0] == np.arange(1500, 1600)).all() and (similarities[:100, 0] > 0.99).all()


def test_fold_training_lets_the_feature_matrix_go():
    """TensorFlow keeps numpy_function callables for the life of the process; they must not hold the matrix."""
    import gc
    import weakref

    from mlkit.auditing.folds import out_of_fold_scores

    rng = np.random.default_rng(0)
    features = rng.normal(size=(120, 8)).astype(np.float32)
    matrix = weakref.ref(features)
    out_of_fold_scores(features, rng.integers(0, 3, 120), "multiclass", 3, AuditConfig(folds=2, epochs=1, units=8))
    del features
    gc.collect()
    assert matrix() is None


def test_multiclass_quality_flags_flips_and_suggests_the_confident_class():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    scores = np.full((200, 4), 0.05)
    scores[np.arange(200), labels] = 0.85
    flipped = np.array([3, 50, 120])
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + 1) % 4
    quality = multiclass_quality(noisy, scores, CLASSES)
    assert set(np.flatnonzero(quality.flagged)) == set(flipped)
    assert (quality.suggested[flipped] == labels[flipped]).all()
    assert set(np.argsort(-quality.score)[:3]) == set(flipped)


def test_multilabel_quality_finds_missing_and_extra_labels():
    rng = np.random.default_rng(1)
    labels = (rng.random((300, 4)) < 0.3).astype(np.uint8)
    scores = np.where(labels == 1, rng.uniform(0.7, 0.95, labels.shape), rng.uniform(0.02, 0.2, labels.shape))
    noisy = labels.copy()
    for row, label in ((10, 0), (20, 3)):
        noisy[row, label] ^= 1
        # A confident model: the true answer scored at the edge of its range.
        scores[row, label] = 0.95 if labels[row, label] else 0.02
    quality = multilabel_quality(noisy, scores, CLASSES)
    assert set(np.argsort(-quality.score)[:2]) == {10, 20}
    assert quality.flagged[[10, 20]].all() and quality.flagged.sum() == 2
    assert (quality.suggested[[10, 20]] == labels[[10, 20]]).all()
    assert "missing" in quality.detail[10] or "extra" in quality.detail[10]


def test_regression_quality_uses_robust_standard_units():
    rng = np.random.default_rng(2)
    predictions = rng.normal(size=(100, 1))
    targets = predictions + rng.normal(scale=0.1, size=(100, 1))
    targets[7] += 3.0
    quality = regression_quality(targets, predictions, ["target"], 3.0)
    assert np.flatnonzero(quality.flagged).tolist() == [7]
    assert quality.suggested[7, 0] == pytest.approx(predictions[7, 0])


def test_robust_z_ignores_the_outliers_themselves():
    values = np.r_[np.linspace(0.4, 0.6, 99), 5.0]
    assert robust_z(values)[-1] > 20


def test_config_rejects_bad_values():
    with pytest.raises(MlkitError, match="near-feature-threshold 1.5"):
        AuditConfig(near_feature_threshold=1.5)
    with pytest.raises(MlkitError, match="near-verify-threshold 1.5"):
        AuditConfig(near_verify_threshold=1.5)
    with pytest.raises(MlkitError, match="near-colour-difference -1"):
        AuditConfig(near_colour_difference=-1)
    with pytest.raises(MlkitError, match="folds 1"):
        AuditConfig(folds=1)
    with pytest.raises(MlkitError, match="outlier-k 20"):
        AuditConfig(outlier_k=20, neighbours=10)


@pytest.fixture
def workspace(tmp_path):
    """A 4-class cache of 120 rows (30 per class, well separated) with planted findings and its manifest.

    Rows 1 and 100 share their bytes across splits (a leak); row 60 is a near copy of row 2 whose label
    differs (a conflict); row 7 is mislabelled; row 90 lies far from every other row (an outlier).
    """
    rng = np.random.default_rng(0)
    n, dims = 120, 24
    labels = np.repeat(np.arange(4), 30)
    centres = rng.normal(scale=1.5, size=(4, dims))
    features = centres[labels] + rng.normal(size=(n, dims))
    features[100] = features[1]
    features[60] = features[2] + 0.01 * rng.normal(size=dims)
    features[90] = rng.normal(scale=40.0, size=dims)
    given = labels.copy()
    given[7] = 3
    given[60] = (labels[2] + 1) % 4
    split = np.array(["train"] * 80 + ["val"] * 20 + ["test"] * 20, dtype=object)
    split[60] = "train"
    images = [f"img/{i:03d}.png" for i in range(n)]
    sha = [f"{i:064x}" for i in range(n)]
    sha[100] = sha[1]
    manifest = tmp_path / "data" / "manifest.csv"
    write_manifest(pd.DataFrame({"image": images, "labels": [CLASSES[g] for g in given], "split": split}), manifest)
    cache = tmp_path / "bottlenecks" / "toy_all_x_inet_avg.h5"
    cache.parent.mkdir()
    write_cache(cache, features=features, labels=given, split=split, image=images, image_sha256=sha,
                attrs={"task": "multiclass", "label_names": list(CLASSES), "manifest_path": str(manifest),
                       "manifest_root": str(manifest.parent)})
    return {"cache": cache, "manifest": manifest, "root": tmp_path, "images": images}


def test_audit_cli_reports_leaks_first_and_every_planted_finding(workspace):
    code = main(["audit", str(workspace["cache"]), "--workdir", str(workspace["root"]), "--folds", "3",
                 "--units", "32"])
    assert code == 0
    folder = workspace["root"] / "audit" / "toy_all_x_inet_avg"
    issues = pd.read_csv(folder / "issues.csv", keep_default_na=False, dtype={"partner_row": str})
    issues["partner_row"] = [int(cell) if cell else -1 for cell in issues["partner_row"]]
    assert issues["kind"].iloc[0] == "leak" and issues["match"].iloc[0] == "exact"
    leak = issues.iloc[0]
    assert (leak["row"], leak["partner_row"], leak["action"]) == (100, 1, "drop")
    conflict = issues[issues["kind"] == "conflict"]
    assert conflict[["row", "partner_row"]].values.tolist() == [[60, 2]]
    assert conflict["suggested"].iloc[0] == CLASSES[0]
    errors = issues[issues["kind"] == "label_error"]
    assert 7 in errors["row"].tolist()
    assert errors.loc[errors["row"] == 7, "suggested"].iloc[0] == "ant"
    assert issues.loc[issues["kind"] == "outlier", "row"].tolist() == [90]
    kinds = issues["kind"].tolist()
    assert kinds == sorted(kinds, key=["leak", "conflict", "duplicate", "label_error", "outlier"].index)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["findings"]["leak"] == 1 and summary["manifest"] == str(workspace["manifest"])
    # The images are not there: every near pair comes from the features, and the summary says so.
    assert summary["near_duplicates"]["rows_by_features"] == 120
    assert summary["near_duplicates"]["unusable_images"] == {"missing file": 120}
    assert conflict["detail"].iloc[0].startswith("by features")
    for kind in ("leak", "conflict", "label_error", "outlier"):
        assert (folder / f"{kind}.png").stat().st_size > 1000
    assert not list(folder.glob(".*tmp*"))
    scores = np.load(folder / "scores.npz")
    assert scores["oof_scores"].shape == (120, 4) and sorted(set(scores["fold"])) == [0, 1, 2]


def test_apply_writes_a_corrected_copy_and_never_the_original(workspace):
    import mlkit

    result = mlkit.audit(workspace["cache"], workdir=workspace["root"], folds=0)
    issues_path = result.folder / "issues.csv"
    issues = pd.read_csv(issues_path, dtype=str, keep_default_na=False)
    issues.loc[issues["kind"] == "leak", "decision"] = "accept"
    issues.loc[issues["kind"] == "conflict", "decision"] = "Accept"
    issues.loc[issues["kind"] == "outlier", "decision"] = "reject"
    issues.to_csv(issues_path, index=False)
    before = workspace["manifest"].read_bytes()
    out = apply_corrections(issues_path)
    assert out == workspace["manifest"].with_name("manifest.audited.csv")
    assert workspace["manifest"].read_bytes() == before
    corrected = read_manifest(out)
    assert len(corrected.rows) == 119 and workspace["images"][100] not in set(corrected.rows["image"])
    relabelled = corrected.rows.set_index("image").loc[workspace["images"][60], "labels"]
    assert relabelled == ("ant",)
    with pytest.raises(MlkitError, match="never overwrites"):
        apply_corrections(issues_path, out=workspace["manifest"])
    issues.loc[0, "decision"] = "maybe"
    issues.to_csv(issues_path, index=False)
    assert main(["audit", "--apply", str(issues_path)]) == 1
    with pytest.raises(MlkitError, match="line 2: decision 'maybe'"):
        apply_corrections(issues_path)


def test_split_group_duplicates_keeps_groups_together(workspace):
    import mlkit

    result = mlkit.audit(workspace["cache"], workdir=workspace["root"], folds=0)
    manifest = read_manifest(workspace["manifest"])
    write_manifest(manifest.rows.assign(split=""), workspace["manifest"])
    code = main(["data", "split", str(workspace["manifest"]), "--group-duplicates", str(result.folder), "--seed", "3"])
    assert code == 0
    splits = dict(zip(*[read_manifest(workspace["manifest"]).rows[c] for c in ("image", "split")]))
    groups = read_duplicate_groups(result.folder)
    by_group = {}
    for image, group in groups.items():
        by_group.setdefault(group, set()).add(splits[image])
    assert len(by_group) == 2 and all(len(found) == 1 for found in by_group.values())


def test_split_by_groups_keeps_existing_splits():
    row_labels = [np.array([i % 3]) for i in range(30)]
    assigned = np.full(30, -1)
    assigned[0] = 2
    groups = np.full(30, -1)
    groups[[0, 5, 9]] = 0
    groups[[1, 2]] = 1
    folds = split_by_groups(row_labels, 3, [0.6, 0.2, 0.2], assigned, groups, seed=0)
    assert folds[[0, 5, 9]].tolist() == [2, 2, 2] and folds[1] == folds[2]
    assert set(folds) == {0, 1, 2}


def test_near_duplicates_by_thumbnails_and_by_features_where_an_image_is_missing(tmp_path):
    """Planted copies are found by their pixels alone by default (thumbnails, verified on the images), and only
    where their features agree with --near-agreement; a row whose image has gone is compared by features."""
    import mlkit

    manifest = synthesize(tmp_path / "data", task="multiclass", n=30, size=64, seed=0)
    groups = plant_near_duplicates(manifest, [0, 10])
    table = read_manifest(manifest)
    n = len(table.rows)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(n, 16))
    features[5] = features[6] + 0.001
    # The copies of row 0 look alike to the backbone too; those of row 10 do not.
    features[groups[0]] = features[0] + 0.3 * rng.normal(size=(len(groups[0]), 16))
    features[groups[1]] = 6 * np.eye(16)[: len(groups[1])] + 0.1 * rng.normal(size=(len(groups[1]), 16))
    (manifest.parent / table.rows["image"][5]).unlink()
    cache = tmp_path / "bottlenecks" / "copies_all_x_inet_avg.h5"
    cache.parent.mkdir()
    write_cache(cache, features=features, labels=table.label_array(), split=[""] * n, image=table.rows["image"],
                attrs={"task": "multiclass", "label_names": table.label_names, "manifest_root": str(manifest.parent)})
    def pixel_pairs(result):
        near = result.issues[result.issues["match"] == "near"]
        return {tuple(sorted(pair)) for pair, detail in zip(near[["row", "partner_row"]].values.tolist(),
                                                            near["detail"]) if detail.startswith("by images")}

    agreeing = mlkit.audit(cache, workdir=tmp_path / "agree", folds=0, near_agreement=0.3)
    assert pixel_pairs(agreeing) == {(a, b) for a in groups[0] for b in groups[0] if a < b}
    assert agreeing.summary["near_duplicates"]["thumbnail_pairs_unlike_in_features"] == 10
    result = mlkit.audit(cache, workdir=tmp_path, folds=0)
    near = result.issues[result.issues["match"] == "near"]
    assert pixel_pairs(result) == {(a, b) for group in groups for a in group for b in group if a < b}
    by_features = near[near["detail"].str.startswith("by features")]
    assert sorted(by_features[["row", "partner_row"]].values.tolist()[0]) == [5, 6] and len(by_features) == 1
    record = result.summary["near_duplicates"]
    assert record["thumbnails_from_cache"] == 0 and record["thumbnails_from_images"] == n - 1
    assert record["rows_by_features"] == 1
    assert record["unusable_images"] == {"missing file": 1}
    assert record["pairs"] == {"images": 20, "thumbnails": 0, "features": 1}


def test_cache_features_stores_thumbnails_and_the_audit_reads_images_only_where_one_is_missing(tmp_path):
    import h5py

    import mlkit
    from mlkit.bottlenecks import cache_features
    from mlkit.images import load_image
    from mlkit.thumbnails import THUMBNAIL_DATASET, thumbnail

    manifest = synthesize(tmp_path / "data", task="multiclass", n=12, size=48, seed=0)
    groups = plant_near_duplicates(manifest, [3])
    result = cache_features(manifest, tmp_path, backbone="mobilenetv2", weights="none", image_size=32, progress=False,
                            augment_copies=1)
    table = read_manifest(manifest)
    with h5py.File(result.path, "r+") as h5:
        stored = h5[THUMBNAIL_DATASET][...]
        h5[THUMBNAIL_DATASET][5] = 0
    for row, image in enumerate(table.rows["image"]):
        assert (stored[row] == thumbnail(load_image(manifest.parent / image))).all(), row
    audit = mlkit.audit(result.path, workdir=tmp_path, folds=0)
    record = audit.summary["near_duplicates"]
    assert (record["thumbnails_from_cache"], record["thumbnails_from_images"], record["rows_by_features"]) == (15, 1, 0)
    near = audit.issues[audit.issues["match"] == "near"]
    found = {tuple(sorted(pair)) for pair in near[["row", "partner_row"]].values.tolist()}
    assert {(a, b) for group in groups for a in group for b in group if a < b} <= found


def test_feature_agreement_is_the_cosine_of_mean_centred_features(tmp_path):
    from mlkit.auditing.near import feature_agreement

    rng = np.random.default_rng(5)
    features = rng.random((40, 12)).astype(np.float32)
    path = tmp_path / "toy.h5"
    write_cache(path, features=features, labels=rng.integers(0, 2, 40), split=[""] * 40,
                attrs={"task": "multiclass", "label_names": ["a", "b"]})
    rows = np.arange(3, 40)
    pairs = np.array([[0, 5], [7, 2], [36, 0]])
    centred = features[rows] - features[rows].mean(axis=0)
    expected = [centred[a] @ centred[b] / np.linalg.norm(centred[a]) / np.linalg.norm(centred[b]) for a, b in pairs]
    np.testing.assert_allclose(feature_agreement(path, rows, pairs), expected, rtol=1e-5)


def test_shortlist_takes_each_kinds_best_in_turn():
    from mlkit.auditing.findings import shortlist

    kinds = ["leak"] + ["conflict"] * 3 + ["label_error"] * 5 + ["outlier"] * 2
    issues = pd.DataFrame({"kind": kinds, "row": range(len(kinds))})
    ranked = shortlist(issues, 7)
    expected, turn = [], 0
    while len(expected) < 7:
        for kind in ("leak", "conflict", "duplicate", "label_error", "outlier"):
            of_kind = [i for i, k in enumerate(kinds) if k == kind]
            if turn < len(of_kind) and len(expected) < 7:
                expected.append(of_kind[turn])
        turn += 1
    assert ranked.sort_values("review").query("review > 0")["row"].tolist() == expected
    assert (ranked["review"] == 0).sum() == len(kinds) - 7
    assert (shortlist(issues, 0)["review"] > 0).all()


def test_review_budget_cuts_the_shortlist_and_counts_what_lies_beyond(workspace):
    code = main(["audit", str(workspace["cache"]), "--workdir", str(workspace["root"]), "--folds", "0",
                 "--review", "2"])
    assert code == 0
    folder = workspace["root"] / "audit" / "toy_all_x_inet_avg"
    summary = json.loads((folder / "summary.json").read_text())
    review = pd.read_csv(folder / "review.csv", keep_default_na=False)
    issues = pd.read_csv(folder / "issues.csv", keep_default_na=False)
    assert review["review"].tolist() == [1, 2] and review["kind"].tolist() == ["leak", "conflict"]
    assert summary["review"]["shortlisted"] == 2
    for kind, count in summary["findings"].items():
        assert summary["review"]["beyond"][kind] + summary["review"]["on_shortlist"][kind] == count
    assert len(issues) == sum(summary["findings"].values()) and (issues["review"] > 0).sum() == 2
    assert not (folder / "outlier.png").exists() and (folder / "leak.png").exists()
    review.loc[0, "decision"] = "accept"
    review.to_csv(folder / "review.csv", index=False)
    assert main(["audit", "--apply", str(folder / "review.csv")]) == 0
    audited = read_manifest(workspace["manifest"].with_name("manifest.audited.csv"))
    assert workspace["images"][100] not in set(audited.rows["image"])
