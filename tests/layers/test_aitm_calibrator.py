"""Tests of keras_mtl.layers.AITMCalibrator and aitm_calibrator_loss."""

import keras
import numpy as np
import pytest

from keras_mtl.layers import AITMCalibrator
from keras_mtl.layers import aitm_calibrator_loss

pytestmark = pytest.mark.backend

P_PREV = np.array([[0.9], [0.5], [0.2], [0.4]], "float32")


@pytest.fixture
def mixed_bfloat16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    yield
    keras.config.set_dtype_policy(previous)


def _np(x):
    return keras.ops.convert_to_numpy(x)


@pytest.mark.parametrize(
    "p_next",
    [
        np.array([[0.9], [0.1], [0.0], [0.4]], "float32"),
        np.array([[0.1], [0.1], [0.1], [0.1]], "float32"),
    ],
    ids=["equal_or_below", "all_below"],
)
def test_loss_is_exactly_zero_when_next_not_above_prev(p_next):
    assert float(_np(aitm_calibrator_loss(P_PREV, p_next))) == 0.0


def test_loss_is_mean_of_positive_parts():
    p_next = np.array([[0.95], [0.1], [0.7], [0.4]], "float32")
    expected = (0.05 + 0.0 + 0.5 + 0.0) / 4
    loss = aitm_calibrator_loss(P_PREV, p_next)
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    np.testing.assert_allclose(_np(loss), expected, rtol=1e-6)


def test_config_round_trip():
    layer = AITMCalibrator(weight=0.3, name="calibrator")
    config = layer.get_config()
    assert AITMCalibrator.from_config(config).get_config() == config
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert isinstance(revived, AITMCalibrator)
    assert revived.weight == 0.3
    assert (
        keras.saving.get_registered_object("keras_mtl>aitm_calibrator_loss")
        is aitm_calibrator_loss
    )


def test_symbolic_and_eager_call():
    layer = AITMCalibrator()
    symbolic = layer([keras.Input((1,)), keras.Input((1,))])
    assert tuple(symbolic.shape) == (None, 1)
    assert layer.compute_output_shape([(None, 1), (None, 1)]) == (None, 1)
    p_next = np.array([[0.95], [0.1], [0.7], [0.4]], "float32")
    out = layer([P_PREV, p_next])
    np.testing.assert_array_equal(_np(out), p_next)


@pytest.mark.parametrize(
    "training, expected",
    [(True, 0.5 * (0.05 + 0.5) / 4), (False, None)],
    ids=["training", "inference"],
)
def test_adds_weighted_loss_only_when_training(training, expected):
    layer = AITMCalibrator(weight=0.5)
    p_next = np.array([[0.95], [0.1], [0.7], [0.4]], "float32")
    layer([P_PREV, p_next], training=training)
    if expected is None:
        assert layer.losses == []
    else:
        assert len(layer.losses) == 1
        np.testing.assert_allclose(_np(layer.losses[0]), expected, rtol=1e-6)


def test_exact_values_with_ones_and_zeros():
    # p_prev = sigmoid(0) = 0.5, p_next = sigmoid(sum(x)); with only the
    # calibrator as loss the reported training loss is its weighted value.
    inputs = keras.Input((2,))
    p_prev = keras.layers.Dense(
        1, activation="sigmoid", kernel_initializer="zeros"
    )(inputs)
    p_next = keras.layers.Dense(
        1, activation="sigmoid", kernel_initializer="ones"
    )(inputs)
    out = AITMCalibrator(weight=2.0)([p_prev, p_next])
    model = keras.Model(inputs, out)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.0), jit_compile=False
    )
    x = np.array([[1.0, 1.0], [-1.0, 0.0]], "float32")
    history = model.fit(x, batch_size=2, verbose=0)
    expected = 2.0 * (1.0 / (1.0 + np.exp(-2.0)) - 0.5) / 2
    np.testing.assert_allclose(history.history["loss"][0], expected, 1e-5)
    np.testing.assert_allclose(
        model.predict(x, verbose=0),
        1.0 / (1.0 + np.exp(-x.sum(1)))[:, None],
        rtol=1e-6,
    )


def test_one_step_fit_pushes_next_below_prev():
    inputs = keras.Input((2,))
    p_prev = keras.layers.Dense(1, activation="sigmoid", name="prev")(inputs)
    p_next = keras.layers.Dense(
        1,
        activation="sigmoid",
        kernel_initializer="zeros",
        bias_initializer=keras.initializers.Constant(3.0),
        name="next",
    )(inputs)
    out = AITMCalibrator(weight=1.0)([p_prev, p_next])
    model = keras.Model(inputs, {"prev": p_prev, "next": out})
    model.compile(optimizer="sgd", jit_compile=False)
    bias_before = _np(model.get_layer("next").bias)[0]
    x = np.random.default_rng(0).normal(size=(8, 2)).astype("float32")
    history = model.fit(x, batch_size=8, verbose=0)
    assert history.history["loss"][0] > 0.0
    assert _np(model.get_layer("next").bias)[0] < bias_before


def test_mixed_bfloat16(mixed_bfloat16):
    layer = AITMCalibrator()
    p_next = np.array([[0.95], [0.1], [0.7], [0.4]], "float32")
    out = layer([P_PREV, p_next], training=True)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    loss = layer.losses[0]
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    np.testing.assert_allclose(_np(loss), 0.6 * 0.55 / 4, rtol=1e-2)


@pytest.mark.parametrize(
    "weight",
    [-0.1, float("nan"), "0.5", True, None],
    ids=["negative", "nan", "str", "bool", "none"],
)
def test_invalid_weight(weight):
    with pytest.raises(ValueError, match="`weight`.*Received: weight="):
        AITMCalibrator(weight=weight)


def test_keras_save_and_load(tmp_path):
    inputs = keras.Input((2,))
    p_prev = keras.layers.Dense(1, activation="sigmoid")(inputs)
    p_next = keras.layers.Dense(1, activation="sigmoid")(inputs)
    out = AITMCalibrator(weight=0.4, name="calibrator")([p_prev, p_next])
    model = keras.Model(inputs, out)
    path = tmp_path / "calibrator.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.get_layer("calibrator").weight == 0.4
    x = np.random.default_rng(0).normal(size=(5, 2)).astype("float32")
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    )
