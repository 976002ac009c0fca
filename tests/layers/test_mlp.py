"""Tests of keras_mtl.layers.MLP."""

import keras
import numpy as np
import pytest

from keras_mtl.layers import MLP

pytestmark = pytest.mark.backend


@pytest.fixture
def mixed_bfloat16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    yield
    keras.config.set_dtype_policy(previous)


def _x(batch=4, dim=3):
    return np.random.default_rng(0).normal(size=(batch, dim)).astype("float32")


def test_config_round_trip():
    layer = MLP(
        [8, 4],
        activation="tanh",
        dropout=0.25,
        normalization="layer",
        kernel_initializer="he_normal",
        kernel_regularizer="l2",
        name="tower",
    )
    config = layer.get_config()
    restored = MLP.from_config(config)
    assert restored.get_config() == config
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert isinstance(revived, MLP)
    assert revived.get_config() == config


def test_symbolic_and_eager_call():
    layer = MLP([8, 5])
    symbolic = layer(keras.Input((3,)))
    assert tuple(symbolic.shape) == (None, 5)
    assert layer.compute_output_shape((None, 3)) == (None, 5)
    eager = keras.ops.convert_to_numpy(layer(_x()))
    assert eager.shape == (4, 5)
    assert eager.dtype == np.float32
    assert np.all(eager >= 0.0)  # relu after the last level too


@pytest.mark.parametrize(
    "normalization, expected",
    [
        (None, 12.0),
        # Inference-mode batch norm divides by sqrt(1 + 1e-3) at each level.
        ("batch", 12.0 / 1.001),
    ],
    ids=["no_norm", "batch_norm"],
)
def test_exact_values_with_ones(normalization, expected):
    layer = MLP([2, 1], normalization=normalization, kernel_initializer="ones")
    x = np.array([[1.0, 2.0, 3.0], [-1.0, -2.0, 0.0]], "float32")
    out = keras.ops.convert_to_numpy(layer(x, training=False))
    # Level 0: both units = relu(sum(x)); level 1: 2 * relu(sum(x)).
    np.testing.assert_allclose(out, [[expected], [0.0]], rtol=1e-6)


def test_layer_norm_of_identical_units_is_zero():
    layer = MLP([3], normalization="layer", kernel_initializer="ones")
    out = keras.ops.convert_to_numpy(layer(_x()))
    np.testing.assert_allclose(out, np.zeros((4, 3)), atol=1e-6)


def test_dropout_only_in_training():
    layer = MLP([64], dropout=0.5, kernel_initializer="ones")
    x = np.ones((8, 2), "float32")
    inference = keras.ops.convert_to_numpy(layer(x, training=False))
    np.testing.assert_allclose(inference, np.full((8, 64), 2.0))
    training = keras.ops.convert_to_numpy(layer(x, training=True))
    dropped = training == 0.0
    assert 0 < dropped.sum() < dropped.size
    np.testing.assert_allclose(training[~dropped], 4.0)  # 2 / (1 - 0.5)


def test_kernel_regularizer_adds_one_loss_per_level():
    layer = MLP([4, 2], kernel_regularizer="l2")
    layer(_x())
    assert len(layer.losses) == 2


def test_one_step_fit_updates_weights():
    inputs = keras.Input((3,))
    hidden = MLP([8, 4], dropout=0.1, normalization="batch")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    model.compile(optimizer="sgd", loss="mse", jit_compile=False)
    before = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    history = model.fit(_x(8), np.ones((8, 1)), batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    assert all(not np.allclose(b, a) for b, a in zip(before, after))


def test_mixed_bfloat16(mixed_bfloat16):
    layer = MLP([4, 2], normalization="batch")
    out = layer(_x(), training=True)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert layer.weights
    assert all(
        keras.backend.standardize_dtype(w.dtype) == "float32"
        for w in layer.weights
    )
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(out).astype("f4")))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"units": []}, "units"),
        ({"units": [4, 0]}, "units"),
        ({"units": 4}, "units"),
        ({"units": [2.5]}, "units"),
        ({"units": [4], "dropout": 1.0}, "dropout"),
        ({"units": [4], "dropout": -0.1}, "dropout"),
        ({"units": [4], "normalization": "group"}, "normalization"),
        ({"units": [4], "activation": "not_an_activation"}, "activation"),
        (
            {"units": [4], "kernel_initializer": "not_an_init"},
            "kernel_initializer",
        ),
    ],
    ids=[
        "empty_units",
        "zero_unit",
        "int_units",
        "float_unit",
        "dropout_one",
        "negative_dropout",
        "unknown_normalization",
        "unknown_activation",
        "unknown_initializer",
    ],
)
def test_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`.*Received: {name}="):
        MLP(**kwargs)


def test_keras_save_and_load(tmp_path):
    inputs = keras.Input((3,))
    outputs = MLP([6, 2], normalization="layer", name="tower")(inputs)
    model = keras.Model(inputs, outputs)
    path = tmp_path / "mlp.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("tower"), MLP)
    np.testing.assert_allclose(
        loaded.predict(_x(), verbose=0), model.predict(_x(), verbose=0)
    )
