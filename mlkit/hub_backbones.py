"""KerasHub backbones: `--backbone hub:PRESET` (`pip install -e ".[hub]"`).

A preset is a KerasHub name (`dinov2_small`, `siglip_base_patch16_224`,
`resnet_50_imagenet`, ...; downloaded once to KerasHub's cache) or a preset
folder (`hub:/path/to/preset`, as `Backbone.save_to_preset` writes it). The
registry (mlkit.backbones) calls `build_hub_backbone`, which returns what a
`keras.applications` backbone gives: a model from preprocessed pixels to
features, and its facts.

- Preprocessing is the preset's own image converter: its per-channel scale
  and offset become a stock Rescaling layer (mode "converter"); mlkit resizes
  the whole image to the converter's size, as it does for every backbone
  (the converter would crop to the aspect ratio first).
- Image-text presets (SigLIP, CLIP) give their image tower.
- Features: a CNN's last feature map pooled as `--pooling` says (avg, max, or
  none for the map). A transformer's final (normalised) tokens: `avg`, the
  default, is the mean of its patch tokens, leaving out the class and
  register tokens; `max` their maximum; `none` the patch tokens as an
  (H/P, W/P, D) map; `cls` the model's own image embedding (the class token
  of ViT, DINOv2/v3 and CLIP; SigLIP's attention-pooled head, SigLIP
  having no class token). The mean of patch tokens is the default because
  every ViT-style family has patch tokens while not all have a class token,
  it is what `--pooling avg` means for a CNN (the mean over positions), and
  it is one of the two halves of DINOv2's own linear-probe features (class
  token and mean of patch tokens); `cls` is one option away. Neither was
  measured against the other here: no preset can be downloaded on this
  machine.
- Taps (`cache-features --taps`, mlkit.taps) are named for the family's
  blocks: `block_N` is the output tokens of the N-th transformer block
  (1-based; DINOv2's pyramid output `stageN`, SigLIP's and CLIP's
  `encoder_block_{N-1}`), before the final norm, pooled as the features are
  (mean of patch tokens, max, or class token); `stage_N` is a CNN's N-th
  pyramid output (ResNet's P2-P5: the end of stacks 0-3), pooled globally.
  A layer name of the image model works too. ViT runs its blocks inside one
  layer (`ViTEncoder`), so their outputs are not nodes of its graph: a
  tapped ViT rebuilds the encoder's forward pass from its block layers
  (`mlkit.compat.unrolled_vit`, checked on KerasHub 0.32).
- The features model (`HubFeatures`, registered as `mlkit>HubFeatures`)
  is saved as the image model's KerasHub config and weights, so a
  fine-tuned model's `.keras` loads back (with `import mlkit.layers`).
"""

import re
from dataclasses import dataclass, replace
from pathlib import Path

import keras

from mlkit.errors import MlkitError

EXTRA = 'pip install -e ".[hub]"'


@dataclass(frozen=True)
class TokenFamily:
    """How a transformer family lays out its output tokens.

    Attributes:
        prefix: config keys whose values count the tokens before the patch
            tokens; `class_token` counts one (or none when its config key
            says False).
        class_token: config key saying whether there is a class token, or
            True (always one) / False (never).
        tokens_layer: the layer whose output holds the final tokens, when
            the model's own output is already pooled (SigLIP). "" for the
            model's output.
    """

    prefix: tuple = ()
    class_token: object = True
    tokens_layer: str = ""


# The transformer families tested (tests/test_hub_backbones.py); CNN families need no entry.
TOKEN_FAMILIES = {
    "ViTBackbone": TokenFamily(class_token="use_class_token"),
    "DINOV2Backbone": TokenFamily(prefix=("num_register_tokens",)),
    "DINOV3Backbone": TokenFamily(prefix=("num_register_tokens",)),
    "CLIPVisionEncoder": TokenFamily(),
    "SigLIPVisionEncoder": TokenFamily(class_token=False, tokens_layer="post_layer_norm"),
}


def import_keras_hub():
    """keras_hub, or an error saying how to install it."""
    try:
        import keras_hub
    except ImportError:
        raise MlkitError(f"--backbone hub:... needs KerasHub: {EXTRA} (or pip install keras-hub)") from None
    return keras_hub


def build_hub_backbone(spec, weights, image_size, pooling, seed):
    """The preset's image model, cut to pooled features, and its facts (see `mlkit.backbones.build_backbone`)."""
    keras_hub = import_keras_hub()
    load_weights = _load_weights(spec, weights)
    if not load_weights:
        keras.utils.set_random_seed(seed)
    with explain_missing_preset(spec.source):
        converter = _image_converter(keras_hub, spec.source)
        preset_size = _converter_size(converter)
        size = int(image_size or preset_size or 224)
        overrides = {} if image_size is None or size == preset_size else {"image_shape": (size, size, 3)}
        try:
            backbone = keras_hub.models.Backbone.from_preset(spec.source, load_weights=load_weights, **overrides)
        except (TypeError, ValueError) as error:
            raise MlkitError(f"--backbone hub:{spec.source} at {size} px: {str(error).splitlines()[0][:300]}") from None
    image_model = getattr(backbone, "vision_encoder", None) or backbone
    if isinstance(weights, str) and Path(weights).is_file():
        image_model.load_weights(weights)
    model = features_model(image_model, pooling)
    scale, offset = _converter_numbers(converter)
    resolved = replace(spec, default_size=preset_size or size, scale=scale, offset=offset)
    settings = {"backbone_source": f"hub:{spec.source}", "converter": f"scale={list(scale)} offset={list(offset)}"}
    return model, {"image_size": size, "spec": resolved, "settings": settings}


def _load_weights(spec, weights):
    text = str(weights).lower()
    if text in ("none", ""):
        return False
    if text == "imagenet" or Path(str(weights)).is_file():
        return True
    raise MlkitError(f"--weights {weights!r} for hub:{spec.source}: use imagenet (the preset's own weights), none "
                     "(seeded random) or a weights file saved from this preset's image model")


def features_model(image_model, pooling):
    """The image model cut to pooled features (`HubFeatures`)."""
    return HubFeatures(image_model, pooling, name=f"{type(image_model).__name__.lower()}_features")


@keras.saving.register_keras_serializable(package="mlkit")
class HubFeatures(keras.Model):
    """A KerasHub image model's pooled features: a functional model on the image model's own graph.

    Its layers are the image model's (and the pooling's), not one nested
    model, so `--freeze` reaches the transformer's blocks and
    `keep_statistics` a CNN's batch norms. It is saved as the image model's
    KerasHub config plus the pooling and rebuilt from them, as KerasHub saves
    its own tasks: saving the graph layer by layer would need every KerasHub
    layer's `get_config` to round-trip, and some do not (keras-hub 0.32's
    `ViTPatchingAndEmbedding` writes `num_patches`, which its constructor
    refuses), so such a model's `.keras` would not load back.

    Args:
        image_model: a KerasHub backbone taking images (a ViT, DINOv2, CLIP or
            SigLIP vision encoder, or any CNN).
        pooling: "avg", "max", "none" or "cls" (see the module's docstring).
        taps: with taps, the outputs are a list, one pooled tensor per tap in
            this order: "last" (the features) and tap names (`block_N`,
            `stage_N` or a layer name; see the module's docstring).
            Defaults to () (one output, the features).
    """

    def __init__(self, image_model, pooling="avg", taps=(), **kwargs):
        output, points = _tapped_graph(image_model) if taps else (image_model.output, {})
        final = _pooled(image_model, pooling, output)
        outputs = [final if tap == "last" else _pooled_tap(image_model, points, tap, pooling) for tap in taps] or final
        super().__init__(image_model.inputs, outputs, **kwargs)
        self.image_model = image_model
        self.pooling = pooling
        self.taps = tuple(taps)

    def tapped(self, taps):
        """The same image model (its layers shared) with one output per tap (`mlkit.backbones.tapped_backbone`)."""
        return HubFeatures(self.image_model, self.pooling, tuple(taps), name=f"{self.name}_taps")

    def get_config(self):
        return {"image_model": keras.saving.serialize_keras_object(self.image_model), "pooling": self.pooling,
                "taps": list(self.taps), "name": self.name, "trainable": self.trainable}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["image_model"] = keras.saving.deserialize_keras_object(config["image_model"])
        return cls(**config)


def _pooled(image_model, pooling, output):
    """The features tensor from the image model's `output`: a CNN's map or a transformer's tokens, pooled."""
    family = TOKEN_FAMILIES.get(type(image_model).__name__)
    if len(output.shape) != 4 and family and family.tokens_layer and pooling != "cls":
        output = _layer_ending(image_model, family.tokens_layer).output
    return _pool(image_model, output, pooling, "hub")


def _tapped_graph(image_model):
    """(the image model's output, {tap name: tensor}) on one graph that holds every tap.

    ViT runs its blocks inside one layer, so for taps its encoder's forward
    pass is rebuilt from its block layers (`mlkit.compat.unrolled_vit`, the
    same layers and weights); every other family's graph already holds them.
    """
    if type(image_model).__name__ == "ViTBackbone":
        from mlkit.compat import unrolled_vit

        blocks, output = unrolled_vit(image_model)
        return output, {f"block_{n}": tensor for n, tensor in enumerate(blocks, 1)}
    return image_model.output, tap_points(image_model)


def _pooled_tap(image_model, points, tap, pooling):
    """A tap's tensor (`points`, or a layer's output), pooled as the features are (layers named `tap_..._<tap>`)."""
    if tap in points:
        return _pool(image_model, points[tap], pooling, f"tap_{tap}")
    try:
        layer = image_model.get_layer(tap)
    except ValueError:
        offered = f"{', '.join(points)} or a layer name of its model.summary()" if points else "no taps"
        raise MlkitError(f"tap {tap!r}: KerasHub {type(image_model).__name__} has no such block, stage or layer; "
                         f"it offers {offered}. {TAP_FAMILIES}") from None
    return _pool(image_model, layer.output, pooling, f"tap_{tap}")


TAP_FAMILIES = ("Blocks are offered by ViT, DINOv2, SigLIP and CLIP (block_N), stages by CNN families with pyramid "
                "outputs such as ResNet (stage_N).")


def tap_points(image_model):
    """{tap name: tensor on the image model's graph}: `block_N` for a transformer, `stage_N` for a CNN, from 1.

    A transformer's blocks are its pyramid outputs (DINOv2's `stage1`...,
    KerasHub's public `pyramid_outputs`; its `stem` is the embedding, not a
    block) or its top-level `encoder_block_i` layers (SigLIP, CLIP). ViT has
    neither (`_tapped_graph` rebuilds its blocks).
    """
    pyramid = dict(getattr(image_model, "pyramid_outputs", None) or {})
    if type(image_model).__name__ not in TOKEN_FAMILIES:
        return {f"stage_{n}": tensor for n, tensor in enumerate(pyramid.values(), 1)}
    blocks = [tensor for key, tensor in pyramid.items() if key != "stem"]
    if not blocks:
        layers = [layer for layer in image_model.layers if re.search(r"encoder_block_\d+$", layer.name)]
        blocks = [layer.output for layer in sorted(layers, key=lambda layer: int(layer.name.rsplit("_", 1)[1]))]
    return {f"block_{n}": tensor for n, tensor in enumerate(blocks, 1)}


def _pool(image_model, output, pooling, prefix):
    """A CNN's map pooled globally, or a transformer's tokens pooled as `pooling` says; layers named `prefix_...`."""
    name = type(image_model).__name__
    if len(output.shape) == 4:
        if pooling == "cls":
            raise MlkitError(f"--pooling cls takes a transformer's class token; {name} is a CNN: use avg, max or none")
        pools = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D}
        return pools[pooling](name=f"{prefix}_{pooling}_pool")(output) if pooling in pools else output
    family = TOKEN_FAMILIES.get(name)
    if family is None:
        raise MlkitError(f"KerasHub {name} gives {len(output.shape) - 1}-d outputs that mlkit does not know how to "
                         f"pool; supported transformer families: {', '.join(sorted(TOKEN_FAMILIES))}, and any CNN")
    config = image_model.get_config()
    if pooling == "cls":
        return _class_token(output, family, config, prefix)
    patches = keras.layers.Cropping1D((_prefix(family, config), 0), name=f"{prefix}_patch_tokens")(output)
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling1D(name=f"{prefix}_avg_pool")(patches)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling1D(name=f"{prefix}_max_pool")(patches)
    side = int(round(patches.shape[1] ** 0.5))
    if side * side != patches.shape[1]:
        raise MlkitError(f"--pooling none: {name} gives {patches.shape[1]} patch tokens at "
                         f"{image_model.inputs[0].shape[1]} px, not a square grid")
    return keras.layers.Reshape((side, side, patches.shape[-1]), name=f"{prefix}_patch_map")(patches)


def _layer_ending(model, suffix):
    """The layer named `suffix`, or ending in it (a tower's layers carry its name as a prefix)."""
    for layer in model.layers:
        if layer.name == suffix or layer.name.endswith(f"_{suffix}"):
            return layer
    raise MlkitError(f"{model.name} has no layer {suffix!r}; this KerasHub version lays the model out differently")


def _has_class_token(family, config):
    if isinstance(family.class_token, bool):
        return family.class_token
    return bool(config.get(family.class_token, True))


def _prefix(family, config):
    return int(_has_class_token(family, config)) + sum(int(config.get(key) or 0) for key in family.prefix)


def _class_token(output, family, config, prefix):
    if len(output.shape) == 2:
        return output  # already the model's own pooled embedding (SigLIP's attention pooling)
    if not _has_class_token(family, config):
        raise MlkitError("--pooling cls: this model has no class token (nor one in its blocks' outputs, for a tap); "
                         "use --pooling avg")
    token = keras.layers.Cropping1D((0, output.shape[1] - 1), name=f"{prefix}_class_token")(output)
    return keras.layers.Flatten(name=f"{prefix}_cls")(token)


def _image_converter(keras_hub, preset):
    try:
        return keras_hub.layers.ImageConverter.from_preset(preset)
    except ValueError:
        return None  # a preset without one: mlkit says so when it is needed (--preprocess inet)


def _converter_size(converter):
    size = getattr(converter, "image_size", None)
    if not size or size[0] is None:
        return None
    if size[0] != size[1]:
        raise MlkitError(f"the preset's image converter takes {size[0]}x{size[1]} images; mlkit's are square: "
                         "pass --image-size")
    return int(size[0])


def _converter_numbers(converter):
    """The converter's (scale, offset) per channel or as one number; (1/255, 0) without a converter."""
    import numpy as np

    if converter is None:
        return (1 / 255,), (0.0,)
    scale = 1.0 if converter.scale is None else converter.scale
    offset = 0.0 if converter.offset is None else converter.offset
    return tuple(np.ravel(scale).astype(float).tolist()), tuple(np.ravel(offset).astype(float).tolist())


def explain_missing_preset(preset):
    """A context: a preset that cannot be fetched becomes an error naming it and KerasHub's cache folder."""
    from mlkit.compat import explaining_hub_downloads

    return explaining_hub_downloads(preset, MlkitError, _missing_preset_message)


def _missing_preset_message(preset, handle, folder, error):
    where = f"{handle} in KerasHub's cache, {folder}" if handle else f"KerasHub's cache, {folder}"
    return (f"could not load the KerasHub preset {preset!r} ({type(error).__name__}: {str(error).splitlines()[0][:200]}). "
            f"It is looked for as {where} ($KAGGLEHUB_CACHE moves it); on a machine with network, run "
            f"`python -c \"import keras_hub; keras_hub.models.Backbone.from_preset('{preset}')\"` and copy that "
            "folder here, or pass a preset folder: --backbone hub:/path/to/preset")


def preset_is_cached(preset):
    """Whether a preset can be loaded without the network: a preset folder, or a download in KerasHub's cache."""
    from mlkit.compat import hub_preset_location

    if Path(preset).is_dir():
        return True
    handle, folder = hub_preset_location(preset)
    # kagglehub makes the folder before it downloads: only its config.json says a preset is there.
    return bool(handle) and (Path(folder) / handle_path(handle) / "config.json").is_file()


def handle_path(handle):
    """Where kagglehub keeps `kaggle://owner/model/keras/variant/version`: models/owner/model/keras/variant/version."""
    parts = handle.removeprefix("kaggle://").split("/")
    return Path("models", *parts)
