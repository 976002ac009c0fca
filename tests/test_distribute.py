"""Tests of `keras_mtl.distribute` (CPU, loopback only).

Every training run happens in a subprocess (logical devices and
`TF_CONFIG` must be set before TensorFlow starts): this file doubles as the
driver script, `python tests/test_distribute.py MODE OUT_DIR ...`. Only
`TF_CONFIG` validation and the input pipelines are tested in-process.
`tests/test_cli.py` runs `train --distributed` with these helpers.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from keras_mtl.distribute import free_ports

HERE = pathlib.Path(__file__).resolve()
ROOT = HERE.parents[1]
TIMEOUT = 150
PER_REPLICA_BATCH = 32
STEPS = 100


def _env(**extra):
    env = dict(os.environ)
    env.update(
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _run(args, env=None):
    """Runs the driver to completion; kills it on timeout or failure."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE), *map(str, args)],
        env=env or _env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out[-4000:]
    return out


def _write_shards(tmp_path, num_files=4, rows=2560):
    # 640 rows a file: whole batches of 32 per shard and of 64 in all, so
    # `.repeat()` never mixes passes differently for different batch sizes.
    from keras_mtl.datasets import synthetic_funnel

    df = synthetic_funnel(rows, seed=3, num_users=50, num_items=40)
    df = df[["user_id", "item_id", "device", "position", "item_price"]].join(
        df[["click", "conversion"]]
    )
    paths = []
    for i in range(num_files):
        path = tmp_path / f"part-{i:02d}.csv"
        df.iloc[i::num_files].to_csv(path, index=False)
        paths.append(path)
    return str(tmp_path / "part-*.csv")


# ---------------------------------------------------------------------------
# Driver (runs in the subprocesses).
# ---------------------------------------------------------------------------


def _features(strings=True):
    from keras_mtl import features as F

    specs = [
        F.CategoricalFeature("user_id", vocab_size=50, embed_dim=4),
        F.CategoricalFeature("item_id", vocab_size=40, embed_dim=4),
        F.CategoricalFeature(
            "device", vocabulary=["ios", "android", "web"], embed_dim=2
        ),
        F.NumericFeature("position", mean=5.5, variance=8.0),
        F.NumericFeature("item_price", mean=3.0, variance=1.0, log1p=True),
    ]
    return [f for f in specs if strings or f.name != "device"]


def _tasks():
    from keras_mtl.task import Task

    return [Task("click"), Task("conversion", space="click", weight=2.0)]


def _model_fn(strings=True):
    import keras

    from keras_mtl.models import zoo

    keras.utils.set_random_seed(0)
    return zoo.mmoe(
        _features(strings),
        _tasks(),
        num_experts=2,
        expert_units=(8,),
        tower_units=(4,),
    )


def _save_weights(model, out_dir, name):
    np.savez(
        os.path.join(out_dir, name),
        *[np.asarray(w) for w in model.get_weights()],
    )


def _save_history(history, out_dir, name):
    with open(os.path.join(out_dir, name), "w") as f:
        json.dump(history, f)


def _logical_cpus(n):
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * n
    )


def _drive_reduce(out_dir):
    """Global-count reduction on 2 replicas vs the masked mean on one."""
    _logical_cpus(2)
    import tensorflow as tf

    from keras_mtl import distribute
    from keras_mtl import losses

    tasks = _tasks()
    rng = np.random.default_rng(0)
    n = [8, 8]
    y = {t.name: rng.integers(0, 2, 16).astype("float32") for t in tasks}
    pred = {
        t.name: rng.uniform(0.05, 0.95, (16, 1)).astype("float32")
        for t in tasks
    }
    # Uneven in-space counts: replica 0 has 1 clicked row, replica 1 has 5.
    sw = {
        "click": np.ones(16, "float32"),
        "conversion": np.array([1] + [0] * 7 + [1] * 5 + [0] * 3, "float32"),
    }
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2

    def part(ctx):
        i = ctx.replica_id_in_sync_group
        sl = slice(sum(n[:i]), sum(n[: i + 1]))
        return tuple(
            {k: tf.constant(v[sl]) for k, v in d.items()} for d in (y, pred, sw)
        )

    values = strategy.experimental_distribute_values_from_function(part)

    def fn(batch):
        g, local = distribute.global_masked_losses(tasks, *batch)
        return g, local

    g, local = strategy.run(fn, args=(values,))
    result = {}
    for i, t in enumerate(tasks):
        reps = [float(v) for v in strategy.experimental_local_results(g[i])]
        parts = [
            float(v) for v in strategy.experimental_local_results(local[i])
        ]
        expected = float(
            losses.task_loss(t)(
                y[t.name], pred[t.name], sample_weight=sw[t.name]
            )
        )
        result[t.name] = {
            "replicas": reps,
            "parts_sum": sum(parts),
            "expected": expected,
        }
    with open(os.path.join(out_dir, "reduce.json"), "w") as f:
        json.dump(result, f)


def _csv_dataset(pattern, shard, batch_size, strings=True):
    from keras_mtl import data

    return data.from_csv(
        pattern,
        _features(strings),
        _tasks(),
        batch_size=batch_size,
        shard=shard,
        drop_remainder=True,
    ).repeat()


def _slow_after(step0):
    """An `on_step` that sleeps after `step0`, leaving time for a kill."""
    if not step0:
        return None
    import time

    def on_step(step, logs):
        if step > step0:
            time.sleep(0.5)

    return on_step


def _drive_worker(out_dir, pattern, ckpt, steps):
    import tensorflow as tf

    from keras_mtl import distribute

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    task_id = json.loads(os.environ["TF_CONFIG"])["task"]["index"]

    def dataset_fn(ctx):
        return _csv_dataset(
            pattern,
            (ctx.num_input_pipelines, ctx.input_pipeline_id),
            ctx.get_per_replica_batch_size(2 * PER_REPLICA_BATCH),
        )

    model, history = distribute.train(
        _model_fn,
        dataset_fn,
        _tasks(),
        strategy,
        steps_per_epoch=int(steps),
        checkpoint_dir=None if ckpt == "-" else ckpt,
        checkpoint_every=50,
        learning_rate=3e-3,
        on_step=_slow_after(int(os.environ.get("SLOW_AFTER_STEP", "0"))),
    )
    _save_weights(model, out_dir, f"worker{task_id}.npz")
    _save_history(history, out_dir, f"worker{task_id}.json")


def _drive_single(out_dir, pattern, steps):
    """Same global batches (shard 0 batch ++ shard 1 batch), one device."""
    import tensorflow as tf

    from keras_mtl import distribute

    def dataset_fn(ctx):
        a = _csv_dataset(pattern, (2, 0), PER_REPLICA_BATCH)
        b = _csv_dataset(pattern, (2, 1), PER_REPLICA_BATCH)
        return tf.data.Dataset.zip((a, b)).map(
            lambda p, q: tf.nest.map_structure(
                lambda u, v: tf.concat([u, v], 0), p, q
            )
        )

    model, history = distribute.train(
        _model_fn,
        dataset_fn,
        _tasks(),
        steps_per_epoch=int(steps),
        learning_rate=3e-3,
    )
    _save_weights(model, out_dir, "single.npz")
    _save_history(history, out_dir, "single.json")


def _drive_mirrored(out_dir, pattern, devices, steps):
    devices = int(devices)
    if devices > 1:
        _logical_cpus(devices)
    import tensorflow as tf

    from keras_mtl import distribute

    strategy = tf.distribute.MirroredStrategy(
        [f"/cpu:{i}" for i in range(devices)]
    )
    assert strategy.num_replicas_in_sync == devices

    # `train` on the mirrored strategy.
    def dataset_fn(ctx):
        return _csv_dataset(
            pattern, None, ctx.get_per_replica_batch_size(2 * PER_REPLICA_BATCH)
        )

    model, history = distribute.train(
        _model_fn,
        dataset_fn,
        _tasks(),
        strategy,
        steps_per_epoch=int(steps),
        learning_rate=3e-3,
    )
    _save_weights(model, out_dir, f"train{devices}.npz")
    _save_history(history, out_dir, f"train{devices}.json")

    # `fit` through `build_and_compile`.
    # Keras 3 `fit` under MirroredStrategy fails on string inputs (AddN of
    # strings), so this model takes the numeric and integer features only.
    model = distribute.build_and_compile(
        lambda: _model_fn(strings=False), _tasks(), strategy, learning_rate=3e-3
    )
    ds = _csv_dataset(pattern, None, 2 * PER_REPLICA_BATCH, strings=False)
    fit = model.fit(ds, epochs=1, steps_per_epoch=int(steps), verbose=0)
    _save_weights(model, out_dir, f"fit{devices}.npz")
    _save_history(
        {k: [float(v) for v in vs] for k, vs in fit.history.items()},
        out_dir,
        f"fit{devices}.json",
    )


def main(argv):
    mode, out_dir, *rest = argv
    {
        "reduce": _drive_reduce,
        "worker": _drive_worker,
        "single": _drive_single,
        "mirrored": _drive_mirrored,
    }[mode](out_dir, *rest)


# ---------------------------------------------------------------------------
# Tests.
# ---------------------------------------------------------------------------


def _load(path):
    with np.load(path) as z:
        return [z[k] for k in sorted(z.files, key=lambda s: int(s[4:]))]


@pytest.mark.slow
def test_global_count_reduction_equals_single_process_masked_mean(tmp_path):
    _run(["reduce", tmp_path])
    result = json.loads((tmp_path / "reduce.json").read_text())
    for r in result.values():
        for value in r["replicas"]:
            np.testing.assert_allclose(value, r["expected"], rtol=1e-5)
        np.testing.assert_allclose(r["parts_sum"], r["expected"], rtol=1e-5)
    # The per-replica mean would be wrong here: the counts are uneven.
    assert result["conversion"]["expected"] > 0


def _start_workers(tmp_path, out_dir, pattern, ckpt, slow_after, tag):
    """Starts two loopback workers; their output goes to log files."""
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        task = {"type": "worker", "index": i}
        with open(tmp_path / f"log_{tag}{i}.txt", "w") as log:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(HERE),
                        "worker",
                        str(out_dir),
                        pattern,
                        str(ckpt),
                        str(STEPS),
                    ],
                    env=_env(
                        TF_CONFIG=json.dumps(
                            {"cluster": cluster, "task": task}
                        ),
                        SLOW_AFTER_STEP=str(slow_after),
                    ),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    return procs


def _wait(procs, tmp_path, tag):
    for i, p in enumerate(procs):
        p.wait(timeout=TIMEOUT)
        log = (tmp_path / f"log_{tag}{i}.txt").read_text()
        assert p.returncode == 0, log[-4000:]


def _kill(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.slow
def test_two_workers_match_a_single_process_and_resume_after_kill(tmp_path):
    pattern = _write_shards(tmp_path)
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    full.mkdir()
    resumed.mkdir()
    ckpt = tmp_path / "ckpt"
    procs = []
    try:
        # Uninterrupted 2-worker run, and one process on the same global
        # batches (shard 0 batch ++ shard 1 batch).
        procs = _start_workers(tmp_path, full, pattern, "-", 0, "full")
        _run(["single", full, pattern, STEPS])
        _wait(procs, tmp_path, "full")
        # Interrupted run: SIGKILL worker 1 once checkpoint 50 is written
        # (the workers sleep after step 50 to leave time for it), then its
        # peer, which cannot go on alone.
        procs = _start_workers(tmp_path, resumed, pattern, ckpt, 50, "a")
        state = ckpt / "checkpoint"
        deadline = time.monotonic() + TIMEOUT
        while not (state.exists() and "ckpt-50" in state.read_text()):
            assert time.monotonic() < deadline, "no checkpoint written"
            assert all(p.poll() is None for p in procs), "a worker died"
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(timeout=30)
        _kill(procs)
        assert not (resumed / "worker0.npz").exists()
        # Restart: both workers resume from ckpt-50 and finish.
        procs = _start_workers(tmp_path, resumed, pattern, ckpt, 0, "b")
        _wait(procs, tmp_path, "b")
    finally:
        _kill(procs)
    w0 = _load(full / "worker0.npz")
    ws = _load(full / "single.npz")
    for a, b in zip(w0, _load(full / "worker1.npz")):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(w0, ws):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)
    h0 = json.loads((full / "worker0.json").read_text())
    hs = json.loads((full / "single.json").read_text())
    assert len(h0["loss"]) == len(hs["loss"]) == STEPS
    for key in ("loss", "click", "conversion"):
        np.testing.assert_allclose(h0[key], hs[key], rtol=1e-3, atol=1e-5)
    # Resumed: 50 more steps, the same as the uninterrupted run.
    hr = json.loads((resumed / "worker0.json").read_text())
    assert len(hr["loss"]) == STEPS - 50
    np.testing.assert_allclose(
        hr["loss"], h0["loss"][50:], rtol=1e-4, atol=1e-6
    )
    r0 = _load(resumed / "worker0.npz")
    for a, b in zip(r0, _load(resumed / "worker1.npz")):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(r0, w0):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_mirrored_two_devices_match_one_device(tmp_path):
    pattern = _write_shards(tmp_path)
    _run(["mirrored", tmp_path, pattern, 1, STEPS])
    _run(["mirrored", tmp_path, pattern, 2, STEPS])
    for a, b in zip(
        _load(tmp_path / "train1.npz"), _load(tmp_path / "train2.npz")
    ):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)
    h1 = json.loads((tmp_path / "train1.json").read_text())
    h2 = json.loads((tmp_path / "train2.json").read_text())
    for key in ("loss", "click", "conversion"):
        np.testing.assert_allclose(h1[key], h2[key], rtol=1e-3, atol=1e-5)
    f1 = json.loads((tmp_path / "fit1.json").read_text())
    f2 = json.loads((tmp_path / "fit2.json").read_text())
    assert np.isfinite(f2["loss"]).all()
    # `fit` averages per-replica masked means, so its conversion gradients
    # (and through the shared experts everything else) drift from one
    # device: only a loose agreement is expected.
    for key in ("click_loss", "conversion_loss"):
        np.testing.assert_allclose(f1[key], f2[key], rtol=2e-2)


# ---------------------------------------------------------------------------
# In-process: TF_CONFIG validation and per-worker input pipelines.
# ---------------------------------------------------------------------------


def _tf_config(cluster=None, task=None, **extra):
    cluster = cluster or {"worker": ["127.0.0.1:2001", "127.0.0.1:2002"]}
    task = task or {"type": "worker", "index": 1}
    return json.dumps({"cluster": cluster, "task": task, **extra})


def test_parse_tf_config_accepts_a_cluster():
    from keras_mtl import distribute

    parsed = distribute.parse_tf_config(_tf_config())
    assert (parsed["task_type"], parsed["task_id"]) == ("worker", 1)
    assert parsed["num_workers"] == 2
    cluster = {"chief": ["h0:1"], "worker": ["h1:1", "h2:1"]}
    parsed = distribute.parse_tf_config(
        _tf_config(cluster, {"type": "chief", "index": 0}, environment="x")
    )
    assert parsed["num_workers"] == 3
    assert distribute.parse_tf_config("") is None
    assert distribute.parse_tf_config("  ") is None


@pytest.mark.parametrize(
    "value, message",
    [
        ("{cluster: 1}", "not valid JSON"),
        ("[1, 2]", "the top level must be a mapping"),
        (_tf_config(tasks=1), r"unknown key\(s\) \['tasks'\]"),
        (json.dumps({"task": {}}), "`cluster` must be a non-empty mapping"),
        (
            _tf_config({"worker": ["h:1"], "ps": ["h:2"]}),
            r"task type\(s\) \['ps'\]",
        ),
        (_tf_config({"worker": "h:1"}), "Received: cluster.worker='h:1'"),
        (
            _tf_config({"worker": ["h:1", "h2"]}),
            "Received: cluster.worker address 'h2'",
        ),
        (
            _tf_config({"worker": ["h:1", "h:1"]}),
            r"address\(es\) \['h:1'\] appear more than once",
        ),
        (
            _tf_config(
                {"chief": ["a:1", "b:1"], "worker": ["c:1"]},
                {"type": "worker", "index": 0},
            ),
            "`cluster.chief` holds at most one address",
        ),
        (
            json.dumps({"cluster": {"worker": ["h:1"]}}),
            "`task` must be a mapping",
        ),
        (
            _tf_config(task={"type": "chief", "index": 0}),
            "Received: task.type='chief'",
        ),
        (
            _tf_config(task={"type": "worker", "index": 2}),
            r"`task.index` must be an integer in \[0, 2\)",
        ),
        (
            _tf_config(task={"type": "worker", "index": "1"}),
            "Received: task.index='1'",
        ),
    ],
    ids=[
        "json",
        "not_mapping",
        "unknown_key",
        "no_cluster",
        "parameter_server",
        "addresses_not_list",
        "no_port",
        "duplicate",
        "two_chiefs",
        "no_task",
        "task_type",
        "index_range",
        "index_type",
    ],
)
def test_malformed_tf_config_names_what_is_wrong(value, message):
    from keras_mtl import distribute

    with pytest.raises(ValueError, match="Malformed `TF_CONFIG`") as info:
        distribute.parse_tf_config(value)
    assert info.match(message)


def _rows(ds):
    return np.concatenate(
        [x["position"] for x, _, _ in ds.as_numpy_iterator()]
    ).astype(int)


def _contexts(n):
    import tensorflow as tf

    return [
        tf.distribute.InputContext(
            num_input_pipelines=n, input_pipeline_id=i, num_replicas_in_sync=n
        )
        for i in range(n)
    ]


@pytest.mark.parametrize(
    "num_files", [3, 1], ids=["by_file", "by_record_fallback"]
)
def test_dataset_fns_give_each_worker_a_disjoint_part(tmp_path, num_files):
    from keras_mtl import data
    from keras_mtl import distribute
    from keras_mtl import features as F

    n = 960
    df = _frame_with_row_ids(n)
    features = [F.NumericFeature("position", mean=0.0, variance=1.0)]
    data.to_tfrecord(df, tmp_path / "p", features, _tasks(), num_files)
    for fn in (
        distribute.files_dataset_fn(
            str(tmp_path / "p-*"), features, _tasks(), 64, repeat=False
        ),
        distribute.dataframe_dataset_fn(
            df, features, _tasks(), 64, repeat=False
        ),
    ):
        parts = [_rows(fn(ctx)) for ctx in _contexts(2)]
        # Per-replica batches of 64 // 2, whole batches only.
        assert len(parts[0]) % 32 == 0 and len(parts[1]) % 32 == 0
        assert not set(parts[0]) & set(parts[1])
        assert len(parts[0]) + len(parts[1]) == n
    one = distribute.files_dataset_fn(
        str(tmp_path / "p-*"), features, _tasks(), 64, shuffle=False
    )(_contexts(1)[0])
    first = next(iter(one))[0]["position"].numpy()
    np.testing.assert_array_equal(first, np.arange(64))


def _frame_with_row_ids(n):
    import pandas as pd

    rng = np.random.default_rng(0)
    click = rng.integers(0, 2, n)
    return pd.DataFrame(
        {
            "position": np.arange(n),
            "click": click,
            "conversion": click * rng.integers(0, 2, n),
        }
    )


def test_files_dataset_fn_refuses_an_unknown_format():
    from keras_mtl import distribute

    with pytest.raises(ValueError, match="Received: fmt='orc'"):
        distribute.files_dataset_fn("x", [], _tasks(), 64, fmt="orc")


if __name__ == "__main__":
    # Exit hard: TF threads (generators, collectives) may block a normal
    # interpreter exit, and a failed worker must not hang its peer's test.
    try:
        main(sys.argv[1:])
    except BaseException:
        import traceback

        traceback.print_exc()
        sys.stdout.flush()
        os._exit(1)
    sys.stdout.flush()
    os._exit(0)
