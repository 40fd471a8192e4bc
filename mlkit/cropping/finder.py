"""From pixels to a crop box, by any method: the one place `crop` and `look` find boxes.

`--method sokolova` (what `mlkit look` draws by default): the early layers'
activation map and the box spanning its peaks (`saliency.py`). `--method border`: the distance of
a stride-4 feature map from the image's border ring and the region around its
highest cell (`border.py`). `--method auto` (`mlkit crop`'s default): per image, the pixels that differ
from a plain border's colour, or else a photograph's map, refined in colour
(`auto.py`): the learned objectness head's on a MobileNetV2 (`objectness.py`),
the border distance of two stacked feature maps on any other backbone or with
`--photo-map border`. Each gives a map in [0, 1] and
a box in map cells; `BoxFinder` brings the box to the image's pixels and fits it.
"""

import logging

import numpy as np

from mlkit.cropping import objectness
from mlkit.cropping.boxes import fit_box
from mlkit.images import resize_array

log = logging.getLogger(__name__)

METHODS = ("sokolova", "border", "auto")
# Each method's --threshold when none is given (tuned on benchmarks/crop_quality.py's seed-0 images).
THRESHOLDS = {"sokolova": 0.5, "border": 0.4, "auto": 0.4}


class BoxFinder:
    """One network's maps and boxes for a batch of images, by `config.method`.

    Args:
        parts: the network's `ModelParts` (preprocessing, backbone, input side).
        config: a `CropConfig`.
    """

    def __init__(self, parts, config):
        from mlkit.cropping.border import stride_layer
        from mlkit.cropping.saliency import activation_model, early_layers

        self.config, self.image_size = config, parts.image_size
        # auto's map on a photographed background: the learned head's where the backbone has its layers.
        self.learned = config.method == "auto" and config.photo_map == "objectness" and \
            objectness.applies(parts.backbone)
        if config.method == "auto" and config.photo_map == "objectness" and not self.learned:
            log.info("crop: %s lacks the layers the objectness head reads (a MobileNetV2's); photographed "
                     "backgrounds use the border map", parts.name)
        if config.method == "sokolova":
            layers = early_layers(parts.backbone, config.layers)
        elif self.learned:
            layers = objectness.head_layers(parts.backbone)
        elif config.method == "auto" and config.stride >= 2:
            layers = [stride_layer(parts.backbone, stride, parts.image_size) for stride in (config.stride // 2,
                                                                                          config.stride)]
        else:
            layers = [stride_layer(parts.backbone, config.stride, parts.image_size)]
        self.model = activation_model(parts.backbone, layers, parts.preprocessing, parts.image_size)

    def heat_maps(self, images):
        """The method's maps (a list of (H, W) arrays in [0, 1]) of uint8 images of any size.

        `auto` gives a plain-bordered image's colour distance map, at the image's own size.
        """
        from mlkit.cropping.auto import colour_map, feature_heat, is_plain
        from mlkit.cropping.border import border_map
        from mlkit.cropping.saliency import activation_map

        batch = np.stack([resize_array(image, self.image_size) for image in images])
        outputs = self.model(batch, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]  # Keras unwraps a one-map list
        outputs = [np.asarray(output) for output in outputs]
        if self.config.method == "border":
            return [border_map(features) for features in outputs[0]]
        if self.config.method == "auto":
            plain = [is_plain(image, self.config.tolerance) for image in images]
            photographed = [i for i, flat in enumerate(plain) if not flat]
            learned = dict(zip(photographed, self.learned_maps(batch[photographed], [
                output[photographed] for output in outputs]))) if self.learned and photographed else {}
            return [colour_map(image) if plain[i] else learned[i] if self.learned
                    else feature_heat([output[i] for output in outputs]) for i, image in enumerate(images)]
        # NumPy, not `activation_map_tf`: on a CPU the TensorFlow version took 646 ms an image to NumPy's 282
        # (BENCHMARKS.md).
        return [activation_map([output[i] for output in outputs], self.config.min_std) for i in range(len(images))]

    def learned_maps(self, batch, outputs):
        """The objectness head's maps of resized images, from their outputs and their mirror images'."""
        mirrored = self.model(np.ascontiguousarray(batch[:, :, ::-1]), training=False)
        mirrored = [np.asarray(output) for output in (mirrored if isinstance(mirrored, (list, tuple)) else [mirrored])]
        return objectness.objectness_maps(outputs, mirrored, objectness.HEAD_FILES[self.config.heads])

    def cell_box(self, heat):
        """The method's box in map cells (top, left, bottom, right)."""
        from mlkit.cropping.auto import feature_box
        from mlkit.cropping.border import region_box
        from mlkit.cropping.saliency import peak_box

        threshold = threshold_of(self.config)
        if self.config.method == "border":
            return region_box(heat, threshold)
        if self.config.method == "auto":
            return feature_box(heat, threshold)
        return peak_box(heat, threshold, self.config.window)

    def pixel_box(self, image, heat):
        """The method's box in the image's pixels (top, left, bottom, right), before margin, size and aspect."""
        from mlkit.cropping.auto import REFINE_SCALE, colour_box, is_plain, refine_box

        if self.config.method == "auto" and is_plain(image, self.config.tolerance):
            return colour_box(image, self.config.tolerance)
        cells = self.cell_box(heat)
        if self.learned:  # the head's cells give the share of them the object covers: take them whole
            cells = (max(cells[0] - 0.5, 0), max(cells[1] - 0.5, 0), min(cells[2] + 0.5, heat.shape[0]),
                     min(cells[3] + 0.5, heat.shape[1]))
        height, width = image.shape[:2]
        scale = (height / heat.shape[0], width / heat.shape[1])
        box = (cells[0] * scale[0], cells[1] * scale[1], cells[2] * scale[0], cells[3] * scale[1])
        if self.config.method == "auto":
            return refine_box(image, box, REFINE_SCALE * self.image_size)
        return box

    def boxes(self, images, heats=None):
        """(top, left, bottom, right) in pixels of each image, after margin, minimum size and aspect."""
        config = self.config
        return [fit_box(self.pixel_box(image, heat), image.shape[:2], config.margin, config.min_size, config.aspect)
                for image, heat in zip(images, self.heat_maps(images) if heats is None else heats)]


def threshold_of(config):
    """The config's --threshold, or its method's own when it gives none."""
    return THRESHOLDS[config.method] if config.threshold is None else config.threshold
