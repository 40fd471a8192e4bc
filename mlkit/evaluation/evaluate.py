"""`mlkit evaluate`: decide labels from scores and report the metrics.

`evaluate_scores` works on arrays and is what the stages call (stage 2 on
scores from the cache, stage 3 on an exported model's); `evaluate_file` reads a
`.npz` file and writes the JSON report and plots. The command line is
`mlkit.evaluation.cli`.

The report (what `evaluate_scores` returns and `--json` writes) for a
multilabel task:

    {
      "task": "multilabel", "n_images": N, "n_labels": L,
      "fitted_on": "validation scores" | "the evaluated scores (optimistic)",
      "primary": "<spec of the first rule>",
      # the first rule's results, at the top level:
      "micro":   {"precision", "recall", "f1", "f2"},
      "macro":   {"precision", "recall", "f1", "f2"},
      "samples": {"precision", "recall", "f1", "f2"},
      "map": float, "auc": float, "hamming": float, "subset_accuracy": float,
      "cardinality": {"true", "predicted"},
      "excluded": {"labels_without_positives", "images_without_labels",
                   "labels_without_both_classes"},
      "excluded_from": {same keys: what each was left out of},
      "decision": {Rule.to_dict(): spec, kind, param, threshold, min_labels,
                   max_labels, min_positives, deployable, fit},
      "upper_bound": false,
      # every rule, the first included, with the same keys:
      "rules": {"<spec>": {"micro", "macro", "samples", "map", "auc", "hamming",
                           "subset_accuracy", "cardinality", "excluded",
                           "excluded_from", "decision", "upper_bound"}},
      "best_possible": {"topk:K": {"k", "micro", "macro", "samples"}},
      "per_label": [{"name", "support", "ap", "auc", "f1", "precision",
                     "recall"}],             # under the first rule
      "best_labels": [...], "worst_labels": [...],   # by AUC, the iMet report
      "plots": ["DIR/roc_per_label.png", ...]        # with plots_dir
    }

Values are fractions in [0, 1] (the printed table shows percentages); a value
that is undefined (e.g. "auc" when no label has both classes) is null, never
NaN. Multiclass reports hold "accuracy", "macro_f1", "macro",
"confusion_matrix", "per_label", "excluded" and "decision" (argmax);
regression reports "mae", "rmse", "per_target" and "decision" (identity), in
the units of the values given.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlkit.errors import MlkitError
from mlkit.evaluation.decisions import DEFAULT_MIN_POSITIVES, Rule, parse_rule
from mlkit.evaluation.metrics import (
    DEFAULT_MIN_SUPPORT,
    as_multi_hot,
    as_score_matrix,
    multiclass_report,
    multilabel_report,
    regression_report,
    topk_best_possible,
)
from mlkit.files import StrPath, write_text
from mlkit.vocabulary import TASKS

if TYPE_CHECKING:
    import numpy.typing as npt

log = logging.getLogger(__name__)

DEFAULT_DECISIONS = ("cardinality",)
# Labels drawn in the per-label plots (ROC, precision-recall).
DEFAULT_TOP_N = 10
# The keys each rule's entry holds; the first rule's also sit at the top level.
RULE_KEYS = ("micro", "macro", "samples", "map", "auc", "hamming", "subset_accuracy", "cardinality",
             "excluded", "excluded_from", "decision", "upper_bound")


def evaluate_scores(
    scores: npt.ArrayLike, labels: npt.ArrayLike, label_names: Sequence[str], task: str = "multilabel",
    decisions: Sequence[str] = DEFAULT_DECISIONS, fit_scores: npt.ArrayLike | None = None,
    fit_labels: npt.ArrayLike | None = None, train_cardinality: float | None = None, plots_dir: StrPath | None = None,
    *, min_labels: int = 0, max_labels: int | None = None, min_positives: int = DEFAULT_MIN_POSITIVES,
    min_support: int = DEFAULT_MIN_SUPPORT, top_n: int = DEFAULT_TOP_N,
) -> dict:

    """Decides labels with each rule and reports every metric.

    Rules that need fitting are fitted on `fit_scores`/`fit_labels` (the
    validation split) when given, otherwise on the evaluated scores
    themselves, which flatters them; the report's "fitted_on" says which.

    Args:
        scores: (N, L) scores (multilabel, multiclass) or (N, T) predictions
            (regression, in original units).
        labels: (N, L) multi-hot (multilabel), (N,) class indices or one-hot
            (multiclass), or (N, T) targets (regression).
        label_names: L label, class or target names (None: generated).
        task: "multilabel", "multiclass" or "regression". Defaults to "multilabel".
        decisions: rule specs or `Rule` objects (already fitted ones, e.g.
            from an exported model, are applied as they are); the first is the
            primary rule. Multiclass always uses argmax and regression
            identity. Defaults to ("cardinality",).
        fit_scores: validation scores to fit rules on. Defaults to None.
        fit_labels: validation labels to fit rules on. Defaults to None.
        train_cardinality: training label cardinality, the target of
            "cardinality". Defaults to None (the fit labels' cardinality).
        plots_dir: folder for PNG plots, or None for none. Defaults to None.
        min_labels: labels each image gets at least (rules given as specs).
            Defaults to 0.
        max_labels: labels each image gets at most. Defaults to None.
        min_positives: per-class rules' fallback limit. Defaults to 5.
        min_support: fewest positives for the best/worst labels. Defaults to 20.
        top_n: labels drawn in the per-label plots. Defaults to 10.

    Returns:
        The report dict described in this module's docstring.

    Example:
        report = evaluate_scores(test_scores, y_test, names, decisions=("cardinality", "fbeta:2"),
                                 fit_scores=val_scores, fit_labels=y_val, train_cardinality=4.1)
        print(format_table(report))
    """
    if task not in TASKS:
        raise MlkitError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    if task != "multilabel":
        return _evaluate_single(scores, labels, label_names, task, decisions, plots_dir)
    options = {"min_labels": min_labels, "max_labels": max_labels, "min_positives": min_positives}
    rules = _rules(decisions, options)
    scores = as_score_matrix(scores)
    labels = as_multi_hot(labels, scores.shape)
    fitted_on = _fit_rules(rules, scores, labels, fit_scores, fit_labels, train_cardinality)
    report = {"task": "multilabel", "n_images": int(scores.shape[0]), "n_labels": int(scores.shape[1]),
              "fitted_on": fitted_on, "primary": rules[0].spec, "rules": {}, "best_possible": {}}
    for index, rule in enumerate(rules):
        decided = rule.apply(scores, labels)
        if index == 0:
            # AP and AUC do not depend on the rule: compute them once, with the primary rule.
            first = multilabel_report(labels, decided, scores, label_names, min_support)
            result = first
        else:
            result = multilabel_report(labels, decided, label_names=label_names)
            result.update(map=first["map"], auc=first["auc"], excluded=first["excluded"])
        result.update(decision=rule.to_dict(), upper_bound=not rule.deployable)
        report["rules"][rule.spec] = {key: result[key] for key in RULE_KEYS}
        if rule.kind == "topk":
            report["best_possible"][rule.spec] = topk_best_possible(labels, rule.param)
    report.update(report["rules"][rules[0].spec])
    report.update({key: first[key] for key in ("per_label", "best_labels", "worst_labels")})
    if plots_dir is not None:
        from mlkit.evaluation import plots  # matplotlib loads in about half a second; only when plotting

        marks = {rule.spec: rule.threshold for rule in rules if rule.threshold is not None and not np.ndim(rule.threshold)}
        names = [row["name"] for row in first["per_label"]]
        report["plots"] = [str(path) for path in plots.multilabel_plots(plots_dir, labels, scores, names, marks, top_n)]
    return report


def _rules(decisions, options):
    """Rule objects from specs or Rules; refuses an empty list and duplicates."""
    if isinstance(decisions, (str, Rule)):
        decisions = [decisions]
    rules = [item if isinstance(item, Rule) else parse_rule(item, **options) for item in decisions]
    if not rules:
        raise MlkitError("no decision rule given; pass at least one, e.g. --decision cardinality")
    specs = [rule.spec for rule in rules]
    repeated = sorted({spec for spec in specs if specs.count(spec) > 1})
    if repeated:
        raise MlkitError(f"decision rule(s) given twice: {', '.join(repeated)}; give each rule once")
    if any(rule.kind in ("argmax", "identity") for rule in rules):
        raise MlkitError("argmax and identity are the multiclass and regression decisions; "
                         "for multilabel scores use e.g. cardinality, fbeta:2 or topk:3")
    return rules


def _fit_rules(rules, scores, labels, fit_scores, fit_labels, train_cardinality):
    """Fits the rules that still need it and says on what."""
    if fit_scores is None and fit_labels is not None:
        raise MlkitError("fit labels given without fit scores; pass both (the validation split) or neither")
    if fit_scores is None:
        fit_scores, fit_labels, fitted_on = scores, labels, "the evaluated scores (optimistic)"
        if any(rule.needs_fit for rule in rules):
            log.warning("fitting decision thresholds on the evaluated scores themselves; their metrics are "
                        "optimistic. Pass validation scores (val_scores/val_labels) to fit on.")
    else:
        fitted_on = "validation scores"
        fit_scores = as_score_matrix(fit_scores, "fit scores")
        if fit_scores.shape[1] != scores.shape[1]:
            raise MlkitError(f"fit scores have {fit_scores.shape[1]} labels but the evaluated scores "
                             f"{scores.shape[1]}; both must score the same labels")
    for rule in rules:
        if rule.needs_fit:
            rule.fit(fit_scores, fit_labels, train_cardinality=train_cardinality)
    return fitted_on


def _evaluate_single(scores, labels, label_names, task, decisions, plots_dir):
    """Multiclass (argmax) and regression (identity) reports."""
    expected = "argmax" if task == "multiclass" else "identity"
    given = [item.spec if isinstance(item, Rule) else str(item) for item in
             ([decisions] if isinstance(decisions, (str, Rule)) else decisions)]
    if tuple(given) != DEFAULT_DECISIONS and set(given) != {expected}:
        raise MlkitError(f"{task} predictions are decided by {expected}; got decision rule(s) "
                         f"{', '.join(given)}. Leave --decision out or pass --decision {expected}")
    if task == "multiclass":
        report = multiclass_report(labels, scores, label_names)
    else:
        report = regression_report(labels, scores, label_names)
    report.update(task=task, decision=parse_rule(expected).to_dict())
    if plots_dir is not None:
        report["plots"] = [str(_single_plot(report, labels, scores, plots_dir))]
    return report


def _single_plot(report, labels, scores, plots_dir):
    """The confusion matrix (multiclass) or predicted-against-true plot (regression)."""
    from mlkit.evaluation import plots  # matplotlib loads in about half a second; only when plotting

    if report["task"] == "multiclass":
        return plots.confusion_matrix(Path(plots_dir) / "confusion_matrix.png", report["confusion_matrix"],
                                      report["label_names"])
    names = [row["name"] for row in report["per_target"]]
    return plots.predicted_against_true(Path(plots_dir) / "predicted_vs_true.png", labels, scores, names)


def _percent(value):
    return "-" if value is None else f"{100 * value:.1f}"


def _rule_label(entry):
    """A row name: the spec, with what fitting found."""
    decision = entry["decision"]
    label = decision["spec"]
    if not decision["deployable"]:
        return f"{label} (upper bound)"
    threshold = decision["threshold"]
    if isinstance(threshold, list):
        fallback = decision["fit"].get("n_fallback")
        label += f" ({len(threshold)} taus" + (f", {fallback} fell back)" if fallback is not None else ")")
    elif threshold is not None and decision["kind"] != "threshold":
        label += f" (tau={threshold:.4g})"
    limits = [f"min {decision['min_labels']}"] if decision["min_labels"] else []
    limits += [f"max {decision['max_labels']}"] if decision["max_labels"] is not None else []
    return label + (f" [{', '.join(limits)}]" if limits else "")


def format_table(report):
    """The report as text: the COCO report's table 2 for multilabel, one row per rule.

    Columns: macro precision, recall, F1 (MP MR MF1), micro (uP uR uF1),
    per-image F2 (iMet's score), mAP and mean AUC, as percentages. topk rules
    get a "best possible" row below them and "rank" is marked as an upper
    bound. Multiclass and regression reports get their own short tables.

    Args:
        report: from `evaluate_scores`.

    Returns:
        The table, several lines.
    """
    if report.get("task") == "multiclass":
        return _format_multiclass(report)
    if report.get("task") == "regression":
        return _format_regression(report)
    rows = []
    for spec, entry in report["rules"].items():
        rows.append((_rule_label(entry), entry))
        if spec in report["best_possible"]:
            best = report["best_possible"][spec]
            rows.append((f"  best possible (k={best['k']})", dict(best, map=None, auc=None)))
    width = max(len("Decision rule"), *(len(name) for name, _ in rows))
    header = f"{'Decision rule':<{width}}" + "".join(
        f"{name:>7}" for name in ("MP", "MR", "MF1", "uP", "uR", "uF1", "F2", "mAP", "AUC"))
    lines = [header, "-" * len(header)]
    for name, entry in rows:
        values = [entry["macro"]["precision"], entry["macro"]["recall"], entry["macro"]["f1"],
                  entry["micro"]["precision"], entry["micro"]["recall"], entry["micro"]["f1"],
                  entry["samples"]["f2"], entry["map"], entry["auc"]]
        lines.append(f"{name:<{width}}" + "".join(f"{_percent(value):>7}" for value in values))
    return "\n".join(lines + _table_notes(report))


def _table_notes(report):
    """The lines under the table: what F2 is, what was fitted on what, what was excluded."""
    excluded = report["excluded"]
    notes = [
        "",
        f"{report['n_images']} images, {report['n_labels']} labels. F2: mean per-image F2 (iMet's score); "
        "mAP and AUC do not depend on the rule.",
        f"Thresholds fitted on {report['fitted_on']}.",
    ]
    for spec, entry in report["rules"].items():
        fit = entry["decision"]["fit"]
        if fit.get("target_cardinality") is not None:
            notes.append(f"{spec}: target {fit['target_cardinality']:.3f} labels per image (from "
                         f"{fit['target_source']}), predicted {entry['cardinality']['predicted']:.3f} "
                         f"(true {entry['cardinality']['true']:.3f}).")
        if fit.get("n_fallback"):
            notes.append(f"{spec}: {fit['n_fallback']} labels had fewer than {entry['decision']['min_positives']} "
                         f"validation positives and use the global threshold {fit['global_threshold']:.4g}.")
    notes.append(f"Excluded: {excluded['labels_without_positives']} labels without positives (from macro and mAP), "
                 f"{excluded['labels_without_both_classes']} labels without both classes (from AUC); "
                 f"{excluded['images_without_labels']} images without labels score 0 in per-image metrics.")
    return notes


def format_labels_table(report, min_support=DEFAULT_MIN_SUPPORT):
    """The iMet report's tables 3 and 4: the best and worst labels, with their support.

    Args:
        report: from `evaluate_scores` (multilabel).
        min_support: the support limit the lists were made with, for the title.
            Defaults to 20.

    Returns:
        The two tables as text ("" when no label has enough support).
    """
    if not report.get("best_labels"):
        return ""
    metric = "AUC" if report["best_labels"][0]["auc"] is not None else "F1"
    width = max(len("Label"), *(len(row["name"]) for row in report["best_labels"] + report["worst_labels"]))
    blocks = []
    for title, rows in (("Best", report["best_labels"]), ("Worst", report["worst_labels"])):
        lines = [f"{title} labels by {metric} (at least {min_support} positives)",
                 f"{'Label':<{width}} {'# in test':>9} {'AUC':>7} {'AP':>7} {'F1':>7}"]
        lines += [f"{row['name']:<{width}} {row['support']:>9} {_percent(row['auc']):>7} "
                  f"{_percent(row['ap']):>7} {_percent(row['f1']):>7}" for row in rows]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _format_multiclass(report):
    lines = [f"{'accuracy':>9} {'macro P':>8} {'macro R':>8} {'macro F1':>9}",
             f"{_percent(report['accuracy']):>9} {_percent(report['macro']['precision']):>8} "
             f"{_percent(report['macro']['recall']):>8} {_percent(report['macro_f1']):>9}"]
    names = report["label_names"]
    if len(names) <= 20:
        corner = "true \\ predicted"
        width = max(len(corner), *(len(name) for name in names))
        lines += ["", f"{corner:<{width}}" + "".join(f" {name[:8]:>8}" for name in names)]
        lines += [f"{name:<{width}}" + "".join(f" {count:>8}" for count in row)
                  for name, row in zip(names, report["confusion_matrix"])]
    lines.append(f"\n{report['n_images']} images; {report['excluded']['classes_without_examples']} classes "
                 "without examples left out of the macro averages.")
    return "\n".join(lines)


def _format_regression(report):
    width = max(len("target"), *(len(row["name"]) for row in report["per_target"]))
    lines = [f"{'target':<{width}} {'MAE':>12} {'RMSE':>12}"]
    lines += [f"{row['name']:<{width}} {row['mae']:>12.4g} {row['rmse']:>12.4g}" for row in report["per_target"]]
    if len(report["per_target"]) > 1:
        lines.append(f"{'mean':<{width}} {report['mae']:>12.4g} {report['rmse']:>12.4g}")
    return "\n".join(lines + [f"\n{report['n_images']} images; errors in the units of the targets given."])


def write_report(path, report):
    """Writes a report as strict JSON (no NaN), atomically, creating the folder.

    Args:
        path: the file to write.
        report: a dict of JSON types (NumPy scalars and arrays are converted).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(report, indent=1, allow_nan=False, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def load_scores_file(path):
    """Reads a scores file for `mlkit evaluate`.

    A `.npz` holding `scores` (N x L), `labels` (N x L multi-hot, or N class
    indices) and optionally `label_names`, `val_scores` and `val_labels` (to
    fit rules on) and `train_cardinality`; or, for regression, `targets` and
    `predictions` (N or N x T, original units) and optionally `target_names`.

    Args:
        path: the .npz file.

    Returns:
        A dict of the arrays found, with "task" inferred: regression when it
        has targets, multiclass when labels are one index per image.
    """
    path = Path(path)
    if not path.is_file():
        raise MlkitError(f"scores file {path} not found; write one with numpy.savez(path, scores=..., labels=..., "
                         "label_names=...)")
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head != b"PK\x03\x04":  # every .npz is a zip archive; np.load calls anything else "pickled data"
        kind = "empty" if not head else "a .npy array, not an archive" if head.startswith(b"\x93NUM") else "not a zip archive"
        raise MlkitError(f"{path} is not a .npz file ({kind}); save scores with numpy.savez(path, scores=..., "
                         "labels=..., label_names=...)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            data = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as error:
        raise MlkitError(f"cannot read {path} as a .npz file ({error}); save it with numpy.savez") from None
    required = ("targets", "predictions") if "targets" in data else ("scores", "labels")
    missing = [key for key in required if key not in data]
    if missing:
        raise MlkitError(f"{path} lacks {', '.join(missing)}; it holds {', '.join(sorted(data)) or 'nothing'}. "
                         "A scores file needs scores and labels (or targets and predictions for regression)")
    if "targets" in data:
        data["task"] = "regression"
    else:
        for key in ("scores", "val_scores"):
            if key in data and np.ndim(data[key]) != 2:
                raise MlkitError(
                    f"{path}: {key} has shape {np.shape(data[key])}; it needs one score per label or class for each "
                    "image, shape (N, L). For one yes/no label save scores[:, None] (N, 1) and labels (N, 1)")
        data["task"] = "multiclass" if np.ndim(data["labels"]) == 1 else "multilabel"
    if "train_cardinality" in data:
        data["train_cardinality"] = float(data["train_cardinality"])
    return data


def evaluate_file(path, decisions=DEFAULT_DECISIONS, task=None, *, json_path=None, plots_dir=None, min_labels=0,
                  max_labels=None, min_positives=DEFAULT_MIN_POSITIVES, min_support=DEFAULT_MIN_SUPPORT):
    """Evaluates a scores file (`load_scores_file`) and optionally writes its report and plots.

    Args:
        path: the .npz file.
        decisions: rule specs, the first the primary one. Defaults to ("cardinality",).
        task: multilabel, multiclass or regression. Defaults to what the file holds.
        json_path: write the report here as JSON. Defaults to None.
        plots_dir: write PNG plots here. Defaults to None.
        min_labels, max_labels, min_positives, min_support: as for `evaluate_scores`.

    Returns:
        The report (see the module docstring).

    Example:
        report = evaluate_file("scores.npz", ["cardinality", "fbeta:2"], json_path="report.json")
    """
    data = load_scores_file(path)
    task = task or data["task"]
    regression = "targets" in data
    if (task == "regression") != regression:
        raise MlkitError(f"--task {task} does not match {path}: regression needs targets and predictions, "
                         "the other tasks scores and labels")
    report = evaluate_scores(
        data["predictions"] if regression else data["scores"],
        data["targets"] if regression else data["labels"],
        data.get("target_names" if regression else "label_names"),
        task=task, decisions=decisions or DEFAULT_DECISIONS,
        fit_scores=data.get("val_scores"), fit_labels=data.get("val_labels"),
        train_cardinality=data.get("train_cardinality"), plots_dir=plots_dir,
        min_labels=min_labels, max_labels=max_labels, min_positives=min_positives, min_support=min_support)
    if json_path:
        write_report(json_path, report)
        log.info("wrote %s", json_path)
    for plot in report.get("plots", []):
        log.info("wrote %s", plot)
    return report
