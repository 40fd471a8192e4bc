"""Sharded feature caching: which rows a shard holds, the zmuv statistics shards share, and the merge.

`cache-features --shard i/n` caches the manifest rows whose image path hashes
to `i` modulo `n` into `bottlenecks/<cache>.shard-i-of-n.h5`, through the same
extraction, resume, skip and lock code as a whole cache (mlkit.bottlenecks.extract).
A row's shard depends only on its own image path, so adding rows to a manifest
never moves old ones to another shard. Each shard file holds its rows in
manifest order and their manifest row numbers (dataset `manifest_row`).

zmuv statistics are fitted once on the whole manifest's training split
(`cache-features --fit-stats`, written to `<cache>.zmuv.json`) and read by every
shard, so all shards compute the same features. `merge_shards` joins the n
shards into `<cache>.h5`, equal to what an unsharded run writes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from pathlib import Path

import h5py
import numpy as np

from mlkit.bottlenecks.cache import (
    create_datasets,
    feature_datasets,
    partial_path,
    read_attrs,
    tap_dataset,
    write_attrs,
    write_tokens,
)
from mlkit.errors import CacheError, MlkitError
from mlkit.files import StrPath, atomic_path, remove_stale_temporaries, write_text
from mlkit.locks import hold_lock
from mlkit.thumbnails import THUMBNAIL_DATASET

# Attributes that only say which shard a file is, or where it was made; every other one must agree.
SHARD_ATTRS = ("shard_index", "shard_count", "manifest_rows")
MAY_DIFFER = SHARD_ATTRS + ("rows_done", "versions", "manifest_path", "manifest_root")
# Written at merge time from the shards' own data, not copied.
NOT_COPIED = ("manifest_row", "tokens")
ROWS_PER_COPY = 4096


def parse_shard(text):
    """(index, count) from "i/n" (or a pair), 0 <= i < n.

    Example:
        parse_shard("3/8")   # (3, 8): shard 3 of shards 0-7
    """
    try:
        index, count = (int(part) for part in (text.split("/") if isinstance(text, str) else text))
    except (TypeError, ValueError):
        raise MlkitError(f"--shard {text!r}: give INDEX/COUNT, e.g. 0/8 for the first of 8 shards") from None
    if not 0 <= index < count:
        raise MlkitError(f"--shard {text!r}: the index counts from 0 and must be below the count (0/{count} to "
                         f"{max(count, 1) - 1}/{count})")
    return index, count


def shard_of(image, count):
    """The shard an image path (as written in the manifest) belongs to, of `count`."""
    return int.from_bytes(hashlib.sha256(str(image).encode()).digest()[:8], "big") % count


def shard_rows(images, index, count):
    """Manifest row numbers (increasing) of shard `index` of `count`."""
    return np.array([row for row, image in enumerate(images) if shard_of(image, count) == index], dtype="int64")


def shard_path(cache_path, index, count):
    """`<cache>.shard-i-of-n.h5` beside `<cache>.h5`."""
    cache_path = Path(cache_path)
    return cache_path.with_name(f"{cache_path.name[:-len('.h5')]}.shard-{index}-of-{count}.h5")


def stats_path(cache_path):
    """`<cache>.zmuv.json`: the zmuv statistics every shard of the cache reads."""
    cache_path = Path(cache_path)
    return cache_path.with_name(f"{cache_path.name[:-len('.h5')]}.zmuv.json")


def write_zmuv_stats(cache_path, settings, mean, std, manifest_sha256):
    path = stats_path(cache_path)
    payload = {"image_size": settings["image_size"], "background": settings["background"],
               "zmuv_mean": mean, "zmuv_std": std, "manifest_sha256": manifest_sha256}
    write_text(path, json.dumps(payload, indent=2) + "\n")
    return path


def read_zmuv_stats(cache_path, settings, required=False):
    """(mean, std) from `<cache>.zmuv.json` when it was fitted at this size and background, else None.

    With `required` (a shard), statistics fitted at another size or background are an error.
    """
    path = stats_path(cache_path)
    try:
        stats = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if any(str(stats.get(key)) != str(settings[key]) for key in ("image_size", "background")):
        if not required:
            return None
        raise CacheError(f"{path} was fitted at image size {stats.get('image_size')} and background "
                         f"{stats.get('background')}, not {settings['image_size']} and {settings['background']}; "
                         "rerun cache-features with --fit-stats and these settings")
    return stats["zmuv_mean"], stats["zmuv_std"]


def merge_shards(cache: StrPath, workdir: StrPath | None = None) -> Path:
    """Merges the shards of one cache into `<cache>.h5`, rows in manifest order.

    The result holds exactly what an unsharded `cache-features` run on the same
    manifest writes: features, views, labels, keys, done mask and attributes.
    It refuses shards that disagree on any setting, the weights hash, the zmuv
    statistics or the manifest (naming the shard and the attribute), and a
    missing, unfinished or duplicated shard. `<cache>.json` and
    `<cache>.skipped.csv` are written beside it.

    Args:
        cache: the cache to write, as a path (`bottlenecks/<cache>.h5`) or a name
            (`<cache>`, looked up in `<workdir>/bottlenecks/`).
        workdir: the workspace when `cache` is a name. Defaults to the current folder.

    Returns:
        The path of the merged cache.

    Example:
        merge_shards("bottlenecks/synth_all_mobilenetv2_inet_avg.h5")
    """
    target = _target_path(cache, workdir)
    with hold_lock(target.with_name(f"{target.name[:-len('.h5')]}.lock"), f"cache {target}"):
        shards = _find_shards(target)
        first = shards[0][1]
        count = int(first["shard_count"])
        rows = [np.asarray(_read(path, "manifest_row")) for path, _ in shards]
        order = np.concatenate(rows)
        total = int(first["manifest_rows"])
        if len(order) != total or not np.array_equal(np.sort(order), np.arange(total)):
            raise CacheError(f"the {count} shards of {target.name} hold {len(order)} rows, not each of the manifest's "
                             f"{total} once; rerun cache-features --shard for each")
        _write_merged(target, shards, rows, total)
        _write_merged_reports(target, shards)
    return target


def _target_path(cache, workdir):
    path = Path(cache)
    if path.suffix != ".h5":
        path = Path(workdir or ".") / "bottlenecks" / f"{path.name}.h5"
    return path


def _find_shards(target):
    """[(path, attrs)] of every finished shard of `target`, sorted by index, after every check."""
    stem = target.name[: -len(".h5")]
    pattern = re.compile(rf"{re.escape(stem)}\.shard-(\d+)-of-(\d+)\.h5")
    found = sorted((int(m.group(2)), int(m.group(1)), path) for path in target.parent.glob(f"{stem}.shard-*.h5")
                   if (m := pattern.fullmatch(path.name)))
    if not found:
        raise CacheError(f"no shards of {target.name} in {target.parent} (files {stem}.shard-I-of-N.h5); "
                         "run `mlkit cache-features MANIFEST --shard I/N` for I = 0 .. N-1 first")
    counts = sorted({count for count, _, _ in found})
    if len(counts) > 1:
        names = ", ".join(path.name for _, _, path in found)
        raise CacheError(f"shards of {target.name} were made for different shard counts {counts} ({names}); "
                         "delete the shards of the count you no longer use")
    count = counts[0]
    shards, seen = [], {}
    for _, index, path in found:
        attrs = _read_attrs(path)
        claimed = (attrs.get("shard_index"), attrs.get("shard_count"))
        if claimed != (index, count):
            raise CacheError(f"{path.name} holds shard {claimed[0]}/{claimed[1]}, not {index}/{count} as its name says "
                             "(a copied or renamed file); delete it and rerun that shard")
        if index in seen:
            raise CacheError(f"shard {index}/{count} twice: {seen[index].name} and {path.name}")
        seen[index] = path
        if not attrs.get("complete"):
            raise CacheError(f"{path.name} is not finished; rerun its cache-features --shard {index}/{count}")
        shards.append((path, attrs))
    missing = [index for index in range(count) if index not in seen]
    if missing:
        unfinished = [i for i in missing if partial_path(shard_path(target, i, count)).exists()]
        hint = f" ({', '.join(f'{i}/{count}' for i in unfinished)} only partly done)" if unfinished else ""
        raise CacheError(f"missing shard(s) {', '.join(f'{i}/{count}' for i in missing)} of {target.name}{hint}: run "
                         f"`mlkit cache-features MANIFEST --shard I/{count}` with the same settings for each, then merge")
    _check_shards_agree(shards)
    return shards


def _check_shards_agree(shards):
    first_path, first = shards[0]
    for path, attrs in shards[1:]:
        # The fingerprint hashes the other settings: name the setting itself when one differs.
        for key in sorted(set(first) | set(attrs), key=lambda key: (key == "fingerprint", key)):
            if key not in MAY_DIFFER and json.dumps(first.get(key), sort_keys=True) != json.dumps(attrs.get(key), sort_keys=True):
                raise CacheError(f"{path.name} differs from {first_path.name} in {key}: {_short(attrs.get(key))} vs "
                                 f"{_short(first.get(key))}; rerun that shard with the same manifest and settings "
                                 "(zmuv statistics: cache-features --fit-stats once, before the shards)")


def _short(value):
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _read_attrs(path):
    try:
        with h5py.File(path, "r") as h5:
            return read_attrs(h5)
    except OSError as error:
        raise CacheError(f"{path} is not a readable mlkit cache ({error}); delete it and rerun that shard") from None


def _has_dataset(path, dataset):
    with h5py.File(path, "r") as h5:
        return dataset in h5


def _read(path, dataset):
    with h5py.File(path, "r") as h5:
        if dataset not in h5:
            raise CacheError(f"{path.name} has no {dataset!r} dataset: it is not a shard made by cache-features --shard")
        return h5[dataset][...]


def _write_merged(target, shards, rows, total):
    attrs = {key: value for key, value in shards[0][1].items() if key not in SHARD_ATTRS}
    attrs["rows_done"] = sum(int(a.get("rows_done", 0)) for _, a in shards)
    with h5py.File(shards[0][0], "r") as h5:
        feature_shape, dtype, task = h5["features"].shape[1:], h5["features"].dtype, attrs["task"]
        num_labels = h5["labels"].shape[1] if h5["labels"].ndim > 1 else 0
        captions, tokens_width = "caption" in h5, h5["tokens"].shape[1] if "tokens" in h5 else None
        taps = {layer: h5[tap_dataset(layer)].shape[1:] for layer in attrs.get("taps") or ()}
    thumbnails = any(_has_dataset(path, THUMBNAIL_DATASET) for path, _ in shards)
    need = sum(path.stat().st_size for path, _ in shards)
    remove_stale_temporaries(target)  # under the cache's lock: only a killed merge leaves one
    with atomic_path(target, need) as tmp, h5py.File(tmp, "w") as out:
        create_datasets(out, num_rows=total, feature_shape=feature_shape, task=task, num_labels=num_labels,
                        augment_copies=int(attrs.get("augment_copies", 0)), captions=captions, dtype=dtype,
                        thumbnails=thumbnails, taps=taps)
        tokens = None if tokens_width is None else np.zeros((total, tokens_width), "int32")
        for (path, _), manifest_rows in zip(shards, rows):
            with h5py.File(path, "r") as shard:
                _copy_shard(shard, out, manifest_rows)
                if tokens is not None:
                    tokens[manifest_rows] = shard["tokens"][...]
        if tokens is not None:
            write_tokens(out, tokens, attrs.get("vocabulary"))
        write_attrs(out, attrs)


def _copy_shard(shard, out, manifest_rows):
    """Writes a shard's rows at their manifest rows, a block of rows at a time (rows increase in both)."""
    # Tap datasets sit in groups (taps/<layer>); every other dataset at the top level.
    names = [name for name in shard if isinstance(shard[name], h5py.Dataset)]
    names += [name for name in feature_datasets(shard) if "/" in name]
    for name in names:
        if name in NOT_COPIED:
            continue
        for start in range(0, len(manifest_rows), ROWS_PER_COPY):
            block = manifest_rows[start : start + ROWS_PER_COPY]
            values = shard[name][start : start + len(block)]
            if block[-1] - block[0] == len(block) - 1:
                out[name][int(block[0]) : int(block[-1]) + 1] = values
            else:
                out[name][block.tolist()] = values


def _write_merged_reports(target, shards):
    """`<cache>.json` (the shards' summaries added up) and `<cache>.skipped.csv` (theirs, in row order)."""
    stem = target.name[: -len(".h5")]
    summaries = [json.loads(path.with_suffix(".json").read_text()) for path, _ in shards
                 if path.with_suffix(".json").exists()]
    if summaries:
        summary = dict(summaries[0], name=stem, path=str(target), merged_from=[path.name for path, _ in shards])
        for key in ("rows", "rows_done", "computed", "reused", "skipped", "seconds"):
            summary[key] = round(sum(s.get(key, 0) for s in summaries), 2) if key == "seconds" else sum(s.get(key, 0) for s in summaries)
        summary["rows_by_split"] = {}
        for s in summaries:
            for split, count in s.get("rows_by_split", {}).items():
                summary["rows_by_split"][split] = summary["rows_by_split"].get(split, 0) + count
        write_text(target.with_suffix(".json"), json.dumps(summary, indent=2) + "\n")
    skipped = []
    for path, _ in shards:
        listing = path.with_name(f"{path.name[:-len('.h5')]}.skipped.csv")
        if listing.exists():
            skipped += list(csv.DictReader(io.StringIO(listing.read_text())))
    skipped.sort(key=lambda row: int(row["row"]))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=["row", "image", "split", "reason"])
    writer.writeheader()
    writer.writerows(skipped)
    write_text(target.with_name(f"{stem}.skipped.csv"), text.getvalue())
