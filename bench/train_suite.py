"""Training throughput: keras-mtl against DeepCTR and torch-rechub.

    python bench/run.py --suite train [--rows 1000000] [--epochs 4]

Every (dataset, model, library) runs in its own subprocess (this file, with
`--worker train`), one after the other, on the same data and the same
architecture sizes:

- data: the built-in funnel data (`synthetic_funnel`, `--rows` training rows
  plus a 100k-row hold-out) and UCI Adult's training set tiled to at least
  `--rows` rows (test: `adult.test`);
- models: MMoE 8 experts [64], towers [32]; PLE 1 level, 2 task + 1 shared
  experts [64], towers [32]; ESMM towers [64, 32] (funnel only); embedding
  dim 8; batch 1024; Adam 1e-3;
- keras-mtl runs its default fast path (`encoded_model` + lookups once in the
  data + `jit_compile=True` + `steps_per_execution`); `keras_mtl_raw` is the
  same model trained on raw features without XLA, to show what the path buys.
  Every library optimises the loss only, with no training metrics.
  DeepCTR trains with `model.fit` on integer-encoded numpy arrays (its
  documented usage); torch-rechub's models train in a plain loop over
  in-memory tensor slices, which is faster than the library's DataLoader,
  so its figure is a favourable one.

Reported per run: steady-state samples/s (median of the epochs after the
first), samples per CPU-second, time from the start of training to the
first finished step, first-epoch overhead (first epoch minus a steady one),
peak RSS (at the end of training, and of the whole process), hold-out
AUC, analytical FLOPs per sample (6 x dense weights: forward and backward;
embedding gathers excluded) and the achieved GFLOP/s against this
machine's measured float32 matmul peak.
"""

import argparse
import json
import os
import statistics
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

import run as bench  # noqa: E402  (bench/run.py: shared helpers)

ROWS = 1_000_000
HOLDOUT = 100_000
BATCH = 1024
EPOCHS = 4
EMBED_DIM = 8
LEARNING_RATE = 1e-3
STEPS_PER_EXECUTION = 32
LIBRARIES = ("keras_mtl", "keras_mtl_raw", "deepctr", "torch_rechub")
DATASETS = ("funnel", "adult")
MODELS = {"funnel": ("mmoe", "ple", "esmm"), "adult": ("mmoe", "ple")}
# The raw (slow) keras-mtl path is shown for one model per dataset.
RAW_MODELS = ("mmoe",)
FUNNEL_CATEGORICAL = ("user_id", "item_id", "item_category", "device")
FUNNEL_CATEGORICAL += ("position",)
FUNNEL_NUMERIC = ("user_age", "item_price")
LABEL = {
    "keras_mtl": "keras-mtl",
    "keras_mtl_raw": "keras-mtl, raw features, no XLA",
    "deepctr": "DeepCTR",
    "torch_rechub": "torch-rechub",
}


# --------------------------------------------------------------------------
# Data: one definition for every library.
# --------------------------------------------------------------------------
def _funnel(rows, seed):
    """Train/test frames, vocabularies and dense transforms of the funnel."""
    from keras_mtl.datasets import synthetic_funnel

    df = synthetic_funnel(rows + HOLDOUT, seed=seed)
    train, test = df.iloc[:rows], df.iloc[rows:]
    vocab = {
        c: sorted(train[c].dropna().unique().tolist())
        for c in FUNNEL_CATEGORICAL
    }
    dense = {
        c: ("standard", float(train[c].mean()), float(train[c].std()))
        for c in FUNNEL_NUMERIC
    }
    tasks = ("click", "conversion")
    return train, test, vocab, dense, tasks


def _adult(rows, data_dir):
    """Adult's train part tiled to at least `rows` rows, and adult.test."""
    import math

    import pandas as pd

    train, _, test, vocab, ranges = bench._adult_frames(data_dir)
    train = pd.concat([train] * math.ceil(rows / len(train)))
    train = train.reset_index(drop=True)
    dense = {c: ("log_minmax", lo, hi) for c, (lo, hi) in ranges.items()}
    return train, test, vocab, dense, bench.ADULT_TASKS


def _load(args):
    if args.dataset == "funnel":
        return _funnel(args.rows, args.seed)
    return _adult(args.rows, args.data_dir)


def _dense_values(frame, column, transform):
    import numpy as np

    kind, a, b = transform
    values = frame[column].to_numpy(dtype="float64")
    if kind == "standard":
        # A missing value is the mean, as keras-mtl's default fill.
        out = np.nan_to_num((values - a) / max(b, 1e-12), nan=0.0)
    else:
        out = (np.log1p(values) - a) / max(b - a, 1e-12)
    return out.astype("float32")


def _encode(frame, vocab, dense, tasks):
    """Integer ids (0 missing, 1 unseen, vocabulary from 2) and dense floats:
    the index layout keras-mtl's lookups produce, for the peers."""
    import numpy as np

    x = {}
    for c, values in vocab.items():
        index = {v: i + 2 for i, v in enumerate(values)}
        codes = frame[c].map(index).fillna(1).to_numpy(dtype="int64")
        x[c] = np.where(frame[c].isna().to_numpy(), 0, codes)
    for c, transform in dense.items():
        x[c] = _dense_values(frame, c, transform)
    y = {t: frame[t].to_numpy(dtype="float32") for t in tasks}
    return x, y


def _encoded_peer_data(train, test, vocab, dense, labels):
    """The peers' integer-encoded train and test inputs, and the seconds
    the train part took (the peers' data preparation)."""
    start = time.perf_counter()
    x_tr, y_tr = _encode(train, vocab, dense, labels)
    prep = time.perf_counter() - start
    x_te, _ = _encode(test, vocab, dense, labels)
    return x_tr, y_tr, x_te, prep


def _holdout_auc(test, preds, tasks, dataset):
    """Mean hold-out AUC over the tasks (conversion on clicked rows)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    aucs = {}
    for t in tasks:
        label = test[t].to_numpy()
        pred = np.asarray(preds[t], dtype="float64").reshape(-1)
        if dataset == "funnel" and t == "conversion":
            keep = test["click"].to_numpy() == 1
            label, pred = label[keep], pred[keep]
        aucs[t] = float(roc_auc_score(label, pred))
    return aucs


class _Clock:
    """Per-epoch wall and CPU time, and the time to the first step."""

    def __init__(self):
        self.start = None
        self.first_step = None
        self.prep_s = None  # DataFrame to the library's input format
        self.epochs = []
        self._epoch = None
        # Process high-water mark at the end of the last epoch: data
        # generation, data prep and training, before the hold-out predictions.
        self.train_peak_rss_mb = None

    def begin(self):
        self.start = time.perf_counter()

    def epoch_begin(self):
        self._epoch = (time.perf_counter(), time.process_time())

    def step_end(self):
        if self.first_step is None:
            self.first_step = time.perf_counter() - self.start

    def epoch_end(self):
        wall = time.perf_counter() - self._epoch[0]
        cpu = time.process_time() - self._epoch[1]
        self.epochs.append({"wall_s": wall, "cpu_s": cpu})
        self.train_peak_rss_mb = bench._peak_rss_mb()


def _keras_clock_callback(keras, clock):
    class Callback(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            pass

        def on_epoch_begin(self, epoch, logs=None):
            clock.epoch_begin()

        def on_train_batch_end(self, batch, logs=None):
            clock.step_end()

        def on_epoch_end(self, epoch, logs=None):
            clock.epoch_end()

    return Callback()


def _dense_params_keras(model):
    return sum(
        int(w.numpy().size)
        for w in model.trainable_weights
        if "embedding" not in w.path and "emb" not in w.name
    )


# --------------------------------------------------------------------------
# Library workers.
# --------------------------------------------------------------------------
def keras_mtl_model(args, vocab, dense, labels):
    """Feature specs, tasks and the keras-mtl model of a suite run."""
    import keras_mtl
    from keras_mtl import models
    from keras_mtl.features import CategoricalFeature
    from keras_mtl.features import NumericFeature

    features = [
        CategoricalFeature(c, vocabulary=v, embed_dim=EMBED_DIM)
        for c, v in vocab.items()
    ]
    for c, (kind, a, b) in dense.items():
        if kind == "standard":
            spec = NumericFeature(
                c, mean=a, variance=b * b, missing_indicator=False
            )
        else:
            spec = NumericFeature(
                c,
                minimum=a,
                maximum=b,
                normalization="minmax",
                log1p=True,
                missing_indicator=False,
            )
        features.append(spec)
    if args.model == "esmm":
        tasks = models.esmm_tasks()
        model = models.esmm(features, tasks, tower_units=(64, 32))
    else:
        space = {"conversion": "click"} if args.dataset == "funnel" else {}
        tasks = [keras_mtl.Task(t, space=space.get(t)) for t in labels]
        if args.model == "mmoe":
            model = models.mmoe(
                features,
                tasks,
                num_experts=8,
                expert_units=(64,),
                tower_units=(32,),
            )
        else:
            model = models.ple(
                features,
                tasks,
                num_levels=1,
                num_task_experts=2,
                num_shared_experts=1,
                expert_units=(64,),
                tower_units=(32,),
            )
    return features, tasks, model


def _keras_policy(keras, args):
    if args.policy != "float32":
        keras.config.set_dtype_policy(args.policy)


def _keras_mtl(args, raw=False):
    keras = bench._keras_setup(args.seed)
    _keras_policy(keras, args)
    import numpy as np

    from keras_mtl import data as data_lib
    from keras_mtl import models

    train, test, vocab, dense, labels = _load(args)
    features, tasks, model = keras_mtl_model(args, vocab, dense, labels)
    clock = _Clock()
    prep = time.perf_counter()
    fast = {} if raw else {"encode_with": model, "pad_remainder": True}
    train_model = model if raw else models.encoded_model(model)
    ds = data_lib.from_dataframe(
        train,
        features,
        tasks,
        args.batch_size,
        shuffle=True,
        seed=args.seed,
        **fast,
    )
    clock.prep_s = time.perf_counter() - prep
    clock.begin()
    # The loss only, as the peers train: no training metrics (keras-mtl's
    # default per-task AUC / logloss / PCOC cost is in `profile_step.py`).
    if raw:
        models.compile_model(
            train_model, tasks, jit_compile=False, weighted_metrics=None
        )
    else:
        models.compile_model(
            train_model,
            tasks,
            jit_compile=True,
            steps_per_execution=STEPS_PER_EXECUTION,
            weighted_metrics=None,
        )
    train_model.fit(
        ds,
        epochs=args.epochs,
        verbose=0,
        callbacks=[_keras_clock_callback(keras, clock)],
    )
    x_test = data_lib.features_to_arrays(test, features)
    out = model.predict(x_test, batch_size=8192, verbose=0)
    names = {"ctr": "click", "ctcvr": "conversion"}
    if args.model == "esmm":
        # The hold-out conversion AUC of ESMM is its CVR head's.
        preds = {"click": out["ctr"], "conversion": out["cvr"]}
    else:
        preds = {names.get(k, k): v for k, v in out.items()}
    preds = {k: np.asarray(v) for k, v in preds.items()}
    return clock, preds, _dense_params_keras(model), labels, test, len(train)


def _deepctr(args):
    import requests

    def _no_network(*_args, **_kwargs):
        raise requests.ConnectionError("bench: no network")

    requests.get = _no_network  # DeepCTR's version check at import
    keras = bench._keras_setup(args.seed)
    _keras_policy(keras, args)
    from deepctr.feature_column import DenseFeat
    from deepctr.feature_column import SparseFeat
    from deepctr.models.multitask import ESMM
    from deepctr.models.multitask import MMOE
    from deepctr.models.multitask import PLE

    train, test, vocab, dense, labels = _load(args)
    x_tr, y_tr, x_te, prep = _encoded_peer_data(
        train, test, vocab, dense, labels
    )
    columns = [
        SparseFeat(c, vocabulary_size=len(v) + 2, embedding_dim=EMBED_DIM)
        for c, v in vocab.items()
    ]
    common = dict(l2_reg_embedding=0, seed=args.seed)
    if args.model == "esmm":
        model = ESMM(
            columns,
            tower_dnn_hidden_units=(64, 32),
            task_names=("ctr", "ctcvr"),
            **common,
        )
        x_tr = {c: x_tr[c] for c in vocab}
        x_te = {c: x_te[c] for c in vocab}
    else:
        columns += [DenseFeat(c, 1) for c in dense]
        common.update(task_types=["binary"] * 2, task_names=list(labels))
        if args.model == "mmoe":
            model = MMOE(
                columns,
                num_experts=8,
                expert_dnn_hidden_units=(64,),
                tower_dnn_hidden_units=(32,),
                **common,
            )
        else:
            model = PLE(
                columns,
                shared_expert_num=1,
                specific_expert_num=2,
                num_levels=1,
                expert_dnn_hidden_units=(64,),
                tower_dnn_hidden_units=(32,),
                **common,
            )
    clock = _Clock()
    clock.prep_s = prep
    clock.begin()
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=["binary_crossentropy"] * 2,
    )
    model.fit(
        x_tr,
        [y_tr[t].reshape(-1, 1) for t in labels],
        batch_size=args.batch_size,
        epochs=args.epochs,
        shuffle=True,
        verbose=0,
        callbacks=[_keras_clock_callback(keras, clock)],
    )
    out = model.predict(x_te, batch_size=8192, verbose=0)
    if args.model == "esmm":
        # DeepCTR's ESMM outputs (ctr, ctcvr); its CVR is their ratio.
        ctr, ctcvr = (o.reshape(-1) for o in out)
        preds = {"click": ctr, "conversion": ctcvr / (ctr + 1e-12)}
    else:
        preds = {t: o.reshape(-1) for t, o in zip(labels, out)}
    return clock, preds, _dense_params_keras(model), labels, test, len(train)


def _torch_rechub(args):
    os.environ["KERAS_BACKEND"] = "torch"
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch_rechub.basic.features import DenseFeature
    from torch_rechub.basic.features import SparseFeature
    from torch_rechub.models.multi_task import ESMM
    from torch_rechub.models.multi_task import MMOE
    from torch_rechub.models.multi_task import PLE

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train, test, vocab, dense, labels = _load(args)
    x_tr, y_tr, x_te, prep = _encoded_peer_data(
        train, test, vocab, dense, labels
    )
    sparse = [
        SparseFeature(c, vocab_size=len(v) + 2, embed_dim=EMBED_DIM)
        for c, v in vocab.items()
    ]
    if args.model == "esmm":
        # torch-rechub's ESMM takes sparse user and item features only.
        half = len(sparse) // 2
        model = ESMM(
            sparse[:half],
            sparse[half:],
            cvr_params={"dims": [64, 32]},
            ctr_params={"dims": [64, 32]},
        )
        x_tr = {c: x_tr[c] for c in vocab}
        x_te = {c: x_te[c] for c in vocab}
    else:
        features = sparse + [DenseFeature(c) for c in dense]
        common = dict(
            task_types=["classification"] * 2,
            tower_params_list=[{"dims": [32]}, {"dims": [32]}],
        )
        if args.model == "mmoe":
            model = MMOE(
                features, n_expert=8, expert_params={"dims": [64]}, **common
            )
        else:
            model = PLE(
                features,
                n_level=1,
                n_expert_specific=2,
                n_expert_shared=1,
                expert_params={"dims": [64]},
                **common,
            )
    t_tr = {k: torch.from_numpy(v) for k, v in x_tr.items()}
    t_te = {k: torch.from_numpy(v) for k, v in x_te.items()}
    target = torch.from_numpy(np.stack([y_tr[t] for t in labels], axis=1))
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    generator = torch.Generator().manual_seed(args.seed)
    n = len(target)
    clock = _Clock()
    clock.prep_s = prep
    clock.begin()
    for _ in range(args.epochs):
        clock.epoch_begin()
        model.train()
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, args.batch_size):
            idx = order[i : i + args.batch_size]
            out = model({k: v[idx] for k, v in t_tr.items()})
            y = target[idx]
            if args.model == "esmm":
                # Outputs (cvr, ctr, ctcvr): loss on ctr and ctcvr.
                loss = F.binary_cross_entropy(
                    out[:, 1], y[:, 0]
                ) + F.binary_cross_entropy(out[:, 2], y[:, 1])
            else:
                loss = F.binary_cross_entropy(
                    out[:, 0], y[:, 0]
                ) + F.binary_cross_entropy(out[:, 1], y[:, 1])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            clock.step_end()
        clock.epoch_end()
    model.eval()
    with torch.no_grad():
        out = model(t_te).numpy()
    if args.model == "esmm":
        preds = {"click": out[:, 1], "conversion": out[:, 0]}
    else:
        preds = {t: out[:, i] for i, t in enumerate(labels)}
    params = sum(
        p.numel()
        for m in model.modules()
        if not isinstance(m, torch.nn.Embedding)
        for p in m.parameters(recurse=False)
    )
    return clock, preds, params, labels, test, len(train)


def worker_train(args):
    fn = {
        "keras_mtl": _keras_mtl,
        "keras_mtl_raw": lambda a: _keras_mtl(a, raw=True),
        "deepctr": _deepctr,
        "torch_rechub": _torch_rechub,
    }[args.library]
    clock, preds, dense_params, labels, test, train_rows = fn(args)
    steady = clock.epochs[1:] or clock.epochs
    wall = statistics.median(e["wall_s"] for e in steady)
    cpu = statistics.median(e["cpu_s"] for e in steady)
    flops = 6 * int(dense_params)
    samples_per_s = train_rows / wall
    return {
        "suite": "train",
        "dataset": args.dataset,
        "model": args.model,
        "library": args.library,
        "seed": args.seed,
        "rows": train_rows,
        "batch_size": args.batch_size,
        "policy": args.policy,
        "epochs": [dict(e) for e in clock.epochs],
        "samples_per_s": samples_per_s,
        "samples_per_cpu_s": train_rows / cpu,
        "first_step_s": clock.first_step,
        "prep_s": clock.prep_s,
        "first_epoch_overhead_s": clock.epochs[0]["wall_s"] - wall,
        "peak_rss_mb": bench._peak_rss_mb(),
        "train_peak_rss_mb": clock.train_peak_rss_mb,
        "holdout_auc": _holdout_auc(test, preds, labels, args.dataset),
        "dense_params": int(dense_params),
        "flops_per_sample": flops,
        "gflops": flops * samples_per_s / 1e9,
    }


def worker_peak(args):
    """The float32 matmul peak of this machine under the thread budget."""
    import tensorflow as tf

    size = 2048
    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    matmul = tf.function(lambda a, b: tf.linalg.matmul(a, b))
    matmul(a, b).numpy()
    times = []
    for _ in range(15):
        start = time.perf_counter()
        matmul(a, b).numpy()
        times.append(time.perf_counter() - start)
    return {"matmul_gflops": 2 * size**3 / statistics.median(times) / 1e9}


# --------------------------------------------------------------------------
# Orchestration and report.
# --------------------------------------------------------------------------
def _plan(opts):
    libraries = opts.libraries or LIBRARIES
    for dataset in opts.datasets or DATASETS:
        for model in opts.models or MODELS[dataset]:
            if model not in MODELS[dataset]:
                continue
            for library in libraries:
                if library == "keras_mtl_raw" and model not in RAW_MODELS:
                    continue
                yield dataset, model, library


def suite_train(opts):
    rows = opts.rows or (100_000 if opts.quick else ROWS)
    epochs = opts.epochs_train or (2 if opts.quick else EPOCHS)
    threads = opts.threads_train or os.cpu_count()
    # On a GPU host: larger batches and a mixed policy (keras-mtl and
    # DeepCTR through Keras' global dtype policy; torch-rechub stays
    # float32).
    batch_size = opts.batch_size_train or BATCH
    policy = opts.policy_train or "float32"
    os.makedirs(bench.RESULTS_DIR, exist_ok=True)
    name = "train-quick" if opts.quick else "train"
    if batch_size != BATCH or policy != "float32":
        # A GPU-host run gets its own results file and doc section.
        name += f"-{batch_size}-{policy}"
    results_path = os.path.join(bench.RESULTS_DIR, f"{name}.jsonl")
    env = bench._thread_env(threads)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": opts.command,
        "machine": bench._machine(),
        "revision": bench._git_revision(),
        "rows": rows,
        "epochs": epochs,
        "threads": threads,
        "batch_size": batch_size,
        "policy": policy,
        "load_average_start": os.getloadavg(),
    }
    meta.update(bench._run_worker(opts.python, "versions", [], env_extra=env))
    meta.update(_run(opts.python, "peak", [], env) if not opts.quick else {})
    records = []
    with (
        open(results_path, "w") as out,
        open(results_path[: -len(".jsonl")] + ".log", "w") as log,
    ):
        out.write(json.dumps({"meta": meta}) + "\n")
        for dataset, model, library in _plan(opts):
            extra = [
                "--dataset", dataset,
                "--model", model,
                "--library", library,
                "--rows", str(rows),
                "--epochs", str(epochs),
                "--threads", str(threads),
                "--batch-size", str(batch_size),
                "--policy", policy,
                "--data-dir", opts.data_dir,
            ]  # fmt: skip
            source = bench._source_digest()
            record = _run(opts.python, "train", extra, env, log)
            record.update(
                dataset=dataset, model=model, library=library, source=source
            )
            print(json.dumps(_brief(record)), flush=True)
            records.append(record)
            out.write(json.dumps(record) + "\n")
            out.flush()
    meta["load_average_end"] = os.getloadavg()
    if opts.write_doc:
        bench.write_section(
            opts.doc, name, render_train(meta, records, results_path)
        )
    return records


def _run(python, worker, extra, env, log=None):
    cmd = [python, os.path.abspath(__file__), "--worker", worker, *extra]
    import subprocess

    full_env = dict(os.environ)
    full_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    full_env.setdefault("PYTHONHASHSEED", "0")
    full_env.update(env)
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=bench.ROOT, env=full_env, capture_output=True, text=True
    )
    if log is not None:
        log.write(f"$ {' '.join(cmd)}\n{proc.stderr[-4000:]}\n")
        log.flush()
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("BENCH_RESULT "):
            record = json.loads(line[len("BENCH_RESULT ") :])
            record["process_s"] = time.perf_counter() - start
            return record
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    return {"error": f"exit {proc.returncode}", "error_tail": "\n".join(tail)}


def _brief(record):
    keys = (
        "dataset",
        "model",
        "library",
        "samples_per_s",
        "first_step_s",
        "train_peak_rss_mb",
        "peak_rss_mb",
        "holdout_auc",
        "error",
    )
    return {k: record.get(k) for k in keys if k in record}


def _fmt(value, spec):
    return "—" if value is None else format(value, spec)


def render_train(meta, records, results_path):
    machine = meta.get("machine", {})
    ok = {
        (r["dataset"], r["model"], r["library"]): r
        for r in records
        if "error" not in r
    }
    lines = [
        "## Training throughput (`--suite train`)",
        "",
        f"- Machine: {machine.get('cpu_model')}, {machine.get('cores')} "
        f"cores, {machine.get('memory_gib')} GiB; no GPU. Load average "
        f"{_load_average(meta.get('load_average_start'))} at the start, "
        f"{_load_average(meta.get('load_average_end'))} at the end (other work "
        "shared the cores when it is above ~0.5).",
        f"- Date: {meta.get('date')}; revision {meta.get('revision')}.",
        f"- Command: `{meta.get('command')}`",
        f"- {meta.get('rows'):,} training rows, batch "
        f"{meta.get('batch_size', BATCH)}, dtype policy "
        f"{meta.get('policy') or 'float32'}, "
        f"{meta.get('epochs')} epochs, {meta.get('threads')} threads per "
        "library; one process per run, run one after the other.",
        f"- Versions: {_versions(meta)}.",
    ]
    warning = bench._source_warning(records)
    if warning:
        lines.append(warning)
    if meta.get("matmul_gflops"):
        lines.append(
            f"- Measured float32 matmul peak (2048 x 2048, TensorFlow): "
            f"{meta['matmul_gflops']:.1f} GFLOP/s."
        )
    lines += [
        "",
        "Samples/s is the median of the epochs after the first. Ratio "
        "columns are keras-mtl's samples/s over the peer's. Data prep: "
        "from the DataFrame to the library's input (keras-mtl: "
        "`from_dataframe`, with the lookups on the fast path; peers: the "
        "pandas/numpy integer encoding they need). First step: from "
        "`compile` (or the loop's start) to the end of the first `fit` "
        "batch callback; on the fast path that callback fires after the "
        f"first {STEPS_PER_EXECUTION} steps (`steps_per_execution`). "
        "First-epoch overhead: first epoch minus a steady one. Peak RSS "
        "(process): the whole process, data generation and hold-out "
        "predictions included; (training): its high-water mark at the end "
        "of the last epoch, before the hold-out predictions. AUC: hold-out, "
        "mean over the two tasks (conversion on clicked rows; ESMM: its CVR "
        "head).",
        "",
        "| data | model | library | samples/s | samples per CPU-s | "
        "data prep (s) | first step (s) | first-epoch overhead (s) | "
        "peak RSS, training (MiB) | peak RSS, process (MiB) | hold-out AUC "
        "| GFLOP/s (% of peak) | x DeepCTR | x torch-rechub |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    peak = meta.get("matmul_gflops")
    for dataset, model, library in _plan_from(records):
        r = ok.get((dataset, model, library))
        if r is None:
            lines.append(
                f"| {dataset} | {model} | {LABEL[library]} | failed "
                "| | | | | | | | | | |"
            )
            continue
        auc = statistics.mean(r["holdout_auc"].values())
        gflops = r["gflops"]
        share = f" ({100 * gflops / peak:.1f}%)" if peak else ""
        ratios = []
        for peer in ("deepctr", "torch_rechub"):
            p = ok.get((dataset, model, peer))
            if library.startswith("keras_mtl") and p:
                ratios.append(f"{r['samples_per_s'] / p['samples_per_s']:.2f}")
            else:
                ratios.append("")
        lines.append(
            f"| {dataset} | {model} | {LABEL[library]} | "
            f"{r['samples_per_s']:,.0f} | {r['samples_per_cpu_s']:,.0f} | "
            f"{_fmt(r.get('prep_s'), '.1f')} | "
            f"{_fmt(r['first_step_s'], '.1f')} | "
            f"{r['first_epoch_overhead_s']:.1f} | "
            f"{_fmt(r.get('train_peak_rss_mb'), ',.0f')} | "
            f"{r['peak_rss_mb']:,.0f} | {auc:.4f} | "
            f"{gflops:.2f}{share} | {ratios[0]} | {ratios[1]} |"
        )
    errors = [r for r in records if "error" in r]
    if errors:
        lines += ["", "Failed runs:"]
        for r in errors:
            lines.append(
                f"- {r['dataset']} / {r['model']} / {r['library']}: "
                f"{r['error']}"
            )
    lines += [
        "",
        f"Raw results: `{os.path.relpath(results_path, bench.ROOT)}`.",
    ]
    return "\n".join(lines) + "\n"


def _plan_from(records):
    seen = []
    for r in records:
        key = (r["dataset"], r["model"], r["library"])
        if key not in seen:
            seen.append(key)
    return seen


def _load_average(values):
    return "?" if not values else f"{values[0]:.1f}"


def _versions(meta):
    versions = meta.get("versions") or {}
    names = ("keras-mtl", "keras", "tensorflow", "deepctr", "torch")
    names += ("torch-rechub",)
    return ", ".join(f"{n} {versions.get(n)}" for n in names)


def _worker_parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=("train", "peak"), required=True)
    parser.add_argument("--dataset", choices=DATASETS)
    parser.add_argument("--model")
    parser.add_argument("--library", choices=LIBRARIES)
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=BATCH)
    parser.add_argument(
        "--policy",
        default="float32",
        choices=("float32", "mixed_bfloat16", "mixed_float16"),
    )
    parser.add_argument("--data-dir", default=bench.DATA_DIR)
    return parser


if __name__ == "__main__":
    worker_args = _worker_parser().parse_args()
    worker = {"train": worker_train, "peak": worker_peak}[worker_args.worker]
    bench._emit(worker(worker_args))
