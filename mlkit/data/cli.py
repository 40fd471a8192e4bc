"""`mlkit data ...`: make, split and inspect manifests.

Each handler calls the one public function a Python user would call, with
the parsed options. Nothing here imports TensorFlow, so these commands start fast.
"""

import argparse
import json
import textwrap

from mlkit.data.adapters import FOLDER_CAPTIONS, FOLDER_LABELS, from_coco, from_csv, from_folders, from_imet
from mlkit.data.manifest import TASKS
from mlkit.data.split import read_duplicate_groups, split_manifest
from mlkit.data.stats import format_stats, manifest_stats
from mlkit.data.synth import synthesize
from mlkit.vocabulary import IMAGE_EXTENSIONS

DATA_DESCRIPTION = """\
Make, split and inspect manifests: the CSV (or JSON Lines) files with columns
image, labels (names joined by "|") or target, optional caption and split, that
every stage reads. Image paths are relative to the manifest's folder.
"""

DATA_EPILOG = """\
example (the built-in dataset, offline):
  mlkit data synth --task multilabel --n 600 --size 64 --out data/synth
  mlkit data split data/synth/manifest.csv --val 0.15 --test 0.15 --seed 0
  mlkit data stats data/synth/manifest.csv
"""


def _add_parser(subparsers, name, help_text, description, example):
    return subparsers.add_parser(
        name, help=help_text, description=textwrap.fill(description, 79, break_on_hyphens=False), epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _run_synth(args):
    synthesize(args.out, task=args.task, n=args.n, size=args.size, seed=args.seed)


def _run_from_folders(args):
    from_folders(args.root, args.out, labels=args.labels, captions=args.captions, group_level=args.group_level,
                 min_label_count=args.min_label_count)


def _run_from_coco(args):
    from_coco(args.instances_json, args.images, args.out, keep_unlabelled=args.keep_unlabelled)


def _run_from_imet(args):
    from_imet(args.train_csv, args.labels_csv, args.images, args.out)


def _run_from_csv(args):
    from_csv(args.csv, args.out, args.image_col, args.labels_col, caption_col=args.caption_col,
             label_map=args.label_map, image_dir=args.image_dir, image_suffix=args.image_suffix)


def _run_split(args):
    groups = None
    if args.group_duplicates:
        groups = read_duplicate_groups(args.group_duplicates)
    split_manifest(args.manifest, val=args.val, test=args.test, seed=args.seed, resplit=args.resplit, groups=groups,
                   group_by=args.group_by, test_where=args.test_where)


def _run_stats(args):
    stats = manifest_stats(args.manifest, read_images=not args.no_images)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats, max_labels=args.max_labels))


def _register_synth(subparsers):
    parser = _add_parser(
        subparsers, "synth", "write the built-in synthetic dataset (coloured shapes)",
        "Write seeded PNGs of coloured shapes under OUT/images/ and OUT/manifest.csv. Multilabel labels are "
        "the shape and colour names present, with a caption that names at most two of them; multiclass "
        "labels are the shape's name; the regression target is the number of shapes.",
        "mlkit data synth --task multilabel --n 600 --size 64 --out data/synth",
    )
    parser.add_argument("--out", required=True, help="the dataset folder to write (created if needed)")
    parser.add_argument("--task", choices=TASKS, default="multilabel", help="which labels to make (default: multilabel)")
    parser.add_argument("--n", type=int, default=600, help="number of images (default: 600)")
    parser.add_argument("--size", type=int, default=64, help="image width and height in pixels (default: 64)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives byte-identical files (default: 0)")
    parser.set_defaults(func=_run_synth)


def _register_from_folders(subparsers):
    parser = _add_parser(
        subparsers, "from-folders", "manifest from a tree of image folders (multiclass or multilabel)",
        "Write a manifest from a folder tree. By default ROOT/<class>/<image> gives a multiclass manifest; "
        "images in deeper folders take their first-level folder's class. With --labels path every folder "
        "level is a label (multilabel): food/fruit/cartoon/x.png gets food|fruit|cartoon; --labels path+name "
        "adds the file name's words: actions/edit-copy.png gets actions|edit|copy. --group-level records "
        "where images came from (a theme, a photographer) for `mlkit data split --test-where`. Extensions: "
        f"{' '.join(ext[1:] for ext in IMAGE_EXTENSIONS)}, any case; other files are passed over and counted.",
        "mlkit data from-folders plankton/train --out plankton/manifest.csv\n"
        "  mlkit data from-folders /usr/share/tuxpaint/stamps --labels path --captions sidecar --out stamps.csv\n"
        "  mlkit data from-folders icons --labels path+name --group-level 1 --min-label-count 20 \\\n"
        "      --out icons/manifest.csv",
    )
    parser.add_argument("root", help="the top folder of the tree")
    parser.add_argument("--out", required=True, help="the manifest to write (.csv, or .jsonl for JSON Lines)")
    parser.add_argument("--labels", choices=FOLDER_LABELS, default="first",
                        help="first: the first-level folder is the class (multiclass); path: every folder level is "
                             "a label (multilabel); name: the file name's words, split at - _ and spaces "
                             "(multilabel); path+name: both. Default: first")
    parser.add_argument("--captions", choices=FOLDER_CAPTIONS, default="none",
                        help="sidecar: each image's caption is the first line of the .txt file beside it with the "
                             "same name (x.txt for x.png). Default: none")
    parser.add_argument("--group-level", metavar="N", type=int, default=None,
                        help="write folder level N (1: the first below ROOT) to a 'group' column instead of reading "
                             "it as a label: ROOT/<theme>/<context>/x.png with --group-level 1 (default: no group)")
    parser.add_argument("--min-label-count", metavar="N", type=int, default=1,
                        help="drop labels on fewer than N images, and images left with no label (default: 1, keep all)")
    parser.set_defaults(func=_run_from_folders)


def _register_from_coco(subparsers):
    parser = _add_parser(
        subparsers, "from-coco", "manifest from a COCO instances_*.json (multilabel)",
        "Write a multilabel manifest whose labels are the category names annotated on each image. Images "
        "without annotations are dropped (and counted) unless --keep-unlabelled is given.",
        "mlkit data from-coco coco/annotations/instances_val2017.json \\\n"
        "      --images coco/val2017 --out coco/val.csv",
    )
    parser.add_argument("instances_json", help="the COCO instances_*.json file")
    parser.add_argument("--images", required=True, help="the folder holding the images named in the file")
    parser.add_argument("--out", required=True, help="the manifest to write (.csv or .jsonl)")
    parser.add_argument("--keep-unlabelled", action="store_true",
                        help="keep images without annotations as split 'train' (they train as all-negative; "
                             "cache-features then needs --allow-unlabelled) (default: drop them)")
    parser.set_defaults(func=_run_from_coco)


def _register_from_imet(subparsers):
    parser = _add_parser(
        subparsers, "from-imet", "manifest from iMet 2019 train.csv + labels.csv (multilabel)",
        "Write a multilabel manifest from iMet's train.csv (id, attribute_ids: space-separated ids) and "
        "labels.csv (attribute_id, attribute_name such as culture::french); images are <id>.png.",
        "mlkit data from-imet imet/train.csv imet/labels.csv \\\n"
        "      --images imet/train --out imet/manifest.csv",
    )
    parser.add_argument("train_csv", help="iMet's train.csv")
    parser.add_argument("labels_csv", help="iMet's labels.csv")
    parser.add_argument("--images", required=True, help="the folder holding <id>.png")
    parser.add_argument("--out", required=True, help="the manifest to write (.csv or .jsonl)")
    parser.set_defaults(func=_run_from_imet)


def _register_from_csv(subparsers):
    parser = _add_parser(
        subparsers, "from-csv", "manifest from a CSV with space-separated label ids or names (+ captions)",
        "Write a multilabel manifest from a CSV whose label column holds space-separated ids or names (or "
        "names joined by '|'). A free-text last column (such as a caption) may contain unquoted commas and "
        "stray quotes, as the captions in the COMP5329 train.csv do. Other columns are carried through.",
        "mlkit data from-csv COMP5329/train.csv --out COMP5329/manifest.csv \\\n"
        "      --image-col ImageID --labels-col Labels --caption-col Caption --image-dir COMP5329/data",
    )
    parser.add_argument("csv", help="the source CSV")
    parser.add_argument("--out", required=True, help="the manifest to write (.csv or .jsonl)")
    parser.add_argument("--image-col", default="image", help="column with image file names (default: image)")
    parser.add_argument("--labels-col", default="labels", help="column with the labels (default: labels)")
    parser.add_argument("--caption-col", default=None, help="column with captions (default: none)")
    parser.add_argument("--label-map", default=None,
                        help="CSV with a header and two columns, id and name, naming the label ids (default: the "
                             "tokens are the names)")
    parser.add_argument("--image-dir", default=None,
                        help="folder the image names are relative to (default: the CSV's folder)")
    parser.add_argument("--image-suffix", default="", help="appended to each image name, e.g. .jpg (default: none)")
    parser.set_defaults(func=_run_from_csv)


def _register_split(subparsers):
    parser = _add_parser(
        subparsers, "split", "fill the split column: seeded, stratified, stable when rows are added",
        "Assign train/val/test to rows whose split is empty, stratified by label (iterative stratification for "
        "multilabel, by class for multiclass, by target quantile for regression). Rows that already have a "
        "split keep it, so appending rows never moves old ones. The manifest is rewritten in place. To measure "
        "accuracy on a source never trained on (a photographer, a microscope, an icon theme), name it with "
        "--test-where, and keep sources whole with --group-by.",
        "mlkit data split data/synth/manifest.csv --val 0.15 --test 0.15 --seed 0\n"
        "  mlkit data split icons/manifest.csv --val 0.15 --test-where group=oxygen",
    )
    parser.add_argument("manifest", help="the manifest to split (rewritten in place)")
    parser.add_argument("--val", type=float, default=0.15, help="fraction of rows for validation (default: 0.15)")
    parser.add_argument("--test", type=float, default=None,
                        help="fraction of rows for testing; not with --test-where (default: 0.15)")
    parser.add_argument("--test-where", metavar="COLUMN=VALUE", default=None,
                        help="the rows whose COLUMN holds VALUE are the test split, and no others; --val is then the "
                             "fraction of the other rows (e.g. group=oxygen: one theme never trained on)")
    parser.add_argument("--group-by", metavar="COLUMN", default=None,
                        help="rows with the same value in COLUMN go to one split (a photographer, a site); an empty "
                             "cell is a row on its own (default: rows are independent)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same split (default: 0)")
    parser.add_argument("--resplit", action="store_true",
                        help="reassign every row, discarding existing splits (default: keep them)")
    parser.add_argument("--group-duplicates", metavar="AUDIT", default=None,
                        help="keep each duplicate group of an audit (its audit/<cache>/ folder or groups.csv) in one split")
    parser.set_defaults(func=_run_split)


def _register_stats(subparsers):
    parser = _add_parser(
        subparsers, "stats", "rows per split, label counts, cardinality, image sizes",
        "Print rows per split, counts per label and split, label cardinality (mean labels per image) and "
        "density, rows with no labels, target ranges for regression, and the image size distribution read "
        "from the image headers (with a count of unreadable files).",
        "mlkit data stats data/synth/manifest.csv --max-labels 20",
    )
    parser.add_argument("manifest", help="the manifest to describe")
    parser.add_argument("--no-images", action="store_true", help="skip reading image headers (default: read them)")
    parser.add_argument("--max-labels", type=int, default=50,
                        help="list at most this many labels, most frequent first; 0 lists all (default: 50)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON instead of a table")
    parser.set_defaults(func=_run_stats)


def register(subparsers):
    """Adds `mlkit data` and its subcommands to the top-level parser."""
    parser = subparsers.add_parser(
        "data", help="make, split and inspect manifests", description=DATA_DESCRIPTION, epilog=DATA_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    for add in (_register_synth, _register_from_folders, _register_from_coco, _register_from_imet,
                _register_from_csv, _register_split, _register_stats):
        add(commands)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
