"""The names every stage shares, each defined once: tasks, splits, optimisers and image files.

Every other module imports these; none defines its own copy.
"""

TASKS = ("multilabel", "multiclass", "regression")
SPLITS = ("train", "val", "test")
OPTIMIZERS = ("sgd", "adam")
# Files read as images by the folder adapter and by `mlkit predict` on a folder (any case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
