"""Looking at images with a network's eyes: content-aware crops and where a model looks.

`mlkit.crop(manifest, out)` crops every image to where a backbone's first
layers respond (Sokolova 2019's auto-crop); `mlkit.look(model, images, out)` draws
those early-layer maps and Grad-CAM maps of a fine-tuned model, beside the
backbone's before fine-tuning. This room sits above the stages: it reads
backbones (the registry) and exported models (stage 3). Public names load on
first use, so `mlkit --help` never pays for TensorFlow.
"""

import importlib

_EXPORTS = {
    "crop": "mlkit.looking.crop",
    "CropConfig": "mlkit.looking.crop",
    "CropResult": "mlkit.looking.crop",
    "Cropper": "mlkit.looking.crop",
    "look": "mlkit.looking.look",
    "activation_map": "mlkit.cropping.saliency",
    "peak_box": "mlkit.cropping.saliency",
    "fit_box": "mlkit.cropping.boxes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mlkit.looking' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
