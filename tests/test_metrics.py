"""Tests of keras_mtl.metrics: Keras task metrics, exact AUC/GAUC, reports.

Every test but the tf.data one is backend-agnostic and carries the
`backend` marker.
"""

import time

import keras
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score
from sklearn.metrics import log_loss
from sklearn.metrics import mean_absolute_error
from sklearn.metrics import mean_squared_error
from sklearn.metrics import roc_auc_score

from keras_mtl import Task
from keras_mtl import metrics
from keras_mtl.losses import task_loss

backend = pytest.mark.backend

TASKS = [
    Task("click"),
    Task("watch", "regression", space="click"),
    Task("topic", "multiclass", num_classes=3),
]


def scalar(value):
    return float(keras.ops.convert_to_numpy(value))


def np_logloss(y, p, w):
    # Clipped like Keras in float32, where 1 - 1e-7 rounds to 1 - 1.19e-7.
    lower, upper = np.float32(1e-7), np.float32(1 - 1e-7)
    p = np.clip(np.asarray(p, "float64").reshape(-1), lower, upper)
    values = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return float(np.sum(values * w) / np.sum(w))


def gauc_loop(labels, preds, groups, weights=None):
    """Straightforward GAUC: a Python loop over groups with sklearn."""
    labels, preds, groups = map(np.asarray, (labels, preds, groups))
    if weights is None:
        weights = np.ones(len(labels))
    total, weighted = 0.0, 0.0
    for group in pd.unique(groups):
        rows = (groups == group) & (weights > 0)
        if len(np.unique(labels[rows])) < 2:
            continue
        value = roc_auc_score(
            labels[rows], preds[rows], sample_weight=weights[rows]
        )
        weighted += value * weights[rows].sum()
        total += weights[rows].sum()
    return weighted / total if total else np.nan


def keras_auc_error_bound(labels, preds, weights, num_thresholds=200):
    """Worst-case error of the Keras trapezoidal AUC vs the exact AUC.

    Pairs in different threshold buckets are ordered exactly; a pair in
    the same bucket gets credit 1/2 where the truth is 0, 1/2 or 1. So the
    error is at most half the weighted fraction of same-bucket pairs.
    """
    inner = [(i + 1) / (num_thresholds - 1) for i in range(num_thresholds - 2)]
    thresholds = np.array([-1e-7] + inner + [1 + 1e-7])
    bucket = np.searchsorted(thresholds, preds, side="left")
    pos = np.bincount(bucket, weights * labels, minlength=num_thresholds + 1)
    neg = np.bincount(
        bucket, weights * (1 - labels), minlength=num_thresholds + 1
    )
    return 0.5 * float(np.sum(pos * neg) / (pos.sum() * neg.sum()))


def report_model():
    inputs = {"f": keras.Input((4,), name="f")}
    hidden = keras.layers.Dense(8, activation="tanh", name="hidden")(
        inputs["f"]
    )
    outputs = {
        "click": keras.layers.Dense(1, activation="sigmoid", name="ctr")(
            hidden
        ),
        "watch": keras.layers.Dense(1, name="watch_time")(hidden),
        "topic": keras.layers.Dense(3, activation="softmax", name="topic_p")(
            hidden
        ),
    }
    return keras.Model(inputs, outputs)


def report_data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(n, 4)).astype("float32")
    click = (rng.random(n) < 1 / (1 + np.exp(-f[:, 0]))).astype("float32")
    watch = (rng.normal(size=n) + f[:, 1]).astype("float32")
    topic = rng.integers(0, 3, n)
    topic_seen = rng.random(n) < 0.8  # NaN labels elsewhere
    users = np.array([f"u{i}" for i in rng.integers(0, 25, n)])
    x = {"f": f, "user_id": users}
    y = {
        "click": click,
        "watch": watch * click,
        "topic": np.where(topic_seen, topic, 0),
    }
    sw = {
        "click": np.ones(n, "float32"),
        "watch": click.copy(),
        "topic": topic_seen.astype("float32"),
    }
    return x, y, sw


# ---------------------------------------------------------------------------
# task_metrics and the Keras metrics.
# ---------------------------------------------------------------------------


@backend
@pytest.mark.parametrize(
    "task, expected",
    [
        (
            TASKS[0],
            [
                ("auc", keras.metrics.AUC),
                ("logloss", metrics.LogLoss),
                ("pcoc", metrics.PCOC),
            ],
        ),
        (
            TASKS[1],
            [
                ("rmse", keras.metrics.RootMeanSquaredError),
                ("mae", keras.metrics.MeanAbsoluteError),
            ],
        ),
        (
            TASKS[2],
            [
                ("accuracy", keras.metrics.SparseCategoricalAccuracy),
                ("logloss", keras.metrics.SparseCategoricalCrossentropy),
            ],
        ),
    ],
    ids=["binary", "regression", "multiclass"],
)
def test_task_metrics_by_kind(task, expected):
    built = metrics.task_metrics(task)
    assert [(m.name, type(m)) for m in built] == expected
    again = metrics.task_metrics(task)
    assert all(a is not b for a, b in zip(built, again))


@backend
def test_task_metrics_binary_auc_is_keras_default():
    auc_metric = metrics.task_metrics(TASKS[0])[0]
    assert auc_metric.num_thresholds == 200
    assert isinstance(
        metrics.task_metrics(TASKS[0])[1], (keras.metrics.BinaryCrossentropy)
    )


@backend
def test_task_metrics_rejects_non_task():
    with pytest.raises(ValueError, match="`task` must be a `keras_mtl.Task`"):
        metrics.task_metrics("click")


@backend
def test_pcoc_metric_streams_weighted_ratio():
    rng = np.random.default_rng(0)
    m = metrics.PCOC()
    ys, ps, ws = [], [], []
    for _ in range(3):
        y = (rng.random(20) < 0.3).astype("float32")
        p = rng.random((20, 1)).astype("float32")
        w = (rng.random(20) < 0.7).astype("float32")
        m.update_state(y, p, sample_weight=w)
        ys.append(y)
        ps.append(p[:, 0])
        ws.append(w)
    y, p, w = map(np.concatenate, (ys, ps, ws))
    expected = np.sum(w * p) / np.sum(w * y)
    np.testing.assert_allclose(scalar(m.result()), expected, rtol=1e-5)
    assert abs(expected - p.sum() / y.sum()) > 1e-3  # weights matter here
    m.reset_state()
    assert np.isnan(scalar(m.result()))
    m.update_state([1.0, 0.0, 1.0, 0.0], [0.6, 0.2, 0.8, 0.4])
    np.testing.assert_allclose(scalar(m.result()), 1.0, rtol=1e-6)


@backend
def test_pcoc_metric_nan_without_positive_and_config():
    m = metrics.PCOC(name="cal")
    m.update_state(np.zeros(4), np.full((4, 1), 0.3))
    assert np.isnan(scalar(m.result()))
    assert m.get_config() == {"name": "cal", "dtype": "float32"}
    restored = keras.metrics.deserialize(keras.metrics.serialize(m))
    assert isinstance(restored, metrics.PCOC)
    assert restored.name == "cal"


@backend
def test_logloss_metric_accepts_rank_1_labels():
    rng = np.random.default_rng(1)
    y = (rng.random(50) < 0.4).astype("float32")
    p = rng.uniform(0, 1, (50, 1)).astype("float32")
    p[:3] = [[0.0], [1.0], [0.5]]
    w = (rng.random(50) < 0.6).astype("float32")
    m = metrics.LogLoss()
    m.update_state(y, p, sample_weight=w)
    np.testing.assert_allclose(
        scalar(m.result()), np_logloss(y, p, w), rtol=1e-5
    )
    # The Keras metric, given same-rank inputs, agrees.
    keras_m = keras.metrics.BinaryCrossentropy()
    keras_m.update_state(y[:, None], p, sample_weight=w)
    np.testing.assert_allclose(
        scalar(m.result()), scalar(keras_m.result()), rtol=1e-6
    )
    restored = keras.metrics.deserialize(keras.metrics.serialize(m))
    assert isinstance(restored, metrics.LogLoss)
    assert restored.get_config() == m.get_config()


@backend
def test_keras_auc_with_sample_weight_matches_sklearn_in_space():
    rng = np.random.default_rng(2)
    n = 3000
    y = (rng.random(n) < 0.3).astype("float32")
    p = (1 / (1 + np.exp(-(1.5 * y + rng.normal(size=n) - 1)))).astype(
        "float32"
    )
    sw = (rng.random(n) < 0.6).astype("float32")
    auc_metric = metrics.task_metrics(Task("click"))[0]
    auc_metric.update_state(y, p[:, None], sample_weight=sw)
    keep = sw > 0
    exact = roc_auc_score(y[keep], p[keep])
    # Keras buckets scores into 200 thresholds: its trapezoid credits a
    # positive/negative pair in the same bucket 1/2, so the error is at most
    # half the fraction of same-bucket pairs (~2e-3 here).
    bound = keras_auc_error_bound(y, p, sw)
    assert 0 < bound < 5e-3
    assert abs(scalar(auc_metric.result()) - exact) <= bound + 1e-6
    # Unmasked, the same metric differs: the mask really applies.
    unmasked = roc_auc_score(y, p)
    assert abs(unmasked - exact) > abs(scalar(auc_metric.result()) - exact)


@backend
def test_compiled_weighted_metrics_match_sklearn():
    model = report_model()
    model.compile(
        optimizer="sgd",
        loss={t.name: task_loss(t) for t in TASKS},
        weighted_metrics={t.name: metrics.task_metrics(t) for t in TASKS},
    )
    x, y, sw = report_data()
    x = {"f": x["f"]}
    n = len(x["f"])
    result = model.evaluate(
        x, y, sample_weight=sw, batch_size=n, return_dict=True, verbose=0
    )
    pred = model.predict(x, batch_size=n, verbose=0)
    p = pred["click"][:, 0]
    bound = keras_auc_error_bound(y["click"], p, sw["click"])
    assert (
        abs(result["click_auc"] - roc_auc_score(y["click"], p)) <= bound + 1e-6
    )
    np.testing.assert_allclose(
        result["click_logloss"], log_loss(y["click"], p), rtol=1e-5
    )
    np.testing.assert_allclose(
        result["click_pcoc"], p.sum() / y["click"].sum(), rtol=1e-5
    )
    keep = sw["watch"] > 0
    watch = pred["watch"][keep, 0]
    np.testing.assert_allclose(
        result["watch_rmse"],
        np.sqrt(mean_squared_error(y["watch"][keep], watch)),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        result["watch_mae"],
        mean_absolute_error(y["watch"][keep], watch),
        rtol=1e-5,
    )
    keep = sw["topic"] > 0
    topic = pred["topic"][keep].astype("float64")
    topic /= topic.sum(axis=1, keepdims=True)  # float32 softmax rounding
    np.testing.assert_allclose(
        result["topic_accuracy"],
        accuracy_score(y["topic"][keep], topic.argmax(axis=1)),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        result["topic_logloss"],
        log_loss(y["topic"][keep], topic, labels=[0, 1, 2]),
        rtol=1e-5,
    )


# ---------------------------------------------------------------------------
# numpy metrics: auc, gauc, pcoc.
# ---------------------------------------------------------------------------


def auc_case(name):
    rng = np.random.default_rng(3)
    n = 500
    y = (rng.random(n) < 0.35).astype("float64")
    p = rng.random(n) + 0.3 * y
    w = None
    if name == "ties":
        p = np.round(p, 1)
    elif name == "weights":
        w = rng.random(n) * (rng.random(n) < 0.8)
    elif name == "ties_weights":
        p = np.round(p, 1)
        w = rng.integers(0, 4, n).astype("float64")
    return y, p, w


@backend
@pytest.mark.parametrize(
    "case", ["plain", "ties", "weights", "ties_weights"], ids=str
)
def test_exact_auc_matches_sklearn(case):
    y, p, w = auc_case(case)
    expected = roc_auc_score(y, p, sample_weight=w)
    assert abs(metrics.auc(y, p, w) - expected) < 1e-12
    assert abs(metrics.auc(y, p[:, None], w) - expected) < 1e-12


@backend
def test_exact_auc_small_example_and_edge_cases():
    assert metrics.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert metrics.auc([0, 1], [0.5, 0.5]) == 0.5
    assert np.isnan(metrics.auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert np.isnan(metrics.auc([0, 1], [0.2, 0.3], weights=[1.0, 0.0]))
    with pytest.raises(ValueError, match="`labels` must be 0 or 1"):
        metrics.auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="as many values as `labels`"):
        metrics.auc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="`preds` must be finite"):
        metrics.auc([0, 1], [0.1, np.nan])


@backend
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weights"])
def test_gauc_matches_per_group_loop(weighted):
    rng = np.random.default_rng(4)
    n = 2000
    groups = np.array([f"user_{i}" for i in rng.integers(0, 80, n)])
    y = (rng.random(n) < 0.3).astype("float64")
    p = np.round(rng.random(n) + 0.4 * y, 2)
    # Some users see only negatives, some only positives: skipped.
    y[groups == "user_1"] = 0
    y[groups == "user_2"] = 1
    w = rng.random(n) * (rng.random(n) < 0.9) if weighted else None
    expected = gauc_loop(y, p, groups, w)
    assert abs(metrics.gauc(y, p, groups, w) - expected) < 1e-12
    # Not the global AUC under another name.
    assert abs(expected - metrics.auc(y, p, w)) > 1e-4


@backend
def test_gauc_small_example_and_no_qualifying_group():
    value = metrics.gauc(
        labels=[1, 0, 1, 0, 0],
        preds=[0.9, 0.2, 0.3, 0.6, 0.1],
        groups=["a", "a", "b", "b", "c"],
    )
    assert value == 0.5
    # Impression weighting: group a has 3 rows with AUC 1, group b 1 pair.
    value = metrics.gauc(
        labels=[1, 0, 0, 1, 0],
        preds=[0.9, 0.2, 0.1, 0.3, 0.6],
        groups=[7, 7, 7, 8, 8],
    )
    assert value == pytest.approx((3 * 1.0 + 2 * 0.0) / 5, abs=1e-15)
    assert np.isnan(metrics.gauc([1, 0], [0.4, 0.5], ["a", "b"]))


@backend
def test_gauc_handles_a_million_rows_in_seconds():
    rng = np.random.default_rng(5)
    n = 1_000_000
    groups = rng.integers(0, 100_000, n)
    y = (rng.random(n) < 0.2).astype("float64")
    p = rng.random(n) + 0.2 * y
    start = time.perf_counter()
    value = metrics.gauc(y, p, groups)
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0, f"gauc took {elapsed:.1f}s on 1M rows"
    sample = groups < 100  # check the value on a subset of the users
    expected = gauc_loop(y[sample], p[sample], groups[sample])
    subset = metrics.gauc(y[sample], p[sample], groups[sample])
    assert abs(subset - expected) < 1e-12
    assert 0.55 < value < 0.75


@backend
def test_pcoc_function():
    assert metrics.pcoc([1, 0, 1, 0], [0.6, 0.2, 0.8, 0.4]) == 1.0
    rng = np.random.default_rng(6)
    y = (rng.random(100) < 0.3).astype("float64")
    p = rng.random((100, 1))
    w = rng.random(100)
    np.testing.assert_allclose(
        metrics.pcoc(y, p, w), np.sum(w * p[:, 0]) / np.sum(w * y), rtol=1e-12
    )
    assert np.isnan(metrics.pcoc([0, 0], [0.1, 0.2]))


def ece_loop(labels, preds, bins):
    """ECE of distinct predictions in `bins` bins of equal size (the
    number of rows a multiple of `bins`)."""
    order = np.argsort(preds)
    gaps = [
        abs(np.mean(preds[part]) - np.mean(labels[part]))
        for part in np.split(order, bins)
    ]
    return float(np.mean(gaps))


@backend
def test_calibration_table_and_error_on_a_small_example():
    table = metrics.calibration_table(
        [0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9], bins=2
    )
    assert list(table.columns) == [
        "n",
        "weight",
        "pred_min",
        "pred_max",
        "mean_pred",
        "mean_label",
        "pcoc",
    ]
    np.testing.assert_allclose(table["mean_pred"], [0.15, 0.8])
    np.testing.assert_allclose(table["mean_label"], [0.0, 1.0])
    assert np.isnan(table["pcoc"][0]) and table["pcoc"][1] == 0.8
    assert metrics.calibration_error(
        [0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9], bins=2
    ) == pytest.approx(0.175)
    # Tied predictions share a bin even when it takes more than its share.
    table = metrics.calibration_table(
        [0, 1, 0, 1], [0.3, 0.3, 0.3, 0.8], bins=4
    )
    assert list(table["n"]) == [3, 1]
    np.testing.assert_allclose(table["mean_label"], [1 / 3, 1.0])
    # A weight of 2 counts a row twice; weight 0 leaves it out.
    rng = np.random.default_rng(3)
    y = (rng.random(60) < 0.4).astype("float64")
    p = rng.random(60)
    twice = metrics.calibration_error(
        np.concatenate([y, y[:20]]), np.concatenate([p, p[:20]]), bins=5
    )
    weights = np.r_[np.full(20, 2.0), np.ones(40)]
    np.testing.assert_allclose(
        metrics.calibration_error(y, p, weights, bins=5), twice, rtol=1e-12
    )
    dropped = metrics.calibration_error(y[10:], p[10:], bins=5)
    weights = np.r_[np.zeros(10), np.ones(50)]
    np.testing.assert_allclose(
        metrics.calibration_error(y, p, weights, bins=5), dropped, rtol=1e-12
    )
    assert np.isnan(metrics.calibration_error([1, 0], [0.2, 0.4], [0, 0]))
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="`bins` must be an integer"):
            metrics.calibration_table([1, 0], [0.2, 0.4], bins=bad)
    with pytest.raises(ValueError, match="`labels` must be 0 or 1"):
        metrics.calibration_error([2, 0], [0.2, 0.4])


@backend
def test_calibration_error_separates_calibrated_from_miscalibrated():
    rng = np.random.default_rng(4)
    p = rng.beta(1, 8, 200_000)  # mostly small probabilities, like CTRs
    y = (rng.random(len(p)) < p).astype("float64")
    assert len(p) % 20 == 0
    calibrated = metrics.calibration_error(y, p, bins=20)
    np.testing.assert_allclose(calibrated, ece_loop(y, p, 20), rtol=1e-9)
    assert calibrated < 0.003
    # Too timid (pulled toward the average): right on average overall, so
    # PCOC is about 1, but wrong in every bin but the middle ones.
    timid = p.mean() + 0.3 * (p - p.mean())
    assert abs(metrics.pcoc(y, timid) - 1.0) < 0.02
    # E|0.7 (p - mean p)| is about 0.054.
    assert metrics.calibration_error(y, timid, bins=20) > 0.04
    # Equal-weight bins: 20 rows of about 10,000 each.
    table = metrics.calibration_table(y, p, bins=20)
    assert len(table) == 20 and set(table["n"]) == {10_000}
    assert np.all(np.diff(table["mean_pred"]) > 0)


# ---------------------------------------------------------------------------
# evaluate_report.
# ---------------------------------------------------------------------------


def check_report(report, model, x, y, sw, with_gauc=True):
    columns = ["kind", "n", "auc", "logloss", "pcoc", "ece"]
    columns += ["rmse", "mae", "accuracy"]
    if with_gauc:
        columns.insert(3, "gauc")
    assert list(report.columns) == columns
    assert list(report.index) == ["click", "watch", "topic"]
    assert list(report["kind"]) == ["binary", "regression", "multiclass"]
    assert list(report["n"]) == [int((sw[t] > 0).sum()) for t in report.index]
    assert report.loc["watch", "n"] < report.loc["click", "n"]
    pred = model.predict({"f": x["f"]}, verbose=0)

    click = report.loc["click"]
    p = pred["click"][:, 0].astype("float64")
    assert abs(click["auc"] - roc_auc_score(y["click"], p)) < 1e-12
    np.testing.assert_allclose(
        click["logloss"], log_loss(y["click"], p), rtol=1e-9
    )
    np.testing.assert_allclose(
        click["pcoc"], p.sum() / y["click"].sum(), rtol=1e-9
    )
    # Every click row is in the space; 10 bins of equal size.
    assert len(p) % 10 == 0
    np.testing.assert_allclose(
        click["ece"], ece_loop(y["click"], p, 10), rtol=1e-7
    )
    if with_gauc:
        expected = gauc_loop(y["click"], p, x["user_id"])
        assert abs(click["gauc"] - expected) < 1e-12
    assert click[["rmse", "mae", "accuracy"]].isna().all()

    watch = report.loc["watch"]
    keep = sw["watch"] > 0
    w_pred = pred["watch"][keep, 0].astype("float64")
    np.testing.assert_allclose(
        watch["rmse"],
        np.sqrt(mean_squared_error(y["watch"][keep], w_pred)),
        rtol=1e-9,
    )
    np.testing.assert_allclose(
        watch["mae"], mean_absolute_error(y["watch"][keep], w_pred), rtol=1e-9
    )
    assert watch[["auc", "logloss", "pcoc", "accuracy"]].isna().all()

    topic = report.loc["topic"]
    keep = sw["topic"] > 0
    t_pred = pred["topic"][keep].astype("float64")
    t_pred /= t_pred.sum(axis=1, keepdims=True)  # float32 softmax rounding
    np.testing.assert_allclose(
        topic["accuracy"],
        accuracy_score(y["topic"][keep], t_pred.argmax(axis=1)),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        topic["logloss"],
        log_loss(y["topic"][keep], t_pred, labels=[0, 1, 2]),
        rtol=1e-6,
    )
    assert topic[["auc", "pcoc", "rmse", "mae"]].isna().all()


@backend
def test_evaluate_report_from_arrays():
    model = report_model()
    x, y, sw = report_data()
    report = metrics.evaluate_report(
        model, (x, y, sw), TASKS, user_column="user_id", batch_size=64
    )
    check_report(report, model, x, y, sw, with_gauc=True)
    plain = metrics.evaluate_report(model, (x, y, sw), TASKS)
    assert "gauc" not in plain.columns
    pd.testing.assert_frame_equal(plain, report.drop(columns="gauc"))


@backend
def test_evaluate_report_task_without_in_space_rows():
    model = report_model()
    x, y, sw = report_data(n=40)
    sw = dict(sw, watch=np.zeros(40, "float32"))
    report = metrics.evaluate_report(model, (x, y, sw), TASKS)
    assert report.loc["watch", "n"] == 0
    assert report.loc["watch", ["rmse", "mae"]].isna().all()
    assert np.isfinite(report.loc["click", "auc"])


@backend
def test_evaluate_report_errors():
    model = report_model()
    x, y, sw = report_data(n=20)
    with pytest.raises(ValueError, match="Task 'order' is not an output"):
        metrics.evaluate_report(model, (x, y, sw), [Task("order")])
    with pytest.raises(ValueError, match="user_column=.*'uid'"):
        metrics.evaluate_report(model, (x, y, sw), TASKS, user_column="uid")
    with pytest.raises(ValueError, match="`features` is required"):
        metrics.evaluate_report(model, pd.DataFrame({"f": [1.0]}), TASKS)
    with pytest.raises(ValueError, match="Task 'watch' has no labels"):
        metrics.evaluate_report(
            model, (x, {"click": y["click"]}, sw), TASKS[:2]
        )
    with pytest.raises(ValueError, match="`data` must be a pandas DataFrame"):
        metrics.evaluate_report(model, x, TASKS)
    with pytest.raises(ValueError, match="`calibration_bins` must be"):
        metrics.evaluate_report(model, (x, y, sw), TASKS, calibration_bins=0)


def test_evaluate_report_from_tf_dataset():
    import tensorflow as tf

    model = report_model()
    x, y, sw = report_data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y, sw)).batch(37)
    report = metrics.evaluate_report(
        model, dataset, TASKS, user_column="user_id"
    )
    # String ids come back from tf.data as bytes: same grouping.
    check_report(report, model, x, y, sw, with_gauc=True)
    expected = metrics.evaluate_report(
        model, (x, y, sw), TASKS, user_column="user_id"
    )
    pd.testing.assert_frame_equal(report, expected)


def test_evaluate_report_from_dataframe():
    from keras_mtl.features import NumericFeature

    rng = np.random.default_rng(7)
    n = 120
    df = pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "user": rng.integers(0, 10, n),
            "click": (rng.random(n) < 0.4).astype("float64"),
        }
    )
    df["buy"] = np.where(df["click"] == 1, rng.random(n) < 0.5, 0.0)
    df.loc[[0, 5], "click"] = np.nan
    tasks = [Task("click"), Task("buy", space="click")]
    inputs = {"a": keras.Input((1,), name="a")}
    hidden = keras.layers.Dense(4, activation="tanh")(inputs["a"])
    model = keras.Model(
        inputs,
        {
            "click": keras.layers.Dense(1, activation="sigmoid")(hidden),
            "buy": keras.layers.Dense(1, activation="sigmoid")(hidden),
        },
    )
    report = metrics.evaluate_report(
        model, df, tasks, features=[NumericFeature("a")], user_column="user"
    )
    pred = model.predict({"a": df["a"].to_numpy("float32")}, verbose=0)
    click_rows = df["click"].notna().to_numpy()
    buy_rows = (df["click"] == 1).to_numpy()
    assert list(report["n"]) == [click_rows.sum(), buy_rows.sum()]
    for name, rows in (("click", click_rows), ("buy", buy_rows)):
        labels = df[name].to_numpy()[rows]
        p = pred[name][rows, 0]
        assert abs(report.loc[name, "auc"] - roc_auc_score(labels, p)) < 1e-12
        expected = gauc_loop(labels, p, df["user"].to_numpy()[rows])
        assert abs(report.loc[name, "gauc"] - expected) < 1e-12
    with pytest.raises(ValueError, match="user_column=.*'nobody'"):
        metrics.evaluate_report(
            model,
            df,
            tasks,
            features=[NumericFeature("a")],
            user_column="nobody",
        )
