"""Tuning runs: a config in, a resumable KerasTuner search and its reports out.

A tuning config is a run config (`keras_mtl.runner`: `dataset`,
`features`, `exclude`, `tasks`, `user_column`, `training`, `output_dir`)
without `model`, plus:

```yaml
tuner:                      # the search algorithm and its budget
  algorithm: bayesian       # random | bayesian | hyperband
  max_trials: 20            # random / bayesian
  overwrite: false          # false: the same output_dir resumes
objective: {metric: auc, weights: {click: 1.0, conversion: 1.0}}
search_space: {...}         # see keras_mtl.tuning.hypermodel
compile: {jit_compile: false}   # extra keras.Model.compile arguments
export_dir: null            # a TF Serving base dir to export the best model
```

`run_search(config)` writes to `output_dir`: the KerasTuner project
(`<project_name>/trial_*`), `trials.csv` (every trial: objective, each
task's metric, `pareto`, hyperparameters), `pareto.csv` (the front),
`pareto.png`, and `best/` (`model.keras`, `features.json`, `tasks.json`,
`config.json`, `hyperparameters.json`; `keras-mtl evaluate --model-dir
<output_dir>/best` evaluates it).
"""

import copy
import dataclasses
import importlib.util
import inspect
import pathlib
import warnings

import keras
import keras_tuner
import pandas as pd

from keras_mtl import features as features_lib
from keras_mtl import runner
from keras_mtl.task import validate_tasks
from keras_mtl.tuning.hypermodel import DEFAULT_SEARCH_SPACE
from keras_mtl.tuning.hypermodel import METRIC_DIRECTIONS
from keras_mtl.tuning.hypermodel import MultiTaskHyperModel
from keras_mtl.tuning.hypermodel import check_search_space
from keras_mtl.tuning.hypermodel import spec_values
from keras_mtl.tuning.pareto import plot_pareto
from keras_mtl.tuning.pareto import trials_table

ALGORITHMS = ("random", "bayesian", "hyperband")
DEFAULT_OUTPUT_DIR = "runs/tuning"
TUNER_DEFAULTS = {
    "algorithm": "random",
    "max_trials": 10,
    "executions_per_trial": 1,
    "overwrite": False,
    "project_name": "search",
    "seed": None,  # None: training.seed
    "max_consecutive_failed_trials": 3,
    # bayesian only
    "num_initial_points": None,
    # hyperband only
    "max_epochs": None,  # None: training.epochs
    "factor": 3,
    "hyperband_iterations": 1,
}
_ONLY = {
    "max_trials": ("random", "bayesian"),
    "num_initial_points": ("bayesian",),
    "max_epochs": ("hyperband",),
    "factor": ("hyperband",),
    "hyperband_iterations": ("hyperband",),
}
OBJECTIVE_DEFAULTS = {"metric": "auc", "weights": None}
TUNING_FIELDS = ("tuner", "objective", "search_space", "compile", "export_dir")


def _export_function():
    """`keras_mtl.export.export_for_serving`, or a clear error."""
    if importlib.util.find_spec("keras_mtl.export") is None:
        raise ValueError(
            "`export_dir` is set, but keras_mtl.export is not available in "
            "this installation, so the best model cannot be exported for "
            "serving. Remove `export_dir`, or install a keras-mtl with "
            "keras_mtl.export."
        )
    from keras_mtl import export

    fn = getattr(export, "export_for_serving", None)
    if fn is None:
        raise ValueError(
            "`export_dir` is set, but keras_mtl.export has no "
            "`export_for_serving`; the best model cannot be exported."
        )
    return fn


def _positive_int(where, value, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"`{where}` must be a positive integer. Received: {value!r}"
        )


def _check_tuner(section):
    section = section or {}
    if not isinstance(section, dict):
        raise ValueError(
            f"`tuner` must be a mapping. Received: tuner={section!r}"
        )
    unknown = sorted(set(section) - set(TUNER_DEFAULTS))
    if unknown:
        raise ValueError(
            f"Unknown `tuner` field(s) {unknown}. Known: "
            f"{sorted(TUNER_DEFAULTS)}"
        )
    tuner = {**TUNER_DEFAULTS, **section}
    algorithm = tuner["algorithm"]
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"Unknown `tuner.algorithm`. Received: {algorithm!r}; known: "
            f"{list(ALGORITHMS)}"
        )
    for key, algorithms in _ONLY.items():
        if key in section and algorithm not in algorithms:
            raise ValueError(
                f"`tuner.{key}` applies to {list(algorithms)}, not to "
                f"'{algorithm}'."
            )
    for key in (
        "max_trials",
        "executions_per_trial",
        "max_consecutive_failed_trials",
        "factor",
        "hyperband_iterations",
    ):
        _positive_int(f"tuner.{key}", tuner[key])
    for key in ("num_initial_points", "max_epochs", "seed"):
        _positive_int(f"tuner.{key}", tuner[key], allow_none=True)
    if algorithm == "hyperband" and tuner["factor"] < 2:
        raise ValueError(
            f"`tuner.factor` must be >= 2. Received: {tuner['factor']!r}"
        )
    if not isinstance(tuner["overwrite"], bool):
        raise ValueError(
            "`tuner.overwrite` must be true or false. "
            f"Received: {tuner['overwrite']!r}"
        )
    name = tuner["project_name"]
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(
            "`tuner.project_name` must be a non-empty name without '/'. "
            f"Received: {name!r}"
        )
    return tuner


def _check_objective(section):
    section = section or {}
    if not isinstance(section, dict):
        raise ValueError(
            "`objective` must be a mapping {metric, weights}. "
            f"Received: objective={section!r}"
        )
    unknown = sorted(set(section) - set(OBJECTIVE_DEFAULTS))
    if unknown:
        raise ValueError(
            f"Unknown `objective` field(s) {unknown}. Known: "
            f"{sorted(OBJECTIVE_DEFAULTS)}"
        )
    objective = {**OBJECTIVE_DEFAULTS, **section}
    if objective["metric"] not in METRIC_DIRECTIONS:
        raise ValueError(
            f"Unknown `objective.metric`. Received: {objective['metric']!r}; "
            f"known: {sorted(METRIC_DIRECTIONS)}"
        )
    weights = objective["weights"]
    if weights is not None and (not isinstance(weights, dict) or not weights):
        raise ValueError(
            "`objective.weights` must be a non-empty mapping {task: weight}. "
            f"Received: {weights!r}"
        )
    return objective


def resolve_tuning_config(config):
    """Fills defaults into a tuning config and validates what it can.

    Everything that does not need the data is checked here: unknown fields,
    the dataset and training sections (as `keras_mtl.runner.resolve_config`
    does), the tuner, the objective metric, the search space (unknown or
    empty entries, unknown architectures) and the availability of the
    export. The objective's task names are checked by
    `MultiTaskHyperModel`, once the tasks are known, still before any trial.

    Returns:
        The resolved config (a new dict).
    """
    if not isinstance(config, dict):
        raise ValueError(
            "A tuning config must be a mapping. "
            f"Received: {type(config).__name__}"
        )
    config = copy.deepcopy(config)
    if "model" in config:
        raise ValueError(
            "A tuning config has no `model`: the model is searched. Put the "
            "architectures and builder arguments in `search_space`."
        )
    known = (set(runner.DEFAULTS) - {"model"}) | set(TUNING_FIELDS)
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(
            f"Unknown tuning config field(s) {unknown}. Known: {sorted(known)}"
        )
    search_space = config.get("search_space")
    if search_space is None:
        search_space = copy.deepcopy(DEFAULT_SEARCH_SPACE)
    space = check_search_space(search_space)
    tuner = _check_tuner(config.get("tuner"))
    objective = _check_objective(config.get("objective"))
    compile_kwargs = config.get("compile") or {}
    if not isinstance(compile_kwargs, dict):
        raise ValueError(
            "`compile` must be a mapping of keras.Model.compile arguments. "
            f"Received: compile={compile_kwargs!r}"
        )
    export_dir = config.get("export_dir")
    if export_dir is not None:
        if not isinstance(export_dir, str) or not export_dir:
            raise ValueError(
                "`export_dir` must be a directory path. "
                f"Received: export_dir={export_dir!r}"
            )
        _export_function()
    run = {k: v for k, v in config.items() if k in runner.DEFAULTS}
    run.setdefault("output_dir", DEFAULT_OUTPUT_DIR)
    run["model"] = {"architecture": spec_values(space["architecture"])[0]}
    resolved = runner.resolve_config(run)
    resolved.pop("model")
    resolved.update(
        tuner=tuner,
        objective=objective,
        search_space=search_space,
        compile=compile_kwargs,
        export_dir=export_dir,
    )
    return resolved


class _TensorBoardOnDemand:
    """Imports TensorBoard only for a `keras.callbacks.TensorBoard`.

    KerasTuner 1.4 imports `tensorboard` in every trial on the TensorFlow
    backend, to patch TensorBoard callbacks; TensorFlow 2.21 no longer
    installs TensorBoard. Searches without a TensorBoard callback skip the
    import; with one, KerasTuner's own code runs (and needs TensorBoard).
    """

    def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
        if any(type(c).__name__ == "TensorBoard" for c in callbacks):
            super()._configure_tensorboard_dir(callbacks, trial, execution)


class RandomSearch(_TensorBoardOnDemand, keras_tuner.RandomSearch):
    """`keras_tuner.RandomSearch` (TensorBoard imported on demand)."""


class BayesianOptimization(
    _TensorBoardOnDemand, keras_tuner.BayesianOptimization
):
    """`keras_tuner.BayesianOptimization` (TensorBoard on demand)."""


class Hyperband(_TensorBoardOnDemand, keras_tuner.Hyperband):
    """`keras_tuner.Hyperband` (TensorBoard imported on demand)."""


def make_tuner(hypermodel, tuner, directory, seed=0):
    """A KerasTuner tuner from a resolved `tuner` section.

    Args:
        hypermodel: `MultiTaskHyperModel`.
        tuner: dict, the `tuner` section (see `TUNER_DEFAULTS`).
        directory: str or path. The tuner's working directory.
        seed: int. Used when `tuner["seed"]` is None.

    Returns:
        A `RandomSearch`, `BayesianOptimization` or `Hyperband` (the
        KerasTuner classes, importing TensorBoard only when used) with
        `hypermodel.objective`; `overwrite=False` reloads the finished
        trials of `<directory>/<project_name>`.
    """
    tuner = {**TUNER_DEFAULTS, **tuner}
    if tuner["algorithm"] not in ALGORITHMS:
        raise ValueError(
            f"Unknown tuner algorithm. Received: {tuner['algorithm']!r}; "
            f"known: {list(ALGORITHMS)}"
        )
    common = dict(
        hypermodel=hypermodel,
        objective=hypermodel.objective,
        directory=str(directory),
        project_name=tuner["project_name"],
        overwrite=tuner["overwrite"],
        seed=tuner["seed"] if tuner["seed"] is not None else seed,
        executions_per_trial=tuner["executions_per_trial"],
        max_consecutive_failed_trials=tuner["max_consecutive_failed_trials"],
    )
    if tuner["algorithm"] == "random":
        return RandomSearch(max_trials=tuner["max_trials"], **common)
    if tuner["algorithm"] == "bayesian":
        return BayesianOptimization(
            max_trials=tuner["max_trials"],
            num_initial_points=tuner["num_initial_points"],
            **common,
        )
    if tuner["max_epochs"] is None:
        raise ValueError("Hyperband needs `tuner.max_epochs`.")
    return Hyperband(
        max_epochs=tuner["max_epochs"],
        factor=tuner["factor"],
        hyperband_iterations=tuner["hyperband_iterations"],
        **common,
    )


@dataclasses.dataclass
class SearchResult:
    """What `run_search` did and wrote."""

    directory: pathlib.Path
    algorithm: str
    objective: keras_tuner.Objective
    objective_weights: dict
    metric_columns: list
    trials: pd.DataFrame
    pareto: pd.DataFrame
    new_trials: list
    best_trial_id: str
    best_score: float
    best_hyperparameters: dict
    files: dict

    @property
    def completed(self):
        return int((self.trials["status"] == "COMPLETED").sum())


def _save_best(tuner, hypermodel, trial, config, features, out):
    """Saves the best trial's model as a run `keras-mtl evaluate` reads."""
    from keras_mtl import training

    hp = trial.hyperparameters
    arch, kwargs, learning_rate, weighting, loss_weights = hypermodel.declare(
        hp.copy()
    )
    tasks, weights = hypermodel.task_loss_weights(arch, loss_weights)
    with warnings.catch_warnings():
        # The checkpoint holds the trial's optimizer state; only the
        # weights matter here.
        warnings.filterwarnings(
            "ignore", message="Skipping variable loading for optimizer"
        )
        wrapper = tuner.load_model(trial)
    best = out / "best"
    best.mkdir(parents=True, exist_ok=True)
    path = training.save_model(wrapper, best / "model.keras")
    features_lib.save_features(features, best / "features.json")
    runner._write_json(
        best / "tasks.json",
        [{**t.get_config(), "weight": weights[t.name]} for t in tasks],
    )
    run_config = {
        k: copy.deepcopy(config[k])
        for k in runner.DEFAULTS
        if k in config and k != "model"
    }
    run_config["model"] = {"architecture": arch, **kwargs}
    run_config["tasks"] = [
        {**t.get_config(), "weight": t.weight * loss_weights.get(t.name, 1.0)}
        for t in hypermodel.tasks
    ]
    if learning_rate is not None:
        run_config["training"]["learning_rate"] = learning_rate
    if "weighting" in run_config["training"]:
        # A run config names the strategy since keras_mtl.training landed.
        run_config["training"]["weighting"] = weighting
    run_config["output_dir"] = str(best)
    runner._write_json(best / "config.json", run_config)
    runner._write_json(
        best / "hyperparameters.json",
        {
            "trial_id": trial.trial_id,
            "score": trial.score,
            "values": hp.values,
            "weighting": weighting,
            "loss_weights": weights,
        },
    )
    serving = getattr(wrapper, "model", wrapper)
    return serving, tasks, path


def run_search(config, verbose=1):
    """Runs (or resumes) a tuning search from a config; see module doc.

    Every check that can fail is made before the first trial: the config,
    the data, the tasks, the search space against the tasks and the
    objective weights. With `tuner.overwrite: false` and an existing
    project in `output_dir`, finished trials are reloaded, not rerun, and
    the search goes on until the budget (`max_trials`, or Hyperband's
    brackets) is spent.

    Args:
        config: dict. A tuning config (see `resolve_tuning_config`).
        verbose: int. Keras and KerasTuner verbosity. Defaults to `1`.

    Returns:
        A `SearchResult`; `format_summary(result)` prints it.
    """
    config = resolve_tuning_config(config)
    training_cfg = config["training"]
    tuner_cfg = config["tuner"]
    seed = training_cfg["seed"]
    keras.utils.set_random_seed(seed)
    source = runner.load_source(config)
    tasks = validate_tasks(config["tasks"]) if config["tasks"] else source.tasks
    if tasks is None:
        raise ValueError(
            f"Dataset '{config['dataset']['name']}' needs `tasks` in the "
            "config."
        )
    if source.val is None:
        raise ValueError(
            f"Tuning needs a validation split; dataset "
            f"'{config['dataset']['name']}' has none (`training.val_fraction` "
            "must be > 0 for in-memory datasets)."
        )
    features = runner._resolve_features(config, source, tasks)
    space = dict(config["search_space"])
    # Unsearched learning rate and weighting: the `training` section's.
    space.setdefault("learning_rate", training_cfg["learning_rate"])
    hypermodel = MultiTaskHyperModel(
        features,
        tasks,
        search_space=space,
        objective_metric=config["objective"]["metric"],
        objective_weights=config["objective"]["weights"],
        compile_kwargs=config["compile"],
        weighting=training_cfg.get("weighting", "fixed"),
    )
    objective = hypermodel.objective
    if tuner_cfg["max_epochs"] is None:
        tuner_cfg = {**tuner_cfg, "max_epochs": training_cfg["epochs"]}
    out = pathlib.Path(config["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    tuner = make_tuner(hypermodel, tuner_cfg, out, seed=seed)
    # Finished trials are reloaded; one interrupted while running reruns.
    finished = ("COMPLETED", "FAILED", "INVALID")
    before = {
        trial_id
        for trial_id, trial in tuner.oracle.trials.items()
        if trial.status in finished
    }
    bs = training_cfg["batch_size"]
    data_tasks = hypermodel.data_tasks
    train_ds = source.dataset("train", features, data_tasks, bs, True, seed)
    val_ds = source.dataset("val", features, data_tasks, bs, False, seed)
    callbacks = []
    if training_cfg["early_stopping_patience"]:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=objective.name,
                mode=objective.direction,
                patience=training_cfg["early_stopping_patience"],
                restore_best_weights=True,
            )
        )
    tuner.search(
        train_ds,
        validation_data=val_ds,
        epochs=training_cfg["epochs"],
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,  # the dataset reshuffles itself every epoch
    )
    new_trials = sorted(
        set(tuner.oracle.trials) - before, key=lambda t: (len(t), t)
    )
    metric_columns = list(hypermodel.metric_names.values())
    direction = METRIC_DIRECTIONS[hypermodel.objective_metric]
    directions = {c: direction for c in metric_columns}
    table = trials_table(tuner.oracle, metric_columns, directions)
    files = {
        "trials": out / "trials.csv",
        "pareto": out / "pareto.csv",
        "plot": out / "pareto.png",
    }
    table.to_csv(files["trials"], index=False)
    front = table[table["pareto"]]
    front.to_csv(files["pareto"], index=False)
    plot_pareto(
        table, metric_columns, files["plot"], directions, objective=objective
    )
    best_trials = tuner.oracle.get_best_trials(1)
    best = best_trials[0] if best_trials else None
    if best is None or best.status != "COMPLETED":
        raise ValueError(
            f"No trial of the search in {out} completed; the trial errors "
            f"are in the `error` column of {files['trials']}."
        )
    serving, best_tasks, files["best_model"] = _save_best(
        tuner, hypermodel, best, config, features, out
    )
    if config["export_dir"]:
        export = _export_function()
        params = inspect.signature(export).parameters
        kwargs = {}
        if "tasks" in params:
            kwargs["tasks"] = best_tasks
        if "features" in params:
            kwargs["features"] = features
        files["export"] = export(serving, config["export_dir"], **kwargs)
    return SearchResult(
        directory=out,
        algorithm=tuner_cfg["algorithm"],
        objective=objective,
        objective_weights=dict(hypermodel.objective_weights),
        metric_columns=metric_columns,
        trials=table,
        pareto=front,
        new_trials=new_trials,
        best_trial_id=best.trial_id,
        best_score=float(best.score),
        best_hyperparameters=dict(best.hyperparameters.values),
        files=files,
    )


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_summary(result):
    """The end-of-search summary printed by `keras-mtl tune`."""
    table = result.trials
    done = result.completed
    failed = int((table["status"] != "COMPLETED").sum())
    obj = result.objective
    terms = " + ".join(
        f"{w:g} x {col}"
        for w, col in zip(
            result.objective_weights.values(), result.metric_columns
        )
    )
    lines = [
        f"Tuning search in {result.directory} ({result.algorithm}; "
        f"objective {obj.name}, {obj.direction})",
        f"Trials: {len(table)} ({len(result.new_trials)} run now, "
        f"{len(table) - len(result.new_trials)} reloaded); {done} completed, "
        f"{failed} not completed",
        f"Objective: weighted mean of {terms}",
        "",
    ]
    row = table[table["trial_id"] == result.best_trial_id].iloc[0]
    metrics = "  ".join(f"{c} = {row[c]:.4f}" for c in result.metric_columns)
    hps = "  ".join(
        f"{k}={_fmt(v)}"
        for k, v in result.best_hyperparameters.items()
        if not k.startswith("tuner/")
    )
    lines += [
        f"Best trial {result.best_trial_id}: {obj.name} = "
        f"{result.best_score:.4f}",
        f"  {metrics}",
        f"  {hps}",
        "",
        f"Pareto front across tasks ({len(result.pareto)} of {done} "
        "completed trials):",
    ]
    columns = ["trial_id", "architecture"]
    if "weighting" in table.columns:
        columns.append("weighting")
    columns += [*result.metric_columns, obj.name]
    with pd.option_context(
        "display.float_format", "{:.4f}".format, "display.width", 120
    ):
        lines.append(result.pareto[columns].to_string(index=False))
    lines += ["", "Wrote:"]
    for name, path in result.files.items():
        lines.append(f"  {name:<11} {path}")
    lines.append(
        "Evaluate the best model on the test split: python -m keras_mtl "
        f"evaluate --model-dir {result.directory / 'best'}"
    )
    return "\n".join(lines)


def config_from_args(args):
    """The tuning config of `keras-mtl tune` flags (`--config` + overrides)."""
    config = runner.load_config_file(args.config)
    tuner = dict(config.get("tuner") or {})
    if getattr(args, "algorithm", None):
        # Settings of the config's own algorithm do not carry over.
        tuner = {
            k: v
            for k, v in tuner.items()
            if k not in _ONLY or args.algorithm in _ONLY[k]
        }
        tuner["algorithm"] = args.algorithm
    if getattr(args, "max_trials", None) is not None:
        tuner["max_trials"] = args.max_trials
    if getattr(args, "overwrite", False):
        tuner["overwrite"] = True
    if tuner:
        config["tuner"] = tuner
    if getattr(args, "output_dir", None):
        config["output_dir"] = args.output_dir
    return config


def main(args):
    """`keras-mtl tune`: runs the search and prints the summary."""
    result = run_search(config_from_args(args), verbose=args.verbose)
    print()
    print(format_summary(result))
    return result
