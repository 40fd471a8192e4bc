"""PNG plots for `mlkit evaluate --plots DIR`.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no
display, no global state), so plotting works on headless machines and inside
other programs. Every function writes one PNG and returns its path.
"""

import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mlkit.evaluation.decisions import threshold_sweep
from mlkit.evaluation.metrics import as_multi_hot, as_score_matrix, label_curve_counts

DEFAULT_TOP_N = 10


def new_figure(figsize):
    """A figure on its own Agg canvas and its axes: no pyplot, no switch of the caller's backend."""
    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _save(figure, path):
    """Writes the figure as a PNG, creating the folder, and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def _most_common_labels(labels, top_n):
    """Indices of the top_n labels by support among those with both classes, most common first."""
    support = labels.sum(axis=0)
    usable = np.flatnonzero((support > 0) & (support < labels.shape[0]))
    return usable[np.argsort(-support[usable], kind="stable")][:top_n]


def roc_per_label(path, labels, scores, label_names, top_n=DEFAULT_TOP_N):
    """ROC curves of the most common labels (the iMet report, figure 6; docs/references.md).

    Args:
        path: PNG to write.
        labels: (N, L) multi-hot truth.
        scores: (N, L) scores.
        label_names: L names.
        top_n: how many labels, by test support. Defaults to 10.

    Returns:
        The path written.
    """
    labels, scores = as_multi_hot(labels), as_score_matrix(scores)
    figure = Figure(figsize=(6.5, 5.5))
    axes = figure.add_subplot()
    for j in _most_common_labels(labels, top_n):
        _, tp, fp = label_curve_counts(labels[:, j], scores[:, j])
        n_pos = int(labels[:, j].sum())
        tpr, fpr = np.r_[0, tp / n_pos], np.r_[0, fp / (len(labels) - n_pos)]
        area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
        axes.plot(fpr, tpr, linewidth=1, label=f"{label_names[j]} ({area:.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="false positive rate", ylabel="true positive rate",
             title=f"ROC per label (top {top_n} by support; AUC)")
    axes.legend(fontsize="small", loc="lower right")
    return _save(figure, path)


def precision_recall(path, labels, scores, label_names, top_n=DEFAULT_TOP_N, sweep=None):
    """Micro-averaged precision-recall curve and those of the most common labels.

    Args:
        path: PNG to write.
        labels: (N, L) multi-hot truth.
        scores: (N, L) scores.
        label_names: L names.
        top_n: how many labels, by test support. Defaults to 10.
        sweep: a `threshold_sweep` of these scores and labels, if already made.
            Defaults to None.

    Returns:
        The path written.
    """
    labels, scores = as_multi_hot(labels), as_score_matrix(scores)
    sweep = sweep or threshold_sweep(scores, labels)
    figure = Figure(figsize=(6.5, 5.5))
    axes = figure.add_subplot()
    for j in _most_common_labels(labels, top_n):
        _, tp, fp = label_curve_counts(labels[:, j], scores[:, j])
        axes.plot(tp / tp[-1], tp / (tp + fp), linewidth=1, alpha=0.7, label=label_names[j])
    if sweep["n_positives"]:
        predicted = np.maximum(sweep["predicted"], 1)
        axes.plot(sweep["true_positives"] / sweep["n_positives"], sweep["true_positives"] / predicted,
                  color="black", linewidth=2, label="micro (all labels)")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="Precision-recall")
    axes.legend(fontsize="small", loc="lower left")
    return _save(figure, path)


def threshold_curves(path, sweep, thresholds=None, betas=(1.0, 2.0)):
    """Micro F-beta and predicted cardinality against a global threshold (the iMet report, fig. 12).

    Args:
        path: PNG to write.
        sweep: a `threshold_sweep` with labels.
        thresholds: {name: global threshold} to mark, e.g. fitted rules.
            Defaults to None.
        betas: which F-beta curves to draw. Defaults to (1.0, 2.0).

    Returns:
        The path written.
    """
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    tau = sweep["threshold"]
    if sweep["n_positives"]:
        for beta in betas:
            b2 = beta * beta
            fbeta = (1 + b2) * sweep["true_positives"] / (sweep["predicted"] + b2 * sweep["n_positives"])
            axes.plot(tau, fbeta, label=f"F{beta:g}")
    axes.set(xlabel="threshold (label if score >= threshold)", ylabel="micro F-beta", ylim=(0, 1.02))
    right = axes.twinx()
    right.plot(tau, sweep["predicted"] / sweep["n_images"], color="tab:red", linestyle="--",
               label="predicted labels per image")
    if sweep["n_positives"]:
        right.axhline(sweep["n_positives"] / sweep["n_images"], color="tab:red", linestyle=":", linewidth=1,
                      label="true labels per image")
    cardinality = (sweep["n_positives"] or sweep["predicted"][-1]) / sweep["n_images"]
    # Near a threshold of 0 every label is predicted; zoom on the range around the true cardinality.
    right.set(ylabel="labels per image", ylim=(0, max(3 * cardinality, 1)))
    for name, value in (thresholds or {}).items():
        axes.axvline(value, color="grey", linewidth=1)
        axes.annotate(name, (value, 1.0), rotation=90, fontsize="small", va="top", ha="right")
    lines = axes.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    axes.legend(lines[0] + more[0], lines[1] + more[1], fontsize="small", loc="center right")
    axes.set_title("F-beta and predicted cardinality against the threshold")
    return _save(figure, path)


def confusion_matrix(path, matrix, label_names):
    """A row-normalised confusion matrix (rows: true class, columns: predicted).

    Args:
        path: PNG to write.
        matrix: (C, C) counts.
        label_names: C names.

    Returns:
        The path written.
    """
    matrix = np.asarray(matrix, np.float64)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = min(4 + 0.35 * len(matrix), 16)
    figure = Figure(figsize=(size + 1, size))
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, label="share of the true class")
    ticks = np.arange(len(matrix))
    axes.set_xticks(ticks, label_names, rotation=90, fontsize="small")
    axes.set_yticks(ticks, label_names, fontsize="small")
    if len(matrix) <= 20:
        for (row, col), count in np.ndenumerate(matrix):
            axes.text(col, row, f"{count:.0f}", ha="center", va="center", fontsize="x-small",
                      color="white" if shares[row, col] > 0.5 else "black")
    axes.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    return _save(figure, path)


def predicted_against_true(path, targets, predictions, target_names):
    """Regression: predictions against targets, one panel per target.

    Args:
        path: PNG to write.
        targets: (N, T) or (N,) true values.
        predictions: the same shape.
        target_names: T names.

    Returns:
        The path written.
    """
    targets = np.asarray(targets, np.float64).reshape(len(targets), -1)
    predictions = np.asarray(predictions, np.float64).reshape(len(predictions), -1)
    figure = Figure(figsize=(4.5 * targets.shape[1], 4.5))
    for t, name in enumerate(target_names):
        axes = figure.add_subplot(1, targets.shape[1], t + 1)
        axes.scatter(targets[:, t], predictions[:, t], s=4, alpha=0.4)
        low, high = np.min(targets[:, t]), np.max(targets[:, t])
        axes.plot([low, high], [low, high], color="grey", linestyle=":")
        axes.set(xlabel=f"true {name}", ylabel=f"predicted {name}")
    return _save(figure, path)


def multilabel_plots(plots_dir, labels, scores, label_names, thresholds=None, top_n=DEFAULT_TOP_N):
    """All multilabel plots: ROC per label, precision-recall, threshold curves.

    Args:
        plots_dir: folder to write into.
        labels: (N, L) multi-hot truth.
        scores: (N, L) scores.
        label_names: L names.
        thresholds: {rule spec: global threshold} to mark. Defaults to None.
        top_n: labels per curve plot. Defaults to 10.

    Returns:
        The paths written.
    """
    os.makedirs(plots_dir, exist_ok=True)
    sweep = threshold_sweep(scores, labels)
    return [
        roc_per_label(Path(plots_dir) / "roc_per_label.png", labels, scores, label_names, top_n),
        precision_recall(Path(plots_dir) / "precision_recall.png", labels, scores, label_names, top_n, sweep),
        threshold_curves(Path(plots_dir) / "threshold_curves.png", sweep, thresholds),
    ]
