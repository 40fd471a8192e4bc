"""`mlkit predict`: ranked labels with scores for images, folders or a manifest.

Images are decoded as in training (PIL: EXIF rotation, CMYK, 16-bit,
transparency on the cache's background colour) and passed to the exported
model as uint8, which resizes and preprocesses inside. An image that cannot
be read is reported in its row and does not stop the others.

A caption model (one fine-tuned from an image + caption top) also takes one
caption per image: `caption=TEXT` (`--caption`) gives every image the same
one, else a manifest's `caption` column gives each row its own (a blank cell
is the empty caption, as in training). Images left without a caption are an
error, not silently captioned "": pass `--caption ""` to mean no caption.
Image-only models ignore `--caption`, with a warning.

A model fine-tuned on `mlkit crop`'s crops has the crop's settings in its
record (`crop`); its images are cropped the same way (same method, settings
and backbone weights) before the model sees them, unless `crop=False`
(`--no-crop`). Each `Prediction` holds the box it was cut along.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlkit.errors import MlkitError
from mlkit.files import StrPath, atomic_path
from mlkit.images import ImageReadError, load_image, parse_background
from mlkit.vocabulary import IMAGE_EXTENSIONS, SPLITS

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = {".csv", ".jsonl"}
DEFAULT_TOP = 5


@dataclass
class Prediction:
    """One image's result: scores by label, the decided labels, or why it failed."""

    image: str
    ranked: list = field(default_factory=list)
    decided: list = field(default_factory=list)
    truth: list | None = None
    error: str = ""
    task: str = "multilabel"
    caption: str | None = None
    crop_box: tuple | None = None


def expand_inputs(inputs, split=None):
    """(image path, true labels, caption) from files, folders and manifests.

    True labels are None when unknown; the caption is a manifest row's
    (blank -> "") and None for images from files, folders or a manifest
    without a caption column. With `split`, a manifest gives only its rows
    of that split (files and folders are taken whole).
    """
    items = []
    for entry in inputs:
        path = Path(entry)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not found:
                log.warning("%s holds no images (%s)", path, ", ".join(sorted(IMAGE_EXTENSIONS)))
            items += [(str(p), None, None) for p in found]
        elif path.suffix.lower() in MANIFEST_SUFFIXES:
            items += _manifest_items(path, split)
        else:
            items.append((str(path), None, None))
    if not items:
        raise MlkitError("no images to predict: give image files, folders or a manifest")
    return items


def _manifest_items(path, split=None):
    from mlkit.data.manifest import read_manifest

    table = read_manifest(path, allow_unlabelled=True)
    images = [str(p) for p in table.image_paths()]
    captions = table.captions()
    captions = [None] * len(images) if captions is None else ["" if text is None else str(text) for text in captions]
    truth = ([None] * len(images) if table.task == "regression"
             else [list(labels) for labels in table.rows["labels"]])
    items = list(zip(images, truth, captions))
    if split is None:
        return items
    chosen = [item for item, row_split in zip(items, table.splits()) if row_split == split]
    if not chosen:
        raise MlkitError(f"{path} has no rows in split {split!r} (splits: {sorted(set(table.splits()))}); run "
                         "`mlkit data split` first, or leave out --split")
    return chosen


def attach_captions(items, caption, captioned, model):
    """The items with the captions the model gets; see this module's docstring."""
    if caption is not None:
        if not captioned:
            log.warning("%s takes no caption: --caption is ignored", model)
        return [(image, truth, str(caption)) for image, truth, _ in items]
    if not captioned:
        return items
    lacking = [image for image, _, text in items if text is None]
    if lacking:
        raise MlkitError(
            f"{model} takes a caption with each image, and {len(lacking)} of {len(items)} image(s) have none "
            f"(first: {lacking[0]}): give --caption TEXT (one caption for every image; --caption '' for none) "
            "or a manifest with a caption column")
    return items


def predict(
    model: StrPath, inputs: StrPath | Sequence[StrPath], *, caption: str | Sequence[str] | None = None,
    workdir: StrPath = ".", top: int = DEFAULT_TOP, csv_path: StrPath | None = None, batch_size: int = 32,
    split: str | None = None, crop: bool | None = None,
) -> list[Prediction]:
    """Labels images with an exported model.

    Args:
        model: a `.keras` path or a run name under `<workdir>/models/`.
        inputs: image files, folders (searched recursively) and manifests.
        caption: for a caption model, the caption of every image; without it
            each manifest row's `caption` cell is used, and images with no
            caption are an error. Ignored, with a warning, by image-only
            models. Defaults to None.
        workdir: the workspace. Defaults to ".".
        top: the most ranked labels kept per image; a decided label ranked lower is still in
            `decided` (the table names it on one line). Defaults to 5.
        split: with a manifest, only its rows of this split (train, val or test). Defaults to None (all).
        csv_path: also write one row per image here. Defaults to None.
        batch_size: images of the same size run through the model together. Defaults to 32.
        crop: crop each image as `mlkit crop` cropped the model's training images
            (the settings its record holds) before the model. Defaults to None:
            crop exactly when the record holds crop settings.

    Returns:
        A list of `Prediction`, in input order.

    Example:
        for p in predict("models/run.keras", ["photos/"]):
            print(p.image, p.decided)
        predict("models/captioned.keras", ["photo.jpg"], caption="two red circles")
    """
    from mlkit.models.export import load_model
    from mlkit.models.network import takes_captions

    if split is not None and split not in SPLITS:
        raise MlkitError(f"--split {split!r}: use one of {', '.join(SPLITS)}")
    if int(top) < 1:
        raise MlkitError(f"--top {top} must be >= 1")
    if csv_path and not Path(csv_path).absolute().parent.is_dir():  # before labelling anything, not after
        raise MlkitError(f"--csv {csv_path}: the folder {Path(csv_path).absolute().parent} does not exist; create it "
                         "or write the CSV elsewhere")
    keras_model, record = load_model(model, workdir)
    captioned = takes_captions(keras_model)
    names = record.get("label_names") or record.get("target_names") or []
    task = record.get("task", "multilabel")
    background = parse_background((record.get("input") or {}).get("background") or "white")
    items = attach_captions(expand_inputs(inputs, split), caption, captioned, model)
    cropper = training_cropper(record, crop, model)
    results = [Prediction(image, truth=truth, task=task, caption=text if captioned else None)
               for image, truth, text in items]
    pending: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = {}
    for index, (image, _, _) in enumerate(items):
        try:
            pixels = load_image(image, background)
        except ImageReadError as error:
            results[index].error = error.reason
            log.warning("cannot read %s: %s", image, error.reason)
            continue
        if cropper is not None:
            box = results[index].crop_box = cropper.boxes([pixels])[0]
            pixels = pixels[box[0]:box[2], box[1]:box[3]]
        group = pending.setdefault(pixels.shape, [])
        group.append((index, pixels))
        if len(group) >= batch_size:
            _run(keras_model, pending.pop(pixels.shape), results, names, task, top)
    for group in pending.values():
        _run(keras_model, group, results, names, task, top)
    if csv_path:
        write_csv(results, csv_path)
    return results


def training_cropper(record, crop, model):
    """The `BoxFinder` that cut the model's training images, when `crop` (None: when there was one)."""
    settings = (record.get("crop") or {}).get("settings")
    if crop is None:
        crop = settings is not None
    if not crop:
        return None
    if settings is None:
        raise MlkitError(f"--crop: {model} was not trained on `mlkit crop`'s crops (its record has no crop "
                         "settings); crop the images with `mlkit crop` yourself, or leave out --crop")
    from mlkit.cropping.config import CropConfig
    from mlkit.cropping.finder import BoxFinder
    from mlkit.cropping.parts import backbone_parts

    config = CropConfig.from_settings(settings)
    if config.model:
        raise MlkitError(f"{model}'s training images were cropped with the layers of the run {config.model} "
                         "(mlkit crop --model), which predict cannot rebuild: crop the images with the same "
                         "mlkit crop command and pass --no-crop")
    log.info("predict: cropping each image as the model's training images were (%s)", record["crop"]["crop_json"])
    return BoxFinder(backbone_parts(config.backbone, config.weights, config.image_size), config)


def _run(model, group, results, names, task, top):
    images = np.stack([pixels for _, pixels in group])
    if results[group[0][0]].caption is not None:
        images = {"image": images, "caption": np.array([results[index].caption for index, _ in group], dtype=object)}
    # A direct call: predict_on_batch would retrace for every new image size.
    outputs = model(images, training=False)
    scores, labels = np.asarray(outputs["scores"]), np.asarray(outputs["labels"])
    for row, (index, _) in enumerate(group):
        result = results[index]
        label_names = names if len(names) == scores.shape[1] else [str(i) for i in range(scores.shape[1])]
        if task == "regression":
            result.ranked = list(zip(label_names, map(float, scores[row])))
            result.decided = [f"{name}={value:.4g}" for name, value in result.ranked]
            continue
        order = np.argsort(-scores[row], kind="stable")
        decided = {int(i) for i in np.flatnonzero(labels[row])}
        result.ranked = [(label_names[i], float(scores[row, i])) for i in order[:top]]
        result.decided = [label_names[i] for i in order if int(i) in decided]


def format_predictions(results):
    """The printed table: per image, ranked labels with scores; `*` marks a decided label, `+` a true one."""
    lines = []
    task = results[0].task if results else "multilabel"
    for result in results:
        lines.append(result.image if result.caption is None else f"{result.image}  caption: {result.caption!r}")
        if result.error:
            lines.append(f"  unreadable: {result.error}")
            continue
        if task == "regression":
            lines += [f"  {name}  {value:.4g}" for name, value in result.ranked]
            continue
        truth = set(result.truth or [])
        for rank, (name, score) in enumerate(result.ranked, 1):
            marks = ("*" if name in result.decided else " ") + ("+" if name in truth else " ")
            lines.append(f"  {rank:>3} {marks} {score:6.3f}  {name}")
        shown = {name for name, _ in result.ranked}
        lower = [name for name in result.decided if name not in shown]
        if lower:
            lines.append(f"        decided, ranked lower: {', '.join(lower)}")
        missed = sorted(truth - shown)
        if missed:
            lines.append(f"        true, ranked lower: {', '.join(missed)}")
    legend = ""
    if task != "regression":
        # `+` only appears where true labels are known (a manifest's rows); the legend says what can be seen.
        known = any(result.truth is not None for result in results)
        legend = "  (* decided by the model's rule" + (", + true label)" if known else ")")
    return "\n".join(lines + ([legend] if legend else []))


def write_csv(results, path):
    """One row per image: image, decided labels (|-joined), ranked label:score pairs, true labels, error,
    for a caption model the caption used last, and for a cropping model the crop box (top,left,bottom,right)."""
    path = Path(path)
    captioned = any(result.caption is not None for result in results)
    cropped = any(result.crop_box is not None for result in results)
    with atomic_path(path) as partial, open(partial, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "labels", "ranked", "true_labels", "error"] + (["caption"] if captioned else [])
                        + (["crop_box"] if cropped else []))
        for result in results:
            ranked = "|".join(f"{name}:{score:.6g}" for name, score in result.ranked)
            truth = "" if result.truth is None else "|".join(result.truth)
            row = [result.image, "|".join(result.decided), ranked, truth, result.error]
            box = ",".join(map(str, result.crop_box)) if result.crop_box is not None else ""
            writer.writerow(row + ([result.caption] if captioned else []) + ([box] if cropped else []))
    return path
