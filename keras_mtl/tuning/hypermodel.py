"""`MultiTaskHyperModel`: a KerasTuner search space over the model zoo.

A search space is a plain dict (the `search_space` section of a tuning
config), one entry per searchable value:

- a list: `hp.Choice` over its values; the first is the default;
- `{values: [...], default: v}`: `hp.Choice` with an explicit default;
- `{min: a, max: b, step: s, sampling: linear|log|reverse_log, default: v}`:
  `hp.Int` (integer keys) or `hp.Float` (float keys);
- a scalar (or a one-element list): `hp.Fixed`.

Keys:

- `architecture`: builder names of `keras_mtl.models.BUILDERS`.
- Builder arguments (`num_experts`, `num_task_experts`,
  `num_shared_experts`, `num_levels`, `expert_units`, `bottom_units`,
  `tower_units`, `dropout`, ...): declared inside
  `hp.conditional_scope("architecture", [...])` with the searched
  architectures whose builder takes the argument, so a trial only carries the
  values its architecture uses. `*_units` values are one layer width (`64`)
  or a comma-separated string of widths (`"128,64"`; `"none"` for no
  layer).
- `interaction` (`"none"`, `"dot"`: dot products of the embedded
  features, or `"cross"`: a DCN-v2 cross network of the input vector),
  `expert_normalization`, `gate_normalization` and `tower_normalization`
  (`"none"`, `"batch"` or `"layer"`): the builders' arguments of those
  names, with `"none"` standing for `None`, which KerasTuner's `Choice`
  cannot hold. Declared like any builder argument.
- `kernel_l2` and `embeddings_l2` (floats >= 0): the strength of an L2
  penalty on the Dense kernels (`kernel_regularizer`) and on the embedding
  tables (`embeddings_regularizer`); 0 is none. Declared like a builder
  argument, and handed to the builder as the regularizer's Keras config
  (`{"class_name": "L2", "config": {"l2": v}}`), so the best trial's run
  config stays plain JSON. Searching one next to the regularizer argument
  it sets is refused.
- `learning_rate`: Adam's learning rate.
- `weighting`: loss-weighting strategy of `keras_mtl.training.compile`
  (`fixed`, `uncertainty`, `gradnorm`, `dwa`, `rlw`, `pcgrad`, `gradvac`,
  `mgda`, `cagrad`, `imtl`, `nash_mtl`, `aligned_mtl`, `famo`, `gls`,
  `upgrad`, `db_mtl`, `moco`, `stch`, `fairgrad`).
- `loss_weight`: every task's loss weight (`loss_weight_<task>` values);
  `loss_weight_<task>` sets one task's. The weight multiplies the task's own
  `weight`, and strategies other than `fixed` use it as their base weight.
"""

import copy
import math

import keras
import keras_tuner

from keras_mtl import features as features_lib
from keras_mtl import models as models_lib
from keras_mtl.task import Task
from keras_mtl.task import validate_tasks

# The documented default search space: a fresh `HyperParameters()` builds
# the zoo's default MMoE (8 experts of 64 units, towers of 32) with Adam at
# 1e-3, fixed loss weighting and every task at its own weight.
DEFAULT_SEARCH_SPACE = {
    "architecture": ["mmoe", "ple", "cgc", "shared_bottom"],
    "num_experts": {"values": [2, 4, 8, 16], "default": 8},
    "num_task_experts": {"values": [1, 2, 4], "default": 2},
    "num_shared_experts": {"values": [1, 2, 4], "default": 1},
    "num_levels": {"min": 1, "max": 3, "default": 2},
    "expert_units": {"values": [32, 64, 128], "default": 64},
    "bottom_units": {
        "values": ["64", "128,64", "256,128"],
        "default": "128,64",
    },
    "tower_units": {"values": [16, 32, 64], "default": 32},
    "dropout": {"min": 0.0, "max": 0.3, "step": 0.1, "default": 0.0},
    "learning_rate": {
        "min": 1e-4,
        "max": 1e-2,
        "sampling": "log",
        "default": 1e-3,
    },
    "loss_weight": {"min": 0.25, "max": 4.0, "sampling": "log", "default": 1.0},
    "weighting": ["fixed", "uncertainty", "gradnorm", "dwa", "pcgrad"],
}

# Objective metrics: direction, and the task kinds that log them (the
# per-task weighted metrics of `keras_mtl.metrics.task_metrics`).
METRIC_DIRECTIONS = {
    "auc": "max",
    "logloss": "min",
    "accuracy": "max",
    "rmse": "min",
    "mae": "min",
}
METRIC_KINDS = {
    "auc": ("binary",),
    "logloss": ("binary", "multiclass"),
    "accuracy": ("multiclass",),
    "rmse": ("regression",),
    "mae": ("regression",),
}

_GLOBAL_KEYS = ("architecture", "learning_rate", "weighting", "loss_weight")
_INT_KEYS = ("num_experts", "num_task_experts", "num_shared_experts")
# Builder arguments whose `None` the search space spells "none" (KerasTuner's
# `Choice` cannot hold `None`), with their other values.
_NONE_SPELLED = {
    "interaction": ("dot", "cross"),
    "expert_normalization": ("batch", "layer"),
    "gate_normalization": ("batch", "layer"),
    "tower_normalization": ("batch", "layer"),
}
# Search keys that set an L2 penalty's strength, and the builder argument.
_L2_KEYS = {
    "kernel_l2": "kernel_regularizer",
    "embeddings_l2": "embeddings_regularizer",
}
_RANGE_KEYS = {"min", "max", "step", "sampling", "default"}
# Arguments a builder forwards (**kwargs) but refuses.
_REFUSED = {("cgc", "num_levels"), ("omoe", "single_gate")}
_NOT_SEARCHABLE = {"features", "tasks", "name", "kl_bounds"}


def _strategies():
    """Loss-weighting strategies `keras_mtl.training.compile` offers."""
    from keras_mtl import training

    return tuple(training.STRATEGIES)


def _l2_config(value):
    """The Keras config of `L2(value)`, or None for 0."""
    if not value:
        return None
    return {"class_name": "L2", "config": {"l2": float(value)}}


def _accepts(architecture, arg):
    arg = _L2_KEYS.get(arg, arg)
    if (architecture, arg) in _REFUSED or arg in _NOT_SEARCHABLE:
        return False
    try:
        models_lib.check_builder_args(architecture, {arg: None})
    except ValueError:
        return False
    return True


def parse_units(value, key="units"):
    """`64` -> `[64]`; `"128,64"` -> `[128, 64]`; `"none"` or `""` -> `[]`."""
    if isinstance(value, bool):
        units = None
    elif isinstance(value, int):
        units = [value]
    elif isinstance(value, str):
        text = value.replace(" ", "")
        try:
            units = (
                []
                if text.lower() == "none"
                else [int(u) for u in text.split(",") if u]
            )
        except ValueError:
            units = None
    else:
        units = None
    if units is None or any(u <= 0 for u in units):
        raise ValueError(
            f"`{key}` values must be a positive width (64) or a "
            "comma-separated string of widths ('128,64'; 'none' for no "
            "layer). "
            f"Received: {value!r}"
        )
    return units


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_float(key, value):
    # PyYAML reads `1e-4` (no dot) as a string; accept it for float keys.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(
            f"`search_space.{key}` needs numbers. Received: {value!r}"
        )
    return float(value)


def _key_kind(key):
    """'str', 'int', 'float', 'units', 'none_spelled' or 'any' (other
    builder arguments)."""
    if key in ("architecture", "weighting"):
        return "str"
    if key in (
        "learning_rate",
        "dropout",
        "loss_weight",
        *_L2_KEYS,
    ) or key.startswith("loss_weight_"):
        return "float"
    if key in _INT_KEYS or key == "num_levels":
        return "int"
    if key.endswith("_units"):
        return "units"
    if key in _NONE_SPELLED:
        return "none_spelled"
    return "any"


def _check_value(key, kind, value):
    """Checks one candidate value; returns it normalised."""
    if kind == "float":
        value = _as_float(key, value)
        if key == "dropout" and not 0 <= value < 1:
            raise ValueError(
                f"`search_space.dropout` values must be in [0, 1). "
                f"Received: {value!r}"
            )
        if key == "learning_rate" and not value > 0:
            raise ValueError(
                "`search_space.learning_rate` values must be positive. "
                f"Received: {value!r}"
            )
        if (key.startswith("loss_weight") or key in _L2_KEYS) and value < 0:
            raise ValueError(
                f"`search_space.{key}` values must be >= 0. Received: {value!r}"
            )
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"`search_space.{key}` values must be positive integers. "
                f"Received: {value!r}"
            )
        return value
    if kind == "units":
        parse_units(value, f"search_space.{key}")
        return value
    if kind == "none_spelled":
        allowed = sorted(("none", *_NONE_SPELLED[key]))
        if value not in allowed:
            raise ValueError(
                f"`search_space.{key}` values must be {allowed}. "
                f"Received: {value!r}"
            )
        return value
    if kind == "str":
        known = (
            sorted(models_lib.BUILDERS)
            if key == "architecture"
            else list(_strategies())
        )
        if value not in known:
            raise ValueError(
                f"Unknown `{key}` in the search space. Received: {value!r}; "
                f"known: {known}"
            )
        return value
    if not isinstance(value, (int, float, str, bool)):
        raise ValueError(
            f"`search_space.{key}` values must be numbers, strings or "
            f"booleans. Received: {value!r}"
        )
    return value


def _check_entry(key, entry):
    """Normalises one search-space entry to a spec dict."""
    kind = _key_kind(key)
    if isinstance(entry, (list, tuple)):
        entry = {"values": list(entry)}
    if not isinstance(entry, dict):
        return {"type": "fixed", "value": _check_value(key, kind, entry)}
    if "values" in entry:
        extra = sorted(set(entry) - {"values", "default"})
        if extra:
            raise ValueError(
                f"`search_space.{key}` mixes `values` with {extra}; give "
                "either `values` (and `default`) or a range."
            )
        values = entry["values"]
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(
                f"`search_space.{key}` is empty: give at least one value. "
                f"Received: {key}={values!r}"
            )
        values = [_check_value(key, kind, v) for v in values]
        if kind == "units" and any(isinstance(v, str) for v in values):
            values = [str(v) for v in values]
        if len({type(v) for v in values}) > 1:
            raise ValueError(
                f"`search_space.{key}` values must all have one type. "
                f"Received: {values!r}"
            )
        if len(set(values)) != len(values):
            raise ValueError(
                f"`search_space.{key}` repeats a value. Received: {values!r}"
            )
        default = entry.get("default", values[0])
        if kind == "units" and isinstance(values[0], str):
            default = str(default)
        elif kind == "float":
            default = _as_float(key, default)
        if default not in values:
            raise ValueError(
                f"`search_space.{key}.default` must be one of {values}. "
                f"Received: {default!r}"
            )
        if len(values) == 1:
            return {"type": "fixed", "value": values[0]}
        return {"type": "choice", "values": values, "default": default}
    unknown = sorted(set(entry) - _RANGE_KEYS)
    if unknown or "min" not in entry or "max" not in entry:
        raise ValueError(
            f"`search_space.{key}` must be a list, a scalar, "
            "`{values: [...], default: ...}` or `{min, max, step, sampling, "
            f"default}}`. Received: {entry!r}"
        )
    if kind in ("str", "any"):
        raise ValueError(
            f"`search_space.{key}` takes a list of values, not a range. "
            f"Received: {entry!r}"
        )
    numeric = "float" if kind == "float" else "int"
    check_kind = "int" if kind == "units" else kind
    spec = {"type": numeric}
    for field in ("min", "max"):
        spec[field] = _check_value(key, check_kind, entry[field])
    if spec["min"] > spec["max"]:
        raise ValueError(
            f"`search_space.{key}` has min > max. Received: {entry!r}"
        )
    sampling = entry.get("sampling", "linear")
    if sampling not in ("linear", "log", "reverse_log"):
        raise ValueError(
            f"`search_space.{key}.sampling` must be 'linear', 'log' or "
            f"'reverse_log'. Received: {sampling!r}"
        )
    if sampling != "linear" and not spec["min"] > 0:
        raise ValueError(
            f"`search_space.{key}` with {sampling} sampling needs min > 0. "
            f"Received: min={spec['min']!r}"
        )
    spec["sampling"] = sampling
    step = entry.get("step")
    if step is not None:
        step = _as_float(key, step) if numeric == "float" else step
        if not _is_number(step) or not step > 0:
            raise ValueError(
                f"`search_space.{key}.step` must be a positive number. "
                f"Received: {step!r}"
            )
        if numeric == "int" and not isinstance(step, int):
            raise ValueError(
                f"`search_space.{key}.step` must be an integer. "
                f"Received: {step!r}"
            )
    spec["step"] = step
    default = entry.get("default", spec["min"])
    default = _check_value(key, check_kind, default)
    if not spec["min"] <= default <= spec["max"]:
        raise ValueError(
            f"`search_space.{key}.default` must lie in [min, max]. "
            f"Received: {default!r}"
        )
    spec["default"] = default
    if spec["min"] == spec["max"]:
        return {"type": "fixed", "value": spec["min"]}
    return spec


def spec_values(spec):
    """The candidate values of a spec (`None` for a range)."""
    if spec["type"] == "fixed":
        return [spec["value"]]
    if spec["type"] == "choice":
        return list(spec["values"])
    return None


def check_search_space(search_space=None):
    """Validates a search space; returns it normalised (see module doc).

    Unknown keys, empty lists, an empty space, a space with nothing to
    search (every value fixed), an unknown architecture or weighting
    strategy, and builder arguments no searched architecture takes are
    refused with a `ValueError` naming the key.

    Args:
        search_space: dict or None. `None` takes `DEFAULT_SEARCH_SPACE`.

    Returns:
        A dict `{key: spec}`; each spec is a dict with `type` one of
        `"fixed"`, `"choice"`, `"int"`, `"float"`.
    """
    if search_space is None:
        search_space = DEFAULT_SEARCH_SPACE
    if not isinstance(search_space, dict):
        raise ValueError(
            "`search_space` must be a mapping {name: values}. "
            f"Received: search_space={search_space!r}"
        )
    if not search_space:
        raise ValueError(
            "The search space is empty: give `search_space` at least "
            "`architecture` and one value to search (see "
            "keras_mtl.tuning.DEFAULT_SEARCH_SPACE)."
        )
    if "architecture" not in search_space:
        raise ValueError(
            "`search_space` needs `architecture` (a list of builder names, "
            f"or one). Known: {sorted(models_lib.BUILDERS)}"
        )
    space = {}
    # Architecture first: the other keys are checked against it.
    keys = [k for k in search_space if k != "architecture"]
    for key in ["architecture", *keys]:
        if not isinstance(key, str):
            raise ValueError(f"`search_space` keys must be strings: {key!r}")
        space[key] = _check_entry(key, copy.deepcopy(search_space[key]))
    archs = spec_values(space["architecture"])
    for key in space:
        if key in _GLOBAL_KEYS or key.startswith("loss_weight_"):
            continue
        users = [a for a in archs if _accepts(a, key)]
        if not users:
            takers = [
                a for a in sorted(models_lib.BUILDERS) if _accepts(a, key)
            ]
            raise ValueError(
                f"Unknown `search_space` key '{key}': no searched "
                f"architecture ({archs}) takes it"
                + (f"; it applies to {takers}." if takers else ".")
            )
    for key, argument in _L2_KEYS.items():
        if key in space and argument in space:
            raise ValueError(
                f"`search_space` sets `{argument}` twice: give `{key}` (the "
                f"L2 strength) or `{argument}`, not both."
            )
    for key in ("cross_layers", "cross_projection_dim"):
        interaction = space.get("interaction")
        if key in space and (
            interaction is None or spec_values(interaction) != ["cross"]
        ):
            raise ValueError(
                f"`search_space.{key}` needs `interaction` fixed to "
                "'cross' (the builders refuse it with any other "
                "interaction). Received: interaction="
                f"{spec_values(interaction) if interaction else None!r}"
            )
    if all(spec["type"] == "fixed" for spec in space.values()):
        raise ValueError(
            "The search space has nothing to search: every value in "
            f"`search_space` ({sorted(space)}) is fixed. Give at least one "
            "key two or more values."
        )
    return space


class WeightedTaskMetric(keras.callbacks.Callback):
    """Logs a weighted mean of per-task metrics as the tuning objective.

    At the end of every epoch reads `m_k = logs[f"{prefix}{output}_{metric}"]`
    for each task `k` (e.g. `val_click_auc`), writes
    `sum_k c_k m_k / sum_k c_k` to `logs[f"{prefix}weighted_{metric}"]`
    (e.g. `val_weighted_auc`, the `keras_tuner.Objective`), and, where an
    architecture renames a task's output (ESMM's `ctr` for `click`), copies
    the value to the task's own key so every trial records the same names.
    Place it before callbacks that read the objective (`MultiTaskHyperModel`
    does).

    Args:
        task_weights: dict `{task_name: float > 0}`.
        metric: str. Per-task metric name. Defaults to `"auc"`.
        outputs: dict `{task_name: output_name}` for renamed outputs.
            Defaults to none.
        prefix: str. Log-key prefix. Defaults to `"val_"`.

    Example:

    >>> cb = keras_mtl.tuning.WeightedTaskMetric({"click": 1, "conversion": 1})
    >>> model.fit(train_ds, validation_data=val_ds, callbacks=[cb])
    """

    def __init__(self, task_weights, metric="auc", outputs=None, prefix="val_"):
        super().__init__()
        if not isinstance(task_weights, dict) or not task_weights:
            raise ValueError(
                "`task_weights` must be a non-empty dict {task: weight}. "
                f"Received: task_weights={task_weights!r}"
            )
        for name, value in task_weights.items():
            if not _is_number(value) or not value > 0:
                raise ValueError(
                    f"`task_weights['{name}']` must be a positive number. "
                    f"Received: {value!r}"
                )
        self.task_weights = {k: float(v) for k, v in task_weights.items()}
        self.metric = metric
        self.outputs = dict(outputs or {})
        self.prefix = prefix
        self.name = f"{prefix}weighted_{metric}"

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        total = weight = 0.0
        for task, c in self.task_weights.items():
            output = self.outputs.get(task, task)
            source = f"{self.prefix}{output}_{self.metric}"
            if source not in logs:
                raise ValueError(
                    f"The tuning objective needs '{source}' in the epoch "
                    f"logs, which hold {sorted(logs)}. Pass validation data "
                    "and compile the task's metric."
                )
            value = float(logs[source])
            logs[f"{self.prefix}{task}_{self.metric}"] = value
            total += c * value
            weight += c
        logs[self.name] = total / weight


def _data_key(task, arch, by_name, route, data):
    """The `data` entry holding `task`'s labels (added when new)."""
    if task.name in route:
        return route[task.name]
    space = None
    if task.space is not None:
        space = _data_key(by_name[task.space], arch, by_name, route, data)
    for key, known in data.items():
        if (
            known.kind == task.kind
            and known.label == task.label
            and known.num_classes == task.num_classes
            and known.space == space
        ):
            route[task.name] = key
            return key
    key, k = task.name, 1
    while key in data:
        key, k = f"{task.name}_{arch}_{k}", k + 1
    data[key] = Task(
        key,
        task.kind,
        space=space,
        weight=task.weight,
        num_classes=task.num_classes,
        label=task.label,
    )
    route[task.name] = key
    return key


def _route_tasks(architectures, tasks):
    """The tasks the data must carry, and each architecture's outputs.

    `esmm` and `aitm` train adapted tasks (`tasks_for`). Every adapted task
    that means the same as a task already listed (same kind, label and
    sample space) reuses its labels; any other gets its own entry. Returns
    `(data_tasks, routes)`: `routes[arch]` maps each output of the
    architecture's model to the name of its task in `data_tasks`.
    """
    data = {t.name: t for t in tasks}
    routes = {}
    for arch in architectures:
        try:
            adapted = models_lib.tasks_for(arch, tasks)
        except ValueError as err:
            raise ValueError(
                f"Architecture '{arch}' cannot train these tasks: {err}"
            ) from None
        by_name = {t.name: t for t in adapted}
        route = {}
        for task in adapted:
            _data_key(task, arch, by_name, route, data)
        routes[arch] = {t.name: route[t.name] for t in adapted}
    return list(data.values()), routes


class MultiTaskHyperModel(keras_tuner.HyperModel):
    """A KerasTuner `HyperModel` over every `keras_mtl.models` architecture.

    `build(hp)` declares every searchable value with `hp.*` (see
    `keras_mtl.tuning.hypermodel` for the search-space format; builder
    arguments live in `hp.conditional_scope("architecture", ...)`), builds
    the architecture with `keras_mtl.models.build` on the tasks it trains
    (`keras_mtl.models.tasks_for`), and compiles it with
    `keras_mtl.training.compile` and the chosen loss weighting, learning
    rate and loss weights. `fit` adds a `WeightedTaskMetric` callback, so
    every epoch logs each task's validation metric and their weighted mean,
    the tuner's `objective` (`val_weighted_auc` by default).

    The data given to the tuner must carry the labels of `data_tasks` (the
    tasks, plus what ESMM / AITM train when they are searched): build it
    with `keras_mtl.data.from_dataframe(df, features, hypermodel.data_tasks)`.
    `fit` hands each architecture the labels of its own outputs.

    Everything fixed is checked here, before any trial: features, tasks,
    the search space, every searched architecture against the tasks, the
    objective metric and its task weights.

    Args:
        features: list of feature specs.
        tasks: list of `keras_mtl.Task`.
        search_space: dict or None. Defaults to `DEFAULT_SEARCH_SPACE`.
        objective_metric: str. Per-task validation metric of the objective,
            one of `METRIC_DIRECTIONS`. Defaults to `"auc"`.
        objective_weights: dict `{task_name: float > 0}` or None. Defaults
            to weight 1 for every task that logs `objective_metric`.
        compile_kwargs: dict or None. Extra `keras.Model.compile` arguments
            (`jit_compile`, `steps_per_execution`, `run_eagerly`).
        weighting: str or mapping. The loss-weighting strategy when the
            search space has no `weighting` (e.g. `{"name": "gradnorm",
            "alpha": 1.5}`). Defaults to `"fixed"`.
        name: str. Defaults to `"multi_task"`.

    Example:

    >>> hypermodel = keras_mtl.tuning.MultiTaskHyperModel(
    ...     specs, tasks, objective_weights={"click": 1.0, "conversion": 2.0})
    >>> tuner = keras_mtl.tuning.make_tuner(
    ...     hypermodel, {"algorithm": "random", "max_trials": 20}, "runs/t")
    >>> tuner.search(train_ds, validation_data=val_ds, epochs=3)
    """

    def __init__(
        self,
        features,
        tasks,
        search_space=None,
        objective_metric="auc",
        objective_weights=None,
        compile_kwargs=None,
        weighting="fixed",
        name="multi_task",
    ):
        super().__init__(name=name)
        from keras_mtl import training

        # Unknown strategies and strategy arguments fail here.
        training.get_weighting(weighting)
        self.weighting = weighting
        self.features = features_lib.validate_features(features)
        self.tasks = validate_tasks(tasks)
        if not self.tasks:
            raise ValueError("`tasks` must name at least one task.")
        self.space = check_search_space(search_space)
        names = [t.name for t in self.tasks]
        for key in self.space:
            if key.startswith("loss_weight_") and key[12:] not in names:
                raise ValueError(
                    f"`search_space.{key}` names unknown task "
                    f"'{key[12:]}'. Tasks: {names}"
                )
        if objective_metric not in METRIC_DIRECTIONS:
            raise ValueError(
                "Unknown `objective_metric`. Received: "
                f"{objective_metric!r}; known: {sorted(METRIC_DIRECTIONS)}"
            )
        self.objective_metric = objective_metric
        kinds = METRIC_KINDS[objective_metric]
        if objective_weights is None:
            objective_weights = {
                t.name: 1.0 for t in self.tasks if t.kind in kinds
            }
            if not objective_weights:
                raise ValueError(
                    f"No task logs '{objective_metric}' (it applies to "
                    f"{list(kinds)} tasks). Tasks: "
                    f"{[(t.name, t.kind) for t in self.tasks]}"
                )
        if not isinstance(objective_weights, dict) or not objective_weights:
            raise ValueError(
                "`objective_weights` must be a non-empty dict "
                f"{{task: weight}}. Received: {objective_weights!r}"
            )
        by_name = {t.name: t for t in self.tasks}
        for task, value in objective_weights.items():
            if task not in by_name:
                raise ValueError(
                    f"The objective weights name unknown task '{task}'. "
                    f"Tasks: {names}"
                )
            if by_name[task].kind not in kinds:
                raise ValueError(
                    f"Task '{task}' is {by_name[task].kind}; it logs no "
                    f"'{objective_metric}' (which applies to {list(kinds)} "
                    "tasks)."
                )
            if not _is_number(value) or not value > 0:
                raise ValueError(
                    f"The objective weight of task '{task}' must be a "
                    f"positive number. Received: {value!r}"
                )
        self.objective_weights = {
            k: float(v) for k, v in objective_weights.items()
        }
        compile_kwargs = dict(compile_kwargs or {})
        reserved = sorted(
            set(compile_kwargs)
            & {"learning_rate", "loss_weights", "weighting", "optimizer"}
        )
        if reserved:
            raise ValueError(
                f"`compile_kwargs` cannot set {reserved}: they are searched "
                "(`learning_rate`, `loss_weight`, `weighting` in the search "
                "space)."
            )
        self.compile_kwargs = compile_kwargs
        self.architectures = spec_values(self.space["architecture"])
        self.data_tasks, self.routes = _route_tasks(
            self.architectures, self.tasks
        )
        # Objective task -> model output, per architecture.
        self.outputs = {}
        for arch, route in self.routes.items():
            outputs = {key: out for out, key in route.items()}
            missing = [t for t in self.objective_weights if t not in outputs]
            if missing:
                raise ValueError(
                    f"Architecture '{arch}' trains no output for objective "
                    f"task(s) {missing} (it trains {list(route)}, on "
                    "different sample spaces). Remove them from the "
                    "objective weights or the architecture from "
                    "`search_space.architecture`."
                )
            self.outputs[arch] = {t: outputs[t] for t in self.objective_weights}

    # -- objective ---------------------------------------------------------

    @property
    def objective(self):
        """The `keras_tuner.Objective`, e.g. `val_weighted_auc` (max)."""
        return keras_tuner.Objective(
            f"val_weighted_{self.objective_metric}",
            METRIC_DIRECTIONS[self.objective_metric],
        )

    @property
    def metric_names(self):
        """`{task: "val_<task>_<metric>"}` for the objective's tasks."""
        return {
            t: f"val_{t}_{self.objective_metric}"
            for t in self.objective_weights
        }

    def objective_callback(self, architecture):
        """The `WeightedTaskMetric` for a trial of `architecture`."""
        return WeightedTaskMetric(
            self.objective_weights,
            self.objective_metric,
            outputs=self.outputs[architecture],
        )

    # -- search space ------------------------------------------------------

    def _declare(self, hp, key, spec):
        kind = spec["type"]
        if kind == "fixed":
            return hp.Fixed(key, spec["value"])
        if kind == "choice":
            return hp.Choice(key, spec["values"], default=spec["default"])
        make = hp.Int if kind == "int" else hp.Float
        return make(
            key,
            spec["min"],
            spec["max"],
            step=spec["step"] if kind == "float" else (spec["step"] or 1),
            sampling=spec["sampling"],
            default=spec["default"],
        )

    def declare(self, hp):
        """Declares every searchable value in `hp`; returns the trial's.

        Returns:
            `(architecture, builder_kwargs, learning_rate, weighting,
            loss_weights)` with `loss_weights` keyed by task name.
        """
        arch = self._declare(hp, "architecture", self.space["architecture"])
        kwargs = {}
        for key, spec in self.space.items():
            if key in _GLOBAL_KEYS or key.startswith("loss_weight_"):
                continue
            users = [a for a in self.architectures if _accepts(a, key)]
            with hp.conditional_scope("architecture", users):
                value = self._declare(hp, key, spec)
            if arch in users:
                if _key_kind(key) == "units":
                    value = parse_units(value, key)
                elif _key_kind(key) == "none_spelled" and value == "none":
                    value = None
                if key in _L2_KEYS:
                    value = _l2_config(value)
                kwargs[_L2_KEYS.get(key, key)] = value
        learning_rate = None
        if "learning_rate" in self.space:
            learning_rate = self._declare(
                hp, "learning_rate", self.space["learning_rate"]
            )
        weighting = self.weighting
        if "weighting" in self.space:
            weighting = self._declare(hp, "weighting", self.space["weighting"])
        loss_weights = {}
        for task in self.tasks:
            key = f"loss_weight_{task.name}"
            spec = self.space.get(key, self.space.get("loss_weight"))
            if spec is not None:
                loss_weights[task.name] = self._declare(hp, key, spec)
        return arch, kwargs, learning_rate, weighting, loss_weights

    def task_loss_weights(self, architecture, loss_weights):
        """Loss weights of an architecture's outputs from the task ones.

        An output trained on a task's data (or, failing that, on its label)
        gets its own `weight` times the task's searched loss weight; ESMM's
        `cvr` keeps weight 0.
        """
        adapted = models_lib.tasks_for(architecture, self.tasks)
        route = self.routes[architecture]
        by_label = {}
        for task in self.tasks:
            by_label.setdefault(task.label, task.name)
        weights = {}
        for task in adapted:
            source = route[task.name]
            if source not in loss_weights:
                source = by_label.get(task.label)
            factor = loss_weights.get(source, 1.0)
            weights[task.name] = task.weight * factor
        return adapted, weights

    def build(self, hp):
        from keras_mtl import training

        arch, kwargs, learning_rate, weighting, loss_weights = self.declare(hp)
        tasks, weights = self.task_loss_weights(arch, loss_weights)
        model = models_lib.build(arch, self.features, tasks, **kwargs)
        compile_kwargs = dict(self.compile_kwargs)
        if learning_rate is not None:
            compile_kwargs["learning_rate"] = learning_rate
        return training.compile(
            model,
            tasks,
            weighting=weighting,
            loss_weights=weights,
            **compile_kwargs,
        )

    # -- training ----------------------------------------------------------

    def _select(self, data, architecture):
        """Keeps the labels and sample weights of the model's outputs."""
        route = self.routes[architecture]
        if data is None:
            return None
        if list(route.items()) == [(t.name, t.name) for t in self.data_tasks]:
            return data
        import tensorflow as tf

        if not isinstance(data, tf.data.Dataset):
            raise ValueError(
                "MultiTaskHyperModel.fit needs a tf.data.Dataset of "
                "(features, labels, sample_weights) over `data_tasks` when "
                "the search includes ESMM or AITM. Received: "
                f"{type(data).__name__}"
            )

        def select(x, y, sw):
            return (
                x,
                {out: y[key] for out, key in route.items()},
                {out: sw[key] for out, key in route.items()},
            )

        return data.map(select)

    def fit(self, hp, model, x=None, *args, callbacks=None, **kwargs):
        """`model.fit` with the objective callback first."""
        arch = hp.get("architecture")
        callbacks = [self.objective_callback(arch), *(callbacks or [])]
        if "validation_data" in kwargs:
            kwargs["validation_data"] = self._select(
                kwargs["validation_data"], arch
            )
        return model.fit(
            self._select(x, arch), *args, callbacks=callbacks, **kwargs
        )
