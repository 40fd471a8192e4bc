"""`mlkit finetune`, `mlkit export` and `mlkit predict`: thin parsers over mlkit.models."""

import argparse
import sys

from mlkit.models.augment import describe_codes
from mlkit.models.ensemble import EnsembleConfig
from mlkit.models.finetune import FinetuneConfig
from mlkit.options import add_options, given
from mlkit.vocabulary import SPLITS

# FinetuneConfig's settings the command takes; their defaults and help live on its fields (mlkit.options).
SETTINGS = ("top", "freeze", "warmup_epochs", "lr", "lr_decay", "batch", "epochs", "patience", "augment", "optimizer",
            "momentum", "decision", "min_labels", "max_labels", "weights", "mixed_precision", "jit", "strategy", "seed",
            "no_tensorboard")

FINETUNE_EPILOG = """\
Augmentation codes (--augment, any order, or 'none'):
{codes}

Writes, under WORKDIR/models/ (RUN = the top's run name + _<frozen>_lr<XY>_b<B>_<aug>):
  RUN.keras   uint8 images of any size -> {{"scores", "labels"}}; resize, preprocessing,
              backbone, head and the label decision inside
  RUN.json    label names, the decision rule and its thresholds, test metrics beside the
              cached top's, and the resolved config
  RUN.csv     the epoch log
Rerun the same command to resume a killed run from its last finished epoch.

An image + caption top (tune-top --captions) is fine-tuned with its caption branch:
RUN.keras then takes {{"image": uint8, "caption": string}}, the caption tokenised
inside with the top's own vocabulary. Caption-only tops (--text-only) have no
backbone to fine-tune and are refused; --top best passes over them.

Examples:
  mlkit finetune bottlenecks/stamps_all_mobilenetv2_inet_avg.h5      # the measured defaults
  mlkit finetune bottlenecks/coco_2017_vgg16_inet_avg.h5 --top best --freeze block5 --lr 0.001
  mlkit finetune CACHE --top RUN --freeze all --warmup-epochs 1 --augment hwrszf --mixed-precision
"""


def register(subparsers):
    """Adds finetune, ensemble, export and predict."""
    add_finetune(subparsers)
    add_ensemble(subparsers)
    add_export(subparsers)
    add_predict(subparsers)


def add_finetune(subparsers):
    parser = subparsers.add_parser(
        "finetune", help="stage 3: fine-tune the best top on its backbone end to end, then export",
        description="Put a tuned top back on the cache's backbone, train end to end on the images with "
                    "tf.data augmentation, fit the label decision on validation, report on test, and "
                    "export one model that takes raw images.",
        epilog=FINETUNE_EPILOG.format(codes=describe_codes()), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cache", help="bottleneck cache (.h5) the top was tuned on")
    add_options(parser, FinetuneConfig, SETTINGS)
    parser.add_argument("--image-root", default=None,
                        help="folder the cache's relative image paths start from (default: the manifest's folder)")
    parser.add_argument("--overwrite", action="store_true", help="redo a finished run")
    parser.add_argument("--no-progress", action="store_true", help="one line per epoch instead of progress bars")
    parser.add_argument("--workdir", default=".", help="workspace folder (default: current folder)")
    parser.set_defaults(func=run_finetune)


def run_finetune(args):
    from mlkit.models.finetune import finetune

    result = finetune(
        args.cache, workdir=args.workdir, image_root=args.image_root, overwrite=args.overwrite,
        progress=not args.no_progress, **given(args, SETTINGS),
    )
    if result is None:
        print("worker: finished training in step with the chief, which writes the model, record and log")
        return 0
    print(result.describe())
    return 0


ENSEMBLE_SETTINGS = ("top", "decision", "min_labels", "max_labels", "weights")

ENSEMBLE_EPILOG = """\
tune-top trains many tops on one cache; averaging the scores of the best K
costs nothing at inference beyond their heads, since the backbone runs once.
No training happens here: the tops' scores on the cached validation features
are averaged, the decision is fitted on them, and test is reported beside
each member alone. Measured on the icon themes (test: a theme never trained
on) and the Tux Paint stamps, with the pretrained MobileNetV2: see
docs/finetune.md, "Ensembles".

Writes, under WORKDIR/models/ (RUN = the best member's run name + _ens-K):
  RUN.keras   uint8 images of any size -> {"scores", "labels"}: resize,
              preprocessing, backbone, the K heads averaged, the label decision
  RUN.json    the members, label names, the decision rule, test metrics of the
              ensemble and of each member, and the config
Then `mlkit predict RUN IMAGES` and `mlkit export RUN` take it like a
fine-tuned model. Only tops tuned on this very cache take part; caption tops
are refused (best:K passes over them).

Examples:
  mlkit ensemble bottlenecks/icons_all_mobilenetv2_inet_avg.h5                 # the best 3
  mlkit ensemble CACHE --top best:5 --decision fbeta:1
  mlkit ensemble CACHE --top RUN1,RUN2
"""


def add_ensemble(subparsers):
    parser = subparsers.add_parser(
        "ensemble", help="average the best tuned tops on the frozen backbone, then export",
        description="Average the scores of several tops tuned on one cache, on its frozen backbone: fit the "
                    "label decision on validation, report on test, and export one model that takes raw images.",
        epilog=ENSEMBLE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cache", help="bottleneck cache (.h5) the tops were tuned on")
    add_options(parser, EnsembleConfig, ENSEMBLE_SETTINGS)
    parser.add_argument("--overwrite", action="store_true", help="redo a finished ensemble")
    parser.add_argument("--workdir", default=".", help="workspace folder (default: current folder)")
    parser.set_defaults(func=run_ensemble)


def run_ensemble(args):
    from mlkit.models.ensemble import ensemble

    result = ensemble(args.cache, workdir=args.workdir, overwrite=args.overwrite, **given(args, ENSEMBLE_SETTINGS))
    print(result.describe())
    return 0


def add_export(subparsers):
    parser = subparsers.add_parser(
        "export", help="write an exported model as a SavedModel, TFLite or ONNX",
        description="Write models/RUN.keras in serving formats beside it. The SavedModel serves with TensorFlow "
                    "alone: tf.saved_model.load(PATH).serve(uint8_images) or .serve_bytes(encoded_files), "
                    "each returning {'scores', 'labels'}; a caption model's take the captions too: "
                    "serve(images, captions), serve_bytes(files, captions). Caption models export as "
                    "SavedModel only (no TFLite or ONNX).")
    parser.add_argument("model", help="a run name under WORKDIR/models, or a .keras path")
    parser.add_argument("--format", default="savedmodel",
                        help="comma-separated: savedmodel (default), tflite, onnx (ONNX needs mlkit[export])")
    parser.add_argument("--out", default=None, help="output folder (default: beside the .keras file)")
    parser.add_argument("--workdir", default=".", help="workspace folder (default: current folder)")
    parser.set_defaults(func=run_export)


def run_export(args):
    from mlkit.models.export import export_model

    written = export_model(args.model, [f.strip() for f in args.format.split(",") if f.strip()],
                           args.workdir, args.out)
    for fmt, path in written.items():
        print(f"{fmt}: {path}")
    return 0


def add_predict(subparsers):
    parser = subparsers.add_parser(
        "predict", help="label images, folders or a manifest with an exported model",
        description="Ranked labels with scores per image; '*' marks the labels the model's decision rule "
                    "chose, '+' true labels (when the input is a manifest). Unreadable images are reported, "
                    "not fatal. A model fine-tuned from an image + caption top takes a caption per image: "
                    "--caption TEXT, or a manifest's caption column.")
    parser.add_argument("model", help="a run name under WORKDIR/models, or a .keras path")
    parser.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or a manifest")
    parser.add_argument("--caption", default=None,
                        help="caption models: the caption of every image given (default: each manifest row's "
                             "caption column; images without one are an error; --caption '' for none). "
                             "Image-only models ignore it, with a warning")
    parser.add_argument("--top", type=int, default=5, help="the most ranked labels shown per image, in the table and "
                        "the CSV (default 5); decided labels ranked lower are named on one line")
    parser.add_argument("--split", default=None, choices=SPLITS,
                        help="with a manifest: label only its rows of this split (default: every row)")
    parser.add_argument("--csv", default=None, help="also write one row per image to this CSV")
    parser.add_argument("--crop", action=argparse.BooleanOptionalAction, default=None,
                        help="crop each image as `mlkit crop` cropped the model's training images, with the "
                             "settings its record holds (default: exactly when the record holds them)")
    parser.add_argument("--quiet", action="store_true", help="do not print the table (with --csv)")
    parser.add_argument("--workdir", default=".", help="workspace folder (default: current folder)")
    parser.set_defaults(func=run_predict)


def run_predict(args):
    from mlkit.models.predict import format_predictions, predict

    results = predict(args.model, args.inputs, caption=args.caption, workdir=args.workdir, top=args.top,
                      csv_path=args.csv, split=args.split, crop=args.crop)
    if not args.quiet:
        print(format_predictions(results))
    cropped = sum(1 for r in results if r.crop_box is not None)
    if cropped:
        print(f"{cropped} image(s) cropped first, as the model's training images were by mlkit crop "
              "(--no-crop to skip)")
    failed = sum(1 for r in results if r.error)
    print(f"{len(results) - failed} images labelled, {failed} unreadable" + (f"; CSV: {args.csv}" if args.csv else ""))
    if failed == len(results):
        print("mlkit predict: error: no image could be read (reasons above); nothing was labelled", file=sys.stderr)
        return 1
    return 0
