"""Per-task metrics of keras-mtl: Keras metrics for training, numpy for reports.

- `task_metrics(task)`: fresh Keras metrics for a task's kind, to pass as
  `compile(weighted_metrics={task.name: ...})` so that each task's sample
  weights (its sample space) apply to its metrics as they do to its loss.
- `PCOC`: streaming calibration metric, predicted over observed positives.
- `auc`, `gauc`, `pcoc`: exact numpy/pandas versions for offline evaluation;
  `calibration_table` and `calibration_error` (ECE over equal-weight bins).
- `evaluate_report`: one row of metrics per task for a model and a data set.
"""

import math

import keras
import numpy as np
import pandas as pd
from keras import ops

from keras_mtl.task import Task

# Probabilities are clipped like Keras' cross-entropies do.
_EPSILON = 1e-7
_COLUMNS = (
    "kind",
    "n",
    "auc",
    "gauc",
    "logloss",
    "pcoc",
    "ece",
    "rmse",
    "mae",
    "accuracy",
)


def task_metrics(task):
    """Returns fresh Keras metrics for a task, by the task's kind.

    - binary: `keras.metrics.AUC(name="auc")` (200 thresholds, the Keras
      default), `keras_mtl.metrics.LogLoss(name="logloss")` (a
      `keras.metrics.BinaryCrossentropy` that accepts `(batch,)` labels) and
      `keras_mtl.metrics.PCOC(name="pcoc")`;
    - regression: `keras.metrics.RootMeanSquaredError(name="rmse")` and
      `keras.metrics.MeanAbsoluteError(name="mae")`;
    - multiclass: `keras.metrics.SparseCategoricalAccuracy(name="accuracy")`
      and `keras.metrics.SparseCategoricalCrossentropy(name="logloss")`.

    Pass them as `weighted_metrics` so that the per-output `sample_weight`
    (0 outside the task's space) masks them; as plain `metrics` they would
    count every row.

    Args:
        task: `keras_mtl.Task`. The task whose metrics to build.

    Returns:
        A new list of `keras.metrics.Metric` instances (never shared between
        calls).

    Example:

    >>> model.compile(
    ...     optimizer="adam",
    ...     loss={t.name: keras_mtl.losses.task_loss(t) for t in tasks},
    ...     weighted_metrics={
    ...         t.name: keras_mtl.metrics.task_metrics(t) for t in tasks
    ...     },
    ... )
    """
    if not isinstance(task, Task):
        raise ValueError(
            f"`task` must be a `keras_mtl.Task`. Received: task={task!r}"
        )
    if task.kind == "binary":
        return [
            keras.metrics.AUC(name="auc"),
            LogLoss(name="logloss"),
            PCOC(name="pcoc"),
        ]
    if task.kind == "regression":
        return [
            keras.metrics.RootMeanSquaredError(name="rmse"),
            keras.metrics.MeanAbsoluteError(name="mae"),
        ]
    return [
        keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
        keras.metrics.SparseCategoricalCrossentropy(name="logloss"),
    ]


@keras.saving.register_keras_serializable(package="keras_mtl")
class LogLoss(keras.metrics.BinaryCrossentropy):
    """Binary cross-entropy metric for `(batch,)` labels and `(batch, 1)` preds.

    `keras.metrics.BinaryCrossentropy` requires labels and predictions of
    the same rank, but keras-mtl data carries binary labels as `(batch,)`
    while a binary head outputs `(batch, 1)` (the Keras *loss* aligns the
    ranks itself; the metric does not). `LogLoss` expands the rank-1 side
    before delegating, and is otherwise the Keras metric (probabilities
    clipped to `[1e-7, 1 - 1e-7]`).

    Args:
        name: str. Name of the metric. Defaults to `"logloss"`.
        dtype: dtype of the metric's variables. Defaults to `None`
            (floatx).
        from_logits: bool. Whether `y_pred` holds logits. Defaults to
            `False`.
        label_smoothing: float. As in `keras.metrics.BinaryCrossentropy`.
            Defaults to `0`.

    Call arguments:
        y_true: tensor of 0/1 labels, `(batch,)` or `(batch, 1)`.
        y_pred: tensor of probabilities, `(batch, 1)` or `(batch,)`.
        sample_weight: optional tensor of per-sample weights `(batch,)`.

    Returns:
        Scalar tensor from `result()`: the weighted mean cross-entropy.

    Example:

    >>> m = keras_mtl.metrics.LogLoss()
    >>> m.update_state(np.array([1.0, 0.0]), np.array([[0.8], [0.2]]))
    >>> float(m.result())  # -log(0.8)
    0.2231
    """

    def __init__(
        self,
        name="logloss",
        dtype=None,
        from_logits=False,
        label_smoothing=0,
    ):
        super().__init__(
            name=name,
            dtype=dtype,
            from_logits=from_logits,
            label_smoothing=label_smoothing,
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.convert_to_tensor(y_true)
        y_pred = ops.convert_to_tensor(y_pred)
        if len(y_true.shape) == len(y_pred.shape) - 1:
            y_true = ops.expand_dims(y_true, -1)
        elif len(y_pred.shape) == len(y_true.shape) - 1:
            y_pred = ops.expand_dims(y_pred, -1)
        return super().update_state(y_true, y_pred, sample_weight)


@keras.saving.register_keras_serializable(package="keras_mtl")
class PCOC(keras.metrics.Metric):
    """Predicted click over click: calibration of a binary task.

    Streams `sum(w * y_pred) / sum(w * y_true)` over every batch seen since
    the last `reset_state()`: the number of positives the model predicts
    divided by the number observed. 1.0 is perfectly calibrated on average,
    above 1 over-predicts, below 1 under-predicts. The result is NaN while
    no weighted positive label has been seen.

    Args:
        name: str. Name of the metric. Defaults to `"pcoc"`.
        dtype: dtype of the metric's variables. Defaults to `None`
            (floatx).

    Call arguments:
        y_true: tensor of 0/1 labels, `(batch,)` or `(batch, 1)`.
        y_pred: tensor of predicted probabilities, `(batch, 1)` or
            `(batch,)`.
        sample_weight: optional tensor of per-sample weights, `(batch,)` or
            `(batch, 1)`; 0 leaves a sample out.

    Returns:
        Scalar tensor from `result()`.

    Example:

    >>> m = keras_mtl.metrics.PCOC()
    >>> m.update_state([1, 0, 1, 0], [0.6, 0.2, 0.8, 0.4])
    >>> float(m.result())  # (0.6 + 0.2 + 0.8 + 0.4) / 2
    1.0

    References:
        - [He et al., 2014. Practical Lessons from Predicting Clicks on Ads
            at Facebook](https://doi.org/10.1145/2648584.2648589)
    """

    def __init__(self, name="pcoc", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.pred_sum = self.add_variable(
            shape=(), initializer="zeros", name="pred_sum"
        )
        self.label_sum = self.add_variable(
            shape=(), initializer="zeros", name="label_sum"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.reshape(ops.cast(y_true, self.dtype), (-1,))
        y_pred = ops.reshape(ops.cast(y_pred, self.dtype), (-1,))
        if sample_weight is not None:
            sample_weight = ops.reshape(
                ops.cast(sample_weight, self.dtype), (-1,)
            )
            sample_weight = ops.broadcast_to(sample_weight, ops.shape(y_pred))
            y_true = y_true * sample_weight
            y_pred = y_pred * sample_weight
        self.pred_sum.assign_add(ops.sum(y_pred))
        self.label_sum.assign_add(ops.sum(y_true))

    def result(self):
        return ops.where(
            self.label_sum > 0,
            ops.divide_no_nan(self.pred_sum, self.label_sum),
            float("nan"),
        )


# ---------------------------------------------------------------------------
# numpy / pandas metrics.
# ---------------------------------------------------------------------------


def _vector(name, values, n=None):
    values = np.asarray(values)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise ValueError(
            f"`{name}` must be one value per sample, shape (n,) or (n, 1). "
            f"Received: shape={values.shape}"
        )
    if n is not None and len(values) != n:
        raise ValueError(
            f"`{name}` must have as many values as `labels` ({n}). "
            f"Received: {len(values)}"
        )
    return values


def _binary_inputs(labels, preds, weights):
    labels = _vector("labels", labels).astype("float64")
    n = len(labels)
    preds = _vector("preds", preds, n).astype("float64")
    if not np.isin(labels, (0.0, 1.0)).all():
        bad = np.unique(labels[~np.isin(labels, (0.0, 1.0))])[:3]
        raise ValueError(
            f"`labels` must be 0 or 1. Received values such as {bad.tolist()}"
        )
    if not np.isfinite(preds).all():
        raise ValueError("`preds` must be finite. Received NaN or inf.")
    if weights is None:
        weights = np.ones(n)
    else:
        weights = _vector("weights", weights, n).astype("float64")
        if not np.isfinite(weights).all() or (weights < 0).any():
            raise ValueError("`weights` must be finite and >= 0.")
    return labels, preds, weights


def _group_aucs(labels, preds, weights, groups):
    """Exact weighted AUC per group, ties counted half.

    Sorts by (group, score) once: within a group, each block of tied scores
    scores `pos * (neg below the block + neg in the block / 2)`, and the
    group's AUC is that sum over `pos_total * neg_total`.

    Returns a DataFrame indexed by group with `auc` (NaN where the group
    lacks a positive or a negative of positive weight) and `weight` (the
    group's total weight).
    """
    frame = pd.DataFrame(
        {
            "group": groups,
            "score": preds,
            "pos": weights * labels,
            "neg": weights * (1.0 - labels),
        }
    )
    blocks = frame.groupby(["group", "score"], sort=True)[["pos", "neg"]].sum()
    by_group = blocks.groupby(level="group", sort=False)
    neg_below = by_group["neg"].cumsum() - blocks["neg"]
    pairs = blocks["pos"] * (neg_below + 0.5 * blocks["neg"])
    totals = by_group[["pos", "neg"]].sum()
    numerator = pairs.groupby(level="group", sort=False).sum()
    denominator = totals["pos"] * totals["neg"]
    result = pd.DataFrame(
        {
            "auc": (numerator / denominator).where(denominator > 0),
            "weight": totals["pos"] + totals["neg"],
        }
    )
    return result


def auc(labels, preds, weights=None):
    """Exact ROC AUC, equal to `sklearn.metrics.roc_auc_score`.

    Uses the rank formula: the (weighted) fraction of positive/negative
    pairs the predictions order correctly, tied pairs counted half. Unlike
    `keras.metrics.AUC` it does not bucket scores into thresholds.

    Args:
        labels: array `(n,)` of 0/1 labels.
        preds: array `(n,)` or `(n, 1)` of scores.
        weights: optional array `(n,)` of sample weights `>= 0`; 0 leaves a
            sample out. Defaults to `None` (all 1).

    Returns:
        float. The AUC, or NaN when the weighted samples hold only one
        class (where sklearn raises).

    Example:

    >>> keras_mtl.metrics.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    labels, preds, weights = _binary_inputs(labels, preds, weights)
    if len(labels) == 0:
        return math.nan
    result = _group_aucs(labels, preds, weights, np.zeros(len(labels)))
    return float(result["auc"].iloc[0])


def gauc(labels, preds, groups, weights=None):
    """Group AUC: per-group AUC averaged with the groups' impression counts.

    Computes the AUC inside every group (usually a user, so it measures how
    well the model ranks one user's items) and averages them, each weighted
    by the group's number of impressions (its total sample weight). Groups
    whose samples hold only one label class have no AUC and are skipped:
    they count neither in the numerator nor in the denominator. Rows whose
    group is missing (None/NaN) are left out. Vectorised with pandas
    group-bys: a million rows take about a second.

    Args:
        labels: array `(n,)` of 0/1 labels.
        preds: array `(n,)` or `(n, 1)` of scores.
        groups: array `(n,)` of group keys (user ids), any hashable dtype.
        weights: optional array `(n,)` of sample weights `>= 0`; they weight
            the pairs inside a group and the group's impression count, and
            0 leaves a sample out. Defaults to `None` (all 1).

    Returns:
        float. The GAUC, or NaN when no group has both classes.

    Example:

    >>> keras_mtl.metrics.gauc(
    ...     labels=[1, 0, 1, 0, 0],
    ...     preds=[0.9, 0.2, 0.3, 0.6, 0.1],
    ...     groups=["a", "a", "b", "b", "c"])  # user c is skipped
    0.5

    References:
        - [Zhou et al., 2018. Deep Interest Network for Click-Through Rate
            Prediction](https://arxiv.org/abs/1706.06978)
    """
    labels, preds, weights = _binary_inputs(labels, preds, weights)
    groups = _vector("groups", groups, len(labels))
    result = _group_aucs(labels, preds, weights, groups).dropna()
    total = result["weight"].sum()
    if len(result) == 0 or total <= 0:
        return math.nan
    return float((result["auc"] * result["weight"]).sum() / total)


def pcoc(labels, preds, weights=None):
    """Predicted over observed positives: `sum(w * preds) / sum(w * labels)`.

    Args:
        labels: array `(n,)` of 0/1 labels.
        preds: array `(n,)` or `(n, 1)` of predicted probabilities.
        weights: optional array `(n,)` of sample weights. Defaults to `None`
            (all 1).

    Returns:
        float. 1.0 is perfectly calibrated; NaN without a weighted positive.

    Example:

    >>> keras_mtl.metrics.pcoc([1, 0, 1, 0], [0.6, 0.2, 0.8, 0.4])
    1.0
    """
    labels = _vector("labels", labels).astype("float64")
    preds = _vector("preds", preds, len(labels)).astype("float64")
    if weights is None:
        weights = np.ones(len(labels))
    weights = _vector("weights", weights, len(labels)).astype("float64")
    observed = float(np.sum(weights * labels))
    if observed <= 0:
        return math.nan
    return float(np.sum(weights * preds) / observed)


def _check_bins(name, bins):
    if (
        isinstance(bins, bool)
        or not isinstance(bins, (int, np.integer))
        or bins < 1
    ):
        raise ValueError(
            f"`{name}` must be an integer >= 1. Received: {name}={bins!r}"
        )


def calibration_table(labels, preds, weights=None, bins=10):
    """Reliability table: predictions against outcomes, bin by bin.

    The rows are sorted by prediction and cut into `bins` bins of equal
    weight (equal mass: every bin holds about the same share of the
    traffic, so a model that predicts mostly small probabilities still gets
    `bins` informative rows, where fixed-width bins would put nearly all
    rows into the first one). Rows with the same prediction always share a
    bin, so a bin can hold more than its share and fewer bins may come out.

    Args:
        labels: array `(n,)` of 0/1 labels.
        preds: array `(n,)` or `(n, 1)` of predicted probabilities.
        weights: optional array `(n,)` of sample weights `>= 0` (0 leaves a
            row out). Defaults to `None` (all 1).
        bins: int. Number of equal-weight bins. Defaults to `10`.

    Returns:
        pandas DataFrame, one row per non-empty bin in increasing order of
        prediction, with columns `n` (rows), `weight`, `pred_min`,
        `pred_max`, `mean_pred` and `mean_label` (weighted means) and
        `pcoc` (their ratio; NaN without a positive in the bin).

    Example:

    >>> keras_mtl.metrics.calibration_table(
    ...     [0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9], bins=2)
       n  weight  pred_min  pred_max  mean_pred  mean_label  pcoc
    0  2     2.0       0.1       0.2       0.15         0.0   NaN
    1  2     2.0       0.7       0.9       0.80         1.0   0.8
    """
    labels, preds, weights = _binary_inputs(labels, preds, weights)
    _check_bins("bins", bins)
    columns = ["n", "weight", "pred_min", "pred_max", "mean_pred"]
    columns += ["mean_label", "pcoc"]
    keep = weights > 0
    labels, preds, weights = labels[keep], preds[keep], weights[keep]
    total = float(np.sum(weights))
    if total <= 0:
        return pd.DataFrame(columns=columns)
    order = np.argsort(preds, kind="stable")
    labels, preds, weights = labels[order], preds[order], weights[order]
    before = np.cumsum(weights) - weights  # weight of the rows before
    index = np.minimum((before / total * bins).astype("int64"), bins - 1)
    # Tied predictions take the bin of the first of them.
    index = index[np.searchsorted(preds, preds, side="left")]
    frame = pd.DataFrame(
        {
            "bin": index,
            "weight": weights,
            "pred": preds,
            "wp": weights * preds,
            "wy": weights * labels,
        }
    )
    grouped = frame.groupby("bin", sort=True)
    weight = grouped["weight"].sum().to_numpy()
    wy = grouped["wy"].sum().to_numpy()
    table = pd.DataFrame(
        {
            "n": grouped.size().to_numpy(),
            "weight": weight,
            "pred_min": grouped["pred"].min().to_numpy(),
            "pred_max": grouped["pred"].max().to_numpy(),
            "mean_pred": grouped["wp"].sum().to_numpy() / weight,
            "mean_label": wy / weight,
        }
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = grouped["wp"].sum().to_numpy() / wy
    table["pcoc"] = np.where(wy > 0, ratio, np.nan)
    return table


def calibration_error(labels, preds, weights=None, bins=10):
    """Expected calibration error over equal-weight bins.

    `sum_b (W_b / W) |mean_pred_b - mean_label_b|` over the bins of
    `calibration_table`: the traffic-weighted gap between what the model
    predicts and what happens, bin by bin. 0 is perfect calibration in
    every bin; PCOC, the overall ratio, can be 1 while low and high
    predictions err in opposite directions, which this catches.

    Args:
        labels: array `(n,)` of 0/1 labels.
        preds: array `(n,)` or `(n, 1)` of predicted probabilities.
        weights: optional array `(n,)` of sample weights `>= 0`. Defaults
            to `None` (all 1).
        bins: int. Number of equal-weight bins. Defaults to `10`.

    Returns:
        float in [0, 1]; NaN without a row of positive weight.

    Example:

    >>> keras_mtl.metrics.calibration_error(
    ...     [0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9], bins=2)
    0.175

    References:
        Naeini et al., "Obtaining Well Calibrated Probabilities Using
        Bayesian Binning", AAAI 2015.
    """
    table = calibration_table(labels, preds, weights, bins)
    if table.empty:
        return math.nan
    gaps = np.abs(table["mean_pred"] - table["mean_label"]).to_numpy()
    weight = table["weight"].to_numpy()
    return float(np.sum(weight * gaps) / np.sum(weight))


def _weighted_mean(values, weights):
    total = float(np.sum(weights))
    if total <= 0:
        return math.nan
    return float(np.sum(values * weights) / total)


def _binary_row(labels, preds, weights, users, bins):
    if len(labels) == 0:
        row = {
            "auc": math.nan,
            "logloss": math.nan,
            "pcoc": math.nan,
            "ece": math.nan,
        }
        if users is not None:
            row["gauc"] = math.nan
        return row
    p = np.clip(preds, _EPSILON, 1.0 - _EPSILON)
    losses = -(labels * np.log(p) + (1.0 - labels) * np.log1p(-p))
    row = {
        "auc": auc(labels, preds, weights),
        "logloss": _weighted_mean(losses, weights),
        "pcoc": pcoc(labels, preds, weights),
        "ece": calibration_error(labels, preds, weights, bins),
    }
    if users is not None:
        row["gauc"] = gauc(labels, preds, users, weights)
    return row


def _regression_row(labels, preds, weights):
    errors = preds - labels
    return {
        "rmse": math.sqrt(_weighted_mean(errors**2, weights)),
        "mae": _weighted_mean(np.abs(errors), weights),
    }


def _multiclass_row(labels, probs, weights):
    if len(labels) == 0:
        return {"accuracy": math.nan, "logloss": math.nan}
    labels = labels.astype("int64")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(
            f"Multiclass labels must be in [0, {probs.shape[1]}). Received "
            f"labels from {labels.min()} to {labels.max()}."
        )
    # Like keras' sparse categorical cross-entropy on probabilities.
    probs = probs / np.sum(probs, axis=1, keepdims=True)
    picked = np.clip(
        probs[np.arange(len(labels)), labels], _EPSILON, 1.0 - _EPSILON
    )
    correct = (np.argmax(probs, axis=1) == labels).astype("float64")
    return {
        "accuracy": _weighted_mean(correct, weights),
        "logloss": _weighted_mean(-np.log(picked), weights),
    }


def _concatenate_batches(batches):
    if isinstance(batches[0], dict):
        return {
            key: _concatenate_batches([b[key] for b in batches])
            for key in batches[0]
        }
    return np.concatenate([np.asarray(b) for b in batches], axis=0)


def _unpack(data, tasks, features, user_column):
    """Returns `(x, y, sw, users)` numpy data from any accepted `data`."""
    users = None
    if isinstance(data, pd.DataFrame):
        if features is None:
            raise ValueError(
                "`features` is required when `data` is a DataFrame. "
                "Received: features=None"
            )
        from keras_mtl.data import dataframe_to_arrays

        if user_column is not None:
            if user_column not in data.columns:
                raise ValueError(
                    f"`user_column` is not a column of `data`. Received: "
                    f"user_column={user_column!r}"
                )
            users = data[user_column].to_numpy()
        x, y, sw = dataframe_to_arrays(data, features, tasks)
    elif isinstance(data, (tuple, list)):
        if len(data) != 3:
            raise ValueError(
                "`data` as a tuple must be `(x, y, sample_weight)`. "
                f"Received a tuple of {len(data)} items."
            )
        x, y, sw = data
    elif hasattr(data, "as_numpy_iterator"):  # a tf.data.Dataset
        batches = list(data.as_numpy_iterator())
        if not batches:
            raise ValueError("`data` is an empty dataset.")
        if len(batches[0]) != 3:
            raise ValueError(
                "`data` as a dataset must yield `(x, y, sample_weight)` "
                f"batches. Received batches of {len(batches[0])} items."
            )
        x, y, sw = (
            _concatenate_batches([b[i] for b in batches]) for i in range(3)
        )
    else:
        raise ValueError(
            "`data` must be a pandas DataFrame, a tuple `(x, y, "
            "sample_weight)` of numpy dicts or a tf.data.Dataset yielding "
            f"such batches. Received: {type(data).__name__}"
        )
    if user_column is not None and users is None:
        if not isinstance(x, dict) or user_column not in x:
            known = sorted(x) if isinstance(x, dict) else []
            raise ValueError(
                f"`user_column` is not a feature of `data`. Received: "
                f"user_column={user_column!r}; features: {known}"
            )
        users = np.asarray(x[user_column])
        if users.ndim == 2 and users.shape[1] == 1:
            users = users[:, 0]
    for name, values in (("labels", y), ("sample weights", sw)):
        if not isinstance(values, dict):
            raise ValueError(
                f"The {name} in `data` must be a dict keyed by task name. "
                f"Received: {type(values).__name__}"
            )
        for task in tasks:
            if task.name not in values:
                raise ValueError(
                    f"Task '{task.name}' has no {name} in `data`. Found: "
                    f"{sorted(values)}"
                )
    return x, y, sw, users


def evaluate_report(
    model,
    data,
    tasks,
    features=None,
    user_column=None,
    batch_size=4096,
    calibration_bins=10,
):
    """Evaluates every task of a model on its own sample space.

    Predicts once, then for each task keeps only the rows whose sample
    weight is positive (inside the task's space, label observed) and
    computes exact metrics with numpy: `auc` (`keras_mtl.metrics.auc`),
    `gauc` over `user_column`, `logloss`, `pcoc` and `ece`
    (`keras_mtl.metrics.calibration_error`) for binary tasks;
    `rmse` and `mae` for regression; `accuracy` and `logloss` for
    multiclass. The sample weights also weight each metric (they are 0/1
    in data from `keras_mtl.data`, where this is a plain mask).

    Args:
        model: Keras model whose outputs are a dict keyed by task name
            (binary: probability `(batch, 1)`, regression `(batch, 1)`,
            multiclass: probabilities `(batch, num_classes)`).
        data: a pandas DataFrame (then `features` is required and it is
            converted with `keras_mtl.data.dataframe_to_arrays`), a tuple
            `(x, y, sample_weight)` of numpy dicts, or a `tf.data.Dataset`
            yielding such batches.
        tasks: list of `keras_mtl.Task` (or a single task) to report.
        features: list of feature specs, only for a DataFrame `data`.
            Defaults to `None`.
        user_column: str or None. Column (DataFrame) or feature (`x` key)
            holding user ids; adds a `gauc` column. Defaults to `None`.
        batch_size: int. Batch size of `model.predict`. Defaults to `4096`.
        calibration_bins: int. Equal-weight bins of the `ece` column.
            Defaults to `10`.

    Returns:
        pandas DataFrame indexed by task name with columns `kind`, `n` (rows
        inside the task's space), `auc`, `gauc` (only with `user_column`),
        `logloss`, `pcoc`, `ece`, `rmse`, `mae`, `accuracy`; NaN where a
        metric does not apply to the task's kind or the task has no
        in-space row.

    Example:

    >>> report = keras_mtl.metrics.evaluate_report(
    ...     model, test_df, tasks, features=features, user_column="user_id")
    >>> report.loc["click", "auc"]
    """
    if isinstance(tasks, Task):
        tasks = [tasks]
    tasks = [Task.from_config(t) if isinstance(t, dict) else t for t in tasks]
    if not tasks or not all(isinstance(t, Task) for t in tasks):
        raise ValueError(
            "`tasks` must be a non-empty list of `keras_mtl.Task`. "
            f"Received: tasks={tasks!r}"
        )
    try:
        outputs = model.output
    except (AttributeError, ValueError):  # e.g. a subclassed model
        outputs = None
    if isinstance(outputs, dict):
        for task in tasks:
            if task.name not in outputs:
                raise ValueError(
                    f"Task '{task.name}' is not an output of the model. "
                    f"Model outputs: {sorted(outputs)}"
                )
    _check_bins("calibration_bins", calibration_bins)
    x, y, sw, users = _unpack(data, tasks, features, user_column)

    try:
        inputs = model.input
    except (AttributeError, ValueError):
        inputs = None
    if isinstance(x, dict) and isinstance(inputs, dict):
        # Extra columns (user ids, labels) are not model inputs.
        x = {name: x[name] for name in inputs if name in x}
    preds = model.predict(x, batch_size=batch_size, verbose=0)
    if not isinstance(preds, dict):
        if len(tasks) != 1 or isinstance(preds, (list, tuple)):
            raise ValueError(
                "`model` must return a dict of outputs keyed by task name."
            )
        preds = {tasks[0].name: preds}

    columns = [c for c in _COLUMNS if c != "gauc" or user_column is not None]
    rows = []
    for task in tasks:
        if task.name not in preds:
            raise ValueError(
                f"Task '{task.name}' is not an output of the model. Model "
                f"outputs: {sorted(preds)}"
            )
        weights = _vector(f"sample weights of '{task.name}'", sw[task.name])
        weights = weights.astype("float64")
        if users is not None and len(users) != len(weights):
            raise ValueError(
                f"`user_column` has {len(users)} values but task "
                f"'{task.name}' has {len(weights)} rows."
            )
        keep = weights > 0
        labels = _vector(f"labels of '{task.name}'", y[task.name])[keep]
        pred = np.asarray(preds[task.name], dtype="float64")[keep]
        weights = weights[keep]
        row = {"kind": task.kind, "n": int(keep.sum())}
        if task.kind == "binary":
            row.update(
                _binary_row(
                    labels.astype("float64"),
                    pred.reshape(len(labels)),
                    weights,
                    None if users is None else users[keep],
                    calibration_bins,
                )
            )
        elif task.kind == "regression":
            row.update(
                _regression_row(
                    labels.astype("float64"), pred.reshape(len(labels)), weights
                )
            )
        else:
            row.update(_multiclass_row(labels, pred, weights))
        rows.append(row)
    report = pd.DataFrame(rows, index=[t.name for t in tasks], columns=columns)
    report.index.name = "task"
    report["n"] = report["n"].astype("int64")
    for column in columns[2:]:
        report[column] = report[column].astype("float64")
    return report
