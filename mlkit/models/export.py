"""Loading an exported model and writing it in serving formats: SavedModel, TFLite, ONNX.

`models/<run>.keras` is the model; `mlkit export RUN --format ...` writes
beside it:

    <run>.savedmodel/   TensorFlow SavedModel. Signatures:
                          serving_default / serve: uint8 images (N, H, W, 3) of any size
                          serve_bytes: encoded image files (N,) as tf.string (JPEG, PNG, GIF, BMP)
                        both return {"scores", "labels"}. Loads with TensorFlow alone:
                          m = tf.saved_model.load(path); m.serve(images)["labels"]
    <run>.tflite        TFLite, and
    <run>.onnx          ONNX (needs `pip install "mlkit[export]"`): uint8 images at the model's
                        own size (N, S, S, 3), returning {"scores", "labels"}. Neither format has
                        TensorFlow's antialiased resize (ScaleAndTranslate), so resize first with
                        `mlkit.images.resize_images` (bilinear, antialias) as the model would

`serve_bytes` decodes with TensorFlow's decoders, which do not apply EXIF
orientation or composite transparency on the training background; for
photos with EXIF rotation, decode yourself (or use `mlkit predict`) and call
`serve`.

A caption model (fine-tuned from an image + caption top) takes a raw caption
string per image as well: its `.keras` file takes {"image", "caption"}, and
its SavedModel has `serve(images, captions)` and `serve_bytes(files,
captions)`, captions a tf.string (N,) ("" for an image without one). The
caption is tokenised inside, with TensorFlow ops only, so the SavedModel
still serves without mlkit. Such models are not written as TFLite or ONNX:
tf2onnx leaves the vectoriser's string ops (regex replace, string split, a
string hash table) unconverted, and TFLite keeps them only as Flex ops that
its stock interpreter cannot run; use the SavedModel.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mlkit.errors import MlkitError
from mlkit.files import StrPath, atomic_folder, atomic_path, scratch_folder, sweep_temporaries, write_bytes
from mlkit.workspace import run_paths

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

FORMATS = ("savedmodel", "tflite", "onnx")
ONNX_OPSET = 17


def model_paths(model, workdir="."):
    """(`.keras` path, `.json` path) for a model path or a run name in `<workdir>/models/`."""
    text = str(model)
    path = Path(text)
    if path.suffix != ".keras":
        path = run_paths(workdir, text, "models")["keras"]
    record = path.with_suffix(".json")
    if not path.exists():
        folder = path.parent
        known = sorted(p.stem for p in folder.glob("*.keras")) if folder.exists() else []
        hint = f"; models there: {', '.join(known[:10])}" if known else "; run `mlkit finetune` to make one"
        raise MlkitError(f"no exported model at {path}{hint}")
    return path, record


def load_model(model: StrPath, workdir: StrPath = ".") -> tuple[keras.Model, dict]:
    """The exported Keras model and its record (`<run>.json`).

    Args:
        model: a `.keras` path or a run name under `<workdir>/models/`.
        workdir: the workspace. Defaults to ".".

    Returns:
        (keras.Model, dict): the record holds label names, the decision rule,
        the metrics and the config; empty when the JSON is missing.
    """
    import keras

    import mlkit.layers  # noqa: F401 (registers every layer an mlkit model may hold)

    path, record_path = model_paths(model, workdir)
    try:
        loaded = keras.saving.load_model(path, compile=False)
    except Exception as error:
        raise MlkitError(f"cannot load {path}: {type(error).__name__}: {error}") from None
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    return loaded, record


def export_model(
    model: StrPath, formats: Sequence[str] = ("savedmodel",), workdir: StrPath = ".", out_dir: StrPath | None = None,
) -> dict[str, Path]:
    """Writes the exported model in serving formats.

    Args:
        model: a `.keras` path or a run name under `<workdir>/models/`.
        formats: any of "savedmodel", "tflite", "onnx". Defaults to ("savedmodel",).
        workdir: the workspace. Defaults to ".".
        out_dir: where to write. Defaults to beside the `.keras` file.

    Returns:
        {format: path written}.

    Example:
        paths = export_model("models/coco_2017_vgg16_inet_avg_1x1024d5_lr12_b64_15_lr13_b32_hwrszf.keras",
                             formats=("savedmodel", "tflite"))
    """
    formats = [formats] if isinstance(formats, str) else list(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise MlkitError(f"--format {', '.join(unknown) or '(none)'}: choose from {', '.join(FORMATS)}")
    path, _ = model_paths(model, workdir)
    keras_model, record = load_model(path)
    folder = Path(out_dir or path.parent)
    folder.mkdir(parents=True, exist_ok=True)
    stem = path.stem
    # No lock guards an export: `sweep_temporaries` keeps those of processes still alive.
    sweep_temporaries(folder, {f"{stem}.{fmt}" for fmt in FORMATS})  # each format's suffix is its name
    written = {}
    if "savedmodel" in formats:
        written["savedmodel"] = write_savedmodel(keras_model, folder / f"{stem}.savedmodel")
    if "tflite" in formats:
        written["tflite"] = write_tflite(keras_model, record, folder / f"{stem}.tflite")
    if "onnx" in formats:
        written["onnx"] = write_onnx(keras_model, record, folder / f"{stem}.onnx")
    return written


def write_savedmodel(model, path):
    """A SavedModel with `serve` (uint8 images) and `serve_bytes` (encoded files) endpoints.

    A caption model's endpoints take the captions as a second argument:
    `serve(images, captions)` and `serve_bytes(files, captions)`.
    """
    import keras
    import tensorflow as tf

    from mlkit.models.network import takes_captions

    path = Path(path)
    specs = {key: tf.TensorSpec(value.shape[1:], value.dtype) for key, value in model.output.items()}
    images = tf.TensorSpec((None, None, None, 3), tf.uint8, name="images")
    files = tf.TensorSpec((None,), tf.string, name="files")

    def decode(data):
        return tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)[None]

    def first(outputs):
        return {key: value[0] for key, value in outputs.items()}

    archive = keras.export.ExportArchive()
    archive.track(model)
    if takes_captions(model):
        captions = tf.TensorSpec((None,), tf.string, name="captions")

        def serve(images, captions):
            return model({"image": images, "caption": captions}, training=False)

        def serve_bytes(files, captions):
            return tf.map_fn(lambda pair: first(model({"image": decode(pair[0]), "caption": pair[1][None]},
                                                      training=False)),
                             (files, captions), fn_output_signature=specs)

        archive.add_endpoint("serve", serve, input_signature=[images, captions])
        archive.add_endpoint("serve_bytes", serve_bytes, input_signature=[files, captions])
    else:
        # The endpoints of an image-only model take one argument where a caption model's take two.
        def serve(images):  # type: ignore[misc]
            return model(images, training=False)

        def serve_bytes(files):  # type: ignore[misc]
            return tf.map_fn(lambda data: first(model(decode(data), training=False)), files, fn_output_signature=specs)

        archive.add_endpoint("serve", serve, input_signature=[images])
        archive.add_endpoint("serve_bytes", serve_bytes, input_signature=[files])
    with atomic_folder(path) as partial:
        archive.write_out(str(partial), verbose=False)
    return path


def fixed_size_function(model, record):
    """uint8 (N, S, S, 3) at the model's own size -> {"scores", "labels"}, without the resize layer.

    TFLite and ONNX have no antialiased resize (TensorFlow's ScaleAndTranslate),
    and at the model's own size that resize is the identity, so these formats
    take images already resized to S x S.
    """
    import tensorflow as tf

    from mlkit.models.network import takes_captions

    if takes_captions(model):
        raise MlkitError(
            "this model takes captions, and its caption vectoriser's string ops (regex replace, string split, "
            "a string hash table) convert to neither format: tf2onnx leaves them unconverted, and TFLite keeps "
            "them only as Flex ops that its stock interpreter cannot run. Export --format savedmodel instead "
            "and call serve(images, captions) with TensorFlow")
    size = int((record.get("input") or {}).get("image_size") or model.get_layer("resize").height)
    network = model.get_layer("network")

    @tf.function(input_signature=[tf.TensorSpec((None, size, size, 3), tf.uint8, name="images")])
    def serve(images):
        return _heads(model, network(tf.cast(images, tf.float32), training=False))

    return serve


def write_tflite(model, record, path):
    """A TFLite model of `fixed_size_function` (builtin ops, Flex where needed)."""
    import keras
    import tensorflow as tf

    serve = fixed_size_function(model, record)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve.python_function, input_signature=serve.input_signature)
    # Through a SavedModel, so the TFLite file keeps a named "serve" signature (images -> scores, labels).
    with scratch_folder("export") as folder:
        archive.write_out(folder, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=["serve"])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
        try:
            flatbuffer = converter.convert()
        except Exception as error:
            raise MlkitError(f"TFLite conversion failed: {type(error).__name__}: {error}") from None
    write_bytes(path, flatbuffer)
    return Path(path)


def write_onnx(model, record, path):
    """An ONNX model of `fixed_size_function` (needs tf2onnx)."""
    try:
        import tf2onnx
    except ImportError:
        raise MlkitError('ONNX export needs tf2onnx and onnx: pip install "mlkit[export]"') from None

    serve = fixed_size_function(model, record)
    with atomic_path(path) as partial:
        try:
            tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=ONNX_OPSET,
                                          output_path=str(partial))
        except Exception as error:
            raise MlkitError(f"ONNX conversion failed: {type(error).__name__}: {error}") from None
    return Path(path)


def _heads(model, scores):
    """The layers after the network (decision, unscaling) applied to its scores."""
    if "unscale" in [layer.name for layer in model.layers]:
        predictions = model.get_layer("unscale")(scores)
        return {"scores": predictions, "labels": predictions}
    return {"scores": scores, "labels": model.get_layer("labels")(scores)}
