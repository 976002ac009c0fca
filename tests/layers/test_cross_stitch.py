"""Tests of keras_mtl.layers.CrossStitch."""

import keras
import numpy as np
import pytest

from keras_mtl.layers import CrossStitch

pytestmark = pytest.mark.backend


@pytest.fixture
def mixed_bfloat16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    yield
    keras.config.set_dtype_policy(previous)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _inputs(num_tasks=2, batch=4, dim=3):
    rng = np.random.default_rng(0)
    return [
        rng.normal(size=(batch, dim)).astype("float32")
        for _ in range(num_tasks)
    ]


def test_config_round_trip():
    layer = CrossStitch(
        alpha_initializer="ones", alpha_regularizer="l2", name="stitch"
    )
    config = layer.get_config()
    assert CrossStitch.from_config(config).get_config() == config
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert isinstance(revived, CrossStitch)
    assert revived.get_config() == config


@pytest.mark.parametrize("num_tasks", [2, 3], ids=["two_tasks", "three"])
def test_symbolic_and_eager_call(num_tasks):
    layer = CrossStitch()
    symbolic = layer([keras.Input((5,)) for _ in range(num_tasks)])
    assert [tuple(t.shape) for t in symbolic] == [(None, 5)] * num_tasks
    eager = layer(_inputs(num_tasks, dim=5))
    assert [_np(t).shape for t in eager] == [(4, 5)] * num_tasks
    assert tuple(layer.alpha.shape) == (num_tasks, num_tasks)


def test_identity_start_passes_each_task_through():
    inputs = _inputs(3)
    outputs = CrossStitch()(inputs)
    for out, x in zip(outputs, inputs):
        np.testing.assert_array_equal(_np(out), x)


def test_exact_values():
    layer = CrossStitch(alpha_initializer="ones")
    a = np.array([[1.0, 2.0]], "float32")
    b = np.array([[10.0, 20.0]], "float32")
    layer([a, b])
    layer.alpha.assign(np.array([[0.9, 0.1], [0.25, 0.75]], "float32"))
    out_a, out_b = layer([a, b])
    np.testing.assert_allclose(_np(out_a), [[1.9, 3.8]], rtol=1e-6)
    np.testing.assert_allclose(_np(out_b), [[7.75, 15.5]], rtol=1e-6)
    ones_a, ones_b = CrossStitch(alpha_initializer="ones")([a, b])
    np.testing.assert_allclose(_np(ones_a), [[11.0, 22.0]])
    np.testing.assert_allclose(_np(ones_b), [[11.0, 22.0]])


def test_one_step_fit_moves_alpha_off_identity():
    x = keras.Input((3,))
    h_a = keras.layers.Dense(4, name="a_hidden")(x)
    h_b = keras.layers.Dense(4, name="b_hidden")(x)
    h_a, h_b = CrossStitch(name="stitch")([h_a, h_b])
    model = keras.Model(
        x,
        {
            "a": keras.layers.Dense(1, name="a")(h_a),
            "b": keras.layers.Dense(1, name="b")(h_b),
        },
    )
    model.compile("sgd", loss={"a": "mse", "b": "mse"})
    history = model.fit(
        _inputs(1, batch=8)[0],
        {"a": np.ones((8, 1)), "b": -np.ones((8, 1))},
        verbose=0,
    )
    assert np.isfinite(history.history["loss"][0])
    alpha = _np(model.get_layer("stitch").alpha)
    # Off-diagonal terms get gradient: the towers start to share.
    assert alpha[0, 1] != 0.0 and alpha[1, 0] != 0.0


def test_mixed_bfloat16(mixed_bfloat16):
    layer = CrossStitch()
    outputs = layer(_inputs())
    assert all(
        keras.backend.standardize_dtype(t.dtype) == "bfloat16" for t in outputs
    )
    assert keras.backend.standardize_dtype(layer.alpha.dtype) == "float32"
    np.testing.assert_allclose(
        _np(keras.ops.cast(outputs[0], "float32")), _inputs()[0], rtol=1e-2
    )


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"alpha_initializer": "nope"}, "alpha_initializer"),
        ({"alpha_regularizer": "nope"}, "alpha_regularizer"),
    ],
    ids=["unknown_initializer", "unknown_regularizer"],
)
def test_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`.*Received: {name}="):
        CrossStitch(**kwargs)


@pytest.mark.parametrize(
    "inputs",
    [
        [np.zeros((2, 3), "float32")],
        [np.zeros((2, 3), "float32"), np.zeros((2, 4), "float32")],
    ],
    ids=["one_task", "shape_mismatch"],
)
def test_invalid_inputs(inputs):
    with pytest.raises(ValueError, match="CrossStitch"):
        CrossStitch()(inputs)


def test_keras_save_and_load(tmp_path):
    x = keras.Input((3,))
    h_a, h_b = CrossStitch(alpha_initializer="random_uniform", name="stitch")(
        [keras.layers.Dense(2)(x), keras.layers.Dense(2)(x)]
    )
    model = keras.Model(x, {"a": h_a, "b": h_b})
    path = tmp_path / "stitch.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("stitch"), CrossStitch)
    data = _inputs(1)[0]
    expected = model.predict(data, verbose=0)
    actual = loaded.predict(data, verbose=0)
    for key in ("a", "b"):
        np.testing.assert_array_equal(actual[key], expected[key])
