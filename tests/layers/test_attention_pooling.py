"""Tests of keras_mtl.layers.AttentionPooling."""

import keras
import numpy as np
import pytest

from keras_mtl.layers import AttentionPooling

pytestmark = pytest.mark.backend


@pytest.fixture
def mixed_bfloat16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    yield
    keras.config.set_dtype_policy(previous)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _sequence(batch=3, length=4, dim=2):
    rng = np.random.default_rng(0)
    return rng.normal(size=(batch, length, dim)).astype("float32")


MASK = np.array(
    [[True, True, False, False], [True, True, True, True], [False] * 4]
)


def test_config_round_trip():
    layer = AttentionPooling(
        8,
        return_attention=True,
        kernel_initializer="ones",
        kernel_regularizer="l2",
        name="pool",
    )
    config = layer.get_config()
    assert AttentionPooling.from_config(config).get_config() == config
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert isinstance(revived, AttentionPooling)
    assert revived.get_config() == config


@pytest.mark.parametrize("with_query", [False, True], ids=["learned", "query"])
def test_symbolic_and_eager_call(with_query):
    layer = AttentionPooling(5, return_attention=True)
    sequence = keras.Input((4, 2))
    mask = keras.Input((4,), dtype="bool")
    inputs = [sequence, keras.Input((3,))] if with_query else sequence
    pooled, weights = layer(inputs, mask=mask)
    assert tuple(pooled.shape) == (None, 2)
    assert tuple(weights.shape) == (None, 4)
    eager_inputs = (
        [_sequence(), np.ones((3, 3), "float32")] if with_query else _sequence()
    )
    pooled, weights = layer(eager_inputs, mask=MASK)
    assert _np(pooled).shape == (3, 2) and _np(weights).shape == (3, 4)
    assert (layer.query_kernel is not None) == with_query


def test_query_call_takes_the_sequence_mask_keras_propagates():
    # Keras hands a list input one mask per tensor: none at all here, and
    # the embedding's padding mask (the query has none) in the model below.
    layer = AttentionPooling(4, return_attention=True)
    sequence, query = _sequence(), np.ones((3, 5), "float32")
    _, unmasked = layer([sequence, query])
    np.testing.assert_allclose(_np(unmasked).sum(axis=1), 1.0, rtol=1e-6)
    ids = keras.Input((4,), dtype="int32")
    embedded = keras.layers.Embedding(9, 2, mask_zero=True)(ids)
    query_input = keras.Input((5,))
    model = keras.Model([ids, query_input], layer([embedded, query_input]))
    padded = np.array([[3, 4, 0, 0], [1, 2, 3, 4], [5, 0, 0, 0]], "int32")
    _, weights = model.predict([padded, query], verbose=0)
    np.testing.assert_array_equal(weights == 0.0, padded == 0)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)


def test_weights_sum_to_one_over_valid_positions_and_zero_on_padding():
    layer = AttentionPooling(6, return_attention=True)
    sequence = _sequence()
    query = np.random.default_rng(1).normal(size=(3, 3)).astype("float32")
    pooled, weights = layer([sequence, query], mask=MASK)
    weights, pooled = _np(weights), _np(pooled)
    np.testing.assert_allclose(weights[:2].sum(axis=1), [1.0, 1.0], rtol=1e-6)
    assert np.all(weights[~MASK] == 0.0)
    assert np.all(weights[MASK] > 0.0)
    # A row without any valid position pools to zeros, not NaN.
    np.testing.assert_array_equal(weights[2], np.zeros(4))
    np.testing.assert_array_equal(pooled[2], np.zeros(2))
    np.testing.assert_allclose(
        pooled, np.einsum("bt,btd->bd", weights, sequence), rtol=1e-5
    )
    # The query changes the weights.
    _, other = layer([sequence, -query], mask=MASK)
    assert not np.allclose(_np(other)[:2], weights[:2])


def test_exact_values_with_ones():
    layer = AttentionPooling(
        2, return_attention=True, kernel_initializer="ones"
    )
    sequence = np.array([[[1.0], [0.0], [-1.0]]], "float32")
    query = np.array([[0.5]], "float32")
    pooled, weights = layer([sequence, query], mask=np.array([[1, 1, 0]]))
    # s_t = 2 * tanh(h_t + 0.5); softmax over the first two positions.
    scores = 2.0 * np.tanh(np.array([1.5, 0.5]))
    expected = np.exp(scores) / np.exp(scores).sum()
    np.testing.assert_allclose(
        _np(weights), [[expected[0], expected[1], 0.0]], rtol=1e-6
    )
    np.testing.assert_allclose(_np(pooled), [[expected[0]]], rtol=1e-6)


def test_no_mask_means_every_position():
    layer = AttentionPooling(
        3, return_attention=True, kernel_initializer="zeros"
    )
    pooled, weights = layer(_sequence())
    np.testing.assert_allclose(_np(weights), np.full((3, 4), 0.25))
    np.testing.assert_allclose(
        _np(pooled), _sequence().mean(axis=1), rtol=1e-6, atol=1e-7
    )


def test_one_step_fit_updates_weights():
    sequence = keras.Input((4, 2))
    query = keras.Input((3,))
    mask = keras.Input((4,), dtype="bool")
    pooled = AttentionPooling(4, name="pool")([sequence, query], mask=mask)
    model = keras.Model([sequence, query, mask], pooled)
    model.compile("sgd", "mse")
    rng = np.random.default_rng(0)
    data = [
        rng.normal(size=(8, 4, 2)).astype("float32"),
        rng.normal(size=(8, 3)).astype("float32"),
        np.tile(MASK[:2], (4, 1)),
    ]
    layer = model.get_layer("pool")
    before = {w.path: _np(w).copy() for w in layer.trainable_weights}
    history = model.fit(data, np.ones((8, 2)), verbose=0)
    assert np.isfinite(history.history["loss"][0])
    for w in layer.trainable_weights:
        assert not np.allclose(_np(w), before[w.path]), w.path


def test_mixed_bfloat16(mixed_bfloat16):
    layer = AttentionPooling(4, return_attention=True)
    pooled, weights = layer(
        [_sequence(), np.ones((3, 3), "float32")], mask=MASK
    )
    assert keras.backend.standardize_dtype(pooled.dtype) == "bfloat16"
    assert all(
        keras.backend.standardize_dtype(w.dtype) == "float32"
        for w in layer.weights
    )
    weights = _np(keras.ops.cast(weights, "float32"))
    np.testing.assert_allclose(weights[:2].sum(axis=1), [1.0, 1.0], rtol=1e-2)
    assert np.all(weights[~MASK] == 0.0)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"units": 0}, "units"),
        ({"units": 2.5}, "units"),
        ({"return_attention": 1}, "return_attention"),
        ({"kernel_initializer": "nope"}, "kernel_initializer"),
        ({"kernel_regularizer": "nope"}, "kernel_regularizer"),
    ],
    ids=[
        "zero_units",
        "float_units",
        "int_flag",
        "unknown_initializer",
        "unknown_regularizer",
    ],
)
def test_invalid_arguments(kwargs, name):
    arguments = {"units": 4}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=f"`{name}`.*Received: {name}="):
        AttentionPooling(**arguments)


def test_invalid_sequence_rank():
    with pytest.raises(ValueError, match=r"\(batch, length, d\)"):
        AttentionPooling(4)(np.zeros((2, 3), "float32"))


def test_keras_save_and_load(tmp_path):
    sequence = keras.Input((4, 2))
    query = keras.Input((3,))
    mask = keras.Input((4,), dtype="bool")
    pooled = AttentionPooling(4, name="pool")([sequence, query], mask=mask)
    model = keras.Model([sequence, query, mask], pooled)
    path = tmp_path / "pool.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("pool"), AttentionPooling)
    data = [_sequence(), np.ones((3, 3), "float32"), MASK]
    np.testing.assert_array_equal(
        loaded.predict(data, verbose=0), model.predict(data, verbose=0)
    )


def test_kernel_regularizer_penalizes_w_h_w_q_and_v():
    layer = AttentionPooling(4, kernel_regularizer=keras.regularizers.L2(0.1))
    layer([_sequence(), np.ones((3, 5), "float32")])
    kernels = [
        w
        for w in layer.weights
        if w.path.split("/")[-1]
        in ("sequence_kernel", "query_kernel", "score_kernel")
    ]
    assert len(kernels) == 3
    expected = sum(0.1 * np.sum(np.square(w.numpy())) for w in kernels)
    got = sum(float(_np(loss)) for loss in layer.losses)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
