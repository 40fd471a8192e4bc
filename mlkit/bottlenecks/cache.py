"""The bottleneck cache: one HDF5 file per (dataset, backbone, weights, size, preprocessing, pooling).

Layout (N manifest rows, D feature dims, K augmented views, L labels):

    features    float32 (N, D) or (N, H, W, C) for pooling "none"; chunked along N;
                float16 with cache-features --dtype float16 (attribute `dtype`)
    augmented   (N, K, ...) when K > 0, in the features' dtype; only training rows are filled
    labels      uint8 (N, L) multi-hot | int32 (N,) class index | float32 (N, T) targets
    image       str (N,)   the manifest's image path as written there
    split       str (N,)   train / val / test, or "" when the manifest has none
    caption     str (N,)   optional
    tokens      int32 (N, T) with --captions: caption token ids (mlkit.text), 0 = padding;
                           a row without a caption is all 0
    key         bytes (N,) sha256 of the image bytes and everything that changes the features
    image_sha256, file_size, file_mtime_ns, file_ctime_ns   what the key was computed from (a
                           rerun trusts the hash of a file whose size, mtime and ctime are unchanged:
                           the kernel sets ctime on every change, and no user can set it back, so a
                           file swapped for another and given the old mtime is hashed again; caches
                           made before ctime was kept hash every file once)
    done        uint8 (N,) 1 when the row's features (and views) are written
    taps/<layer>             with cache-features --taps: the layer's output, pooled as `features`
    augmented_taps/<layer>   and its augmented views, as `augmented` (mlkit.taps)
    thumbnail   uint8 (N, 8, 8, 3) optional: each image's pixel thumbnail (mlkit.thumbnails),
                which `mlkit audit` finds near duplicates by; all 0 in a row that has none
                (caches made before it existed have no such dataset)

Attributes hold the task, label names, backbone, weights and their sha256,
input size, preprocessing (and its fitted statistics), pooling, augmentation
copies, versions, the manifest hash, `complete`, and with `tokens` the
caption `vocabulary` they were encoded with (JSON; see mlkit.text), and with
`taps/` datasets the list of their layers (`taps`, JSON; absent for a cache of
the backbone's output alone, which is byte for byte what it was before taps). While
the cache is being written it lives at `<name>.partial.h5`; it is renamed to
`<name>.h5` only when every readable row is done, so a file under the final
name is always whole.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from mlkit.errors import CacheError
from mlkit.files import StrPath, atomic_path
from mlkit.thumbnails import THUMBNAIL_DATASET, THUMBNAIL_SHAPE

FORMAT_VERSION = 1
# How features may be stored. float16 halves disk and memory; readers get float32 from either.
FEATURE_DTYPES = ("float32", "float16")
# Caches made before the `dtype` attribute existed hold float32.
DEFAULT_DTYPE = "float32"
# Rows are read in contiguous slices of about this size (see read_rows).
BLOCK_BYTES = 8 << 20
STR = h5py.string_dtype("utf-8")
# What makes a cache's rows what they are (the fingerprint covers the weights, preprocessing and its
# statistics; the manifest hash the rows, labels and splits). A top tuned on one cache fits only it.
IDENTITY_ATTRS = ("dataset", "subset", "backbone", "weights_sha256", "image_size", "preprocess", "pooling",
                  "background", "fingerprint", "manifest_sha256")
JSON_ATTRS = ("label_names", "target_names", "target_min", "target_max", "zmuv_mean", "zmuv_std", "versions", "vocabulary",
              "taps")
# What a row's hash was computed from (mlkit.bottlenecks.plan.file_stats): size, mtime and ctime.
STAT_DATASETS = ("file_size", "file_mtime_ns", "file_ctime_ns")
# Stands for a stat the cache does not hold (made before it was kept): it matches no file.
UNKNOWN_STAT = -2
# The datasets that hold features; what reads them refuses non-finite values (check_finite).
FEATURE_DATASETS = ("/features", "/augmented")
# The groups of the taps' features and views (mlkit.taps), checked as FEATURE_DATASETS are.
FEATURE_GROUPS = ("/taps/", "/augmented_taps/")
# A cache's file name: <dataset>_<subset>_<backbone>_<preprocess>_<pooling>.h5 (docs/design.md, run names).
NAME_FIELDS = ("dataset", "subset", "backbone", "preprocess", "pooling")


def tap_dataset(tap, views=False):
    """The dataset that holds a tap's features (`views`: its augmented views): "last" is `features`."""
    if tap == "last":
        return "augmented" if views else "features"
    return f"{'augmented_taps' if views else 'taps'}/{tap}"


def feature_datasets(h5):
    """Every features-like dataset of an open cache: `features`, `augmented` and each tap's."""
    names = [name for name in ("features", "augmented") if name in h5]
    for group in ("taps", "augmented_taps"):
        if group in h5:
            names += [f"{group}/{layer}" for layer in h5[group]]
    return names


def partial_path(path):
    """Where the cache lives while it is written."""
    path = Path(path)
    return path.with_name(path.name[: -len(".h5")] + ".partial.h5")


def read_attrs(h5):
    """The file's attributes as plain Python values (JSON-encoded ones decoded)."""
    attrs = {}
    for name, value in h5.attrs.items():
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, np.generic):
            value = value.item()
        if name in JSON_ATTRS and isinstance(value, str):
            value = json.loads(value)
        attrs[name] = value
    return attrs


def write_attrs(h5, attrs):
    for name, value in attrs.items():
        if value is None:
            continue
        if name in JSON_ATTRS:
            value = json.dumps(value)
        h5.attrs[name] = value


def read_rows(dataset, rows, out=None):
    """Rows of an HDF5 dataset (sorted row indices, repeats allowed), read as contiguous slices.

    h5py's own fancy indexing selects row by row: reading the labels of 900,000
    training rows (80 uint8 each) that way took over ten minutes; slices, 0.1 s.

    Args:
        dataset: an h5py dataset.
        rows: increasing row indices.
        out: an array of shape (len(rows), ...) to fill (any dtype the values
            cast to). Defaults to a new array of the dataset's dtype.
    """
    rows = np.asarray(rows)
    if np.any(np.diff(rows) < 0):
        raise ValueError("read_rows needs row indices in increasing order")
    if out is None:
        # Filled in place: gathering the blocks and concatenating them held every row twice at the peak.
        out = np.empty((len(rows),) + dataset.shape[1:], dtype=dataset.dtype)
    if not len(rows):
        return out
    row_bytes = dataset.dtype.itemsize * int(np.prod(dataset.shape[1:]))
    block = max(1, BLOCK_BYTES // max(row_bytes, 1))
    start = 0
    while start < len(rows):
        end = np.searchsorted(rows, rows[start] + block, side="left")
        first, last = rows[start], rows[end - 1]
        out[start:end] = dataset[first:last + 1][rows[start:end] - first]
        check_finite(dataset, out[start:end], rows[start:end])
        start = end
    return out


def stored_stats(h5, rows=None):
    """(N, 3) size, mtime_ns and ctime_ns recorded per row; `UNKNOWN_STAT` where the cache holds none."""
    count = len(h5["done"]) if rows is None else len(rows)
    stats = np.full((count, len(STAT_DATASETS)), UNKNOWN_STAT, dtype="int64")
    for column, name in enumerate(STAT_DATASETS):
        if name in h5:
            stats[:, column] = h5[name][...] if rows is None else h5[name][...][rows]
    return stats


def check_finite(dataset, values, rows):
    """Refuses NaN or infinite features: a top trained on them is NaN while its loss looks fine.

    Only features are checked (`features`, `augmented` and the taps'): labels of a regression cache
    are the manifest's to judge. Raises CacheError naming the rows and images.
    """
    features = dataset.name in FEATURE_DATASETS or dataset.name.startswith(FEATURE_GROUPS)
    if not features or values.dtype.kind != "f":
        return
    finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if finite.all():
        return
    bad = np.asarray(rows)[~finite]
    try:
        images = decode_strings(read_rows(dataset.file["image"], bad[:3]))
    except (KeyError, OSError):
        images = []
    named = ", ".join(f"row {r}" + (f" ({images[i]})" if i < len(images) else "") for i, r in enumerate(bad[:3]))
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    raise CacheError(f"{dataset.file.filename}: {dataset.name[1:]} of {named}{more} are not finite (NaN or inf); the "
                     "cache is corrupt: delete it and rerun cache-features")


@dataclass(frozen=True)
class TargetScale:
    """Per-target (low, high) mapping regression targets to [0, 1] for training, and back.

    A target with no range (high == low) gets high = low + 1, so it scales to 0.
    """

    low: np.ndarray
    high: np.ndarray

    @classmethod
    def of(cls, low, high):
        low, high = np.asarray(low, dtype="float64"), np.asarray(high, dtype="float64")
        return cls(low, np.where(high > low, high, low + 1.0))

    def scale(self, targets):
        """Targets in [0, 1] over the training range, as float32."""
        return ((np.asarray(targets, dtype="float64") - self.low) / (self.high - self.low)).astype("float32")

    def unscale(self, scaled):
        """Scaled predictions back in the targets' own units, as float64."""
        return np.asarray(scaled, dtype="float64") * (self.high - self.low) + self.low

    def to_dict(self):
        return {"low": [float(v) for v in self.low], "high": [float(v) for v in self.high]}


def decode_strings(values):
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)


@dataclass
class FeatureCache:
    """A finished cache opened for reading; arrays are loaded on demand.

    Example:
        cache = open_cache("bottlenecks/synth_ml_mobilenetv2_inet_avg.h5")
        x, y = cache.load("train")
    """

    path: Path
    attrs: dict
    _split: np.ndarray | None = field(repr=False, default=None)
    _done: np.ndarray | None = field(repr=False, default=None)

    @property
    def name(self):
        return self.path.name[: -len(".h5")]

    @property
    def task(self):
        return self.attrs["task"]

    @property
    def label_names(self):
        return list(self.attrs.get("label_names") or [])

    @property
    def name_fields(self):
        """dataset, subset, backbone, preprocess and pooling: from the attributes, else the file name."""
        from_name = self.name.split("_")
        values = []
        for position, attr in enumerate(NAME_FIELDS):
            value = self.attrs.get(attr)
            if value is None and len(from_name) == len(NAME_FIELDS):
                value = from_name[position]
            if value is None:
                raise CacheError(
                    f"{self.path} has no {attr!r} attribute and its name is not "
                    "<dataset>_<subset>_<backbone>_<prep>_<pool>.h5; rebuild it with cache-features"
                )
            values.append(str(value))
        return tuple(values)

    @property
    def dataset(self):
        return self.name_fields[0]

    @property
    def subset(self):
        return self.name_fields[1]

    @functools.cached_property
    def num_outputs(self):
        """What a top predicts: labels (multilabel), classes (multiclass) or targets (regression)."""
        if self.task == "multiclass":
            return len(self.label_names)
        with h5py.File(self.path, "r") as h5:
            shape = h5["labels"].shape
        return int(shape[1]) if len(shape) > 1 else 1

    @functools.cached_property
    def target_scale(self):
        """The regression targets' `TargetScale` over the training split (None for other tasks).

        Caches record the range at extraction (`target_min`, `target_max`);
        for one that does not, it is taken from the training rows' labels.
        """
        if self.task != "regression":
            return None
        low, high = self.attrs.get("target_min"), self.attrs.get("target_max")
        if low is None or high is None:
            train = self.read("labels", self.indices("train")).reshape(-1, self.num_outputs)
            low, high = train.min(axis=0), train.max(axis=0)
        return TargetScale.of(low, high)

    def targets(self, labels):
        """Labels as a top trains on them: float multi-hot, class index, or targets scaled to [0, 1]."""
        if self.task == "multilabel":
            return np.asarray(labels, dtype="float32")
        if self.task == "multiclass":
            return np.asarray(labels, dtype="int32")
        return self.target_scale.scale(labels)

    @property
    def identity(self):
        """The attributes that identify this cache's features and rows (`IDENTITY_ATTRS`)."""
        return {key: self.attrs.get(key) for key in IDENTITY_ATTRS}

    @property
    def num_rows(self):
        return len(self._done)

    @property
    def feature_shape(self):
        with h5py.File(self.path, "r") as h5:
            return tuple(h5["features"].shape[1:])

    @property
    def taps(self):
        """Layers cached beside the backbone's output (`cache-features --taps`), in cache order; () for none."""
        return tuple(self.attrs.get("taps") or ())

    def taps_shape(self, taps=("last",)):
        """The shape a top reads for a combination of taps: their pooled vectors side by side."""
        if tuple(taps) == ("last",):
            return self.feature_shape
        with h5py.File(self.path, "r") as h5:
            missing = [tap for tap in taps if tap_dataset(tap) not in h5]
            if missing:
                raise CacheError(f"{self.path} holds no tap {', '.join(missing)} (it holds last"
                                 f"{''.join(', ' + tap for tap in self.taps)}); rerun cache-features with --taps")
            shapes = [h5[tap_dataset(tap)].shape[1:] for tap in taps]
        if any(len(shape) != 1 for shape in shapes):
            raise CacheError(f"{self.path}: taps are combined as pooled vectors, and these are maps {shapes}")
        return (sum(int(shape[0]) for shape in shapes),)

    @property
    def feature_dtype(self):
        """The dtype features are stored in (float32, or float16 with cache-features --dtype float16)."""
        with h5py.File(self.path, "r") as h5:
            return np.dtype(h5["features"].dtype)

    @property
    def vocabulary(self):
        """The caption vocabulary `tokens` were encoded with (mlkit.text), or None without tokens."""
        return self.attrs.get("vocabulary")

    @property
    def augment_copies(self):
        return int(self.attrs.get("augment_copies", 0))

    def indices(self, split=None):
        """Row indices whose features are done, in one split ("train", ...) or all (None)."""
        mask = self._done == 1
        if split is not None:
            if split not in set(self._split):
                raise CacheError(
                    f"{self.path} has no rows in split {split!r} (splits: {sorted(set(self._split))}); "
                    "run `mlkit data split MANIFEST` and rerun cache-features"
                )
            mask &= self._split == split
        return np.flatnonzero(mask)

    def read(self, dataset, indices=None):
        """One dataset's rows (all when indices is None, else increasing row indices), strings decoded."""
        with h5py.File(self.path, "r") as h5:
            if dataset not in h5:
                raise CacheError(f"{self.path} has no {dataset!r} dataset")
            data = h5[dataset]
            if indices is None:
                values = data[...]
                check_finite(data, values, np.arange(len(values)))
            else:
                values = read_rows(data, indices)
        if values.dtype.kind in "OS":
            values = decode_strings(values)
        return values

    def read_taps(self, taps, indices=None, views=False):
        """The taps' features (or views) of some rows, as float32, side by side along the last axis."""
        parts = [self.read(tap_dataset(tap, views), indices).astype("float32", copy=False) for tap in taps]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)

    def has(self, dataset):
        with h5py.File(self.path, "r") as h5:
            return dataset in h5

    def load(self, split=None, augmented=False, taps=("last",)):
        """Features (float32, whatever the stored dtype) and labels of one split as in-memory arrays.

        With `augmented=True` the K cached views of each row follow the clean
        rows, so a top model sees augmentation without rerunning the backbone.
        `taps` (mlkit.taps) picks the features: the taps' vectors side by
        side, in the order given. Defaults to ("last",), the `features` dataset.
        """
        indices = self.indices(split)
        x = self.read_taps(taps, indices)
        y = self.read("labels", indices)
        if augmented and self.augment_copies and self.has("augmented"):
            views = self.read_taps(taps, indices, views=True)
            x = np.concatenate([x, views.reshape((-1,) + x.shape[1:])])
            y = np.concatenate([y, np.repeat(y, self.augment_copies, axis=0)])
        return x, y


def identity_differences(stored, identity):
    """"key: stored vs now" for each identity attribute both dicts hold and that differs."""
    def short(value):
        text = str(value)
        return text[:12] + "..." if len(text) == 64 else text

    return [f"{key} {short(stored[key])} vs {short(identity[key])}" for key in IDENTITY_ATTRS
            if stored.get(key) is not None and identity.get(key) is not None and str(stored[key]) != str(identity[key])]


def open_cache(path: StrPath) -> FeatureCache:
    """Opens a finished cache for reading, or explains why it cannot be used."""
    path = Path(path)
    if not path.exists():
        hint = ""
        if partial_path(path).exists():
            hint = " (an interrupted run left a .partial.h5 beside it: rerun cache-features to finish it)"
        raise CacheError(f"no bottleneck cache at {path}{hint}")
    try:
        with h5py.File(path, "r") as h5:
            attrs = read_attrs(h5)
            split = decode_strings(h5["split"][...])
            done = h5["done"][...]
    except (OSError, KeyError) as error:
        raise CacheError(f"{path} is not a readable mlkit cache: {error}") from error
    if not attrs.get("complete"):
        raise CacheError(f"{path} is incomplete; rerun cache-features to finish it")
    return FeatureCache(path=path, attrs=attrs, _split=split, _done=done)


def _early(shape, dtype, chunks=None):
    """A dataset-creation property list that allocates every chunk at creation.

    After that, writing rows changes no HDF5 metadata, so a process killed
    mid-write leaves a file whose structure is intact and whose `done` mask
    tells which rows hold finished features.
    """
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return {"shape": shape, "dtype": dtype, "chunks": chunks, "dcpl": dcpl}


def as_stored(features, dtype, where):
    """Features converted to the dtype they are stored in, by NumPy; refuses values float16 cannot hold.

    The conversion must not be left to HDF5: HDF5 1.14.6 turns float32 values
    just below a power of two into half of it (0.1249882 into 0.0625, where
    NumPy gives 0.125) when it converts a block of them to float16.

    float16 overflows above 65504 and flushes tiny values to zero: a
    random-weight MobileNetV2 gives features of about 1e-12, all of which it
    would store as 0. More than 1% of the non-zero values below float16's
    smallest normal number (6.1e-05, where its precision falls away) is
    refused too.

    Args:
        features: an array of features (or views).
        dtype: one of `FEATURE_DTYPES`.
        where: what is being written, for the error message.
    """
    features = np.asarray(features)
    if dtype != "float16":
        return features.astype(dtype, copy=False)
    limits = np.finfo(np.float16)
    largest, nonzero, tiny = 0.0, 0, 0
    for start in range(0, len(features), 4096):  # a block at a time: no float32 copy of a whole table
        magnitude = np.abs(features[start:start + 4096].astype("float32"))
        largest = max(largest, float(magnitude.max(initial=0)))
        nonzero += int(np.count_nonzero(magnitude))
        tiny += int(np.count_nonzero((magnitude > 0) & (magnitude < limits.tiny)))
    share = tiny / max(nonzero, 1)
    if largest > limits.max or share > 0.01:
        raise CacheError(
            f"{where}: these features do not fit float16 (largest magnitude {largest:.3g}, {share:.0%} of the "
            f"non-zero ones below {float(limits.tiny):.2g}; float16 holds 6.1e-05 to 65504): use --dtype float32")
    return features.astype(dtype, copy=False)


def create_datasets(h5, *, num_rows, feature_shape, task, num_labels, augment_copies=0, captions=False,
                    dtype=DEFAULT_DTYPE, thumbnails=False, taps=None):
    """Creates the empty datasets of a cache (features chunked along rows, all space allocated).

    `dtype` is the features' and views' dtype, one of `FEATURE_DTYPES`; `thumbnails` adds the
    optional thumbnail dataset; `taps` maps each tapped layer to its pooled shape.
    """
    for tap, shape in {"last": feature_shape, **(taps or {})}.items():
        _create_features(h5, tap, tuple(int(d) for d in shape), num_rows, augment_copies, dtype)
    if task == "multilabel":
        h5.create_dataset("labels", (num_rows, num_labels), "uint8")
    elif task == "multiclass":
        h5.create_dataset("labels", (num_rows,), "int32")
    else:
        h5.create_dataset("labels", (num_rows, num_labels), "float32")
    for name in ("image", "split") + (("caption",) if captions else ()):
        h5.create_dataset(name, (num_rows,), STR)
    for name in ("key", "image_sha256"):
        h5.create_dataset(name, **_early((num_rows,), "S64"))
    for name in STAT_DATASETS:
        h5.create_dataset(name, **_early((num_rows,), "int64"))
    h5.create_dataset("done", **_early((num_rows,), "uint8"))
    if thumbnails:
        h5.create_dataset(THUMBNAIL_DATASET, **_early((num_rows, *THUMBNAIL_SHAPE), "uint8"))


def _create_features(h5, tap, feature_shape, num_rows, augment_copies, dtype):
    """One tap's features dataset (and its views'), chunked along rows to about 1 MiB."""
    n = max(num_rows, 1)
    chunk_rows = max(1, min(n, (1 << 20) // (np.dtype(dtype).itemsize * int(np.prod(feature_shape)))))
    h5.create_dataset(tap_dataset(tap), **_early((num_rows, *feature_shape), dtype, (chunk_rows, *feature_shape)))
    if augment_copies:
        views = (augment_copies, *feature_shape)
        h5.create_dataset(tap_dataset(tap, views=True),
                          **_early((num_rows, *views), dtype, (max(1, chunk_rows // augment_copies), *views)))


def write_tokens(h5, tokens=None, vocabulary=None):
    """Replaces the cache's caption tokens and their vocabulary; with None, removes both."""
    if "tokens" in h5:
        del h5["tokens"]
    if "vocabulary" in h5.attrs:
        del h5.attrs["vocabulary"]
    if tokens is None:
        return
    tokens = np.asarray(tokens, dtype="int32")
    h5.create_dataset("tokens", data=tokens)
    write_attrs(h5, {"vocabulary": vocabulary})


def write_cache(path, *, features, labels, split, attrs, image=None, caption=None, augmented=None, tokens=None,
                image_sha256=None, dtype=DEFAULT_DTYPE, thumbnail=None, taps=None, tap_views=None):
    """Writes a finished cache in one go (tests, benchmarks, hand-made features).

    Args:
        path: the `.h5` file to write; replaced atomically.
        features: float array (N, ...).
        labels: multi-hot (N, L), class indices (N,) or targets (N, T).
        split: N strings.
        attrs: at least `task` and `label_names`; `complete` is set here.
        image: N image paths. Defaults to "row<i>".
        caption: optional N strings.
        augmented: optional (N, K, ...) views.
        tokens: optional caption token ids (N, T); needs `attrs["vocabulary"]`.
        image_sha256: optional N hex digests of the image bytes (what `mlkit audit` groups exact duplicates by).
        dtype: how features (and views) are stored: "float32" or "float16"; recorded as
            attribute `dtype`. Defaults to "float32".
        thumbnail: optional uint8 (N, 8, 8, 3) pixel thumbnails (mlkit.thumbnails).
        taps: optional {layer: (N, D) features} stored as taps (mlkit.taps),
            listed in attribute `taps` in this order.
        tap_views: with `augmented`, {layer: (N, K, D) views} for each tap.
    """
    path = Path(path)
    if dtype not in FEATURE_DTYPES:
        raise CacheError(f"dtype {dtype!r}: features are stored as one of {', '.join(FEATURE_DTYPES)}")
    features = as_stored(features, dtype, path)
    n = len(features)
    labels = np.asarray(labels)
    with atomic_path(path, features.nbytes) as tmp, h5py.File(tmp, "w") as h5:
        create_datasets(
            h5, num_rows=n, feature_shape=features.shape[1:], task=attrs["task"],
            num_labels=labels.shape[1] if labels.ndim > 1 else 0,
            augment_copies=0 if augmented is None else augmented.shape[1],
            captions=caption is not None, dtype=dtype, thumbnails=thumbnail is not None,
            taps={layer: np.shape(values)[1:] for layer, values in (taps or {}).items()},
        )
        h5["features"][...] = features
        for layer, values in (taps or {}).items():
            h5[tap_dataset(layer)][...] = as_stored(values, dtype, path)
            if augmented is not None:
                h5[tap_dataset(layer, views=True)][...] = as_stored(tap_views[layer], dtype, path)
        h5["labels"][...] = labels
        h5["split"][...] = list(split)
        h5["image"][...] = list(image) if image is not None else [f"row{i}" for i in range(n)]
        h5["key"][...] = [f"row{i}" for i in range(n)]
        if image_sha256 is not None:
            h5["image_sha256"][...] = [str(digest).encode() for digest in image_sha256]
        if thumbnail is not None:
            h5[THUMBNAIL_DATASET][...] = thumbnail
        if caption is not None:
            h5["caption"][...] = ["" if c is None else str(c) for c in caption]
        if augmented is not None:
            h5["augmented"][...] = as_stored(augmented, dtype, path)
        if tokens is not None:
            write_tokens(h5, tokens, attrs.get("vocabulary"))
        h5["done"][...] = 1
        write_attrs(h5, {"format_version": FORMAT_VERSION, "augment_copies": 0 if augmented is None else augmented.shape[1],
                         **attrs, "dtype": dtype, "complete": True, "taps": list(taps) if taps else None})
    return path
