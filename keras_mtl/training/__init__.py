"""Training strategies for multi-task models.

- Loss weighting: `compile(model, tasks, weighting=...)` wraps a zoo model
  in a `MultiTaskModel` with one of `FixedWeighting` (default),
  `UncertaintyWeighting`, `GradNormWeighting`, `DWAWeighting`,
  `RLWWeighting`, `PCGradWeighting`, `GradVacWeighting`, `MGDAWeighting`,
  `CAGradWeighting`, `IMTLWeighting`, `NashMTLWeighting`,
  `AlignedMTLWeighting`, `FAMOWeighting`, `GLSWeighting`,
  `UPGradWeighting`, `DBMTLWeighting`, `MoCoWeighting`, `STCHWeighting`,
  `FairGradWeighting`; per-task learning-rate
  multipliers; inverse propensity weighting of a task's loss by another
  task's prediction (`propensity=`, ESCM²'s counterfactual CVR loss); task
  weights logged every epoch (`TaskWeightLogger`).
- `MultiTaskEarlyStopping`: early stopping and checkpoint selection on a
  weighted mean of per-task validation metrics.
- Gate diagnostics for MMoE, OMoE, CGC and PLE: `gate_diagnostics`,
  `GateDiagnostics`.
- Incremental daily training: `save_model`, `warm_start`, `category_ids`.
"""

from keras_mtl.training.callbacks import MultiTaskEarlyStopping
from keras_mtl.training.callbacks import TaskWeightLogger
from keras_mtl.training.callbacks import write_scalars
from keras_mtl.training.gates import GateDiagnostics
from keras_mtl.training.gates import GateProbe
from keras_mtl.training.gates import gate_diagnostics
from keras_mtl.training.gates import log_gate_diagnostics
from keras_mtl.training.graph import last_shared_layer
from keras_mtl.training.graph import layer_tasks
from keras_mtl.training.incremental import category_ids
from keras_mtl.training.incremental import model_features
from keras_mtl.training.incremental import save_model
from keras_mtl.training.incremental import warm_start
from keras_mtl.training.multitask_model import MultiTaskModel
from keras_mtl.training.multitask_model import check_propensity
from keras_mtl.training.multitask_model import compile
from keras_mtl.training.weighting import STRATEGIES
from keras_mtl.training.weighting import AlignedMTLWeighting
from keras_mtl.training.weighting import CAGradWeighting
from keras_mtl.training.weighting import DBMTLWeighting
from keras_mtl.training.weighting import DWAWeighting
from keras_mtl.training.weighting import FairGradWeighting
from keras_mtl.training.weighting import FAMOWeighting
from keras_mtl.training.weighting import FixedWeighting
from keras_mtl.training.weighting import GLSWeighting
from keras_mtl.training.weighting import GradNormWeighting
from keras_mtl.training.weighting import GradVacWeighting
from keras_mtl.training.weighting import IMTLWeighting
from keras_mtl.training.weighting import MGDAWeighting
from keras_mtl.training.weighting import MoCoWeighting
from keras_mtl.training.weighting import NashMTLWeighting
from keras_mtl.training.weighting import PCGradWeighting
from keras_mtl.training.weighting import RLWWeighting
from keras_mtl.training.weighting import STCHWeighting
from keras_mtl.training.weighting import UncertaintyWeighting
from keras_mtl.training.weighting import UPGradWeighting
from keras_mtl.training.weighting import WeightingStrategy
from keras_mtl.training.weighting import aligned_mtl_weights
from keras_mtl.training.weighting import cagrad_direction
from keras_mtl.training.weighting import dwa_weights
from keras_mtl.training.weighting import fairgrad_weights
from keras_mtl.training.weighting import famo_logits_gradient
from keras_mtl.training.weighting import famo_objective
from keras_mtl.training.weighting import get as get_weighting
from keras_mtl.training.weighting import gls_loss
from keras_mtl.training.weighting import gradnorm_gradient
from keras_mtl.training.weighting import gradvac_project
from keras_mtl.training.weighting import imtl_weights
from keras_mtl.training.weighting import mgda_weights
from keras_mtl.training.weighting import nash_mtl_weights
from keras_mtl.training.weighting import pcgrad_project
from keras_mtl.training.weighting import stch_loss
from keras_mtl.training.weighting import uncertainty_loss
from keras_mtl.training.weighting import upgrad_weights

__all__ = [
    "STRATEGIES",
    "AlignedMTLWeighting",
    "CAGradWeighting",
    "DBMTLWeighting",
    "DWAWeighting",
    "FAMOWeighting",
    "FairGradWeighting",
    "FixedWeighting",
    "GLSWeighting",
    "GateDiagnostics",
    "GateProbe",
    "GradNormWeighting",
    "GradVacWeighting",
    "IMTLWeighting",
    "MGDAWeighting",
    "MoCoWeighting",
    "MultiTaskEarlyStopping",
    "MultiTaskModel",
    "NashMTLWeighting",
    "PCGradWeighting",
    "RLWWeighting",
    "STCHWeighting",
    "TaskWeightLogger",
    "UncertaintyWeighting",
    "UPGradWeighting",
    "WeightingStrategy",
    "aligned_mtl_weights",
    "cagrad_direction",
    "category_ids",
    "check_propensity",
    "compile",
    "dwa_weights",
    "famo_logits_gradient",
    "fairgrad_weights",
    "famo_objective",
    "gate_diagnostics",
    "get_weighting",
    "gls_loss",
    "gradnorm_gradient",
    "gradvac_project",
    "imtl_weights",
    "last_shared_layer",
    "layer_tasks",
    "log_gate_diagnostics",
    "model_features",
    "mgda_weights",
    "nash_mtl_weights",
    "pcgrad_project",
    "save_model",
    "stch_loss",
    "uncertainty_loss",
    "upgrad_weights",
    "warm_start",
    "write_scalars",
]
