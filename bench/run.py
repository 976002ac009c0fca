"""Benchmarks of keras-mtl against peer libraries.

One entry point, one suite per name:

    python bench/run.py --suite quality [--seeds 0 1 2 3 4] [--quick]

A suite is a function registered in `SUITES`. The `quality` suite trains
every model of every library in its own subprocess (a *worker*: this file
again, with `--worker NAME`), so keras-mtl, torch-rechub and DeepCTR import
in isolation; each worker prints one JSON line of results. The suite
collects them into `bench/results/<suite>.jsonl` and rewrites its own
section of `docs/BENCHMARKS.md` (tables, machine, versions, bars) from
those numbers; nothing in that section is written by hand.

Workers run under the benchmark venv (`.bench-venv`, made by `make bench`)
when it exists, else under the current interpreter (`--python` overrides).
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(os.path.dirname(ROOT), "shared", "data", "adult")
DOC = os.path.join(ROOT, "docs", "BENCHMARKS.md")
RESULTS_DIR = os.path.join(ROOT, "bench", "results")
BENCH_VENV_PY = os.path.join(ROOT, ".bench-venv", "bin", "python")

# --------------------------------------------------------------------------
# Shared protocol constants.
# --------------------------------------------------------------------------
ADULT_TASKS = ("income", "never_married")
EMBED_DIM = 8
BATCH_SIZE = 512
LEARNING_RATE = 1e-3
# Every library trains with the same Adam constants: PyTorch's epsilon, which
# torch-rechub runs with, is passed to keras-mtl and DeepCTR (Keras' default
# is 1e-7). Keras adds epsilon before the bias correction ("epsilon hat"), so
# the updates still differ slightly in the first few hundred steps.
ADAM_EPSILON = 1e-8
MAX_EPOCHS = 30
PATIENCE = 3
VAL_FRACTION = 0.2
SPLIT_SEED = 0
# Embedding tables start at N(0, 1e-4) in every library: DeepCTR's and
# torch-rechub's default, passed to keras-mtl's builders
# (`embeddings_initializer`; their own default is Keras' uniform).
EMBEDDING_INIT_STD = 1e-4

FUNNEL_N = 400_000
FUNNEL_BATCH = 1024
FUNNEL_MAX_EPOCHS = 8
FUNNEL_PATIENCE = 2
# L2 weight on the embedding tables of both funnel models (user and item ids
# overfit the click signal within an epoch without it).
FUNNEL_EMBEDDING_L2 = 1e-3
# Both funnel models also get the pairwise dot products of their embedded
# features (`interaction="dot"`, DLRM's dot interaction): the simulator's
# conversion follows a user x item taste dot product, which an MLP on
# concatenated embeddings represents poorly. Chosen on the validation split
# (docs/BENCHMARKS.md, "Feature interaction").
FUNNEL_INTERACTION = "dot"
# ESCM²-IPS row (not part of the bar): loss weight of the counterfactual
# CVR term (`esmm_tasks(cvr_weight=...)` with `propensity={"cvr": "ctr"}`),
# chosen from {0.1, 1.0} on the validation split (docs/BENCHMARKS.md).
FUNNEL_ESCM2_CVR_WEIGHT = 0.1
FUNNEL_ESCM2_MIN_PROPENSITY = 0.05
FUNNEL_MODELS = ("esmm", "escm2", "naive")

QUICK = {"adult_epochs": 2, "funnel_n": 40_000, "funnel_epochs": 1}

# Model sizes of the Adult protocol, by model key.
ADULT_MODELS = ("single_task", "shared_bottom", "mmoe", "ple")
LIBRARIES = ("keras_mtl", "torch_rechub", "deepctr")
PEER_MODELS = ("shared_bottom", "mmoe", "ple")
LIBRARY_LABEL = {
    "keras_mtl": "keras-mtl",
    "torch_rechub": "torch-rechub",
    "deepctr": "DeepCTR",
}
MODEL_LABEL = {
    "single_task": "single-task MLP [128, 64] x2",
    "shared_bottom": "shared-bottom [128, 64] / towers [32]",
    "mmoe": "MMoE 8 x [64] / towers [32]",
    "ple": "PLE 1 level, 2+1 x [64] / towers [32]",
}
# The exact constructor calls, as the workers below make them (for the doc).
CONSTRUCTORS = {
    ("keras_mtl", "single_task"): (
        "keras_mtl.models.shared_bottom(features, [Task(t)], "
        "bottom_units=(128, 64), tower_units=(), embeddings_initializer=init) "
        "for t in (income, never_married)"
    ),
    ("keras_mtl", "shared_bottom"): (
        "keras_mtl.models.shared_bottom(features, tasks, "
        "bottom_units=(128, 64), tower_units=(32,), "
        "embeddings_initializer=init)"
    ),
    ("keras_mtl", "mmoe"): (
        "keras_mtl.models.mmoe(features, tasks, num_experts=8, "
        "expert_units=(64,), tower_units=(32,), "
        "expert_normalization='layer', tower_normalization='layer', "
        "embeddings_initializer=init)"
    ),
    ("keras_mtl", "ple"): (
        "keras_mtl.models.ple(features, tasks, num_levels=1, "
        "num_task_experts=2, num_shared_experts=1, expert_units=(64,), "
        "tower_units=(32,), tower_normalization='layer', "
        "embeddings_initializer=init)"
    ),
    ("torch_rechub", "shared_bottom"): (
        "SharedBottom(features, task_types=['classification'] * 2, "
        "bottom_params={'dims': [128, 64]}, "
        "tower_params_list=[{'dims': [32]}] * 2)"
    ),
    ("torch_rechub", "mmoe"): (
        "MMOE(features, task_types=['classification'] * 2, n_expert=8, "
        "expert_params={'dims': [64]}, "
        "tower_params_list=[{'dims': [32]}] * 2)"
    ),
    ("torch_rechub", "ple"): (
        "PLE(features, task_types=['classification'] * 2, n_level=1, "
        "n_expert_specific=2, n_expert_shared=1, "
        "expert_params={'dims': [64]}, "
        "tower_params_list=[{'dims': [32]}] * 2)"
    ),
    ("deepctr", "shared_bottom"): (
        "SharedBottom(columns, bottom_dnn_hidden_units=(128, 64), "
        "tower_dnn_hidden_units=(32,), l2_reg_embedding=0, seed=seed, "
        "task_types=['binary'] * 2, task_names=tasks)"
    ),
    ("deepctr", "mmoe"): (
        "MMOE(columns, num_experts=8, expert_dnn_hidden_units=(64,), "
        "tower_dnn_hidden_units=(32,), l2_reg_embedding=0, seed=seed, "
        "task_types=['binary'] * 2, task_names=tasks)"
    ),
    ("deepctr", "ple"): (
        "PLE(columns, shared_expert_num=1, specific_expert_num=2, "
        "num_levels=1, expert_dnn_hidden_units=(64,), "
        "tower_dnn_hidden_units=(32,), l2_reg_embedding=0, seed=seed, "
        "task_types=['binary'] * 2, task_names=tasks)"
    ),
}


# --------------------------------------------------------------------------
# Helpers shared by workers.
# --------------------------------------------------------------------------
def _emit(record):
    """Prints the one JSON result line of a worker."""
    print("BENCH_RESULT " + json.dumps(record), flush=True)


def _peak_rss_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _mean_auc(labels, preds):
    from sklearn.metrics import roc_auc_score

    return float(
        sum(roc_auc_score(labels[t], preds[t]) for t in labels) / len(labels)
    )


def _adult_frames(data_dir):
    """Train / validation / test frames of the Adult protocol.

    Train is `adult.data` less a random 20% (seed 0) for validation; test is
    `adult.test`. The vocabularies and min-max ranges come from the train
    part only.
    """
    import numpy as np

    from keras_mtl.data import train_val_split
    from keras_mtl.datasets import ADULT_CATEGORICAL
    from keras_mtl.datasets import ADULT_NUMERIC
    from keras_mtl.datasets import load_adult

    train_full, test = load_adult(data_dir)
    train, val = train_val_split(train_full, VAL_FRACTION, seed=SPLIT_SEED)
    vocab = {
        c: train[c].dropna().value_counts().index.tolist()
        for c in ADULT_CATEGORICAL
    }
    ranges = {}
    for c in ADULT_NUMERIC:
        logged = np.log1p(train[c].to_numpy(dtype="float64"))
        ranges[c] = (float(logged.min()), float(logged.max()))
    return train, val, test, vocab, ranges


def _adult_encoded(frame, vocab, ranges):
    """Encodes a frame for the peers with pandas/numpy.

    Categoricals: the index layout of keras-mtl (0 missing, 1 unseen, the
    train vocabulary from 2). Dense: `log1p`, then min-max with the train
    range (test values may fall outside [0, 1]; they are not clipped, as in
    keras-mtl).
    """
    import numpy as np

    x = {}
    for c, values in vocab.items():
        index = {v: i + 2 for i, v in enumerate(values)}
        codes = frame[c].map(index).fillna(1).to_numpy(dtype="int64")
        x[c] = np.where(frame[c].isna().to_numpy(), 0, codes)
    for c, (lo, hi) in ranges.items():
        logged = np.log1p(frame[c].to_numpy(dtype="float64"))
        x[c] = ((logged - lo) / max(hi - lo, 1e-12)).astype("float32")
    y = {t: frame[t].to_numpy(dtype="float32") for t in ADULT_TASKS}
    return x, y


def _keras_setup(seed):
    import keras

    keras.utils.set_random_seed(seed)
    return keras


def _val_auc_callback(keras, predict, x_val, y_val):
    """A callback that writes the validation mean AUC into the epoch logs."""

    class ValMeanAUC(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.history = []

        def on_epoch_end(self, epoch, logs=None):
            value = _mean_auc(y_val, predict(self.model, x_val))
            self.history.append(value)
            if logs is not None:
                logs["val_mean_auc"] = value

    return ValMeanAUC()


def _keras_fit(keras, model, data, epochs, callback, **fit_kwargs):
    """Fits with mean-AUC early stopping (patience 3, best weights back)."""
    stop = keras.callbacks.EarlyStopping(
        monitor="val_mean_auc",
        mode="max",
        patience=PATIENCE,
        restore_best_weights=True,
    )
    model.fit(
        *data,
        epochs=epochs,
        callbacks=[callback, stop],
        verbose=0,
        **fit_kwargs,
    )
    history = callback.history
    return {
        "epochs_run": len(history),
        "best_epoch": 1 + max(range(len(history)), key=history.__getitem__),
        "best_val_mean_auc": max(history),
    }


# --------------------------------------------------------------------------
# Adult workers, one per library.
# --------------------------------------------------------------------------
def _adult_keras_mtl(args):
    keras = _keras_setup(args.seed)
    import numpy as np

    import keras_mtl
    from keras_mtl import data as data_lib
    from keras_mtl import models
    from keras_mtl.features import CategoricalFeature
    from keras_mtl.features import NumericFeature

    train, val, test, vocab, ranges = _adult_frames(args.data_dir)
    features = [
        CategoricalFeature(c, vocabulary=v, embed_dim=EMBED_DIM)
        for c, v in vocab.items()
    ] + [
        NumericFeature(
            c,
            minimum=lo,
            maximum=hi,
            normalization="minmax",
            log1p=True,
            missing_indicator=False,
        )
        for c, (lo, hi) in ranges.items()
    ]
    all_tasks = [keras_mtl.Task(t) for t in ADULT_TASKS]

    def predict(model, x):
        out = model.predict(x, batch_size=4096, verbose=0)
        return {k: np.asarray(v).reshape(-1) for k, v in out.items()}

    def build(tasks):
        # The peers' embedding initialization (see EMBEDDING_INIT_STD).
        init = keras.initializers.RandomNormal(0.0, EMBEDDING_INIT_STD)
        if args.model == "single_task":
            return models.shared_bottom(
                features,
                tasks,
                bottom_units=(128, 64),
                tower_units=(),
                embeddings_initializer=init,
            )
        if args.model == "shared_bottom":
            return models.shared_bottom(
                features,
                tasks,
                bottom_units=(128, 64),
                tower_units=(32,),
                embeddings_initializer=init,
            )
        if args.model == "mmoe":
            return models.mmoe(
                features,
                tasks,
                num_experts=8,
                expert_units=(64,),
                tower_units=(32,),
                # Chosen on the validation split (BENCHMARKS.md, "Expert
                # layer normalization"); PLE kept its plain experts.
                expert_normalization="layer",
                tower_normalization="layer",
                embeddings_initializer=init,
            )
        if args.model == "ple":
            return models.ple(
                features,
                tasks,
                num_levels=1,
                num_task_experts=2,
                num_shared_experts=1,
                expert_units=(64,),
                tower_units=(32,),
                tower_normalization="layer",
                embeddings_initializer=init,
            )
        raise ValueError(f"Unknown model {args.model!r}")

    groups = (
        [[t] for t in all_tasks] if args.model == "single_task" else [all_tasks]
    )
    start = time.perf_counter()
    test_preds, fits, params = {}, [], 0
    for tasks in groups:
        names = [t.name for t in tasks]
        model = build(tasks)
        models.compile_model(
            model,
            tasks,
            optimizer=keras.optimizers.Adam(
                LEARNING_RATE, epsilon=ADAM_EPSILON
            ),
        )
        params += model.count_params()
        train_ds = data_lib.from_dataframe(
            train, features, tasks, BATCH_SIZE, shuffle=True, seed=args.seed
        )
        x_val, y_val, _ = data_lib.dataframe_to_arrays(val, features, tasks)
        callback = _val_auc_callback(
            keras, predict, x_val, {n: y_val[n] for n in names}
        )
        fits.append(
            _keras_fit(
                keras,
                model,
                (train_ds,),
                args.epochs,
                callback,
                shuffle=False,  # the dataset reshuffles every epoch
            )
        )
        x_test, _, _ = data_lib.dataframe_to_arrays(test, features, tasks)
        test_preds.update(predict(model, x_test))
    wall = time.perf_counter() - start
    return _adult_record(args, test, test_preds, fits, params, wall)


def _adult_deepctr(args):
    # DeepCTR asks pypi.python.org for newer releases in a thread at import
    # time; this machine has no such network, so the request is refused here
    # instead of failing slowly.
    import requests

    def _no_network(*_args, **_kwargs):
        raise requests.ConnectionError("bench: no network")

    requests.get = _no_network
    keras = _keras_setup(args.seed)
    import numpy as np
    from deepctr.feature_column import DenseFeat
    from deepctr.feature_column import SparseFeat
    from deepctr.models.multitask import MMOE
    from deepctr.models.multitask import PLE
    from deepctr.models.multitask import SharedBottom

    train, val, test, vocab, ranges = _adult_frames(args.data_dir)
    encoded = [_adult_encoded(f, vocab, ranges) for f in (train, val, test)]
    (x_tr, y_tr), (x_val, y_val), (x_te, _) = encoded
    columns = [
        SparseFeat(c, vocabulary_size=len(v) + 2, embedding_dim=EMBED_DIM)
        for c, v in vocab.items()
    ] + [DenseFeat(c, 1) for c in ranges]
    common = dict(
        task_types=["binary"] * len(ADULT_TASKS),
        task_names=list(ADULT_TASKS),
        l2_reg_embedding=0,
        seed=args.seed,
    )
    start = time.perf_counter()
    if args.model == "shared_bottom":
        model = SharedBottom(
            columns,
            bottom_dnn_hidden_units=(128, 64),
            tower_dnn_hidden_units=(32,),
            **common,
        )
    elif args.model == "mmoe":
        model = MMOE(
            columns,
            num_experts=8,
            expert_dnn_hidden_units=(64,),
            tower_dnn_hidden_units=(32,),
            **common,
        )
    elif args.model == "ple":
        model = PLE(
            columns,
            shared_expert_num=1,
            specific_expert_num=2,
            num_levels=1,
            expert_dnn_hidden_units=(64,),
            tower_dnn_hidden_units=(32,),
            **common,
        )
    else:
        raise ValueError(f"Unknown model {args.model!r}")
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE, epsilon=ADAM_EPSILON),
        loss=["binary_crossentropy"] * len(ADULT_TASKS),
    )

    def predict(model, x):
        out = model.predict(x, batch_size=4096, verbose=0)
        return {t: np.asarray(p).reshape(-1) for t, p in zip(ADULT_TASKS, out)}

    callback = _val_auc_callback(keras, predict, x_val, y_val)
    labels = [y_tr[t].reshape(-1, 1) for t in ADULT_TASKS]
    fit = _keras_fit(
        keras,
        model,
        (x_tr, labels),
        args.epochs,
        callback,
        batch_size=BATCH_SIZE,
        shuffle=True,
    )
    test_preds = predict(model, x_te)
    wall = time.perf_counter() - start
    return _adult_record(
        args, test, test_preds, [fit], model.count_params(), wall
    )


def _adult_torch_rechub(args):
    # keras-mtl (used here only for its Adult loader and split) imports
    # Keras; on the torch backend that pulls in no TensorFlow.
    os.environ["KERAS_BACKEND"] = "torch"
    import copy

    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch_rechub.basic.features import DenseFeature
    from torch_rechub.basic.features import SparseFeature
    from torch_rechub.models.multi_task import MMOE
    from torch_rechub.models.multi_task import PLE
    from torch_rechub.models.multi_task import SharedBottom

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    train, val, test, vocab, ranges = _adult_frames(args.data_dir)
    encoded = [_adult_encoded(f, vocab, ranges) for f in (train, val, test)]
    (x_tr, y_tr), (x_val, y_val), (x_te, _) = encoded
    features = [
        SparseFeature(c, vocab_size=len(v) + 2, embed_dim=EMBED_DIM)
        for c, v in vocab.items()
    ] + [DenseFeature(c) for c in ranges]
    task_types = ["classification"] * len(ADULT_TASKS)
    towers = [{"dims": [32]} for _ in ADULT_TASKS]
    start = time.perf_counter()
    if args.model == "shared_bottom":
        model = SharedBottom(
            features,
            task_types=task_types,
            bottom_params={"dims": [128, 64]},
            tower_params_list=towers,
        )
    elif args.model == "mmoe":
        model = MMOE(
            features,
            task_types=task_types,
            n_expert=8,
            expert_params={"dims": [64]},
            tower_params_list=towers,
        )
    elif args.model == "ple":
        model = PLE(
            features,
            task_types=task_types,
            n_level=1,
            n_expert_specific=2,
            n_expert_shared=1,
            expert_params={"dims": [64]},
            tower_params_list=towers,
        )
    else:
        raise ValueError(f"Unknown model {args.model!r}")

    def tensors(x):
        return {k: torch.from_numpy(v) for k, v in x.items()}

    t_tr, t_val, t_te = tensors(x_tr), tensors(x_val), tensors(x_te)
    labels = torch.from_numpy(np.stack([y_tr[t] for t in ADULT_TASKS], axis=1))

    def predict(x):
        model.eval()
        with torch.no_grad():
            out = model(x).numpy()
        return {t: out[:, i] for i, t in enumerate(ADULT_TASKS)}

    # MTLTrainer early-stops on one task's metric (`earlystop_taskid`), not
    # on the mean AUC, so this is the equivalent manual loop around the
    # library's model: BCE per task, summed, Adam, mean-AUC early stopping.
    optimizer = torch.optim.Adam(
        model.parameters(), lr=LEARNING_RATE, eps=ADAM_EPSILON
    )
    generator = torch.Generator().manual_seed(args.seed)
    n = len(labels)
    history, best, best_state, wait = [], -1.0, None, 0
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, BATCH_SIZE):
            idx = order[i : i + BATCH_SIZE]
            out = model({k: v[idx] for k, v in t_tr.items()})
            target = labels[idx]
            loss = sum(
                F.binary_cross_entropy(out[:, j], target[:, j])
                for j in range(len(ADULT_TASKS))
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        value = _mean_auc(y_val, predict(t_val))
        history.append(value)
        if value > best:
            best, wait = value, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            wait += 1
            if wait >= PATIENCE:
                break
    model.load_state_dict(best_state)
    test_preds = predict(t_te)
    wall = time.perf_counter() - start
    fit = {
        "epochs_run": len(history),
        "best_epoch": 1 + max(range(len(history)), key=history.__getitem__),
        "best_val_mean_auc": max(history),
    }
    params = sum(p.numel() for p in model.parameters())
    return _adult_record(args, test, test_preds, [fit], params, wall)


def _adult_record(args, test, test_preds, fits, params, wall):
    from sklearn.metrics import roc_auc_score

    aucs = {
        t: float(roc_auc_score(test[t].to_numpy(), test_preds[t]))
        for t in ADULT_TASKS
    }
    return {
        "suite": "quality",
        "benchmark": "adult",
        "library": args.library,
        "model": args.model,
        "seed": args.seed,
        "test_auc": aucs,
        "epochs_run": [f["epochs_run"] for f in fits],
        "best_epoch": [f["best_epoch"] for f in fits],
        "best_val_mean_auc": [f["best_val_mean_auc"] for f in fits],
        "params": int(params),
        "wall_s": wall,
        "peak_rss_mb": _peak_rss_mb(),
    }


def worker_adult(args):
    fn = {
        "keras_mtl": _adult_keras_mtl,
        "torch_rechub": _adult_torch_rechub,
        "deepctr": _adult_deepctr,
    }[args.library]
    return fn(args)


# --------------------------------------------------------------------------
# Funnel worker: ESMM against a CVR model trained on clicks only.
# --------------------------------------------------------------------------
def worker_funnel(args):
    keras = _keras_setup(args.seed)
    import numpy as np
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    import keras_mtl
    from keras_mtl import data as data_lib
    from keras_mtl import models
    from keras_mtl import training
    from keras_mtl.datasets import FUNNEL_LABELS
    from keras_mtl.datasets import synthetic_funnel

    df, truth = synthetic_funnel(
        args.n, seed=args.seed, return_propensities=True
    )
    rest, test = data_lib.train_val_split(df, 0.2, seed=args.seed)
    train, val = data_lib.train_val_split(rest, 0.1, seed=args.seed)
    truth_test = truth.loc[test.index]
    features = keras_mtl.infer_features(train, labels=FUNNEL_LABELS)

    # Both models get the same embedding regularization and stop on the
    # same quantity, the one a real log can give about a CVR model: the log
    # loss of its CVR output on the clicked validation rows (the `logloss`
    # metric of `compile_model`, which leaves the regularization out). For
    # ESMM that is the `cvr` output's, which `esmm_tasks` measures on
    # clicked rows only; the naive model sees clicked rows only anyway.
    regularizer = keras.regularizers.L2(FUNNEL_EMBEDDING_L2)
    if args.model in ("esmm", "escm2"):
        # ESCM²-IPS is ESMM plus the clicked rows' CVR loss weighted by the
        # inverse of the model's own pCTR.
        tasks = models.esmm_tasks(
            cvr_weight=FUNNEL_ESCM2_CVR_WEIGHT if args.model == "escm2" else 0
        )
        model = models.esmm(
            features,
            tasks,
            embeddings_regularizer=regularizer,
            interaction=FUNNEL_INTERACTION,
        )
        output = "cvr"
        monitor = "val_cvr_logloss"
        fit_train, fit_val = train, val
    elif args.model == "naive":
        tasks = [keras_mtl.Task("conversion")]
        model = models.shared_bottom(
            features,
            tasks,
            bottom_units=(128, 64),
            tower_units=(),
            embeddings_regularizer=regularizer,
            interaction=FUNNEL_INTERACTION,
        )
        output = "conversion"
        monitor = "val_logloss"
        fit_train = train[train["click"] == 1]
        fit_val = val[val["click"] == 1]
    else:
        raise ValueError(f"Unknown model {args.model!r}")
    x_test = data_lib.features_to_arrays(test, features)
    cf = truth_test["cf_conversion"].to_numpy()
    p_true = truth_test["p_conversion"].to_numpy()

    def predict_cvr(model):
        out = model.predict(x_test, batch_size=8192, verbose=0)
        return np.asarray(out[output], dtype="float64").reshape(-1)

    class EntireSpaceAUC(keras.callbacks.Callback):
        """Diagnostic only: the test entire-space AUC after every epoch.

        It never drives model selection (early stopping uses the clicked-
        row CVR loss); it shows whether another epoch would have ranked
        better.
        """

        def __init__(self):
            super().__init__()
            self.values = []
            self.seconds = 0.0

        def on_epoch_end(self, epoch, logs=None):
            tick = time.perf_counter()
            self.values.append(
                float(roc_auc_score(cf, predict_cvr(self.model)))
            )
            self.seconds += time.perf_counter() - tick

    diagnostic = EntireSpaceAUC()
    start = time.perf_counter()
    if args.model == "escm2":
        trainer = training.compile(
            model,
            tasks,
            propensity={"cvr": "ctr"},
            min_propensity=FUNNEL_ESCM2_MIN_PROPENSITY,
            learning_rate=LEARNING_RATE,
        )
    else:
        trainer = models.compile_model(
            model, tasks, learning_rate=LEARNING_RATE
        )
    stop = keras.callbacks.EarlyStopping(
        monitor=monitor,
        mode="min",
        patience=FUNNEL_PATIENCE,
        restore_best_weights=True,
    )
    history = trainer.fit(
        data_lib.from_dataframe(
            fit_train, features, tasks, FUNNEL_BATCH, True, args.seed
        ),
        validation_data=data_lib.from_dataframe(fit_val, features, tasks, 8192),
        epochs=args.epochs,
        callbacks=[stop, diagnostic],
        verbose=0,
        shuffle=False,  # the dataset reshuffles every epoch
    )
    cvr = predict_cvr(model)
    # The diagnostic's own predictions are not part of the model's cost.
    wall = time.perf_counter() - start - diagnostic.seconds
    clicked = test["click"].to_numpy() == 1
    val_loss = history.history[monitor]
    return {
        "suite": "quality",
        "benchmark": "funnel",
        "library": "keras_mtl",
        "model": args.model,
        "seed": args.seed,
        "n": args.n,
        "interaction": FUNNEL_INTERACTION,
        "train_rows": len(fit_train),
        "test_rows": len(test),
        "entire_space_auc": float(roc_auc_score(cf, cvr)),
        "spearman_p_conversion": float(spearmanr(cvr, p_true).statistic),
        "clicked_space_auc": float(
            roc_auc_score(test["conversion"].to_numpy()[clicked], cvr[clicked])
        ),
        "oracle_entire_space_auc": float(roc_auc_score(cf, p_true)),
        "mean_pred_cvr": float(cvr.mean()),
        "mean_p_conversion": float(p_true.mean()),
        "monitor": monitor,
        "epochs_run": len(val_loss),
        "best_epoch": 1 + int(np.argmin(val_loss)),
        "monitor_by_epoch": [float(v) for v in val_loss],
        "entire_space_auc_by_epoch": diagnostic.values,
        "params": int(model.count_params()),
        "wall_s": wall,
        "peak_rss_mb": _peak_rss_mb(),
    }


def worker_versions(args):
    """Versions of everything the suite uses, and whether each imports."""
    from importlib import metadata

    packages = [
        "keras-mtl",
        "keras",
        "tensorflow",
        "torch",
        "torch-rechub",
        "deepctr",
        "tf-keras",
        "numpy",
        "pandas",
        "scikit-learn",
        "scipy",
        "psutil",
    ]
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    memory = None
    try:
        import psutil

        memory = psutil.virtual_memory().total
    except ImportError:
        pass
    return {
        "python": platform.python_version(),
        "versions": versions,
        "memory_bytes": memory,
        "cpu_count": os.cpu_count(),
    }


WORKERS = {
    "adult": worker_adult,
    "funnel": worker_funnel,
    "versions": worker_versions,
}


# --------------------------------------------------------------------------
# Orchestration.
# --------------------------------------------------------------------------
def _thread_env(threads):
    """The same thread budget for TensorFlow, torch and BLAS."""
    n = str(threads)
    return {
        "BENCH_THREADS": n,
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "TF_NUM_INTRAOP_THREADS": n,
        "TF_NUM_INTEROP_THREADS": n,
    }


def _run_worker(python, name, extra, env_extra=None, log=None):
    cmd = [python, os.path.abspath(__file__), "--worker", name, *extra]
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("PYTHONHASHSEED", "0")
    env.update(env_extra or {})
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    if log is not None:
        log.write(f"$ {shlex.join(cmd)}\n{proc.stderr[-4000:]}\n")
        log.flush()
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("BENCH_RESULT "):
            record = json.loads(line[len("BENCH_RESULT ") :])
            record["process_s"] = elapsed
            return record
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    return {
        "error": f"exit {proc.returncode}",
        "error_tail": "\n".join(tail),
        "process_s": elapsed,
    }


def _machine():
    info = {"cpu_model": None, "cores": os.cpu_count(), "memory_gib": None}
    try:
        out = subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True
        ).stdout
        match = re.search(r"^Model name:\s*(.+)$", out, re.M)
        info["cpu_model"] = match.group(1).strip() if match else None
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        with open("/proc/meminfo") as f:
            kb = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))
        info["memory_gib"] = round(kb / 1024**2, 1)
    except (OSError, AttributeError):
        pass
    return info


def _git_revision():
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        # The suite's own output files do not count: a part of the suite
        # started beside another (Adult and funnel) would otherwise see the
        # other part's results file being rewritten.
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":(exclude)bench/results",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _source_digest():
    """A digest of keras-mtl's Python source, as the next worker imports it.

    Every worker imports `keras_mtl` afresh, so an edit made while a suite
    runs changes the code of the runs after it (it happened: a 2026-11-22
    run mixed two versions of `keras_mtl.data`). The digest is stored with
    every run, and `render_quality` warns when the runs of a section differ.
    """
    digest = hashlib.sha256()
    package = os.path.join(ROOT, "keras_mtl")
    for folder, dirs, files in os.walk(package):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, package).encode())
                with open(path, "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()[:12]


def _source_warning(records):
    """The section's warning line when its runs ran different source."""
    sources = {r["source"] for r in records if "source" in r}
    if len(sources) < 2:
        return None
    return (
        "- **Warning: keras-mtl's source changed during the run**: the runs "
        f"imported {len(sources)} different versions of `keras_mtl` (see "
        "each run's `source` digest), so these results do not come from one "
        "tree."
    )


def _settings(meta):
    """What must match for earlier records to be reused by `--resume`."""
    keys = (
        "quick",
        "adult_epochs",
        "adult_adam_epsilon",
        "funnel_n",
        "funnel_epochs",
        "threads",
    )
    return {k: meta.get(k) for k in keys}


def _adam_text(meta):
    if "adult_adam_epsilon" not in meta:
        # Runs before the constant was recorded: each library's default.
        return "each library's default epsilon"
    epsilon = f"{meta['adult_adam_epsilon']:g}".replace("e-0", "e-")
    return f"epsilon {epsilon} in every library"


def _read_results(path):
    meta, records = None, []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            item = json.loads(line)
            if "meta" in item:
                meta = item["meta"]
            else:
                records.append(item)
    return meta, records


def _quality_jobs(seeds, only=None, models=None):
    """The suite's runs, `(benchmark, library, model, seed)`, seed by seed.

    `only` keeps these libraries (and "funnel" the funnel runs); `models`
    keeps these model names. Either one left out keeps everything.
    """
    jobs = []
    for seed in seeds:
        for library in LIBRARIES:
            if only and library not in only:
                continue
            names = ADULT_MODELS if library == "keras_mtl" else PEER_MODELS
            jobs += [("adult", library, m, seed) for m in names]
        if not only or "funnel" in only:
            jobs += [("funnel", "keras_mtl", m, seed) for m in FUNNEL_MODELS]
    if models:
        jobs = [job for job in jobs if job[2] in models]
    return jobs


def suite_quality(opts):
    """Adult (3 libraries x 4 models) and the ESMM funnel bar."""
    python = opts.python
    epochs = QUICK["adult_epochs"] if opts.quick else MAX_EPOCHS
    f_n = QUICK["funnel_n"] if opts.quick else opts.funnel_n
    f_epochs = QUICK["funnel_epochs"] if opts.quick else FUNNEL_MAX_EPOCHS
    os.makedirs(RESULTS_DIR, exist_ok=True)
    name = opts.results or ("quality-quick" if opts.quick else "quality")
    results_path = os.path.join(RESULTS_DIR, f"{name}.jsonl")
    log_path = os.path.join(RESULTS_DIR, f"{name}.log")
    started = datetime.datetime.now(datetime.timezone.utc)
    meta = {
        "started": started.isoformat(timespec="seconds"),
        "command": opts.command,
        "quick": opts.quick,
        "seeds": opts.seeds,
        "machine": _machine(),
        "git": _git_revision(),
        "python_path": python,
        "adult_epochs": epochs,
        "adult_adam_epsilon": ADAM_EPSILON,
        "funnel_n": f_n,
        "funnel_epochs": f_epochs,
        "threads": opts.threads,
        "niceness": os.nice(0),
    }
    done = {}
    if opts.resume and os.path.exists(results_path):
        old_meta, old = _read_results(results_path)
        if old_meta and _settings(old_meta) == _settings(meta):
            for r in old:
                if "error" not in r:
                    key = (r["benchmark"], r["library"], r["model"], r["seed"])
                    done[key] = r
            meta["resumed_from"] = old_meta.get(
                "resumed_from", old_meta["started"]
            )
            meta["started"] = meta["resumed_from"]
            print(f"resuming: {len(done)} earlier run(s) reused", flush=True)
        else:
            print("resume: earlier results have other settings; ignored")
    with open(log_path, "a" if done else "w") as log:
        meta.update(_run_worker(python, "versions", [], log=log))
    print(json.dumps(meta), flush=True)

    jobs = _quality_jobs(opts.seeds, opts.only, opts.models)
    # With --resume, earlier runs outside this run's jobs (other seeds,
    # libraries left out with --only) are kept, so a suite can be completed
    # in parts.
    carried = [r for key, r in done.items() if key not in set(jobs)]
    if carried:
        meta["seeds"] = sorted({*opts.seeds, *(r["seed"] for r in carried)})
        print(f"resume: {len(carried)} earlier run(s) kept as is", flush=True)
    records = list(carried)
    clock = time.perf_counter()
    with open(results_path, "w") as out, open(log_path, "a") as log:
        out.write(json.dumps({"meta": meta}) + "\n")
        for record in carried:
            out.write(json.dumps(record) + "\n")
        for k, job in enumerate(jobs, 1):
            bench, library, model, seed = job
            if job in done:
                record = done[job]
            else:
                extra = [
                    "--library",
                    library,
                    "--model",
                    model,
                    "--seed",
                    str(seed),
                ]
                if bench == "adult":
                    extra += [
                        "--epochs",
                        str(epochs),
                        "--data-dir",
                        opts.data_dir,
                    ]
                else:
                    extra += ["--epochs", str(f_epochs), "--n", str(f_n)]
                source = _source_digest()
                record = _run_worker(
                    python, bench, extra, _thread_env(opts.threads), log=log
                )
                record.update(
                    {
                        "benchmark": bench,
                        "library": library,
                        "model": model,
                        "seed": seed,
                        "source": source,
                    }
                )
            records.append(record)
            out.write(json.dumps(record) + "\n")
            out.flush()
            elapsed = (time.perf_counter() - clock) / 60
            print(
                f"[{k}/{len(jobs)} {elapsed:.1f} min] " + json.dumps(record),
                flush=True,
            )
    finished = datetime.datetime.now(datetime.timezone.utc)
    meta["finished"] = finished.isoformat(timespec="seconds")
    meta["total_minutes"] = round(
        sum(r.get("process_s", 0.0) for r in records) / 60, 1
    )
    with open(results_path, "w") as out:
        out.write(json.dumps({"meta": meta}) + "\n")
        for record in records:
            out.write(json.dumps(record) + "\n")
    _finish_quality(opts, meta, records, results_path)


def _finish_quality(opts, meta, records, results_path):
    section = render_quality(meta, records, results_path)
    print(section)
    if opts.write_doc:
        write_section(opts.doc, "quality", section)
        print(f"wrote the quality section of {opts.doc}")


def render_only(opts):
    """Rewrites the doc section from results files (no training).

    With several files (parts of one suite run side by side, e.g. the Adult
    runs and the funnel runs), the records are pooled and the first file's
    meta describes the run; dates, seeds, minutes and commands cover all.
    """
    paths = [os.path.abspath(p) for p in opts.render_only]
    meta, records = _read_results(paths[0])
    for path in paths[1:]:
        other, more = _read_results(path)
        records += more
        if _settings(other) != _settings(meta):
            raise SystemExit(f"{path}: other settings than {paths[0]}")
        meta["seeds"] = sorted({*meta["seeds"], *other["seeds"]})
        meta["started"] = min(meta["started"], other["started"])
        meta["finished"] = max(meta.get("finished", ""), other["finished"])
        meta["total_minutes"] = round(
            meta.get("total_minutes", 0) + other.get("total_minutes", 0), 1
        )
        meta["command"] += f"` and `{other['command']}"
    _finish_quality(opts, meta, records, paths)


def suite_train(opts):
    """Training throughput against the peers: see bench/train_suite.py."""
    import train_suite

    return train_suite.suite_train(opts)


def suite_serve(opts):
    """In-process serving latency: see bench/serve_latency.py."""
    import serve_latency

    return serve_latency.main(opts.serve_args or [])


SUITES = {"quality": suite_quality, "train": suite_train, "serve": suite_serve}


# --------------------------------------------------------------------------
# Rendering: the doc section is generated from the records only.
# --------------------------------------------------------------------------
def _mean_std(values):
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def _mean(values):
    return statistics.mean(values) if values else float("nan")


def _median(values):
    return statistics.median(values) if values else float("nan")


def _adult_cells(records, library, model):
    ok = [
        r
        for r in records
        if r.get("benchmark") == "adult"
        and r["library"] == library
        and r["model"] == model
        and "error" not in r
    ]
    return ok


def render_quality(meta, records, results_path):
    machine = meta["machine"]
    versions = meta.get("versions", {})
    seeds = meta["seeds"]
    lines = []
    add = lines.append
    add("## Quality suite")
    add("")
    paths = results_path if isinstance(results_path, list) else [results_path]
    add(
        "Generated by `bench/run.py` from the runs listed in "
        + " and ".join(f"`{os.path.relpath(p, ROOT)}`" for p in paths)
        + "; do not edit by hand."
    )
    add("")
    if meta["quick"]:
        add(
            "**Quick mode** (debug run: few epochs, small funnel); these "
            "numbers say nothing about quality."
        )
        add("")
    mem = machine.get("memory_gib")
    add(
        f"- Date: {meta['started']} to {meta.get('finished', '?')} (UTC); "
        f"the runs took {meta.get('total_minutes', '?')} minutes in all"
        + (
            " (resumed after an interruption; earlier runs reused)."
            if meta.get("resumed_from")
            else "."
        )
    )
    add(
        f"- Threads: {meta.get('threads')} per library (TensorFlow intra- "
        "and inter-op, torch, OMP), one run at a time"
        + (
            f" in each of {len(paths)} parts of the suite, which ran side by "
            "side."
            if len(paths) > 1
            else "."
        )
    )
    add(
        f"- Machine: {machine.get('cores')}-core CPU "
        f"({machine.get('cpu_model') or 'unknown model'}), "
        f"{mem if mem is not None else '?'} GiB RAM, no GPU, shared with "
        f"other work (niceness {meta.get('niceness', '?')}), so wall times "
        "are indicative only."
    )
    add(f"- Command: `{meta['command']}`")
    add(f"- Tree: git {meta['git']}")
    warning = _source_warning(records)
    if warning:
        add(warning)
    add(
        f"- Python {meta.get('python', '?')}; "
        + ", ".join(f"{k} {v}" for k, v in versions.items() if v is not None)
        + "."
    )
    missing = [k for k, v in versions.items() if v is None]
    if missing:
        add(f"- Not installed: {', '.join(missing)}.")
    add(f"- Seeds: {', '.join(str(s) for s in seeds)}.")
    add("")

    # ---------------- Adult ----------------
    add("### Adult (UCI census income), two tasks")
    add("")
    add(
        "Test AUC on `adult.test` (16,281 rows), mean ± sample std over "
        f"seeds; Adam (learning rate {LEARNING_RATE:g}, {_adam_text(meta)}), "
        f"batch {BATCH_SIZE}, up to {meta['adult_epochs']} epochs, early "
        "stopping on the validation mean AUC of both tasks (patience 3, "
        "best weights restored). Wall time: model build, training (with the "
        "per-epoch validation AUC) and test prediction, median over seeds; "
        "process start and imports excluded."
    )
    add("")
    add(
        "| library | model | params | seeds | income AUC | never-married AUC "
        "| mean AUC | epochs (median) | best epoch (median) | hit the epoch "
        "cap | wall s (median) |"
    )
    add("|---|---|---:|---:|---|---|---|---:|---:|---:|---:|")
    summary = {}
    for library in LIBRARIES:
        models = ADULT_MODELS if library == "keras_mtl" else PEER_MODELS
        for model in models:
            ok = _adult_cells(records, library, model)
            failed = [
                r
                for r in records
                if r.get("benchmark") == "adult"
                and r["library"] == library
                and r["model"] == model
                and "error" in r
            ]
            if not ok and not failed:
                continue
            inc = [r["test_auc"]["income"] for r in ok]
            nev = [r["test_auc"]["never_married"] for r in ok]
            both = [(a + b) / 2 for a, b in zip(inc, nev)]
            summary[(library, model)] = {
                "income": inc,
                "never_married": nev,
            }
            epochs = [sum(r["epochs_run"]) for r in ok]
            best = [max(r["best_epoch"]) for r in ok]
            capped = sum(
                any(e >= meta["adult_epochs"] for e in r["epochs_run"])
                for r in ok
            )
            walls = [r["wall_s"] for r in ok]
            params = ok[0]["params"] if ok else "-"
            note = f" ({len(failed)} failed)" if failed else ""
            add(
                f"| {LIBRARY_LABEL[library]} | {MODEL_LABEL[model]}{note} | "
                f"{params} | {len(ok)} | {_mean_std(inc)} | {_mean_std(nev)} | "
                f"{_mean_std(both)} | "
                f"{_median(epochs) if epochs else '-'} | "
                f"{_median(best) if best else '-'} | {capped}/{len(ok)} | "
                f"{_median(walls):.1f} |"
            )
    add("")
    add(
        "Epochs are those run (best epoch + patience, or the cap); for the "
        "single-task row they add up both models (its best epoch is the "
        "later of the two), and so does its wall time. 'hit the epoch cap': "
        f"runs stopped by the {meta['adult_epochs']}-epoch limit rather than "
        "by early stopping, i.e. still improving on validation."
    )
    add("")
    add(
        "Exact constructor calls (`features` / `columns`: 7 categorical "
        "features with 8-dim embeddings and 6 dense features, the same "
        "encoding for every library; keras-mtl's `init` is "
        f"`keras.initializers.RandomNormal(0.0, {EMBEDDING_INIT_STD:g})`, "
        "the peers' default embedding initialization):"
    )
    add("")
    add("| library | model | call |")
    add("|---|---|---|")
    for (library, model), call in CONSTRUCTORS.items():
        add(f"| {LIBRARY_LABEL[library]} | {model} | `{call}` |")
    add("")

    # Bar.
    add(
        "**Bar: keras-mtl MMoE and PLE at least as high as torch-rechub "
        "0.9.0 and DeepCTR 0.9.4** (mean test AUC over seeds, per task)."
    )
    add("")
    add(
        "| keras-mtl model | vs | task | keras-mtl | peer | "
        "difference | within 1 std | holds |"
    )
    add("|---|---|---|---:|---:|---:|---|---|")
    verdicts = []
    for model in ("mmoe", "ple"):
        ours = summary.get(("keras_mtl", model))
        for peer in ("torch_rechub", "deepctr"):
            theirs = summary.get((peer, model))
            for task in ADULT_TASKS:
                if (
                    not ours
                    or not theirs
                    or not ours[task]
                    or not (theirs[task])
                ):
                    add(
                        f"| {model} | {LIBRARY_LABEL[peer]} | {task} | "
                        "n/a | n/a | n/a | n/a | not measured |"
                    )
                    verdicts.append(None)
                    continue
                a, b = _mean(ours[task]), _mean(theirs[task])
                spread = max(
                    statistics.stdev(v) if len(v) > 1 else 0.0
                    for v in (ours[task], theirs[task])
                )
                holds = a >= b
                verdicts.append(holds)
                add(
                    f"| {model} | {LIBRARY_LABEL[peer]} | {task} | "
                    f"{a:.4f} | {b:.4f} | {a - b:+.4f} | "
                    f"{'yes' if abs(a - b) < spread else 'no'} | "
                    f"{'yes' if holds else 'NO'} |"
                )
    add("")
    add(
        "'within 1 std': the difference is smaller than the larger of the "
        "two sample standard deviations over seeds, i.e. inside seed noise."
    )
    add("")
    if all(v is True for v in verdicts):
        add(
            "The Adult bar **holds**: on both tasks keras-mtl's MMoE and "
            "PLE reach a mean test AUC at least as high as both peers'."
        )
    elif any(v is None for v in verdicts):
        add(
            "The Adult bar **cannot be decided**: some peer runs are "
            "missing (see the failures below)."
        )
    else:
        fails = sum(1 for v in verdicts if v is False)
        add(
            f"The Adult bar **does not hold**: {fails} of "
            f"{len(verdicts)} comparisons have keras-mtl below the peer "
            "(rows marked NO)."
        )
    add("")

    # ---------------- Funnel ----------------
    funnel = [r for r in records if r.get("benchmark") == "funnel"]
    # The setting the runs recorded (runs before the option have none).
    interactions = {r.get("interaction") for r in funnel}
    interaction = interactions.pop() if len(interactions) == 1 else "mixed"
    crossed = f", interaction={interaction!r}" if interaction else ""
    takes = {
        "dot": "the pairwise dot products of their embedded features as "
        "extra inputs",
        "cross": "a DCN-v2 cross network of their input vector",
    }.get(interaction, "interaction settings that differ between runs")
    add("### Synthetic funnel: ESMM vs a CVR model trained on clicks only")
    add("")
    add(
        f"`keras_mtl.datasets.synthetic_funnel(n={meta['funnel_n']}, "
        "seed=s, return_propensities=True)`, split 20% test, then 10% of "
        "the rest for validation (both with `train_val_split(..., seed=s)`). "
        "The CVR prediction is scored over the **entire impression space** "
        "of the test split: AUC against the counterfactual label "
        "`truth.cf_conversion`, and Spearman correlation with the true "
        "`truth.p_conversion`. Up to "
        f"{meta['funnel_epochs']} epochs, batch {FUNNEL_BATCH}, Adam 1e-3, "
        "early stopping on the log loss of the CVR output on the clicked "
        "validation rows (`val_cvr_logloss` for ESMM, `val_logloss` for the "
        f"naive model; patience {FUNNEL_PATIENCE}, best weights restored). "
        "Both models put an L2 penalty of "
        f"{FUNNEL_EMBEDDING_L2:g} on their embedding tables "
        "(`embeddings_regularizer=keras.regularizers.L2(...)`)"
        + (
            f" and take {takes} (`interaction={interaction!r}`)"
            if interaction
            else ""
        )
        + ". The "
        "ESCM²-IPS row is ESMM trained the same way plus ESCM²'s "
        "counterfactual CVR loss with weight "
        f"{FUNNEL_ESCM2_CVR_WEIGHT:g} (the clicked rows' CVR log loss, each "
        "row weighted by the inverse of the model's own pCTR clipped at "
        f"{FUNNEL_ESCM2_MIN_PROPENSITY:g}, self-normalised); it stops on "
        "the same `val_cvr_logloss`. "
        "It is shown beside the bar, not part of it."
    )
    add("")
    add(
        "| model | entire-space CVR AUC | Spearman vs p_conversion | "
        "clicked-space AUC | mean pCVR (true mean) | epochs (median) | "
        "wall s (median) | best epoch in hindsight (diagnostic) |"
    )
    add("|---|---|---|---|---|---:|---:|---|")
    f_summary = {}
    labels = {
        "esmm": "ESMM `esmm(features, esmm_tasks(), "
        f"embeddings_regularizer=l2{crossed})`, towers [128, 64]",
        "escm2": "ESCM²-IPS: the same `esmm` with `esmm_tasks(cvr_weight="
        f"{FUNNEL_ESCM2_CVR_WEIGHT:g})`, trained by `keras_mtl.training."
        "compile(model, tasks, propensity={'cvr': 'ctr'})`",
        "naive": "naive: `shared_bottom(features, [Task('conversion')], "
        "bottom_units=(128, 64), tower_units=(), "
        f"embeddings_regularizer=l2{crossed})` on `click == 1` rows",
    }
    for model in FUNNEL_MODELS:
        ok = [r for r in funnel if r["model"] == model and "error" not in r]
        bad = [r for r in funnel if r["model"] == model and "error" in r]
        if not ok and not bad:
            continue
        aucs = [r["entire_space_auc"] for r in ok]
        f_summary[model] = {r["seed"]: r["entire_space_auc"] for r in ok}
        note = f" ({len(bad)} failed)" if bad else ""
        add(
            f"| {labels[model]}{note} | {_mean_std(aucs)} | "
            f"{_mean_std([r['spearman_p_conversion'] for r in ok])} | "
            f"{_mean_std([r['clicked_space_auc'] for r in ok])} | "
            + (
                f"{_mean([r['mean_pred_cvr'] for r in ok]):.3f} "
                f"({_mean([r['mean_p_conversion'] for r in ok]):.3f})"
                if ok
                else "n/a"
            )
            + f" | {_median([r['epochs_run'] for r in ok]) if ok else '-'} "
            f"| {_median([r['wall_s'] for r in ok]):.1f} | "
            f"{_mean_std([max(r['entire_space_auc_by_epoch']) for r in ok])}"
            " |"
        )
    oracle = [
        r["oracle_entire_space_auc"]
        for r in funnel
        if "error" not in r and r["model"] == "esmm"
    ]
    if oracle:
        add(
            f"| oracle: the true `p_conversion` itself | {_mean_std(oracle)} "
            "| 1 | - | - | - | - | - |"
        )
    add("")
    add(
        "Epochs and the restored epoch come from that validation loss "
        "alone. The last column is a diagnostic, not a result: the best "
        "test entire-space AUC over all epochs run, which no real log could "
        "select; it shows how much early stopping leaves on the table. Wall "
        "time excludes that diagnostic's predictions."
    )
    add("")
    esmm_aucs = f_summary.get("esmm", {})
    naive_aucs = f_summary.get("naive", {})
    common = sorted(set(esmm_aucs) & set(naive_aucs))
    if common:
        wins = sum(esmm_aucs[s] > naive_aucs[s] for s in common)
        a = _mean([esmm_aucs[s] for s in common])
        b = _mean([naive_aucs[s] for s in common])
        holds = a > b
        add(
            "**Bar: ESMM's entire-space CVR AUC > the naive model's.** "
            f"Mean {a:.4f} vs {b:.4f} ({a - b:+.4f}); ESMM is higher on "
            f"{wins} of {len(common)} seeds. The bar "
            f"**{'holds' if holds else 'does not hold'}**."
        )
    else:
        add(
            "**Bar: ESMM's entire-space CVR AUC > the naive model's**: "
            "not measured (runs failed)."
        )
    escm2_aucs = f_summary.get("escm2", {})
    beside = sorted(set(escm2_aucs) & set(naive_aucs) & set(esmm_aucs))
    if beside:
        c = _mean([escm2_aucs[s] for s in beside])
        add("")
        add(
            f"Beside the bar, ESCM²-IPS: mean {c:.4f}, against ESMM "
            f"{_mean([esmm_aucs[s] for s in beside]):.4f} and the naive model "
            f"{_mean([naive_aucs[s] for s in beside]):.4f}; higher than the "
            f"naive model on "
            f"{sum(escm2_aucs[s] > naive_aucs[s] for s in beside)} and than "
            f"ESMM on {sum(escm2_aucs[s] > esmm_aucs[s] for s in beside)} of "
            f"{len(beside)} seeds."
        )
    add("")

    # Failures.
    failures = [r for r in records if "error" in r]
    if failures:
        add("### Failed runs")
        add("")
        for r in failures:
            add(
                f"- {r['benchmark']} {r['library']} {r['model']} seed "
                f"{r['seed']}: {r['error']}"
            )
            add("")
            add("  ```")
            for line in r.get("error_tail", "").splitlines():
                add(f"  {line}")
            add("  ```")
        add("")
    return "\n".join(lines).rstrip() + "\n"


def write_section(path, name, section):
    """Replaces the `name` section of the doc, keeping everything else."""
    begin = f"<!-- BEGIN GENERATED {name} -->"
    end = f"<!-- END GENERATED {name} -->"
    block = f"{begin}\n{section}{end}\n"
    text = ""
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail.lstrip("\n")
    else:
        text = (text.rstrip() + "\n\n" if text else "") + block
    with open(path, "w") as f:
        f.write(text)


# --------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------
def _parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=sorted(SUITES))
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 seed, few epochs, small data: exercise every path fast.",
    )
    parser.add_argument(
        "--python",
        default=None,
        help="Interpreter of the workers. Defaults to .bench-venv's python "
        "when it exists, else this one.",
    )
    parser.add_argument("--data-dir", default=DATA_DIR)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="Threads of every library (TF intra/inter-op, torch, OMP). "
        "Defaults to 1: on 2 cores shared with other work, more threads "
        "were slower for both TensorFlow and torch.",
    )
    parser.add_argument("--funnel-n", type=int, default=FUNNEL_N)
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        choices=[*LIBRARIES, "funnel"],
        help="Run only these libraries (and/or the funnel).",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        choices=sorted({*ADULT_MODELS, *FUNNEL_MODELS}),
        help="quality: run only these models (Adult and funnel names).",
    )
    parser.add_argument(
        "--results",
        metavar="NAME",
        default=None,
        help="quality: write bench/results/NAME.jsonl and NAME.log instead "
        "of the suite's own (to run parts side by side; render them "
        "together with --render-only).",
    )
    parser.add_argument("--doc", default=DOC)
    # `--suite train` (bench/train_suite.py).
    parser.add_argument("--rows", type=int, help="train: training rows")
    parser.add_argument(
        "--train-epochs", dest="epochs_train", type=int, help="train: epochs"
    )
    parser.add_argument(
        "--train-batch-size",
        dest="batch_size_train",
        type=int,
        help="train: batch size (default 1024; 4k-64k on a GPU host)",
    )
    parser.add_argument(
        "--train-policy",
        dest="policy_train",
        choices=("float32", "mixed_bfloat16", "mixed_float16"),
        help="train: Keras dtype policy (GPU: mixed_bfloat16/float16)",
    )
    parser.add_argument(
        "--train-threads",
        dest="threads_train",
        type=int,
        help="train: threads per library (default: all cores)",
    )
    parser.add_argument(
        "--train-libraries",
        dest="libraries",
        nargs="+",
        help="train: libraries",
    )
    parser.add_argument(
        "--train-models", dest="models", nargs="+", help="train: models"
    )
    parser.add_argument(
        "--train-datasets", dest="datasets", nargs="+", help="train: datasets"
    )
    # `--suite serve` (bench/serve_latency.py).
    parser.add_argument(
        "--serve-args",
        nargs=argparse.REMAINDER,
        help="serve: arguments for bench/serve_latency.py",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="Reuse the successful runs of an earlier, interrupted run with "
        "the same settings (from bench/results/<suite>.jsonl).",
    )
    parser.add_argument(
        "--render-only",
        metavar="RESULTS_JSONL",
        nargs="+",
        help="Only rewrite the doc section from results files (several: "
        "parts of one run, e.g. made with --only and --results).",
    )
    parser.add_argument(
        "--write-doc",
        dest="write_doc",
        action="store_true",
        default=None,
        help="Rewrite the suite's section of the doc (default unless --quick).",
    )
    parser.add_argument(
        "--no-write-doc", dest="write_doc", action="store_false"
    )
    # Worker arguments (internal).
    parser.add_argument(
        "--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS
    )
    parser.add_argument("--library", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--epochs", type=int, default=MAX_EPOCHS, help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--n", type=int, default=FUNNEL_N, help=argparse.SUPPRESS
    )
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    opts = _parser().parse_args(argv)
    if opts.worker:
        _emit(WORKERS[opts.worker](opts))
        return 0
    if opts.render_only:
        opts.write_doc = opts.write_doc is not False
        render_only(opts)
        return 0
    if not opts.suite:
        _parser().error("--suite is required")
    if opts.seeds is None:
        opts.seeds = [0] if opts.quick else [0, 1, 2, 3, 4]
    if opts.python is None:
        opts.python = (
            BENCH_VENV_PY if os.path.exists(BENCH_VENV_PY) else sys.executable
        )
    if opts.write_doc is None:
        opts.write_doc = not opts.quick
    opts.command = "python bench/run.py " + shlex.join(argv)
    SUITES[opts.suite](opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
