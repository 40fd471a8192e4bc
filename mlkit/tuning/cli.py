"""`mlkit tune-top`, `mlkit runs` and `mlkit lr-find`: thin parsers over mlkit.tuning."""

import argparse

from mlkit.options import add_options, given
from mlkit.tuning.config import TopConfig
from mlkit.tuning.top_data import MAX_MEMORY

TUNE_EPILOG = """\
Each list is comma-separated; the grid is their product. Files per trial, under
WORKDIR/tuning/: <run>.csv (per-epoch log), <run>.weights.h5 (best epoch),
<run>.json (resolved config and result); summary.csv lists all trials, best
first. Rerun the same command to resume after a crash.

Captions (the cache needs `mlkit cache-features ... --captions`): --captions adds
a caption branch (token embedding and an LSTM or bidirectional LSTM, merged with
the image features before the hidden layers); --text-only trains that branch
alone. Run the three for the ablation, then compare them with
`mlkit runs WORKDIR/tuning --by branch --metric val_f1`:
  mlkit tune-top CACHE --optimizer adam --lr 0.001
  mlkit tune-top CACHE --optimizer adam --lr 0.001 --captions --text lstm,bilstm
  mlkit tune-top CACHE --optimizer adam --lr 0.001 --text-only

Distributed (KerasTuner chief/worker over gRPC; workers need the same cache
path and WORKDIR, e.g. on a shared disk):
  mlkit tune-top CACHE ... --chief --oracle 10.0.0.1:8000
  mlkit tune-top CACHE ... --worker 0 --oracle 10.0.0.1:8000
  mlkit tune-top CACHE ... --worker 1 --oracle 10.0.0.1:8000
or set KERASTUNER_TUNER_ID / KERASTUNER_ORACLE_IP / KERASTUNER_ORACLE_PORT yourself.
Worker N uses GPU N modulo the GPU count when a machine has several.
"""


RUNS_EPILOG = """\
Choosing the image size on validation: cache the same manifest at several sizes
in one workspace, each under its own subset name (a second size under the same
name is refused), tune the same grid on each, and rank them:
  mlkit cache-features data/manifest.csv --image-size 96 --subset all-96px
  mlkit cache-features data/manifest.csv --image-size 128 --subset all-128px
  mlkit tune-top bottlenecks/data_all-96px_mobilenetv2_inet_avg.h5 --units 256,512
  mlkit tune-top bottlenecks/data_all-128px_mobilenetv2_inet_avg.h5 --units 256,512
  mlkit runs tuning --by image_size
tuning/summary.csv ranks the same runs, with their cache and image_size columns.
"""


def register(subparsers):
    """Adds tune-top, runs and lr-find."""
    add_tune_top(subparsers)
    add_runs(subparsers)
    add_lr_find(subparsers)


# TopConfig's settings each command takes; their defaults and help live on TopConfig's fields (mlkit.options).
GRID_AXES = ("taps", "layers", "units", "reg", "lr", "batch", "loss", "optimizer", "schedule", "top_pool")
CAPTION_AXES = ("text", "text_units", "embed_dim")
TRAINING = ("tap_weights", "epochs", "patience", "objective", "momentum", "step_every", "step_gamma", "sample_weights", "cap",
            "oversample", "seed", "no_tensorboard")
LR_FIND = ("taps", "tap_weights", "layers", "units", "reg", "batch", "loss", "optimizer", "momentum", "top_pool", "seed")


def add_data_options(parser):
    """Where the features come from and where files go, for tune-top and lr-find."""
    parser.add_argument("--augmented", action="store_true", help="also train on the cache's augmented views")
    parser.add_argument("--max-memory", default=MAX_MEMORY,
                        help="hold the features in memory up to this size (in their stored dtype: float16 caches "
                             f"take half), and stream them from HDF5 above it (default {MAX_MEMORY})")
    parser.add_argument("--workdir", default=".", help="workspace folder (default: current folder)")


def add_tune_top(subparsers):
    parser = subparsers.add_parser(
        "tune-top", help="stage 2: grid-search top models on a bottleneck cache",
        description="Grid-search small top models on cached features (KerasTuner GridSearch).",
        epilog=TUNE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cache", help="bottleneck cache (.h5) from cache-features")
    add_options(parser.add_argument_group("the grid (each a comma-separated list)"), TopConfig, GRID_AXES,
                lists=GRID_AXES)
    add_options(parser.add_argument_group("training"), TopConfig, TRAINING)
    add_data_options(parser)
    captions = parser.add_argument_group("caption branch (the cache needs cache-features --captions)")
    captions.add_argument("--captions", action="store_true", help="add the caption branch")
    add_options(captions, TopConfig, ("text_only",) + CAPTION_AXES, lists=CAPTION_AXES)
    role = parser.add_mutually_exclusive_group()
    role.add_argument("--chief", action="store_true", help="serve the grid to workers (KerasTuner oracle)")
    role.add_argument("--worker", type=int, metavar="N", help="run trials for the chief as tuner N")
    parser.add_argument("--oracle", metavar="HOST:PORT", help="the chief's address, for --chief and --worker")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-trial lines")
    parser.set_defaults(func=run_tune_top)


def run_tune_top(args):
    from mlkit.tuning.memory import keep_freed_memory
    from mlkit.tuning.search import tune_top

    keep_freed_memory()  # the command owns its process: let a streamed epoch run at the in-memory speed
    tune_top(
        args.cache, args.workdir, **given(args, GRID_AXES + CAPTION_AXES + TRAINING), text_only=args.text_only,
        augmented=args.augmented, max_memory=args.max_memory, chief=args.chief, worker=args.worker,
        oracle=args.oracle, verbose=not args.quiet, captions=args.captions,
    )


def add_runs(subparsers):
    parser = subparsers.add_parser(
        "runs", help="compare tuned runs: table, filters, grouped curves",
        description="Tabulate and plot runs from their logs, using the fields of their names, the cache each was "
                    "tuned on and its image size.",
        epilog=RUNS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default="tuning", help="a tuning/ folder (default: tuning)")
    parser.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE",
                        help="keep runs whose field matches (repeatable; VALUE may be a,b for either)")
    parser.add_argument("--by", metavar="FIELD",
                        help="group the table and colour the plot by this field (e.g. lr; image_size or cache: caches "
                             "side by side; branch: image, caption, both)")
    parser.add_argument("--metric", default="val_loss", help="picks each run's best epoch and the curve (default val_loss)")
    parser.add_argument("--plot", metavar="OUT.png", help="draw validation curves to this image")
    parser.add_argument("--x", default="epoch", choices=("epoch", "time"), help="plot against epoch or training time")
    parser.set_defaults(func=run_runs)


def run_runs(args):
    from mlkit.tuning.compare import load_runs, plot_runs, table_text

    frame = load_runs(args.folder, args.where, args.metric)
    print(table_text(frame, args.by, args.metric))
    if args.plot:
        plot_runs(args.folder, args.plot, where=args.where, by=args.by, x=args.x, metric=args.metric)
        print(f"plot: {args.plot}")


def add_lr_find(subparsers):
    parser = subparsers.add_parser(
        "lr-find", help="LR range test on a bottleneck cache",
        description="Learning-rate range test: one batch per rate, rates rising exponentially; plots the loss "
                    "and suggests a rate (steepest descent, or minimum/10).")
    parser.add_argument("cache", help="bottleneck cache (.h5)")
    add_options(parser.add_argument_group("the top (one value each)"), TopConfig, LR_FIND)
    add_data_options(parser)
    parser.add_argument("--start-lr", type=float, default=1e-6, help="first rate (default 1e-6)")
    parser.add_argument("--end-lr", type=float, default=10.0, help="last rate (default 10)")
    parser.add_argument("--steps", type=int, default=100, help="batches, one rate each (default 100)")
    parser.add_argument("--diverge", type=float, default=4.0, help="stop when the loss passes this x its minimum")
    parser.set_defaults(func=run_lr_find)


def run_lr_find(args):
    from mlkit.tuning.lr_range import lr_find
    from mlkit.tuning.memory import keep_freed_memory

    keep_freed_memory()
    lr_find(
        args.cache, args.workdir, **given(args, LR_FIND), start_lr=args.start_lr, end_lr=args.end_lr,
        steps=args.steps, diverge=args.diverge, augmented=args.augmented, max_memory=args.max_memory,
    )
