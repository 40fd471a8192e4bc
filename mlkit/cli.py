"""The `mlkit` command line: a thin layer over the public Python functions.

Each subcommand lives beside the code it drives, in a module with a
`register(subparsers)` function that adds its parser and sets `func` to a
handler taking the parsed arguments. Handlers import TensorFlow lazily, so
`mlkit --help` and the `data` commands start fast.
"""

import argparse
import importlib
import importlib.util
import logging
import os
import re
import sys
import tempfile

from mlkit import __version__
from mlkit.errors import MlkitError

# What TensorFlow prints on import on a machine without CUDA drivers (see QuietTensorFlowImport).
TENSORFLOW_NOISE = re.compile(rb"All log messages before absl::InitializeLog\(\) is called|"
                              rb"cudart_stub\.cc:\d+\] Could not find cuda drivers|failed call to cuInit|"
                              rb"oneDNN custom operations are on")
# Libraries that log routine steps at INFO, which mlkit's own INFO progress would show: faiss's loader
# tries its AVX-512 and AVX2 builds first and logs each miss; TensorFlow logs "Assets written to" a
# SavedModel's temporary folder. Their warnings still show.
QUIET_LOGGERS = ("faiss", "faiss.loader", "tensorflow", "absl")

# Order is the order `mlkit --help` lists them: the pipeline first.
COMMAND_MODULES = (
    "mlkit.data.cli",
    "mlkit.bottlenecks.cli",
    "mlkit.tuning.cli",
    "mlkit.models.cli",
    "mlkit.demo",
    "mlkit.evaluation.cli",
    "mlkit.auditing.cli",
    "mlkit.looking.cli",
)

DESCRIPTION = """\
Transfer learning on image collections, in stages:

  mlkit data synth|from-folders|from-coco|from-imet|from-csv|split|stats
                         make and check a manifest (CSV or JSON Lines)
  mlkit cache-features   stage 1: run a frozen backbone once, cache features to HDF5
  mlkit cache-merge      stage 1: join the shards of cache-features --shard I/N into one cache
  mlkit tune-top         stage 2: grid-search small top models on the cache
  mlkit runs, lr-find    stage 2: compare tuned runs; find a learning rate
  mlkit finetune         stage 3: fine-tune the best top end to end, fit the decision, export
  mlkit ensemble         stage 3: or average the best K tops on the frozen backbone, export
  mlkit export           write the exported model as SavedModel / TFLite / ONNX
  mlkit predict          label images, folders or a manifest with an exported model
  mlkit evaluate         decide labels from scores and report metrics
  mlkit audit            duplicates, split leaks, likely label errors, outliers
  mlkit crop, look       content-aware crops; where a model looks (early layers, Grad-CAM)
  mlkit demo             stages 1-3, export and predict on built-in synthetic data (CPU, minutes)

Start with `mlkit demo`.
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


class QuietTensorFlowImport:
    """Filters TensorFlow's start-up lines out of stderr while TensorFlow is first imported.

    On a machine without a GPU, `import tensorflow` prints "Could not find cuda
    drivers" twice, and on any x86 CPU "oneDNN custom operations are on", from
    C++ before its logging is set up, so no setting of
    TF_CPP_MIN_LOG_LEVEL hides them (TensorFlow 2.21). This meta-path finder
    runs that one import with file descriptor 2 captured and writes back
    every line that is not that noise, so Python warnings and real errors
    still show. It removes itself after the import.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            run = spec.loader.exec_module
            spec.loader.exec_module = lambda module: self.filtered(run, module)
        return spec

    @staticmethod
    def filtered(run, module):
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                run(module)
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                captured.seek(0)
                for line in captured.read().splitlines(keepends=True):
                    if not TENSORFLOW_NOISE.search(line):
                        os.write(2, line)


def main(argv=None):
    # TensorFlow's C++ log: level 3 hides its info lines, which drown the progress bars, and the
    # "failed call to cuInit" error every CPU-only run prints. mlkit's own messages go through
    # Python's logging and are never affected; set TF_CPP_MIN_LOG_LEVEL yourself to see TensorFlow's.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules and not any(isinstance(f, QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, QuietTensorFlowImport())
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
    )
    if not args.verbose:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
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
    except Exception as error:
        # A full disk or a read-only folder can surface anywhere (h5py, Keras, KerasTuner); the user's to fix, not a bug.
        from mlkit.files import disk_full_error, read_only_error

        full = disk_full_error(error, path=getattr(args, "workdir", None)) or read_only_error(error)
        if full is None:
            raise
        print(f"mlkit {args.command}: error: {full}", file=sys.stderr)
        return 1
