"""Tests of keras_mtl.layers.DUPNEncoder."""

import keras
import numpy as np
import pytest

from keras_mtl import features as F
from keras_mtl.layers import DUPNEncoder
from keras_mtl.layers.input_block import make_inputs

pytestmark = pytest.mark.backend

SPECS = [
    F.CategoricalFeature("user_id", vocab_size=10, embed_dim=3),
    F.NumericFeature("user_age", mean=40.0, variance=100.0),
    F.SequenceFeature("hist", vocab_size=20, embed_dim=4, max_len=5),
]
HIST = np.array(
    [
        [3, 4, 5, -1, -1],
        [1, 2, 3, 4, 5],
        [-1, -1, -1, -1, -1],
        [7, -1, -1, -1, -1],
    ],
    "int64",
)


@pytest.fixture
def mixed_bfloat16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    yield
    keras.config.set_dtype_policy(previous)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _batch():
    return {
        "user_id": np.array([1, 2, 3, 4], "int64"),
        "user_age": np.array([30.0, np.nan, 50.0, 20.0], "float32"),
        "hist": HIST,
    }


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _lstm_reference(lstm, sequence):
    """States of a Keras LSTM (gates i, f, c, o) over one sequence."""
    kernel = _np(lstm.cell.kernel)
    recurrent = _np(lstm.cell.recurrent_kernel)
    bias = _np(lstm.cell.bias)
    units = recurrent.shape[0]
    h, c = np.zeros(units), np.zeros(units)
    states = []
    for x in sequence:
        z = x @ kernel + h @ recurrent + bias
        i, f = _sigmoid(z[:units]), _sigmoid(z[units : 2 * units])
        g, o = np.tanh(z[2 * units : 3 * units]), _sigmoid(z[3 * units :])
        c = f * c + i * g
        h = o * np.tanh(c)
        states.append(h)
    return np.array(states)


def test_config_round_trip():
    layer = DUPNEncoder(
        SPECS,
        "hist",
        lstm_units=6,
        attention_units=5,
        kernel_initializer="he_uniform",
        kernel_regularizer="l2",
        embeddings_initializer="random_normal",
        embeddings_regularizer="l2",
        name="encoder",
    )
    config = layer.get_config()
    assert DUPNEncoder.from_config(config).get_config() == config
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert isinstance(revived, DUPNEncoder)
    assert revived.get_config() == config


def test_symbolic_and_eager_call():
    layer = DUPNEncoder(SPECS, "hist", lstm_units=6, attention_units=5)
    # Context: user_id (3) + age and its indicator (2); pooled LSTM: 6.
    assert layer.context_dim == 5 and layer.output_dim == 11
    symbolic = layer(make_inputs(SPECS))
    assert tuple(symbolic.shape) == (None, 11)
    vector, weights = layer(_batch(), return_attention=True)
    assert _np(vector).shape == (4, 11) and _np(weights).shape == (4, 5)


def test_attention_sums_to_one_over_history_and_ignores_padding():
    layer = DUPNEncoder(SPECS, "hist", lstm_units=6, attention_units=5)
    vector, weights = layer(_batch(), return_attention=True)
    weights = _np(weights)
    valid = HIST != -1
    np.testing.assert_allclose(
        weights[valid.any(axis=1)].sum(axis=1), np.ones(3), rtol=1e-6
    )
    assert np.all(weights[~valid] == 0.0)
    assert np.all(weights[valid] > 0.0)
    # No history: zero weights and a zero pooled part, never NaN.
    np.testing.assert_array_equal(weights[2], np.zeros(5))
    np.testing.assert_array_equal(_np(vector)[2, layer.context_dim :], 0.0)
    assert np.all(np.isfinite(_np(vector)))


def test_exact_values_against_numpy_lstm():
    """Zero attention kernels give uniform weights over the history, so
    the pooled part is the mean LSTM state over the valid steps."""
    layer = DUPNEncoder(
        SPECS, "hist", lstm_units=3, attention_units=2, name="encoder"
    )
    layer.build()
    for weight in layer.attention.weights:
        weight.assign(np.zeros(weight.shape, "float32"))
    batch = _batch()
    vector = _np(layer(batch))
    context = _np(layer.context_block(batch))
    np.testing.assert_allclose(vector[:, : layer.context_dim], context)
    embedded, _ = layer.sequence_block.embed(batch)["hist"]
    embedded = _np(embedded)
    for row in (0, 1, 3):
        steps = int((HIST[row] != -1).sum())
        states = _lstm_reference(layer.lstm, embedded[row, :steps])
        np.testing.assert_allclose(
            vector[row, layer.context_dim :],
            states.mean(axis=0),
            rtol=1e-5,
            atol=1e-6,
        )


def test_without_context_uses_a_learned_query():
    layer = DUPNEncoder(SPECS[2:], "hist", lstm_units=4, attention_units=3)
    assert layer.context_dim == 0 and layer.output_dim == 4
    vector, weights = layer({"hist": HIST}, return_attention=True)
    assert layer.attention.query_kernel is None
    assert _np(vector).shape == (4, 4)
    np.testing.assert_allclose(_np(weights)[0].sum(), 1.0, rtol=1e-6)


def test_one_step_fit_updates_weights():
    inputs = make_inputs(SPECS)
    # Unit-scale embeddings, so the LSTM states differ enough between
    # steps for the attention to get a gradient.
    encoder = DUPNEncoder(
        SPECS,
        "hist",
        lstm_units=4,
        attention_units=3,
        embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0),
    )
    model = keras.Model(inputs, keras.layers.Dense(1)(encoder(inputs)))
    model.compile(keras.optimizers.SGD(0.1), "mse")
    before = [_np(w).copy() for w in encoder.trainable_weights]
    history = model.fit(_batch(), np.ones((4, 1)), verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = [_np(w) for w in encoder.trainable_weights]
    assert len(before) == 9  # 2 tables, 3 LSTM and 4 attention weights
    assert all(not np.allclose(b, a) for b, a in zip(before, after))


def test_mixed_bfloat16(mixed_bfloat16):
    layer = DUPNEncoder(SPECS, "hist", lstm_units=4, attention_units=3)
    vector, weights = layer(_batch(), return_attention=True)
    assert keras.backend.standardize_dtype(vector.dtype) == "bfloat16"
    assert all(
        keras.backend.standardize_dtype(w.dtype) == "float32"
        for w in layer.weights
    )
    weights = _np(keras.ops.cast(weights, "float32"))
    assert np.all(weights[HIST == -1] == 0.0)
    np.testing.assert_allclose(weights[0].sum(), 1.0, rtol=1e-2)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"sequence_feature": "user_id"}, "sequence_feature"),
        ({"sequence_feature": "nope"}, "sequence_feature"),
        ({"lstm_units": 0}, "lstm_units"),
        ({"attention_units": -1}, "attention_units"),
        ({"kernel_initializer": "nope"}, "kernel_initializer"),
        ({"kernel_regularizer": "nope"}, "kernel_regularizer"),
        ({"embeddings_regularizer": "nope"}, "embeddings_regularizer"),
        ({"embeddings_initializer": "nope"}, "embeddings_initializer"),
    ],
    ids=[
        "not_a_sequence",
        "unknown_sequence",
        "zero_lstm_units",
        "negative_attention_units",
        "unknown_initializer",
        "unknown_kernel_regularizer",
        "unknown_regularizer",
        "unknown_embeddings_initializer",
    ],
)
def test_invalid_arguments(kwargs, name):
    arguments = {"features": SPECS, "sequence_feature": "hist"}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=f"`{name}`.*Received: {name}="):
        DUPNEncoder(**arguments)


def test_keras_save_and_load(tmp_path):
    inputs = make_inputs(SPECS)
    encoder = DUPNEncoder(SPECS, "hist", lstm_units=4, name="encoder")
    model = keras.Model(inputs, encoder(inputs))
    path = tmp_path / "dupn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("encoder"), DUPNEncoder)
    # Inference calls: `predict` would trace both models.
    np.testing.assert_array_equal(_np(loaded(_batch())), _np(model(_batch())))


def test_kernel_regularizer_penalizes_the_lstm_input_and_attention_kernels():
    layer = DUPNEncoder(
        SPECS,
        "hist",
        lstm_units=6,
        kernel_regularizer=keras.regularizers.L2(0.1),
    )
    layer(_batch())
    kernels = [
        w
        for w in layer.weights
        if w.path.split("/")[-1]
        in ("kernel", "sequence_kernel", "query_kernel", "score_kernel")
    ]
    assert len(kernels) == 4
    expected = sum(0.1 * np.sum(np.square(w.numpy())) for w in kernels)
    got = sum(float(_np(loss)) for loss in layer.losses)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
