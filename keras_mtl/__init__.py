"""keras-mtl: a Keras 3 toolkit for multi-task ranking models."""

from keras_mtl import data
from keras_mtl import datasets
from keras_mtl import features
from keras_mtl import layers
from keras_mtl import losses
from keras_mtl import metrics
from keras_mtl import models
from keras_mtl.features import infer_features
from keras_mtl.task import Task

__version__ = "0.1.0"

__all__ = [
    "Task",
    "data",
    "datasets",
    "features",
    "infer_features",
    "layers",
    "losses",
    "metrics",
    "models",
    "__version__",
]
