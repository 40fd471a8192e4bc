"""A learned objectness map: where `auto` looks for the object on a photographed background.

The boundary prior of `border.py` finds what differs from an image's border,
and a photograph's own objects (a leaf, a boat, a kite) differ from it too:
its boxes reach only about 0.6 mean IoU on stamps pasted on photographs
(BENCHMARKS.md), and no box drawn from that map does better than 0.69. A
network that has seen many objects on many backgrounds knows more: a small
convolutional head reads MobileNetV2's ImageNet feature maps up to block 10
(strides 2 to 16, brought to one 1/8 grid), with the boundary prior's own map
as one more channel, and gives each cell the share of it the object covers.

Two such heads were trained once, from two seeds, by
`benchmarks/train_objectness.py` on cut-outs that share nothing with the
benchmark: icons from Debian's icon themes, some drawn as they are and some as
silhouettes filled with a window of another photograph, pasted on the
photographs of Debian's GNOME, MATE and UKUI background packages. Their
weights ship with mlkit; the map is the mean of both heads' over the image and
its mirror image. Two sets ship (`HEAD_FILES`, picked by `--heads`): "2", whose
3 x 3 convolutions are dilated 1, 2, 4 and 8 (a cell sees 31 cells across, so
the head weighs an object against more of the scene around it), and "1", the
first release's, dilated up to 4, kept so that crops cut with it replay alike;
on the same training images "2" found better boxes on every benchmark seed
(BENCHMARKS.md). They hold for
MobileNetV2 with ImageNet weights only: `applies` tells whether a backbone has
the layers they read; any other backbone keeps the boundary prior alone.
Trained at 224 px, they find boxes best on images read at 288-384
(`config.OBJECTNESS_SIZE`).

Only the first ten blocks are read: the pretrained file this was trained on
(`../shared/pretrained`) holds ImageNet weights up to block 10 and other
weights after it; by its README those ten are Keras's own `imagenet` weights to
8-bit precision (Keras's file could not be downloaded here to compare).
"""

import io
from functools import lru_cache
from pathlib import Path

import numpy as np

from mlkit.errors import MlkitError

# The MobileNetV2 layers the head reads, their channels, and each one's stride.
LAYERS = ("expanded_conv_project_BN", "block_2_add", "block_5_add", "block_9_add", "block_10_project_BN")
CHANNELS = (16, 24, 32, 64, 96)
STRIDES = (2, 4, 8, 16, 16)
# The head's grid: 1/GRID_STRIDE of the input side.
GRID_STRIDE = 8
# The heads' weights files, by the `--heads` value that picks them: "2" (dilations up to 8, the default) and "1"
# (the first release's, dilations up to 4, kept so that a crop.json written with them replays as it was cut).
HEAD_FILES = {"2": Path(__file__).with_name("objectness_mobilenetv2_2.npz"),
              "1": Path(__file__).with_name("objectness_mobilenetv2.npz")}
HEADS = "2"
HEAD_FILE = HEAD_FILES[HEADS]
# Width of the head's hidden convolutions, and the dilation of each 3 x 3 one: the default heads' ("2"), and the
# first release's, which a weights file that does not record each head's own (one written before "2") holds.
WIDTH = 64
DILATIONS = (1, 2, 4, 8)
FIRST_DILATIONS = (1, 2, 4)


def applies(backbone):
    """Whether `backbone` has the layers the head reads, with their channel counts (a MobileNetV2)."""
    names = {layer.name: layer for layer in backbone.layers}
    return all(name in names and names[name].output.shape[-1] == channels
               for name, channels in zip(LAYERS, CHANNELS))


def head_layers(backbone):
    """The backbone's layers the head reads, in `LAYERS` order."""
    return [backbone.get_layer(name) for name in LAYERS]


def to_grid(maps, grid, strides=STRIDES):
    """float32 (N, gh, gw, c1 + c2 ...): maps (N, h, w, c) at `strides` brought to the `grid` (gh, gw).

    Finer maps are averaged over the fine cells of each grid cell (`auto.pooled`), coarser ones read at
    each grid cell's nearest cell: at a side that is not a multiple of 32 the maps' sizes round up, and
    this keeps every map on the stride-8 map's grid.
    """
    from mlkit.cropping.auto import pooled

    height, width = grid
    out = []
    for features, stride in zip(maps, strides):
        features = np.asarray(features, dtype="float32")
        if stride < GRID_STRIDE:
            features = np.stack([pooled(one, height, width) for one in features])
        elif stride > GRID_STRIDE:
            rows = (np.arange(height) * features.shape[1]) // height
            cols = (np.arange(width) * features.shape[2]) // width
            features = features[:, rows][:, :, cols]
        out.append(features.astype("float32"))
    return np.concatenate(out, axis=-1)


def head_inputs(maps):
    """float32 (N, gh, gw, 233): `to_grid`'s features on the stride-8 map's grid, and the boundary prior's map
    of the two finest ones."""
    from mlkit.cropping.auto import feature_heat

    grid = np.shape(maps[STRIDES.index(GRID_STRIDE)])[1:3]
    prior = np.stack([feature_heat([first, second]) for first, second in zip(maps[0], maps[1])])
    return np.concatenate([to_grid(maps, grid), to_grid([prior[..., None]], grid, STRIDES[1:2])], axis=-1)


def build_head(channels, dilations=DILATIONS):
    """The head (Keras): standardised features (and their difference from the image's mean) -> share of object.

    Its receptive field grows with `dilations`, one 3 x 3 convolution each.
    """
    import keras
    from keras import layers, ops

    features = keras.Input((None, None, channels), name="features")
    mean = ops.mean(features, axis=(1, 2), keepdims=True)
    x = layers.Concatenate()([features, features - mean])
    x = layers.Conv2D(WIDTH, 1, activation="relu")(x)
    for dilation in dilations:
        x = layers.Conv2D(WIDTH, 3, padding="same", dilation_rate=dilation, activation="relu")(x)
    return keras.Model(features, layers.Conv2D(1, 1, activation="sigmoid")(x), name="objectness")


@lru_cache(maxsize=2)
def load_heads(path=HEAD_FILE):
    """[(Keras head, mean, standard deviation)] from a weights file: one per head it holds."""
    path = Path(path)
    if not path.is_file():
        raise MlkitError(f"{path}: the objectness head's weights are missing; reinstall mlkit, or write them "
                         "with benchmarks/train_objectness.py")
    heads = []
    with np.load(path) as stored:
        for k in range(int(stored["heads"])):
            mean, std = stored[f"h{k}_mean"], stored[f"h{k}_std"]
            dilations = stored[f"h{k}_dilations"] if f"h{k}_dilations" in stored else FIRST_DILATIONS
            head = build_head(len(mean), tuple(int(d) for d in dilations))
            head.set_weights([stored[f"h{k}_w{i}"] for i in range(int(stored[f"h{k}_count"]))])
            heads.append((head, mean, std))
    return heads


def save_heads(heads, path):
    """Writes [(head, mean, std)] to `path` (.npz) as `load_heads` reads them, atomically."""
    from mlkit.files import write_bytes

    arrays = {"heads": np.array(len(heads))}
    for k, (head, mean, std) in enumerate(heads):
        weights = head.get_weights()
        arrays.update({f"h{k}_mean": np.asarray(mean, "float32"), f"h{k}_std": np.asarray(std, "float32"),
                       f"h{k}_count": np.array(len(weights)), f"h{k}_dilations": np.array(head_dilations(head))})
        arrays.update({f"h{k}_w{i}": np.asarray(w, "float32") for i, w in enumerate(weights)})
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_bytes(path, buffer.getvalue())


def head_dilations(head):
    """The dilation of each 3 x 3 convolution of a head `build_head` made, in order."""
    return [layer.dilation_rate[0] for layer in head.layers
            if getattr(layer, "kernel_size", None) == (3, 3)]


def objectness_maps(maps, mirrored=None, path=HEAD_FILE):
    """One (g, g) map in [0, 1] per image: the share of each cell the head takes for the object.

    Args:
        maps: the `LAYERS` outputs for a batch, each (N, h, w, c).
        mirrored: the same outputs for the batch flipped left to right, or None. Given, each map is the mean
            of the two (the mirrored one flipped back): on benchmarks/crop_quality.py's seed-0 photographs
            that raised the mean IoU by 0.02.
        path: the heads' weights file. The map is the mean of its heads' (each shipped file holds two,
            trained alike from two seeds: +0.02 on those photographs over either alone).
    """
    found = []
    inputs = head_inputs(maps)
    flipped = None if mirrored is None else head_inputs(mirrored)
    for head, mean, std in load_heads(Path(path)):
        found.append(np.asarray(head((inputs - mean) / std, training=False))[..., 0])
        if flipped is not None:
            found.append(np.asarray(head((flipped - mean) / std, training=False))[..., 0][:, :, ::-1])
    return list(np.mean(found, axis=0).astype("float64"))
