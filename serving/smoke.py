"""Smoke test against a real TF Serving: export, serve, compare.

    python serving/smoke.py                  # docker compose if it can, else
                                             # a local tensorflow_model_server
    python serving/smoke.py --mode docker    # serving/docker-compose.yml (GPU)
    python serving/smoke.py --mode binary    # tensorflow_model_server on PATH
    python serving/smoke.py --model-dir runs/demo   # a run saved by `train`

Steps: train a tiny split model on synthetic funnel data (or load
`--model-dir`), export it with `keras_mtl.export.export_for_serving` into a
temporary base dir, start the server on it (with server-side batching and
warmup), wait until the version is AVAILABLE, then send gRPC and REST
requests through serving/client.py (unseen strings, a request larger than
max_batch_size, the split signatures) and compare every output with the
in-process Keras predictions (atol 1e-5). The server is stopped at the end.

Exit codes: 0 all matched; 1 a mismatch or a server failure; 2 what it
needs is missing (Docker engine + NVIDIA GPU for `docker`, the
`tensorflow_model_server` binary for `binary`); the message names it.
"""

import argparse
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
ATOL = 1e-5


def _docker_problems():
    problems = []
    docker = shutil.which("docker")
    if not docker:
        return ["no `docker` command on PATH (Docker engine + compose plugin)"]
    info = subprocess.run(
        [docker, "info", "--format", "{{json .Runtimes}}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if info.returncode != 0:
        problems.append(
            "the Docker engine is not reachable (`docker info` failed: "
            f"{info.stderr.strip()[:200]})"
        )
    elif "nvidia" not in info.stdout:
        problems.append(
            "Docker has no `nvidia` runtime (install nvidia-container-toolkit)"
        )
    compose = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True
    )
    if compose.returncode != 0:
        problems.append("no `docker compose` plugin")
    if not shutil.which("nvidia-smi"):
        problems.append("no NVIDIA GPU driver (`nvidia-smi` not found)")
    return problems


def _binary_problems():
    if shutil.which("tensorflow_model_server"):
        return []
    return ["no `tensorflow_model_server` binary on PATH"]


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_available(rest_port, name, timeout=300):
    url = f"http://127.0.0.1:{rest_port}/v1/models/{name}"
    deadline = time.time() + timeout
    last = "no answer"
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                status = json.loads(reply.read())
            states = [v["state"] for v in status["model_version_status"]]
            if "AVAILABLE" in states:
                return status
            last = states
        except OSError as err:
            last = repr(err)
        time.sleep(2)
    raise RuntimeError(f"model not AVAILABLE after {timeout} s: {last}")


def _model(model_dir):
    import keras

    from keras_mtl import data
    from keras_mtl import datasets
    from keras_mtl import infer_features
    from keras_mtl import models
    from keras_mtl import runner

    if model_dir:
        model, features, tasks, _ = runner.load_run(model_dir)
        return model, features, tasks
    keras.utils.set_random_seed(0)
    df = datasets.synthetic_funnel(4000, seed=0)
    features = infer_features(df, labels=datasets.FUNNEL_LABELS, embed_dim=8)
    tasks = datasets.funnel_tasks()
    model = models.split_model(
        features,
        tasks,
        ["user_id", "user_age", "hist_item_ids", "device"],
        user_units=[16],
        num_experts=2,
        expert_units=[16],
        tower_units=[8],
    )
    models.compile_model(model, tasks)
    x, y, sw = data.dataframe_to_arrays(df, features, tasks)
    model.fit(x, y, sample_weight=sw, batch_size=512, epochs=1, verbose=0)
    return model, features, tasks


def _requests(features, n, seed):
    import numpy as np

    from keras_mtl import datasets

    df = datasets.synthetic_funnel(max(n, 100), seed=seed).head(n)
    df = df.drop(columns=datasets.FUNNEL_LABELS)
    names = {f.name for f in features}
    if "device" in names:
        df.loc[: n // 5, "device"] = "tablet"  # unseen string
    if "user_age" in names:
        df.loc[n // 5 : 2 * n // 5, "user_age"] = np.nan
    return df[[f.name for f in features]]


def _compare(label, got, expected, tasks):
    import numpy as np

    worst = max(
        float(np.max(np.abs(got[t.name] - expected[t.name]))) for t in tasks
    )
    ok = worst <= ATOL
    print(f"  {'ok ' if ok else 'BAD'} {label}: max |diff| = {worst:.2e}")
    return ok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("auto", "docker", "binary"))
    parser.add_argument("--model-dir", help="a run saved by `train`")
    parser.add_argument("--keep", action="store_true", help="keep the export")
    args = parser.parse_args(argv)
    mode = args.mode or "auto"
    docker, binary = [], []
    if mode in ("auto", "docker"):
        docker = _docker_problems()
    if mode in ("auto", "binary"):
        binary = _binary_problems()
    if mode == "auto":
        mode = "docker" if not docker else ("binary" if not binary else None)
    elif (mode == "docker" and docker) or (mode == "binary" and binary):
        mode = None
    if mode is None:
        lines = [f"  - docker mode: {p}" for p in docker]
        lines += [f"  - binary mode: {p}" for p in binary]
        print(
            "smoke: cannot run: nothing can serve the model here.\n"
            + "\n".join(lines)
            + "\nNeeds Docker with the NVIDIA runtime and a GPU "
            "(serving/docker-compose.yml) or the tensorflow_model_server "
            "binary (tensorflow-model-server package).",
            file=sys.stderr,
        )
        return 2

    sys.path.insert(0, str(HERE))
    import client as client_lib

    from keras_mtl.export import export_for_serving

    model, features, tasks = _model(args.model_dir)
    split = any(layer.name == "user_tower" for layer in model.layers)
    work = pathlib.Path(tempfile.mkdtemp(prefix="keras_mtl_smoke_"))
    base = work / "ranker"
    version = export_for_serving(
        model,
        base,
        split=split,
        example_signatures=True,
        tasks=tasks,
        features=features,
        warmup=str(HERE / "batching.config"),
    )
    print(f"smoke: exported {version}")
    grpc_port, rest_port = 8500, 8501
    process = None
    if mode == "docker":
        env = dict(os.environ, MODEL_BASE_DIR=str(work))
        compose = [
            "docker",
            "compose",
            "-f",
            str(HERE / "docker-compose.yml"),
            "-p",
            "keras_mtl_smoke",
        ]
        subprocess.run([*compose, "up", "-d"], check=True, env=env)
    else:
        grpc_port, rest_port = _free_port(), _free_port()
        config = work / "models.config"
        config.write_text(
            (HERE / "models.config")
            .read_text()
            .replace('"/models/ranker"', json.dumps(str(base)))
        )
        process = subprocess.Popen(
            [
                "tensorflow_model_server",
                f"--port={grpc_port}",
                f"--rest_api_port={rest_port}",
                f"--model_config_file={config}",
                "--enable_batching",
                f"--batching_parameters_file={HERE / 'batching.config'}",
            ]
        )
    ok = True
    try:
        _wait_available(rest_port, "ranker")
        client = client_lib.RankingClient.from_export(
            version, host="127.0.0.1", grpc_port=grpc_port, rest_port=rest_port
        )
        from keras_mtl import data

        for n in (1, 64, 700):  # 700 > max_batch_size: sent in chunks
            rows = _requests(features, n, seed=n)
            expected = model.predict(
                data.features_to_arrays(rows, features), verbose=0
            )
            for protocol in ("grpc", "rest"):
                got = client.predict(rows, protocol=protocol)
                ok &= _compare(f"{protocol} batch {n}", got, expected, tasks)
        if split:
            rows = _requests(features, 50, seed=3)
            user_cols = list(client.signature_inputs["user_embedding"])
            for name in user_cols:
                rows[name] = [rows[name].iloc[0]] * len(rows)
            expected = model.predict(
                data.features_to_arrays(rows, features), verbose=0
            )
            got = client.score_items(
                rows.iloc[0][user_cols].to_dict(),
                rows.drop(columns=user_cols),
            )
            ok &= _compare("score_items (50 items)", got, expected, tasks)
        client.close()
    except Exception as err:  # noqa: BLE001
        print(f"smoke: FAILED: {err!r}", file=sys.stderr)
        ok = False
    finally:
        if mode == "docker":
            subprocess.run([*compose, "down"], env=env)
        elif process is not None:
            process.terminate()
            process.wait(timeout=30)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("smoke: OK" if ok else "smoke: MISMATCH", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
