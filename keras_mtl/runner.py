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

With `training: {distributed: true}` (`python -m keras_mtl train
--distributed`) the same model is trained by `keras_mtl.distribute.train`
on the strategy `keras_mtl.distribute.make_strategy` builds from
`TF_CONFIG`, with checkpoints every `training.checkpoint_every` steps in
`training.checkpoint_dir` (default `<output_dir>/checkpoints`) and an
automatic resume; `training.batch_size` is then the global batch. See
docs/distributed.md.
"""

import copy
import json
import logging
import os
import pathlib
import shutil
import tempfile

import numpy as np
import pandas as pd
import yaml

from keras_mtl import data as data_lib
from keras_mtl import features as features_lib
from keras_mtl.task import Task
from keras_mtl.task import validate_tasks
from keras_mtl.training.multitask_model import DEFAULT_MIN_PROPENSITY
from keras_mtl.training.multitask_model import check_propensity

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
        # Inverse propensity weighting of task losses, {task: propensity
        # task}, e.g. {cvr: ctr} for ESCM²'s counterfactual CVR loss on
        # esmm (see keras_mtl.training.MultiTaskModel).
        "propensity": None,
        "min_propensity": DEFAULT_MIN_PROPENSITY,
        # Steps per epoch: None means one pass over the training data.
        # Required for distributed training on files.
        "steps_per_epoch": None,
        # The fast path (keras_mtl.models.encoded_model): categorical
        # lookups done in the data, the step compiled with XLA and run
        # `steps_per_execution` steps per call. Models that embed raw
        # features inside another layer (dupn) train on raw features.
        "fast_path": True,
        "steps_per_execution": 32,
        # Multi-worker / multi-device training (keras_mtl.distribute).
        "distributed": False,
        "checkpoint_dir": None,  # default: <output_dir>/checkpoints
        "checkpoint_every": None,  # default: 100 steps
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
    "tfrecord": {"path", "test_path", "sample_rows", "compression"},
}
# Sources read from files (streamed; their row count is unknown).
FILE_DATASETS = ("csv", "parquet", "tfrecord")
DEFAULT_CHECKPOINT_EVERY = 100


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
    _check_propensity_fields(training)
    if not isinstance(training["fast_path"], bool):
        raise ValueError(
            "`training.fast_path` must be true or false. "
            f"Received: fast_path={training['fast_path']!r}"
        )
    spe = training["steps_per_execution"]
    if isinstance(spe, bool) or not isinstance(spe, int) or spe < 1:
        raise ValueError(
            "`training.steps_per_execution` must be a positive integer. "
            f"Received: steps_per_execution={spe!r}"
        )
    if name == "tfrecord":
        compression = resolved["dataset"].get("compression")
        try:
            data_lib._check_compression(compression)
        except ValueError:
            raise ValueError(
                "`dataset.compression` must be null, 'GZIP' or 'ZLIB'. "
                f"Received: compression={compression!r}"
            ) from None
    _check_distributed(resolved)
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
        tasks = validate_tasks(resolved["tasks"])
        resolved["tasks"] = [t.get_config() for t in tasks]
        if training["propensity"]:
            # With the tasks in the config, the propensity's task names
            # fail here, before any data is read (else in `train`).
            check_propensity(
                training["propensity"],
                training["min_propensity"],
                models_lib.tasks_for(model["architecture"], tasks),
            )
    return resolved


def _check_propensity_fields(training):
    """The shape of `training.propensity`; task names are checked in `train`."""
    propensity = training["propensity"]
    if propensity is not None and (
        not isinstance(propensity, dict)
        or not all(
            isinstance(k, str) and isinstance(v, str)
            for k, v in propensity.items()
        )
    ):
        raise ValueError(
            "`training.propensity` must be null or a mapping {task: "
            f"propensity_task}}. Received: propensity={propensity!r}"
        )
    check_propensity(None, training["min_propensity"], [])


def _check_distributed(config):
    """Validates the distributed-training fields of a resolved config."""
    training = config["training"]
    for key in ("steps_per_epoch", "checkpoint_every"):
        value = training[key]
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(
                f"`training.{key}` must be a positive integer or null. "
                f"Received: {key}={value!r}"
            )
    distributed = training["distributed"]
    if not isinstance(distributed, bool):
        raise ValueError(
            "`training.distributed` must be true or false. "
            f"Received: distributed={distributed!r}"
        )
    checkpoint_dir = training["checkpoint_dir"]
    if checkpoint_dir is not None and (
        not isinstance(checkpoint_dir, str) or not checkpoint_dir
    ):
        raise ValueError(
            "`training.checkpoint_dir` must be a path or null. "
            f"Received: checkpoint_dir={checkpoint_dir!r}"
        )
    if not distributed:
        for key in ("checkpoint_dir", "checkpoint_every"):
            if training[key] is not None:
                raise ValueError(
                    f"`training.{key}` applies to distributed training only; "
                    "set `training.distributed: true` (`--distributed`). "
                    f"Received: {key}={training[key]!r}"
                )
        return
    if training["propensity"]:
        raise ValueError(
            "`training.propensity` is not supported with `training."
            "distributed: true`: the distributed loop weights each task's "
            "global masked loss by its `weight` only. Received: "
            f"propensity={training['propensity']!r}"
        )
    weighting = training["weighting"]
    name = weighting.get("name") if isinstance(weighting, dict) else weighting
    if name != "fixed":
        raise ValueError(
            "`training.weighting` must be 'fixed' with `training.distributed"
            ": true`: the distributed loop weights each task's global masked "
            "loss by its `weight`. Received: "
            f"weighting={weighting!r}"
        )
    if training["early_stopping_patience"]:
        raise ValueError(
            "`training.early_stopping_patience` is not supported with "
            "`training.distributed: true` (there is no validation loop). "
            "Received: early_stopping_patience="
            f"{training['early_stopping_patience']!r}"
        )
    name = config["dataset"]["name"]
    if name in FILE_DATASETS and training["steps_per_epoch"] is None:
        raise ValueError(
            f"`training.steps_per_epoch` is required with `training."
            f"distributed: true` and dataset '{name}': the row count of "
            "files is unknown, and every worker must run the same number of "
            "steps. Received: steps_per_epoch=None"
        )


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
        compression=None,
    ):
        self.train, self.val, self.test = train, val, test
        self.tasks = tasks
        # Every label column of the dataset: never inferred as a feature.
        self.labels = list(labels)
        # Integer-coded columns that are categorical whatever their dtype.
        self.categorical = list(categorical)
        self.user_column = user_column
        # None: DataFrames; "csv" / "parquet" / "tfrecord": file patterns
        # to stream.
        self.fmt = fmt
        self.compression = compression  # of TFRecord files

    def sample(self, sample_rows):
        """A DataFrame to infer features from."""
        if self.fmt is None:
            return self.train
        if self.fmt == "tfrecord":
            return data_lib.tfrecord_to_dataframe(
                self.train, max_rows=sample_rows, compression=self.compression
            )
        files = data_lib._list_files(self.train, None)
        if self.fmt == "csv":
            return pd.read_csv(files[0], nrows=sample_rows)
        import pyarrow.parquet as pq

        batch = next(pq.ParquetFile(files[0]).iter_batches(sample_rows))
        return batch.to_pandas()

    def dataset(
        self,
        part,
        features,
        tasks,
        batch_size,
        shuffle,
        seed,
        encode_with=None,
    ):
        """`(x, y, sw)` batches of a split; with `encode_with` (a raw-input
        model), categorical features as its row ids (the fast path)."""
        frame = getattr(self, part)
        if frame is None:
            return None
        if self.fmt is None:
            # In memory: the ids are computed once, for every epoch.
            return data_lib.from_dataframe(
                frame,
                features,
                tasks,
                batch_size,
                shuffle=shuffle,
                seed=seed,
                encode_with=encode_with,
                # One batch shape for the XLA-compiled step.
                pad_remainder=encode_with is not None,
            )
        if self.fmt == "tfrecord":
            ds = data_lib.from_tfrecord(
                frame,
                features,
                tasks,
                batch_size,
                shuffle=shuffle,
                seed=seed,
                compression=self.compression,
            )
        else:
            reader = (
                data_lib.from_csv
                if self.fmt == "csv"
                else data_lib.from_parquet
            )
            ds = reader(
                frame, features, tasks, batch_size, shuffle=shuffle, seed=seed
            )
        if encode_with is None:
            return ds
        from keras_mtl.models.encoded import encode_dataset

        # Streamed: the lookups run per batch in the input pipeline.
        return encode_dataset(encode_with, ds)

    def dataset_fn(self, features, tasks, global_batch_size, seed):
        """The training `dataset_fn` of `keras_mtl.distribute.train`.

        Each worker takes its part of the training data (every n-th row of
        a DataFrame, every n-th file of files), shuffled and repeated.
        """
        from keras_mtl import distribute

        if self.fmt is None:
            return distribute.dataframe_dataset_fn(
                self.train, features, tasks, global_batch_size, seed=seed
            )
        kwargs = {}
        if self.fmt == "tfrecord":
            kwargs["compression"] = self.compression
        return distribute.files_dataset_fn(
            self.train,
            features,
            tasks,
            global_batch_size,
            fmt=self.fmt,
            seed=seed,
            **kwargs,
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
    # csv / parquet / tfrecord: stream the files.
    return Source(
        ds["path"],
        None,
        ds.get("test_path"),
        None,
        fmt=name,
        compression=ds.get("compression"),
    )


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


def _tasks_of(config, source):
    tasks = validate_tasks(config["tasks"]) if config["tasks"] else source.tasks
    if tasks is None:
        raise ValueError(
            f"Dataset '{config['dataset']['name']}' needs `tasks` in the "
            "config."
        )
    return tasks


def _numpy_data(ds):
    """A streamed `(x, y, sw)` dataset as one tuple of numpy dicts.

    String features come back from `tf.data` as bytes, which Keras'
    `predict` refuses: they are decoded to the `str` objects that the
    DataFrame path holds.
    """
    batches = list(ds.as_numpy_iterator())
    if not batches:
        return None
    x, y, sw = (
        {k: np.concatenate([b[i][k] for b in batches]) for k in batches[0][i]}
        for i in range(3)
    )
    for name, values in x.items():
        if values.dtype == object:
            x[name] = np.array(
                [v.decode("utf-8") for v in values.ravel()], dtype=object
            ).reshape(values.shape)
    return x, y, sw


def _evaluate_run(model, source, config, features, tasks, batch_size):
    """`(eval_part, report)` on the test split, else the validation split."""
    from keras_mtl import metrics as metrics_lib

    eval_part = "test" if source.test is not None else "val"
    eval_data = getattr(source, eval_part)
    if source.fmt is not None:
        eval_data = _numpy_data(
            source.dataset(eval_part, features, tasks, batch_size, False, 0)
        )
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
            batch_size=max(batch_size, 4096),
        )
    return eval_part, report


def _write_run(
    out, model, features, tasks, config, metrics, serving_model=None
):
    """Writes a run's model, specs, config and metrics to `out`."""
    from keras_mtl import training as training_lib

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # The serving model, plus the strategy state for warm starts.
    training_lib.save_model(
        model, out / "model.keras", serving_model=serving_model
    )
    features_lib.save_features(features, out / "features.json")
    _write_json(out / "tasks.json", [t.get_config() for t in tasks])
    _write_json(out / "config.json", config)
    _write_json(out / "metrics.json", metrics)
    return out


def train(config=None, verbose=1):
    """Trains a model from a run config; returns `(model, report, out_dir)`.

    The report is `keras_mtl.metrics.evaluate_report` on the test split (the
    validation split when there is no test split). `verbose=1` shows Keras'
    progress bar during `fit`. With `training.distributed: true` the model
    is trained by `keras_mtl.distribute.train` (see `train_distributed`).
    """
    import keras

    from keras_mtl import models as models_lib

    config = resolve_config(config)
    if config["training"]["distributed"]:
        return train_distributed(config, verbose=verbose)
    training = config["training"]
    keras.utils.set_random_seed(training["seed"])
    source = load_source(config)
    tasks = _tasks_of(config, source)
    model_kwargs = dict(config["model"])
    architecture = model_kwargs.pop("architecture")
    features = _resolve_features(config, source, tasks)
    tasks = models_lib.tasks_for(architecture, tasks)
    from keras_mtl import training as training_lib

    # Task names in `training.propensity` are known only now; they fail
    # before the model is built.
    check_propensity(training["propensity"], training["min_propensity"], tasks)
    model = models_lib.build(architecture, features, tasks, **model_kwargs)

    # `fit_model` trains with the weighting strategy; `model` is served.
    # On the fast path `fit_model` wraps `model`'s encoded twin, which
    # shares every layer with it.
    train_model = _fast_twin(model) if training["fast_path"] else None
    fit_model = training_lib.compile(
        train_model or model,
        tasks,
        weighting=training["weighting"],
        propensity=training["propensity"],
        min_propensity=training["min_propensity"],
        learning_rate=training["learning_rate"],
        jit_compile=train_model is not None,
        steps_per_execution=training["steps_per_execution"],
    )
    bs, seed = training["batch_size"], training["seed"]
    encode_with = model if train_model is not None else None
    train_ds = source.dataset(
        "train", features, tasks, bs, True, seed, encode_with=encode_with
    )
    val_ds = source.dataset(
        "val", features, tasks, bs, False, seed, encode_with=encode_with
    )
    if training["steps_per_epoch"] is not None:
        train_ds = train_ds.repeat()
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
        steps_per_epoch=training["steps_per_epoch"],
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,  # the dataset reshuffles itself every epoch
    )
    eval_part, report = _evaluate_run(
        model, source, config, features, tasks, bs
    )
    out = _write_run(
        config["output_dir"],
        fit_model,
        features,
        tasks,
        config,
        {
            "evaluated_on": eval_part,
            "report": _report_records(report) if report is not None else None,
            "history": {
                k: [float(v) for v in vals]
                for k, vals in history.history.items()
            },
        },
        serving_model=model,
    )
    return model, report, out


def _fast_twin(model):
    """The encoded twin of `model`, or None when it has none (logged)."""
    from keras_mtl.models.encoded import encoded_model

    try:
        return encoded_model(model)
    except ValueError as err:
        logger.info("training.fast_path: training on raw features: %s", err)
        return None


def _check_file_shards(config, num_workers):
    """CSV / Parquet shard by file: refuse fewer files than workers early."""
    name = config["dataset"]["name"]
    if name not in ("csv", "parquet") or num_workers < 2:
        return
    files = data_lib._list_files(config["dataset"]["path"], None)
    if len(files) < num_workers:
        raise ValueError(
            f"`dataset.path` matches {len(files)} {name} file(s) for "
            f"{num_workers} workers; each worker reads whole files, so "
            "write at least as many files as workers (or use TFRecord "
            "files, which fall back to sharding by record). Received: "
            f"path={config['dataset']['path']!r}"
        )


def train_distributed(config=None, verbose=1):
    """Trains a run config with `keras_mtl.distribute.train`.

    Every worker runs the same call. The strategy comes from `TF_CONFIG`
    (`keras_mtl.distribute.make_strategy`: `MultiWorkerMirroredStrategy`
    for a cluster of two or more tasks, else `MirroredStrategy` over the
    local devices); it is created before any other TensorFlow work. Each
    task's loss is its masked mean over the global batch, weighted by
    `task.weight` (the `fixed` weighting of `train`); `training.batch_size`
    is the global batch. Each worker reads its own part of the training
    data (`Source.dataset_fn`), shuffled and repeated; an epoch is
    `training.steps_per_epoch` steps (default: the training rows over the
    global batch, for in-memory data). Checkpoints go to
    `training.checkpoint_dir` (default `<output_dir>/checkpoints`, which
    must be shared by all workers) every `training.checkpoint_every` steps
    (default 100); a restarted job resumes from the latest one. The chief
    then evaluates and writes the run to `output_dir` exactly as `train`
    does (`metrics.json` adds a `distributed` entry; its `history` holds
    the mean of each epoch's step losses); other workers write theirs to
    a temporary directory that is removed.

    Returns:
        `(model, report, out_dir)`; `report` and `out_dir` are None on
        non-chief workers.
    """
    config = copy.deepcopy(config or {})
    if isinstance(config.setdefault("training", {}), dict):
        config["training"]["distributed"] = True
    config = resolve_config(config)
    from keras_mtl import distribute as distribute_lib

    tf_config = distribute_lib.parse_tf_config()
    num_workers = tf_config["num_workers"] if tf_config else 1
    _check_file_shards(config, num_workers)
    # MultiWorkerMirroredStrategy must configure the runtime before any
    # other TensorFlow op.
    strategy = distribute_lib.make_strategy()

    import keras

    from keras_mtl import models as models_lib

    training = config["training"]
    replicas = strategy.num_replicas_in_sync
    bs, seed = training["batch_size"], training["seed"]
    if bs % replicas:
        raise ValueError(
            "`training.batch_size` (the global batch) must be a multiple of "
            f"the {replicas} replicas in sync. Received: batch_size={bs}"
        )
    chief = distribute_lib.is_chief(strategy)
    keras.utils.set_random_seed(seed)
    source = load_source(config)
    tasks = _tasks_of(config, source)
    model_kwargs = dict(config["model"])
    architecture = model_kwargs.pop("architecture")
    features = _resolve_features(config, source, tasks)
    tasks = models_lib.tasks_for(architecture, tasks)
    steps = training["steps_per_epoch"]
    if steps is None:
        steps = len(source.train) // bs
        if steps == 0:
            raise ValueError(
                f"`training.batch_size` exceeds the {len(source.train)} "
                f"training rows. Received: batch_size={bs}"
            )
    epochs = training["epochs"]
    checkpoint_dir = training["checkpoint_dir"] or os.path.join(
        config["output_dir"], "checkpoints"
    )
    every = training["checkpoint_every"] or DEFAULT_CHECKPOINT_EVERY

    def model_fn():
        keras.utils.set_random_seed(seed)
        return models_lib.build(architecture, features, tasks, **model_kwargs)

    per_epoch = {}
    log_every = max(1, steps // 10)

    def on_step(step, logs):
        per_epoch.setdefault((step - 1) // steps, []).append(logs)
        if verbose and (step % log_every == 0 or step == epochs * steps):
            logger.info(
                "step %d/%d (epoch %d): %s",
                step,
                epochs * steps,
                (step - 1) // steps + 1,
                ", ".join(f"{k}={v:.4f}" for k, v in logs.items()),
            )

    # One long epoch over the repeated stream: every epoch reshuffles it,
    # and a resumed job skips exactly the batches already done.
    trained, _ = distribute_lib.train(
        model_fn,
        source.dataset_fn(features, tasks, bs, seed),
        tasks,
        strategy,
        epochs=1,
        steps_per_epoch=epochs * steps,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=every,
        learning_rate=training["learning_rate"],
        on_step=on_step,
    )
    # The served model lives outside the strategy: a plain copy.
    model = model_fn()
    model.set_weights(trained.get_weights())
    metrics = {
        "history": {
            key: [
                float(np.mean([logs[name] for logs in per_epoch[e]]))
                for e in sorted(per_epoch)
            ]
            for key, name in [("loss", "loss")]
            + [(f"{t.name}_loss", t.name) for t in tasks]
        },
        "distributed": {
            "strategy": (
                "MultiWorkerMirroredStrategy"
                if num_workers > 1
                else type(strategy).__name__
            ),
            "num_workers": num_workers,
            "replicas": replicas,
            "task": (
                f"{tf_config['task_type']}:{tf_config['task_id']}"
                if tf_config
                else None
            ),
            "global_batch_size": bs,
            "steps_per_epoch": steps,
            "steps_run": sum(len(v) for v in per_epoch.values()),
            "epochs_run": sorted(e + 1 for e in per_epoch),
            "checkpoint_dir": checkpoint_dir,
        },
    }
    if not chief:
        # Every worker saves, but only the chief's copy is kept.
        scratch = tempfile.mkdtemp(prefix="keras_mtl_worker_")
        try:
            _write_run(scratch, model, features, tasks, config, metrics)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return model, None, None
    eval_part, report = _evaluate_run(
        model, source, config, features, tasks, bs
    )
    metrics = {
        "evaluated_on": eval_part,
        "report": _report_records(report) if report is not None else None,
        **metrics,
    }
    out = _write_run(
        config["output_dir"], model, features, tasks, config, metrics
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
        data = _numpy_data(
            source.dataset(
                part,
                features,
                tasks,
                config["training"]["batch_size"],
                False,
                0,
            )
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
