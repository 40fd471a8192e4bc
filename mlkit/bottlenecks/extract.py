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
"""

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from mlkit import __version__
from mlkit.backbones import PREPROCESSING, build_backbone, check_choice, feature_extractor, get_backbone
from mlkit.bottlenecks.cache import (
    FORMAT_VERSION, create_datasets, partial_path, read_attrs, write_attrs, write_tokens,
)
from mlkit.bottlenecks.shards import parse_shard, read_zmuv_stats, shard_path, shard_rows, stats_path, write_zmuv_stats
from mlkit.data.manifest import read_manifest
from mlkit.errors import CacheError, MlkitError
from mlkit.files import DiskFullError, atomic_path, stage_folder, write_text
from mlkit.images import ImageReadError, augment_view, decode_image, parse_background, read_bytes, resize_array, sha256_bytes, view_seed
from mlkit.locks import hold_lock

log = logging.getLogger(__name__)

# Bump when the way features are computed from the same inputs changes.
FEATURE_VERSION = 1
# Settings that a same-named cache must share; the name holds the others.
IDENTITY_SETTINGS = ("backbone", "weights", "image_size", "preprocess", "pooling", "background")


@dataclass
class CacheResult:
    """What a cache-features run did."""

    path: Path
    summary_path: Path
    skipped_path: Path
    rows: int
    computed: int
    reused: int
    skipped: int
    seconds: float
    captions: dict = None


@dataclass
class CaptionTokens:
    """The caption vocabulary fitted on the training split, every row's token ids, and counts for the report."""

    vocabulary: dict
    tokens: np.ndarray
    report: dict


def caption_tokens(table, splits, num_words=10000, max_len=None):
    """Fits the caption vocabulary on the training rows and encodes every row's caption.

    Args:
        table: the `Manifest`.
        splits: each row's split.
        num_words: the most token ids, padding and OOV included. Defaults to 10000.
        max_len: tokens per caption. Defaults to the 95th percentile of the training captions'.

    Returns:
        A `CaptionTokens`; rows without a caption are all padding (0).

    Raises:
        CacheError: when the manifest has no caption column or no training rows.
    """
    from mlkit.text import OOV_ID, CaptionEncoder, fit_vocabulary

    captions = table.captions()
    if captions is None:
        raise CacheError(f"--captions: {table.path} has no caption column; add one or drop --captions")
    train = np.asarray(splits) == "train"
    if not train.any():
        raise CacheError(f"--captions fits the vocabulary on the training split, and {table.path} has no rows "
                         f"with split 'train'; run `mlkit data split {table.path}` first")
    vocabulary = fit_vocabulary([c for c, is_train in zip(captions, train) if is_train], num_words, max_len)
    encoder = CaptionEncoder(vocabulary)
    tokens = np.zeros((len(captions), encoder.max_len), dtype="int32")
    lengths = np.zeros(len(captions), dtype="int64")
    oov = np.zeros(len(captions), dtype="int64")
    for row, caption in enumerate(captions):
        ids = encoder.ids(caption)
        lengths[row], oov[row] = len(ids), ids.count(OOV_ID)
        tokens[row, : min(len(ids), encoder.max_len)] = ids[: encoder.max_len]
    missing = np.array([c is None for c in captions], dtype=bool)
    held_out = ~train & ~missing
    report = {
        "vocabulary_size": vocabulary["size"], "num_words": vocabulary["num_words"], "max_len": encoder.max_len,
        "max_len_from": vocabulary["max_len_from"], "stop_words": vocabulary["stop_words_source"],
        "rows_without_caption": int(missing.sum()), "rows_without_words": int(((lengths == 0) & ~missing).sum()),
        "rows_cut": int((lengths > encoder.max_len).sum()),
        "oov_share_outside_train": round(float(oov[held_out].sum() / max(lengths[held_out].sum(), 1)), 4),
    }
    return CaptionTokens(vocabulary, tokens, report)


def clean_name(text):
    """A name usable as one run-name field: lower case, no '_' or spaces."""
    cleaned = "".join(c if c.isalnum() or c == "-" else "-" for c in str(text).lower()).strip("-")
    return cleaned or "data"


def cache_name(manifest_path, backbone, preprocess, pooling, dataset=None, subset=None):
    """`<dataset>_<subset>_<backbone>_<prep>_<pool>`: the first five fields of every run name."""
    path = Path(manifest_path)
    dataset = clean_name(dataset or path.resolve().parent.name)
    subset = clean_name(subset or (path.stem if path.stem != "manifest" else "all"))
    return f"{dataset}_{subset}_{get_backbone(backbone).name}_{preprocess}_{pooling}"


def cache_features(
    manifest, workdir=".", *, backbone="mobilenetv2", weights="imagenet", image_size=None,
    preprocess="inet", pooling="avg", augment_copies=0, batch_size=64, dataset=None, subset=None,
    task=None, allow_unlabelled=False, background="white", strict=False, overwrite=False,
    zmuv_samples=1000, seed=0, progress=True, on_batch=None, captions=False, num_words=10000, max_len=None,
    shard=None,
):
    """Caches a frozen backbone's features for every row of a manifest (or one shard of its rows).

    Writes `<workdir>/bottlenecks/<name>.h5` (see `mlkit.bottlenecks.cache`
    for the layout), `<name>.json` (a readable summary) and
    `<name>.skipped.csv` (rows whose image could not be read, with why).

    Args:
        manifest: path of the manifest (CSV or JSON Lines).
        workdir: the workspace folder. Defaults to the current folder.
        backbone: a `keras.applications` model by lower-case name. Defaults to "mobilenetv2".
        weights: "imagenet", "none" (seeded random) or a weights file. Defaults to "imagenet".
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

    Returns:
        A `CacheResult`.
    """
    started = time.perf_counter()
    check_choice(preprocess, PREPROCESSING, "preprocessing")
    if augment_copies < 0 or batch_size < 1:
        raise MlkitError(f"--augment-copies must be >= 0 and --batch-size >= 1 (got {augment_copies}, {batch_size})")
    table = read_manifest(manifest, task=task, allow_unlabelled=allow_unlabelled)
    text = caption_tokens(table, table.splits(), num_words, max_len) if captions else None
    name = cache_name(manifest, backbone, preprocess, pooling, dataset, subset)
    whole = final = stage_folder(workdir, "bottlenecks") / f"{name}.h5"
    if shard is not None:
        shard = parse_shard(shard)
        final = shard_path(whole, *shard)
        name = final.name[: -len(".h5")]
    with hold_lock(final.with_name(f"{name}.lock"), f"cache {final}"):
        model, info = build_backbone(backbone, weights, image_size, pooling, seed=seed)
        settings = _settings(backbone, weights, info["image_size"], preprocess, pooling, background, augment_copies)
        _check_same_settings(final, settings, overwrite)
        job = _Job(table, settings, info, seed, final, text, whole=whole, shard=shard)
        job.fit_preprocessing(zmuv_samples, progress)
        if job.final_is_current():
            log.info("%s is up to date", final)
            return job.write_summary({"rows": len(job.paths), "computed": 0, "reused": len(job.paths), "skipped": 0,
                                      "skipped_path": job.skipped_path, "seconds": time.perf_counter() - started}, name)
        job.extractor = feature_extractor(model, get_backbone(backbone), preprocess, info["image_size"], job.mean, job.std)
        job.forward = _compiled_forward(job.extractor, batch_size)
        result = job.run(batch_size, progress, on_batch, strict)
        result.update(seconds=time.perf_counter() - started)
        return job.write_summary(result, name)


def fit_zmuv_stats(
    manifest, workdir=".", *, backbone="mobilenetv2", image_size=None, preprocess="zmuv", pooling="avg",
    dataset=None, subset=None, task=None, allow_unlabelled=False, background="white", zmuv_samples=1000, progress=True,
):
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
    size = int(image_size or get_backbone(backbone).default_size)
    settings = _settings(backbone, "none", size, preprocess, pooling, background, 0)
    with hold_lock(final.with_name(f"{final.name[:-len('.h5')]}.lock"), f"cache {final}"):
        mean, std = _Job(table, settings, {"image_size": size}, 0, final)._fit_zmuv(zmuv_samples, progress)
        return write_zmuv_stats(final, settings, mean, std, table.manifest_hash())


def _settings(backbone, weights, image_size, preprocess, pooling, background, augment_copies):
    """The settings that change a cache's features, as stored in its attributes."""
    return {
        "backbone": get_backbone(backbone).name, "weights": str(weights), "image_size": int(image_size),
        "preprocess": preprocess, "pooling": pooling, "background": ",".join(map(str, parse_background(background))),
        "augment_copies": int(augment_copies),
    }


def _check_same_settings(final, settings, overwrite):
    if overwrite or not final.exists():
        return
    try:
        with h5py.File(final, "r") as h5:
            old = read_attrs(h5)
    except OSError:
        return
    changed = [f"{key} {old.get(key)!r} -> {settings[key]!r}" for key in IDENTITY_SETTINGS if str(old.get(key)) != str(settings[key])]
    if changed:
        raise CacheError(
            f"{final} was made with other settings ({'; '.join(changed)}). Pass --subset to cache these "
            "features under another name (e.g. --subset 96px), or --overwrite to replace it"
        )


class _Job:
    """One run's state: the manifest, settings, fingerprint and row bookkeeping."""

    def __init__(self, table, settings, info, seed, final, text=None, whole=None, shard=None):
        # A shard's job sees only its rows; `whole_table` keeps what is fitted on every row (target range).
        self.whole_table, self.whole, self.shard = table, whole or final, shard
        self.manifest_row = None
        if shard is not None:
            self.manifest_row = shard_rows(table.rows["image"], *shard)
            table = dataclasses.replace(table, rows=table.rows.iloc[self.manifest_row])
            if text is not None:
                text = dataclasses.replace(text, tokens=text.tokens[self.manifest_row])
        self.table, self.settings, self.info, self.seed, self.final = table, settings, info, seed, final
        self.text = text
        # A shard records the whole manifest's hash: shards of one manifest agree, and its rows follow from it.
        self.manifest_sha256 = self.whole_table.manifest_hash()
        self.partial = partial_path(final)
        self.paths = [str(p) for p in table.image_paths()]
        self.splits = table.splits()
        self.views = np.where(self.splits == "train", settings["augment_copies"], 0)
        self.background = parse_background(settings["background"])
        self.mean = self.std = None
        self.failures = {}
        self.reused = 0

    # -- preprocessing statistics and fingerprint --------------------------------------------

    def fit_preprocessing(self, samples, progress):
        if self.settings["preprocess"] == "zmuv" and self.shard is not None:
            self.mean, self.std = self._shared_zmuv()
        elif self.settings["preprocess"] == "zmuv":
            self.mean, self.std = (_previous_zmuv(self.final, self.partial, self.settings)
                                   or read_zmuv_stats(self.whole, self.settings) or self._fit_zmuv(samples, progress))
        payload = dict(self.settings, weights_sha256=self.info["weights_sha256"], zmuv_mean=self.mean,
                       zmuv_std=self.std, feature_version=FEATURE_VERSION, seed=self.seed if self.settings["weights"].lower() == "none" else None)
        self.fingerprint = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def _shared_zmuv(self):
        """The statistics fitted once for every shard; fitting them on one shard's rows would make shards disagree."""
        stats = read_zmuv_stats(self.whole, self.settings, required=True)
        if stats is None:
            table = self.whole_table
            raise CacheError(
                f"zmuv shards need statistics fitted once on the whole manifest, and {stats_path(self.whole)} is "
                f"missing; run `mlkit cache-features {table.path} --fit-stats` with the same --backbone, --image-size, "
                "--preprocess, --pooling, --background, --dataset and --subset first, then the shards")
        return stats

    def _fit_zmuv(self, samples, progress):
        """Per-channel mean and std of resized training images (a seeded, path-ordered sample)."""
        rows = np.flatnonzero(self.splits == "train")
        if len(rows) == 0:
            rows = np.arange(len(self.paths))
        order = sorted(rows, key=lambda r: hashlib.sha256(self.paths[r].encode()).hexdigest())[:samples]
        total, total_sq, count = np.zeros(3), np.zeros(3), 0
        for row in _progress(order, progress, "fitting zmuv statistics"):
            try:
                pixels = resize_array(decode_image(read_bytes(self.paths[row]), self.paths[row], self.background), self.settings["image_size"]).astype("float64")
            except ImageReadError:
                continue
            total += pixels.sum((0, 1))
            total_sq += np.square(pixels).sum((0, 1))
            count += pixels.shape[0] * pixels.shape[1]
        if count == 0:
            raise CacheError("zmuv needs at least one readable training image to fit its statistics")
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
        return mean.round(6).tolist(), std.round(6).tolist()

    def key(self, image_sha, row):
        return hashlib.sha256(f"{self.fingerprint}:{image_sha}:{self.views[row]}".encode()).hexdigest()

    @property
    def skipped_path(self):
        return self.final.with_name(self.final.stem + ".skipped.csv")

    def final_is_current(self):
        """True when the finished cache has every row done from unchanged files with these settings."""
        if self.partial.exists() or not self.final.exists():
            return False
        try:
            with h5py.File(self.final, "r") as h5:
                attrs = read_attrs(h5)
                if attrs.get("fingerprint") != self.fingerprint or attrs.get("manifest_sha256") != self.manifest_sha256:
                    return False
                if not same_vocabulary(attrs.get("vocabulary"), self.text.vocabulary if self.text else None):
                    return False
                stats = np.stack([h5["file_size"][...], h5["file_mtime_ns"][...]], axis=1)
                done = h5["done"][...]
        except (OSError, KeyError):
            return False
        return len(done) == len(self.paths) and bool((done == 1).all()) and np.array_equal(stats, _file_stats(self.paths))

    # -- the partial file ---------------------------------------------------------------------

    def run(self, batch_size, progress, on_batch, strict):
        """Fills the partial cache and renames it into place; returns the counts for the summary."""
        try:
            with self.open_partial() as h5:
                write_tokens(h5, *((self.text.tokens, self.text.vocabulary) if self.text else ()))
                computed = self.compute(h5, batch_size, progress, on_batch)
                result = self.finish(h5, strict)
        finally:
            # The warm-up thread may still be inside TensorFlow after an early error; Python exiting
            # under it aborted the process (rc 134) instead of printing the error.
            self.forward.wait()
        result.update(computed=computed, reused=self.reused)
        return result

    def open_partial(self):
        """The partial cache to fill: the interrupted one if it matches, else a new one seeded with reusable rows."""
        self.stats = _file_stats(self.paths)
        h5 = self._resume_in_place()
        if h5 is None:
            h5 = self._start_new()
        return h5

    def _resume_in_place(self):
        if not self.partial.exists():
            return None
        try:
            h5 = h5py.File(self.partial, "r+")
            attrs = read_attrs(h5)
        except OSError as error:
            log.warning("ignoring unreadable %s (%s); starting it again", self.partial, error)
            return None
        same = attrs.get("fingerprint") == self.fingerprint and attrs.get("manifest_sha256") == self.manifest_sha256 and len(h5["done"]) == len(self.paths)
        if not same:
            h5.close()
            return None
        done = h5["done"][...] == 1
        unchanged = (h5["file_size"][...] == self.stats[:, 0]) & (h5["file_mtime_ns"][...] == self.stats[:, 1])
        h5["done"][...] = (done & unchanged).astype("uint8")
        h5.flush()
        self.reused = int((done & unchanged).sum())
        log.info("resuming %s: %d of %d rows already done", self.partial, self.reused, len(self.paths))
        return h5

    def _start_new(self):
        need = self.expected_size()
        if shutil.disk_usage(self.partial.parent).free < need:  # fail before writing, not mid-way
            raise DiskFullError(self.partial, need)
        # A shard also reuses rows of the merged cache, so re-sharding a grown manifest recomputes only new rows.
        earlier = [self.final, self.partial] + ([self.whole] if self.shard is not None else [])
        sources = _open_sources(earlier, self.fingerprint)
        try:
            with atomic_path(self.partial, need, tmp=self.partial.with_name(self.partial.name + ".tmp")) as tmp:
                with h5py.File(tmp, "w") as h5:
                    self._create(h5)
                    self.reused = _copy_reusable(h5, sources, self)
        finally:
            for source in sources:
                source.close()
        if self.reused:
            log.info("reusing %d of %d rows from the previous cache", self.reused, len(self.paths))
        return h5py.File(self.partial, "r+")

    def expected_size(self):
        """Bytes the partial cache takes: its features and views are allocated when it is created."""
        per_row = 4 * int(np.prod(self.info["feature_shape"]))
        strings = sum(len(p) for p in self.paths) + 256 * len(self.paths)
        return per_row * (len(self.paths) + int(self.views.sum())) + strings + (64 << 10)

    def _create(self, h5):
        table = self.table
        labels = table.label_array()
        create_datasets(
            h5, num_rows=len(self.paths), feature_shape=self.info["feature_shape"], task=table.task,
            num_labels=labels.shape[1] if labels.ndim > 1 else 0,
            augment_copies=self.settings["augment_copies"], captions=table.captions() is not None,
        )
        if len(self.paths):
            h5["labels"][...] = labels
            h5["image"][...] = [str(v) for v in table.rows["image"]]
            h5["split"][...] = [str(v) for v in self.splits]
            if table.captions() is not None:
                h5["caption"][...] = ["" if c is None else str(c) for c in table.captions()]
        if self.shard is not None:
            h5.create_dataset("manifest_row", data=self.manifest_row)
        write_attrs(h5, self._attrs())
        h5.flush()

    def _attrs(self):
        import keras
        import tensorflow as tf

        table, labels = self.table, self.table.label_array()
        attrs = dict(self.settings, task=table.task, label_names=list(table.label_names),
                     dataset=self.final.stem.split("_")[0], subset=self.final.stem.split("_")[1],
                     weights_sha256=self.info["weights_sha256"], zmuv_mean=self.mean, zmuv_std=self.std,
                     fingerprint=self.fingerprint, seed=self.seed, manifest_path=str(Path(table.path).resolve()),
                     manifest_root=str(table.root.resolve()), manifest_sha256=self.manifest_sha256,
                     format_version=FORMAT_VERSION, feature_version=FEATURE_VERSION, complete=False,
                     versions={"mlkit": __version__, "keras": keras.__version__, "tensorflow": tf.__version__, "h5py": h5py.__version__})
        if table.task == "regression":
            whole, splits = self.whole_table.label_array(), self.whole_table.splits()
            train = whole[splits == "train"] if (splits == "train").any() else whole
            attrs.update(target_names=list(table.target_names), target_min=train.min(0).tolist(), target_max=train.max(0).tolist())
        if self.shard is not None:
            attrs.update(shard_index=self.shard[0], shard_count=self.shard[1], manifest_rows=len(self.whole_table.rows))
        return attrs

    # -- computing rows --------------------------------------------------------------------

    def compute(self, h5, batch_size, progress, on_batch):
        pending = np.flatnonzero(h5["done"][...] == 0)
        units = [(int(row), view) for row in pending for view in range(self.views[row] + 1)]
        if not units:
            return 0
        remaining = {int(row): int(self.views[row]) + 1 for row in pending}
        written = 0
        bar = _progress(None, progress, "caching features", total=len(units), unit="img")
        for batch in _pipeline(units, self, batch_size):
            written += self._write_batch(h5, batch, remaining)
            if bar is not None:
                bar.update(len(batch[0]))
            if on_batch:
                on_batch(int((h5["done"][...] == 1).sum()), len(self.paths))
        if bar is not None:
            bar.close()
        return written

    def _write_batch(self, h5, batch, remaining):
        rows, views, shas, ok, pixels = batch
        features = self.forward(pixels)
        clean = np.flatnonzero(ok & (views == 0))
        if len(clean):  # rows arrive in increasing order: one write per dataset per batch
            _write_rows(h5["features"], rows[clean], features[clean])
        finished, finished_shas = [], []
        for i in np.flatnonzero(ok):
            row, view = int(rows[i]), int(views[i])
            if view:
                h5["augmented"][row, view - 1] = features[i]
            remaining[row] -= 1
            if remaining[row] == 0:
                finished.append(row)
                finished_shas.append(shas[i].decode())
        if finished:
            finished = np.asarray(finished)
            _write_rows(h5["image_sha256"], finished, [sha.encode() for sha in finished_shas])
            _write_rows(h5["key"], finished, [self.key(sha, row).encode() for row, sha in zip(finished.tolist(), finished_shas)])
            _write_rows(h5["file_size"], finished, self.stats[finished, 0])
            _write_rows(h5["file_mtime_ns"], finished, self.stats[finished, 1])
        h5.flush()  # features reach the file before the done mask says so
        if len(finished):
            _write_rows(h5["done"], finished, np.ones(len(finished), h5["done"].dtype))
            h5.flush()
        return len(finished)

    # -- finishing ------------------------------------------------------------------------------

    def finish(self, h5, strict):
        skipped_path = self.skipped_path
        skipped = self._write_skipped(h5, skipped_path)
        result = {"skipped": len(skipped), "skipped_path": skipped_path, "rows": len(self.paths)}
        if skipped:
            log.warning("%d image(s) could not be read; they are listed with the reason in %s", len(skipped), skipped_path)
        if skipped and strict:
            raise CacheError(f"--strict: {len(skipped)} image(s) could not be read (see {skipped_path}); fix them and rerun to finish {self.partial}")
        h5.attrs["complete"] = True
        h5.attrs["rows_done"] = len(self.paths) - len(skipped)
        h5.flush()
        h5.close()
        os.replace(self.partial, self.final)
        return result

    def _write_skipped(self, h5, path):
        done = h5["done"][...]
        rows = []
        for row in np.flatnonzero(done == 0):
            reason = self.failures.get(int(row), "not processed")
            rows.append({"row": int(row if self.manifest_row is None else self.manifest_row[row]) + 1, "image": self.table.rows["image"].iloc[row], "split": self.splits[row], "reason": reason})
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=["row", "image", "split", "reason"])
        writer.writeheader()
        writer.writerows(rows)
        write_text(path, text.getvalue())
        return rows

    def write_summary(self, result, name):
        with h5py.File(self.final, "r") as h5:
            attrs = read_attrs(h5)
            done = h5["done"][...] == 1
        splits = {s or "(none)": int(((self.splits == s) & done).sum()) for s in sorted(set(self.splits))}
        summary = {"name": name, "path": str(self.final), **{k: attrs.get(k) for k in (
            "task", "label_names", "target_names", "backbone", "weights", "weights_sha256", "image_size", "preprocess",
            "pooling", "augment_copies", "background", "zmuv_mean", "zmuv_std", "manifest_path", "manifest_sha256", "versions")},
            "feature_shape": self.info["feature_shape"], "rows": result["rows"], "rows_done": int(done.sum()), "rows_by_split": splits,
            "computed": result["computed"], "reused": result["reused"], "skipped": result["skipped"],
            "seconds": round(result["seconds"], 2)}
        if self.text:
            summary["captions"] = self.text.report
        summary_path = self.final.with_suffix(".json")
        write_text(summary_path, json.dumps(summary, indent=2) + "\n")
        return CacheResult(path=self.final, summary_path=summary_path, skipped_path=result["skipped_path"],
                           rows=result["rows"], computed=result["computed"], reused=result["reused"],
                           skipped=result["skipped"], seconds=result["seconds"],
                           captions=self.text.report if self.text else None)


def same_vocabulary(stored, wanted):
    """True when a cache's stored vocabulary (None: no tokens) is the one this run wants."""
    return json.dumps(stored, sort_keys=True) == json.dumps(wanted, sort_keys=True)


def _compiled_forward(extractor, batch_size):
    """The extractor as one traced graph (2-3x faster than eager calls on CPU).

    A short last batch is padded to `batch_size`, so the graph is traced once.
    Tracing and the first (slowest) call run at once on a blank batch in a
    background thread, while the input pipeline decodes the first real batch.
    """
    import threading

    import tensorflow as tf

    def run(pixels):
        return extractor(pixels, training=False)

    graph = tf.function(run, autograph=False)
    size = extractor.input_shape[1:]
    failure = []

    def warm_up():
        try:
            graph(tf.zeros((batch_size, *size), tf.float32))
        except Exception as error:  # reported on the first real call, in the caller's thread
            failure.append(error)

    warming = threading.Thread(target=warm_up, name="mlkit-warm-up", daemon=True)
    warming.start()

    def forward(pixels):
        if warming.is_alive() or failure:
            warming.join()
            if failure:
                raise failure[0]
        count = int(pixels.shape[0])
        if count < batch_size:
            pixels = tf.pad(pixels, [[0, batch_size - count], [0, 0], [0, 0], [0, 0]])
        return graph(pixels).numpy()[:count]

    forward.wait = warming.join
    return forward


def _pipeline(units, job, batch_size):
    """Reads, decodes and resizes batches of images in parallel through tf.data, with prefetch.

    Each batch is one Python call that reads, hashes, decodes, augments (views
    > 0) and resizes (`resize_array`, the exported model's resize) its images
    on a thread per core; PIL and SciPy release the GIL for the heavy parts.
    One call per batch rather than per image saves about a millisecond of
    tf.data and GIL overhead per image, a third of the work (BENCHMARKS.md).
    Two batches load at once and two more wait, prefetched. tf.data's
    autotuner is off: nothing is left for it to tune, and at the end of a run
    its model thread held the iterator's destruction for 20 s.
    """
    import tensorflow as tf

    rows = np.array([u[0] for u in units], dtype="int64")
    views = np.array([u[1] for u in units], dtype="int64")
    size = job.settings["image_size"]

    def load(row, view):
        path = job.paths[row]
        try:
            data = read_bytes(path)
            sha = sha256_bytes(data)
            pixels = decode_image(data, path, job.background)
            if view:
                pixels = augment_view(pixels, view_seed(f"{sha}:{job.seed}", view), job.background)
            return resize_array(pixels, size), sha.encode()
        except ImageReadError as error:
            job.failures[row] = error.reason
            return None, b""

    workers = ThreadPoolExecutor(max(1, os.cpu_count() or 1), thread_name_prefix="mlkit-decode")

    def load_batch(batch_rows, batch_views):
        pixels = np.zeros((len(batch_rows), size, size, 3), np.float32)
        shas = np.empty(len(batch_rows), dtype=object)
        ok = np.zeros(len(batch_rows), bool)
        loaded = workers.map(load, batch_rows.tolist(), batch_views.tolist())
        for k, (image, shas[k]) in enumerate(loaded):
            if image is not None:
                pixels[k], ok[k] = image, True
        return pixels, shas.astype(bytes), ok

    def load_tf(batch_rows, batch_views):
        pixels, shas, ok = tf.numpy_function(load_batch, [batch_rows, batch_views], [tf.float32, tf.string, tf.bool],
                                             stateful=False)
        pixels.set_shape([None, size, size, 3])
        return batch_rows, batch_views, shas, ok, pixels

    data = tf.data.Dataset.from_tensor_slices((rows, views)).batch(batch_size)
    data = data.map(load_tf, num_parallel_calls=2, deterministic=True).prefetch(2)
    options = tf.data.Options()
    options.autotune.enabled = False
    data = data.with_options(options)
    try:
        for row, view, sha, ok, pixels in data:
            yield row.numpy(), view.numpy(), sha.numpy(), ok.numpy(), pixels
    finally:
        workers.shutdown(wait=False, cancel_futures=True)


def _write_rows(dataset, rows, values):
    """dataset[rows] = values for increasing `rows`: a slice when they are consecutive (much faster in h5py)."""
    rows = np.asarray(rows)
    if rows[-1] - rows[0] == len(rows) - 1:
        dataset[int(rows[0]) : int(rows[-1]) + 1] = values
    else:
        dataset[rows.tolist()] = values


def _file_stats(paths):
    """(size, mtime_ns) per file, (-1, -1) when it cannot be stat'ed."""
    stats = np.full((len(paths), 2), -1, dtype="int64")
    for i, path in enumerate(paths):
        try:
            st = os.stat(path)
            stats[i] = st.st_size, st.st_mtime_ns
        except OSError:
            pass
    return stats


def _previous_zmuv(final, partial, settings):
    """zmuv statistics from an earlier cache with the same size and background, so reruns reuse rows."""
    for path in (partial, final):
        try:
            with h5py.File(path, "r") as h5:
                attrs = read_attrs(h5)
        except OSError:
            continue
        if attrs.get("zmuv_mean") and all(str(attrs.get(k)) == str(settings[k]) for k in ("image_size", "background")):
            return attrs["zmuv_mean"], attrs["zmuv_std"]
    return None


def _open_sources(paths, fingerprint):
    """Earlier caches (finished or partial) made with the same fingerprint."""
    sources = []
    for path in paths:
        try:
            h5 = h5py.File(path, "r")
        except OSError:
            continue
        if read_attrs(h5).get("fingerprint") == fingerprint:
            sources.append(h5)
        else:
            h5.close()
    return sources


def _copy_reusable(h5, sources, job):
    """Copies done rows whose key matches from earlier caches; returns how many rows were reused."""
    reusable = {}
    by_stat = {}
    for source in sources:
        attrs = read_attrs(source)
        root = Path(attrs.get("manifest_root", "."))
        done = np.flatnonzero(source["done"][...] == 1)
        keys, shas = source["key"][...], source["image_sha256"][...]
        sizes, mtimes, images = source["file_size"][...], source["file_mtime_ns"][...], source["image"][...]
        for old in done:
            reusable.setdefault(keys[old].decode(), (source, int(old)))
            image = images[old].decode() if isinstance(images[old], bytes) else images[old]
            by_stat[(real_path(root / image), int(sizes[old]), int(mtimes[old]))] = shas[old].decode()
    if not reusable:
        return 0
    shas = _image_hashes(job, by_stat)
    plan = {}
    for row, sha in enumerate(shas):
        found = sha and reusable.get(job.key(sha, row))
        if found:
            plan.setdefault(found[0], []).append((row, found[1], sha))
    for source, pairs in plan.items():
        _copy_rows(h5, source, pairs, job)
    return sum(len(pairs) for pairs in plan.values())


def real_path(path):
    """The path with symlinks resolved; a symlink loop stays as it is (it is an unreadable image, not an error).

    `Path.resolve` raises RuntimeError on a loop (Python < 3.13), which aborted every run after the
    first had listed the looped image as skipped.
    """
    return os.path.realpath(path)


def _image_hashes(job, by_stat):
    """sha256 per row: trusted from an earlier cache when size and mtime match, else read and hashed."""
    def one(row):
        path = job.paths[row]
        size, mtime = job.stats[row]
        known = by_stat.get((real_path(path), int(size), int(mtime)))
        if known:
            return known
        try:
            return sha256_bytes(read_bytes(path))
        except ImageReadError:
            return None

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        return list(pool.map(one, range(len(job.paths))))


def _copy_rows(h5, source, pairs, job, chunk=512):
    pairs.sort()
    datasets = ["features"] + (["augmented"] if "augmented" in h5 else [])
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        new_rows = [p[0] for p in part]
        old_rows = np.array([p[1] for p in part])
        order = np.argsort(old_rows)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        for name in datasets:
            values = source[name][old_rows[order].tolist()][inverse]
            h5[name][new_rows] = values
        h5["image_sha256"][new_rows] = [p[2].encode() for p in part]
        h5["key"][new_rows] = [job.key(p[2], p[0]).encode() for p in part]
        h5["file_size"][new_rows] = job.stats[new_rows, 0]
        h5["file_mtime_ns"][new_rows] = job.stats[new_rows, 1]
        h5["done"][new_rows] = 1


def _progress(iterable, enabled, description, total=None, unit="img"):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=description, unit=unit, smoothing=0.1, dynamic_ncols=True)
