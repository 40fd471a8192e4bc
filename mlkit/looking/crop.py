"""`mlkit crop`: content-aware crops of every image of a manifest, from a backbone's feature maps.

For each image, the method's map gives a box (`mlkit.cropping.finder`: the
peaks of the first layers' activations, or what differs from the border);
the box is widened by a margin, to a
minimum size and to an aspect ratio, and the image is cut along it. The
output folder holds:

    images/<row>_<name>.png   the crops (PNG, so cropping adds no compression loss)
    manifest.<suffix>         the rows that were cropped, every column carried over, `image`
                              pointing at the crop; `crop_source` and `crop_box` added
    failed.csv                the rows that could not be read, with the reason
    contact_sheet.png         originals with their crop boxes drawn
    crop.json                 the settings and the counts
    progress.jsonl            one line per row done; a rerun with the same settings resumes from it

Example:
    result = mlkit.crop("data/manifest.csv", "data/cropped", margin=0.1, aspect="square")
    mlkit.cache_features(result.manifest, backbone="mobilenetv2")
"""

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mlkit.cropping.config import SETTINGS, CropConfig
from mlkit.cropping.finder import BoxFinder
from mlkit.files import write_bytes, write_json
from mlkit.images import ImageReadError, load_image, parse_background
from mlkit.looking.sheets import box_sheet
from mlkit.options import defaults_of

log = logging.getLogger(__name__)

PROGRESS = "progress.jsonl"
SHEET_IMAGES = 48


@dataclass
class CropResult:
    """What `crop` wrote: the new manifest, the failures and the contact sheet."""

    manifest: Path
    failed: Path
    contact_sheet: Path
    cropped: int
    failures: list


class Cropper:
    """Images in, boxes out: the config's network and method built once, applied in batches.

    Args:
        config: a `CropConfig`.
        workdir: where `config.model` run names are looked up. Defaults to ".".
    """

    def __init__(self, config, workdir="."):
        from mlkit.looking.networks import crop_parts

        self.config = config
        parts = crop_parts(config, workdir)
        self.finder = BoxFinder(parts, config)
        self.image_size, self.source = parts.image_size, parts.name

    def heat_maps(self, images):
        """The method's maps (list of (H, W) arrays in [0, 1]) of uint8 images of any size."""
        return self.finder.heat_maps(images)

    def boxes(self, images):
        """(top, left, bottom, right) in pixels of each image, after margin, minimum size and aspect."""
        return self.finder.boxes(images)


# The Python API's defaults are CropConfig's (mlkit.options): written once, there.
CROP = defaults_of(CropConfig)


def crop(manifest, out, *, workdir=".", progress=True, method=CROP["method"], backbone=CROP["backbone"],
         weights=CROP["weights"], model=CROP["model"], layers=CROP["layers"], image_size=CROP["image_size"],
         min_std=CROP["min_std"], threshold=CROP["threshold"], photo_map=CROP["photo_map"],
         heads=CROP["heads"], tolerance=CROP["tolerance"], window=CROP["window"],
         stride=CROP["stride"], margin=CROP["margin"], min_size=CROP["min_size"], aspect=CROP["aspect"],
         background=CROP["background"], batch_size=CROP["batch_size"]):
    """Crops every image of a manifest to its object, as a backbone's feature maps find it (`method`).

    Args:
        manifest: the manifest (CSV or JSON Lines).
        out: the output folder (see this module's docstring for what it holds).
        workdir: where a `model=` run name is looked up (`<workdir>/models/`). Defaults to ".".
        progress: log a line per batch. Defaults to True.
        method, backbone, weights, model, layers, image_size, min_std, threshold,
            photo_map, heads, tolerance, window, stride, margin, min_size, aspect, background, batch_size: the
            `CropConfig` settings (each field says what it does; `mlkit crop
            --help` prints them).

    Returns:
        A `CropResult`.

    Example:
        result = crop("data/manifest.csv", "data/cropped", aspect="square", margin=0.1)
        print(result.manifest, len(result.failures))
    """
    from mlkit.data.manifest import read_manifest

    config = CropConfig(method=method, backbone=backbone, weights=weights, model=model, layers=layers,
                        image_size=image_size, min_std=min_std, threshold=threshold, photo_map=photo_map, heads=heads,
                        tolerance=tolerance, window=window, stride=stride, margin=margin, min_size=min_size,
                        aspect=aspect, background=background, batch_size=batch_size)
    table = read_manifest(manifest, allow_unlabelled=True)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    done = _resume(out, config)
    sources = [str(path) for path in table.image_paths()]
    todo = [row for row in range(len(sources)) if done.get(row, {}).get("source") != sources[row]]
    if todo:
        cropper = Cropper(config, workdir)
        _crop_rows(cropper, sources, todo, out, done, progress)
    return _finish(table, out, config, done, sources)


def _resume(out, config):
    """{row: progress record} from an earlier run with the same settings; starts over otherwise."""
    settings_path, progress_path = out / SETTINGS, out / PROGRESS
    previous = json.loads(settings_path.read_text()).get("settings") if settings_path.exists() else None
    if previous != config.fingerprint():
        if previous is not None:
            log.info("crop: settings differ from the run in %s; cropping every image again", out)
        progress_path.unlink(missing_ok=True)
        write_json(settings_path, {"settings": config.fingerprint(), "status": "running"})
        return {}
    done = {}
    for line in progress_path.read_text().splitlines() if progress_path.exists() else ():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line being written when the run was killed
        if record.get("error") or (out / record["crop"]).exists():
            done[record["row"]] = record
    if done:
        log.info("crop: resuming, %d row(s) already done in %s", len(done), out)
    return done


def _crop_rows(cropper, sources, todo, out, done, progress):
    """Crops the `todo` rows in batches, appending each row's record to the progress log."""
    background = parse_background(cropper.config.background)
    size = cropper.config.batch_size
    with open(out / PROGRESS, "a", encoding="utf-8") as log_file:
        for start in range(0, len(todo), size):
            rows, images, records = [], [], []
            for row in todo[start:start + size]:
                try:
                    images.append(load_image(sources[row], background))
                    rows.append(row)
                except ImageReadError as error:
                    records.append({"row": row, "source": sources[row], "error": error.reason})
            for row, image, box in zip(rows, images, cropper.boxes(images) if images else ()):
                name = f"images/{row:06d}_{Path(sources[row]).stem[:80]}.png"
                write_bytes(out / name, _png(image[box[0]:box[2], box[1]:box[3]]))
                records.append({"row": row, "source": sources[row], "crop": name, "box": list(box),
                                "size": list(image.shape[:2])})
            for record in records:
                log_file.write(json.dumps(record) + "\n")
                done[record["row"]] = record
            log_file.flush()
            os.fsync(log_file.fileno())
            if progress:
                log.info("crop: %d/%d", min(start + size, len(todo)), len(todo))


def _png(pixels):
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return buffer.getvalue()


def _finish(table, out, config, done, sources):
    """Writes the new manifest, failed.csv, the contact sheet and the summary."""
    import pandas as pd

    from mlkit.data.manifest import write_manifest

    ok = [row for row in range(len(sources)) if "crop" in done[row]]
    failures = [(row, sources[row], done[row]["error"]) for row in range(len(sources)) if "error" in done[row]]
    rows = table.rows.iloc[ok].copy()
    rows["image"] = [done[row]["crop"] for row in ok]
    rows["crop_source"] = [sources[row] for row in ok]
    rows["crop_box"] = [",".join(str(v) for v in done[row]["box"]) for row in ok]
    suffix = Path(table.path).suffix.lower() if Path(table.path).suffix.lower() == ".jsonl" else ".csv"
    manifest_path = write_manifest(rows, out / f"manifest{suffix}")
    failed_path = out / "failed.csv"
    with_reason = pd.DataFrame(failures, columns=["row", "image", "reason"])
    write_bytes(failed_path, with_reason.to_csv(index=False, lineterminator="\n").encode())
    for row, image, reason in failures:
        log.warning("crop: row %d, %s: %s", row + 1, image, reason)
    sheet = box_sheet(out / "contact_sheet.png",
                      [(sources[row], done[row]["box"], Path(sources[row]).name) for row in ok[:SHEET_IMAGES]],
                      title=f"mlkit crop: {len(ok)} image(s), first {min(len(ok), SHEET_IMAGES)} shown",
                      background=parse_background(config.background))
    write_json(out / SETTINGS, {"settings": config.fingerprint(), "status": "complete", "cropped": len(ok),
                                "failed": len(failures), "source_manifest": str(table.path),
                                "manifest": str(manifest_path)})
    return CropResult(manifest_path, failed_path, sheet, len(ok), failures)
