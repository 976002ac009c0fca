"""In-process latency of an exported SavedModel (a benchmark, not a test).

    python bench/serve_latency.py                      # writes the report
    python bench/serve_latency.py --iterations 500 --batch-sizes 1 64 512
    python bench/serve_latency.py --out /tmp/report.md --model-dir runs/demo

Exports a ranking model with `keras_mtl.export.export_for_serving` (the
default MMoE on the synthetic funnel features, untrained: latency does not
depend on the weights), then times `serving_default` two ways:

- `tf.saved_model.load(...).signatures["serving_default"]` (TF2 eager call);
- the TF1 Session path that tensorflow_model_server uses
  (`tf.compat.v1.saved_model.loader.load` + `Session.run`).

Per batch size: p50 / p99 latency of one request over `--iterations` timed
calls (after `--warmup` untimed ones) and throughput (rows per second at one
request in flight). Inputs are prepared beforehand, so request encoding is
not timed. The same script runs unchanged on a GPU host: TensorFlow places
the model on the GPU when one is visible (the report names the devices).
"""

import argparse
import datetime
import os
import pathlib
import platform
import shlex
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _machine():
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = tf.config.list_physical_devices("GPU")
    names = []
    for gpu in gpus:
        details = tf.config.experimental.get_device_details(gpu)
        names.append(details.get("device_name", gpu.name))
    return {
        "cpu": f"{cpu}, {os.cpu_count()} logical cores",
        "gpu": ", ".join(names) or "none (CPU only)",
        "os": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "load": ", ".join(f"{v:.1f}" for v in os.getloadavg()),
    }


def _model(model_dir):
    from keras_mtl import datasets
    from keras_mtl import infer_features
    from keras_mtl import models
    from keras_mtl import runner

    if model_dir:
        model, features, tasks, _ = runner.load_run(model_dir)
        return model, features, tasks, f"run {model_dir}"
    df = datasets.synthetic_funnel(20_000, seed=0)
    features = infer_features(df, labels=datasets.FUNNEL_LABELS)
    tasks = datasets.funnel_tasks()
    model = models.mmoe(features, tasks)
    description = (
        "MMoE (8 experts of 64 units, towers of 32) on the 8 synthetic "
        f"funnel features ({model.count_params():,} parameters), 3 tasks"
    )
    return model, features, tasks, description


def _percentiles(samples):
    ms = np.asarray(samples) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def _time(call, warmup, iterations):
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--model-dir", help="a run saved by `train`")
    parser.add_argument(
        "--out", default=str(ROOT / "docs" / "SERVING_BENCHMARKS.md")
    )
    args = parser.parse_args(argv)
    sizes = args.batch_sizes or [1, 64, 512]

    import tensorflow as tf

    from keras_mtl import data
    from keras_mtl import datasets
    from keras_mtl.export import export_for_serving

    machine = _machine()
    model, features, tasks, description = _model(args.model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_for_serving(
            model, pathlib.Path(tmp) / "ranker", tasks=tasks, warmup=False
        )
        frame = datasets.synthetic_funnel(max(sizes), seed=1)
        x = data.features_to_arrays(frame, features)
        loaded = tf.saved_model.load(str(path))
        serve = loaded.signatures["serving_default"]
        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph)
        with graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(
                session, ["serve"], str(path)
            )
        sig = meta.signature_def["serving_default"]
        fetches = {k: v.name for k, v in sig.outputs.items()}
        rows = []
        for size in sizes:
            batch = {k: v[:size] for k, v in x.items()}
            tensors = {k: tf.constant(v) for k, v in batch.items()}
            feed = {sig.inputs[k].name: v for k, v in batch.items()}
            runner = session.make_callable(fetches, feed_list=list(feed))
            values = list(feed.values())
            for path_name, call in (
                ("TF2 signature", lambda t=tensors: serve(**t)),
                ("Session.run", lambda r=runner, v=values: r(*v)),
            ):
                samples = _time(call, args.warmup, args.iterations)
                p50, p99 = _percentiles(samples)
                throughput = size / float(np.mean(samples))
                rows.append((path_name, size, p50, p99, throughput))
                print(
                    f"{path_name:14s} batch {size:4d}: p50 {p50:7.3f} ms  "
                    f"p99 {p99:7.3f} ms  {throughput:12,.0f} rows/s",
                    flush=True,
                )
        session.close()

    command = "python " + " ".join(
        shlex.quote(a) for a in ["bench/serve_latency.py", *sys.argv[1:]]
    )
    lines = [
        "# Serving latency benchmarks",
        "",
        "In-process latency of the exported SavedModel's `serving_default`",
        "(`bench/serve_latency.py`): one request in flight, inputs prepared",
        "beforehand, so this is the model's own cost without RPC, queueing or",
        "server-side batching. TF Serving adds its gRPC/REST decoding and the",
        "batching timeout (serving/batching.config) on top.",
        "",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Command: `{command}`",
        f"- Model: {description}",
        f"- CPU: {machine['cpu']}",
        f"- GPU: {machine['gpu']}",
        f"- OS: {machine['os']}; Python {machine['python']}; "
        f"TensorFlow {machine['tensorflow']}",
        f"- Load average (1, 5, 15 min) when the run started: "
        f"{machine['load']} (other jobs share the machine when it is above "
        "0; p99 then measures them too)",
        f"- Timed calls per table row: {args.iterations} (after {args.warmup} "
        "untimed)",
        "",
        "| path | batch | p50 (ms) | p99 (ms) | throughput (rows/s) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for path_name, size, p50, p99, throughput in rows:
        lines.append(
            f"| {path_name} | {size} | {p50:.3f} | {p99:.3f} | "
            f"{throughput:,.0f} |"
        )
    lines += [
        "",
        "`Session.run` is the path tensorflow_model_server takes (TF1 Session",
        "loader); `TF2 signature` is `tf.saved_model.load(...).signatures`.",
        "Throughput is batch / mean latency at one request in flight; a",
        "server running several batches at once (num_batch_threads) can do",
        "more on a machine with spare cores.",
        "",
    ]
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
