"""Putting a tuned top back on its backbone, freezing part of it, and wrapping it for export.

Three models share one set of layers:

- the *network*: float pixels (S, S, 3) in [0, 255] -> the cache's
  preprocessing layers -> backbone -> top -> scores. This is what fine-tuning
  trains. Before any training it computes exactly top(cached features).
- the *exported model*: uint8 images of any size -> Resizing(antialias) ->
  network -> scores, plus the label decision (and, for regression, the
  targets back in original units).

A top tuned on several taps (mlkit.taps) gets them from one multi-output
model over the backbone's layers (`mlkit.backbones.tapped_backbone`), pooled
as cache-features pooled them and concatenated in the top's order, so the
network, the `.keras` file and the SavedModel hold the taps inside.

A caption top (image + caption, `mlkit.tuning.top`) makes both models take
two named inputs: the network {"pixels", "caption"} and the exported model
{"image", "caption"}, a caption being one tf.string per image. The caption
passes `mlkit.text.caption_vectorizer` with the top run's own vocabulary
inside the network, so training, the `.keras` file and the SavedModel all
tokenise it the same way, with TensorFlow ops only.

Every batch-norm layer of the network, in the backbone and in the top, runs
in inference mode during fine-tuning, whatever `--freeze` unfreezes: it keeps
the statistics the features were cached with, so the first training step
starts from the cached top's loss. In Keras 3 that takes `trainable = False`
on each such layer (`apply_freeze`); a `training=False` given when the
backbone is called inside the network is not kept once `fit` calls the
network with `training=True` (keras-team/keras#20285).
"""

import re
from pathlib import Path

import keras

from mlkit.backbones import (
    build_backbone,
    depth_blocks,
    freeze_units,
    preprocessing_layers,
    tapped_backbone,
    transformer_blocks,
)
from mlkit.bottlenecks.cache import identity_differences
from mlkit.errors import MlkitError
from mlkit.layers import LabelDecision, Unscale

CAPTION = "caption"


def rebuild_backbone(attrs, weights=None):
    """The cache's backbone, rebuilt and checked against the cache's weights hash.

    Args:
        attrs: the cache's attributes.
        weights: override where the weights come from ("imagenet", "none" or a
            file), e.g. when the cache was made from a file that has moved.
            Defaults to what the cache records.

    Returns:
        (backbone model, BackboneSpec).

    Raises:
        MlkitError: when the rebuilt weights differ from those the features were cached with.
    """
    weights = weights or attrs["weights"]
    # A KerasHub or file backbone is rebuilt from what the cache recorded (its preset or path, and tap).
    model, info = build_backbone(attrs.get("backbone_source") or attrs["backbone"], weights, int(attrs["image_size"]),
                                 attrs["pooling"], seed=int(attrs.get("seed", 0)), tap=attrs.get("tap"))
    if info["weights_sha256"] != attrs["weights_sha256"]:
        raise MlkitError(
            f"the {attrs['backbone']} rebuilt from weights {weights!r} is not the network the cache was made "
            f"with (weights sha256 {info['weights_sha256'][:12]}... vs the cache's {attrs['weights_sha256'][:12]}...). "
            "Fine-tuning on it would not start from the tuned top's features: pass --weights with the file the "
            "cache used, or rerun cache-features and tune-top with these weights")
    return model, info["spec"]


def check_top_matches(config, cache):
    """Refuses a top trained on another cache: other rows, features, preprocessing, labels or task.

    The top's record holds the identity of the cache it was tuned on
    (`FeatureCache.identity`); a record from before identities were kept is
    compared by the cache's file name.
    """
    problems = []
    tuned_on = Path(config.cache).name
    if config.cache_identity:
        problems += identity_differences(config.cache_identity, cache.identity)
    elif tuned_on and tuned_on != cache.path.name:
        problems.append("its record predates cache identities, so only the file names were compared")
    if config.task != cache.task:
        problems.append(f"task {config.task} vs the cache's {cache.task}")
    shape = cache.taps_shape(config.tap_list)
    if tuple(config.input_shape) != tuple(shape):
        problems.append(f"input shape {tuple(config.input_shape)} vs the cache's features {shape}")
    if cache.task != "regression" and list(config.label_names) != list(cache.label_names):
        problems.append("its label names differ from the cache's")
    if problems:
        raise MlkitError(f"top {config.run} was not tuned on {cache.path} but on {config.cache or 'another cache'} "
                         f"({'; '.join(problems)}); fine-tune it with the cache it was tuned on, or tune a top on "
                         f"this one (mlkit tune-top {cache.path})")


def build_network(backbone, spec, attrs, top, vocabulary=None, taps=("last",)):
    """float pixels (S, S, 3) in [0, 255] -> preprocessing -> backbone -> top -> float32 scores.

    Args:
        backbone: the model from `rebuild_backbone`.
        spec: its `BackboneSpec`.
        attrs: the cache's attributes (image size, preprocessing).
        top: the stage-2 top; a caption top takes {"features", "tokens"}.
        vocabulary: a caption top's vocabulary (`TopConfig.vocabulary`). With
            it the network takes {"pixels", "caption"} and vectorises the
            caption strings itself. Defaults to None (pixels only).
        taps: the taps the top reads (`TopConfig.tap_list`). Defaults to
            ("last",), the backbone's output.
    """
    size = int(attrs["image_size"])
    pixels = keras.Input((size, size, 3), dtype="float32", name="pixels")
    x = pixels
    for layer in preprocessing_layers(spec, attrs["preprocess"], attrs.get("zmuv_mean"), attrs.get("zmuv_std")):
        x = layer(x)
    features = backbone_features(backbone, x, taps)
    if vocabulary:
        from mlkit.text import caption_vectorizer

        caption = keras.Input((), dtype="string", name=CAPTION)
        inputs = {"pixels": pixels, CAPTION: caption}
        scores = top({"features": features, "tokens": caption_vectorizer(vocabulary)(caption)})
    else:
        inputs = pixels
        scores = top(features)
    # Under mixed precision the head computes in float16; losses and decisions want float32.
    scores = keras.layers.Activation("linear", dtype="float32", name="scores")(scores)
    return keras.Model(inputs, scores, name="network")


def backbone_features(backbone, x, taps=("last",)):
    """The backbone's features of `x` as a top reads them: its output, or its taps' vectors side by side.

    The taps come from one model sharing the backbone's layers, so `--freeze`
    (on `backbone.layers`) and `keep_statistics` act on them as on the backbone.
    """
    if tuple(taps) == ("last",):
        return backbone(x, training=False)
    outputs = tapped_backbone(backbone, taps)(x, training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return keras.layers.Concatenate(name="taps")(outputs) if len(outputs) > 1 else outputs[0]


def average_tops(tops):
    """One top whose scores are the mean of several tops' scores on the same cached features.

    The backbone runs once and every member reads its features, so an
    ensemble costs only its extra heads at inference. The members keep their
    own weights (each is wrapped, unchanged, as `top_1` ... `top_K`, so their
    layer names do not clash), and the inputs are whatever the first member
    takes (a feature vector, or a dict of named inputs), so any top that fits
    the cache fits here. The result is named "top", as a single top is, and
    goes where one goes (`build_network`).

    Args:
        tops: the member tops, best first; all take the same inputs.

    Returns:
        A Keras model: the members' inputs -> their mean scores. One top is returned as it is.
    """
    tops = list(tops)
    if not tops:
        raise MlkitError("an ensemble needs at least one top")
    if len(tops) == 1:
        return tops[0]
    inputs = keras.tree.map_structure(lambda t: keras.Input(t.shape[1:], dtype=t.dtype, name=t.name), tops[0].input)
    members = [keras.Model(top.input, top.output, name=f"top_{position}")(inputs)
               for position, top in enumerate(tops, 1)]
    return keras.Model(inputs, keras.layers.Average(name="top_average")(members), name="top")


def takes_captions(model):
    """Whether a network or exported model has a "caption" input."""
    return isinstance(model.input, dict) and CAPTION in model.input


def resolve_freeze(backbone, freeze):
    """The number of leading backbone units to freeze for `--freeze all|N|P%|blockname`.

    Units are what `mlkit.backbones.freeze_units` counts: a CNN's layers, a
    transformer's embedding, blocks and final norm. `all` freezes every unit;
    a number freezes that many leading units (as counted by `backbone.layers`
    for a CNN, the input layer included, so VGG16's 15 freezes blocks 1-4); a
    percentage freezes that share of the units, rounded (`75%` of
    MobileNetV2's 154 layers is 116, the start of block_13; of ViT-B's 14
    units, 10: the embedding and blocks 1-9), which works for every backbone;
    a name freezes every unit before the first unit whose name starts with it
    (`block5` for VGG16 is also 15; `transformer_block_10` for ViT-B), and a
    transformer's `block_N` every unit before its N-th block, whatever its
    family calls it (`block_10` is ViT-B's `transformer_block_10`, DINOv2's
    `layers_9`, SigLIP's `..._encoder_block_9`), as its taps are named.

    Returns:
        The run-name field: "all" or the number of frozen units.
    """
    text = str(freeze).strip().lower()
    layers = [layer for layer, _ in freeze_units(backbone)]
    if text == "all":
        return "all"
    if text.endswith("%") and text[:-1].replace(".", "", 1).isdigit() and float(text[:-1]) <= 100:
        text = str(int(round(len(layers) * float(text[:-1]) / 100)))
    if text.isdigit():
        count = int(text)
        if count > len(layers):
            what = "layers" if len(layers) == len(backbone.layers) else "units (embedding, blocks, head)"
            raise MlkitError(f"--freeze {freeze}: {backbone.name} has only {len(layers)} {what}")
        return "all" if count == len(layers) else count
    blocks = transformer_blocks(backbone)
    numbered = re.fullmatch(r"block_(\d+)", text)
    if blocks and numbered and 1 <= int(numbered.group(1)) <= len(blocks):
        text = blocks[int(numbered.group(1)) - 1].name.lower()  # a transformer's block_N, as its taps are named
    for position, name in enumerate(layers):
        if name.lower().startswith(text):
            return position
    prefixes = sorted({name.split("_")[0] for name in layers})
    raise MlkitError(f"--freeze {freeze!r}: no layer of {backbone.name} is named like that; use all, a number of "
                     f"layers (0-{len(layers)}), a percentage (75%) or a block prefix such as: {', '.join(prefixes[:20])}")


def layerwise_lr_scales(backbone, decay):
    """{id(variable): learning-rate factor} for `finetune --lr-decay` (mlkit.optimizers).

    The backbone's blocks (`mlkit.backbones.depth_blocks`: a transformer's
    embeddings and blocks, a CNN's stem and named blocks) count depth from
    the last: its variables train at lr, the block below at lr * decay, and so
    on down to the embeddings (or stem) at lr * decay ** (blocks - 1). The
    top, and anything else not in the backbone, trains at lr.

    Args:
        backbone: the backbone inside the network.
        decay: the factor per block, in (0, 1]; 1 gives {} (one rate for all).
    """
    if float(decay) == 1.0:
        return {}
    blocks = depth_blocks(backbone)
    return {id(variable): float(decay) ** (len(blocks) - 1 - depth)
            for depth, layers in enumerate(blocks) for layer in layers for variable in layer.weights}


def apply_freeze(network, backbone, frozen):
    """Sets which backbone layers train; every batch norm of the network stays in inference mode.

    Args:
        network: the network from `build_network` (its top's batch norms are
            kept in inference mode too).
        backbone: the backbone inside it.
        frozen: from `resolve_freeze`: "all" or the number of leading layers to freeze.
    """
    backbone.trainable = frozen != "all"
    if frozen != "all":
        for position, (_, layers) in enumerate(freeze_units(backbone)):
            for layer in layers:
                layer.trainable = position >= int(frozen)
    keep_statistics(network)


def keep_statistics(model):
    """Sets every BatchNormalization layer in `model`, nested models included, to `trainable = False`.

    Keras 3 runs such a layer in inference mode even inside `fit`: it
    normalises with its moving statistics and never updates them, and its
    scale and offset stay fixed too (as in the Keras transfer-learning guide).
    """
    for layer in walk_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def walk_layers(model):
    """Every layer of a model, depth first, nested models' layers included."""
    for layer in getattr(model, "layers", ()):
        yield layer
        yield from walk_layers(layer)


def build_export_model(network, attrs, rule, task, scale=None):
    """uint8 images (any size) -> resize -> network -> {"scores", "labels"}.

    A network with a caption input gives a model of two inputs,
    {"image": uint8 (N, H, W, 3), "caption": string (N,)}.

    Args:
        network: the trained network from `build_network`.
        attrs: the cache's attributes (image size).
        rule: the fitted rule's dict (`Rule.to_dict()`); unused for regression.
        task: multilabel, multiclass or regression.
        scale: regression: the `TargetScale` the head was trained with.

    Returns:
        A Keras model. Multilabel and multiclass: "scores" (N, L) float32 and
        "labels" (N, L) uint8 decisions (one-hot for multiclass). Regression:
        "scores" and "labels" are both the predictions in original units.
    """
    size = int(attrs["image_size"])
    image = keras.Input((None, None, 3), dtype="uint8", name="image")
    pixels = keras.layers.Resizing(size, size, interpolation="bilinear", antialias=True, dtype="float32",
                                   name="resize")(image)
    # training=False is written into the graph: the exported model is never trained, and Keras 3's image
    # preprocessing layers (Resizing included) default to training=True, which a direct call `model(images)`
    # would otherwise pass on to the top's dropout (scores varied from call to call).
    if takes_captions(network):
        caption = keras.Input((), dtype="string", name=CAPTION)
        inputs = {"image": image, CAPTION: caption}
        scores = network({"pixels": pixels, CAPTION: caption}, training=False)
    else:
        inputs = image
        scores = network(pixels, training=False)
    if task == "regression":
        if scale is None:
            raise MlkitError("a regression model is exported with the TargetScale its head was trained with")
        predictions = Unscale(scale.low, scale.high, name="unscale")(scores)
        outputs = {"scores": predictions, "labels": keras.layers.Identity(name="labels")(predictions)}
    else:
        outputs = {"scores": scores, "labels": LabelDecision(rule, name="labels")(scores)}
    return keras.Model(inputs, outputs, name="mlkit_model")
