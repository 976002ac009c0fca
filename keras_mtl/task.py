"""`Task`: one objective of a multi-task ranking model."""

import math

import keras

KINDS = ("binary", "regression", "multiclass")


@keras.saving.register_keras_serializable(package="keras_mtl")
class Task:
    """One prediction objective: a name, a kind and where it is observed.

    A task is trained only on its *sample space*: the rows where the task
    named by `space` has a positive label (conversion and watch time exist
    only on clicked impressions), and never where its own label is NaN.
    Keras' per-output `sample_weight` carries that mask (see
    `keras_mtl.data`).

    Args:
        name: str. Output name of the task; also its label column unless
            `label` is given.
        kind: str. One of `"binary"`, `"regression"`, `"multiclass"`.
            Defaults to `"binary"`.
        space: str or None. Name of another binary task whose positive rows
            define where this task is observed. Defaults to `None` (every
            row).
        weight: float. Loss weight of the task. Defaults to `1.0`.
        num_classes: int or None. Number of classes, required for
            `"multiclass"` and refused otherwise.
        label: str or None. Label column in the data. Defaults to `name`.

    Example:

    >>> click = keras_mtl.Task("click")
    >>> cvr = keras_mtl.Task("conversion", space="click")
    >>> watch = keras_mtl.Task("watch_time", "regression", space="click")
    """

    def __init__(
        self,
        name,
        kind="binary",
        space=None,
        weight=1.0,
        num_classes=None,
        label=None,
    ):
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(
                "`name` must be a non-empty identifier string. "
                f"Received: name={name!r}"
            )
        if kind not in KINDS:
            raise ValueError(
                f"`kind` of task '{name}' must be one of {KINDS}. "
                f"Received: kind={kind!r}"
            )
        if space is not None and not isinstance(space, str):
            raise ValueError(
                f"`space` of task '{name}' must be a task name or None. "
                f"Received: space={space!r}"
            )
        if space == name:
            raise ValueError(
                f"`space` of task '{name}' cannot name the task itself. "
                f"Received: space={space!r}"
            )
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not math.isfinite(weight)
            or weight < 0
        ):
            raise ValueError(
                f"`weight` of task '{name}' must be a finite number >= 0. "
                f"Received: weight={weight!r}"
            )
        if kind == "multiclass":
            if (
                isinstance(num_classes, bool)
                or not isinstance(num_classes, int)
                or num_classes < 2
            ):
                raise ValueError(
                    f"`num_classes` of multiclass task '{name}' must be an "
                    f"integer >= 2. Received: num_classes={num_classes!r}"
                )
        elif num_classes is not None:
            raise ValueError(
                f"`num_classes` is only for multiclass tasks; task '{name}' "
                f"is {kind}. Received: num_classes={num_classes!r}"
            )
        if label is not None and not isinstance(label, str):
            raise ValueError(
                f"`label` of task '{name}' must be a column name. "
                f"Received: label={label!r}"
            )
        self.name = name
        self.kind = kind
        self.space = space
        self.weight = float(weight)
        self.num_classes = num_classes
        self.label = label or name

    @property
    def output_dim(self):
        return self.num_classes if self.kind == "multiclass" else 1

    def get_config(self):
        return {
            "name": self.name,
            "kind": self.kind,
            "space": self.space,
            "weight": self.weight,
            "num_classes": self.num_classes,
            "label": self.label,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return isinstance(other, Task) and self.get_config() == (
            other.get_config()
        )

    def __hash__(self):
        return hash(self.name)

    def __repr__(self):
        args = ", ".join(
            f"{k}={v!r}" for k, v in self.get_config().items() if v is not None
        )
        return f"Task({args})"


def validate_tasks(tasks):
    """Checks a list of tasks as a whole and returns it as a list.

    Raises `ValueError` for an empty list, duplicate names, a `space` naming
    an unknown task, a space task that is not binary, or a cycle of spaces.
    """
    tasks = [Task.from_config(t) if isinstance(t, dict) else t for t in tasks]
    if not tasks:
        raise ValueError("`tasks` must name at least one task. Received: []")
    for t in tasks:
        if not isinstance(t, Task):
            raise ValueError(
                f"`tasks` must hold `keras_mtl.Task` objects. Received: {t!r}"
            )
    by_name = {}
    for t in tasks:
        if t.name in by_name:
            raise ValueError(f"Task name '{t.name}' is used twice in `tasks`.")
        by_name[t.name] = t
    for t in tasks:
        if t.space is None:
            continue
        if t.space not in by_name:
            raise ValueError(
                f"`space` of task '{t.name}' names an unknown task. "
                f"Received: space={t.space!r}; known tasks: "
                f"{sorted(by_name)}"
            )
        if by_name[t.space].kind != "binary":
            raise ValueError(
                f"`space` of task '{t.name}' must name a binary task; "
                f"'{t.space}' is {by_name[t.space].kind}."
            )
        seen, cur = {t.name}, by_name[t.space]
        while cur.space is not None:
            if cur.name in seen:
                raise ValueError(
                    f"Task spaces form a cycle through '{cur.name}'."
                )
            seen.add(cur.name)
            cur = by_name[cur.space]
    return tasks
