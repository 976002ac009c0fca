"""Clients of a keras-mtl model served by TF Serving (gRPC and REST).

Requests are built from a DataFrame, a dict of columns, a list of row dicts
or one row dict, typed by the model's feature specs (float32 numeric, int64
ids, string categoricals, `(n, max_len)` sequences) exactly as training
data is (`keras_mtl.data.features_to_arrays`). Failures raise
`ServingError` carrying the server's canonical status code
(`INVALID_ARGUMENT`, `NOT_FOUND`, ...) and message.

Example:

    client = RankingClient.from_export("models/ranker/3", host="ranker")
    scores = client.predict(candidates_df, output_filter=["score"])
    # Split export: the user side once, then every candidate.
    out = client.score_items(user_row, candidates_df)

gRPC goes through `tensorflow-serving-api`; REST uses `urllib` (no extra
dependency). REST has no `output_filter`: the client drops the other
outputs after the response.
"""

import base64
import json
import pathlib
import urllib.error
import urllib.request

import numpy as np
import pandas as pd

DEFAULT_SIGNATURE = "serving_default"
USER_SIGNATURE = "user_embedding"
ITEMS_SIGNATURE = "score_items"
USER_REPRESENTATION = "user_representation"
# TF Serving's REST handler maps canonical codes to HTTP statuses; this is
# the way back (best effort: several codes share 400).
_HTTP_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class ServingError(RuntimeError):
    """A request the server (or the network) refused.

    Attributes:
        code: str. Canonical status name, e.g. `"INVALID_ARGUMENT"`.
        message: str. The server's message.
        transport: str. `"grpc"` or `"rest"`.
        http_status: int or None. The HTTP status of a REST error.
    """

    def __init__(self, code, message, transport, http_status=None):
        self.code = code
        self.message = message
        self.transport = transport
        self.http_status = http_status
        status = f" (HTTP {http_status})" if http_status else ""
        super().__init__(f"{transport} {code}{status}: {message}")


def _load_features(features):
    from keras_mtl import features as features_lib

    if isinstance(features, (str, pathlib.Path)):
        return features_lib.load_features(features)
    return features_lib.validate_features(features)


class RankingClient:
    """Sends typed prediction requests to one TF Serving model.

    Args:
        features: list of feature specs, their configs, or the path of a
            `features.json` (as saved by `train`).
        host: str. Server host. Defaults to `"localhost"`.
        grpc_port: int. Defaults to `8500`.
        rest_port: int. Defaults to `8501`.
        model_name: str. Defaults to `"ranker"` (serving/models.config).
        version: int or None. A pinned version; None serves the latest.
        version_label: str or None. A version label of models.config
            (`"stable"`, `"canary"`); exclusive with `version`.
        timeout: float. Seconds per request. Defaults to `5.0`.
        signature_inputs: dict `{signature: [input names]}` or None (every
            feature). `from_export` reads it from the export's metadata.
        max_rows_per_request: int. Larger requests are sent in chunks
            (TF Serving refuses batches above its `max_batch_size`).
            Defaults to `512`.
    """

    def __init__(
        self,
        features,
        host="localhost",
        grpc_port=8500,
        rest_port=8501,
        model_name="ranker",
        version=None,
        version_label=None,
        timeout=5.0,
        signature_inputs=None,
        max_rows_per_request=512,
    ):
        self.features = _load_features(features)
        self.host = host
        self.grpc_port = int(grpc_port)
        self.rest_port = int(rest_port)
        self.model_name = model_name
        if version is not None and version_label is not None:
            raise ValueError(
                "Give `version` or `version_label`, not both. Received: "
                f"version={version!r}, version_label={version_label!r}"
            )
        self.version = version
        self.version_label = version_label
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(
                f"`timeout` must be a positive number of seconds. "
                f"Received: timeout={timeout!r}"
            )
        self.timeout = float(timeout)
        self.signature_inputs = dict(signature_inputs or {})
        if (
            isinstance(max_rows_per_request, bool)
            or not isinstance(max_rows_per_request, int)
            or max_rows_per_request < 1
        ):
            raise ValueError(
                "`max_rows_per_request` must be a positive integer. "
                f"Received: max_rows_per_request={max_rows_per_request!r}"
            )
        self.max_rows_per_request = max_rows_per_request
        self._channel = None
        self._stub = None

    @classmethod
    def from_export(cls, version_dir, **kwargs):
        """A client typed by an export's `assets.extra` metadata."""
        from keras_mtl.export import read_export_metadata

        meta = read_export_metadata(version_dir)
        signature_inputs = {
            name: [k for k in sig["inputs"]]
            for name, sig in meta["signatures"].items()
            if sig["method_name"] == "tensorflow/serving/predict"
        }
        kwargs.setdefault("model_name", meta["model_name"])
        return cls(
            meta["features"], signature_inputs=signature_inputs, **kwargs
        )

    # -- requests ----------------------------------------------------------

    def _names(self, signature):
        names = self.signature_inputs.get(signature)
        if names is None:
            return [f.name for f in self.features]
        return [n for n in names if n != USER_REPRESENTATION]

    def _frame(self, rows):
        if isinstance(rows, pd.DataFrame):
            return rows
        if (
            isinstance(rows, (list, tuple))
            and rows
            and all(isinstance(r, dict) for r in rows)
        ):
            return pd.DataFrame(list(rows))
        if isinstance(rows, dict) and rows:
            sequences = {f.name for f in self.features if hasattr(f, "max_len")}

            def one_value(name, value):
                if name in sequences:
                    # One sequence: a flat list of ids, or a joined string.
                    return isinstance(value, str) or (
                        isinstance(value, (list, tuple, np.ndarray))
                        and all(np.isscalar(v) for v in value)
                    )
                return np.isscalar(value) or value is None

            if all(one_value(k, v) for k, v in rows.items()):
                return pd.DataFrame([rows])
            return pd.DataFrame({k: list(v) for k, v in rows.items()})
        raise ValueError(
            "`rows` must be a DataFrame, a dict of columns, a row dict or a "
            f"list of row dicts. Received: {type(rows).__name__}"
        )

    def make_inputs(self, rows, signature=DEFAULT_SIGNATURE):
        """Typed numpy inputs of `signature` from DataFrame/dict rows."""
        from keras_mtl import data as data_lib

        names = self._names(signature)
        specs = [f for f in self.features if f.name in names]
        unknown = sorted(set(names) - {f.name for f in specs})
        if unknown:
            raise ValueError(
                f"Signature '{signature}' takes input(s) {unknown} that have "
                "no feature spec."
            )
        return data_lib.features_to_arrays(
            self._frame(rows), specs, where=f"request to '{signature}'"
        )

    def predict(
        self,
        rows,
        signature=DEFAULT_SIGNATURE,
        output_filter=None,
        protocol="grpc",
        timeout=None,
    ):
        """Predictions for `rows`: a dict of numpy arrays by output name."""
        inputs = self.make_inputs(rows, signature)
        return self.predict_arrays(
            inputs, signature, output_filter, protocol, timeout
        )

    def predict_arrays(
        self,
        inputs,
        signature=DEFAULT_SIGNATURE,
        output_filter=None,
        protocol="grpc",
        timeout=None,
    ):
        """Sends already-typed numpy inputs as they are (no conversion)."""
        if protocol not in ("grpc", "rest"):
            raise ValueError(
                "`protocol` must be 'grpc' or 'rest'. "
                f"Received: protocol={protocol!r}"
            )
        if not isinstance(inputs, dict) or not inputs:
            raise ValueError(
                "`inputs` must be a non-empty dict of arrays by input name."
            )
        inputs = {k: np.asarray(v) for k, v in inputs.items()}
        rows = {len(v) for v in inputs.values()}
        if len(rows) != 1:
            raise ValueError(
                "Every input needs the same number of rows. Received: "
                f"{ {k: len(v) for k, v in inputs.items()} }"
            )
        n = rows.pop()
        send = self._grpc if protocol == "grpc" else self._rest
        timeout = self.timeout if timeout is None else timeout
        output_filter = list(output_filter or [])
        parts = []
        for start in range(0, max(n, 1), self.max_rows_per_request):
            chunk = {
                k: v[start : start + self.max_rows_per_request]
                for k, v in inputs.items()
            }
            parts.append(send(chunk, signature, output_filter, timeout))
        if len(parts) == 1:
            return parts[0]
        return {
            k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]
        }

    # -- transports --------------------------------------------------------

    def _grpc(self, inputs, signature, output_filter, timeout):
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        if self._stub is None:
            self._channel = grpc.insecure_channel(
                f"{self.host}:{self.grpc_port}"
            )
            self._stub = prediction_service_pb2_grpc.PredictionServiceStub(
                self._channel
            )
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature
        if self.version is not None:
            request.model_spec.version.value = int(self.version)
        if self.version_label is not None:
            request.model_spec.version_label = self.version_label
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        request.output_filter.extend(output_filter)
        try:
            response = self._stub.Predict(request, timeout=timeout)
        except grpc.RpcError as err:
            raise ServingError(
                err.code().name, err.details() or str(err), "grpc"
            ) from None
        return {
            name: tf.make_ndarray(proto)
            for name, proto in response.outputs.items()
        }

    def _rest_url(self):
        url = f"http://{self.host}:{self.rest_port}/v1/models/{self.model_name}"
        if self.version is not None:
            url += f"/versions/{int(self.version)}"
        if self.version_label is not None:
            url += f"/labels/{self.version_label}"
        return url + ":predict"

    @staticmethod
    def _json_value(array):
        if array.dtype.kind in "OSU":

            def text(v):
                if isinstance(v, bytes):
                    try:
                        return v.decode("utf-8")
                    except UnicodeDecodeError:
                        return {"b64": base64.b64encode(v).decode("ascii")}
                return str(v)

            return np.vectorize(text, otypes=[object])(array).tolist()
        return array.tolist()

    def _rest(self, inputs, signature, output_filter, timeout):
        body = {
            "signature_name": signature,
            "inputs": {k: self._json_value(v) for k, v in inputs.items()},
        }
        request = urllib.request.Request(
            self._rest_url(),
            data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                payload = json.loads(reply.read().decode("utf-8"))
        except urllib.error.HTTPError as err:
            text = err.read().decode("utf-8", "replace")
            try:
                message = json.loads(text).get("error", text)
            except (json.JSONDecodeError, AttributeError):
                message = text
            code = _HTTP_CODES.get(err.code, f"HTTP_{err.code}")
            raise ServingError(code, message, "rest", err.code) from None
        except TimeoutError:
            raise ServingError(
                "DEADLINE_EXCEEDED", f"no reply within {timeout} s", "rest"
            ) from None
        except urllib.error.URLError as err:
            raise ServingError(
                "UNAVAILABLE", f"{self._rest_url()}: {err.reason}", "rest"
            ) from None
        outputs = payload.get("outputs")
        if not isinstance(outputs, dict):
            # TF Serving returns a bare value when there is one output.
            outputs = {"output": outputs}
        result = {
            name: np.asarray(value, dtype=np.float32)
            if not _is_text(value)
            else np.asarray(value, dtype=object)
            for name, value in outputs.items()
        }
        if output_filter:
            missing = sorted(set(output_filter) - set(result))
            if missing:
                raise ServingError(
                    "INVALID_ARGUMENT",
                    f"output_filter names unknown output(s) {missing}",
                    "rest",
                )
            result = {k: result[k] for k in output_filter}
        return result

    # -- split export --------------------------------------------------------

    def user_embedding(self, user, protocol="grpc", timeout=None):
        """The `(d,)` user representation of one user (`user_embedding`)."""
        out = self.predict(
            user, USER_SIGNATURE, protocol=protocol, timeout=timeout
        )
        return out[USER_REPRESENTATION][0]

    def score_items(
        self,
        user,
        items,
        output_filter=None,
        protocol="grpc",
        timeout=None,
    ):
        """Scores many items for one user with the split signatures.

        Args:
            user: the user's raw features (a row dict or one-row DataFrame),
                computed once with `user_embedding`; or an already computed
                `(d,)` user representation.
            items: the candidate items' raw features (DataFrame, dict...).
            output_filter: list of output names to return.
            protocol: `"grpc"` or `"rest"`.
            timeout: seconds per request.

        Returns:
            A dict of numpy arrays by output name, one row per item.
        """
        if isinstance(user, np.ndarray) and user.dtype.kind == "f":
            vector = np.asarray(user, dtype=np.float32).reshape(-1)
        else:
            vector = self.user_embedding(user, protocol, timeout)
        inputs = self.make_inputs(items, ITEMS_SIGNATURE)
        rows = len(next(iter(inputs.values())))
        # One row per item: TF Serving's batching needs equal batch sizes
        # across inputs.
        inputs[USER_REPRESENTATION] = np.repeat(vector[None, :], rows, axis=0)
        return self.predict_arrays(
            inputs, ITEMS_SIGNATURE, output_filter, protocol, timeout
        )

    def close(self):
        """Closes the gRPC channel."""
        if self._channel is not None:
            self._channel.close()
        self._channel = self._stub = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _is_text(value):
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, str)
