"""Model builders: feature specs + tasks in, a functional multi-output model.

Every builder returns a `keras.Model` with one named raw input per feature and
a dict of outputs keyed by task name. `compile_model` sets each task's masked
loss, weight and metrics; `build(architecture, ...)` picks a builder by name.
"""

from keras_mtl.models.encoded import column_encoder
from keras_mtl.models.encoded import encode_dataset
from keras_mtl.models.encoded import encode_features
from keras_mtl.models.encoded import encoded_model
from keras_mtl.models.seeds import cross_stitch
from keras_mtl.models.seeds import dupn
from keras_mtl.models.seeds import esm2
from keras_mtl.models.seeds import esm2_tasks
from keras_mtl.models.seeds import pairwise_ranker
from keras_mtl.models.seeds import soft_sharing
from keras_mtl.models.seeds import youtube_ranker
from keras_mtl.models.seeds import youtube_serving_model
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
    "column_encoder",
    "compile_model",
    "encode_dataset",
    "encode_features",
    "encoded_model",
    "esmm",
    "esmm_tasks",
    "mmoe",
    "omoe",
    "ple",
    "shared_bottom",
    "shared_embedding_towers",
    "split_model",
    "task_head",
    "tasks_for",
    "tower",
]
from keras_mtl.models.split import split_model

# The seed builders that take `(features, tasks)` and train on the usual
# per-task (x, y, sample_weight) data; `pairwise_ranker` trains on lists.
BUILDERS.update(
    {
        "esm2": esm2,
        "dupn": dupn,
        "youtube_ranker": youtube_ranker,
        "cross_stitch": cross_stitch,
        "soft_sharing": soft_sharing,
    }
)
__all__ += [
    "cross_stitch",
    "dupn",
    "esm2",
    "esm2_tasks",
    "pairwise_ranker",
    "soft_sharing",
    "youtube_ranker",
    "youtube_serving_model",
]
