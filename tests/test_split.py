"""Stratified, seeded, stable splits."""

import numpy as np
import pandas as pd
import pytest
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

from mlkit.cli import main
from mlkit.data.manifest import read_manifest, write_manifest
from mlkit.data.split import iterative_stratification, split_manifest
from mlkit.errors import MlkitError

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def random_multilabel(n, n_labels=12, seed=0, start=0):
    """Rows with skewed label frequencies (a few common labels, many rare ones)."""
    rng = np.random.default_rng(seed)
    frequency = 0.5 / (1 + np.arange(n_labels))
    y = rng.random((n, n_labels)) < frequency
    y[~y.any(axis=1), 0] = True
    labels = [tuple(f"label {j}" for j in np.flatnonzero(row)) for row in y]
    return pd.DataFrame({"image": [f"img/{start + i}.png" for i in range(n)], "labels": labels})


def write(tmp_path, rows, name="m.csv"):
    return write_manifest(rows, tmp_path / name)


def label_shares(manifest):
    """Per split, the share of each label's rows that landed there."""
    y = manifest.label_array().astype(float)
    splits = manifest.splits()
    return {split: y[splits == split].sum(axis=0) / y.sum(axis=0) for split in FRACTIONS}


def test_multilabel_label_proportions_follow_the_fractions(tmp_path):
    manifest = split_manifest(write(tmp_path, random_multilabel(2000)), val=0.15, test=0.15, seed=0)
    splits = manifest.splits()
    for split, fraction in FRACTIONS.items():
        assert abs((splits == split).mean() - fraction) < 0.01
        common = manifest.label_array().sum(axis=0) >= 100
        assert np.abs(label_shares(manifest)[split][common] - fraction).max() < 0.02


def test_the_split_is_written_back_and_deterministic_per_seed(tmp_path):
    first = split_manifest(write(tmp_path, random_multilabel(300), "a.csv"), seed=3)
    split_manifest(write(tmp_path, random_multilabel(300), "b.csv"), seed=3)
    other = split_manifest(write(tmp_path, random_multilabel(300), "c.csv"), seed=4)
    assert list(read_manifest(tmp_path / "a.csv").splits()) == list(first.splits())
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert list(first.splits()) != list(other.splits())


def test_added_rows_keep_old_assignments_and_are_stratified(tmp_path):
    path = write(tmp_path, random_multilabel(1000))
    old = split_manifest(path, seed=0).splits()
    grown = pd.concat([read_manifest(path).rows, random_multilabel(1000, seed=1, start=1000)], ignore_index=True)
    write_manifest(grown, path)
    manifest = split_manifest(path, seed=0)
    splits = manifest.splits()
    assert list(splits[:1000]) == list(old)
    new = splits[1000:]
    assert "" not in set(new)
    for split, fraction in FRACTIONS.items():
        assert abs((new == split).mean() - fraction) < 0.02
        assert abs((splits == split).mean() - fraction) < 0.01
        common = manifest.label_array().sum(axis=0) >= 200
        assert np.abs(label_shares(manifest)[split][common] - fraction).max() < 0.02


def test_new_rows_make_up_for_an_unbalanced_existing_split(tmp_path):
    rows = random_multilabel(400)
    rows["split"] = ["train"] * 100 + [""] * 300
    manifest = split_manifest(write(tmp_path, rows), seed=0)
    counts = pd.Series(manifest.splits()).value_counts()
    assert counts["train"] == pytest.approx(280, abs=4)
    assert counts["val"] == pytest.approx(60, abs=4)


def test_json_lines_manifests_are_split_too(tmp_path):
    path = write(tmp_path, random_multilabel(50), "m.jsonl")
    manifest = split_manifest(path, seed=0)
    assert list(read_manifest(path).splits()) == list(manifest.splits())
    assert read_manifest(path).rows["labels"].tolist() == random_multilabel(50)["labels"].tolist()


def test_resplit_reassigns_every_row(tmp_path):
    rows = random_multilabel(200)
    rows["split"] = "test"
    manifest = split_manifest(write(tmp_path, rows), seed=0, resplit=True)
    assert (manifest.splits() == "train").mean() == pytest.approx(0.7, abs=0.03)


def test_a_fully_split_manifest_is_left_alone(tmp_path):
    rows = random_multilabel(20)
    rows["split"] = "train"
    path = write(tmp_path, rows)
    before = path.stat().st_mtime_ns
    assert set(split_manifest(path).splits()) == {"train"}
    assert path.stat().st_mtime_ns == before


def test_tiny_classes_and_unlabelled_rows_do_not_crash(tmp_path):
    rows = pd.DataFrame({
        "image": [f"{i}.png" for i in range(12)],
        "labels": [("common",)] * 9 + [("rare",), ("rare", "common"), ()],
    })
    manifest = split_manifest(write(tmp_path, rows), val=0.2, test=0.2, seed=0)
    assert "" not in set(manifest.splits())
    multiclass = pd.DataFrame({"image": [f"{i}.png" for i in range(7)], "labels": [("a",)] * 5 + [("b",), ("c",)]})
    assert "" not in set(split_manifest(write(tmp_path, multiclass, "mc.csv")).splits())


def test_multiclass_is_stratified_by_class(tmp_path):
    labels = [("big",)] * 700 + [("mid",)] * 200 + [("small",)] * 100
    rows = pd.DataFrame({"image": [f"{i}.png" for i in range(1000)], "labels": labels})
    manifest = split_manifest(write(tmp_path, rows), seed=0)
    table = pd.crosstab(manifest.rows["labels"].map(lambda names: names[0]), manifest.splits())
    assert table.loc["small"].to_dict() == {"test": 15, "train": 70, "val": 15}
    assert table.loc["mid"].to_dict() == {"test": 30, "train": 140, "val": 30}


def test_regression_is_stratified_on_target_quantiles(tmp_path):
    targets = np.random.default_rng(0).lognormal(size=1000)
    rows = pd.DataFrame({"image": [f"{i}.png" for i in range(1000)], "target": [(t,) for t in targets]})
    manifest = split_manifest(write(tmp_path, rows), seed=0)
    y = manifest.label_array()[:, 0]
    for split in FRACTIONS:
        chosen = y[manifest.splits() == split]
        assert np.quantile(chosen, 0.9) == pytest.approx(np.quantile(y, 0.9), rel=0.1)
        assert np.median(chosen) == pytest.approx(np.median(y), rel=0.1)


def test_zero_fraction_gets_no_rows(tmp_path):
    manifest = split_manifest(write(tmp_path, random_multilabel(100)), val=0.2, test=0)
    assert set(manifest.splits()) == {"train", "val"}


@pytest.mark.parametrize("val, test", [(0.5, 0.5), (-0.1, 0.2), (1.2, 0)])
def test_bad_fractions(tmp_path, val, test):
    with pytest.raises(MlkitError, match="val"):
        split_manifest(write(tmp_path, random_multilabel(10)), val=val, test=test)


def mean_label_deviation(y, folds, fractions):
    """Mean over folds and labels of |rows of the label in the fold - desired|."""
    return np.mean([np.abs(y[folds == k].sum(axis=0) - f * y.sum(axis=0)).mean() for k, f in enumerate(fractions)])


def test_label_balance_matches_iterstrat(tmp_path):
    """Our implementation balances labels about as well as the reference library's."""
    y = read_manifest(write(tmp_path, random_multilabel(1500, n_labels=20))).label_array().astype(bool)
    ours, reference = [], []
    for seed in range(3):
        folds = iterative_stratification([np.flatnonzero(row) for row in y], y.shape[1], [0.7, 0.3],
                                         -np.ones(len(y), dtype=int), seed=seed)
        ours.append(mean_label_deviation(y, folds, [0.7, 0.3]))
        _, test = next(MultilabelStratifiedShuffleSplit(n_splits=1, test_size=0.3, random_state=seed).split(y, y))
        library = np.zeros(len(y), dtype=int)
        library[test] = 1
        reference.append(mean_label_deviation(y, library, [0.7, 0.3]))
    assert np.mean(ours) <= 1.5 * np.mean(reference) + 0.5


def test_cli_split(tmp_path, capsys):
    path = write(tmp_path, random_multilabel(100))
    assert main(["data", "split", str(path), "--val", "0.1", "--test", "0.2", "--seed", "1"]) == 0
    splits = read_manifest(path).splits()
    assert (splits == "test").sum() == pytest.approx(20, abs=2)
    assert main(["data", "split", str(path), "--val", "0.9", "--test", "0.2"]) == 1
    assert "val + test < 1" in capsys.readouterr().err


def themed(n, themes=("a", "b", "c", "d"), seed=0, start=0):
    """Multilabel rows, each tagged with a theme (round robin) and a site (20 rows per site)."""
    rows = random_multilabel(n, seed=seed, start=start)
    rows["theme"] = [themes[(start + i) % len(themes)] for i in range(n)]
    rows["site"] = [f"site {(start + i) // 20}" for i in range(n)]
    return rows


def splits_per(manifest, column):
    """The set of splits each value of `column` landed in."""
    return manifest.rows.groupby(column)["split"].agg(set).to_dict()


def test_group_by_keeps_every_group_in_one_split(tmp_path):
    manifest = split_manifest(write(tmp_path, themed(2000)), val=0.15, test=0.15, group_by="site", seed=0)
    assert all(len(found) == 1 for found in splits_per(manifest, "site").values())
    for split, fraction in FRACTIONS.items():
        assert (manifest.splits() == split).mean() == pytest.approx(fraction, abs=0.03)


def test_test_where_makes_exactly_that_value_the_test_split(tmp_path):
    manifest = split_manifest(write(tmp_path, themed(800)), val=0.2, test_where="theme=c", seed=0)
    splits = manifest.splits()
    assert list(splits == "test") == list(manifest.rows["theme"] == "c")
    rest = splits[manifest.rows["theme"] != "c"]
    assert (rest == "val").mean() == pytest.approx(0.2, abs=0.01)
    common = manifest.label_array()[splits != "test"].sum(axis=0) >= 60
    shares = label_shares(manifest)
    assert np.abs(shares["val"][common] / (shares["val"] + shares["train"])[common] - 0.2).max() < 0.03


def test_test_where_with_group_by_on_the_other_rows(tmp_path):
    rows = themed(800, themes="abcdefghij")
    manifest = split_manifest(write(tmp_path, rows), val=0.3, test_where="theme=a", group_by="theme", seed=0)
    assert splits_per(manifest, "theme")["a"] == {"test"}
    assert all(len(found) == 1 for found in splits_per(manifest, "theme").values())
    assert set(manifest.splits()) == {"train", "val", "test"}


def test_test_where_keeps_old_splits_and_sends_new_held_out_rows_to_test(tmp_path):
    path = write(tmp_path, themed(400))
    old = split_manifest(path, test_where="theme=b", seed=0).splits()
    grown = pd.concat([read_manifest(path).rows, themed(400, seed=1, start=400)], ignore_index=True)
    write_manifest(grown, path)
    manifest = split_manifest(path, test_where="theme=b", seed=0)
    assert list(manifest.splits()[:400]) == list(old)
    assert list(manifest.splits() == "test") == list(manifest.rows["theme"] == "b")


def test_test_where_that_contradicts_an_existing_split_asks_for_resplit(tmp_path):
    path = write(tmp_path, themed(40))
    split_manifest(path, seed=0)
    with pytest.raises(MlkitError, match="contradicts .* --resplit"):
        split_manifest(path, test_where="theme=a")
    manifest = split_manifest(path, test_where="theme=a", resplit=True)
    assert list(manifest.splits() == "test") == list(manifest.rows["theme"] == "a")


def test_group_by_joins_the_groups_of_duplicate_images(tmp_path):
    rows = themed(200)
    duplicates = {"img/0.png": 0, "img/21.png": 0, "img/45.png": 1, "img/199.png": 1}
    manifest = split_manifest(write(tmp_path, rows), group_by="site", groups=duplicates, seed=0)
    by_site = splits_per(manifest, "site")
    assert by_site["site 0"] == by_site["site 1"] and by_site["site 2"] == by_site["site 9"]
    assert all(len(found) == 1 for found in by_site.values())


@pytest.mark.parametrize("options, message", [
    ({"group_by": "photographer"}, r"--group-by 'photographer': .* has no column 'photographer' \(columns: image, "),
    ({"test_where": "photographer=ann"}, r"no column 'photographer' \(columns: .*theme, site"),
    ({"test_where": "theme=z"}, r"--test-where theme=z: no row has theme 'z' \(values there: 'a', 'b', 'c', 'd'\)"),
    ({"test_where": "theme"}, r"--test-where 'theme' is not COLUMN=VALUE"),
    ({"test_where": "theme=a", "test": 0.2}, r"--test 0.2 and --test-where theme=a both choose the test rows"),
])
def test_group_and_held_out_errors_name_the_value(tmp_path, options, message):
    with pytest.raises(MlkitError, match=message):
        split_manifest(write(tmp_path, themed(40)), **options)


def test_cli_split_test_where_and_group_by(tmp_path, capsys):
    path = write(tmp_path, themed(200))
    assert main(["data", "split", str(path), "--test-where", "theme=d", "--group-by", "site", "--val", "0.25"]) == 0
    manifest = read_manifest(path)
    assert list(manifest.splits() == "test") == list(manifest.rows["theme"] == "d")
    assert main(["data", "split", str(path), "--resplit", "--test-where", "theme=e"]) == 1
    assert "no row has theme 'e'" in capsys.readouterr().err
