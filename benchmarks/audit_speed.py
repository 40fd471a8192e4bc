"""The whole `mlkit audit` on a large synthetic cache: time and peak memory of each part.

Writes a multilabel cache of ROWS x DIMS float32 features (clustered, non-negative, as pooled CNN
features are; 20 labels set by cluster) and 8 x 8 thumbnails, with planted exact duplicates (shared
image hash, features and thumbnail; spread over the splits) and near duplicates (features plus 1%
noise, thumbnail plus noise of up to 6 levels), then runs `mlkit audit` on it in a
child process, so the peak resident memory measured is the audit's alone. Prints the seconds and
peak memory after each part (from summary.json), the total, peak memory over the feature matrix, and
the peak of a process that only imports what the audit uses (TensorFlow, Keras, faiss, mlkit).

    python benchmarks/audit_speed.py --rows 100000 --dims 1280
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mlkit.bottlenecks.cache import write_cache
from mlkit.thumbnails import THUMBNAIL_SHAPE

LABELS = 20
CLUSTERS = 50


def make_cache(path, rows, dims, planted, seed=0):
    """Writes the synthetic cache; returns the planted exact and near duplicate rows."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(1.0, 1.0, size=(CLUSTERS, dims)).astype(np.float32)
    cluster = rng.integers(0, CLUSTERS, rows)
    features = np.empty((rows, dims), np.float32)
    for start in range(0, rows, 10000):
        part = cluster[start:start + 10000]
        noise = rng.standard_normal((len(part), dims), dtype=np.float32)
        features[start:start + 10000] = np.maximum(centres[part] + noise, 0)
    label_sets = rng.random((CLUSTERS, LABELS)) < 0.1
    label_sets[np.arange(CLUSTERS), rng.integers(0, LABELS, CLUSTERS)] = True
    labels = label_sets[cluster].astype(np.uint8)
    split = rng.choice(np.array(["train", "val", "test"], dtype=object), rows, p=[0.7, 0.15, 0.15])
    sha = np.array([f"{i:064x}" for i in range(rows)], dtype=object)
    chosen = rng.choice(rows, size=(2 * planted, 2), replace=False)
    exact, near = chosen[:planted], chosen[planted:]
    features[exact[:, 1]], sha[exact[:, 1]], labels[exact[:, 1]] = features[exact[:, 0]], sha[exact[:, 0]], labels[exact[:, 0]]
    features[near[:, 1]] = features[near[:, 0]] * (1 + 0.01 * rng.standard_normal((planted, dims), dtype=np.float32))
    # Thumbnails as cache-features stores them: the exact copies share theirs, the near ones are redrawn
    # with a little noise (random thumbnails of distinct images correlate about 0.07 at most, as copies do not).
    thumbnails = rng.integers(0, 256, size=(rows, *THUMBNAIL_SHAPE), dtype=np.uint8)
    thumbnails[exact[:, 1]] = thumbnails[exact[:, 0]]
    noise = rng.integers(-6, 7, size=(planted, *THUMBNAIL_SHAPE))
    thumbnails[near[:, 1]] = np.clip(thumbnails[near[:, 0]].astype(int) + noise, 0, 255).astype(np.uint8)
    write_cache(path, features=features, labels=labels, split=split, image_sha256=sha, thumbnail=thumbnails,
                attrs={"task": "multilabel", "label_names": [f"label{j}" for j in range(LABELS)]})


def child_peak(code):
    """Runs Python `code` in a child process; returns the child's peak resident memory in bytes."""
    report = "; print('VmHWM', next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')))"
    done = subprocess.run([sys.executable, "-c", code + report], stdout=subprocess.PIPE, text=True, check=True)
    return int(done.stdout.split()[-1]) * 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100000)
    parser.add_argument("--dims", type=int, default=1280)
    parser.add_argument("--planted", type=int, default=500, help="exact and near duplicate pairs each (default 500)")
    parser.add_argument("--workdir", default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--linear-weight", type=float, default=None,
                        help="the audit's --linear-weight (default: the audit's; 0 times the audit without its linear witness)")
    parser.add_argument("--write-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="audit_speed_"))
    cache = workdir / "bottlenecks" / "bench_all_synthetic_inet_avg.h5"
    cache.parent.mkdir(parents=True, exist_ok=True)
    if args.write_only:
        make_cache(cache, args.rows, args.dims, args.planted)
        return
    # Written by a child process: Linux carries a process's peak memory into the children it forks.
    subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--dims", str(args.dims), "--planted",
                    str(args.planted), "--workdir", str(workdir), "--write-only"], check=True)
    matrix_bytes = 4 * args.rows * args.dims
    print(f"wrote {cache} ({args.rows} x {args.dims}, {matrix_bytes / 2**20:.0f} MiB of features)", flush=True)
    # Each child reports its own peak resident memory (VmHWM, which exec resets); getrusage's
    # ru_maxrss would also count the parent's peak carried over the fork.
    baseline = child_peak("import faiss, mlkit.auditing.folds, mlkit.auditing.run")
    weight = "" if args.linear_weight is None else f", linear_weight={args.linear_weight}"
    started = time.perf_counter()
    # mlkit.audit itself, not the CLI, whose parser imports TensorFlow before any work is done.
    peak = child_peak("import logging, mlkit; logging.basicConfig(level=logging.INFO, format='%(message)s'); "
                      f"mlkit.audit({str(cache)!r}, workdir={str(workdir)!r}{weight})")
    seconds = time.perf_counter() - started
    summary = json.loads((workdir / "audit" / cache.stem / "summary.json").read_text())
    for part, numbers in summary["timings"].items():
        print(f"  {part:20s} {numbers['seconds']:7.1f} s   peak so far {numbers['peak_mib']:6d} MiB")
    print(f"total {seconds:.0f} s (target 300); peak {peak / 2**20:.0f} MiB = {peak / matrix_bytes:.2f} x the feature "
          f"matrix (target 3)")
    print(f"importing what the audit uses (TensorFlow, Keras, faiss, mlkit) alone peaks at {baseline / 2**20:.0f} MiB; "
          f"the audit's own share, {(peak - baseline) / 2**20:.0f} MiB, is {(peak - baseline) / matrix_bytes:.2f} x the matrix")
    print(f"findings: {summary['findings']}; pairs: {summary['pairs']}")


if __name__ == "__main__":
    main()
