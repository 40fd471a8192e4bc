"""mlkit: transfer learning on image collections with Keras 3.

Stage 1 caches a frozen backbone's features to HDF5, stage 2 grid-searches
small top models on that cache, stage 3 fine-tunes the best one end to end and
exports a model that takes raw images and returns labels.
"""

__version__ = "0.1.0"
