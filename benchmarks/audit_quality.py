"""Label errors on real collections: mlkit's audit against cleanlab, on planted noise.

Two multilabel collections, each cached once with the pretrained MobileNetV2 (../shared/pretrained,
96 px) and reused by every run:

- stamps: Debian's tuxpaint-stamps-default, every folder level a label (the manifest
  benchmarks/transfer_quality.py builds: `from-folders --labels path`, split 70/15/15, seed 0);
- icons: the icon-theme collection of benchmarks/icon_themes.py (--icons, its manifest.csv).

For each noise kind (swap: a row gets another row's labels; add: one false label added; drop: one
true label removed) and share of rows (5%, 10%), the labels of a copy of the cache are corrupted and
`mlkit.audit` runs with its defaults. mlkit's ranking is its label-error findings in issues.csv's
order; cleanlab's is `find_label_issues` (its defaults: prune by noise rate, ranked by
self-confidence) on the audit's own out-of-fold scores. Each is cut at n (the rows planted) and 2n.

    python benchmarks/audit_quality.py --icons /work/data/icons/manifest.csv --json audit_quality.json

With --taps all the collections are cached with every named tap and the fold tops read them
(the audit's default when a cache has taps): stronger fold models, for both methods, at 2-3 times
the CPU.
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from audit_data import NOISE_KINDS, PRETRAINED, cleanlab_ranked_flags, inject_label_errors

import mlkit
from mlkit.bottlenecks.cache import open_cache
from mlkit.data.adapters import from_folders
from mlkit.data.split import split_manifest

STAMPS = Path("/usr/share/tuxpaint/stamps")
SHARES = (0.05, 0.10)


def stamps_manifest(workdir):
    """The stamps manifest as benchmarks/transfer_quality.py builds it."""
    manifest = from_folders(STAMPS, workdir / "stamps" / "manifest.csv", labels="path")
    split_manifest(manifest, val=0.15, test=0.15, seed=0)
    return manifest


def cached(manifest, workdir, name, taps):
    """The collection's cache, made once (cache-features reuses a finished one)."""
    result = mlkit.cache_features(manifest, workdir, backbone="mobilenetv2", weights=str(PRETRAINED), image_size=96,
                                  progress=False, dataset=name, taps=taps)
    return open_cache(result.path)


def noisy_copy(cache, folder, labels):
    """A copy of the cache (features, taps, thumbnails and all) whose labels are `labels`."""
    path = folder / "bottlenecks" / f"{cache.name}.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cache.path, path)
    with h5py.File(path, "r+") as h5:
        h5["labels"][cache.indices()] = labels
    return path


def hits(ranked, planted, cut):
    return len(set(map(int, ranked[:cut])) & set(map(int, planted)))


def run_one(cache, workdir, kind, share, seed):
    """One planted noise: precision and recall at n and 2n of mlkit and cleanlab, and mlkit's flag count."""
    rows = cache.indices()
    labels, planted = inject_label_errors(cache.read("labels", rows), cache.task, share=share, seed=seed, kind=kind)
    folder = workdir / f"{cache.name}_{kind}_{share}_{seed}"
    result = mlkit.audit(noisy_copy(cache, folder, labels), workdir=folder)
    scores = np.load(result.folder / "scores.npz")
    position = {int(row): at for at, row in enumerate(scores["row"])}
    findings = result.issues[result.issues["kind"] == "label_error"]
    mine = np.array([position[int(row)] for row in findings["row"]], dtype=np.int64)
    theirs = cleanlab_ranked_flags(cache.task, labels, scores["oof_scores"])
    n = len(planted)
    record = {"collection": cache.name.split("_")[0], "kind": kind, "share": share, "seed": seed, "n": n,
              "mlkit_flags": len(mine), "cleanlab_flags": len(theirs)}
    for method, ranked in (("mlkit", mine), ("cleanlab", theirs)):
        for cut, label in ((n, "n"), (2 * n, "2n")):
            found = hits(ranked, planted, cut)
            record[f"{method}_p@{label}"] = found / cut
            record[f"{method}_r@{label}"] = found / n
    shutil.rmtree(folder)
    return record


def main():
    # cleanlab warns about every label with a single positive row; the comparison stands as it is.
    warnings.filterwarnings("ignore", message="May not flag all label issues")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--icons", default="/work/data/icons/manifest.csv", help="the icon-theme manifest")
    parser.add_argument("--seeds", type=int, default=1, help="plantings per kind and share (default 1)")
    parser.add_argument("--taps", default="last", help="taps to cache (default last: the backbone's output alone)")
    parser.add_argument("--workdir", default=None, help="default: a temporary folder; caches are reused from it")
    parser.add_argument("--json", default=None, help="also write every run's numbers here")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="audit_quality_"))
    caches = [cached(stamps_manifest(workdir), workdir, "stamps", args.taps),
              cached(Path(args.icons), workdir, "icons", args.taps)]
    records = []
    for cache in caches:
        for kind in NOISE_KINDS:
            for share in SHARES:
                for seed in range(args.seeds):
                    start = time.perf_counter()
                    records.append(run_one(cache, workdir, kind, share, seed))
                    print({**records[-1], "seconds": round(time.perf_counter() - start)}, flush=True)
    table = pd.DataFrame(records)
    print(table.to_string(float_format="%.3f"))
    means = table.groupby("collection")[[c for c in table.columns if "@" in c]].mean()
    print(means.to_string(float_format="%.3f"))
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
