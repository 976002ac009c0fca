"""Tests of keras_mtl.layers.ShallowTower."""

import keras
import numpy as np
import pytest

from keras_mtl.layers import ShallowTower

pytestmark = pytest.mark.backend


@pytest.fixture
def mixed_bfloat16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    yield
    keras.config.set_dtype_policy(previous)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _x(batch=4, dim=3):
    return np.random.default_rng(0).normal(size=(batch, dim)).astype("float32")


def test_config_round_trip():
    layer = ShallowTower(
        num_outputs=2,
        units=[4],
        activation="tanh",
        drop_rate=0.1,
        kernel_initializer="he_uniform",
        kernel_regularizer="l2",
        name="bias",
    )
    config = layer.get_config()
    assert ShallowTower.from_config(config).get_config() == config
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert isinstance(revived, ShallowTower)
    assert revived.get_config() == config


@pytest.mark.parametrize("units", [[], [4]], ids=["linear", "hidden"])
def test_symbolic_and_eager_call(units):
    layer = ShallowTower(num_outputs=2, units=units)
    assert tuple(layer(keras.Input((3,))).shape) == (None, 2)
    assert _np(layer(_x())).shape == (4, 2)
    assert layer.compute_output_shape((None, 3)) == (None, 2)


def test_exact_values_with_ones():
    layer = ShallowTower(num_outputs=2, units=[3], kernel_initializer="ones")
    x = np.array([[1.0, 2.0, -1.0], [-1.0, -1.0, -1.0]], "float32")
    # Hidden: relu(sum(x)) = 2 on 3 units, then sum = 6 per output.
    np.testing.assert_allclose(_np(layer(x)), [[6.0, 6.0], [0.0, 0.0]])


def test_bias_dropout_drops_whole_examples_only_in_training():
    layer = ShallowTower(
        num_outputs=3, kernel_initializer="ones", drop_rate=0.5
    )
    x = np.ones((400, 2), "float32")
    np.testing.assert_array_equal(_np(layer(x)), np.full((400, 3), 2.0))
    trained = _np(layer(x, training=True))
    dropped = np.all(trained == 0.0, axis=1)
    kept = np.all(trained == 2.0, axis=1)  # not rescaled
    assert np.all(dropped | kept)
    assert 0.35 < dropped.mean() < 0.65


def test_one_step_fit_updates_weights():
    inputs = keras.Input((3,))
    model = keras.Model(
        inputs, ShallowTower(2, units=[4], drop_rate=0.1)(inputs)
    )
    model.compile("sgd", "mse")
    before = [_np(w).copy() for w in model.trainable_weights]
    history = model.fit(_x(8), np.ones((8, 2)), verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = [_np(w) for w in model.trainable_weights]
    assert all(not np.allclose(b, a) for b, a in zip(before, after))


def test_mixed_bfloat16(mixed_bfloat16):
    layer = ShallowTower(num_outputs=2, units=[4])
    out = layer(_x())
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert all(
        keras.backend.standardize_dtype(w.dtype) == "float32"
        for w in layer.weights
    )


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_outputs": 0}, "num_outputs"),
        ({"num_outputs": True}, "num_outputs"),
        ({"units": [0]}, "units"),
        ({"units": 4}, "units"),
        ({"drop_rate": 1.0}, "drop_rate"),
        ({"activation": "nope"}, "activation"),
        ({"kernel_initializer": "nope"}, "kernel_initializer"),
        ({"kernel_regularizer": "nope"}, "kernel_regularizer"),
    ],
    ids=[
        "zero_outputs",
        "bool_outputs",
        "zero_unit",
        "int_units",
        "drop_one",
        "unknown_activation",
        "unknown_initializer",
        "unknown_regularizer",
    ],
)
def test_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`.*Received: {name}="):
        ShallowTower(**kwargs)


def test_keras_save_and_load(tmp_path):
    inputs = keras.Input((3,))
    out = ShallowTower(2, units=[4], drop_rate=0.1, name="bias")(inputs)
    model = keras.Model(inputs, out)
    path = tmp_path / "bias.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("bias"), ShallowTower)
    np.testing.assert_array_equal(
        loaded.predict(_x(), verbose=0), model.predict(_x(), verbose=0)
    )


def test_kernel_regularizer_penalizes_the_hidden_and_output_kernels():
    layer = ShallowTower(
        num_outputs=2, units=[3], kernel_regularizer=keras.regularizers.L2(0.1)
    )
    layer(_x())
    kernels = [w for w in layer.weights if w.path.split("/")[-1] in ("kernel",)]
    assert len(kernels) == 2
    expected = sum(0.1 * np.sum(np.square(w.numpy())) for w in kernels)
    got = sum(float(_np(loss)) for loss in layer.losses)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
