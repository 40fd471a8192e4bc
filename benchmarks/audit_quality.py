"""Label errors on a real collection: mlkit's audit against cleanlab, on the Tux Paint stamps.

Debian's tuxpaint-stamps-default (802 PNG stamps in nested category folders) is cached once with the
pretrained MobileNetV2 (../shared/pretrained, 96 px). Two label sets come from the folders: every
level a label (multilabel, `mlkit data from-folders --labels path`) and the first level as the class
(multiclass). Errors are injected into 5% of the rows (multilabel: one true label dropped or one
false label added; multiclass: the class flipped), the audit runs with its defaults (k = 5 folds),
and mlkit's flags are compared with cleanlab's `find_label_issues` (prune by noise rate, ranked by
self-confidence) on the same out-of-fold scores: each method's n most likely flags (n = the number
injected), and its whole flag set. Then the
clean multilabel cache is audited as it is, and its label-error contact sheet is copied to --sheet.

    python benchmarks/audit_quality.py --seeds 3 --sheet docs/audit_stamps_label_errors.png
"""

import argparse
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from audit_data import PRETRAINED, cleanlab_ranked_flags, inject_label_errors, precision_recall, ranked_flags

import mlkit
from mlkit.bottlenecks.cache import open_cache, write_cache
from mlkit.data.adapters import from_folders
from mlkit.data.manifest import read_manifest

STAMPS = Path("/usr/share/tuxpaint/stamps")


def stamps_caches(workdir):
    """The multilabel stamps cache, and a multiclass copy of it (first folder level as the class)."""
    from_folders(STAMPS, workdir / "stamps" / "manifest.csv", labels="path")
    from_folders(STAMPS, workdir / "stamps" / "classes.csv", labels="first")
    result = mlkit.cache_features(workdir / "stamps" / "manifest.csv", workdir, backbone="mobilenetv2",
                                  weights=str(PRETRAINED), image_size=96, progress=False)
    cache = open_cache(result.path)
    classes = read_manifest(workdir / "stamps" / "classes.csv")
    index = dict(zip(classes.rows["image"], classes.label_array()))
    rows = cache.indices()
    multiclass = workdir / "bottlenecks" / "stamps_classes_mobilenetv2_inet_avg.h5"
    write_cache(multiclass, features=cache.read("features", rows), labels=[index[i] for i in cache.read("image", rows)],
                split=cache.read("split", rows), image=cache.read("image", rows),
                attrs={"task": "multiclass", "label_names": classes.label_names, "manifest_root": cache.attrs["manifest_root"]})
    return cache, open_cache(multiclass)


def compare(cache, workdir, seed):
    """One injection: (mlkit at n, cleanlab at n, mlkit's flags, cleanlab's flags), each (P, R, count).

    "At n": each method's flagged rows, most likely wrong first, cut at n = the number injected.
    """
    task, rows = cache.task, cache.indices()
    labels, injected = inject_label_errors(cache.read("labels", rows), task, share=0.05, seed=seed)
    noisy = workdir / f"seed{seed}" / "bottlenecks" / f"{cache.name}.h5"
    noisy.parent.mkdir(parents=True, exist_ok=True)
    write_cache(noisy, features=cache.read("features", rows), labels=labels, split=cache.read("split", rows),
                image=cache.read("image", rows), attrs={"task": task, "label_names": cache.label_names})
    scores = np.load(mlkit.audit(noisy, workdir=noisy.parents[1]).folder / "scores.npz")
    n = len(injected)
    mine, theirs = ranked_flags(scores), cleanlab_ranked_flags(task, labels, scores["oof_scores"])
    return [(*precision_recall(found, injected), len(found)) for found in (mine[:n], theirs[:n], mine, theirs)]


def main():
    # cleanlab warns about every label with a single positive row; the comparison stands as it is.
    warnings.filterwarnings("ignore", message="May not flag all label issues")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="injections per task (default 3)")
    parser.add_argument("--workdir", default=None, help="default: a temporary folder")
    parser.add_argument("--sheet", default=None, help="copy the clean audit's label-error contact sheet here")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="audit_quality_"))
    multilabel, multiclass = stamps_caches(workdir)
    print("task        seed  n   mlkit@n P/R   cleanlab@n P/R   mlkit flags (P/R, count)   cleanlab flags (P/R, count)")
    for cache in (multilabel, multiclass):
        for seed in range(args.seeds):
            at_n, theirs_n, own, theirs = compare(cache, workdir, seed)
            print(f"{cache.task:11s} {seed:4d} {at_n[2]:3d}  {at_n[0]:.3f}/{at_n[1]:.3f}   {theirs_n[0]:.3f}/{theirs_n[1]:.3f}"
                  f"      {own[0]:.3f}/{own[1]:.3f} ({own[2]})          {theirs[0]:.3f}/{theirs[1]:.3f} ({theirs[2]})", flush=True)
    result = mlkit.audit(multilabel.path, workdir=workdir)
    print("clean stamps audit:", result.summary["findings"], result.summary["pairs"])
    if args.sheet and (result.folder / "label_error.png").exists():
        shutil.copy(result.folder / "label_error.png", args.sheet)
        print("contact sheet copied to", args.sheet)


if __name__ == "__main__":
    main()
