"""Scale-out benchmark: training samples/s with 1 and 2 local workers.

    nice -n 15 .venv/bin/python bench/scale_out.py [--steps 300] [--warmup 50]

Each configuration starts its workers as subprocesses of this file
(`--worker`), on `127.0.0.1` with free ports and a `TF_CONFIG` each, and
trains `keras_mtl.models.mmoe` (default arguments) on
`keras_mtl.datasets.synthetic_funnel` with
`keras_mtl.distribute.train` under `tf.distribute.MultiWorkerMirroredStrategy`
(for 1 worker too, so only the worker count changes). The global batch is
fixed (1024 by default): each of W workers gets 1024 / W rows a step from
its own part of the data (`keras_mtl.distribute.dataframe_dataset_fn`).
The chief records the wall time of every step (they run in lockstep); the
figure is the global batch over the median step time after `--warmup`
steps. Results go to `bench/results/scale_out.jsonl` (one line per
configuration) and to the `scale-out` section of `docs/BENCHMARKS.md`.

The workers are processes on one machine: they share its cores, so the
ratio measures what two workers cost on the same cores (all-reduce over
loopback, two TensorFlow runtimes), not the speed-up of two machines.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
RESULTS = os.path.join(ROOT, "bench", "results", "scale_out.jsonl")
TIMEOUT = 900


# --------------------------------------------------------------------------
# Worker (one process of the cluster).
# --------------------------------------------------------------------------
def worker(args):
    import tensorflow as tf

    # The strategy first: it configures the runtime's collective ops.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()

    import keras

    from keras_mtl import datasets
    from keras_mtl import distribute
    from keras_mtl import features as features_lib
    from keras_mtl import models

    keras.utils.set_random_seed(0)
    df = datasets.synthetic_funnel(args.n, seed=0)
    tasks = datasets.funnel_tasks()
    features = features_lib.infer_features(df, labels=datasets.FUNNEL_LABELS)
    times = []

    def on_step(step, logs):
        times.append(time.perf_counter())

    total = args.warmup + args.steps
    start = time.perf_counter()
    _, history = distribute.train(
        lambda: models.mmoe(features, tasks),
        distribute.dataframe_dataset_fn(
            df, features, tasks, args.global_batch, seed=0
        ),
        tasks,
        strategy,
        steps_per_epoch=total,
        on_step=on_step,
    )
    wall = time.perf_counter() - start
    steps = [b - a for a, b in zip(times, times[1:])][args.warmup - 1 :]
    record = {
        "task_id": json.loads(os.environ["TF_CONFIG"])["task"]["index"],
        "replicas": strategy.num_replicas_in_sync,
        "step_s": steps,
        "train_wall_s": wall,
        "final_loss": history["loss"][-1],
    }
    with open(args.worker, "w") as f:
        json.dump(record, f)


# --------------------------------------------------------------------------
# Orchestration.
# --------------------------------------------------------------------------
def run_config(num_workers, args, tmp_dir):
    """Runs one cluster to completion; returns the chief's record."""
    from keras_mtl.distribute import free_ports

    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(num_workers)]}
    procs, outs, logs = [], [], []
    try:
        for i in range(num_workers):
            out = os.path.join(tmp_dir, f"w{num_workers}_{i}.json")
            log = open(os.path.join(tmp_dir, f"w{num_workers}_{i}.log"), "w")
            env = dict(os.environ)
            env.update(
                KERAS_BACKEND="tensorflow",
                TF_CPP_MIN_LOG_LEVEL="2",
                CUDA_VISIBLE_DEVICES="",
                PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
                TF_CONFIG=json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": i}}
                ),
            )
            cmd = [
                sys.executable,
                HERE,
                "--worker",
                out,
                "--n",
                str(args.n),
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--global-batch",
                str(args.global_batch),
            ]
            procs.append(
                subprocess.Popen(cmd, env=env, stdout=log, stderr=log, cwd=ROOT)
            )
            outs.append(out)
            logs.append(log)
        deadline = time.monotonic() + TIMEOUT
        for i, p in enumerate(procs):
            p.wait(timeout=max(1, deadline - time.monotonic()))
            if p.returncode != 0:
                logs[i].close()
                with open(logs[i].name) as f:
                    tail = f.read()[-3000:]
                raise RuntimeError(
                    f"worker {i} of {num_workers} exited {p.returncode}:\n"
                    + tail
                )
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    with open(outs[0]) as f:
        return json.load(f)


def _machine():
    sys.path.insert(0, os.path.dirname(HERE))
    import run as bench_run

    info = bench_run._machine()
    info["revision"] = bench_run._git_revision()
    return info


def _versions():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import tensorflow, keras; "
            "print(tensorflow.__version__, keras.__version__)",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    ).stdout.split()
    return {"tensorflow": out[0], "keras": out[1]} if len(out) == 2 else {}


def render(records, meta):
    by_workers = {r["workers"]: r for r in records}
    one, two = by_workers.get(1), by_workers.get(2)
    machine = meta["machine"]
    lines = [
        "## Scale-out: 1 vs 2 local workers",
        "",
        f"`bench/scale_out.py`, run on {meta['date']} on "
        f"{machine.get('cpu_model') or 'an unknown CPU'}, "
        f"{machine.get('cores')} cores, {machine.get('memory_gib')} GiB "
        f"(revision {machine.get('revision')}; TensorFlow "
        f"{meta['versions'].get('tensorflow')}, Keras "
        f"{meta['versions'].get('keras')}; load average "
        f"{meta['load_average']} at the start). Command:",
        "",
        f"    {meta['command']}",
        "",
        "`keras_mtl.distribute.train` of `keras_mtl.models.mmoe(features, "
        "funnel_tasks())` (default arguments; features inferred from "
        f"`synthetic_funnel(n={meta['n']}, seed=0)`) under "
        "`MultiWorkerMirroredStrategy`, workers on 127.0.0.1, global batch "
        f"{meta['global_batch']}, {meta['warmup']} warm-up steps then "
        f"{meta['steps']} timed steps; samples/s is the global batch over "
        "the median step time.",
        "",
        "| workers | rows per worker a step | median step (ms) | "
        "p10-p90 step (ms) | samples/s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        lines.append(
            f"| {r['workers']} | {r['per_worker_batch']} | "
            f"{1000 * r['median_step_s']:.1f} | "
            f"{1000 * r['p10_step_s']:.1f}-{1000 * r['p90_step_s']:.1f} | "
            f"{r['samples_per_s']:.0f} |"
        )
    lines.append("")
    if one and two:
        ratio = two["samples_per_s"] / one["samples_per_s"]
        load = float(meta["load_average"].split(" / ")[0])
        shared = (
            f" (and with other jobs: load average {load:.1f} at the start)"
            if load >= 0.5 * (machine.get("cores") or 1)
            else ""
        )
        lines.append(
            f"**2 workers / 1 worker: {ratio:.2f}x** samples/s. Both "
            f"workers share the same {machine.get('cores')} cores{shared}, "
            "so this is not the speed-up of two machines: it shows what a "
            "second worker costs on the same cores (a second TensorFlow "
            "runtime, the gradient all-reduce over loopback, half the rows "
            "per step each). On separate machines each worker brings its "
            "own cores."
        )
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--global-batch", type=int, default=1024)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--results", default=RESULTS)
    parser.add_argument("--no-write-doc", action="store_true")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be positive")
    if args.worker:
        worker(args)
        return 0
    import tempfile

    meta = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": _machine(),
        "versions": _versions(),
        "python": platform.python_version(),
        "load_average": " / ".join(f"{v:.1f}" for v in os.getloadavg()),
        "command": "nice -n 15 .venv/bin/python "
        + shlex.join(["bench/scale_out.py", *(argv or sys.argv[1:])]),
        "n": args.n,
        "global_batch": args.global_batch,
        "steps": args.steps,
        "warmup": args.warmup,
    }
    records = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        for num_workers in args.workers:
            if args.global_batch % num_workers:
                parser.error("--global-batch must divide by every --workers")
            started = time.perf_counter()
            chief = run_config(num_workers, args, tmp_dir)
            steps = chief["step_s"]
            deciles = statistics.quantiles(steps, n=10)
            median = statistics.median(steps)
            record = {
                "suite": "scale-out",
                "date": meta["date"],
                "workers": num_workers,
                "strategy": "MultiWorkerMirroredStrategy",
                "replicas": chief["replicas"],
                "global_batch": args.global_batch,
                "per_worker_batch": args.global_batch // num_workers,
                "timed_steps": len(steps),
                "warmup": args.warmup,
                "median_step_s": median,
                "p10_step_s": deciles[0],
                "p90_step_s": deciles[-1],
                "samples_per_s": args.global_batch / median,
                "train_wall_s": chief["train_wall_s"],
                "process_wall_s": time.perf_counter() - started,
                "final_loss": chief["final_loss"],
                "machine": meta["machine"],
                "versions": meta["versions"],
                "load_average": meta["load_average"],
                "command": meta["command"],
            }
            records.append(record)
            print(
                f"{num_workers} worker(s): {record['samples_per_s']:.0f} "
                f"samples/s (median step {1000 * median:.1f} ms)",
                flush=True,
            )
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results, "a") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    if not args.no_write_doc:
        sys.path.insert(0, os.path.dirname(HERE))
        from run import DOC
        from run import write_section

        write_section(DOC, "scale-out", render(records, meta))
    return 0


if __name__ == "__main__":
    if "--worker" in sys.argv:
        # Exit hard: TF threads may block a normal exit, and a failed worker
        # must not hang its peer.
        try:
            main()
        except BaseException:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
        sys.stdout.flush()
        os._exit(0)
    sys.exit(main())
