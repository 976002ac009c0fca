"""Tests of keras_mtl.losses: masked task losses and the KL bound."""

import keras
import numpy as np
import pytest

from keras_mtl import Task
from keras_mtl import losses

pytestmark = pytest.mark.backend

EPS = 1e-7


# ---------------------------------------------------------------------------
# numpy references.
# ---------------------------------------------------------------------------


def np_bce(y, p):
    p = np.clip(p.astype("float64").reshape(-1), EPS, 1 - EPS)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def np_mse(y, p):
    return (p.astype("float64").reshape(-1) - y) ** 2


def np_sparse_ce(y, p):
    p = p.astype("float64")
    p = p / p.sum(axis=1, keepdims=True)
    return -np.log(np.clip(p[np.arange(len(y)), y], EPS, 1 - EPS))


def np_masked_mean(values, w):
    return float(np.sum(values * w) / np.sum(w))


def np_kl_bound(p, q, eps=EPS):
    """KL(p||q) + KL(q||p), written out term by term (no simplification).

    Clips like `kl_bound` does in float32, where `1 - 1e-7` rounds to
    `1 - 1.19e-7`.
    """
    lower, upper = np.float32(eps), np.float32(1 - eps)
    p = np.clip(np.asarray(p, "float64"), lower, upper)
    q = np.clip(np.asarray(q, "float64"), lower, upper)
    kl_pq = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
    kl_qp = q * np.log(q / p) + (1 - q) * np.log((1 - q) / (1 - p))
    return np.mean(kl_pq + kl_qp, axis=-1)


def make_case(kind, n=40, seed=0):
    """Labels, predictions, reference loss fn and a 0/1 mask for one kind."""
    rng = np.random.default_rng(seed)
    if kind == "binary":
        y = (rng.random(n) < 0.4).astype("float32")
        p = rng.uniform(0.01, 0.99, (n, 1)).astype("float32")
        ref = np_bce
    elif kind == "regression":
        y = rng.normal(size=n).astype("float32")
        p = rng.normal(size=(n, 1)).astype("float32")
        ref = np_mse
    else:
        y = rng.integers(0, 3, n)
        p = rng.dirichlet(np.ones(3), n).astype("float32")
        ref = np_sparse_ce
    sw = (rng.random(n) < 0.5).astype("float32")
    return y, p, ref, sw


def make_task(kind):
    return Task("t", kind, num_classes=3 if kind == "multiclass" else None)


KINDS = ["binary", "regression", "multiclass"]


# ---------------------------------------------------------------------------
# task_loss.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, cls",
    [
        ("binary", keras.losses.BinaryCrossentropy),
        ("regression", keras.losses.MeanSquaredError),
        ("multiclass", keras.losses.SparseCategoricalCrossentropy),
    ],
    ids=KINDS,
)
def test_task_loss_class_name_and_reduction(kind, cls):
    loss = losses.task_loss(make_task(kind))
    assert type(loss) is cls
    assert loss.name == "t"
    assert loss.reduction == "mean_with_sample_weight"
    assert losses.task_loss(make_task(kind)) is not loss


def test_task_loss_rejects_non_task():
    with pytest.raises(ValueError, match="`task` must be a `keras_mtl.Task`"):
        losses.task_loss("click")


@pytest.mark.parametrize("kind", KINDS, ids=KINDS)
def test_task_loss_is_mean_over_in_space_samples(kind):
    y, p, ref, sw = make_case(kind)
    loss = losses.task_loss(make_task(kind))
    value = float(loss(y, p, sample_weight=sw))
    expected = np_masked_mean(ref(y, p), sw)
    # Not the plain mean over the batch: the mask matters in this case.
    assert abs(float(np.mean(ref(y, p))) - expected) > 1e-3
    np.testing.assert_allclose(value, expected, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS, ids=KINDS)
def test_task_loss_ignores_labels_outside_space(kind):
    y, p, _, sw = make_case(kind)
    loss = losses.task_loss(make_task(kind))
    before = float(loss(y, p, sample_weight=sw))
    altered = y.copy()
    out = sw == 0
    if kind == "binary":
        altered[out] = 1 - altered[out]
    elif kind == "regression":
        altered[out] = altered[out] + 100.0
    else:
        altered[out] = (altered[out] + 1) % 3
    after = float(loss(altered, p, sample_weight=sw))
    assert after == before
    # Without the weights the altered labels do change the loss.
    assert float(loss(altered, p)) != pytest.approx(float(loss(y, p)))


@pytest.mark.parametrize("kind", ["binary", "regression"], ids=str)
def test_task_loss_nan_label_rows_contribute_nothing(kind):
    y, p, ref, space = make_case(kind, n=30, seed=3)
    raw = y.astype("float64")
    raw[[1, 4, 7, 20]] = np.nan
    observed = ~np.isnan(raw)
    # What keras_mtl.data yields: NaN -> 0 and weight 0.
    labels = np.nan_to_num(raw, nan=0.0).astype("float32")
    sw = (space * observed).astype("float32")
    loss = losses.task_loss(make_task(kind))
    value = float(loss(labels, p, sample_weight=sw))
    keep = (space > 0) & observed
    expected = float(np.mean(ref(y[keep], p[keep])))
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    # Replacing NaN by 1 instead of 0 gives the same loss.
    other = np.nan_to_num(raw, nan=1.0).astype("float32")
    assert float(loss(other, p, sample_weight=sw)) == value


def test_task_loss_is_zero_for_batch_without_space():
    y, p, _, _ = make_case("binary", n=8)
    loss = losses.task_loss(make_task("binary"))
    assert float(loss(y, p, sample_weight=np.zeros(8, "float32"))) == 0.0


def two_output_model():
    inputs = {"f": keras.Input((4,), name="f")}
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(
        inputs["f"]
    )
    outputs = {
        "click": keras.layers.Dense(1, activation="sigmoid", name="ctr")(
            hidden
        ),
        "watch": keras.layers.Dense(1, name="watch_time")(hidden),
    }
    return keras.Model(inputs, outputs)


def test_compiled_masked_loss_matches_numpy():
    rng = np.random.default_rng(1)
    n = 64
    tasks = [
        Task("click", weight=1.0),
        Task("watch", "regression", space="click", weight=0.5),
    ]
    x = {"f": rng.normal(size=(n, 4)).astype("float32")}
    click = (rng.random(n) < 0.4).astype("float32")
    watch = rng.normal(size=n).astype("float32")
    y = {"click": click, "watch": watch * click}
    sw = {"click": np.ones(n, "float32"), "watch": click.copy()}
    model = two_output_model()
    model.compile(
        optimizer="sgd",
        loss={t.name: losses.task_loss(t) for t in tasks},
        loss_weights={t.name: t.weight for t in tasks},
    )
    result = model.evaluate(
        x, y, sample_weight=sw, batch_size=n, return_dict=True, verbose=0
    )
    pred = model.predict(x, batch_size=n, verbose=0)
    click_loss = np_masked_mean(np_bce(click, pred["click"]), sw["click"])
    watch_loss = np_masked_mean(np_mse(y["watch"], pred["watch"]), sw["watch"])
    np.testing.assert_allclose(result["click_loss"], click_loss, rtol=1e-5)
    np.testing.assert_allclose(result["watch_loss"], watch_loss, rtol=1e-5)
    np.testing.assert_allclose(
        result["loss"], click_loss + 0.5 * watch_loss, rtol=1e-5
    )
    # Labels outside the watch space do not move the compiled loss.
    y_noisy = {"click": click, "watch": watch + 50.0 * (1 - click)}
    noisy = model.evaluate(
        x, y_noisy, sample_weight=sw, batch_size=n, return_dict=True, verbose=0
    )
    np.testing.assert_allclose(noisy["loss"], result["loss"], rtol=1e-6)


# ---------------------------------------------------------------------------
# kl_bound / KLBound.
# ---------------------------------------------------------------------------


def test_kl_bound_is_zero_when_product_equals_joint():
    rng = np.random.default_rng(0)
    ctr = rng.uniform(0, 1, (50, 1)).astype("float32")
    cvr = rng.uniform(0, 1, (50, 1)).astype("float32")
    chain = ctr * cvr
    value = keras.ops.convert_to_numpy(losses.kl_bound(chain, chain.copy()))
    assert value.shape == (50,)
    np.testing.assert_array_equal(value, np.zeros(50))


def test_kl_bound_is_symmetric_and_matches_numpy():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, (100, 1)).astype("float32")
    q = rng.uniform(0, 1, (100, 1)).astype("float32")
    pq = keras.ops.convert_to_numpy(losses.kl_bound(p, q))
    qp = keras.ops.convert_to_numpy(losses.kl_bound(q, p))
    np.testing.assert_allclose(pq, qp, rtol=1e-6)
    np.testing.assert_allclose(pq, np_kl_bound(p, q), rtol=1e-4, atol=1e-6)
    assert (pq > 0).all()


def test_kl_bound_averages_last_axis():
    p = np.array([[0.2, 0.5], [0.9, 0.1]], "float32")
    q = np.array([[0.3, 0.5], [0.6, 0.1]], "float32")
    value = keras.ops.convert_to_numpy(losses.kl_bound(p, q))
    np.testing.assert_allclose(value, np_kl_bound(p, q), rtol=1e-5)
    # Exact: (p - q) * (logit(p) - logit(q)), halved by the mean.
    logit = lambda v: np.log(v / (1 - v))  # noqa: E731
    np.testing.assert_allclose(
        value[0], 0.5 * (-0.1) * (logit(0.2) - logit(0.3)), rtol=1e-5
    )


@pytest.mark.parametrize(
    "p, q",
    [(0.0, 0.0), (1.0, 1.0), (0.0, 1.0), (1.0, 0.0), (0.0, 0.5), (1.0, 0.3)],
    ids=["0-0", "1-1", "0-1", "1-0", "0-half", "1-0.3"],
)
def test_kl_bound_finite_at_zero_and_one(p, q):
    value = keras.ops.convert_to_numpy(
        losses.kl_bound(np.array([[p]], "float32"), np.array([[q]], "float32"))
    )
    assert np.isfinite(value).all()
    np.testing.assert_allclose(value, np_kl_bound([[p]], [[q]]), rtol=1e-4)
    if p == q:
        assert value[0] == 0.0


def test_kl_bound_gradient_is_finite_at_bounds():
    p = keras.ops.convert_to_tensor(np.array([[0.0], [1.0], [0.4]], "float32"))
    q = keras.ops.convert_to_tensor(np.array([[1.0], [0.0], [0.4]], "float32"))
    loss = losses.KLBound()
    model_in = keras.Input((1,))
    dense = keras.layers.Dense(1, activation="sigmoid")
    model = keras.Model(model_in, dense(model_in))
    model.compile(optimizer="sgd", loss=loss)
    # Targets at 0 and 1: a fit step must keep finite weights.
    model.fit(
        keras.ops.convert_to_numpy(p),
        keras.ops.convert_to_numpy(q),
        epochs=1,
        batch_size=3,
        verbose=0,
    )
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_kl_bound_bfloat16_inputs_stay_finite():
    p = keras.ops.cast(np.array([[1.0], [0.0], [0.25]], "float32"), "bfloat16")
    q = keras.ops.cast(np.array([[0.0], [0.0], [0.5]], "float32"), "bfloat16")
    value = keras.ops.convert_to_numpy(
        keras.ops.cast(losses.kl_bound(p, q), "float32")
    )
    assert np.isfinite(value).all()
    np.testing.assert_allclose(
        value,
        np_kl_bound([[1.0], [0.0], [0.25]], [[0.0], [0.0], [0.5]]),
        rtol=1e-4,
    )


@pytest.mark.parametrize(
    "epsilon", [0, -1e-7, 0.5, float("nan"), True, "x"], ids=str
)
def test_kl_bound_rejects_bad_epsilon(epsilon):
    with pytest.raises(ValueError, match="`epsilon` must be a number"):
        losses.kl_bound(np.ones((1, 1)), np.ones((1, 1)), epsilon=epsilon)
    with pytest.raises(ValueError, match="`epsilon` must be a number"):
        losses.KLBound(epsilon=epsilon)


def test_kl_bound_loss_reductions_and_sample_weight():
    rng = np.random.default_rng(2)
    p = rng.uniform(0, 1, 20).astype("float32")  # rank 1, like labels
    q = rng.uniform(0, 1, (20, 1)).astype("float32")
    per_sample = np_kl_bound(p[:, None], q)
    values = losses.KLBound(reduction=None)(p, q)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(values), per_sample, rtol=1e-4
    )
    np.testing.assert_allclose(
        float(losses.KLBound()(p, q)), per_sample.mean(), rtol=1e-4
    )
    w = (rng.random(20) < 0.5).astype("float32")
    masked = losses.KLBound(reduction="mean_with_sample_weight")
    np.testing.assert_allclose(
        float(masked(p, q, sample_weight=w)),
        np_masked_mean(per_sample, w),
        rtol=1e-4,
    )


def test_kl_bound_loss_config_round_trip():
    loss = losses.KLBound(epsilon=1e-5, reduction="sum", name="kl")
    config = loss.get_config()
    assert config == {"name": "kl", "reduction": "sum", "epsilon": 1e-5}
    again = losses.KLBound.from_config(config)
    assert again.get_config() == config
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, losses.KLBound)
    assert restored.get_config() == config
    p = np.array([[0.2], [0.9]], "float32")
    q = np.array([[0.4], [0.5]], "float32")
    np.testing.assert_allclose(float(restored(p, q)), float(loss(p, q)))
