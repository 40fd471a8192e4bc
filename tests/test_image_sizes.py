"""Caches of one manifest at two image sizes, side by side in one workspace, ranked on validation."""

import pandas as pd
import pytest

from mlkit.bottlenecks.extract import cache_features
from mlkit.data.split import split_manifest
from mlkit.data.synth import synthesize
from mlkit.errors import MlkitError
from mlkit.runs import parse_run_name
from mlkit.tuning.compare import load_runs, table_text
from mlkit.tuning.search import tune_top

SIZES = (32, 48)


@pytest.fixture(scope="module")
def two_sizes(tmp_path_factory):
    root = tmp_path_factory.mktemp("sizes")
    synthesize(root / "data", task="multilabel", n=48, size=48, seed=0)
    manifest = root / "data" / "manifest.csv"
    split_manifest(manifest, val=0.25, test=0.25, seed=0)
    work = root / "ws"
    caches = {}
    for size in SIZES:
        caches[size] = cache_features(manifest, work, backbone="mobilenetv2", weights="none", image_size=size,
                                      subset=f"all-{size}px", batch_size=32, progress=False).path
        tune_top(caches[size], work, layers=1, units=[8, 16], lr=0.01, batch=16, epochs=2, verbose=False)
    return manifest, work, caches


def test_a_second_size_under_the_same_name_is_refused_and_points_at_subset(two_sizes):
    manifest, work, _ = two_sizes
    cache_features(manifest, work, backbone="mobilenetv2", weights="none", image_size=32, progress=False,
                   batch_size=32)
    with pytest.raises(MlkitError, match="--subset"):
        cache_features(manifest, work, backbone="mobilenetv2", weights="none", image_size=48, progress=False,
                       batch_size=32)


def test_two_sizes_coexist_and_their_runs_name_their_cache(two_sizes):
    _, work, caches = two_sizes
    assert {path.name for path in caches.values()} == {f"data_all-{size}px_mobilenetv2_inet_avg.h5" for size in SIZES}
    assert all(path.exists() for path in caches.values())
    subsets = {parse_run_name(path.stem).subset for path in (work / "tuning").glob("*.csv") if path.name != "summary.csv"}
    assert subsets == {f"all-{size}px" for size in SIZES}


def test_runs_and_the_summary_rank_the_sizes_on_validation(two_sizes):
    _, work, caches = two_sizes
    frame = load_runs(work / "tuning")
    assert sorted(frame["image_size"].unique()) == list(SIZES)
    assert list(frame["val_loss"]) == sorted(frame["val_loss"]), "best first"
    for size in SIZES:
        assert set(frame[frame.image_size == size]["cache"]) == {caches[size].name}
    text = table_text(frame, by="image_size")
    best = {size: frame[frame.image_size == size].iloc[0] for size in SIZES}
    for size in SIZES:
        assert f"image_size = {size}: 2 runs, best val_loss {best[size].val_loss:.4g} ({best[size].run})" in text
    summary = pd.read_csv(work / "tuning" / "summary.csv")
    assert sorted(summary["image_size"].unique()) == list(SIZES)
    assert list(summary["val_loss"]) == sorted(summary["val_loss"])


def test_best_takes_only_the_runs_of_the_cache_it_is_given(two_sizes):
    from mlkit.bottlenecks.cache import open_cache
    from mlkit.models.finetune import select_tops

    _, work, caches = two_sizes
    for size in SIZES:
        runs = select_tops(work, open_cache(caches[size]), "best:2")
        assert {parse_run_name(run).subset for run in runs} == {f"all-{size}px"}


def test_an_ensemble_refuses_a_named_top_tuned_on_the_other_size(two_sizes):
    from mlkit.bottlenecks.cache import open_cache
    from mlkit.models.ensemble import ensemble
    from mlkit.models.finetune import select_tops

    _, work, caches = two_sizes
    small, large = (open_cache(caches[size]) for size in SIZES)
    runs = [select_tops(work, small, "best:1")[0], select_tops(work, large, "best:1")[0]]
    with pytest.raises(MlkitError, match="was not tuned on"):
        ensemble(small, ",".join(runs), work)
