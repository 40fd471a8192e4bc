"""The settings of `mlkit crop` (and of the crop box `mlkit look` draws), declared once."""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlkit.cropping.boxes import ASPECTS
from mlkit.cropping.finder import METHODS, THRESHOLDS
from mlkit.cropping.objectness import HEAD_FILES, HEADS
from mlkit.errors import MlkitError, check_choice
from mlkit.images import parse_background
from mlkit.options import option

# What `mlkit crop` writes beside its manifest: the settings and the counts.
SETTINGS = "crop.json"
# The map `mlkit look` draws unless told: the first layers' response (Sokolova 2019's figure 9), which a
# fine-tuned network changes. `auto`, the crop's default, draws a plain image's colour distance instead:
# the same for every network, so a before/after comparison would show nothing.
LOOK_METHOD = "sokolova"
# auto's maps on a photographed background.
PHOTO_MAPS = ("objectness", "border")
# The side images are read at unless --image-size is given: auto's objectness head on MobileNetV2 found boxes
# best at 288-384 px (benchmarks/crop_quality.py's seed-0 photographs: 0.654 at 224, 0.676 at 320, 0.652 at
# 448), the other maps were tuned at 224.
IMAGE_SIZE, OBJECTNESS_SIZE = 224, 320
# Settings added after crop.json first shipped, with the value a crop.json without them was made with.
ADDED_SETTINGS = {"photo_map": "border", "heads": "1"}


@dataclass
class CropConfig:
    """How `mlkit crop` finds and cuts the box; every field is also a `--flag`."""

    method: str = option("auto", "how the box is found: auto (per image: on a plain border, the pixels that "
                         "differ from its colour; otherwise border on two stacked feature maps, refined in colour; "
                         "the most accurate on both plain and photographed backgrounds, BENCHMARKS.md), sokolova "
                         "(the peaks of the first layers' activations, Sokolova 2019) or border (what differs from "
                         "the image's border ring in a stride-4 feature map)", choices=METHODS)
    backbone: str = option("mobilenetv2", "backbone whose feature maps find the object (any registry name)")
    weights: str = option("imagenet", "its weights: imagenet, none, or a weights file")
    model: str = option(None, "a fine-tuned run (or .keras file) whose own backbone is used instead of "
                              "--backbone/--weights", metavar="RUN", shown="none")
    layers: int = option(8, "sokolova: how many of the backbone's first layers make the activation map (Sokolova 2019: 8)")
    image_size: int | None = option(None, "side the image is resized to before the layers (auto's objectness head "
                                          "found boxes best at 288-384)", shown=f"{OBJECTNESS_SIZE} for auto's "
                                          f"objectness head on MobileNetV2, else {IMAGE_SIZE}")
    min_std: float = option(0.05, "sokolova: feature maps whose standard deviation, once scaled to 0-1, is below this are "
                                  "dropped")
    threshold: float | None = option(None, "sokolova: the lowest activation (0-1) a peak may have; border, "
                                           "auto: the share of the highest distance the box's region stays above",
                                     shown=", ".join(f"{name} {value:g}" for name, value in THRESHOLDS.items()))
    photo_map: str = option("objectness", "auto: the map that finds the object on a photographed (not plain) "
                                          "background: objectness (a small learned head over MobileNetV2's "
                                          "ImageNet feature maps, shipped with mlkit; other backbones use border) "
                                          "or border (the boundary prior on two stacked feature maps, what auto "
                                          "used before the head)", choices=PHOTO_MAPS)
    heads: str = option(HEADS, "auto: which objectness heads: 2 (two heads whose convolutions reach 8 cells "
                               "apart: 0.700 mean IoU against 0.678 for 1 over three photographed canvas sets, "
                               "BENCHMARKS.md) or 1 (the first release's; a crop.json that predates this setting "
                               "replays with them)", choices=tuple(HEAD_FILES))
    tolerance: float = option(30.0, "auto: the colour distance (RGB, 0-441) from a plain border's colour that "
                                    "counts as object; a border is plain when 90% of its pixels are within half "
                                    "of it")
    window: int = option(3, "sokolova: a peak is the largest activation in a WINDOW x WINDOW square of map cells")
    stride: int = option(4, "border, auto: the feature map used is the backbone's deepest block output at "
                            "1/STRIDE of the image side (auto adds the one at 1/(STRIDE/2))")
    margin: float = option(0.05, "added on each side of the box found, as a fraction of its side")
    min_size: float = option(0.2, "smallest crop side, as a fraction of the image's side")
    aspect: str = option("free", "crop shape: free, square, or image (the image's own aspect ratio)", choices=ASPECTS)
    background: str = option("white", "colour transparent pixels are composited on: white, black, #rrggbb or R,G,B")
    batch_size: int = field(default=16)

    def __post_init__(self):
        if self.image_size is None:
            self.image_size = OBJECTNESS_SIZE if self.method == "auto" and self.photo_map == "objectness" and \
                self.backbone == "mobilenetv2" else IMAGE_SIZE
        check_choice(self.aspect, ASPECTS, "--aspect")
        check_choice(self.method, METHODS, "--method")
        check_choice(self.photo_map, PHOTO_MAPS, "--photo-map")
        check_choice(self.heads, tuple(HEAD_FILES), "--heads")
        for name, low, high in (("threshold", 0, 1), ("min_std", 0, 1), ("min_size", 0, 1), ("margin", 0, 10),
                                ("tolerance", 0, 441)):
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise MlkitError(f"--{name.replace('_', '-')} {value}: give a number from {low} to {high}")
        if self.layers < 1 or self.image_size < 32 or self.window < 1 or self.batch_size < 1 or self.stride < 1:
            raise MlkitError(f"--layers {self.layers}, --image-size {self.image_size}, --window {self.window}, "
                             f"--stride {self.stride}: layers, window and stride must be at least 1, the image "
                             "size at least 32")
        parse_background(self.background)

    @classmethod
    def from_settings(cls, settings):
        """The config a crop.json's settings describe; settings it predates take the value they had then."""
        return cls(**{**ADDED_SETTINGS, **settings})

    def fingerprint(self):
        """The settings a crop depends on (a rerun with other ones starts over)."""
        settings = asdict(self)
        settings.pop("batch_size")
        return settings


def manifest_crop(manifest_path):
    """How `mlkit crop` made a manifest: {"settings", "crop_json"} from the crop.json beside it, or None.

    None unless the manifest is the one a finished `mlkit crop` run wrote
    there (`finetune` records the result, so `predict` crops alike).
    """
    if not manifest_path:
        return None
    manifest_path = Path(manifest_path)
    settings_path = manifest_path.parent / SETTINGS
    if not settings_path.is_file():
        return None
    summary = json.loads(settings_path.read_text())
    if summary.get("status") != "complete" or Path(summary.get("manifest", "")).name != manifest_path.name:
        return None
    return {"settings": summary["settings"], "crop_json": str(settings_path.resolve())}
