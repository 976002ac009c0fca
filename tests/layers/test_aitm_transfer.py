"""Tests of keras_mtl.layers.AITMTransfer."""

import keras
import numpy as np
import pytest

from keras_mtl.layers import AITMTransfer

pytestmark = pytest.mark.backend


@pytest.fixture
def mixed_bfloat16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    yield
    keras.config.set_dtype_policy(previous)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _inputs(batch=4, prev_dim=6, units=4):
    rng = np.random.default_rng(0)
    return [
        rng.normal(size=(batch, prev_dim)).astype("float32"),
        rng.normal(size=(batch, units)).astype("float32"),
    ]


def _reference(layer, previous, current):
    """NumPy AITM transfer with the layer's weights."""
    p = previous @ _np(layer.transfer.kernel) + _np(layer.transfer.bias)
    items = np.stack([p, current], axis=1)
    q = items @ _np(layer.query.kernel)
    k = items @ _np(layer.key.kernel)
    v = items @ _np(layer.value.kernel)
    scores = (q * k).sum(-1) / np.sqrt(layer.units)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return (w[..., None] * v).sum(1)


def test_config_round_trip():
    layer = AITMTransfer(
        8,
        kernel_initializer="he_normal",
        kernel_regularizer="l2",
        name="transfer",
    )
    config = layer.get_config()
    assert AITMTransfer.from_config(config).get_config() == config
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert isinstance(revived, AITMTransfer)
    assert revived.get_config() == config


def test_symbolic_and_eager_call():
    layer = AITMTransfer(4)
    symbolic = layer([keras.Input((6,)), keras.Input((4,))])
    assert tuple(symbolic.shape) == (None, 4)
    assert layer.compute_output_shape([(None, 6), (None, 4)]) == (None, 4)
    eager = _np(layer(_inputs()))
    assert eager.shape == (4, 4)
    assert eager.dtype == np.float32


def test_matches_reference():
    layer = AITMTransfer(4)
    previous, current = _inputs()
    out = layer([previous, current])
    np.testing.assert_allclose(
        _np(out), _reference(layer, previous, current), rtol=1e-5, atol=1e-6
    )


def test_exact_values_with_ones():
    # transfer(prev) = sum(prev) * ones(units); every projection of an item
    # u is s_u * ones(units) with s_u = sum(u). Hence the scores are
    # units * s_u^2 / sqrt(units) and the output is (sum_u w_u s_u) * ones.
    layer = AITMTransfer(2, kernel_initializer="ones")
    previous = np.array([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]], "float32")
    current = np.array([[0.25, 0.25], [1.0, 0.0]], "float32")
    out = _np(layer([previous, current]))
    s = np.array([[1.0, 0.5], [0.0, 1.0]])  # (batch, {p, q})
    scores = s**2 * 2 / np.sqrt(2.0)
    w = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    expected = (w * s).sum(-1, keepdims=True) * np.ones((1, 2))
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_attention_follows_the_larger_score():
    # With identity projections an item whose norm dominates takes almost
    # all the attention weight.
    layer = AITMTransfer(2, kernel_initializer="identity")
    previous = np.array([[10.0, 0.0]], "float32")
    current = np.array([[0.0, 0.1]], "float32")
    out = _np(layer([previous, current]))
    np.testing.assert_allclose(out, [[10.0, 0.0]], atol=1e-4)


def test_one_step_fit_updates_weights():
    inputs = keras.Input((5,))
    click = keras.layers.Dense(4, activation="relu")(inputs)
    buy = keras.layers.Dense(4, activation="relu")(inputs)
    fused = AITMTransfer(4)([click, buy])
    model = keras.Model(
        inputs,
        {
            "click": keras.layers.Dense(1, name="click")(click),
            "buy": keras.layers.Dense(1, name="buy")(fused),
        },
    )
    model.compile(
        optimizer="sgd",
        loss={"click": "mse", "buy": "mse"},
        jit_compile=False,
    )
    layer = model.layers[3]
    assert isinstance(layer, AITMTransfer)
    before = [_np(w) for w in layer.trainable_weights]
    x = np.random.default_rng(0).normal(size=(8, 5)).astype("float32")
    history = model.fit(
        x, {"click": np.ones((8, 1)), "buy": np.zeros((8, 1))}, verbose=0
    )
    assert np.isfinite(history.history["loss"][0])
    after = [_np(w) for w in layer.trainable_weights]
    assert len(before) == 5  # transfer kernel + bias, query, key, value
    assert all(not np.allclose(b, a) for b, a in zip(before, after))


def test_mixed_bfloat16(mixed_bfloat16):
    layer = AITMTransfer(4)
    out = layer(_inputs())
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert all(
        keras.backend.standardize_dtype(w.dtype) == "float32"
        for w in layer.weights
    )


@pytest.mark.parametrize(
    "units",
    [0, -2, 2.5, "4", None],
    ids=["zero", "negative", "float", "str", "none"],
)
def test_invalid_units(units):
    with pytest.raises(ValueError, match="`units`.*Received: units="):
        AITMTransfer(units)


def test_invalid_initializer():
    with pytest.raises(ValueError, match="`kernel_initializer`"):
        AITMTransfer(4, kernel_initializer="nope")


@pytest.mark.parametrize(
    "shapes, message",
    [
        ([(None, 6), (None, 3)], "must have `units` features"),
        ([(None, 6)], "expects a list of two tensors"),
    ],
    ids=["current_dim_not_units", "one_input"],
)
def test_invalid_inputs(shapes, message):
    with pytest.raises(ValueError, match=message):
        AITMTransfer(4)([keras.Input(s[1:]) for s in shapes])


def test_keras_save_and_load(tmp_path):
    previous = keras.Input((6,))
    current = keras.Input((4,))
    fused = AITMTransfer(4, name="transfer")([previous, current])
    model = keras.Model([previous, current], fused)
    path = tmp_path / "aitm.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("transfer"), AITMTransfer)
    np.testing.assert_allclose(
        loaded.predict(_inputs(), verbose=0),
        model.predict(_inputs(), verbose=0),
    )
