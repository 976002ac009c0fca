"""Tests of keras_mtl.layers.KLBoundPenalty."""

import math

import keras
import numpy as np
import pytest

import keras_mtl
from keras_mtl.layers import KLBoundPenalty

pytestmark = pytest.mark.backend

EPS = 1e-7


def np_kl_bound(p, q, eps=EPS):
    """KL(p||q) + KL(q||p) per sample; float32 clipping like the layer."""
    lower, upper = np.float32(eps), np.float32(1 - eps)
    p = np.clip(np.asarray(p, "float64"), lower, upper)
    q = np.clip(np.asarray(q, "float64"), lower, upper)
    kl_pq = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
    kl_qp = q * np.log(q / p) + (1 - q) * np.log((1 - q) / (1 - p))
    return np.mean(kl_pq + kl_qp, axis=-1)


def scalar(value):
    return float(keras.ops.convert_to_numpy(value))


def probs(n=16, seed=0):
    rng = np.random.default_rng(seed)
    chain = rng.uniform(0, 1, (n, 1)).astype("float32")
    joint = rng.uniform(0, 1, (n, 1)).astype("float32")
    return chain, joint


def esmm_like_model(weight=0.5):
    """ctr, cvr and a directly predicted order prob tied by the penalty."""
    inputs = {"f": keras.Input((4,), name="f")}
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(
        inputs["f"]
    )
    ctr = keras.layers.Dense(1, activation="sigmoid", name="ctr")(hidden)
    cvr = keras.layers.Dense(1, activation="sigmoid", name="cvr")(hidden)
    order = keras.layers.Dense(1, activation="sigmoid", name="order_head")(
        hidden
    )
    chain = keras.layers.Multiply(name="ctcvr")([ctr, cvr])
    order = KLBoundPenalty(weight=weight, name="kl_penalty")([chain, order])
    model = keras.Model(inputs, {"click": ctr, "order": order})
    return model


def model_data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = {"f": rng.normal(size=(n, 4)).astype("float32")}
    click = (rng.random(n) < 0.5).astype("float32")
    order = click * (rng.random(n) < 0.5).astype("float32")
    return x, {"click": click, "order": order}


def test_exact_value_and_pass_through():
    layer = KLBoundPenalty(weight=2.0)
    chain = np.array([[0.5], [0.25]], "float32")
    joint = np.array([[0.25], [0.25]], "float32")
    out = layer([chain, joint], training=True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out), joint)
    assert len(layer.losses) == 1
    # Sample 0: (0.5 - 0.25) * (logit(0.5) - logit(0.25)) = 0.25 * log(3);
    # sample 1: 0. Mean over 2 samples, times weight 2.
    expected = 2.0 * (0.25 * math.log(3.0) + 0.0) / 2
    np.testing.assert_allclose(scalar(layer.losses[0]), expected, rtol=1e-6)


def test_adds_weight_times_mean_only_when_training():
    chain, joint = probs()
    layer = KLBoundPenalty(weight=0.3)
    layer([chain, joint], training=False)
    assert layer.losses == []
    layer([chain, joint])
    assert layer.losses == []
    layer([chain, joint], training=True)
    assert len(layer.losses) == 1
    np.testing.assert_allclose(
        scalar(layer.losses[0]),
        0.3 * np_kl_bound(chain, joint).mean(),
        rtol=1e-5,
    )


def test_zero_weight_adds_zero():
    chain, joint = probs()
    layer = KLBoundPenalty(weight=0.0)
    layer([chain, joint], training=True)
    assert [scalar(v) for v in layer.losses] == [0.0]


def test_symbolic_call_keeps_joint_shape():
    chain = keras.Input((1,), name="chain")
    joint = keras.Input((1,), name="joint")
    out = KLBoundPenalty()([chain, joint])
    assert tuple(out.shape) == (None, 1)
    assert out.dtype == joint.dtype


def test_model_losses_only_in_training_call():
    model = esmm_like_model(weight=0.5)
    x, _ = model_data()
    out = model(x, training=True)
    assert len(model.losses) == 1
    layers = {layer.name: layer for layer in model.layers}
    ctr = layers["ctr"](layers["hidden"](x["f"]))
    cvr = layers["cvr"](layers["hidden"](x["f"]))
    chain = keras.ops.convert_to_numpy(ctr * cvr)
    order = keras.ops.convert_to_numpy(out["order"])
    np.testing.assert_allclose(
        scalar(model.losses[0]),
        0.5 * np_kl_bound(chain, order).mean(),
        rtol=1e-5,
    )
    # The output is the order head's prediction, untouched.
    head = layers["order_head"](layers["hidden"](x["f"]))
    np.testing.assert_allclose(
        order, keras.ops.convert_to_numpy(head), rtol=1e-6
    )
    model(x, training=False)
    assert model.losses == []


def test_fit_adds_penalty_and_evaluate_does_not():
    model = esmm_like_model(weight=0.5)
    x, y = model_data(n=32)
    model.compile(
        # learning_rate 0: the step's loss is computed with known weights.
        optimizer=keras.optimizers.SGD(learning_rate=0.0),
        loss={
            "click": keras.losses.BinaryCrossentropy(),
            "order": keras.losses.BinaryCrossentropy(),
        },
    )
    evaluated = model.evaluate(
        x, y, batch_size=32, return_dict=True, verbose=0
    )["loss"]
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    layers = {layer.name: layer for layer in model.layers}
    hidden = layers["hidden"](x["f"])
    chain = keras.ops.convert_to_numpy(
        layers["ctr"](hidden) * layers["cvr"](hidden)
    )
    order = keras.ops.convert_to_numpy(layers["order_head"](hidden))
    penalty = 0.5 * np_kl_bound(chain, order).mean()
    assert penalty > 1e-3
    np.testing.assert_allclose(
        history.history["loss"][0], evaluated + penalty, rtol=1e-5
    )


def test_fit_step_moves_joint_towards_chain():
    model = esmm_like_model(weight=1.0)
    x, _ = model_data(n=64)
    # No task loss: only the penalty drives the weights.
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.2))
    layers = {layer.name: layer for layer in model.layers}

    def penalty():
        hidden = layers["hidden"](x["f"])
        chain = layers["ctr"](hidden) * layers["cvr"](hidden)
        order = layers["order_head"](hidden)
        return np_kl_bound(
            keras.ops.convert_to_numpy(chain), keras.ops.convert_to_numpy(order)
        ).mean()

    before = penalty()
    model.fit(x, epochs=10, batch_size=64, verbose=0)
    assert penalty() < 0.25 * before


def test_mixed_bfloat16_keeps_joint_and_finite_penalty():
    chain, joint = probs()
    layer = KLBoundPenalty(weight=1.0, dtype="mixed_bfloat16")
    out = layer([chain, joint], training=True)
    # No autocast: the float32 joint comes back bit for bit.
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out), joint)
    np.testing.assert_allclose(
        scalar(layer.losses[0]), np_kl_bound(chain, joint).mean(), rtol=1e-5
    )
    chain16 = keras.ops.cast(chain, "bfloat16")
    joint16 = keras.ops.cast(np.array([[1.0]] * 16, "float32"), "bfloat16")
    out16 = layer([chain16, joint16], training=True)
    assert keras.backend.standardize_dtype(out16.dtype) == "bfloat16"
    assert np.isfinite(scalar(layer.losses[0]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weight": -0.1}, "`weight` must be a finite number >= 0"),
        ({"weight": float("inf")}, "`weight` must be a finite number >= 0"),
        ({"weight": float("nan")}, "`weight` must be a finite number >= 0"),
        ({"weight": "1"}, "`weight` must be a finite number >= 0"),
        ({"weight": True}, "`weight` must be a finite number >= 0"),
        ({"epsilon": 0.0}, "`epsilon` must be a number in"),
        ({"epsilon": 0.6}, "`epsilon` must be a number in"),
    ],
    ids=[
        "negative_weight",
        "inf_weight",
        "nan_weight",
        "str_weight",
        "bool_weight",
        "zero_epsilon",
        "big_epsilon",
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KLBoundPenalty(**kwargs)


def test_invalid_inputs():
    chain, joint = probs()
    with pytest.raises(ValueError, match=r"\[chain_prob, joint_prob\]"):
        KLBoundPenalty()([chain, joint, joint])


def test_config_round_trip():
    layer = KLBoundPenalty(weight=0.25, epsilon=1e-6, name="kl")
    config = layer.get_config()
    assert config["weight"] == 0.25
    assert config["epsilon"] == 1e-6
    again = KLBoundPenalty.from_config(config)
    assert again.get_config() == config
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(restored, KLBoundPenalty)
    assert restored.get_config() == config
    assert keras_mtl.layers.KLBoundPenalty is KLBoundPenalty


def test_keras_save_and_load(tmp_path):
    model = esmm_like_model(weight=0.7)
    x, _ = model_data()
    path = str(tmp_path / "kl.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    expected = model.predict(x, verbose=0)
    actual = loaded.predict(x, verbose=0)
    for name in ("click", "order"):
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-6)
    penalty = [
        layer for layer in loaded.layers if isinstance(layer, KLBoundPenalty)
    ]
    assert [p.weight for p in penalty] == [0.7]
    model(x, training=True)
    loaded(x, training=True)
    np.testing.assert_allclose(
        scalar(loaded.losses[0]), scalar(model.losses[0]), rtol=1e-6
    )
