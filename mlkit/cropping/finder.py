"""From pixels to a crop box, by either method: the one place `crop` and `look` find boxes.

`--method sokolova` (the default): the early layers' activation map and the
box spanning its peaks (`saliency.py`). `--method border`: the distance of
a stride-4 feature map from the image's border ring and the region around its
highest cell (`border.py`). Both give a map in [0, 1] and a box in map
cells; `BoxFinder` brings the box to the image's pixels and fits it.
"""

import numpy as np

from mlkit.cropping.boxes import fit_box
from mlkit.images import resize_array

METHODS = ("sokolova", "border")
# Each method's --threshold when none is given (tuned on benchmarks/crop_quality.py's seed-0 images).
THRESHOLDS = {"sokolova": 0.5, "border": 0.4}


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
        if config.method == "sokolova":
            layers = early_layers(parts.backbone, config.layers)
        else:
            layers = [stride_layer(parts.backbone, config.stride, parts.image_size)]
        self.model = activation_model(parts.backbone, layers, parts.preprocessing, parts.image_size)

    def heat_maps(self, images):
        """The method's maps (a list of (H, W) arrays in [0, 1]) of uint8 images of any size."""
        from mlkit.cropping.border import border_map
        from mlkit.cropping.saliency import activation_map

        batch = np.stack([resize_array(image, self.image_size) for image in images])
        outputs = self.model(batch, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]  # Keras unwraps a one-map list
        if self.config.method == "border":
            return [border_map(features) for features in np.asarray(outputs[0])]
        # NumPy, not `activation_map_tf`: on a CPU the TensorFlow version took 646 ms an image to NumPy's 282
        # (BENCHMARKS.md).
        outputs = [np.asarray(output) for output in outputs]
        return [activation_map([output[i] for output in outputs], self.config.min_std) for i in range(len(images))]

    def cell_box(self, heat):
        """The method's box in map cells (top, left, bottom, right)."""
        from mlkit.cropping.border import region_box
        from mlkit.cropping.saliency import peak_box

        threshold = threshold_of(self.config)
        if self.config.method == "border":
            return region_box(heat, threshold)
        return peak_box(heat, threshold, self.config.window)

    def boxes(self, images, heats=None):
        """(top, left, bottom, right) in pixels of each image, after margin, minimum size and aspect."""
        config = self.config
        found = []
        for image, heat in zip(images, self.heat_maps(images) if heats is None else heats):
            cells = self.cell_box(heat)
            height, width = image.shape[:2]
            scale = (height / heat.shape[0], width / heat.shape[1])
            box = (cells[0] * scale[0], cells[1] * scale[1], cells[2] * scale[0], cells[3] * scale[1])
            found.append(fit_box(box, (height, width), config.margin, config.min_size, config.aspect))
        return found


def threshold_of(config):
    """The config's --threshold, or its method's own when it gives none."""
    return THRESHOLDS[config.method] if config.threshold is None else config.threshold
