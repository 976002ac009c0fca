"""keras-mtl: a Keras 3 toolkit for multi-task ranking models."""

from keras_mtl import data
from keras_mtl import datasets
from keras_mtl import export
from keras_mtl import features
from keras_mtl import layers
from keras_mtl import losses
from keras_mtl import metrics
from keras_mtl import models
from keras_mtl import ranking
from keras_mtl import training
from keras_mtl.features import infer_features
from keras_mtl.task import Task

__version__ = "0.1.0"


def __getattr__(name):
    # `keras_mtl.tuning` imports KerasTuner (and its gRPC and rich
    # dependencies, ~20 MiB of RSS): loaded on first use, not by every
    # training or serving process.
    if name == "tuning":
        import importlib

        return importlib.import_module("keras_mtl.tuning")
    raise AttributeError(f"module 'keras_mtl' has no attribute {name!r}")


__all__ = [
    "Task",
    "data",
    "datasets",
    "export",
    "features",
    "infer_features",
    "layers",
    "losses",
    "metrics",
    "models",
    "ranking",
    "training",
    "tuning",
    "__version__",
]
