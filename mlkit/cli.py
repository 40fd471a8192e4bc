"""The `mlkit` command line: a thin layer over the public Python functions.

Each subcommand lives beside the code it drives, in a module with a
`register(subparsers)` function that adds its parser and sets `func` to a
handler taking the parsed arguments. Handlers import TensorFlow lazily, so
`mlkit --help` and the `data` commands start fast.
"""

import argparse
import importlib
import logging
import os
import sys

from mlkit import __version__
from mlkit.errors import MlkitError

# Order is the order `mlkit --help` lists them: the pipeline first.
COMMAND_MODULES = (
    "mlkit.data.cli",
    "mlkit.bottlenecks.cli",
    "mlkit.tuning.cli",
    "mlkit.models.cli",
    "mlkit.evaluate",
    "mlkit.auditing.cli",
)

DESCRIPTION = """\
Transfer learning on image collections, in stages:

  mlkit data synth|from-folders|from-coco|from-imet|from-csv|split|stats
                         make and check a manifest (CSV or JSON Lines)
  mlkit cache-features   1. run a frozen backbone once, cache features to HDF5
  mlkit tune-top         2. grid-search small top models on the cache
  mlkit runs, lr-find    compare tuned runs; find a learning rate
  mlkit finetune         3. fine-tune the best top end to end, fit the decision, export
  mlkit export           write the exported model as SavedModel / TFLite / ONNX
  mlkit predict          label images, folders or a manifest with an exported model
  mlkit evaluate         decide labels from scores and report metrics
  mlkit audit            duplicates, split leaks, likely label errors, outliers
  mlkit demo             all of the above on built-in synthetic data (offline, CPU)

Start with `mlkit demo` (offline, CPU, built-in synthetic data).
"""

def build_parser():
    parser = argparse.ArgumentParser(
        prog="mlkit",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mlkit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv=None):
    # TensorFlow's C++ info lines drown the progress bars; errors still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except MlkitError as error:
        print(f"mlkit {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mlkit {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
