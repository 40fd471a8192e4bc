"""How fast are the decision rules and the full multilabel report at iMet's size?

Random float32 scores for 100,000 images x 1,103 labels (iMet 2019) with
sparse, skewed multi-hot labels (about 4 labels per image, label frequencies
following a power law) and scores that rank positives higher, as a trained
model's would. Times fitting `cardinality`, `fbeta:2` and `per-class:2` and
computing `multilabel_report` with scores (AP and ROC AUC included), and
measures each step's peak extra memory (NumPy allocations, via tracemalloc)
as a multiple of the score matrix. Target: under 2 s and 3x each.

Run:
    python benchmarks/decisions_speed.py                # iMet's size
    python benchmarks/decisions_speed.py --images 20000 --repeat 3
"""

import argparse
import sys
import time
import tracemalloc

import numpy as np

from mlkit.evaluation.decisions import parse_rule
from mlkit.evaluation.metrics import multilabel_report


def make_data(n_images, n_labels, seed, labels_per_image=4.0):
    """Skewed sparse labels and scores where positives score higher (AUC about 0.9)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_labels + 1) ** 0.9
    frequency = np.minimum(0.3, labels_per_image * weights / weights.sum()).astype(np.float32)
    labels = np.empty((n_images, n_labels), np.uint8)
    scores = np.empty((n_images, n_labels), np.float32)
    offset = np.log(frequency / (1 - frequency)) - 1.0
    for start in range(0, n_images, 10_000):
        part = slice(start, min(start + 10_000, n_images))
        labels[part] = rng.random((part.stop - start, n_labels), dtype=np.float32) < frequency
        logits = offset + 2.5 * labels[part] + rng.standard_normal((part.stop - start, n_labels), dtype=np.float32)
        scores[part] = 1.0 / (1.0 + np.exp(-logits))
    return scores, labels


def steps(scores, labels):
    """The timed steps, as (name, function) pairs."""
    cardinality = float(labels.sum() / len(labels))
    decisions = parse_rule("cardinality").fit(scores, train_cardinality=cardinality).apply(scores)
    return [
        ("fit cardinality", lambda: parse_rule("cardinality").fit(scores, train_cardinality=cardinality)),
        ("fit fbeta:2", lambda: parse_rule("fbeta:2").fit(scores, labels)),
        ("fit per-class:2", lambda: parse_rule("per-class:2").fit(scores, labels)),
        ("report (AP, AUC)", lambda: multilabel_report(labels, decisions, scores)),
        ("apply threshold", lambda: parse_rule("threshold:0.5").apply(scores)),
    ]


def measure(function, repeat):
    """(best seconds over `repeat` runs, peak traced bytes of one more run)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    function()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return min(times), peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000, help="rows (default: 100000, iMet)")
    parser.add_argument("--labels", type=int, default=1103, help="label columns (default: 1103, iMet)")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per step; the best is shown (default: 2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    scores, labels = make_data(args.images, args.labels, args.seed)
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"scores: {scores.shape[0]:,} x {scores.shape[1]:,} float32 = {scores.nbytes / 2**20:,.0f} MiB; "
          f"labels per image {labels.sum() / len(labels):.2f}; positives {int(labels.sum()):,}")
    print(f"{'step':<20} {'seconds':>8} {'peak / scores':>14}")
    for name, function in steps(scores, labels):
        seconds, peak = measure(function, args.repeat)
        print(f"{name:<20} {seconds:>8.2f} {peak / scores.nbytes:>13.2f}x")


if __name__ == "__main__":
    main()
