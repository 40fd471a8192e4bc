"""The backbone registry: every `keras.applications` model by lower-case name,
KerasHub presets (`hub:PRESET`) and the user's own Keras models (`PATH.keras`).

No other module special-cases a backbone: they ask `get_backbone(name)` for
the constructor, its input preprocessing and default size, `build_backbone(...)`
for a model plus the hash of its weights and the settings a cache records to
rebuild it, and `freeze_units(model)` for what `--freeze` counts. KerasHub
backbones are built in mlkit.hub_backbones, file backbones in
mlkit.file_backbones; both return the same (model, info) as a
`keras.applications` one.

Preprocessing is built from stock Keras layers (Rescaling, Normalization, a
fixed 1x1 convolution for Caffe's RGB->BGR and mean, LayerNormalization for
per-image standardisation), so a saved model that contains it loads in plain
Keras without importing mlkit.
"""

import contextlib
import hashlib
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlkit.errors import MlkitError, check_choice

PREPROCESSING = ("inet", "zmuv", "zmuvs")
# "cls": a transformer's own image embedding (its class token, or SigLIP's attention-pooled output).
POOLING = ("avg", "max", "none", "cls")
HUB_PREFIX = "hub:"
KINDS = ("applications", "hub", "file")
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """What the rest of mlkit needs to know about one backbone.

    Attributes:
        name: lower-case registry name and run-name field, e.g. "resnet50",
            "hub-dinov2-small" or "file-mymodel".
        constructor: the `keras.applications` attribute, e.g. "ResNet50" ("" for the others).
        mode: its own `preprocess_input` mode: "caffe", "tf", "torch", "none"
            for models that rescale inside (EfficientNet, ConvNeXt, a user's
            model), or "converter" for a KerasHub preset's image converter
            (`scale` and `offset`).
        default_size: the input size its weights were trained at (None until
            a KerasHub or file backbone is built: only its files say).
        kind: "applications", "hub" or "file".
        source: what a hub or file backbone is built from: the preset, or the
            file's absolute path ("" for `keras.applications`).
        scale: "converter" mode: pixels in [0, 255] are multiplied by this
            (one number or one per channel), then
        offset: added.
        taps: named depths (mlkit.taps), shallow to deep, as (name, layer
            name) pairs: the layers `cache-features --taps` may pool beside
            the backbone's output. Empty for families not declared here
            (their layers are still reachable by name).
    """

    name: str
    constructor: str
    mode: str
    default_size: int = 224
    kind: str = "applications"
    source: str = ""
    scale: tuple = ()
    offset: tuple = ()
    taps: tuple = ()


def _specs():
    table = [
        ("VGG16", "caffe", 224), ("VGG19", "caffe", 224),
        ("ResNet50", "caffe", 224), ("ResNet101", "caffe", 224), ("ResNet152", "caffe", 224),
        ("ResNet50V2", "tf", 224), ("ResNet101V2", "tf", 224), ("ResNet152V2", "tf", 224),
        ("InceptionV3", "tf", 299), ("InceptionResNetV2", "tf", 299), ("Xception", "tf", 299),
        ("MobileNet", "tf", 224), ("MobileNetV2", "tf", 224),
        ("MobileNetV3Small", "none", 224), ("MobileNetV3Large", "none", 224),
        ("DenseNet121", "torch", 224), ("DenseNet169", "torch", 224), ("DenseNet201", "torch", 224),
        ("NASNetMobile", "tf", 224), ("NASNetLarge", "tf", 331),
        ("ConvNeXtTiny", "none", 224), ("ConvNeXtSmall", "none", 224), ("ConvNeXtBase", "none", 224),
        ("ConvNeXtLarge", "none", 224), ("ConvNeXtXLarge", "none", 224),
        ("EfficientNetV2B0", "none", 224), ("EfficientNetV2B1", "none", 240), ("EfficientNetV2B2", "none", 260),
        ("EfficientNetV2B3", "none", 300), ("EfficientNetV2S", "none", 384), ("EfficientNetV2M", "none", 480),
        ("EfficientNetV2L", "none", 480),
    ]
    table += [(f"EfficientNetB{i}", "none", size) for i, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600))]
    return {ctor.lower(): BackboneSpec(ctor.lower(), ctor, mode, size, taps=tuple(zip(TAP_NAMES, _tap_layers(ctor))))
            for ctor, mode, size in table}


# Named depths, shallow to deep (mlkit.taps): the end of the stride-8 stage, the middle and the end of the
# stride-16 stage, and the block before the backbone's last; `last` (the backbone's output) follows them.
TAP_NAMES = ("early", "mid", "high", "pre")
# EfficientNet B0-B7 repeat the blocks of stages 3-6 by their depth coefficient (keras.applications.efficientnet).
EFFICIENTNET_DEPTH = (1.0, 1.1, 1.2, 1.4, 1.8, 2.2, 2.6, 3.1)
# ConvNeXt's blocks per stage (keras.applications.convnext).
CONVNEXT_DEPTHS = {"Tiny": (3, 3, 9, 3), "Small": (3, 3, 27, 3), "Base": (3, 3, 27, 3), "Large": (3, 3, 27, 3),
                   "XLarge": (3, 3, 27, 3)}


def _tap_layers(constructor):
    """The layers behind `TAP_NAMES` for one `keras.applications` constructor; () where none are declared."""
    fixed = {
        # The layers of the issue-19 probe, whose pooled outputs beat out_relu alone under a style shift.
        "MobileNetV2": ("block_6_expand_relu", "block_10_project_BN", "block_13_expand_relu", "block_16_project_BN"),
        "VGG16": ("block4_conv3", "block5_conv1", "block5_conv3"),
        "VGG19": ("block4_conv4", "block5_conv2", "block5_conv4"),
        "ResNet50": ("conv3_block4_out", "conv4_block3_out", "conv4_block6_out", "conv5_block2_out"),
        "ResNet101": ("conv3_block4_out", "conv4_block12_out", "conv4_block23_out", "conv5_block2_out"),
        "ResNet152": ("conv3_block8_out", "conv4_block18_out", "conv4_block36_out", "conv5_block2_out"),
        "EfficientNetV2B0": ("block3b_add", "block4c_add", "block5e_add", "block6h_add"),
    }
    if constructor in fixed:
        return fixed[constructor]
    if constructor.startswith("EfficientNetB"):
        depth = EFFICIENTNET_DEPTH[int(constructor[-1])]
        last = [chr(ord("a") + math.ceil(repeats * depth) - 1) for repeats in (2, 3, 3, 4)]
        return tuple(f"block{stage}{letter}_add" for stage, letter in zip((3, 4, 5, 6), last))
    if constructor.startswith("ConvNeXt"):
        size = constructor[len("ConvNeXt"):]
        depths = CONVNEXT_DEPTHS[size]
        blocks = ((1, depths[1] - 1), (2, depths[2] // 2), (2, depths[2] - 1), (3, depths[3] - 2))
        return tuple(f"convnext_{size.lower()}_stage_{stage}_block_{block}_identity" for stage, block in blocks)
    return ()


BACKBONES = _specs()


def get_backbone(name):
    """The registry entry for `name`, or an error listing the choices.

    `name` is a `keras.applications` model by name (case-insensitive),
    `hub:PRESET` (a KerasHub preset name, or a preset folder), or the path of
    a `.keras` file. Nothing is read or downloaded here: a hub or file entry's
    size and preprocessing are known once `build_backbone` has loaded it.
    """
    text = str(name)
    if text.lower().startswith(HUB_PREFIX):
        preset = text[len(HUB_PREFIX):]
        if not preset:
            raise MlkitError("--backbone hub: needs a KerasHub preset, e.g. hub:dinov2_small")
        return BackboneSpec(f"hub-{_name_field(Path(preset).name or preset)}", "", "converter", None, kind="hub", source=preset)
    if text.lower().endswith(".keras") or os.sep in text or "/" in text:
        path = Path(text).expanduser().resolve()
        return BackboneSpec(f"file-{_name_field(path.stem)}", "", "none", None, kind="file", source=str(path))
    spec = BACKBONES.get(text.lower())
    if spec is None:
        raise MlkitError(f"unknown backbone {name!r}; choose one of: {', '.join(sorted(BACKBONES))}, "
                         "hub:PRESET (KerasHub) or the path of a .keras file")
    return spec


def default_image_size(name):
    """The backbone's own input size; a KerasHub or file backbone is loaded to read it."""
    spec = get_backbone(name)
    if spec.default_size is None:
        spec = build_backbone(name)[1]["spec"]
    return int(spec.default_size)


def _name_field(text):
    """A run-name field (letters, digits, '-') from a preset or file name: 'dinov2_small' -> 'dinov2-small'."""
    return "-".join(part for part in "".join(c if c.isalnum() else " " for c in text.lower()).split()) or "model"


def preprocessing_layers(spec, preprocess, mean=None, std=None):
    """Stock Keras layers that turn float RGB pixels in [0, 255] into the backbone's input.

    Args:
        spec: the backbone's `BackboneSpec`.
        preprocess: "inet" (the backbone's own `preprocess_input`), "zmuv"
            (per-channel mean and std fitted on the training split) or "zmuvs"
            (each image standardised on its own).
        mean: per-channel means for "zmuv".
        std: per-channel standard deviations for "zmuv".
    """
    import keras

    check_choice(preprocess, PREPROCESSING, "preprocessing")
    if preprocess == "zmuv":
        if mean is None or std is None:
            raise MlkitError("zmuv preprocessing needs the training split's per-channel mean and std")
        variance = np.square(np.asarray(std, dtype="float64")).tolist()
        return [keras.layers.Normalization(mean=list(mean), variance=variance, name="zmuv", dtype="float32")]
    if preprocess == "zmuvs":
        return [keras.layers.LayerNormalization(axis=[1, 2, 3], center=False, scale=False, epsilon=1e-6, name="zmuvs", dtype="float32")]
    if spec.mode == "tf":
        return [keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="inet_tf", dtype="float32")]
    if spec.mode == "torch":
        mean = [255 * m for m in TORCH_MEAN]
        variance = [(255 * s) ** 2 for s in TORCH_STD]
        return [keras.layers.Normalization(mean=mean, variance=variance, name="inet_torch", dtype="float32")]
    if spec.mode == "caffe":
        return [_caffe_layer()]
    if spec.mode == "converter":
        if not spec.scale:
            raise MlkitError(f"{spec.name}: its image converter is read when the backbone is built (build_backbone)")
        return [keras.layers.Rescaling(_number_or_list(spec.scale), offset=_number_or_list(spec.offset),
                                       name="inet_converter", dtype="float32")]
    return []


def _number_or_list(values):
    return float(values[0]) if len(values) == 1 else [float(v) for v in values]


def _caffe_layer():
    """RGB->BGR and subtraction of ImageNet's BGR mean, as a frozen 1x1 convolution."""
    import keras

    kernel = np.zeros((1, 1, 3, 3), dtype="float32")
    kernel[0, 0, 2, 0] = kernel[0, 0, 1, 1] = kernel[0, 0, 0, 2] = 1.0
    bias = -np.asarray(CAFFE_MEAN_BGR, dtype="float32")
    layer = keras.layers.Conv2D(
        3, 1, name="inet_caffe", dtype="float32", trainable=False,
        kernel_initializer=keras.initializers.Constant(kernel),
        bias_initializer=keras.initializers.Constant(bias),
    )
    return layer


def build_backbone(name, weights="imagenet", image_size=None, pooling="avg", seed=0, tap=None):
    """A headless backbone and the facts that identify its weights.

    Args:
        name: registry name, e.g. "mobilenetv2", "hub:dinov2_small" or
            "models/run.keras" (see `get_backbone`).
        weights: "imagenet" (Keras's download, cached in `$KERAS_HOME/models`;
            for a KerasHub preset or a file, the weights they carry), "none"
            (random, seeded by `seed` so a rerun rebuilds the same network;
            not for a file), or the path of a weights file for this
            architecture (not for a file). Defaults to "imagenet".
        image_size: square input side. Defaults to the backbone's own size.
        pooling: "avg", "max" or "none" (raw feature maps; a transformer's
            patch tokens as a map), or "cls" (a transformer's own image
            embedding). Defaults to "avg".
        seed: seeds the initialisation when weights are "none". Defaults to 0.
        tap: a file backbone's layer whose output are the features. Defaults
            to the last layer before the model's head (`info["tap"]` names it).

    Returns:
        (model, info): info holds `weights` (as given), `weights_sha256` (of
        the weight values, so any two identical networks match; a file's own
        sha256 for a file), `feature_shape`, `image_size`, `spec` (the
        `BackboneSpec` with its size and preprocessing known) and `settings`
        (what a cache records to rebuild a hub or file backbone: its source,
        tap and converter; empty for `keras.applications`).
    """
    spec = get_backbone(name)
    check_choice(pooling, POOLING, "pooling")
    if tap and spec.kind != "file":
        raise MlkitError(f"--tap {tap}: taps name a layer of a .keras backbone; {spec.name} is not one")
    if spec.kind == "hub":
        from mlkit.hub_backbones import build_hub_backbone

        model, info = build_hub_backbone(spec, weights, image_size, pooling, seed)
    elif spec.kind == "file":
        from mlkit.file_backbones import build_file_backbone

        model, info = build_file_backbone(spec, weights, image_size, pooling, tap)
    else:
        model, info = _build_application(spec, weights, image_size, pooling, seed)
    shape = [int(d) for d in model.output_shape[1:]]
    return model, {"weights": str(weights), "weights_sha256": info.pop("weights_sha256", None) or weights_sha256(model),
                   "feature_shape": shape, **info}


def _build_application(spec, weights, image_size, pooling, seed):
    import keras

    if pooling == "cls":
        raise MlkitError(f"--pooling cls takes a transformer's class token; {spec.name} is a CNN: use avg, max or none")
    size = int(image_size or spec.default_size)
    source = _weights_source(weights)
    if source is None:
        keras.utils.set_random_seed(seed)
    constructor = getattr(keras.applications, spec.constructor)
    kwargs = {"include_top": False, "weights": source, "input_shape": (size, size, 3), "pooling": None if pooling == "none" else pooling}
    # Keras warns once per layer it cannot match (hundreds of lines for another architecture's file);
    # they are shown only when the model is built anyway, not before the error that explains them.
    with _explain_download_failure(spec), warnings.catch_warnings(record=True) as caught:
        try:
            model = constructor(**kwargs)
        except Exception as error:
            if not isinstance(error, ValueError) and source in (None, "imagenet"):
                raise
            raise MlkitError(_build_failure(spec, size, weights, source, error)) from None
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return model, {"image_size": size, "spec": spec, "settings": {}}


def _build_failure(spec, size, weights, source, error):
    """One line saying why the backbone could not be built, from Keras's or h5py's (multi-line) error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = " ".join(lines[:2])[:400] or type(error).__name__
    if source not in (None, "imagenet"):
        return (f"--weights {weights}: not a {spec.name} weights file ({reason}). Give a Keras weights file "
                f"saved from {spec.name} (.weights.h5 or .h5), or --weights imagenet|none")
    return f"cannot build {spec.name} at {size} px with weights {weights!r}: {reason}"


def _weights_source(weights):
    text = str(weights)
    if text.lower() in ("none", ""):
        return None
    if text.lower() == "imagenet":
        return "imagenet"
    path = Path(text).expanduser()
    if not path.is_file():
        raise MlkitError(f"--weights {text!r}: no such file; use 'imagenet', 'none' or the path of a weights file")
    return str(path)


@contextlib.contextmanager
def _explain_download_failure(spec):
    """Turns a failed ImageNet download into an error naming the file and where to put it."""
    from mlkit.compat import recording_downloads

    with recording_downloads() as asked:
        try:
            yield
        except Exception as error:
            if not asked or isinstance(error, MlkitError):
                raise
            home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
            target = os.path.join(home, asked["cache_subdir"], asked["fname"] or "")
            raise MlkitError(
                f"could not download the ImageNet weights for {spec.name} ({type(error).__name__}: {error}). "
                f"On a machine with network, fetch {asked['origin']} and place it at {target} "
                "($KERAS_HOME defaults to ~/.keras); or pass --weights none / --weights PATH"
            ) from None


def weights_sha256(model):
    """sha256 over the model's weight values in order: equal networks, equal hashes."""
    digest = hashlib.sha256()
    for variable in model.weights:
        digest.update(np.ascontiguousarray(np.asarray(variable)).tobytes())
    return digest.hexdigest()


def feature_extractor(backbone, spec, preprocess, image_size, mean=None, std=None, taps=()):
    """float pixels (B, S, S, 3) in [0, 255] -> preprocessing -> backbone features.

    With `taps` (layer names), the outputs are a list: the backbone's own
    features, then each tap pooled as the backbone pools (`tapped_backbone`),
    all from one forward pass.
    """
    import keras

    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="pixels")
    x = inputs
    for layer in preprocessing_layers(spec, preprocess, mean, std):
        x = layer(x)
    network = tapped_backbone(backbone, ("last", *taps)) if taps else backbone
    outputs = network(x, training=False)
    return keras.Model(inputs, outputs, name=f"{spec.name}_features")


def freeze_units(model):
    """What `--freeze` counts, in order: [(name, [layers])]; freezing N units freezes the first N.

    A CNN (every `keras.applications` model): each layer of `model.layers` is
    one unit, so `--freeze 116` or `75%` mean what they always have. A
    transformer: everything before its first block (patch embedding,
    position embedding, class token) is one unit, each block is one, and
    everything after the last block (final norm, pooling) is one, so `75%`
    of ViT-B's 14 units freezes the embedding and the first 9 of its 12
    blocks, and a block's name (`transformer_block_10`, `layers_8`,
    `encoder_block_6`) freezes every unit before it. Blocks are found the
    same way in every family: a layer holding a list of two or more layers
    (ViT's `encoder_layers`, DINOv2's encoder), or two or more consecutive
    top-level layers of one class that is not Keras's own (SigLIP's and
    CLIP's `encoder_block_i`). A nested model (an mlkit model used as a
    backbone) counts by its own layers.
    """
    entries, flags = _blocks_flagged(model)
    if not any(flags):
        return [(layer.name, [layer]) for layer, _ in entries]
    first = flags.index(True)
    last = len(flags) - 1 - flags[::-1].index(True)
    before = [layer for layer, _ in entries[:first]]
    after = [layer for layer, _ in entries[last + 1:]]
    units = [(_unit_name(before, "embeddings"), before)] if before else []
    units += [(layer.name, [layer]) for layer, _ in entries[first:last + 1]]
    return units + ([(_unit_name(after, "head"), after)] if after else [])


def _blocks_flagged(model):
    """Every layer (`_leaf_entries`), and whether each is a transformer block (see `freeze_units`)."""
    entries = list(_leaf_entries(model))
    custom = [type(layer) for layer, block in entries if block is None and not _is_keras_class(layer)]
    repeated = {cls for cls in custom if custom.count(cls) >= 2}
    return entries, [bool(block) or (block is None and type(layer) in repeated) for layer, block in entries]


def transformer_blocks(model):
    """A transformer's blocks in order (the units `freeze_units` counts as blocks); [] for a CNN."""
    entries, flags = _blocks_flagged(model)
    return [layer for (layer, _), flag in zip(entries, flags) if flag]


# A CNN layer's block: the name up to its block number (block_13_expand -> block_13, conv4_block3_1_conv ->
# conv4_block3, block3b_add -> block3b, convnext_tiny_stage_2_block_4_depthwise_conv -> ..._stage_2_block_4).
CNN_BLOCK = re.compile(r"^(.*?block_?\d+[a-z]?)(?=_|$)")


def depth_blocks(model):
    """The backbone's layers in blocks, shallow to deep: what `finetune --lr-decay` counts depth in.

    A transformer: everything before its first block (the embeddings), then
    each block, the layers after the last block (final norm, pooling) joining
    it. A CNN: its layers grouped by the block their names carry (VGG's
    `block5`, MobileNetV2's `block_13`, ResNet's `conv4_block3`,
    EfficientNet's `block3b`, ConvNeXt's `..._stage_2_block_4`); the layers
    before the first block (the stem) are one group and a layer without a
    block name joins the block before it (MobileNetV2's `Conv_1`).

    Raises:
        MlkitError: for a CNN whose layer names carry no blocks (Inception, MobileNet, MobileNetV3, NASNet).
    """
    entries, flags = _blocks_flagged(model)
    layers = [layer for layer, _ in entries]
    if any(flags):
        first, last = flags.index(True), len(flags) - 1 - flags[::-1].index(True)
        blocks = [layers[:first]] if first else []
        blocks += [[layer] for layer in layers[first:last]]
        return blocks + [layers[last:]]
    blocks, current = [[]], None
    for layer in layers:
        match = CNN_BLOCK.match(layer.name)
        if match and match.group(1) != current:
            current = match.group(1)
            blocks.append([])
        blocks[-1].append(layer)
    blocks = [block for block in blocks if block]
    if len(blocks) < 3:
        raise MlkitError(f"--lr-decay: the layer names of {model.name} carry no block numbers (such as block_13 or "
                         "conv4_block3), so its depth cannot be counted; it works for transformers (KerasHub), "
                         "VGG, ResNet, MobileNetV2, EfficientNet, ConvNeXt, DenseNet and Xception")
    return blocks


def _leaf_entries(model):
    """(layer, True for a member of a block list / None) for every layer, nested models and block lists opened."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model) and hasattr(layer, "layers") and not isinstance(layer, keras.Sequential):
            yield from _leaf_entries(layer)
            continue
        blocks = _block_list(layer)
        if not blocks:
            yield layer, None
            continue
        yield from ((block, True) for block in blocks)
        held = {id(block) for block in blocks}
        yield from ((other, False) for other in _sublayers(layer) if id(other) not in held)


def _block_list(layer):
    import keras

    for value in vars(layer).values():
        if (isinstance(value, (list, tuple)) and len(value) >= 2
                and all(isinstance(item, keras.layers.Layer) for item in value)
                and len({type(item) for item in value}) == 1):
            return list(value)
    return None


def _sublayers(layer):
    import keras

    return [value for key, value in vars(layer).items() if not key.startswith("_") and isinstance(value, keras.layers.Layer)]


def _is_keras_class(layer):
    return type(layer).__module__.split(".")[0] == "keras"


def _unit_name(layers, fallback):
    with_weights = [layer.name for layer in layers if layer.weights]
    return with_weights[0] if with_weights else fallback


def backbone_pooling(backbone):
    """"avg", "max" or "none": how `build_backbone` pooled this model's output."""
    import keras

    last = backbone.layers[-1]
    if isinstance(last, keras.layers.GlobalAveragePooling2D):
        return "avg"
    if isinstance(last, keras.layers.GlobalMaxPooling2D):
        return "max"
    return "none"


def tapped_backbone(backbone, taps):
    """One model over the backbone's layers whose outputs are the given taps, in order.

    `"last"` is the backbone's own output; any other tap is a layer name,
    whose output is pooled as the backbone's is (global average or max
    pooling; raw maps for "none"). The model shares the backbone's layers,
    so freezing or training them acts on both.

    Args:
        backbone: a model from `build_backbone`.
        taps: "last" and layer names, in the order the outputs are wanted.

    A KerasHub backbone pools its own taps (`HubFeatures.tapped`: a
    transformer's block tokens are pooled as its features are, and its taps
    are named for its blocks, mlkit.hub_backbones).

    Returns:
        A `keras.Model` with one output per tap (a list, even for one tap).
    """
    import keras

    if hasattr(backbone, "tapped"):
        return backbone.tapped(taps)
    pooling = backbone_pooling(backbone)
    outputs = []
    for tap in taps:
        if tap == "last":
            outputs.append(backbone.output)
            continue
        try:
            x = backbone.get_layer(tap).output
        except ValueError:
            raise MlkitError(f"tap {tap!r}: {backbone.name} has no layer of that name; give a named depth "
                             "(mlkit.taps) or a layer name from its model.summary()") from None
        if pooling != "none":
            pool = keras.layers.GlobalAveragePooling2D if pooling == "avg" else keras.layers.GlobalMaxPooling2D
            x = pool(name=f"tap_{pooling}_{tap}")(x)
        outputs.append(x)
    return keras.Model(backbone.inputs, outputs, name=f"{backbone.name}_taps")


def named_taps(name):
    """{named depth: layer name} declared for a backbone (by registry name or Keras model name), or {}."""
    spec = BACKBONES.get(str(name).lower())
    return dict(spec.taps) if spec else {}
