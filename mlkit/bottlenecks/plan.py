"""Planning a cache-features run: its settings, identity, zmuv statistics, and which rows to reuse.

A `CachePlan` holds what a run decides before the backbone sees an image: the
manifest rows (a shard's own), the settings and the fingerprint over
everything that changes features, each row's key, whether the finished cache
is already current, and which rows an earlier cache (finished, partial or,
for a shard, the merged one) already holds under the same key. The input
pipeline (mlkit.bottlenecks.pipeline) and the writer (mlkit.bottlenecks.write)
carry the plan out.
"""

import dataclasses
import hashlib
import json
import logging
import os
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from mlkit.backbones import get_backbone
from mlkit.bottlenecks.cache import (
    DEFAULT_DTYPE,
    STAT_DATASETS,
    decode_strings,
    feature_datasets,
    partial_path,
    read_attrs,
    stored_stats,
)
from mlkit.bottlenecks.pipeline import progress_bar
from mlkit.bottlenecks.shards import read_zmuv_stats, shard_rows, stats_path
from mlkit.errors import CacheError
from mlkit.images import ImageReadError, decode_image, parse_background, read_bytes, resize_array, sha256_bytes
from mlkit.thumbnails import THUMBNAIL_DATASET

log = logging.getLogger(__name__)

# Bump when the way features are computed from the same inputs changes.
FEATURE_VERSION = 1
# Settings that a same-named cache must share; the name holds the others.
IDENTITY_SETTINGS = ("backbone", "weights", "image_size", "preprocess", "pooling", "background", "dtype", "taps")


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


def same_vocabulary(stored, wanted):
    """True when a cache's stored vocabulary (None: no tokens) is the one this run wants."""
    return json.dumps(stored, sort_keys=True) == json.dumps(wanted, sort_keys=True)


def clean_name(text):
    """A name usable as one run-name field (mlkit.runs): ASCII letters, digits and '-', lower case.

    Accents are dropped ("dätä-sét" is "data-set") and any other character
    becomes '-': run names must read back the same on every file system.
    """
    ascii_text = unicodedata.normalize("NFKD", str(text).lower()).encode("ascii", "ignore").decode()
    cleaned = "".join(c if c.isalnum() or c == "-" else "-" for c in ascii_text).strip("-")
    return cleaned or "data"


def name_fields(manifest_path, backbone, preprocess, pooling, dataset=None, subset=None):
    """The cache's name fields, in `cache.NAME_FIELDS` order: dataset, subset, backbone, preprocess, pooling.

    `dataset` defaults to the manifest's folder name, `subset` to its file stem ("all" for manifest.*).
    """
    path = Path(manifest_path)
    dataset = clean_name(dataset or path.resolve().parent.name)
    subset = clean_name(subset or (path.stem if path.stem != "manifest" else "all"))
    return dataset, subset, get_backbone(backbone).name, preprocess, pooling


def cache_name(manifest_path, backbone, preprocess, pooling, dataset=None, subset=None):
    """`<dataset>_<subset>_<backbone>_<prep>_<pool>`: the first five fields of every run name."""
    return "_".join(name_fields(manifest_path, backbone, preprocess, pooling, dataset, subset))


def cache_settings(backbone, weights, image_size, preprocess, pooling, background, augment_copies, dtype=DEFAULT_DTYPE,
                   taps=(), backbone_settings=None):
    """The settings that change a cache's features, as stored in its attributes.

    `taps` are the layers cached beside the backbone's output (mlkit.taps).
    `backbone_settings` are what the registry needs to rebuild a KerasHub or
    file backbone (`build_backbone`'s `info["settings"]`: its source, tap and
    converter); a `keras.applications` backbone has none, so its caches keep
    their fingerprint.
    """
    return {
        "backbone": get_backbone(backbone).name, "weights": str(weights), "image_size": int(image_size),
        "preprocess": preprocess, "pooling": pooling, "background": ",".join(map(str, parse_background(background))),
        "augment_copies": int(augment_copies), "dtype": dtype, "taps": list(taps), **(backbone_settings or {}),
    }


def check_same_settings(final, settings, overwrite):
    """Refuses to replace a same-named cache made with other identity settings, unless `overwrite`."""
    if overwrite or not final.exists():
        return
    try:
        with h5py.File(final, "r") as h5:
            old = {"dtype": DEFAULT_DTYPE, **read_attrs(h5)}
    except OSError:
        return
    old["taps"] = list(old.get("taps") or [])  # caches of the last layer alone have no `taps` attribute
    changed = [f"{key} {old.get(key)!r} -> {settings[key]!r}" for key in IDENTITY_SETTINGS if str(old.get(key)) != str(settings[key])]
    if changed:
        # Another set of taps is refused like any other setting: adding a tap runs the backbone over every
        # image again, so keeping the old taps' rows would save nothing but their disk writes.
        hint = ""
        if str(old.get("taps")) != str(settings["taps"]) and not old["taps"]:
            # Caches made before taps were the default hold the last layer alone.
            hint = " (--taps last reuses this cache as it is)"
        raise CacheError(
            f"{final} was made with other settings ({'; '.join(changed)}). Pass --subset to cache these "
            f"features under another name (e.g. --subset 96px), or --overwrite to replace it{hint}"
        )


class CachePlan:
    """What one run computes: the manifest rows, settings, fingerprint, row keys and reusable rows.

    Args:
        table: the `Manifest`.
        settings: from `cache_settings`.
        info: what `build_backbone` reports (`image_size`, and for a run `feature_shape`, `weights_sha256`).
        seed: seeds random weights and augmented views.
        final: the finished cache's path (a shard's own file for a shard).
        text: `CaptionTokens` for every manifest row, or None. Defaults to None.
        whole: the unsharded cache's path. Defaults to `final`.
        shard: (index, count), or None for every row. Defaults to None.
    """

    def __init__(self, table, settings, info, seed, final, text=None, whole=None, shard=None, dataset="",
                 subset=""):
        # A shard's plan sees only its rows; `whole_table` keeps what is fitted on every row (target range).
        self.whole_table, self.whole, self.shard = table, whole or final, shard
        # The cache's first two name fields, recorded as attributes (not parsed back out of its file name).
        self.dataset, self.subset = dataset, subset
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
        self.mean = self.std = self.fingerprint = None
        self.stats = None

    # -- preprocessing statistics and fingerprint --------------------------------------------

    def fit_preprocessing(self, samples, progress):
        """Finds the zmuv statistics (shared, earlier or fitted now) and the fingerprint they enter."""
        if self.settings["preprocess"] == "zmuv" and self.shard is not None:
            self.mean, self.std = self._shared_zmuv()
        elif self.settings["preprocess"] == "zmuv":
            self.mean, self.std = (previous_zmuv(self.final, self.partial, self.settings)
                                   or read_zmuv_stats(self.whole, self.settings) or self.fit_zmuv(samples, progress))
        payload = dict(self.settings, weights_sha256=self.info["weights_sha256"], zmuv_mean=self.mean,
                       zmuv_std=self.std, feature_version=FEATURE_VERSION, seed=self.seed if self.settings["weights"].lower() == "none" else None)
        if payload["dtype"] == DEFAULT_DTYPE:  # so caches made before --dtype keep their fingerprint and rows
            del payload["dtype"]
        if not payload["taps"]:  # and caches of the last layer alone, made before --taps, theirs
            del payload["taps"]
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

    def fit_zmuv(self, samples, progress):
        """Per-channel mean and std of resized training images (a seeded, path-ordered sample)."""
        rows = np.flatnonzero(self.splits == "train")
        if len(rows) == 0:
            rows = np.arange(len(self.paths))
        order = sorted(rows, key=lambda r: hashlib.sha256(self.paths[r].encode()).hexdigest())[:samples]
        total, total_sq, count = np.zeros(3), np.zeros(3), 0
        for row in progress_bar(order, progress, "fitting zmuv statistics"):
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

    # -- row identity ------------------------------------------------------------------------

    def key(self, image_sha, row):
        """A row's key: its image bytes' hash, the fingerprint and its number of views."""
        return hashlib.sha256(f"{self.fingerprint}:{image_sha}:{self.views[row]}".encode()).hexdigest()

    @property
    def skipped_path(self):
        return self.final.with_name(self.final.stem + ".skipped.csv")

    def stat_files(self):
        """Records (size, mtime_ns) of every image now, before any is read; returns them."""
        self.stats = file_stats(self.paths)
        return self.stats

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
                stats = stored_stats(h5)
                done = h5["done"][...]
                if not self.rows_match_manifest(h5):
                    return False
        except (OSError, KeyError):
            return False
        return len(done) == len(self.paths) and bool((done == 1).all()) and np.array_equal(stats, file_stats(self.paths))

    def rows_match_manifest(self, h5):
        """True when the cache's labels and splits are the manifest's; an edit inside the cache is undone by a rebuild.

        The manifest hash the cache records says what the rows should be, not
        what the file now holds: a label changed with h5py kept that hash.
        """
        labels = self.table.label_array()
        same = (h5["labels"].shape == labels.shape and np.array_equal(h5["labels"][...], labels)
                and np.array_equal(decode_strings(h5["split"][...]).astype(str), np.asarray(self.splits, dtype=str)))
        if not same:
            log.warning("%s holds labels or splits that differ from %s (edited after it was written); rewriting them",
                        self.final, self.table.path)
        return same

    def is_resumable(self, attrs, rows):
        """True when a partial cache with these attributes and row count was started by this same plan."""
        return attrs.get("fingerprint") == self.fingerprint and attrs.get("manifest_sha256") == self.manifest_sha256 and rows == len(self.paths)

    def earlier_caches(self):
        """Caches whose rows this run may reuse: the finished one, the partial one, and for a shard the merged one."""
        # A shard also reuses rows of the merged cache, so re-sharding a grown manifest recomputes only new rows.
        return [self.final, self.partial] + ([self.whole] if self.shard is not None else [])


def file_stats(paths):
    """(size, mtime_ns, ctime_ns) per file (as `STAT_DATASETS`), all -1 when it cannot be stat'ed."""
    stats = np.full((len(paths), len(STAT_DATASETS)), -1, dtype="int64")
    for i, path in enumerate(paths):
        try:
            st = os.stat(path)
            stats[i] = st.st_size, st.st_mtime_ns, st.st_ctime_ns
        except OSError:
            pass
    return stats


def previous_zmuv(final, partial, settings):
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


# -- reusing rows of earlier caches ---------------------------------------------------------------

def open_sources(paths, fingerprint):
    """Earlier caches (finished or partial) made with the same fingerprint, opened for reading."""
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


def copy_reusable(h5, sources, plan):
    """Copies done rows whose key matches from earlier caches into `h5`; returns how many rows were reused."""
    reusable = {}
    by_stat = {}
    for source in sources:
        attrs = read_attrs(source)
        root = Path(attrs.get("manifest_root", "."))
        done = np.flatnonzero(source["done"][...] == 1)
        keys, shas = source["key"][...], source["image_sha256"][...]
        stats, images = stored_stats(source), source["image"][...]
        for old in done:
            reusable.setdefault(keys[old].decode(), (source, int(old)))
            image = images[old].decode() if isinstance(images[old], bytes) else images[old]
            key = (real_path(root / image), *map(int, stats[old]))
            by_stat[key] = shas[old].decode()
    if not reusable:
        return 0
    shas = _image_hashes(plan, by_stat)
    chosen = {}
    for row, sha in enumerate(shas):
        found = sha and reusable.get(plan.key(sha, row))
        if found:
            chosen.setdefault(found[0], []).append((row, found[1], sha))
    for source, pairs in chosen.items():
        _copy_rows(h5, source, pairs, plan)
    return sum(len(pairs) for pairs in chosen.values())


def real_path(path):
    """The path with symlinks resolved; a symlink loop stays as it is (it is an unreadable image, not an error).

    `Path.resolve` raises RuntimeError on a loop (Python < 3.13), which aborted every run after the
    first had listed the looped image as skipped.
    """
    return os.path.realpath(path)


def _image_hashes(plan, by_stat):
    """sha256 per row: trusted from an earlier cache when size and mtime match, else read and hashed."""
    def one(row):
        path = plan.paths[row]
        known = by_stat.get((real_path(path), *map(int, plan.stats[row])))
        if known:
            return known
        try:
            return sha256_bytes(read_bytes(path))
        except ImageReadError:
            return None

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        return list(pool.map(one, range(len(plan.paths))))


def _copy_rows(h5, source, pairs, plan, chunk=512):
    pairs.sort()
    # An earlier cache made before thumbnails were cached leaves them 0: the audit reads those images.
    datasets = [name for name in feature_datasets(h5) + [THUMBNAIL_DATASET] if name in h5 and name in source]
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        new_rows = [p[0] for p in part]
        # h5py reads rows in strictly increasing order, each once; two new rows may reuse one old row
        # (identical image files, e.g. one icon shipped by two themes).
        old_rows, inverse = np.unique([p[1] for p in part], return_inverse=True)
        for name in datasets:
            values = source[name][old_rows.tolist()][inverse]
            h5[name][new_rows] = values
        h5["image_sha256"][new_rows] = [p[2].encode() for p in part]
        h5["key"][new_rows] = [plan.key(p[2], p[0]).encode() for p in part]
        for column, name in enumerate(STAT_DATASETS):
            h5[name][new_rows] = plan.stats[new_rows, column]
        h5["done"][new_rows] = 1
