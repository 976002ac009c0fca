"""keras-mtl: a Keras 3 toolkit for multi-task ranking models."""

from keras_mtl import features
from keras_mtl.features import infer_features
from keras_mtl.task import Task

__version__ = "0.1.0"

__all__ = ["Task", "features", "infer_features", "__version__"]
