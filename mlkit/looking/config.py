"""The settings of `mlkit crop` (and of the crop box `mlkit look` draws), declared once."""

from dataclasses import asdict, dataclass, field

from mlkit.errors import MlkitError, check_choice
from mlkit.images import parse_background
from mlkit.looking.boxes import ASPECTS
from mlkit.looking.finder import METHODS, THRESHOLDS
from mlkit.options import option


@dataclass
class CropConfig:
    """How `mlkit crop` finds and cuts the box; every field is also a `--flag`."""

    method: str = option("sokolova", "how the box is found: sokolova (the peaks of the first layers' activations; "
                         "best on plain backgrounds) or border (what differs from the image's border ring in a "
                         "stride-4 feature map; better on photographed backgrounds)", choices=METHODS)
    backbone: str = option("mobilenetv2", "backbone whose feature maps find the object (any registry name)")
    weights: str = option("imagenet", "its weights: imagenet, none, or a weights file")
    model: str = option(None, "a fine-tuned run (or .keras file) whose own backbone is used instead of "
                              "--backbone/--weights", metavar="RUN", shown="none")
    layers: int = option(8, "sokolova: how many of the backbone's first layers make the activation map (Sokolova 2019: 8)")
    image_size: int = option(224, "side the image is resized to before the layers")
    min_std: float = option(0.05, "sokolova: feature maps whose standard deviation, once scaled to 0-1, is below this are "
                                  "dropped")
    threshold: float | None = option(None, "sokolova: the lowest activation (0-1) a peak may have; border: "
                                           "the share of the highest distance the box's region stays above",
                                     shown=", ".join(f"{name} {value:g}" for name, value in THRESHOLDS.items()))
    window: int = option(3, "sokolova: a peak is the largest activation in a WINDOW x WINDOW square of map cells")
    stride: int = option(4, "border: the feature map used is the backbone's deepest block output at "
                            "1/STRIDE of the image side")
    margin: float = option(0.05, "added on each side of the box found, as a fraction of its side")
    min_size: float = option(0.2, "smallest crop side, as a fraction of the image's side")
    aspect: str = option("free", "crop shape: free, square, or image (the image's own aspect ratio)", choices=ASPECTS)
    background: str = option("white", "colour transparent pixels are composited on: white, black, #rrggbb or R,G,B")
    batch_size: int = field(default=16)

    def __post_init__(self):
        check_choice(self.aspect, ASPECTS, "--aspect")
        check_choice(self.method, METHODS, "--method")
        for name, low, high in (("threshold", 0, 1), ("min_std", 0, 1), ("min_size", 0, 1), ("margin", 0, 10)):
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise MlkitError(f"--{name.replace('_', '-')} {value}: give a number from {low} to {high}")
        if self.layers < 1 or self.image_size < 32 or self.window < 1 or self.batch_size < 1 or self.stride < 1:
            raise MlkitError(f"--layers {self.layers}, --image-size {self.image_size}, --window {self.window}, "
                             f"--stride {self.stride}: layers, window and stride must be at least 1, the image "
                             "size at least 32")
        parse_background(self.background)

    def fingerprint(self):
        """The settings a crop depends on (a rerun with other ones starts over)."""
        settings = asdict(self)
        settings.pop("batch_size")
        return settings
