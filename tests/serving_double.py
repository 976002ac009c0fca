"""Test double of tensorflow_model_server, backed by a real SavedModel.

Not shipped (tests only). The SavedModel is loaded the way the C++ server
loads it: `tf.compat.v1.saved_model.loader.load` (tag `serve`) into a TF1
Graph and Session, and requests run through the raw session call, so dtype
and shape errors come from the TensorFlow runtime itself (Python's feed
checks and casts are bypassed, as in C++). The request checks before the
run, and their status codes, follow TF Serving's `predict_util.cc` and
`servable_handle` lookup:

- unknown model name: NOT_FOUND
- unknown signature key: FAILED_PRECONDITION
- missing or extra inputs, unknown `output_filter` names: INVALID_ARGUMENT
- runtime errors (wrong dtype, wrong width): the runtime's own code
  (INVALID_ARGUMENT).

`serve_grpc` starts a loopback `PredictionService`; `serve_rest` a loopback
`/v1/models/<name>:predict` endpoint (columnar `inputs` only).
"""

import concurrent.futures
import http.server
import json
import re
import threading

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

_CODES = {code.value[0]: code for code in grpc.StatusCode}
_HTTP = {
    "INVALID_ARGUMENT": 400,
    "NOT_FOUND": 404,
    "FAILED_PRECONDITION": 412,
    "INTERNAL": 500,
}


class ServingFailure(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class SessionModel:
    """A version directory loaded through the TF1 Session loader."""

    def __init__(self, export_dir):
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            self.meta_graph = tf.compat.v1.saved_model.loader.load(
                self.session, ["serve"], str(export_dir)
            )
        self.session._extend_graph()
        self.signatures = {
            k: v
            for k, v in self.meta_graph.signature_def.items()
            if not k.startswith("__")
        }

    def run(self, signature, feeds, output_filter=None):
        """Runs a signature like the C++ server: no Python-side casting."""
        sig = self.signatures[signature]
        names = list(output_filter or sig.outputs)
        fetches = [
            self.graph.get_tensor_by_name(sig.outputs[n].name)._as_tf_output()
            for n in names
        ]
        feed = {
            self.graph.get_tensor_by_name(
                sig.inputs[k].name
            )._as_tf_output(): np.asarray(v)
            for k, v in feeds.items()
        }
        values = self.session._call_tf_sessionrun(None, feed, fetches, [], None)
        return dict(zip(names, values))

    def close(self):
        self.session.close()


def predict(models, name, signature, inputs, output_filter=()):
    """TF Serving's Predict checks, then the run; raises ServingFailure."""
    if name not in models:
        raise ServingFailure(
            "NOT_FOUND", f"Servable not found for request: Latest({name})"
        )
    model = models[name]
    signature = signature or "serving_default"
    if signature not in model.signatures:
        raise ServingFailure(
            "FAILED_PRECONDITION",
            f'Serving signature key "{signature}" not found.',
        )
    sig = model.signatures[signature]
    sent, expected = set(inputs), set(sig.inputs)
    if sent != expected:
        raise ServingFailure(
            "INVALID_ARGUMENT",
            f"input size does not match signature: {len(sent)}!="
            f"{len(expected)} len({sorted(sent)}) != len("
            f"{sorted(expected)}). Sent extra: {sorted(sent - expected)}. "
            f"Missing but required: {sorted(expected - sent)}.",
        )
    for alias in output_filter:
        if alias not in sig.outputs:
            raise ServingFailure(
                "INVALID_ARGUMENT",
                f"output tensor alias not found in signature: {alias} "
                f"Outputs expected to be in the set {sorted(sig.outputs)}.",
            )
    if len(set(output_filter)) != len(output_filter):
        raise ServingFailure(
            "INVALID_ARGUMENT", "duplicate output tensor alias"
        )
    try:
        return model.run(signature, inputs, list(output_filter))
    except tf.errors.OpError as err:
        code = _CODES.get(err.error_code, grpc.StatusCode.INTERNAL).name
        raise ServingFailure(code, err.message) from None


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, models):
        self.models = models

    def Predict(self, request, context):
        inputs = {
            k: tf.make_ndarray(proto) for k, proto in request.inputs.items()
        }
        try:
            outputs = predict(
                self.models,
                request.model_spec.name,
                request.model_spec.signature_name,
                inputs,
                list(request.output_filter),
            )
        except ServingFailure as err:
            context.abort(getattr(grpc.StatusCode, err.code), err.message)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.signature_name = (
            request.model_spec.signature_name or "serving_default"
        )
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        return response


def serve_grpc(models):
    """Starts a loopback PredictionService; returns `(server, port)`."""
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        _PredictionService(models), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


_URL = re.compile(r"^/v1/models/([^/:]+)(?:/versions/\d+)?:predict$")


def serve_rest(models):
    """Starts a loopback REST predict endpoint; returns `(server, port)`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _reply(self, status, payload):
            body = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            match = _URL.match(self.path)
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            try:
                if not match:
                    raise ServingFailure("NOT_FOUND", f"Bad path {self.path}")
                name = match.group(1)
                signature = body.get("signature_name") or "serving_default"
                sig = None
                if name in models and signature in models[name].signatures:
                    sig = models[name].signatures[signature]
                inputs = {}
                for key, value in body.get("inputs", {}).items():
                    # The REST API types JSON values by the signature.
                    dtype = (
                        tf.as_dtype(sig.inputs[key].dtype).as_numpy_dtype
                        if sig is not None and key in sig.inputs
                        else None
                    )
                    if dtype is object:
                        inputs[key] = (
                            np.asarray(value, dtype=object)
                            .astype(str)
                            .astype(object)
                        )
                    else:
                        inputs[key] = np.asarray(value, dtype=dtype)
                outputs = predict(models, name, signature, inputs)
            except ServingFailure as err:
                self._reply(_HTTP.get(err.code, 500), {"error": err.message})
                return
            self._reply(
                200,
                {"outputs": {k: v.tolist() for k, v in outputs.items()}},
            )

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, server.server_address[1]
