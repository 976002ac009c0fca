"""Run configurations and the train / evaluate / predict jobs behind the CLI.

A run is described by one dict (from flags, or a YAML/JSON file loaded with
`yaml.safe_load`), for example:

```yaml
dataset: {name: funnel, n: 100000, seed: 0}
features: auto            # or a list of spec dicts, or a features.json path
exclude: []               # columns inferred features must leave out
tasks:                    # optional for built-in datasets
  - {name: click}
  - {name: conversion, space: click}
  - {name: watch_time, kind: regression, space: click}
model: {architecture: mmoe, num_experts: 4}
training: {epochs: 3, batch_size: 1024, learning_rate: 0.001}
output_dir: runs/demo
```

`train(config)` fits the model, evaluates it on held-out rows, and writes
`model.keras`, `features.json`, `tasks.json`, `config.json` and
`metrics.json` to `output_dir`.
"""

import copy
import json
import logging
import os
import pathlib

import numpy as np
import pandas as pd
import yaml

from keras_mtl import data as data_lib
from keras_mtl import features as features_lib
from keras_mtl.task import Task
from keras_mtl.task import validate_tasks

logger = logging.getLogger(__name__)

DEFAULTS = {
    "dataset": {"name": "funnel", "n": 100_000, "seed": 0},
    "features": "auto",
    "exclude": [],
    "tasks": None,
    "user_column": None,
    "model": {"architecture": "mmoe"},
    "training": {
        "epochs": 3,
        "batch_size": 1024,
        "learning_rate": 1e-3,
        "val_fraction": 0.1,
        "test_fraction": 0.1,
        "seed": 0,
        "early_stopping_patience": None,
        # Loss weighting: a keras_mtl.training strategy name, or a mapping
        # {name: gradnorm, alpha: 1.5}.
        "weighting": "fixed",
    },
    "output_dir": "runs/latest",
}

DATASET_FIELDS = {
    "funnel": {"n", "seed", "like"},
    "correlated": {"n", "seed", "correlation"},
    "adult": {"path"},
    "census_income": {"path"},
    "ali_ccp": {"path", "test_path"},
    "aliexpress": {"path", "test_path"},
    "csv": {"path", "test_path", "sample_rows"},
    "parquet": {"path", "test_path", "sample_rows"},
}


def load_config_file(path):
    """Reads a YAML or JSON run config (safely: plain data only)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        config = json.loads(text)
    else:
        config = yaml.safe_load(text)
    if not isinstance(config, dict):
        raise ValueError(
            f"Config file {path} must hold a mapping at the top level. "
            f"Received: {type(config).__name__}"
        )
    return config


def _merge(base, override):
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_config(config=None):
    """Fills defaults into a run config and validates every field."""
    config = config or {}
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(
            f"Unknown config field(s) {unknown}. Known: {sorted(DEFAULTS)}"
        )
    dataset = config.get("dataset")
    if dataset is not None and not isinstance(dataset, dict):
        raise ValueError(
            "`dataset` must be a mapping with a `name`. "
            f"Received: dataset={dataset!r}"
        )
    resolved = copy.deepcopy(DEFAULTS)
    if dataset and dataset.get("name", "funnel") != "funnel":
        resolved["dataset"] = {}
    resolved = _merge(resolved, config)
    name = resolved["dataset"].get("name")
    if name not in DATASET_FIELDS:
        raise ValueError(
            f"Unknown `dataset.name`. Received: {name!r}; known: "
            f"{sorted(DATASET_FIELDS)}"
        )
    extra = sorted(set(resolved["dataset"]) - DATASET_FIELDS[name] - {"name"})
    if extra:
        raise ValueError(
            f"`dataset` field(s) {extra} do not apply to dataset '{name}'. "
            f"It takes: {sorted(DATASET_FIELDS[name])}"
        )
    if "path" in DATASET_FIELDS[name] and not resolved["dataset"].get("path"):
        raise ValueError(f"Dataset '{name}' needs `dataset.path`.")
    training = resolved["training"]
    unknown = sorted(set(training) - set(DEFAULTS["training"]))
    if unknown:
        raise ValueError(
            f"Unknown `training` field(s) {unknown}. "
            f"Known: {sorted(DEFAULTS['training'])}"
        )
    for key in ("epochs", "batch_size"):
        value = training[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"`training.{key}` must be a positive integer. "
                f"Received: {key}={value!r}"
            )
    lr = training["learning_rate"]
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(
            "`training.learning_rate` must be a positive number. "
            f"Received: learning_rate={lr!r}"
        )
    from keras_mtl.training import weighting as weighting_lib

    # Unknown strategies and strategy arguments fail here too.
    weighting_lib.get(training["weighting"])
    model = resolved["model"]
    if not isinstance(model, dict) or "architecture" not in model:
        raise ValueError(
            "`model` must be a mapping with an `architecture`. "
            f"Received: model={model!r}"
        )
    from keras_mtl import models as models_lib

    # Unknown architectures and builder arguments fail here, before any
    # data is loaded.
    models_lib.check_builder_args(
        model["architecture"],
        {k: v for k, v in model.items() if k != "architecture"},
    )
    if resolved["tasks"] is not None:
        resolved["tasks"] = [
            t.get_config() for t in validate_tasks(resolved["tasks"])
        ]
    return resolved


# ---------------------------------------------------------------------------
# Data sources.
# ---------------------------------------------------------------------------


class Source:
    """Train / validation / test data of a run, in memory or streamed."""

    def __init__(
        self,
        train,
        val,
        test,
        tasks,
        user_column=None,
        fmt=None,
        labels=(),
        categorical=(),
    ):
        self.train, self.val, self.test = train, val, test
        self.tasks = tasks
        # Every label column of the dataset: never inferred as a feature.
        self.labels = list(labels)
        # Integer-coded columns that are categorical whatever their dtype.
        self.categorical = list(categorical)
        self.user_column = user_column
        # None: DataFrames; "csv" / "parquet": file patterns to stream.
        self.fmt = fmt

    def sample(self, sample_rows):
        """A DataFrame to infer features from."""
        if self.fmt is None:
            return self.train
        files = data_lib._list_files(self.train, None)
        if self.fmt == "csv":
            return pd.read_csv(files[0], nrows=sample_rows)
        import pyarrow.parquet as pq

        batch = next(pq.ParquetFile(files[0]).iter_batches(sample_rows))
        return batch.to_pandas()

    def dataset(self, part, features, tasks, batch_size, shuffle, seed):
        frame = getattr(self, part)
        if frame is None:
            return None
        if self.fmt is None:
            return data_lib.from_dataframe(
                frame, features, tasks, batch_size, shuffle=shuffle, seed=seed
            )
        reader = (
            data_lib.from_csv if self.fmt == "csv" else data_lib.from_parquet
        )
        return reader(
            frame, features, tasks, batch_size, shuffle=shuffle, seed=seed
        )


def _split3(df, val_fraction, test_fraction, seed):
    rest, test = (
        data_lib.train_val_split(df, test_fraction, seed)
        if test_fraction
        else (df, None)
    )
    share = val_fraction / (1 - (test_fraction or 0))
    train, val = data_lib.train_val_split(rest, share, seed + 1)
    return train, val, test


def load_source(config):
    """Loads the run's data as a `Source`."""
    from keras_mtl import datasets

    ds = dict(config["dataset"])
    name = ds.pop("name")
    training = config["training"]
    vf, tf_, seed = (
        training["val_fraction"],
        training["test_fraction"],
        training["seed"],
    )
    if name == "funnel":
        like = ds.pop("like", False)
        df = datasets.synthetic_funnel(**ds)
        tasks = datasets.funnel_tasks(like=like)
        return Source(
            *_split3(df, vf, tf_, seed),
            tasks,
            "user_id",
            labels=datasets.FUNNEL_LABELS,
        )
    if name == "correlated":
        ds.setdefault("correlation", 0.5)
        df = datasets.synthetic_correlated(**ds)
        tasks = [Task("y1", "regression"), Task("y2", "regression")]
        return Source(*_split3(df, vf, tf_, seed), tasks, labels=["y1", "y2"])
    if name in ("adult", "census_income"):
        loader = (
            datasets.load_adult
            if name == "adult"
            else datasets.load_census_income
        )
        train, test = loader(ds["path"])
        train, val = data_lib.train_val_split(train, vf, seed)
        tasks = [Task("income"), Task("never_married")]
        exclude = ["instance_weight"] if name == "census_income" else []
        cats = (
            datasets.ADULT_CATEGORICAL
            if name == "adult"
            else datasets.CENSUS_INCOME_CATEGORICAL
        )
        return Source(
            train,
            val,
            test,
            tasks,
            labels=["income", "never_married", *exclude],
            categorical=cats,
        )
    if name in ("ali_ccp", "aliexpress"):
        loader = getattr(datasets, f"load_{name}")
        tasks = getattr(datasets, f"{name}_tasks")()
        train = loader(ds["path"])
        test = loader(ds["test_path"]) if ds.get("test_path") else None
        train, val = data_lib.train_val_split(train, vf, seed)
        labels = [t.label for t in tasks]
        if name == "aliexpress":
            labels.append("search_id")  # a request id, not a feature
            cats = datasets.ALIEXPRESS_CATEGORICAL
        else:
            cats = datasets.ALI_CCP_CATEGORICAL
        return Source(train, val, test, tasks, labels=labels, categorical=cats)
    # csv / parquet: stream the files.
    return Source(ds["path"], None, ds.get("test_path"), None, fmt=name)


def _resolve_features(config, source, tasks):
    spec = config["features"]
    if isinstance(spec, str) and spec != "auto":
        return features_lib.load_features(spec)
    if isinstance(spec, list):
        return features_lib.validate_features(spec)
    sample = source.sample(config["dataset"].get("sample_rows", 100_000))
    labels = list(dict.fromkeys([t.label for t in tasks] + source.labels))
    labels = [c for c in labels if c in sample.columns]
    exclude = [c for c in config["exclude"] if c not in labels]
    categorical = [c for c in source.categorical if c in sample.columns]
    return features_lib.infer_features(
        sample, labels=labels, exclude=exclude, categorical=categorical
    )


# ---------------------------------------------------------------------------
# Jobs.
# ---------------------------------------------------------------------------


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"Not JSON serialisable: {value!r}")


def _write_json(path, payload):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, default=_json_default)


def _report_records(report):
    return {
        task: {k: (None if pd.isna(v) else v) for k, v in row.items()}
        for task, row in report.to_dict(orient="index").items()
    }


def train(config=None, verbose=1):
    """Trains a model from a run config; returns `(model, report, out_dir)`.

    The report is `keras_mtl.metrics.evaluate_report` on the test split (the
    validation split when there is no test split). `verbose=1` shows Keras'
    progress bar during `fit`.
    """
    import keras

    from keras_mtl import metrics as metrics_lib
    from keras_mtl import models as models_lib

    config = resolve_config(config)
    training = config["training"]
    keras.utils.set_random_seed(training["seed"])
    source = load_source(config)
    tasks = validate_tasks(config["tasks"]) if config["tasks"] else source.tasks
    if tasks is None:
        raise ValueError(
            f"Dataset '{config['dataset']['name']}' needs `tasks` in the "
            "config."
        )
    model_kwargs = dict(config["model"])
    architecture = model_kwargs.pop("architecture")
    features = _resolve_features(config, source, tasks)
    tasks = models_lib.tasks_for(architecture, tasks)
    model = models_lib.build(architecture, features, tasks, **model_kwargs)
    from keras_mtl import training as training_lib

    # `fit_model` trains with the weighting strategy; `model` is served.
    fit_model = training_lib.compile(
        model,
        tasks,
        weighting=training["weighting"],
        learning_rate=training["learning_rate"],
    )
    bs, seed = training["batch_size"], training["seed"]
    train_ds = source.dataset("train", features, tasks, bs, True, seed)
    val_ds = source.dataset("val", features, tasks, bs, False, seed)
    callbacks = []
    if training["early_stopping_patience"]:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss",
                patience=training["early_stopping_patience"],
                restore_best_weights=True,
            )
        )
    history = fit_model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=training["epochs"],
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,  # the dataset reshuffles itself every epoch
    )
    eval_part = "test" if source.test is not None else "val"
    eval_data = getattr(source, eval_part)
    if source.fmt is not None:
        eval_data = source.dataset(eval_part, features, tasks, bs, False, 0)
    user_column = config["user_column"] or source.user_column
    if user_column is not None and not any(
        f.name == user_column for f in features
    ):
        user_column = None
    report = None
    if eval_data is not None:
        report = metrics_lib.evaluate_report(
            model,
            eval_data,
            tasks,
            features=features,
            user_column=user_column,
            batch_size=max(bs, 4096),
        )
    out = pathlib.Path(config["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    # The serving model, plus the strategy state for warm starts.
    training_lib.save_model(fit_model, out / "model.keras")
    features_lib.save_features(features, out / "features.json")
    _write_json(out / "tasks.json", [t.get_config() for t in tasks])
    _write_json(out / "config.json", config)
    _write_json(
        out / "metrics.json",
        {
            "evaluated_on": eval_part,
            "report": _report_records(report) if report is not None else None,
            "history": {
                k: [float(v) for v in vals]
                for k, vals in history.history.items()
            },
        },
    )
    return model, report, out


def load_run(model_dir):
    """Reads back `(model, features, tasks, config)` saved by `train`."""
    import keras

    import keras_mtl.layers  # noqa: F401  (registers the layers)

    model_dir = pathlib.Path(model_dir)
    path = model_dir / "model.keras"
    if not path.is_file():
        raise FileNotFoundError(
            f"No model.keras in {model_dir}; train one with "
            "`python -m keras_mtl train --output-dir DIR`."
        )
    model = keras.saving.load_model(path, safe_mode=True)
    features = features_lib.load_features(model_dir / "features.json")
    with open(model_dir / "tasks.json", encoding="utf-8") as f:
        tasks = validate_tasks(json.load(f))
    with open(model_dir / "config.json", encoding="utf-8") as f:
        config = json.load(f)
    return model, features, tasks, config


def evaluate(model_dir, config_override=None):
    """Evaluates a saved run on its config's (or an overriding) dataset."""
    from keras_mtl import metrics as metrics_lib

    model, features, tasks, config = load_run(model_dir)
    if config_override:
        config = resolve_config(
            _merge({k: v for k, v in config.items()}, config_override)
        )
    source = load_source(config)
    part = "test" if source.test is not None else "val"
    data = getattr(source, part)
    if source.fmt is not None:
        data = source.dataset(
            part, features, tasks, config["training"]["batch_size"], False, 0
        )
    user_column = config.get("user_column") or source.user_column
    if user_column is not None and not any(
        f.name == user_column for f in features
    ):
        user_column = None
    report = metrics_lib.evaluate_report(
        model, data, tasks, features=features, user_column=user_column
    )
    _write_json(
        pathlib.Path(model_dir) / "evaluation.json",
        {"evaluated_on": part, "report": _report_records(report)},
    )
    return report


def predict(model_dir, input_path, output_path, keep_columns=(), chunk=65_536):
    """Scores a CSV or Parquet file with a saved run, chunk by chunk.

    Writes a CSV with `keep_columns` copied from the input, then one column
    per task output (`<task>` for one-dimensional outputs, `<task>_<k>` for
    multiclass probabilities). Returns the number of rows scored.
    """
    model, features, tasks, _ = load_run(model_dir)
    input_path = os.fspath(input_path)
    if input_path.endswith(".parquet"):
        import pyarrow.parquet as pq

        frames = (
            b.to_pandas()
            for b in pq.ParquetFile(input_path).iter_batches(chunk)
        )
    else:
        frames = pd.read_csv(
            input_path,
            chunksize=chunk,
            dtype=data_lib._csv_dtypes(features),
        )
    rows = 0
    for i, frame in enumerate(frames):
        missing = [c for c in keep_columns if c not in frame.columns]
        if missing:
            raise ValueError(
                f"`keep_columns` {missing} are not in {input_path}."
            )
        x = data_lib.features_to_arrays(
            frame, features, where=f"{input_path} (chunk {i})"
        )
        preds = model.predict(x, batch_size=4096, verbose=0)
        out = frame[list(keep_columns)].reset_index(drop=True)
        for task in tasks:
            p = np.asarray(preds[task.name])
            if p.shape[-1] == 1:
                out[task.name] = p[:, 0]
            else:
                for k in range(p.shape[-1]):
                    out[f"{task.name}_{k}"] = p[:, k]
        out.to_csv(
            output_path, mode="w" if i == 0 else "a", header=i == 0, index=False
        )
        rows += len(frame)
    return rows
