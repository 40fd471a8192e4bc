"""What `cache-features` can be asked for: each setting's default and help, written once.

`cache_features` and `fit_zmuv_stats` take their keyword defaults from
`CacheOptions`, and the `cache-features` parser is built from its fields
(mlkit.options), so the command line, the signatures and the checks agree.
"""

from dataclasses import dataclass

from mlkit.backbones import POOLING, PREPROCESSING
from mlkit.bottlenecks.cache import FEATURE_DTYPES
from mlkit.errors import MlkitError, check_choice
from mlkit.images import parse_background
from mlkit.options import option
from mlkit.taps import cache_taps
from mlkit.vocabulary import TASKS


@dataclass
class CacheOptions:
    """The settings of one cache-features run; made (and so checked) by `cache_features`."""

    backbone: str = option("mobilenetv2", "keras.applications model by lower-case name, hub:PRESET (a KerasHub preset "
                                          "or preset folder; pip install -e \".[hub]\"), or PATH.keras (your own Keras "
                                          "model, cut at --tap)", metavar="NAME")
    weights: str = option("imagenet", "imagenet (downloaded once to $KERAS_HOME/models; for hub: and .keras "
                                      "backbones, their own weights), none (seeded random), or a weights file PATH")
    tap: str | None = option(None, "with --backbone PATH.keras: the layer whose output are the features (outer/inner for a "
                            "layer of a nested model)", shown="the last layer before the model's head",
                      metavar="LAYER")
    image_size: int | None = option(None, "square input side in pixels", shown="the backbone's own, e.g. 224", metavar="PX")
    preprocess: str = option("inet", "inet: the backbone's own preprocess_input; zmuv: per-channel zero mean, unit "
                                     "variance fitted on the training split; zmuvs: each image standardised on its own",
                             choices=PREPROCESSING)
    pooling: str = option("avg", "avg or max: global pooling to a vector (a transformer's patch tokens: their mean or "
                                 "max); none: keep raw feature maps (N x H x W x C; a transformer's patch grid); cls: "
                                 "a KerasHub transformer's own image embedding (class token, SigLIP's pooled head)",
                          choices=POOLING)
    taps: str = option("auto", "layers to pool and cache beside the backbone's output, each as its own dataset, in "
                               "the same pass: auto (the default: every named depth where the family declares them, "
                               "features are pooled and the task is not regression; else last), last (the output alone), all (every named "
                               "depth), or names joined by commas: named depths (early, mid, high, pre) and layer "
                               "names; a KerasHub backbone's blocks as block_N (transformers) or stages as stage_N "
                               "(CNNs). Taps lifted test micro-F1 of the tuned top by 0.15 and 0.17 on the two "
                               "measured collections (docs/cache-features.md, Taps)",
                       metavar="NAMES")
    augment_copies: int = option(0, "also cache K augmented views (flip, rotation, zoom, shifts) of each training "
                                    "image", metavar="K")
    dtype: str = option("float32", "how features are stored: float16 takes half the disk and memory, and tune-top "
                                   "still trains in float32; backbones whose features fall outside float16's range "
                                   "(6.1e-05 to 65504, e.g. random-weight mobilenetv2) are refused",
                        choices=FEATURE_DTYPES)
    batch_size: int = option(64, "images per backbone call")
    dataset: str | None = option(None, "dataset name, the first run-name field", shown="the manifest's folder name")
    subset: str | None = option(None, "subset name, the second run-name field; give each image size its own (e.g. "
                                "all-96px) to keep caches at several sizes side by side",
                         shown="the manifest file's stem, or 'all' for manifest.*")
    task: str | None = option(None, "multilabel, multiclass or regression", choices=TASKS,
                       shown="inferred: a target column is regression, any row with several labels multilabel, "
                             "else multiclass")
    allow_unlabelled: bool = option(False, "accept multilabel rows with no labels (they train as all-negative and "
                                           "are left out of evaluation)")
    background: str = option("white", "colour transparent pixels are composited on: white, black, #rrggbb or R,G,B")
    strict: bool = option(False, "fail if any image cannot be read (the partial cache is kept; fix the files and "
                                 "rerun)")
    overwrite: bool = option(False, "replace a same-named cache that was made with other settings (size, weights, "
                                    "background)")
    zmuv_samples: int = option(1000, "training images sampled to fit zmuv statistics")
    seed: int = option(0, "seeds random weights (--weights none) and the augmented views")
    captions: bool = option(False, "also cache caption token ids and their vocabulary (needs a caption column and a "
                                   "train split)")
    num_words: int = option(10000, "with --captions: the most token ids, padding and out-of-vocabulary included; the "
                                   "N-2 most frequent training stems are kept", metavar="N")
    max_len: int | None = option(None, "with --captions: tokens per caption; longer ones are cut",
                          shown="the 95th percentile of the training captions' token counts", metavar="T")

    def __post_init__(self):
        check_choice(self.preprocess, PREPROCESSING, "preprocessing")
        check_choice(self.pooling, POOLING, "pooling")
        check_choice(self.dtype, FEATURE_DTYPES, "feature dtype")
        layers = cache_taps(self.backbone, self.taps, self.pooling)
        if layers and self.pooling == "none":
            raise MlkitError(f"--taps {self.taps} with --pooling none: taps are combined as pooled vectors; "
                             "use --pooling avg or max")
        if self.task is not None:
            check_choice(self.task, TASKS, "task")
        if int(self.augment_copies) < 0 or int(self.batch_size) < 1:
            raise MlkitError(f"--augment-copies must be >= 0 and --batch-size >= 1 (got {self.augment_copies}, "
                             f"{self.batch_size})")
        for name in ("zmuv_samples", "num_words"):
            if int(getattr(self, name)) < 1:
                raise MlkitError(f"--{name.replace('_', '-')} {getattr(self, name)} must be >= 1")
        try:
            parse_background(self.background)
        except ValueError as error:
            raise MlkitError(f"--background: {error}") from None
        if self.image_size is not None and int(self.image_size) < 1:
            raise MlkitError(f"--image-size {self.image_size} must be >= 1")
