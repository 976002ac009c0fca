"""Keras layers of keras-mtl (keras.ops only, except InputBlock's lookups)."""

from keras_mtl.layers.aitm_calibrator import AITMCalibrator
from keras_mtl.layers.aitm_calibrator import aitm_calibrator_loss
from keras_mtl.layers.aitm_transfer import AITMTransfer
from keras_mtl.layers.attention_pooling import AttentionPooling
from keras_mtl.layers.cross_stitch import CrossStitch
from keras_mtl.layers.dupn_encoder import DUPNEncoder
from keras_mtl.layers.esm2_head import ESM2Head
from keras_mtl.layers.esmm_head import ESMMHead
from keras_mtl.layers.input_block import InputBlock
from keras_mtl.layers.kl_bound_penalty import KLBoundPenalty
from keras_mtl.layers.missing_value_layer import MissingValueLayer
from keras_mtl.layers.mlp import MLP
from keras_mtl.layers.mmoe_layer import MMoELayer
from keras_mtl.layers.ple_level import PLELevel
from keras_mtl.layers.shallow_tower import ShallowTower
from keras_mtl.layers.soft_sharing_towers import SoftSharingTowers

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
    "AttentionPooling",
    "CrossStitch",
    "DUPNEncoder",
    "ESM2Head",
    "MissingValueLayer",
    "ShallowTower",
    "SoftSharingTowers",
]
