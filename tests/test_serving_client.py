"""Offline tests of serving/: configs, the client and the smoke script.

The client talks to a loopback test double of tensorflow_model_server
(tests/serving_double.py) backed by the real exported SavedModel.
"""

import importlib.util
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from export_fixtures import BATCHING_CONFIG
from export_fixtures import ROOT
from export_fixtures import TASKS
from export_fixtures import USER_FEATURES
from export_fixtures import arrays
from export_fixtures import exported
from export_fixtures import request_rows
from google.protobuf import text_format
from serving_double import SessionModel
from serving_double import serve_grpc
from serving_double import serve_rest
from tensorflow_serving.config import model_server_config_pb2

from keras_mtl import export as export_lib
from keras_mtl.features import NumericFeature

SERVING = ROOT / "serving"
TASK_NAMES = [t.name for t in TASKS]
TIMEOUT = 20.0  # seconds per request: bounded even on a busy machine


def _load_client_module():
    spec = importlib.util.spec_from_file_location(
        "serving_client", SERVING / "client.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


client_lib = _load_client_module()


# (e) Configs. -----------------------------------------------------------------


def test_models_config_parses_as_model_server_config():
    config = text_format.Parse(
        (SERVING / "models.config").read_text(),
        model_server_config_pb2.ModelServerConfig(),
    )
    models = config.model_config_list.config
    assert [m.name for m in models] == ["ranker"]
    assert models[0].base_path == "/models/ranker"
    assert models[0].model_platform == "tensorflow"
    assert models[0].model_version_policy.WhichOneof("policy_choice") == (
        "latest"
    )


def test_batching_config_matches_batching_parameters():
    # BatchingParameters is not in tensorflow-serving-api's Python package;
    # keras_mtl.export declares it with TF Serving's names and numbers.
    cls = export_lib.batching_parameters_class()
    numbers = {f.name: f.number for f in cls.DESCRIPTOR.fields}
    assert numbers == {
        "max_batch_size": 1,
        "batch_timeout_micros": 2,
        "max_enqueued_batches": 3,
        "num_batch_threads": 4,
        "thread_pool_name": 5,
        "allowed_batch_sizes": 6,
        "pad_variable_length_inputs": 7,
    }
    params = export_lib.parse_batching_config(BATCHING_CONFIG)
    sizes = list(params.allowed_batch_sizes)
    assert sizes == sorted(set(sizes))
    assert sizes[-1] == params.max_batch_size.value == 512
    assert params.batch_timeout_micros.value == 1000
    assert params.num_batch_threads.value >= 1
    assert set(sizes) <= set(export_lib.DEFAULT_WARMUP_BATCH_SIZES)
    # The parser is strict: unknown fields and a wrong last size fail.
    with pytest.raises(ValueError, match="max_batch_sizes"):
        export_lib.parse_batching_config("max_batch_sizes { value: 1 }")
    with pytest.raises(ValueError, match="must equal `max_batch_size`"):
        export_lib.parse_batching_config(
            "max_batch_size { value: 64 } allowed_batch_sizes: 32"
        )


def test_compose_file_serves_gpu_with_batching_and_a_recent_image():
    import yaml

    compose = yaml.safe_load((SERVING / "docker-compose.yml").read_text())
    service = compose["services"]["ranker"]
    image = service["image"]
    match = re.fullmatch(r"tensorflow/serving:(\d+)\.(\d+)\.\d+-gpu", image)
    assert match, image
    exporter = tuple(int(v) for v in tf.__version__.split(".")[:2])
    assert tuple(int(v) for v in match.groups()) >= exporter
    flags = service["command"]
    assert "--enable_batching" in flags
    assert "--batching_parameters_file=/config/batching.config" in flags
    assert "--model_config_file=/config/models.config" in flags
    assert {"8500:8500", "8501:8501"} <= set(service["ports"])
    assert any(v.endswith(":/models:ro") for v in service["volumes"])
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"
    assert "gpu" in devices[0]["capabilities"]


# (f) The client against a loopback PredictionService double. -----------------


@pytest.fixture(scope="module")
def served():
    model, path = exported()
    session = SessionModel(path)
    grpc_server, grpc_port = serve_grpc({"ranker": session})
    rest_server, rest_port = serve_rest({"ranker": session})
    client = client_lib.RankingClient.from_export(
        path, grpc_port=grpc_port, rest_port=rest_port, timeout=TIMEOUT
    )
    assert client.host == "localhost"
    client.host = "127.0.0.1"
    yield model, client
    client.close()
    grpc_server.stop(grace=None)
    rest_server.shutdown()
    rest_server.server_close()
    session.close()


def test_grpc_predict_from_dataframe_matches_keras(served):
    model, client = served
    rows = request_rows(30, seed=11)
    expected = model.predict(arrays(rows), verbose=0)
    out = client.predict(rows)
    assert set(out) == {*TASK_NAMES, "score"}
    for task in TASK_NAMES:
        np.testing.assert_allclose(out[task], expected[task], atol=1e-5)


def test_rows_as_dicts_and_chunks(served):
    model, client = served
    rows = request_rows(7, seed=12)
    expected = model.predict(arrays(rows), verbose=0)
    columns = {k: list(v) for k, v in rows.to_dict(orient="list").items()}
    row_dicts = rows.to_dict(orient="records")
    small = client_lib.RankingClient(
        client.features,
        host=client.host,
        grpc_port=client.grpc_port,
        timeout=TIMEOUT,
        max_rows_per_request=3,  # 7 rows -> 3 requests
    )
    try:
        for form in (columns, row_dicts):
            out = small.predict(form, output_filter=["click"])
            np.testing.assert_allclose(
                out["click"], expected["click"], atol=1e-5
            )
        one = small.predict(row_dicts[0], output_filter=["click"])
        np.testing.assert_allclose(
            one["click"], expected["click"][:1], atol=1e-5
        )
    finally:
        small.close()


def test_output_filter_is_honoured(served):
    _, client = served
    out = client.predict(request_rows(4), output_filter=["score", "click"])
    assert sorted(out) == ["click", "score"]
    assert out["score"].shape == (4,)
    with pytest.raises(client_lib.ServingError) as err:
        client.predict(request_rows(2), output_filter=["ctr"])
    assert err.value.code == "INVALID_ARGUMENT"
    assert "ctr" in err.value.message


def test_status_codes_from_the_server(served):
    _, client = served
    x = arrays(request_rows(5, seed=13))
    cases = {}
    missing = {k: v for k, v in x.items() if k != "user_age"}
    cases["missing input"] = (missing, "serving_default")
    int32 = dict(x, item_id=x["item_id"].astype("int32"))
    cases["int32 for int64"] = (int32, "serving_default")
    wide = dict(x, hist_item_ids=np.concatenate([x["hist_item_ids"]] * 2, 1))
    cases["wrong width"] = (wide, "serving_default")
    for what, (inputs, signature) in cases.items():
        with pytest.raises(client_lib.ServingError) as err:
            client.predict_arrays(inputs, signature)
        assert err.value.code == "INVALID_ARGUMENT", what
        assert err.value.transport == "grpc"
    with pytest.raises(client_lib.ServingError, match="user_age"):
        client.predict_arrays(missing)
    with pytest.raises(client_lib.ServingError, match="int64.*int32"):
        client.predict_arrays(int32)
    with pytest.raises(client_lib.ServingError, match=r"\[5,20\].*\[\?,10\]"):
        client.predict_arrays(wide)
    with pytest.raises(client_lib.ServingError) as err:
        client.predict_arrays(x, "no_such_signature")
    assert err.value.code == "FAILED_PRECONDITION"
    other = client_lib.RankingClient(
        client.features,
        host=client.host,
        grpc_port=client.grpc_port,
        model_name="no_such_model",
        timeout=TIMEOUT,
    )
    try:
        with pytest.raises(client_lib.ServingError) as err:
            other.predict_arrays(x)
        assert err.value.code == "NOT_FOUND"
        assert "no_such_model" in err.value.message
    finally:
        other.close()


def test_score_items_uses_the_split_signatures(served):
    model, client = served
    rows = request_rows(25, seed=14)
    for name in USER_FEATURES:
        rows[name] = [rows[name].iloc[0]] * len(rows)
    expected = model.predict(arrays(rows), verbose=0)
    user = rows.iloc[0][USER_FEATURES].to_dict()
    items = rows.drop(columns=USER_FEATURES)
    out = client.score_items(user, items)
    for task in TASK_NAMES:
        np.testing.assert_allclose(out[task], expected[task], atol=1e-5)
    vector = client.user_embedding(user)
    assert vector.shape == (8,)
    again = client.score_items(vector, items, output_filter=["score"])
    assert list(again) == ["score"]
    np.testing.assert_allclose(again["score"], out["score"], atol=1e-6)


def test_rest_predict_and_errors(served):
    model, client = served
    rows = request_rows(6, seed=15)
    expected = model.predict(arrays(rows), verbose=0)
    out = client.predict(rows, protocol="rest", output_filter=["click"])
    assert list(out) == ["click"]
    np.testing.assert_allclose(out["click"], expected["click"], atol=1e-5)
    with pytest.raises(client_lib.ServingError) as err:
        client.predict(rows, signature="nope", protocol="rest")
    assert err.value.transport == "rest"
    assert err.value.code == "FAILED_PRECONDITION"
    assert "nope" in err.value.message


def test_client_errors_are_clear_before_sending(served):
    _, client = served
    with pytest.raises(ValueError, match="missing feature column"):
        client.predict(request_rows(3).drop(columns=["device"]))
    with pytest.raises(ValueError, match="`protocol`"):
        client.predict(request_rows(1), protocol="http2")
    with pytest.raises(ValueError, match="`timeout`"):
        client_lib.RankingClient(client.features, timeout=0)


def test_unreachable_server_times_out_with_a_status():
    # A port with nothing listening: UNAVAILABLE quickly, never a hang.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = client_lib.RankingClient(
        [NumericFeature("x")],
        host="127.0.0.1",
        grpc_port=port,
        rest_port=port,
        timeout=2.0,
    )
    for protocol in ("grpc", "rest"):
        with pytest.raises(client_lib.ServingError) as err:
            client.predict({"x": [1.0]}, protocol=protocol)
        assert err.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    client.close()


# Smoke script. --------------------------------------------------------------


def _load_smoke_module():
    spec = importlib.util.spec_from_file_location(
        "serving_smoke", SERVING / "smoke.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_script_names_what_is_missing():
    smoke = _load_smoke_module()
    if not smoke._docker_problems() or not smoke._binary_problems():
        pytest.skip("Docker+GPU or tensorflow_model_server is available")
    result = subprocess.run(
        [sys.executable, str(SERVING / "smoke.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "docker" in result.stderr
    assert "tensorflow_model_server" in result.stderr
