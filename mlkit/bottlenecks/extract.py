"""Stage 1: run a frozen backbone over every manifest row once and cache its features.

The cache is resumable and incremental. Every row is keyed by the sha256 of
its image bytes plus a fingerprint of everything that changes features
(backbone, weight values, input size, preprocessing and its statistics,
pooling, background colour, the number of augmented views). A rerun copies
rows whose key is unchanged from the previous cache and recomputes only the
rest; a run killed at any point continues where it stopped.

With captions, the vocabulary is fitted on the training split's captions and
every row's token ids are written beside its features. Tokens depend only on
the captions and the vocabulary, never on image keys: every run encodes all
rows again (cheap next to the backbone), and a cache whose stored vocabulary
differs from this run's (other captions, --num-words or --max-len, or a rerun
without --captions, which drops the tokens) is rewritten with its features
copied, not recomputed.

The run is planned in mlkit.bottlenecks.plan, images become features in
mlkit.bottlenecks.pipeline, and mlkit.bottlenecks.write writes the file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from mlkit.backbones import build_backbone, default_image_size, feature_extractor, tapped_backbone
from mlkit.bottlenecks.options import CacheOptions
from mlkit.bottlenecks.pipeline import compiled_forward
from mlkit.bottlenecks.plan import (
    CachePlan,
    cache_name,
    cache_settings,
    caption_tokens,
    check_same_settings,
    name_fields,
)
from mlkit.bottlenecks.shards import parse_shard, shard_path, write_zmuv_stats
from mlkit.bottlenecks.write import CacheResult, CacheWriter, write_summary
from mlkit.data.manifest import read_manifest
from mlkit.errors import MlkitError
from mlkit.files import StrPath, stage_folder
from mlkit.locks import hold_lock
from mlkit.options import defaults_of
from mlkit.taps import cache_taps

# The stage's public names; the work is done in plan.py (what to compute), pipeline.py (images to
# features) and write.py (the HDF5 file and its reports).
__all__ = ["CacheResult", "cache_features", "cache_name", "caption_tokens", "fit_zmuv_stats"]

log = logging.getLogger(__name__)
# The keyword defaults are CacheOptions' (mlkit.options): written once, there.
CACHE = defaults_of(CacheOptions)


def cache_features(
    manifest: StrPath, workdir: StrPath = ".", *, backbone: str = CACHE["backbone"], weights: str = CACHE["weights"],
    image_size: int | None = CACHE["image_size"], preprocess: str = CACHE["preprocess"],
    pooling: str = CACHE["pooling"], augment_copies: int = CACHE["augment_copies"],
    batch_size: int = CACHE["batch_size"], dataset: str | None = CACHE["dataset"], subset: str | None = CACHE["subset"],
    task: str | None = CACHE["task"], allow_unlabelled: bool = CACHE["allow_unlabelled"],
    background: str = CACHE["background"], strict: bool = CACHE["strict"], overwrite: bool = CACHE["overwrite"],
    zmuv_samples: int = CACHE["zmuv_samples"], seed: int = CACHE["seed"], progress: bool = True,
    on_batch: Callable[[int, int], object] | None = None, captions: bool = CACHE["captions"],
    num_words: int = CACHE["num_words"], max_len: int | None = CACHE["max_len"],
    shard: str | tuple[int, int] | None = None, dtype: str = CACHE["dtype"], taps: str = CACHE["taps"],
    tap: str | None = CACHE["tap"],
) -> CacheResult:
    """Caches a frozen backbone's features for every row of a manifest (or one shard of its rows).

    Writes `<workdir>/bottlenecks/<name>.h5` (see `mlkit.bottlenecks.cache`
    for the layout), `<name>.json` (a readable summary) and
    `<name>.skipped.csv` (rows whose image could not be read, with why).

    Args:
        manifest: path of the manifest (CSV or JSON Lines).
        workdir: the workspace folder. Defaults to the current folder.
        backbone: a `keras.applications` model by lower-case name, `hub:PRESET`
            (a KerasHub preset or preset folder) or the path of a `.keras`
            model (see `mlkit.backbones.get_backbone`). Defaults to "mobilenetv2".
        weights: "imagenet" (for a preset or a file: its own weights), "none"
            (seeded random) or a weights file. Defaults to "imagenet".
        image_size: square input side. Defaults to the backbone's own.
        preprocess: "inet", "zmuv" or "zmuvs". Defaults to "inet".
        pooling: "avg", "max" or "none" (raw maps). Defaults to "avg".
        augment_copies: K augmented views cached per training image. Defaults to 0.
        batch_size: images per backbone call. Defaults to 64.
        dataset: first name field. Defaults to the manifest's folder name.
        subset: second name field. Defaults to the manifest's file stem, or "all".
        task: "multilabel", "multiclass" or "regression". Defaults to inferred.
        allow_unlabelled: accept multilabel rows with no labels. Defaults to False.
        background: colour transparent pixels are composited on. Defaults to "white".
        strict: fail (leaving the partial cache to resume) if any image is unreadable. Defaults to False.
        overwrite: replace a same-named cache made with other settings. Defaults to False.
        zmuv_samples: training images sampled to fit zmuv statistics. Defaults to 1000.
        seed: seeds random weights and augmented views. Defaults to 0.
        progress: show a progress bar. Defaults to True.
        on_batch: called as `on_batch(rows_done, rows_total)` after each written batch.
        captions: also store caption token ids (dataset `tokens`) and their
            vocabulary (attribute `vocabulary`), fitted on the training split
            (see mlkit.text). Rows without a caption get an empty (all 0)
            sequence and are counted in the summary. Defaults to False.
        num_words: with captions, the most token ids, padding and OOV included. Defaults to 10000.
        max_len: with captions, tokens per caption. Defaults to the 95th
            percentile of the training captions' token counts.
        shard: (i, n) or "i/n": cache only the rows whose image path hashes to
            shard i of n, to `<name>.shard-i-of-n.h5` (mlkit.bottlenecks.shards);
            `merge_shards` joins the n shards. With zmuv, the statistics must
            have been fitted first (`fit_zmuv_stats`). Defaults to None (every row).
        dtype: how features and views are stored: "float32", or "float16" for
            half the disk and memory (tune-top still trains in float32). Features
            outside float16's range (e.g. a random-weight MobileNetV2's, about
            1e-12) are refused. Defaults to "float32".
        taps: layers whose outputs are pooled (as `pooling`) and cached beside
            the backbone's output in the same forward pass, one dataset each
            (`taps/<layer>`; mlkit.taps): "auto" (the family's named depths for
            a multilabel or multiclass manifest and pooled features, else
            none), "last" (none), "all" (the family's named depths) or names
            joined by commas, named depths (early, mid, high, pre) or layer
            names. A cache with other taps is refused unless `overwrite`.
            Defaults to "auto".
        tap: a `.keras` backbone's layer to take features from ("outer/inner"
            inside a nested model). Defaults to the last layer before its head.

    Returns:
        A `CacheResult`.
    """
    started = time.perf_counter()
    CacheOptions(backbone=backbone, weights=weights, image_size=image_size, preprocess=preprocess, pooling=pooling,
                 augment_copies=augment_copies, dtype=dtype, batch_size=batch_size, dataset=dataset, subset=subset,
                 task=task, zmuv_samples=zmuv_samples, num_words=num_words, max_len=max_len, taps=taps,
                 tap=tap, background=background)  # checks them
    table = read_manifest(manifest, task=task, allow_unlabelled=allow_unlabelled)
    layers = cache_taps(backbone, taps, pooling, task=table.task)
    if not allow_unlabelled:
        table.refuse_constant_labels()
    text = caption_tokens(table, table.splits(), num_words, max_len) if captions else None
    fields = name_fields(manifest, backbone, preprocess, pooling, dataset, subset)
    name = "_".join(fields)
    whole = final = stage_folder(workdir, "bottlenecks") / f"{name}.h5"
    if shard is not None:
        shard = parse_shard(shard)
        final = shard_path(whole, *shard)
        name = final.name[: -len(".h5")]
    with hold_lock(final.with_name(f"{name}.lock"), f"cache {final}"):
        model, info = build_backbone(backbone, weights, image_size, pooling, seed=seed, tap=tap)
        if layers:
            info["tap_shapes"] = {layer: [int(d) for d in output.shape[1:]]
                                  for layer, output in zip(layers, tapped_backbone(model, layers).outputs)}
        settings = cache_settings(backbone, weights, info["image_size"], preprocess, pooling, background, augment_copies,
                                  dtype, layers, info["settings"])
        check_same_settings(final, settings, overwrite)
        plan = CachePlan(table, settings, info, seed, final, text, whole=whole, shard=shard, dataset=fields[0],
                         subset=fields[1])
        plan.fit_preprocessing(zmuv_samples, progress)
        if plan.final_is_current():
            log.info("%s is up to date", final)
            return write_summary(plan, {"rows": len(plan.paths), "computed": 0, "reused": len(plan.paths), "skipped": 0,
                                        "skipped_path": plan.skipped_path, "seconds": time.perf_counter() - started}, name)
        extractor = feature_extractor(model, info["spec"], preprocess, info["image_size"], plan.mean, plan.std,
                                      layers)
        writer = CacheWriter(plan, compiled_forward(extractor, batch_size))
        result = writer.run(batch_size, progress, on_batch, strict)
        result.update(seconds=time.perf_counter() - started)
        return write_summary(plan, result, name)


def fit_zmuv_stats(
    manifest: StrPath, workdir: StrPath = ".", *, backbone: str = CACHE["backbone"],
    image_size: int | None = CACHE["image_size"], preprocess: str = "zmuv", pooling: str = CACHE["pooling"],
    dataset: str | None = CACHE["dataset"], subset: str | None = CACHE["subset"], task: str | None = CACHE["task"],
    allow_unlabelled: bool = CACHE["allow_unlabelled"], background: str = CACHE["background"],
    zmuv_samples: int = CACHE["zmuv_samples"], progress: bool = True,
) -> Path:
    """Fits zmuv statistics once on the whole manifest for its sharded cache: `<name>.zmuv.json`.

    Every `cache_features(..., shard=(i, n))` with zmuv reads them, so the shards
    compute the same features as one unsharded run (which fits the same numbers).

    Args:
        manifest, workdir, backbone, image_size, pooling, dataset, subset,
        task, allow_unlabelled, background, zmuv_samples: as for `cache_features`.
        preprocess: must be "zmuv". Defaults to "zmuv".

    Returns:
        The path of the statistics file.
    """
    if preprocess != "zmuv":
        raise MlkitError(f"--fit-stats fits zmuv statistics; --preprocess {preprocess} has none to fit")
    table = read_manifest(manifest, task=task, allow_unlabelled=allow_unlabelled)
    final = stage_folder(workdir, "bottlenecks") / f"{cache_name(manifest, backbone, preprocess, pooling, dataset, subset)}.h5"
    size = int(image_size or default_image_size(backbone))
    settings = cache_settings(backbone, "none", size, preprocess, pooling, background, 0)
    with hold_lock(final.with_name(f"{final.name[:-len('.h5')]}.lock"), f"cache {final}"):
        mean, std = CachePlan(table, settings, {"image_size": size}, 0, final).fit_zmuv(zmuv_samples, progress)
        return write_zmuv_stats(final, settings, mean, std, table.manifest_hash())
