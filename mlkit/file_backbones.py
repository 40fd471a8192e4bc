"""The user's own Keras model as the backbone: `--backbone PATH.keras [--tap LAYER]`.

The model is loaded with Keras's safe mode (a Lambda layer, whose Python code
would run on loading, is refused, as `mlkit predict` refuses it) and cut at
the tap: the layer whose output become the features. The default tap is the
last layer before the model's head, found by walking back from its output
over head layers (Dense, Dropout, Activation, batch norm, mlkit's feature
bounds, weightless layers such as mlkit's label decision) and into a nested model whose own last layer
is a head layer. For an mlkit model from `models/` that is its backbone (the
pooled features its top was trained on); for a keras.applications classifier
its global pooling. A tap inside a nested model is written `outer/inner`.

Pixels reach the model as float RGB in [0, 255] at `--image-size` (default:
the model's own input size, or that of the nested model holding the tap):
the model is expected to preprocess inside, as mlkit's exported models and
Keras's EfficientNet and ConvNeXt do; otherwise pass --preprocess zmuv or
zmuvs. The weights' identity is the file's sha256.
"""

import hashlib
import zipfile
from pathlib import Path

from mlkit.errors import MlkitError

# mlkit's FeatureBounds holds weights but belongs to a top, as the standardising batch norm before it does.
HEAD_LAYERS = ("Dense", "Dropout", "Activation", "BatchNormalization", "Softmax", "ReLU", "Identity", "FeatureBounds")


def build_file_backbone(spec, weights, image_size, pooling, tap):
    """The file's model cut at the tap, pooled, and its facts (see `mlkit.backbones.build_backbone`)."""
    import keras

    path = Path(spec.source)
    if str(weights).lower() not in ("imagenet", ""):
        raise MlkitError(f"--weights {weights}: {path.name} brings its own weights; leave --weights at its default")
    model = load_keras_file(path)
    tap = tap or default_tap(model)
    features = cut_at(model, tap, image_size)
    size = int(features.inputs[0].shape[1])
    output = features.output
    if isinstance(output, (list, tuple, dict)):
        raise MlkitError(f"--tap {tap}: that layer of {path.name} has several outputs; tap a layer with one")
    if len(output.shape) in (3, 4) and pooling in ("avg", "max"):
        pools = {(4, "avg"): keras.layers.GlobalAveragePooling2D, (4, "max"): keras.layers.GlobalMaxPooling2D,
                 (3, "avg"): keras.layers.GlobalAveragePooling1D, (3, "max"): keras.layers.GlobalMaxPooling1D}
        output = pools[len(output.shape), pooling](name=f"tap_{pooling}_pool")(output)
    elif pooling == "cls":
        raise MlkitError("--pooling cls is for KerasHub transformers; a file backbone's tap is pooled by avg or max")
    model = keras.Model(features.inputs, output, name=f"{spec.name}_features")
    return model, {"image_size": size, "spec": _replace_size(spec, size), "weights_sha256": file_sha256(path),
                   "tap": tap, "settings": {"backbone_source": str(path), "tap": tap}}


def _replace_size(spec, size):
    from dataclasses import replace

    return replace(spec, default_size=size)


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_keras_file(path):
    """Loads a `.keras` file in safe mode, explaining what is wrong with it.

    An mlkit model holds mlkit's own layers (label decision, caption
    vectoriser, a KerasHub backbone's features), which Keras finds once
    `mlkit.layers` has registered them.
    """
    import keras

    import mlkit.layers  # noqa: F401

    path = Path(path)
    if path.is_dir():
        raise MlkitError(f"--backbone {path}: a folder; give a .keras file (a SavedModel's layers cannot be cut at a "
                         "tap or frozen by block: load it in Keras and save it as .keras)")
    if not path.is_file():
        raise MlkitError(f"--backbone {path}: no such file")
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise MlkitError(f"--backbone {path}: not a Keras v3 .keras file (model.save('model.keras'))")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        hint = (" It holds a Lambda layer, whose Python code mlkit will not run; rebuild the model without it"
                if "lambda" in str(error).lower() else "")
        raise MlkitError(f"cannot load {path} as a backbone ({type(error).__name__}: {reason}).{hint}") from None


def default_tap(model):
    """The path ("layer" or "outer/inner") of the last layer before the model's head."""
    import keras

    path = []
    current = model
    while True:
        layers = [layer for layer in current.layers if not isinstance(layer, keras.layers.InputLayer)]
        for layer in reversed(layers):
            if _is_head(layer):
                continue
            if isinstance(layer, keras.Model) and layers and _is_head(_last_layer(layer)):
                path.append(layer.name)
                current = layer
                break
            return "/".join([*path, layer.name])
        else:
            raise MlkitError(f"{model.name}: found no layer before its head to take features from; pass --tap LAYER "
                             f"(its layers: {', '.join(layer.name for layer in model.layers[:30])})")


def _last_layer(model):
    return model.layers[-1] if model.layers else None


def _is_head(layer):
    """Dense-like layers, weightless non-pooling layers, and nested models made only of them."""
    import keras

    if layer is None:
        return False
    if isinstance(layer, keras.Model):
        return all(_is_head(inner) or isinstance(inner, keras.layers.InputLayer) for inner in layer.layers)
    name = type(layer).__name__
    if name in HEAD_LAYERS:
        return True
    pooling = "Pooling" in name or name in ("Flatten", "Reshape", "Resizing", "Rescaling", "Normalization")
    return not layer.weights and not pooling and type(layer).__module__.split(".")[0] != "keras"


def cut_at(model, tap, image_size=None):
    """A model from float pixels (S, S, 3) in [0, 255] to the output of the layer `tap` ("layer" or "outer/inner").

    A top-level tap of a model that takes float images of one size keeps the
    model's graph as it is (any shape of graph). Otherwise (uint8 or any-size
    input, `--image-size`, or a tap in a nested model) the layers up to the
    tap are called again on new float pixels, which needs them to form one
    chain from the image, as in mlkit's models.
    """
    import keras

    chain, current = [], model
    for name in [part for part in str(tap).split("/") if part]:
        try:
            layer = current.get_layer(name)
        except ValueError:
            known = ", ".join(layer.name for layer in current.layers[-25:])
            raise MlkitError(f"--tap {tap}: {current.name} has no layer {name!r} (its last layers: {known})") from None
        chain.append((current, layer))
        current = layer
    if not chain:
        raise MlkitError("--tap: name a layer")
    size = int(image_size or _square_size(model, chain, tap))
    if len(chain) == 1 and _takes_floats(model, size):
        return keras.Model(model.inputs, chain[0][1].output)
    pixels = keras.Input((size, size, 3), dtype="float32", name="pixels")
    x = pixels
    try:
        for outer, layer in chain:
            for step in outer.layers:
                if step is layer:
                    break
                if not isinstance(step, keras.layers.InputLayer):
                    x = step(x)
        x = chain[-1][1](x)
    except (TypeError, ValueError) as error:
        raise MlkitError(f"--tap {tap}: the layers before it are not one chain from the image "
                         f"({str(error).splitlines()[0][:200]}); tap a top-level layer of the model") from None
    return keras.Model(pixels, x)


def _takes_floats(model, size):
    shape = tuple(model.inputs[0].shape[1:3])
    return len(model.inputs) == 1 and "float" in str(model.inputs[0].dtype) and shape == (size, size)


def _square_size(model, chain, tap):
    """The first fixed square input size along the path to the tap."""
    for candidate in [model] + [layer for _, layer in chain]:
        inputs = getattr(candidate, "inputs", None)
        if not inputs:
            continue
        height, width = tuple(inputs[0].shape[1:3])
        if height is not None and height == width:
            return height
    raise MlkitError(f"--tap {tap}: the model takes images of any size; pass --image-size")
