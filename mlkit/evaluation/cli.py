"""`mlkit evaluate`: the command line over `mlkit.evaluation.evaluate.evaluate_file`."""

import argparse
import textwrap

from mlkit.evaluation.decisions import DEFAULT_MIN_POSITIVES, RULE_FORMS
from mlkit.evaluation.evaluate import DEFAULT_DECISIONS, evaluate_file, format_labels_table, format_table
from mlkit.evaluation.metrics import DEFAULT_MIN_SUPPORT
from mlkit.vocabulary import TASKS

RULES_EPILOG = "decision rules (--decision, repeatable; the first is the primary rule):\n" + "\n".join(
    textwrap.fill(text, 78, initial_indent=f"  {form:<13} ", subsequent_indent=" " * 16)
    for form, text in RULE_FORMS.items()) + """

Rules with thresholds are fitted on val_scores/val_labels when the file has
them, otherwise on the evaluated scores themselves (optimistic; a warning
says so). cardinality aims at train_cardinality when the file has it.
--min-labels/--max-labels then give every image at least/at most that many
labels (the iMet winners used 1 and 8).

The table shows, per rule, macro and micro precision, recall and F1, the
per-image F2, mAP and mean ROC AUC, in percent. --json writes the same
numbers as fractions: micro, macro, samples (each precision, recall, f1, f2),
map, auc, hamming, subset_accuracy and decision for the first rule, and
rules.<spec> with those keys for every rule.

example:
  mlkit evaluate scores.npz --decision cardinality --decision fbeta:2 \\
      --decision topk:3 --json out.json --plots plots/
"""


def register(subparsers):
    """Adds `mlkit evaluate` to the command line."""
    parser = subparsers.add_parser(
        "evaluate", help="decide labels from scores and report metrics",
        description="Decide labels from saved scores with one or more decision rules and report "
                    "multilabel, multiclass or regression metrics.",
        epilog=RULES_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scores", metavar="SCORES.npz",
                        help="scores, labels, label_names (optional: val_scores, val_labels, train_cardinality); "
                             "or targets and predictions for regression")
    parser.add_argument("--decision", action="append", metavar="RULE",
                        help="a decision rule (see below); repeat to compare. Default: cardinality")
    parser.add_argument("--task", choices=TASKS, help="default: inferred from the file")
    parser.add_argument("--min-labels", type=int, default=0, help="labels every image gets at least (default: 0)")
    parser.add_argument("--max-labels", type=int, help="labels every image gets at most (default: no limit)")
    parser.add_argument("--min-positives", type=int, default=DEFAULT_MIN_POSITIVES,
                        help="per-class: fewest validation positives for a label's own threshold "
                             f"(default: {DEFAULT_MIN_POSITIVES})")
    parser.add_argument("--min-support", type=int, default=DEFAULT_MIN_SUPPORT,
                        help=f"fewest test positives for the best/worst labels tables (default: {DEFAULT_MIN_SUPPORT})")
    parser.add_argument("--json", metavar="OUT.json", help="write the report as JSON")
    parser.add_argument("--plots", metavar="DIR", help="write PNG plots into DIR")
    parser.set_defaults(func=run_evaluate)


def run_evaluate(args):
    """The `mlkit evaluate` handler: evaluate the file, print the tables."""
    report = evaluate_file(args.scores, args.decision or DEFAULT_DECISIONS, args.task, json_path=args.json,
                           plots_dir=args.plots, min_labels=args.min_labels, max_labels=args.max_labels,
                           min_positives=args.min_positives, min_support=args.min_support)
    print(format_table(report))
    if report["task"] == "multilabel" and report["best_labels"]:
        print("\n" + format_labels_table(report, args.min_support))
    return 0
