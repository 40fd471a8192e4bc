"""`mlkit tune-top`, `mlkit runs` and `mlkit lr-find`: thin parsers over mlkit.tuning."""

import argparse

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


def register(subparsers):
    """Adds tune-top, runs and lr-find."""
    add_tune_top(subparsers)
    add_runs(subparsers)
    add_lr_find(subparsers)


def add_top_options(parser, plural):
    """Top-model options: lists for tune-top (plural), single values for lr-find."""
    kind = "comma-separated list" if plural else "one value"
    parser.add_argument("--layers", default="1", help=f"hidden layers ({kind}; default 1)")
    parser.add_argument("--units", default="1024", help=f"units per hidden layer ({kind}; default 1024)")
    parser.add_argument("--reg", default="d5", help=f"dN (dropout N/10) or bn ({kind}; default d5)")
    parser.add_argument("--batch", default="64", help=f"batch size ({kind}; default 64)")
    parser.add_argument("--loss", default=None,
                        help=f"multilabel bce|focal|wbce, multiclass cce|focal, regression mse|mae|huber ({kind})")
    parser.add_argument("--optimizer", default="sgd", help=f"sgd (with momentum) or adam ({kind}; default sgd)")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    parser.add_argument("--top-pool", default="flatten", help=f"raw feature maps only: flatten|avg|max ({kind})")
    parser.add_argument("--augmented", action="store_true", help="also train on the cache's augmented views")
    parser.add_argument("--max-memory", default="4G", help="hold the features in memory up to this size (in their stored dtype: float16 caches take half), and stream them from HDF5 above it (default 4G)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--workdir", default=".", help="workspace folder (default: current folder)")


def add_tune_top(subparsers):
    parser = subparsers.add_parser(
        "tune-top", help="2. grid-search top models on a bottleneck cache",
        description="Grid-search small top models on cached features (KerasTuner GridSearch).",
        epilog=TUNE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cache", help="bottleneck cache (.h5) from cache-features")
    add_top_options(parser, plural=True)
    parser.add_argument("--lr", default="0.1", help="learning rates (list; default 0.1)")
    parser.add_argument("--schedule", default="constant", help="constant|step|plateau|cosine (list)")
    parser.add_argument("--step-every", type=int, default=10, help="step schedule: epochs between drops (default 10)")
    parser.add_argument("--step-gamma", type=float, default=0.1, help="step schedule: factor per drop (default 0.1)")
    parser.add_argument("--epochs", type=int, default=20, help="most epochs per trial (default 20)")
    parser.add_argument("--patience", type=int, default=5, help="early stopping patience in epochs (default 5)")
    parser.add_argument("--objective", default="val_loss",
                        help="val_loss (default), val_map|val_f1|val_auc, val_accuracy, val_mae|val_rmse")
    parser.add_argument("--sample-weights", action="store_true", help="weight training rows by inverse class frequency")
    parser.add_argument("--cap", type=int, default=0, help="at most N training rows per class")
    parser.add_argument("--oversample", type=int, default=0, help="at least N training rows per class (with repeats)")
    parser.add_argument("--captions", action="store_true", help="add the caption branch (cache made with --captions)")
    parser.add_argument("--text-only", action="store_true", help="train the caption branch alone (implies --captions)")
    parser.add_argument("--text", default=None, help="caption branch: lstm|bilstm (list; default bilstm)")
    parser.add_argument("--text-units", default=None, help="caption branch: LSTM units per direction (list; default 128)")
    parser.add_argument("--embed-dim", default=None, help="caption branch: token embedding width (list; default 128)")
    role = parser.add_mutually_exclusive_group()
    role.add_argument("--chief", action="store_true", help="serve the grid to workers (KerasTuner oracle)")
    role.add_argument("--worker", type=int, metavar="N", help="run trials for the chief as tuner N")
    parser.add_argument("--oracle", metavar="HOST:PORT", help="the chief's address, for --chief and --worker")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-trial lines")
    parser.set_defaults(func=run_tune_top)


def run_tune_top(args):
    from mlkit.tuning.data import keep_freed_memory
    from mlkit.tuning.search import tune_top

    keep_freed_memory()  # the command owns its process: let a streamed epoch run at the in-memory speed
    tune_top(
        args.cache, args.workdir, layers=args.layers, units=args.units, reg=args.reg, lr=args.lr, batch=args.batch,
        loss=args.loss, optimizer=args.optimizer, schedule=args.schedule, top_pool=args.top_pool, epochs=args.epochs,
        patience=args.patience, objective=args.objective, momentum=args.momentum, step_every=args.step_every,
        step_gamma=args.step_gamma, augmented=args.augmented, sample_weights=args.sample_weights, cap=args.cap,
        oversample=args.oversample, max_memory=args.max_memory, seed=args.seed, chief=args.chief,
        worker=args.worker, oracle=args.oracle, verbose=not args.quiet, captions=args.captions,
        text=args.text, text_units=args.text_units, embed_dim=args.embed_dim, text_only=args.text_only,
    )


def add_runs(subparsers):
    parser = subparsers.add_parser(
        "runs", help="compare tuned runs: table, filters, grouped curves",
        description="Tabulate and plot runs from their logs, using the fields of their names.")
    parser.add_argument("folder", nargs="?", default="tuning", help="a tuning/ folder (default: tuning)")
    parser.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE",
                        help="keep runs whose field matches (repeatable; VALUE may be a,b for either)")
    parser.add_argument("--by", metavar="FIELD",
                        help="group the table and colour the plot by this field (e.g. lr; branch: image, caption, both)")
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
    add_top_options(parser, plural=False)
    parser.add_argument("--start-lr", type=float, default=1e-6, help="first rate (default 1e-6)")
    parser.add_argument("--end-lr", type=float, default=10.0, help="last rate (default 10)")
    parser.add_argument("--steps", type=int, default=100, help="batches, one rate each (default 100)")
    parser.add_argument("--diverge", type=float, default=4.0, help="stop when the loss passes this x its minimum")
    parser.set_defaults(func=run_lr_find)


def run_lr_find(args):
    from mlkit.tuning.data import keep_freed_memory
    from mlkit.tuning.lr_range import lr_find

    keep_freed_memory()
    lr_find(
        args.cache, args.workdir, layers=args.layers, units=args.units, reg=args.reg, batch=args.batch,
        loss=args.loss, optimizer=args.optimizer, momentum=args.momentum, top_pool=args.top_pool,
        start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps, diverge=args.diverge,
        augmented=args.augmented, max_memory=args.max_memory, seed=args.seed,
    )
