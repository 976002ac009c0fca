"""Tests of keras_mtl.layers.ESM2Head."""

import keras
import numpy as np
import pytest

from keras_mtl.layers import ESM2Head
from keras_mtl.layers.esm2_head import ESM2_PROBABILITIES

pytestmark = pytest.mark.backend


@pytest.fixture
def mixed_bfloat16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    yield
    keras.config.set_dtype_policy(previous)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, "float64")))


def _logits(batch=5):
    rng = np.random.default_rng(0)
    return [
        rng.normal(scale=2.0, size=(batch, 1)).astype("float32")
        for _ in range(4)
    ]


def test_config_round_trip():
    layer = ESM2Head(name="esm2", dtype="float32")
    config = layer.get_config()
    assert ESM2Head.from_config(config).get_config() == config
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert isinstance(revived, ESM2Head)
    assert revived.get_config() == config


def test_symbolic_and_eager_call():
    layer = ESM2Head()
    symbolic = layer([keras.Input((1,)) for _ in range(4)])
    assert sorted(symbolic) == sorted(ESM2_PROBABILITIES)
    assert all(tuple(t.shape) == (None, 1) for t in symbolic.values())
    eager = layer(_logits())
    assert all(_np(t).shape == (5, 1) for t in eager.values())


def test_exact_values_and_decomposition():
    # Logits 0 everywhere: every conditional is 1/2.
    zeros = [np.zeros((1, 1), "float32")] * 4
    p = {k: float(_np(v)[0, 0]) for k, v in ESM2Head()(zeros).items()}
    assert p["ctr"] == p["avr"] == p["cvr_daction"] == 0.5
    assert p["ctavr"] == 0.25 and p["cvr"] == 0.5 and p["ctcvr"] == 0.25
    logits = _logits()
    p = {k: _np(v).astype("float64") for k, v in ESM2Head()(logits).items()}
    ctr, avr, cvr_d, cvr_o = (_sigmoid(x) for x in logits)
    cvr = avr * cvr_d + (1 - avr) * cvr_o
    np.testing.assert_allclose(p["cvr"], cvr, rtol=1e-5)
    np.testing.assert_allclose(p["ctavr"], ctr * avr, rtol=1e-5)
    np.testing.assert_allclose(p["ctcvr"], ctr * cvr, rtol=1e-5)
    # The decomposed probabilities multiply back to the purchase one.
    np.testing.assert_allclose(
        p["ctavr"] * p["cvr_daction"]
        + (p["ctr"] - p["ctavr"]) * p["cvr_oaction"],
        p["ctcvr"],
        rtol=1e-5,
    )
    # cvr lies between its two branches.
    low = np.minimum(p["cvr_daction"], p["cvr_oaction"])
    high = np.maximum(p["cvr_daction"], p["cvr_oaction"])
    assert np.all((p["cvr"] >= low - 1e-7) & (p["cvr"] <= high + 1e-7))


def test_one_step_fit_on_entire_space_losses():
    x = keras.Input((3,))
    logits = [keras.layers.Dense(1, name=f"logit_{i}")(x) for i in range(4)]
    p = ESM2Head(name="head")(logits)
    model = keras.Model(x, {k: p[k] for k in ("ctr", "ctavr", "ctcvr")})
    model.compile(
        "sgd",
        loss={k: "binary_crossentropy" for k in ("ctr", "ctavr", "ctcvr")},
    )
    rng = np.random.default_rng(0)
    data = rng.normal(size=(8, 3)).astype("float32")
    click = np.array([1, 1, 1, 0, 0, 1, 0, 1], "float32")[:, None]
    cart = click * np.array([1, 0, 1, 0, 0, 1, 0, 0], "float32")[:, None]
    buy = click * np.array([1, 0, 0, 0, 0, 0, 0, 1], "float32")[:, None]
    before = [_np(w).copy() for w in model.trainable_weights]
    history = model.fit(
        data, {"ctr": click, "ctavr": cart, "ctcvr": buy}, verbose=0
    )
    assert np.isfinite(history.history["loss"][0])
    after = [_np(w) for w in model.trainable_weights]
    # All four towers learn from the three entire-space losses.
    assert all(not np.allclose(b, a) for b, a in zip(before, after))


def test_mixed_bfloat16(mixed_bfloat16):
    outputs = ESM2Head()(_logits())
    for tensor in outputs.values():
        assert keras.backend.standardize_dtype(tensor.dtype) == "bfloat16"
    ctr, avr = (_sigmoid(x) for x in _logits()[:2])
    np.testing.assert_allclose(
        _np(keras.ops.cast(outputs["ctavr"], "float32")), ctr * avr, rtol=1e-2
    )


@pytest.mark.parametrize(
    "inputs",
    [np.zeros((2, 1), "float32"), [np.zeros((2, 1), "float32")] * 3],
    ids=["single_tensor", "three_tensors"],
)
def test_invalid_inputs(inputs):
    with pytest.raises(ValueError, match="four logits.*Received: input_shape"):
        ESM2Head()(inputs)


def test_keras_save_and_load(tmp_path):
    x = keras.Input((3,))
    logits = [keras.layers.Dense(1)(x) for _ in range(4)]
    p = ESM2Head(name="esm2")(logits)
    model = keras.Model(x, {k: p[k] for k in ("ctr", "cvr", "ctcvr")})
    path = tmp_path / "esm2.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("esm2"), ESM2Head)
    data = np.random.default_rng(1).normal(size=(5, 3)).astype("float32")
    expected = model.predict(data, verbose=0)
    actual = loaded.predict(data, verbose=0)
    for key in ("ctr", "cvr", "ctcvr"):
        np.testing.assert_array_equal(actual[key], expected[key])
