"""Writing a cache-features run: the partial HDF5 file, its rows, and the reports beside it.

A `CacheWriter` carries out a `CachePlan` (mlkit.bottlenecks.plan): it resumes
the interrupted `<cache>.partial.h5` or creates a new one (layout in
mlkit.bottlenecks.cache) seeded with reusable rows, writes each batch the
input pipeline (mlkit.bottlenecks.pipeline) and the backbone produce, and
renames the file to `<cache>.h5` once every readable row is done. The
features reach the file before the `done` mask says so, so a run killed at
any point resumes from its last flushed batch. `<cache>.skipped.csv` and the
`<cache>.json` summary are written last.
"""

import csv
import io
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from mlkit import __version__
from mlkit.bottlenecks.cache import (
    FORMAT_VERSION,
    STAT_DATASETS,
    as_stored,
    create_datasets,
    read_attrs,
    stored_stats,
    tap_dataset,
    write_attrs,
    write_tokens,
)
from mlkit.bottlenecks.pipeline import image_batches, progress_bar
from mlkit.bottlenecks.plan import FEATURE_VERSION, copy_reusable, open_sources
from mlkit.errors import CacheError
from mlkit.files import DiskFullError, atomic_path, publish, read_only_error, remove_stale_temporaries, write_text
from mlkit.thumbnails import THUMBNAIL_DATASET

log = logging.getLogger(__name__)


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
    captions: dict | None = None


class CacheWriter:
    """Fills a plan's partial cache with features and renames it into place.

    Args:
        plan: the `CachePlan`, its preprocessing fitted.
        forward: `forward(pixels) -> features`, from `compiled_forward`.
    """

    def __init__(self, plan, forward):
        self.plan, self.forward = plan, forward
        self.failures = {}
        self.reused = 0

    def run(self, batch_size, progress, on_batch, strict):
        """Fills the partial cache and renames it into place; returns the counts for the summary."""
        try:
            with self.open_partial() as h5:
                text = self.plan.text
                write_tokens(h5, *((text.tokens, text.vocabulary) if text else ()))
                computed = self.compute(h5, batch_size, progress, on_batch)
                result = self.finish(h5, strict)
        finally:
            # The warm-up thread may still be inside TensorFlow after an early error; Python exiting
            # under it aborted the process (rc 134) instead of printing the error.
            self.forward.wait()
        result.update(computed=computed, reused=self.reused)
        return result

    # -- the partial file -----------------------------------------------------------------------

    def open_partial(self):
        """The partial cache to fill: the interrupted one if it matches, else a new one seeded with reusable rows."""
        self.plan.stat_files()
        h5 = self._resume_in_place()
        if h5 is None:
            h5 = self._start_new()
        return h5

    def _resume_in_place(self):
        plan = self.plan
        if not plan.partial.exists():
            return None
        try:
            h5 = h5py.File(plan.partial, "r+")
            attrs = read_attrs(h5)
        except OSError as error:
            log.warning("ignoring unreadable %s (%s); starting it again", plan.partial, error)
            return None
        if not plan.is_resumable(attrs, len(h5["done"])):
            h5.close()
            return None
        done = h5["done"][...] == 1
        unchanged = (stored_stats(h5) == plan.stats).all(axis=1)
        h5["done"][...] = (done & unchanged).astype("uint8")
        h5.flush()
        self.reused = int((done & unchanged).sum())
        log.info("resuming %s: %d of %d rows already done", plan.partial, self.reused, len(plan.paths))
        return h5

    def _start_new(self):
        plan = self.plan
        need = self.expected_size()
        remove_stale_temporaries(plan.partial)  # under the cache's lock: only killed runs leave them
        if shutil.disk_usage(plan.partial.parent).free < need:  # fail before writing, not mid-way
            raise DiskFullError(plan.partial, need)
        sources = open_sources(plan.earlier_caches(), plan.fingerprint)
        try:
            with atomic_path(plan.partial, need) as tmp, h5py.File(tmp, "w") as h5:
                self._create(h5)
                self.reused = copy_reusable(h5, sources, plan)
        finally:
            for source in sources:
                source.close()
        if self.reused:
            log.info("reusing %d of %d rows from the previous cache", self.reused, len(plan.paths))
        return h5py.File(plan.partial, "r+")

    def expected_size(self):
        """Bytes the partial cache takes: its features and views are allocated when it is created."""
        plan = self.plan
        shapes = [plan.info["feature_shape"], *plan.info.get("tap_shapes", {}).values()]
        per_row = np.dtype(plan.settings["dtype"]).itemsize * sum(int(np.prod(shape)) for shape in shapes)
        strings = sum(len(p) for p in plan.paths) + 256 * len(plan.paths)
        return per_row * (len(plan.paths) + int(plan.views.sum())) + strings + (64 << 10)

    def _create(self, h5):
        plan, table = self.plan, self.plan.table
        labels = table.label_array()
        create_datasets(
            h5, num_rows=len(plan.paths), feature_shape=plan.info["feature_shape"], task=table.task,
            num_labels=labels.shape[1] if labels.ndim > 1 else 0,
            augment_copies=plan.settings["augment_copies"], captions=table.captions() is not None,
            dtype=plan.settings["dtype"], thumbnails=True, taps=plan.info.get("tap_shapes"),
        )
        if len(plan.paths):
            h5["labels"][...] = labels
            h5["image"][...] = [str(v) for v in table.rows["image"]]
            h5["split"][...] = [str(v) for v in plan.splits]
            if table.captions() is not None:
                h5["caption"][...] = ["" if c is None else str(c) for c in table.captions()]
        if plan.shard is not None:
            h5.create_dataset("manifest_row", data=plan.manifest_row)
        write_attrs(h5, self._attrs())
        h5.attrs["complete"], h5.attrs["rows_done"] = False, np.int64(0)  # set in place by `finish`
        h5.flush()

    def _attrs(self):
        import keras
        import tensorflow as tf

        plan, table = self.plan, self.plan.table
        attrs = dict(plan.settings, task=table.task, label_names=list(table.label_names),
                     dataset=plan.dataset, subset=plan.subset,
                     weights_sha256=plan.info["weights_sha256"], zmuv_mean=plan.mean, zmuv_std=plan.std,
                     fingerprint=plan.fingerprint, seed=plan.seed, manifest_path=str(Path(table.path).resolve()),
                     manifest_root=str(table.root.resolve()), manifest_sha256=plan.manifest_sha256,
                     format_version=FORMAT_VERSION, feature_version=FEATURE_VERSION, complete=False,
                     versions={"mlkit": __version__, "keras": keras.__version__, "tensorflow": tf.__version__, "h5py": h5py.__version__})
        if table.task == "regression":
            whole, splits = plan.whole_table.label_array(), plan.whole_table.splits()
            train = whole[splits == "train"] if (splits == "train").any() else whole
            attrs.update(target_names=list(table.target_names), target_min=train.min(0).tolist(), target_max=train.max(0).tolist())
        if not attrs["taps"]:  # a cache of the last layer alone keeps the attributes it had before taps
            del attrs["taps"]
        if plan.shard is not None:
            attrs.update(shard_index=plan.shard[0], shard_count=plan.shard[1], manifest_rows=len(plan.whole_table.rows))
        return attrs

    # -- computing rows -------------------------------------------------------------------------

    def compute(self, h5, batch_size, progress, on_batch):
        """Computes and writes every row that is not done; returns how many rows were finished."""
        plan = self.plan
        pending = np.flatnonzero(h5["done"][...] == 0)
        units = [(int(row), view) for row in pending for view in range(plan.views[row] + 1)]
        if not units:
            return 0
        remaining = {int(row): int(plan.views[row]) + 1 for row in pending}
        written = 0
        bar = progress_bar(None, progress, "caching features", total=len(units), unit="img")
        batches = image_batches(units, plan.paths, image_size=plan.settings["image_size"], background=plan.background,
                                seed=plan.seed, batch_size=batch_size, failures=self.failures)
        for batch in batches:
            written += self._write_batch(h5, batch, remaining)
            if bar is not None:
                bar.update(len(batch[0]))
            if on_batch:
                on_batch(int((h5["done"][...] == 1).sum()), len(plan.paths))
        if bar is not None:
            bar.close()
        return written

    def _write_batch(self, h5, batch, remaining):
        rows, views, shas, ok, thumbnails, pixels = batch
        dtype = self.plan.settings["dtype"]
        outputs = self.forward(pixels)
        # Unreadable images (not ok) are left out: their blank pixels' features are never stored.
        tapped = {tap: as_stored(values[ok], dtype, f"--dtype {dtype}")
                  for tap, values in zip(("last", *self.plan.settings["taps"]), outputs if isinstance(outputs, list) else [outputs])}
        rows, views, shas, thumbnails = rows[ok], views[ok], shas[ok], thumbnails[ok]
        clean = np.flatnonzero(views == 0)
        if len(clean):  # rows arrive in increasing order: one write per dataset per batch
            for tap, features in tapped.items():
                write_rows(h5[tap_dataset(tap)], rows[clean], features[clean])
            # A partial file begun before thumbnails were cached has none; the audit reads its images.
            if THUMBNAIL_DATASET in h5:
                write_rows(h5[THUMBNAIL_DATASET], rows[clean], thumbnails[clean])
        finished, finished_shas = [], []
        for i in range(len(rows)):
            row, view = int(rows[i]), int(views[i])
            if view:
                for tap, features in tapped.items():
                    h5[tap_dataset(tap, views=True)][row, view - 1] = features[i]
            remaining[row] -= 1
            if remaining[row] == 0:
                finished.append(row)
                finished_shas.append(shas[i].decode())
        if finished:
            finished = np.asarray(finished)
            stats = self.plan.stats
            write_rows(h5["image_sha256"], finished, [sha.encode() for sha in finished_shas])
            write_rows(h5["key"], finished, [self.plan.key(sha, row).encode() for row, sha in zip(finished.tolist(), finished_shas)])
            for column, name in enumerate(STAT_DATASETS):
                write_rows(h5[name], finished, stats[finished, column])
        h5.flush()  # features reach the file before the done mask says so
        if len(finished):
            write_rows(h5["done"], finished, np.ones(len(finished), h5["done"].dtype))
            h5.flush()
        return len(finished)

    # -- finishing ------------------------------------------------------------------------------

    def finish(self, h5, strict):
        """Lists the skipped rows, marks the cache complete and renames it to its final name."""
        plan = self.plan
        skipped_path = plan.skipped_path
        skipped = self._write_skipped(h5, skipped_path)
        result = {"skipped": len(skipped), "skipped_path": skipped_path, "rows": len(plan.paths)}
        if skipped:
            log.warning("%d image(s) could not be read; they are listed with the reason in %s", len(skipped), skipped_path)
        if skipped and strict:
            raise CacheError(f"--strict: {len(skipped)} image(s) could not be read (see {skipped_path}); fix them and rerun to finish {plan.partial}")
        # Both attributes exist since the file was made (`_create`): overwriting a value in place moves no
        # HDF5 metadata, so a kill here leaves a readable partial cache that the rerun finishes.
        h5.attrs.modify("complete", True)
        h5.attrs.modify("rows_done", np.int64(len(plan.paths) - len(skipped)))
        h5.flush()
        h5.close()
        publish(plan.partial, plan.final)
        return result

    def _write_skipped(self, h5, path):
        plan = self.plan
        done = h5["done"][...]
        rows = []
        for row in np.flatnonzero(done == 0):
            reason = self.failures.get(int(row), "not processed")
            number = int(row if plan.manifest_row is None else plan.manifest_row[row]) + 1
            rows.append({"row": number, "image": plan.table.rows["image"].iloc[row], "split": plan.splits[row], "reason": reason})
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=["row", "image", "split", "reason"])
        writer.writeheader()
        writer.writerows(rows)
        write_text(path, text.getvalue())
        return rows


def write_summary(plan, result, name):
    """Writes `<cache>.json`, a readable summary of the finished cache, and returns the `CacheResult`."""
    with h5py.File(plan.final, "r") as h5:
        attrs = read_attrs(h5)
        done = h5["done"][...] == 1
    splits = {s or "(none)": int(((plan.splits == s) & done).sum()) for s in sorted(set(plan.splits))}
    summary = {"name": name, "path": str(plan.final), **{k: attrs.get(k) for k in (
        "task", "label_names", "target_names", "backbone", "backbone_source", "tap", "weights", "weights_sha256", "image_size", "preprocess",
        "pooling", "taps", "augment_copies", "background", "dtype", "zmuv_mean", "zmuv_std", "manifest_path", "manifest_sha256", "versions")},
        "feature_shape": plan.info["feature_shape"], **({"tap_shapes": plan.info["tap_shapes"]} if plan.info.get("tap_shapes") else {}),
        "rows": result["rows"], "rows_done": int(done.sum()), "rows_by_split": splits,
        "computed": result["computed"], "reused": result["reused"], "skipped": result["skipped"],
        "seconds": round(result["seconds"], 2)}
    if plan.text:
        summary["captions"] = plan.text.report
    summary_path = plan.final.with_suffix(".json")
    try:
        write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    except OSError as error:
        if read_only_error(error) is None or result["computed"]:
            raise
        log.info("%s is read-only; its summary %s is left as it was", plan.final.parent, summary_path)
    return CacheResult(path=plan.final, summary_path=summary_path, skipped_path=result["skipped_path"],
                       rows=result["rows"], computed=result["computed"], reused=result["reused"],
                       skipped=result["skipped"], seconds=result["seconds"],
                       captions=plan.text.report if plan.text else None)


def write_rows(dataset, rows, values):
    """dataset[rows] = values for increasing `rows`: a slice when they are consecutive (much faster in h5py)."""
    rows = np.asarray(rows)
    if rows[-1] - rows[0] == len(rows) - 1:
        dataset[int(rows[0]) : int(rows[-1]) + 1] = values
    else:
        dataset[rows.tolist()] = values
