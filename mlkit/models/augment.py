"""Augmentation codes (`--augment hwrszf`) and the Keras preprocessing layers they stand for.

The six codes of the COCO report (h height shift, w width shift, r rotation, s shear,
z zoom, f horizontal flip) plus v (vertical flip, for images with no up, such
as plankton), and the iMet report's photometric ones: b brightness, c contrast, g
grayscale. Codes are written in one canonical order, so `fh` and `hf` name the
same run; `none` means no augmentation.
"""

from mlkit.errors import MlkitError

# code: (what it does, for --help and errors)
CODES = {
    "h": "height shift up to 10%",
    "w": "width shift up to 10%",
    "r": "rotation up to 10 degrees",
    "s": "shear up to 0.1",
    "z": "zoom in or out up to 15%",
    "f": "horizontal flip",
    "v": "vertical flip",
    "b": "brightness up to +-20%",
    "c": "contrast up to +-20%",
    "g": "grayscale with probability 0.1",
}
NONE = "none"
SHIFT = 0.1
ROTATION_DEGREES = 10
SHEAR = 0.1
ZOOM = 0.15
PHOTOMETRIC = 0.2
GRAYSCALE_RATE = 0.1


def parse_augment(codes):
    """Canonical augmentation codes: 'fzh' -> 'hzf'; '', 'none' -> 'none'.

    Raises:
        MlkitError: naming an unknown or repeated code.
    """
    text = str(codes or "").strip().lower()
    if text in ("", NONE):
        return NONE
    unknown = sorted(set(text) - set(CODES))
    if unknown:
        listing = "; ".join(f"{code} {what}" for code, what in CODES.items())
        raise MlkitError(f"--augment {codes!r}: unknown code(s) {', '.join(unknown)}; codes are: {listing}; or 'none'")
    if len(set(text)) != len(text):
        raise MlkitError(f"--augment {codes!r}: a code is repeated")
    return "".join(code for code in CODES if code in text)


def augmentation_layers(codes, seed=0):
    """The Keras preprocessing layers for canonical codes, in a fixed order (geometry, then colour).

    They take float pixels in [0, 255] and keep that range; they are active in
    training only, so a model holding them predicts on clean images.
    """
    import keras  # here, not at the top: the CLI reads the codes for --help without loading TensorFlow

    codes = parse_augment(codes)
    if codes == NONE:
        return []
    layers = []
    if "h" in codes or "w" in codes:
        layers.append(keras.layers.RandomTranslation(
            SHIFT if "h" in codes else 0.0, SHIFT if "w" in codes else 0.0, fill_mode="reflect", seed=seed,
            name="aug_shift"))
    if "r" in codes:
        layers.append(keras.layers.RandomRotation(ROTATION_DEGREES / 360, fill_mode="reflect", seed=seed + 1,
                                                  name="aug_rotate"))
    if "s" in codes:
        layers.append(keras.layers.RandomShear(SHEAR, SHEAR, fill_mode="reflect", seed=seed + 2, name="aug_shear"))
    if "z" in codes:
        layers.append(keras.layers.RandomZoom(ZOOM, fill_mode="reflect", seed=seed + 3, name="aug_zoom"))
    flips = ("horizontal" if "f" in codes else "") + ("_and_vertical" if "f" in codes and "v" in codes else "")
    if "v" in codes and "f" not in codes:
        flips = "vertical"
    if flips:
        layers.append(keras.layers.RandomFlip(flips, seed=seed + 4, name="aug_flip"))
    if "b" in codes:
        layers.append(keras.layers.RandomBrightness(PHOTOMETRIC, value_range=(0, 255), seed=seed + 5,
                                                    name="aug_brightness"))
    if "c" in codes:
        layers.append(keras.layers.RandomContrast(PHOTOMETRIC, value_range=(0, 255), seed=seed + 6,
                                                  name="aug_contrast"))
    if "g" in codes:
        layers.append(keras.layers.RandomGrayscale(GRAYSCALE_RATE, seed=seed + 7, name="aug_grayscale"))
    return layers


def describe_codes():
    """One line per code, for --help."""
    return "\n".join(f"  {code}  {what}" for code, what in CODES.items())
