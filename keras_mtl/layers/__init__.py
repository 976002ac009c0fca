"""Keras layers of keras-mtl (keras.ops only, except InputBlock's lookups)."""

from keras_mtl.layers.aitm_calibrator import AITMCalibrator
from keras_mtl.layers.aitm_calibrator import aitm_calibrator_loss
from keras_mtl.layers.aitm_transfer import AITMTransfer
from keras_mtl.layers.esmm_head import ESMMHead
from keras_mtl.layers.input_block import InputBlock
from keras_mtl.layers.kl_bound_penalty import KLBoundPenalty
from keras_mtl.layers.mlp import MLP
from keras_mtl.layers.mmoe_layer import MMoELayer
from keras_mtl.layers.ple_level import PLELevel

__all__ = [
    "AITMCalibrator",
    "AITMTransfer",
    "ESMMHead",
    "InputBlock",
    "KLBoundPenalty",
    "MLP",
    "MMoELayer",
    "PLELevel",
    "aitm_calibrator_loss",
]
