"""Trials tables, the Pareto front across tasks, and its plot.

The best model for clicks is rarely the best for conversions: a trial is on
the Pareto front when no other trial is at least as good on every task and
strictly better on one. The weighted objective picks one point of that
front; the front shows the whole trade-off.
"""

import itertools
import math

import numpy as np
import pandas as pd


def _directions(columns, directions):
    directions = dict(directions or {})
    unknown = sorted(set(directions) - set(columns))
    if unknown:
        raise ValueError(
            f"`directions` names column(s) {unknown} that are not compared. "
            f"Columns: {list(columns)}"
        )
    out = {}
    for column in columns:
        direction = directions.get(column, "max")
        if direction not in ("max", "min"):
            raise ValueError(
                f"Direction of '{column}' must be 'max' or 'min'. "
                f"Received: {direction!r}"
            )
        out[column] = direction
    return out


def pareto_front(table, columns, directions=None):
    """Marks the rows of `table` that no other row dominates.

    Row `a` dominates row `b` when `a` is at least as good as `b` in every
    column and strictly better in one. Rows with a missing (NaN) value in a
    compared column are never on the front and dominate nothing. Identical
    rows do not dominate each other, so ties are all kept.

    Args:
        table: pandas DataFrame, one row per trial.
        columns: list of str. The columns to compare (one per task).
        directions: dict `{column: "max" | "min"}`. Defaults to `"max"` for
            every column.

    Returns:
        A boolean `pd.Series` named `"pareto"` aligned with `table`.

    Example:

    >>> table = pd.DataFrame({"click": [0.7, 0.6, 0.5],
    ...                       "conversion": [0.6, 0.7, 0.5]})
    >>> keras_mtl.tuning.pareto_front(table, ["click", "conversion"]).tolist()
    [True, True, False]
    """
    columns = list(columns)
    if not columns:
        raise ValueError("`columns` must name at least one column.")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(
            f"`columns` {missing} are not in the table. Columns: "
            f"{list(table.columns)}"
        )
    directions = _directions(columns, directions)
    sign = np.array([1.0 if directions[c] == "max" else -1.0 for c in columns])
    values = table[columns].to_numpy(dtype="float64") * sign
    valid = np.isfinite(values).all(axis=1)
    candidates = values[valid]
    front = np.zeros(len(table), dtype=bool)
    for i in np.flatnonzero(valid):
        at_least = np.all(candidates >= values[i], axis=1)
        better = np.any(candidates > values[i], axis=1)
        front[i] = not np.any(at_least & better)
    return pd.Series(front, index=table.index, name="pareto")


def _trial_order(trial_id):
    text = str(trial_id)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def _last_line(message):
    lines = [line for line in (message or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def trials_table(oracle, metric_columns, directions=None):
    """One row per trial of a KerasTuner oracle, with the Pareto front.

    Columns: `trial_id`, `status`, the objective (its value at the trial's
    best epoch), `metric_columns` (each task's metric at that epoch),
    `pareto` (True on the front of the completed trials over
    `metric_columns`), `best_step`, `error` (last line of a failed trial's
    error), then every hyperparameter (empty where a trial's architecture
    does not use it).

    Args:
        oracle: `keras_tuner.Oracle` (e.g. `tuner.oracle`).
        metric_columns: list of str. Per-task metrics, e.g.
            `["val_click_auc", "val_conversion_auc"]`.
        directions: dict `{column: "max" | "min"}`. Defaults to `"max"`.

    Returns:
        A `pd.DataFrame` sorted by `trial_id`.
    """
    objective = oracle.objective.name
    rows, hp_names = [], []
    for trial_id in sorted(oracle.trials, key=_trial_order):
        trial = oracle.trials[trial_id]
        row = {
            "trial_id": trial.trial_id,
            "status": trial.status,
            objective: np.nan if trial.score is None else float(trial.score),
        }
        for column in metric_columns:
            value = None
            if trial.metrics.exists(column):
                value = trial.metrics.metrics[column].get_last_value()
            row[column] = np.nan if value is None else float(value)
        row["best_step"] = trial.best_step
        row["error"] = _last_line(getattr(trial, "message", None))
        for name, value in trial.hyperparameters.values.items():
            if name not in hp_names:
                hp_names.append(name)
            row[name] = value
        rows.append(row)
    columns = ["trial_id", "status", objective, *metric_columns]
    columns += ["pareto", "best_step", "error", *hp_names]
    table = pd.DataFrame(rows, columns=[c for c in columns if c != "pareto"])
    completed = table["status"] == "COMPLETED"
    front = pd.Series(False, index=table.index)
    if completed.any():
        done = pareto_front(table[completed], metric_columns, directions)
        front.loc[done.index] = done.to_numpy()
    table.insert(3 + len(metric_columns), "pareto", front.astype(bool))
    for name in hp_names:
        # Integers stay integers where some trials lack the value.
        values = [row[name] for row in rows if name in row]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            table[name] = table[name].astype("Int64")
    return table


def _label(column, direction):
    return f"{column} ({'higher' if direction == 'max' else 'lower'} is better)"


def plot_pareto(
    table, columns, path, directions=None, objective=None, title=None
):
    """Writes a PNG of the trials with the Pareto front highlighted.

    - One task: the metric of every trial, the best one highlighted.
    - Two tasks: a scatter of the two metrics; front trials in red, joined
      in order of the first metric and labelled with their trial id.
    - More tasks: one scatter per pair of tasks (`k (k - 1) / 2` panels).
      A front trial can look dominated in a 2-D panel, since it may win
      on a task the panel does not show.

    The trial with the best `objective` (when given) is drawn as a star.

    Args:
        table: DataFrame from `trials_table` (needs `columns`, `pareto`,
            `trial_id`; only `status == "COMPLETED"` rows are drawn when a
            `status` column exists).
        columns: list of str. Per-task metric columns.
        path: str or path of the PNG to write.
        directions: dict `{column: "max" | "min"}`. Defaults to `"max"`.
        objective: optional `keras_tuner.Objective` (`name`, `direction`).
        title: optional str.

    Returns:
        `path`.
    """
    from matplotlib.figure import Figure

    columns = list(columns)
    directions = _directions(columns, directions)
    if "status" in table.columns:
        table = table[table["status"] == "COMPLETED"]
    table = table[np.isfinite(table[columns].to_numpy("float64")).all(axis=1)]
    front = table["pareto"].astype(bool).to_numpy()
    best = None
    if objective is not None and objective.name in table and len(table):
        scores = table[objective.name].to_numpy("float64")
        if objective.direction == "min":
            scores = -scores
        best = int(np.nanargmax(scores))
    ids = table["trial_id"].astype(str).to_numpy()

    def draw(ax, x, y, xlabel, ylabel, staircase):
        ax.scatter(x[~front], y[~front], c="0.6", s=30, label="trial")
        ax.scatter(x[front], y[front], c="tab:red", s=45, label="Pareto front")
        if staircase and front.sum() > 1:
            order = np.argsort(x[front])
            ax.plot(x[front][order], y[front][order], c="tab:red", lw=1)
        for xi, yi, name in zip(x[front], y[front], ids[front]):
            ax.annotate(
                name,
                (xi, yi),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        if best is not None:
            ax.scatter(
                [x[best]],
                [y[best]],
                marker="*",
                s=180,
                c="gold",
                edgecolors="k",
                zorder=3,
                label=f"best {objective.name}",
            )
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)

    if len(columns) == 1:
        fig = Figure(figsize=(6, 4.5))
        ax = fig.add_subplot()
        values = table[columns[0]].to_numpy("float64")
        draw(
            ax,
            np.arange(len(table), dtype="float64"),
            values,
            "trial (in id order)",
            _label(columns[0], directions[columns[0]]),
            staircase=False,
        )
        ax.legend(fontsize=7)
    elif len(columns) == 2:
        fig = Figure(figsize=(6, 5))
        ax = fig.add_subplot()
        a, b = columns
        draw(
            ax,
            table[a].to_numpy("float64"),
            table[b].to_numpy("float64"),
            _label(a, directions[a]),
            _label(b, directions[b]),
            staircase=True,
        )
        ax.legend(fontsize=7)
    else:
        pairs = list(itertools.combinations(columns, 2))
        ncols = min(3, len(pairs))
        nrows = math.ceil(len(pairs) / ncols)
        fig = Figure(figsize=(4.5 * ncols, 4 * nrows))
        for k, (a, b) in enumerate(pairs):
            ax = fig.add_subplot(nrows, ncols, k + 1)
            draw(
                ax,
                table[a].to_numpy("float64"),
                table[b].to_numpy("float64"),
                _label(a, directions[a]),
                _label(b, directions[b]),
                staircase=False,
            )
            if k == 0:
                ax.legend(fontsize=7)
    fig.suptitle(
        title
        or f"Pareto front: {int(front.sum())} of {len(table)} completed trials",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
