"""Tests of keras_mtl.layers.ESMMHead."""

import keras
import numpy as np
import pytest

from keras_mtl.layers import ESMMHead

pytestmark = pytest.mark.backend

LOGITS = np.array([-40.0, -20.0, -3.0, 0.0, 0.5, 3.0, 20.0, 40.0], "float32")


@pytest.fixture
def mixed_bfloat16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    yield
    keras.config.set_dtype_policy(previous)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x.astype("float64")))


def _logit_grid():
    """Every pair of LOGITS as (ctr_logit, cvr_logit), each (64, 1)."""
    ctr, cvr = np.meshgrid(LOGITS, LOGITS, indexing="ij")
    return ctr.reshape(-1, 1), cvr.reshape(-1, 1)


def _bce(y, p):
    """Mean binary cross-entropy on probabilities, in keras.ops."""
    return keras.ops.mean(keras.losses.binary_crossentropy(y, p))


def _grad(fn, x):
    """Gradient of the scalar `fn(x)` w.r.t. the array `x` (TF or torch).

    A value that does not depend on `x` has a zero gradient.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
        zero = tf.UnconnectedGradients.ZERO
        return tape.gradient(value, x, unconnected_gradients=zero).numpy()
    if backend == "torch":
        import torch

        x = torch.tensor(x, requires_grad=True)
        value = fn(x)
        if not value.requires_grad:
            return np.zeros(tuple(x.shape), "float32")
        value.backward()
        return x.grad.numpy()
    pytest.skip(f"No gradient helper for the {backend} backend.")


def test_config_round_trip():
    layer = ESMMHead(name="esmm")
    config = layer.get_config()
    assert ESMMHead.from_config(config).get_config() == config
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert isinstance(revived, ESMMHead)
    assert revived.name == "esmm"


def test_symbolic_and_eager_call():
    layer = ESMMHead()
    symbolic = layer([keras.Input((1,)), keras.Input((1,))])
    assert isinstance(symbolic, tuple)
    assert [tuple(t.shape) for t in symbolic] == [(None, 1)] * 3
    assert layer.compute_output_shape([(None, 1), (None, 1)]) == (
        (None, 1),
        (None, 1),
        (None, 1),
    )
    eager = layer(list(_logit_grid()))
    assert [_np(t).shape for t in eager] == [(64, 1)] * 3
    assert all(_np(t).dtype == np.float32 for t in eager)


def test_exact_values_with_ones_and_zeros():
    # Dense layers with "ones"/"zeros" kernels give logits sum(x) and 0.
    inputs = keras.Input((2,))
    ctr_logit = keras.layers.Dense(1, kernel_initializer="ones")(inputs)
    cvr_logit = keras.layers.Dense(1, kernel_initializer="zeros")(inputs)
    model = keras.Model(inputs, ESMMHead()([ctr_logit, cvr_logit]))
    p_ctr, p_cvr, p_ctcvr = model(np.array([[0.0, 0.0], [1.0, 1.0]], "f4"))
    s2 = 1.0 / (1.0 + np.exp(-2.0))
    np.testing.assert_allclose(_np(p_ctr), [[0.5], [s2]], rtol=1e-6)
    np.testing.assert_allclose(_np(p_cvr), [[0.5], [0.5]], rtol=1e-6)
    np.testing.assert_allclose(_np(p_ctcvr), [[0.25], [s2 / 2]], rtol=1e-6)


def test_ctcvr_is_stable_product_for_extreme_logits():
    ctr_logit, cvr_logit = _logit_grid()
    p_ctr, p_cvr, p_ctcvr = (_np(t) for t in ESMMHead()([ctr_logit, cvr_logit]))
    for p in (p_ctr, p_cvr, p_ctcvr):
        assert np.all(np.isfinite(p))
        assert np.all((p >= 0.0) & (p <= 1.0))
    np.testing.assert_allclose(p_ctcvr, p_ctr * p_cvr, rtol=1e-6)
    # Accurate against float64, including the ~1e-35 corner (-40, -40).
    exact = _sigmoid(ctr_logit) * _sigmoid(cvr_logit)
    np.testing.assert_allclose(p_ctcvr, exact, rtol=1e-5)
    assert p_ctcvr.min() > 0.0


def test_cvr_logit_gradient_comes_only_from_ctcvr():
    """The gradient reaching the CVR logit is exactly the CTCVR loss's.

    With losses on CTR and CTCVR only (the ESMM objective), the CTR loss
    does not reach the CVR logit, and the CTCVR gradient matches the
    closed form d BCE(y, s(a) s(b)) / d b = (p - y) / (1 - p) * (1 - s(b)),
    averaged over the batch.
    """
    rng = np.random.default_rng(0)
    ctr_logit = rng.normal(size=(6, 1)).astype("float32")
    cvr_logit = rng.normal(size=(6, 1)).astype("float32")
    y_ctr = np.array([[1], [1], [0], [1], [0], [1]], "float32")
    y_ctcvr = np.array([[1], [0], [0], [0], [0], [1]], "float32")
    head = ESMMHead()

    def total_loss(b):
        p_ctr, _, p_ctcvr = head([ctr_logit, b])
        return _bce(y_ctr, p_ctr) + _bce(y_ctcvr, p_ctcvr)

    def ctcvr_loss(b):
        return _bce(y_ctcvr, head([ctr_logit, b])[2])

    def ctr_loss(b):
        return _bce(y_ctr, head([ctr_logit, b])[0])

    grad_total = _grad(total_loss, cvr_logit)
    np.testing.assert_allclose(grad_total, _grad(ctcvr_loss, cvr_logit))
    np.testing.assert_array_equal(_grad(ctr_loss, cvr_logit), 0.0)
    p = _sigmoid(ctr_logit) * _sigmoid(cvr_logit)
    closed_form = (p - y_ctcvr) / (1 - p) * (1 - _sigmoid(cvr_logit)) / 6
    np.testing.assert_allclose(grad_total, closed_form, rtol=1e-4)


def test_one_step_fit_trains_cvr_tower_through_ctcvr_only():
    """One SGD step on CTR + CTCVR losses moves the CVR kernel by exactly
    -lr * mean(dL_ctcvr / d cvr_logit * x), the closed-form gradient."""
    x = np.array([[0.5], [-1.0], [2.0], [1.0]], "float32")
    y_ctr = np.array([[1.0], [0.0], [1.0], [1.0]], "float32")
    y_ctcvr = np.array([[1.0], [0.0], [0.0], [1.0]], "float32")
    inputs = keras.Input((1,))
    ctr_logit = keras.layers.Dense(
        1, use_bias=False, kernel_initializer="ones", name="ctr_logit"
    )(inputs)
    cvr_logit = keras.layers.Dense(
        1,
        use_bias=False,
        kernel_initializer=keras.initializers.Constant(0.3),
        name="cvr_logit",
    )(inputs)
    p_ctr, p_cvr, p_ctcvr = ESMMHead()([ctr_logit, cvr_logit])
    model = keras.Model(inputs, {"ctr": p_ctr, "cvr": p_cvr, "ctcvr": p_ctcvr})
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        loss={"ctr": "binary_crossentropy", "ctcvr": "binary_crossentropy"},
        jit_compile=False,
    )
    history = model.fit(
        x, {"ctr": y_ctr, "ctcvr": y_ctcvr}, batch_size=4, verbose=0
    )
    assert np.isfinite(history.history["loss"][0])
    new_kernel = _np(model.get_layer("cvr_logit").kernel)[0, 0]
    p = _sigmoid(x) * _sigmoid(0.3 * x)
    grad = np.mean((p - y_ctcvr) / (1 - p) * (1 - _sigmoid(0.3 * x)) * x)
    np.testing.assert_allclose(new_kernel, 0.3 - 0.1 * grad, rtol=1e-4)


def test_mixed_bfloat16(mixed_bfloat16):
    ctr_logit, cvr_logit = _logit_grid()
    outputs = ESMMHead()([ctr_logit, cvr_logit])
    # Probabilities stay float32 under a mixed policy (bfloat16 would keep
    # 3 significant digits).
    for tensor in outputs:
        assert keras.backend.standardize_dtype(tensor.dtype) == "float32"
        assert np.all(np.isfinite(_np(tensor)))
    exact = _sigmoid(ctr_logit) * _sigmoid(cvr_logit)
    np.testing.assert_allclose(_np(outputs[2]), exact, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "inputs",
    [np.zeros((2, 1), "f4"), [np.zeros((2, 1), "f4")] * 3],
    ids=["single_tensor", "three_tensors"],
)
def test_invalid_inputs(inputs):
    with pytest.raises(ValueError, match="ctr_logit.*cvr_logit"):
        ESMMHead()(inputs)


def test_keras_save_and_load(tmp_path):
    inputs = keras.Input((3,))
    ctr_logit = keras.layers.Dense(1)(inputs)
    cvr_logit = keras.layers.Dense(1)(inputs)
    p_ctr, p_cvr, p_ctcvr = ESMMHead(name="esmm")([ctr_logit, cvr_logit])
    model = keras.Model(inputs, {"ctr": p_ctr, "cvr": p_cvr, "ctcvr": p_ctcvr})
    path = tmp_path / "esmm.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("esmm"), ESMMHead)
    x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    expected = model.predict(x, verbose=0)
    actual = loaded.predict(x, verbose=0)
    for key in ("ctr", "cvr", "ctcvr"):
        np.testing.assert_allclose(actual[key], expected[key])
