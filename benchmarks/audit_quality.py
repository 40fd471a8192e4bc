"""Label errors on real collections: mlkit's audit against cleanlab, on planted noise.

Two multilabel collections, each cached once with the pretrained MobileNetV2 (../shared/pretrained,
96 px) and reused by every run:

- stamps: Debian's tuxpaint-stamps-default, every folder level a label (the manifest
  benchmarks/transfer_quality.py builds: `from-folders --labels path`, split 70/15/15, seed 0);
- icons: the icon-theme collection of benchmarks/icon_themes.py (--icons, its manifest.csv).

For each noise kind (swap: a row gets another row's labels; add: one false label added; drop: one
true label removed), share of rows (5%, 10%) and planting seed, the labels are corrupted and the
audit's label check runs as `mlkit.audit` runs it, through the same functions: the fold tops'
out-of-fold scores (`run.fold_scores`, on the taps `--fold-taps` names, `--repeats` draws) averaged with
the linear witness's on the same folds (`run.linear_witness`, `--linear-weight`), then the
combined check (`run.check_labels`: neighbours' and duplicate partners' votes) on the nearest
neighbours and duplicate pairs, which do not depend on the labels and are found once per collection.
mlkit's ranking is its flagged rows by score, the order issues.csv lists them in; cleanlab's is
`find_label_issues` (its defaults: prune by noise rate, ranked by self-confidence) on the same
out-of-fold scores (the tops' and the linear witness's averaged), and, as `cleanlab_tops`, on the
fold tops' scores alone. Each is cut at n (the rows planted) and 2n.

Each draw's fold-top scores are saved under WORKDIR/scores/ and reused, so a rerun (another
ranking, more repeats, a further seed) trains only what is new; the linear witness takes seconds and
is fitted each time. `--check-audit` also runs
`mlkit.audit` end to end on the first planting and checks that it ranks the same rows.

    PYTHONPATH=. python benchmarks/audit_quality.py --workdir /tmp/aq4 --seeds 0,1 --json audit_quality.json
"""

import argparse
import json
import shutil
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from audit_data import NOISE_KINDS, PRETRAINED, cleanlab_ranked_flags, inject_label_errors

import mlkit
from mlkit.auditing import duplicates, run
from mlkit.auditing import neighbours as knn
from mlkit.auditing.config import AuditConfig
from mlkit.auditing.near import near_duplicates
from mlkit.bottlenecks.cache import open_cache
from mlkit.data.adapters import from_folders
from mlkit.data.split import split_manifest

STAMPS = Path("/usr/share/tuxpaint/stamps")
SHARES = (0.05, 0.10)


def stamps_manifest(workdir):
    """The stamps manifest as benchmarks/transfer_quality.py builds it, once (a newer one would send
    cache-features through every row again)."""
    path = workdir / "stamps" / "manifest.csv"
    if not path.exists():
        split_manifest(from_folders(STAMPS, path, labels="path"), val=0.15, test=0.15, seed=0)
    return path


def cached(manifest, workdir, name, taps):
    """The collection's cache, made once: a cache already in WORKDIR/bottlenecks is read as it is."""
    made = workdir / "bottlenecks" / f"{name}_all_mobilenetv2_inet_avg.h5"
    if made.exists():
        return open_cache(made)
    result = mlkit.cache_features(manifest, workdir, backbone="mobilenetv2", weights=str(PRETRAINED), image_size=96,
                                  progress=False, dataset=name, taps=taps)
    return open_cache(result.path)


def label_free_evidence(cache, table, config):
    """What the label check uses that does not depend on the labels: neighbours (by the cache's output,
    and the voting ones by the fold features) and duplicate pairs."""
    similarities, positions = knn.nearest_neighbours(cache.path, table["rows"], config.neighbours)
    groups = duplicates.exact_groups(table["sha256"])
    near, _ = near_duplicates(cache, table, (similarities, positions), groups, config)
    pairs = np.concatenate([duplicates.exact_pairs(groups), np.stack(near[:2], axis=1).astype(np.int64)])
    features, taps = run.fold_features(cache, table["rows"], config)
    return positions, pairs, run.vote_neighbours(cache, features, taps, config, ".") if len(taps) > 1 else None


def draw_scores(cache, table, config, path):
    """One draw's out-of-fold scores (`run.fold_scores`), saved at `path` and reused."""
    if path.exists():
        return dict(np.load(path))
    folds = run.fold_scores(cache, table, config, workdir=".")
    np.savez(path, scores=folds["scores"], folds=folds["folds"])
    return {"scores": folds["scores"], "folds": folds["folds"]}


def mlkit_ranking(cache, table, folds, evidence, config):
    """The flagged rows, highest score first, as issues.csv lists the label errors."""
    positions, pairs, voters = evidence
    voting = {} if voters is None else {"vote_positions": voters}
    checked = run.check_labels(cache, table, {**folds, **voting}, positions, pairs, config)
    quality = checked["quality"]
    flagged = np.flatnonzero(quality.flagged)
    return flagged[np.argsort(-quality.score[flagged], kind="stable")]


def hits(ranked, planted, cut):
    return len(set(map(int, ranked[:cut])) & set(map(int, planted)))


def run_one(cache, table, evidence, config, planting, workdir):
    """One planting: precision and recall at n and 2n of mlkit and cleanlab, and their flag counts.

    `evidence` is `label_free_evidence` and the fold features with their tap weights.
    """
    kind, share, seed = planting
    labels, planted = inject_label_errors(table["labels"], cache.task, share=share, seed=seed, kind=kind)
    noisy = {**table, "labels": labels}
    collection = cache.name.split("_")[0]
    draws = [draw_scores(cache, noisy, replace(config, seed=config.seed + run.REPEAT_SEED_STEP * repeat, repeats=1),
                         workdir / "scores" / f"{collection}_{config.taps}_{kind}_{share}_{seed}_d{repeat}.npz")
             for repeat in range(config.repeats)]
    *neighbours, (features, weights) = evidence
    linear = run.linear_witness(features, labels, cache, draws[0]["folds"], weights, config)
    folds = {"folds": draws[0]["folds"],
             **run.mix_witnesses(np.mean([d["scores"] for d in draws], axis=0).astype(np.float32), linear, config)}
    mine = mlkit_ranking(cache, noisy, folds, neighbours, config)
    rankings = {"mlkit": mine, "cleanlab": cleanlab_ranked_flags(cache.task, labels, folds["scores"]),
                "cleanlab_tops": cleanlab_ranked_flags(cache.task, labels, folds["top_scores"])}
    n = len(planted)
    record = {"collection": collection, "kind": kind, "share": share, "seed": seed, "n": n,
              "mlkit_flags": len(mine), "cleanlab_flags": len(rankings["cleanlab"])}
    for method, ranked in rankings.items():
        for cut, label in ((n, "n"), (2 * n, "2n")):
            found = hits(ranked, planted, cut)
            record[f"{method}_p@{label}"] = found / cut
            record[f"{method}_r@{label}"] = found / n
    return record, mine, labels


def check_audit(cache, labels, ranked, config, workdir):
    """`mlkit.audit` end to end on a copy of the cache with these labels: the same rows in the same order?"""
    folder = workdir / "check_audit"
    path = folder / "bottlenecks" / f"{cache.name}.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cache.path, path)
    with h5py.File(path, "r+") as h5:
        h5["labels"][cache.indices()] = labels
    result = mlkit.audit(path, workdir=folder, taps=config.taps, repeats=config.repeats,
                         linear_weight=config.linear_weight)
    position = {int(row): at for at, row in enumerate(cache.indices())}
    found = result.issues[result.issues["kind"] == "label_error"]["row"]
    same = [position[int(row)] for row in found] == [int(at) for at in ranked]
    print(f"mlkit.audit ranks the same {len(ranked)} rows in the same order: {same}", flush=True)
    shutil.rmtree(folder)


def main():
    # cleanlab warns about every label with a single positive row; the comparison stands as it is.
    warnings.filterwarnings("ignore", message="May not flag all label issues")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--icons", default="/work/data/icons/manifest.csv", help="the icon-theme manifest")
    parser.add_argument("--collections", default="stamps,icons", help="which collections (default stamps,icons)")
    parser.add_argument("--seeds", default="0", help="planting seeds, joined by commas (default 0)")
    parser.add_argument("--kinds", default=",".join(NOISE_KINDS), help="noise kinds (default swap,add,drop)")
    parser.add_argument("--taps", default="all", help="taps to cache (default all: every named depth)")
    parser.add_argument("--fold-taps", default="all", help="taps the fold tops read (the audit's --taps; default all)")
    parser.add_argument("--repeats", type=int, default=1, help="draws of the folds (the audit's --repeats; default 1)")
    parser.add_argument("--linear-weight", type=float, default=AuditConfig.linear_weight,
                        help=f"the audit's --linear-weight (default {AuditConfig.linear_weight}; 0: the fold tops alone)")
    parser.add_argument("--workdir", default="audit_quality", help="caches and saved fold scores (default ./audit_quality)")
    parser.add_argument("--check-audit", action="store_true", help="also run mlkit.audit on the first planting")
    parser.add_argument("--json", default=None, help="also write every run's numbers here")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    (workdir / "scores").mkdir(parents=True, exist_ok=True)
    config = AuditConfig(taps=args.fold_taps, repeats=args.repeats, linear_weight=args.linear_weight)
    manifests = {"stamps": lambda: stamps_manifest(workdir), "icons": lambda: Path(args.icons)}
    records = []
    for collection in args.collections.split(","):
        cache = cached(manifests[collection](), workdir, collection, args.taps)
        table = run.load_rows(cache)
        print(f"{cache.path}: {len(table['rows'])} rows, taps {', '.join(('last',) + cache.taps)}", flush=True)
        features, taps = run.fold_features(cache, table["rows"], config)
        evidence = (*label_free_evidence(cache, table, config), (features, run.tap_weights(cache, taps, config, ".")))
        for seed in map(int, args.seeds.split(",")):
            for kind in args.kinds.split(","):
                for share in SHARES:
                    start = time.perf_counter()
                    record, ranked, labels = run_one(cache, table, evidence, config, (kind, share, seed), workdir)
                    records.append(record)
                    print({**record, "seconds": round(time.perf_counter() - start)}, flush=True)
                    if args.check_audit and len(records) == 1:
                        check_audit(cache, labels, ranked, config, workdir)
    table = pd.DataFrame(records)
    print(table.to_string(float_format="%.3f"))
    means = table.groupby(["collection", "seed"])[[c for c in table.columns if "@" in c]].mean()
    print(means.to_string(float_format="%.3f"))
    print(table.groupby("collection")[[c for c in table.columns if "@" in c]].mean().to_string(float_format="%.3f"))
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
