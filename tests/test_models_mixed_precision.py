"""Zoo models train under `mixed_bfloat16` / `mixed_float16` policies.

TensorFlow backend only: the models take raw string features, which the
torch backend has no tensor type for. The layers themselves are checked on
every backend in `tests/layers/test_mixed_precision.py`.
"""

import keras
import numpy as np
import pytest

import keras_mtl
from keras_mtl import models
from keras_mtl.datasets import funnel_tasks
from keras_mtl.datasets import synthetic_funnel

POLICIES = ("mixed_bfloat16", "mixed_float16")


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("builder", ["mmoe", "ple", "esmm"])
def test_zoo_model_trains_under_mixed_policy(policy, builder):
    df = synthetic_funnel(1024, seed=2)
    tasks = funnel_tasks()
    features = keras_mtl.infer_features(
        df, labels=[t.name for t in tasks], exclude=["like"]
    )
    if builder == "esmm":
        tasks = models.esmm_tasks()
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = models.build(builder, features, tasks)
        models.compile_model(model, tasks, jit_compile=False)
        x, y, sw = keras_mtl.data.dataframe_to_arrays(df, features, tasks)
        history = model.fit(
            x, y, sample_weight=sw, batch_size=256, epochs=1, verbose=0
        )
        out = model.predict(x, verbose=0)
    finally:
        keras.config.set_dtype_policy(previous)
    assert all(w.dtype == "float32" for w in model.weights if w.trainable), (
        "trainable weights must stay float32"
    )
    assert np.isfinite(history.history["loss"][0])
    for task in tasks:
        value = np.asarray(out[task.name])
        assert value.dtype == np.float32, task.name
        assert np.all(np.isfinite(value)), task.name
        if task.kind == "binary":
            assert np.all((value >= 0) & (value <= 1)), task.name
