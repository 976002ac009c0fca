"""Model builders: feature specs + tasks in, a functional multi-output model.

Every builder returns a `keras.Model` with one named raw input per feature and
a dict of outputs keyed by task name. `compile_model` sets each task's masked
loss, weight and metrics; `build(architecture, ...)` picks a builder by name.
"""

from keras_mtl.models.zoo import BUILDERS
from keras_mtl.models.zoo import ESMM_OUTPUTS
from keras_mtl.models.zoo import aitm
from keras_mtl.models.zoo import build
from keras_mtl.models.zoo import cgc
from keras_mtl.models.zoo import check_builder_args
from keras_mtl.models.zoo import compile_model
from keras_mtl.models.zoo import esmm
from keras_mtl.models.zoo import esmm_tasks
from keras_mtl.models.zoo import mmoe
from keras_mtl.models.zoo import omoe
from keras_mtl.models.zoo import ple
from keras_mtl.models.zoo import shared_bottom
from keras_mtl.models.zoo import shared_embedding_towers
from keras_mtl.models.zoo import task_head
from keras_mtl.models.zoo import tasks_for
from keras_mtl.models.zoo import tower

__all__ = [
    "BUILDERS",
    "ESMM_OUTPUTS",
    "aitm",
    "build",
    "cgc",
    "check_builder_args",
    "compile_model",
    "esmm",
    "esmm_tasks",
    "mmoe",
    "omoe",
    "ple",
    "shared_bottom",
    "shared_embedding_towers",
    "task_head",
    "tasks_for",
    "tower",
]
