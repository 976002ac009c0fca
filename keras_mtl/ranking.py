"""Pairwise learning to rank from multi-objective labels.

A ranking model that serves one score per item can still learn from every
funnel label: each impression gets a *grade* from its deepest positive
label (e.g. purchase > cart > click > impression), impressions are grouped
into lists per request (or query, or user), and a pairwise loss asks the
score of every higher-graded item of a list to beat that of every
lower-graded one.

- `grade_labels` turns label columns into grades;
- `group_into_lists` turns flat rows into `(num_lists, list_size)` lists,
  padded with label `-1`, the layout keras-rs' ranking losses take;
- `graded_lists` does both from a DataFrame;
- `pairwise_logistic_loss` is keras-rs' `PairwiseLogisticLoss`
  (`sum_{i,j: y_i > y_j} log(1 + exp(s_j - s_i))` per list);
- `keras_mtl.models.pairwise_ranker` builds the list-shaped model around a
  pointwise scorer.

Example:

>>> df = keras_mtl.datasets.synthetic_funnel(10_000)
>>> specs = keras_mtl.infer_features(
...     df, labels=keras_mtl.datasets.FUNNEL_LABELS)
>>> x, y = keras_mtl.ranking.graded_lists(
...     df, specs, grade_order=["conversion", "click"],
...     group_by="user_id", list_size=8)
>>> model = keras_mtl.models.pairwise_ranker(specs, list_size=8)
>>> model.compile("adam", loss=keras_mtl.ranking.pairwise_logistic_loss())
>>> model.fit(keras_mtl.data.arrays_to_dataset((x, y), 64), epochs=5)

Lists hold 2-D string arrays, which Keras' NumPy adapter refuses; feed
them through `tf.data` (`keras_mtl.data.arrays_to_dataset`) as above.
"""

import numpy as np
import pandas as pd

from keras_mtl import data as data_lib
from keras_mtl import features as features_lib

PAD_LABEL = -1.0


def pairwise_logistic_loss(temperature=1.0, **kwargs):
    """keras-rs' pairwise logistic (RankNet) loss over `(batch, list)` lists.

    For each list, `sum_{i, j: y_i > y_j} log(1 + exp(-(s_i - s_j)))`:
    every pair of items with different grades adds a logistic loss on their
    score difference, so the loss falls when the higher-graded item scores
    higher. Items with a negative label (the padding of
    `group_into_lists`) form no pair.

    Args:
        temperature: float. Score differences are divided by it. Defaults
            to `1.0`.
        **kwargs: passed to `keras_rs.losses.PairwiseLogisticLoss`
            (`reduction`, `name`).

    Returns:
        A `keras_rs.losses.PairwiseLogisticLoss`.

    References:
        - Burges et al., "Learning to Rank using Gradient Descent", ICML
          2005, https://doi.org/10.1145/1102351.1102363
    """
    import keras_rs

    return keras_rs.losses.PairwiseLogisticLoss(
        temperature=temperature, **kwargs
    )


def _columns(labels, names):
    if isinstance(labels, pd.DataFrame):
        missing = [n for n in names if n not in labels.columns]
        present = list(labels.columns)
    else:
        missing = [n for n in names if n not in labels]
        present = sorted(labels)
    if missing:
        raise ValueError(
            f"`grade_order` names label column(s) {missing} that are not in "
            f"the labels. Present: {present}"
        )
    return {n: np.asarray(labels[n], dtype="float64") for n in names}


def grade_labels(labels, grade_order):
    """Grades every row by its deepest positive label.

    Args:
        labels: DataFrame or dict of 1-D arrays holding 0/1 label columns
            (NaN counts as 0).
        grade_order: list of str. Label columns from the highest grade to
            the lowest, e.g. `["conversion", "cart", "click"]`; the task
            names of a user-given task order work the same way.

    Returns:
        A float32 array: `len(grade_order) - k` for a row whose first
        positive column in `grade_order` is the `k`-th (0-based), and 0 for
        a row with none (a bare impression). With the example order:
        purchase 3, cart 2, click 1, impression 0.

    Example:

    >>> keras_mtl.ranking.grade_labels(df, ["conversion", "click"])
    """
    if isinstance(grade_order, str) or not grade_order:
        raise ValueError(
            "`grade_order` must be a non-empty list of label columns. "
            f"Received: grade_order={grade_order!r}"
        )
    grade_order = list(grade_order)
    if len(set(grade_order)) != len(grade_order):
        raise ValueError(
            "`grade_order` names a column twice. "
            f"Received: grade_order={grade_order!r}"
        )
    columns = _columns(labels, grade_order)
    n = len(next(iter(columns.values())))
    grades = np.zeros(n, "float32")
    # From the lowest grade up, so a deeper positive label overwrites.
    for rank, name in enumerate(reversed(grade_order), start=1):
        grades[np.nan_to_num(columns[name]) > 0] = rank
    return grades


def _pad_value(array):
    if array.dtype.kind == "f":
        return np.nan
    if array.dtype.kind in "iu":
        return -1
    return ""


def group_into_lists(x, grades, groups, list_size):
    """Groups flat rows into padded lists, one or more per group.

    Rows are ordered by group (stable, so rows keep their order inside a
    group) and every group is cut into lists of at most `list_size` rows.
    Lists are padded with missing feature values (NaN, id -1, empty
    string) and label `PAD_LABEL = -1`, which keras-rs' ranking losses
    ignore.

    Args:
        x: dict of arrays with `n` rows (e.g. from
            `keras_mtl.data.features_to_arrays`); sequences `(n, max_len)`.
        grades: array of `n` grades (see `grade_labels`).
        groups: array of `n` group keys (request, query or user ids).
        list_size: int. Items per list.

    Returns:
        `(x_lists, y_lists)`: each feature as `(num_lists, list_size, ...)`
        and the grades as float32 `(num_lists, list_size)`.
    """
    if (
        isinstance(list_size, bool)
        or not isinstance(list_size, (int, np.integer))
        or list_size < 2
    ):
        raise ValueError(
            "`list_size` must be an integer >= 2 (a pair needs two items). "
            f"Received: list_size={list_size!r}"
        )
    grades = np.asarray(grades, "float32")
    groups = np.asarray(groups)
    n = len(grades)
    if len(groups) != n or any(len(v) != n for v in x.values()):
        raise ValueError(
            "`x`, `grades` and `groups` must have the same number of rows. "
            f"Received: {len(grades)} grades, {len(groups)} group keys and "
            f"feature rows {sorted({len(v) for v in x.values()})}"
        )
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    starts = np.r_[True, sorted_groups[1:] != sorted_groups[:-1]]
    group_index = np.cumsum(starts) - 1
    first_row = np.flatnonzero(starts)
    rank = np.arange(n) - first_row[group_index]
    # A new list every `list_size` rows of a group.
    new_list = (rank % list_size) == 0
    list_index = np.cumsum(new_list) - 1
    slot = rank % list_size
    num_lists = int(list_index[-1]) + 1 if n else 0

    y_lists = np.full((num_lists, list_size), PAD_LABEL, "float32")
    y_lists[list_index, slot] = grades[order]
    x_lists = {}
    for name, values in x.items():
        values = np.asarray(values)
        out = np.full(
            (num_lists, list_size) + values.shape[1:],
            _pad_value(values),
            dtype=values.dtype,
        )
        out[list_index, slot] = values[order]
        x_lists[name] = out
    return x_lists, y_lists


def graded_lists(df, features, grade_order, group_by, list_size):
    """Model-ready ranking lists from a DataFrame.

    Args:
        df: pandas DataFrame with the feature columns, the label columns of
            `grade_order` and the `group_by` column.
        features: list of feature specs.
        grade_order: list of str. Label columns, highest grade first (see
            `grade_labels`).
        group_by: str. Column whose value identifies a request / query
            group; pairs are only formed within a group.
        list_size: int. Items per list (longer groups give several lists).

    Returns:
        `(x_lists, y_lists)` as in `group_into_lists`, for
        `keras_mtl.models.pairwise_ranker(features, list_size=list_size)`
        (fit through `keras_mtl.data.arrays_to_dataset((x, y), batch)`).

    Example:

    >>> x, y = keras_mtl.ranking.graded_lists(
    ...     df, specs, ["conversion", "click"], "user_id", list_size=8)
    """
    if group_by not in df.columns:
        raise ValueError(
            f"`group_by` must be a column of the DataFrame. Received: "
            f"group_by={group_by!r}; columns: {list(df.columns)}"
        )
    features = features_lib.validate_features(features)
    x = data_lib.features_to_arrays(df, features)
    grades = grade_labels(df, grade_order)
    return group_into_lists(x, grades, df[group_by].to_numpy(), list_size)
