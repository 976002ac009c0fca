"""Small data and models for the training tests."""

import numpy as np
import pandas as pd
import pytest

import keras_mtl
from keras_mtl import Task
from keras_mtl import data


def numeric_problem(n, coefs, noise, kinds, seed=0, scale=None, names=None):
    """`x0..x3` numeric features and one label per task.

    Task `k` has label `x @ coefs[k] * scale[k] + noise[k] * eps` for a
    regression task, and that value thresholded at 0 for a binary task.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4))
    frame = pd.DataFrame({f"x{i}": x[:, i] for i in range(4)})
    tasks = []
    for k, kind in enumerate(kinds):
        signal = x @ np.asarray(coefs[k], dtype="float64")
        if scale is not None:
            signal = signal * scale[k]
        value = signal + noise[k] * rng.standard_normal(n)
        name = names[k] if names else f"t{k}"
        frame[name] = (value > 0).astype("int64") if kind == "binary" else value
        tasks.append(Task(name, kind))
    specs = keras_mtl.infer_features(frame, labels=[t.name for t in tasks])
    arrays = data.dataframe_to_arrays(frame, specs, tasks)
    return specs, tasks, arrays


@pytest.fixture
def make_problem():
    return numeric_problem
