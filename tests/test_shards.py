"""Sharded caching (`cache-features --shard i/n`) and `cache-merge`: equal to one unsharded run, or refused."""

import json
import shutil

import h5py
import numpy as np
import pytest

from mlkit.bottlenecks import cache_features, fit_zmuv_stats, merge_shards
from mlkit.bottlenecks.cache import partial_path
from mlkit.bottlenecks.shards import parse_shard, shard_path, shard_rows, stats_path
from mlkit.cli import main
from mlkit.data import split_manifest, synthesize
from mlkit.errors import CacheError, MlkitError
from mlkit.locks import hold_lock

# zmuv (shared statistics), caption tokens, augmented views and an unreadable image: every part of a cache.
SETTINGS = {"backbone": "mobilenetv2", "weights": "none", "image_size": 32, "pooling": "avg", "preprocess": "zmuv",
                "captions": True, "augment_copies": 1, "batch_size": 8, "progress": False}
SHARDS = 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A manifest, its unsharded cache, and its shards (with fitted statistics) in another workspace."""
    root = tmp_path_factory.mktemp("shards")
    manifest = synthesize(root / "synth", task="multilabel", n=30, size=40, seed=3)
    split_manifest(manifest, val=0.2, test=0.2, seed=0)
    (root / "synth" / "images").joinpath(sorted((root / "synth" / "images").iterdir())[4].name).write_bytes(b"broken")
    whole = cache_features(manifest, root / "whole", **SETTINGS)
    fit_zmuv_stats(manifest, root / "sharded", **{k: SETTINGS[k] for k in ("backbone", "image_size", "pooling")})
    shards = [cache_features(manifest, root / "sharded", shard=(i, SHARDS), **SETTINGS) for i in range(SHARDS)]
    return {"manifest": manifest, "whole": whole, "shards": shards, "root": root}


def read_everything(path):
    with h5py.File(path, "r") as h5:
        data = {}
        # Every dataset, taps/<layer> and augmented_taps/<layer> included (a tapped cache has groups).
        h5.visititems(lambda name, item: data.__setitem__(name, item[...]) if isinstance(item, h5py.Dataset) else None)
        attrs = {name: (value.tolist() if isinstance(value, np.ndarray) else value) for name, value in h5.attrs.items()}
    return data, attrs


def assert_same_features(actual, expected):
    """Equal to float32 rounding: the backbone's batched forward pass differs in the last bits with an
    image's batch neighbours (two unsharded runs at --batch-size 5 and 8 differ as much, 7e-18 on values
    up to 1.2e-11), so features match to rounding; every other dataset matches exactly."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_merged_shards_equal_an_unsharded_run(runs, tmp_path):
    merged = merge_shards(runs["whole"].path.name[: -len(".h5")], runs["root"] / "sharded")
    assert merged == runs["root"] / "sharded" / "bottlenecks" / runs["whole"].path.name
    data, attrs = read_everything(merged)
    expected, expected_attrs = read_everything(runs["whole"].path)
    assert sorted(data) == sorted(expected)
    for name in expected:
        assert data[name].dtype == expected[name].dtype, name
        if name in ("features", "augmented") or name.startswith(("taps/", "augmented_taps/")):
            assert_same_features(data[name], expected[name])
        else:
            np.testing.assert_array_equal(data[name], expected[name], err_msg=name)
    assert attrs == expected_attrs
    assert expected["done"].sum() == 29  # the broken image stays undone in both
    skipped = merged.with_name(merged.name.replace(".h5", ".skipped.csv")).read_text()
    assert skipped == runs["whole"].skipped_path.read_text()
    summary = json.loads(merged.with_suffix(".json").read_text())
    assert (summary["rows"], summary["rows_done"], summary["skipped"]) == (30, 29, 1)


def test_shards_split_the_rows_by_path_and_adding_rows_moves_none():
    images = [f"images/{i:05d}.png" for i in range(2000)]
    shards = [shard_rows(images, i, 4) for i in range(4)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(2000))
    assert min(map(len, shards)) > 400
    grown = [f"images/new{i}.png" for i in range(300)] + images  # new rows first: old ones change row number
    for i in range(4):
        moved = {grown[row] for row in shard_rows(grown, i, 4)} & set(images)
        assert moved == {images[row] for row in shards[i]}
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "-1/4", "1", "a/b"):
        with pytest.raises(MlkitError, match="--shard"):
            parse_shard(bad)


def test_a_shard_rerun_is_a_no_op_resumes_when_killed_and_respects_the_lock(runs, tmp_path):
    work = tmp_path / "ws"
    shutil.copytree(runs["root"] / "sharded" / "bottlenecks", work / "bottlenecks")
    again = cache_features(runs["manifest"], work, shard=(1, SHARDS), **SETTINGS)
    assert again.computed == 0 and again.reused == again.rows
    target = again.path
    merged = merge_shards(work / "bottlenecks" / runs["whole"].path.name)
    target.unlink()
    rebuilt = cache_features(runs["manifest"], work, shard=(1, SHARDS), **SETTINGS)
    assert rebuilt.computed == 0, "a shard reuses the merged cache's rows"
    target.unlink()
    merged.unlink()

    def crash(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache_features(runs["manifest"], work, shard=(1, SHARDS), on_batch=crash, **dict(SETTINGS, batch_size=4))
    assert partial_path(target).exists() and not target.exists()
    with hold_lock(target.with_name(target.name.replace(".h5", ".lock")), "test"), \
            pytest.raises(MlkitError, match="being written by process"):
        cache_features(runs["manifest"], work, shard=(1, SHARDS), **SETTINGS)
    resumed = cache_features(runs["manifest"], work, shard=(1, SHARDS), **SETTINGS)
    assert resumed.reused > 0 and resumed.computed + resumed.reused + resumed.skipped == resumed.rows
    assert_same_features(read_everything(target)[0]["features"], read_everything(runs["shards"][1].path)[0]["features"])


def test_zmuv_shards_without_fitted_statistics_are_refused_with_the_command_to_run(runs, tmp_path, capsys):
    rc = main(["cache-features", str(runs["manifest"]), "--workdir", str(tmp_path), "--backbone", "mobilenetv2",
               "--weights", "none", "--image-size", "32", "--preprocess", "zmuv", "--shard", "0/2", "--no-progress"])
    error = capsys.readouterr().err
    assert rc == 1 and "--fit-stats" in error and f"mlkit cache-features {runs['manifest']}" in error


def shard_copies(runs, tmp_path):
    folder = tmp_path / "bottlenecks"
    folder.mkdir()
    for result in runs["shards"]:
        shutil.copy(result.path, folder)
        shutil.copy(result.summary_path, folder)
    return folder / runs["whole"].path.name


def test_merge_refuses_a_missing_or_duplicated_shard(runs, tmp_path):
    target = shard_copies(runs, tmp_path)
    shard_path(target, 2, SHARDS).unlink()
    with pytest.raises(CacheError, match=r"missing shard\(s\) 2/3 .*--shard I/3"):
        merge_shards(target)
    shutil.copy(shard_path(target, 0, SHARDS), shard_path(target, 2, SHARDS))
    with pytest.raises(CacheError, match=r"shard-2-of-3.h5 holds shard 0/3, not 2/3"):
        merge_shards(target)
    shutil.copy(shard_path(target, 0, SHARDS), shard_path(target, 0, 2))
    with pytest.raises(CacheError, match=r"different shard counts \[2, 3\]"):
        merge_shards(target)
    assert not target.exists()


@pytest.mark.parametrize("field, value", [("weights_sha256", "0" * 64), ("image_size", 64), ("zmuv_mean", "[1, 2, 3]"),
                                          ("manifest_sha256", "f" * 64), ("backbone", "vgg16")])
def test_merge_names_the_shard_and_field_that_differ(runs, tmp_path, field, value):
    target = shard_copies(runs, tmp_path)
    with h5py.File(shard_path(target, 1, SHARDS), "r+") as h5:
        h5.attrs[field] = value
    with pytest.raises(CacheError, match=rf"shard-1-of-3.h5 differs from .*shard-0-of-3.h5 in {field}:"):
        merge_shards(target)
    assert not target.exists()


def test_merge_refuses_shards_stored_in_different_dtypes(tmp_path):
    manifest = synthesize(tmp_path / "synth", task="multilabel", n=12, size=40, seed=3)
    settings = {"backbone": "vgg16", "weights": "none", "image_size": 32, "pooling": "avg", "batch_size": 8, "progress": False}
    cache_features(manifest, tmp_path, shard=(0, 2), **settings)
    cache_features(manifest, tmp_path, shard=(1, 2), dtype="float16", **settings)
    with pytest.raises(CacheError, match=r"shard-1-of-2.h5 differs from .*shard-0-of-2.h5 in dtype: \"float16\" vs \"float32\""):
        merge_shards("synth_all_vgg16_inet_avg", tmp_path)


def test_a_shard_fitted_on_other_statistics_is_refused_by_the_cli(runs, tmp_path, capsys):
    target = shard_copies(runs, tmp_path)
    stats = json.loads(stats_path(runs["shards"][0].path.parent / runs["whole"].path.name).read_text())
    stats["zmuv_mean"] = [m + 1 for m in stats["zmuv_mean"]]
    stats_path(target).write_text(json.dumps(stats))
    shard_path(target, 2, SHARDS).unlink()
    cache_features(runs["manifest"], tmp_path, shard=(2, SHARDS), **SETTINGS)
    assert main(["cache-merge", str(target)]) == 1
    assert "shard-2-of-3.h5 differs from bottleneck" not in (error := capsys.readouterr().err)
    assert "shard-2-of-3.h5 differs from synth_all_mobilenetv2_zmuv_avg.shard-0-of-3.h5 in zmuv_mean:" in error
