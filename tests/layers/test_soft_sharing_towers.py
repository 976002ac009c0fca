"""Tests of keras_mtl.layers.SoftSharingTowers."""

import keras
import numpy as np
import pytest

from keras_mtl.layers import MLP
from keras_mtl.layers import SoftSharingTowers

pytestmark = pytest.mark.backend


@pytest.fixture
def mixed_bfloat16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    yield
    keras.config.set_dtype_policy(previous)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _x(batch=4, dim=5):
    return np.random.default_rng(0).normal(size=(batch, dim)).astype("float32")


def _pairwise_penalty(layer):
    total = 0.0
    for weight in [*layer.kernels, *layer.biases]:
        w = _np(weight).astype("float64")
        for i in range(layer.num_tasks):
            for j in range(i + 1, layer.num_tasks):
                total += np.sum((w[i] - w[j]) ** 2)
    return layer.penalty * total


def test_config_round_trip():
    layer = SoftSharingTowers(
        [4, 2],
        3,
        penalty=0.5,
        activation="tanh",
        dropout=0.1,
        kernel_initializer="he_uniform",
        kernel_regularizer="l2",
        name="soft",
    )
    config = layer.get_config()
    assert SoftSharingTowers.from_config(config).get_config() == config
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert isinstance(revived, SoftSharingTowers)
    assert revived.get_config() == config


@pytest.mark.parametrize("per_task", [False, True], ids=["shared", "per_task"])
def test_symbolic_and_eager_call(per_task):
    layer = SoftSharingTowers([4, 2], 3)
    if per_task:
        symbolic = layer([keras.Input((5,))] * 3)
        eager = layer([_x()] * 3)
    else:
        symbolic = layer(keras.Input((5,)))
        eager = layer(_x())
    assert [tuple(t.shape) for t in symbolic] == [(None, 2)] * 3
    assert [_np(t).shape for t in eager] == [(4, 2)] * 3


def test_each_tower_is_an_independent_mlp():
    layer = SoftSharingTowers([6, 3], 2)
    x = _x()
    outputs = layer(x)
    for k in range(2):
        mlp = MLP([6, 3])
        mlp(x)
        for i, dense in enumerate(mlp.dense_layers):
            dense.kernel.assign(layer.kernels[i][k])
            dense.bias.assign(layer.biases[i][k])
        np.testing.assert_allclose(
            _np(outputs[k]), _np(mlp(x)), rtol=1e-5, atol=1e-6
        )
    assert not np.allclose(_np(outputs[0]), _np(outputs[1]))


def test_exact_values_with_ones():
    layer = SoftSharingTowers([3, 2], 2, kernel_initializer="ones")
    x = np.array([[1.0, 2.0, 0.0, 0.0, 1.0]], "float32")
    for out in layer(x):
        np.testing.assert_allclose(_np(out), [[12.0, 12.0]])
    # Equal towers: no penalty.
    assert float(_np(layer.sharing_penalty())) == 0.0


def test_penalty_is_zero_for_equal_towers_and_matches_pairwise_sum():
    layer = SoftSharingTowers([4, 3], 3, penalty=0.25)
    x = _x()
    layer(x)
    assert float(_np(layer.sharing_penalty())) > 0.0
    np.testing.assert_allclose(
        float(_np(layer.sharing_penalty())),
        _pairwise_penalty(layer),
        rtol=1e-5,
    )
    for weight in [*layer.kernels, *layer.biases]:
        value = _np(weight)
        weight.assign(np.broadcast_to(value[:1], value.shape))
    assert float(_np(layer.sharing_penalty())) == 0.0
    layer(x, training=True)
    assert float(_np(layer.losses[0])) == 0.0


def test_penalty_only_while_training():
    layer = SoftSharingTowers([4], 2, penalty=1.0)
    layer(_x())
    assert layer.losses == []
    layer(_x(), training=True)
    assert len(layer.losses) == 1
    np.testing.assert_allclose(
        float(_np(layer.losses[0])), _pairwise_penalty(layer), rtol=1e-5
    )
    free = SoftSharingTowers([4], 2, penalty=0.0)
    free(_x(), training=True)
    assert free.losses == []


def test_one_step_fit_pulls_towers_together():
    """With a zero data loss, a step moves each tower towards the mean."""
    inputs = keras.Input((5,))
    towers = SoftSharingTowers([3], 2, penalty=0.5, name="soft")
    a, b = towers(inputs)
    model = keras.Model(inputs, {"a": a, "b": b})
    model.compile("sgd", loss={"a": "mse", "b": "mse"}, loss_weights=[0, 0])
    before = float(_np(towers.sharing_penalty()))
    kernel = _np(towers.kernels[0]).copy()
    history = model.fit(
        _x(8), {"a": np.zeros((8, 3)), "b": np.zeros((8, 3))}, verbose=0
    )
    assert np.isfinite(history.history["loss"][0])
    # Gradient of 0.5 * 2 * sum ||W - mean||^2 is 2 * (W - mean).
    mean = kernel.mean(axis=0, keepdims=True)
    expected = kernel - 0.01 * 2.0 * (kernel - mean)
    np.testing.assert_allclose(_np(towers.kernels[0]), expected, rtol=1e-5)
    assert float(_np(towers.sharing_penalty())) < before


def test_mixed_bfloat16(mixed_bfloat16):
    layer = SoftSharingTowers([4, 2], 2)
    outputs = layer(_x(), training=True)
    for tensor in outputs:
        assert keras.backend.standardize_dtype(tensor.dtype) == "bfloat16"
    assert all(
        keras.backend.standardize_dtype(w.dtype) == "float32"
        for w in layer.weights
    )
    assert keras.backend.standardize_dtype(layer.losses[0].dtype) == "float32"


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"units": []}, "units"),
        ({"units": [2, 0]}, "units"),
        ({"num_tasks": 1}, "num_tasks"),
        ({"num_tasks": 2.0}, "num_tasks"),
        ({"penalty": -1.0}, "penalty"),
        ({"penalty": float("inf")}, "penalty"),
        ({"dropout": 1.0}, "dropout"),
        ({"activation": "nope"}, "activation"),
        ({"kernel_regularizer": "nope"}, "kernel_regularizer"),
    ],
    ids=[
        "empty_units",
        "zero_unit",
        "one_task",
        "float_tasks",
        "negative_penalty",
        "inf_penalty",
        "dropout_one",
        "unknown_activation",
        "unknown_regularizer",
    ],
)
def test_invalid_arguments(kwargs, name):
    arguments = {"units": [4], "num_tasks": 2}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=f"`{name}`.*Received: {name}="):
        SoftSharingTowers(**arguments)


def test_keras_save_and_load(tmp_path):
    inputs = keras.Input((5,))
    a, b = SoftSharingTowers([3], 2, penalty=0.1, name="soft")(inputs)
    model = keras.Model(inputs, {"a": a, "b": b})
    path = tmp_path / "soft.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("soft"), SoftSharingTowers)
    expected = model.predict(_x(), verbose=0)
    actual = loaded.predict(_x(), verbose=0)
    for key in ("a", "b"):
        np.testing.assert_array_equal(actual[key], expected[key])


def test_kernel_regularizer_penalizes_every_level():
    layer = SoftSharingTowers(
        [4, 2], 3, penalty=0.0, kernel_regularizer=keras.regularizers.L2(0.1)
    )
    layer(_x())  # no sharing penalty outside training
    kernels = [
        w
        for w in layer.weights
        if w.path.split("/")[-1] in ("kernel_0", "kernel_1")
    ]
    assert len(kernels) == 2
    expected = sum(0.1 * np.sum(np.square(w.numpy())) for w in kernels)
    got = sum(float(_np(loss)) for loss in layer.losses)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
