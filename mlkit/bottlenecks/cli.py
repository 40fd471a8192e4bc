"""`mlkit cache-features`: stage 1 from the command line."""

import argparse

from mlkit.backbones import BACKBONES, POOLING, PREPROCESSING
from mlkit.bottlenecks.cache import FEATURE_DTYPES
from mlkit.vocabulary import TASKS

EPILOG = """\
examples:
  mlkit cache-features data/manifest.csv --backbone resnet50 --weights imagenet
  mlkit cache-features DIR/manifest.csv --backbone mobilenetv2 --weights none \\
      --image-size 64 --pooling avg --workdir WS
  mlkit cache-features DIR/manifest.csv --captions --num-words 10000 ...

Writes WS/bottlenecks/<dataset>_<subset>_<backbone>_<prep>_<pool>.h5 (features,
labels, image paths, splits, captions), a .json summary and a .skipped.csv listing
images that could not be read. Rerunning reuses every row whose image and settings
are unchanged and resumes an interrupted run (even one killed with SIGKILL).

--captions also stores each row's caption as token ids (NLTK tokenisation, stop
words dropped, Porter stems; offline) and the vocabulary, fitted on the training
split only, for `mlkit tune-top --captions`. Rows without a caption get an empty
sequence and are counted in the summary. Tokens follow the last run: changing
--num-words or --max-len rewrites them (features are copied, not recomputed), and
a rerun without --captions drops them.

--dtype float16 stores features in half the disk and memory; tune-top still trains
in float32, and on a pretrained MobileNetV2 the tuned tops' metrics did not move
beyond noise (BENCHMARKS.md). Features outside float16's range are refused.

On many machines: --shard I/N caches the rows whose image path hashes to shard I
of N (I = 0 .. N-1) to <cache>.shard-I-of-N.h5, with the same resume and locks;
`mlkit cache-merge` joins the N shards into <cache>.h5. With --preprocess zmuv, run
the same command with --fit-stats once first: every shard reads those statistics.
backbones: """ + ", ".join(sorted(BACKBONES))


def register(subparsers):
    parser = subparsers.add_parser(
        "cache-features",
        help="stage 1: run a frozen backbone once and cache its features to HDF5",
        description="Run a frozen pretrained backbone over every image of a manifest once and cache "
        "its bottleneck features, labels, splits and captions to one HDF5 file.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("manifest", help="manifest CSV or JSON Lines (columns image, labels|target, [caption], [split])")
    parser.add_argument("--workdir", default=".", help="workspace folder; the cache goes to WORKDIR/bottlenecks/ (default: .)")
    parser.add_argument("--backbone", default="mobilenetv2", metavar="NAME", help="keras.applications model by lower-case name (default: mobilenetv2)")
    parser.add_argument("--weights", default="imagenet", help="imagenet (downloaded once to $KERAS_HOME/models), none (seeded random), or a weights file PATH (default: imagenet)")
    parser.add_argument("--image-size", type=int, default=None, metavar="PX", help="square input side in pixels (default: the backbone's own, e.g. 224)")
    parser.add_argument("--preprocess", choices=PREPROCESSING, default="inet", help="inet: the backbone's own preprocess_input; zmuv: per-channel zero mean, unit variance fitted on the training split; zmuvs: each image standardised on its own (default: inet)")
    parser.add_argument("--pooling", choices=POOLING, default="avg", help="avg or max: global pooling to a vector; none: keep raw feature maps (N x H x W x C) (default: avg)")
    parser.add_argument("--augment-copies", type=int, default=0, metavar="K", help="also cache K augmented views (flip, rotation, zoom, shifts) of each training image (default: 0)")
    parser.add_argument("--dtype", choices=FEATURE_DTYPES, default="float32", help="how features are stored: float16 takes half the disk and memory, and tune-top still trains in float32; backbones whose features fall outside float16's range (6.1e-05 to 65504, e.g. random-weight mobilenetv2) are refused (default: float32)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per backbone call (default: 64)")
    parser.add_argument("--dataset", default=None, help="dataset name, the first run-name field (default: the manifest's folder name)")
    parser.add_argument("--subset", default=None, help="subset name, the second run-name field (default: the manifest file's stem, or 'all')")
    parser.add_argument("--task", choices=TASKS, default=None, help="default: inferred (target column: regression; any row with several labels: multilabel; else multiclass)")
    parser.add_argument("--allow-unlabelled", action="store_true", help="accept multilabel rows with no labels (they train as all-negative and are left out of evaluation)")
    parser.add_argument("--background", default="white", help="colour transparent pixels are composited on: white, black, #rrggbb or R,G,B (default: white)")
    parser.add_argument("--strict", action="store_true", help="fail if any image cannot be read (the partial cache is kept; fix the files and rerun)")
    parser.add_argument("--overwrite", action="store_true", help="replace a same-named cache that was made with other settings (size, weights, background)")
    parser.add_argument("--zmuv-samples", type=int, default=1000, help="training images sampled to fit zmuv statistics (default: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seeds random weights (--weights none) and the augmented views (default: 0)")
    parser.add_argument("--captions", action="store_true", help="also cache caption token ids and their vocabulary (needs a caption column and a train split)")
    parser.add_argument("--num-words", type=int, default=10000, metavar="N", help="with --captions: the most token ids, padding and out-of-vocabulary included; the N-2 most frequent training stems are kept (default: 10000)")
    parser.add_argument("--max-len", type=int, default=None, metavar="T", help="with --captions: tokens per caption; longer ones are cut (default: the 95th percentile of the training captions' token counts)")
    parser.add_argument("--shard", default=None, metavar="I/N", help="cache only shard I of N (I from 0): the rows whose image path hashes to I, to <cache>.shard-I-of-N.h5; join the shards with `mlkit cache-merge` (default: every row)")
    parser.add_argument("--fit-stats", action="store_true", help="with --preprocess zmuv: only fit the statistics on the whole manifest, to <cache>.zmuv.json, which every --shard run reads; run once before the shards")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)

    merge = subparsers.add_parser(
        "cache-merge",
        help="join the shards of a cache (cache-features --shard I/N) into one file",
        description="Join bottlenecks/<cache>.shard-I-of-N.h5, I = 0 .. N-1, into bottlenecks/<cache>.h5: the same "
        "file an unsharded cache-features run writes, rows in manifest order. Shards that differ in settings, weights, "
        "zmuv statistics or manifest, and missing or duplicated shards, are refused.",
        epilog="example:\n  mlkit cache-merge WS/bottlenecks/synth_all_mobilenetv2_inet_avg.h5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    merge.add_argument("cache", help="the cache to write: bottlenecks/<cache>.h5, or <cache> (looked up in WORKDIR/bottlenecks/)")
    merge.add_argument("--workdir", default=".", help="workspace folder when CACHE is a name (default: .)")
    merge.set_defaults(func=run_merge)


def run(args):
    from mlkit.bottlenecks.extract import cache_features, fit_zmuv_stats

    if args.fit_stats:
        path = fit_zmuv_stats(
            args.manifest, args.workdir, backbone=args.backbone, image_size=args.image_size, preprocess=args.preprocess,
            pooling=args.pooling, dataset=args.dataset, subset=args.subset, task=args.task,
            allow_unlabelled=args.allow_unlabelled, background=args.background, zmuv_samples=args.zmuv_samples,
            progress=not args.no_progress)
        print(f"zmuv statistics: {path}")
        return 0
    result = cache_features(
        args.manifest, args.workdir, backbone=args.backbone, weights=args.weights, image_size=args.image_size,
        preprocess=args.preprocess, pooling=args.pooling, augment_copies=args.augment_copies,
        batch_size=args.batch_size, dataset=args.dataset, subset=args.subset, task=args.task,
        allow_unlabelled=args.allow_unlabelled, background=args.background, strict=args.strict,
        overwrite=args.overwrite, zmuv_samples=args.zmuv_samples, seed=args.seed, progress=not args.no_progress,
        captions=args.captions, num_words=args.num_words, max_len=args.max_len, shard=args.shard, dtype=args.dtype,
    )
    rate = result.computed / result.seconds if result.seconds else 0.0
    print(f"cache: {result.path}")
    print(f"rows: {result.rows} ({result.computed} computed, {result.reused} reused, {result.skipped} skipped) in {result.seconds:.1f} s ({rate:.1f} rows/s)")
    if result.captions:
        text = result.captions
        print(f"captions: {text['vocabulary_size']} token ids (of at most {text['num_words']}), {text['max_len']} tokens "
              f"each; {text['rows_without_caption']} rows without a caption and {text['rows_without_words']} with "
              f"only stop words (empty sequences), {text['rows_cut']} cut to {text['max_len']} tokens")
    print(f"summary: {result.summary_path}")
    if result.skipped:
        print(f"skipped images and why: {result.skipped_path}")
    return 0


def run_merge(args):
    from mlkit.bottlenecks.shards import merge_shards

    print(f"cache: {merge_shards(args.cache, args.workdir)}")
    return 0
