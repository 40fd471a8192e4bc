"""`mlkit cache-features`: stage 1 from the command line."""

import argparse
from dataclasses import fields

from mlkit.backbones import BACKBONES
from mlkit.bottlenecks.options import CacheOptions
from mlkit.options import add_options

SETTINGS = tuple(field.name for field in fields(CacheOptions))

EPILOG = """\
examples:
  mlkit cache-features data/manifest.csv --backbone resnet50 --weights imagenet
  mlkit cache-features DIR/manifest.csv --backbone mobilenetv2 --weights none \\
      --image-size 64 --pooling avg --workdir WS
  mlkit cache-features DIR/manifest.csv --captions --num-words 10000 ...
  mlkit cache-features data/manifest.csv --backbone hub:dinov2_small     # pip install -e ".[hub]"
  mlkit cache-features data/manifest.csv --backbone models/RUN.keras [--tap network/LAYER]

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
backbones: """ + ", ".join(sorted(BACKBONES)) + """; hub:PRESET for a KerasHub preset
(dinov2_small, siglip_base_patch16_224, vit_base_patch16_224_imagenet, resnet_50_imagenet, ...)
or preset folder; or PATH.keras, your own model cut at --tap (default: the last layer before
its head, named in the cache's .json summary)."""


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
    add_options(parser, CacheOptions)
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
        args.manifest, args.workdir, **{name: getattr(args, name) for name in SETTINGS},
        progress=not args.no_progress, shard=args.shard,
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
