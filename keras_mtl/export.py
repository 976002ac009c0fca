"""SavedModel export for TensorFlow Serving (and ONNX for what it can hold).

`export_for_serving` writes a multi-task model as a versioned SavedModel that
TF Serving loads as is:

- `<base_dir>/<version>/`, written into a non-numeric temporary directory
  beside it and renamed in one step, so TF Serving's version scanner (which
  ignores non-numeric names) never sees a half-written version. Versions
  are never overwritten; `version=None` takes the next integer.
- `serving_default`: one named input per raw feature (float32 numeric,
  int64 ids, string categoricals; `(batch,)`, or `(batch, max_len)` for
  sequences, batch first and unknown) and one named output per task,
  `(batch, 1)` (`(batch, classes)` for multiclass), plus `score`, the
  in-graph fusion of the task outputs (see `fuse`), of shape `(batch,)`:
  flatten a task output before combining it with `score` client-side, or
  NumPy broadcasts `(n,) - (n, 1)` to `(n, n)`. The
  preprocessing (lookups, normalisation, missing values) is inside the
  graph; every input's shape is checked in the graph (`EnsureShape`), so a
  wrong width fails with INVALID_ARGUMENT instead of being reshaped.
- `split=True`: `user_embedding` (user features -> `user_representation`)
  and `score_items` (`user_representation` + item features -> task outputs
  and `score`) for models following the split contract of
  `keras_mtl.models.split`.
- `example_signatures=True`: `classify_<task>` for each binary task and
  `regress_<task>` for each binary or regression task, taking serialized
  `tf.Example`s under the input `inputs` (TF Serving's Classify and Regress
  APIs).
- `assets.extra/tf_serving_warmup_requests`: a TFRecord of `PredictionLog`s
  at every warmup batch size, which TF Serving replays before it serves.
- `assets.extra/keras_mtl_export.json`: exporting TensorFlow, Keras and
  keras-mtl versions, signatures, fusion, features and tasks.

No XLA: the graph holds neither `_XlaMustCompile` functions nor
`XlaCallModule` ops (TF Serving's standard build runs without XLA).
"""

import datetime
import json
import logging
import math
import os
import pathlib
import re
import shutil
import uuid

import keras
import numpy as np
from keras import ops

import keras_mtl
from keras_mtl import features as features_lib
from keras_mtl.layers import InputBlock
from keras_mtl.task import validate_tasks

SERVE_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"
USER_SIGNATURE = "user_embedding"
ITEMS_SIGNATURE = "score_items"
USER_TOWER = "user_tower"
ITEM_SCORER = "item_scorer"
USER_REPRESENTATION = "user_representation"
SCORE = "score"
EXAMPLES_INPUT = "inputs"
ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
METADATA_FILE = "keras_mtl_export.json"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
PREDICT_METHOD = "tensorflow/serving/predict"
# Batch sizes replayed at load: 1 plus `allowed_batch_sizes` of
# serving/batching.config (the server pads every batch to one of them).
DEFAULT_WARMUP_BATCH_SIZES = (1, 32, 64, 128, 256, 512)
FUSION_METHODS = ("weighted_sum", "product", "lexicographic")
# `product` takes logs: outputs are clipped at this floor first.
PRODUCT_EPSILON = 1e-7
# `lexicographic` keys must stay exact integers in float32.
MAX_LEXICOGRAPHIC_RANGE = 2**24
_TEMP_PREFIX = ".keras_mtl-export-"
_AUTO_NAMES = re.compile(r"^(output|outputs|inputs|input|args)_\d+$")


def _tf():
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "Export needs the TensorFlow backend (SavedModel and TF Serving). "
            f"Received: KERAS_BACKEND={keras.backend.backend()!r}"
        )
    import tensorflow as tf

    return tf


# ---------------------------------------------------------------------------
# Model introspection.
# ---------------------------------------------------------------------------


def _walk_layers(layer):
    """Every layer nested in `layer` (models, blocks and their sublayers)."""
    yield from layer._flatten_layers(include_self=False, recursive=True)


def _lookup_tables(model):
    """TensorFlow lookup tables of the model's preprocessing layers.

    `ExportArchive` must track them explicitly; tracking these (rather than
    the whole model) keeps the export from walking every layer's object
    graph, which costs seconds.
    """
    import tensorflow as tf

    tables = []
    for layer in _walk_layers(model):
        table = getattr(layer, "lookup_table", None)
        if isinstance(table, tf.saved_model.experimental.TrackableResource):
            if all(table is not t for t in tables):
                tables.append(table)
    return tables


def model_features(model):
    """Feature specs of every `InputBlock` inside `model`, in input order.

    Returns:
        A list of feature specs (empty if the model has no `InputBlock`).
    """
    found = {}
    for layer in [model, *_walk_layers(model)]:
        if isinstance(layer, InputBlock):
            for spec in layer.features:
                found.setdefault(spec.name, spec)
    structure = getattr(model, "input", None)
    order = list(structure) if isinstance(structure, dict) else []
    rank = {name: i for i, name in enumerate(order)}
    return sorted(found.values(), key=lambda f: rank.get(f.name, len(rank)))


def _dict_inputs(model, what="model"):
    structure = getattr(model, "input", None)
    if not isinstance(structure, dict) or not structure:
        raise ValueError(
            f"The {what} must take a dict of named inputs, one per raw "
            "feature (see keras_mtl.layers.make_inputs). Received inputs: "
            f"{structure!r}"
        )
    return structure


def _dict_outputs(model, what="model"):
    structure = getattr(model, "output", None)
    if not isinstance(structure, dict) or not structure:
        raise ValueError(
            f"The {what} must return a dict of outputs keyed by task name. "
            f"Received outputs: {structure!r}"
        )
    return structure


def input_signature(model, order=None):
    """`tf.TensorSpec`s of a model's named inputs, batch dimension unknown.

    Args:
        model: a functional model with a dict of named inputs.
        order: optional list of names giving the order (e.g. spec order).

    Returns:
        A dict `{name: tf.TensorSpec((None, ...), dtype, name=name)}`.
    """
    tf = _tf()
    inputs = _dict_inputs(model)
    names = list(inputs)
    if order:
        names = [n for n in order if n in inputs] + [
            n for n in names if n not in order
        ]
    specs = {}
    for name in names:
        tensor = inputs[name]
        specs[name] = tf.TensorSpec(
            (None, *tensor.shape[1:]), tf.as_dtype(tensor.dtype), name=name
        )
    return specs


def _output_dims(model):
    dims = {}
    for name, tensor in _dict_outputs(model).items():
        shape = tuple(tensor.shape[1:])
        dims[name] = int(np.prod(shape)) if shape else 1
    return dims


def _kinds(output_dims, tasks):
    """`{output: kind}`: from `tasks` where given, else None (unknown)."""
    kinds = {name: None for name in output_dims}
    for task in tasks or ():
        if task.name in kinds:
            kinds[task.name] = task.kind
    for name, dim in output_dims.items():
        if dim > 1:
            kinds[name] = "multiclass"
    return kinds


def is_separable(model):
    """Whether `model` follows the split contract (`user_tower` + scorer)."""
    names = {layer.name for layer in getattr(model, "layers", ())}
    return USER_TOWER in names and ITEM_SCORER in names


def _split_parts(model):
    if not is_separable(model):
        raise ValueError(
            "`split=True` needs a model with a separable user side: nested "
            f"models named '{USER_TOWER}' and '{ITEM_SCORER}' (build one with "
            "keras_mtl.models.split_model). Model "
            f"'{model.name}' has layers "
            f"{[layer.name for layer in model.layers][:12]}."
        )
    user_tower = model.get_layer(USER_TOWER)
    item_scorer = model.get_layer(ITEM_SCORER)
    user_inputs = _dict_inputs(user_tower, f"'{USER_TOWER}'")
    item_inputs = _dict_inputs(item_scorer, f"'{ITEM_SCORER}'")
    _dict_outputs(item_scorer, f"'{ITEM_SCORER}'")
    if USER_REPRESENTATION not in item_inputs:
        raise ValueError(
            f"'{ITEM_SCORER}' must take an input named "
            f"'{USER_REPRESENTATION}'. Its inputs: {sorted(item_inputs)}"
        )
    user_out = user_tower.output
    if isinstance(user_out, (dict, list, tuple)) or len(user_out.shape) != 2:
        raise ValueError(
            f"'{USER_TOWER}' must return one (batch, d) tensor. "
            f"Received: {user_out!r}"
        )
    rep_dim = item_inputs[USER_REPRESENTATION].shape[-1]
    if user_out.shape[-1] != rep_dim:
        raise ValueError(
            f"'{USER_TOWER}' returns width {user_out.shape[-1]} but "
            f"'{ITEM_SCORER}' takes '{USER_REPRESENTATION}' of width "
            f"{rep_dim}."
        )
    item_names = set(item_inputs) - {USER_REPRESENTATION}
    model_names = set(_dict_inputs(model))
    overlap = sorted(set(user_inputs) & item_names)
    if overlap or set(user_inputs) | item_names != model_names:
        raise ValueError(
            f"The inputs of '{USER_TOWER}' ({sorted(user_inputs)}) and "
            f"'{ITEM_SCORER}' ({sorted(item_names)}) must split the model's "
            f"inputs ({sorted(model_names)}) without overlap."
        )
    return user_tower, item_scorer


# ---------------------------------------------------------------------------
# Score fusion.
# ---------------------------------------------------------------------------


def _check_weights(weights, fusable, method):
    if not isinstance(weights, dict) or not weights:
        raise ValueError(
            f"`fusion.weights` of method '{method}' must be a non-empty "
            f"dict {{task: weight}}. Received: weights={weights!r}"
        )
    checked = {}
    for name, weight in weights.items():
        if name not in fusable:
            raise ValueError(
                f"`fusion.weights` names '{name}', which is not a "
                f"one-dimensional task output. Fusable outputs: "
                f"{sorted(fusable)}"
            )
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not math.isfinite(weight)
        ):
            raise ValueError(
                f"`fusion.weights['{name}']` must be a finite number. "
                f"Received: {weight!r}"
            )
        checked[name] = float(weight)
    return checked


def resolve_fusion(fusion, output_dims, tasks=None):
    """Validates a fusion config and fills in its defaults.

    Accepted forms:

    - `None`: weighted sum with weight 1 over the binary tasks (over every
      one-dimensional output when `tasks` is not given);
    - `{task: weight, ...}`: weighted sum with these weights;
    - `{"method": "weighted_sum" | "product", "weights": {task: weight}}`;
    - `{"method": "lexicographic", "order": [task, ...], "buckets": int,
      "ranges": {task: [low, high]}}`; `buckets` defaults to 1000 for two
      tasks (`floor(2**24 ** (1 / len(order)))` in general, capped at 1000)
      and `ranges` to `[0, 1]` per task (give them for regression outputs).

    Args:
        fusion: the config, as above.
        output_dims: dict `{output name: width}` of the model, or a model.
        tasks: optional list of `keras_mtl.Task` (task kinds for defaults).

    Returns:
        The canonical config dict (JSON-serialisable).
    """
    if not isinstance(output_dims, dict):
        output_dims = _output_dims(output_dims)
    tasks = validate_tasks(tasks) if tasks else None
    kinds = _kinds(output_dims, tasks)
    fusable = [n for n, d in output_dims.items() if d == 1]
    if SCORE in output_dims:
        raise ValueError(
            f"A task output is named '{SCORE}', the name of the fused score. "
            "Rename the task."
        )
    if fusion is None:
        binary = [n for n in fusable if kinds[n] == "binary"]
        chosen = binary or fusable
        if not chosen:
            raise ValueError(
                "The model has no one-dimensional output to fuse into a "
                f"score. Outputs: {output_dims}"
            )
        return {"method": "weighted_sum", "weights": dict.fromkeys(chosen, 1.0)}
    if not isinstance(fusion, dict):
        raise ValueError(
            "`fusion` must be None, a dict {task: weight} or a dict with a "
            f"`method`. Received: fusion={fusion!r}"
        )
    if "method" not in fusion:
        return {
            "method": "weighted_sum",
            "weights": _check_weights(fusion, fusable, "weighted_sum"),
        }
    method = fusion["method"]
    if method not in FUSION_METHODS:
        raise ValueError(
            f"`fusion.method` must be one of {FUSION_METHODS}. "
            f"Received: method={method!r}"
        )
    allowed = {
        "weighted_sum": {"method", "weights"},
        "product": {"method", "weights"},
        "lexicographic": {"method", "order", "buckets", "ranges"},
    }[method]
    extra = sorted(set(fusion) - allowed)
    if extra:
        raise ValueError(
            f"`fusion` field(s) {extra} do not apply to method '{method}'. "
            f"It takes: {sorted(allowed)}"
        )
    if method in ("weighted_sum", "product"):
        return {
            "method": method,
            "weights": _check_weights(fusion.get("weights"), fusable, method),
        }
    order = fusion.get("order")
    if (
        not isinstance(order, (list, tuple))
        or not order
        or len(set(order)) != len(order)
    ):
        raise ValueError(
            "`fusion.order` must be a non-empty list of distinct task names, "
            f"most important first. Received: order={order!r}"
        )
    for name in order:
        if name not in fusable:
            raise ValueError(
                f"`fusion.order` names '{name}', which is not a "
                f"one-dimensional task output. Fusable outputs: "
                f"{sorted(fusable)}"
            )
    default_buckets = min(
        1000, int(math.floor(MAX_LEXICOGRAPHIC_RANGE ** (1 / len(order))))
    )
    buckets = fusion.get("buckets", default_buckets)
    if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 2:
        raise ValueError(
            "`fusion.buckets` must be an integer >= 2. "
            f"Received: buckets={buckets!r}"
        )
    if buckets ** len(order) > MAX_LEXICOGRAPHIC_RANGE:
        raise ValueError(
            f"`fusion.buckets`**len(order) = {buckets}**{len(order)} exceeds "
            f"2**24, so float32 scores would merge buckets. Use at most "
            f"{default_buckets} buckets for {len(order)} tasks."
        )
    ranges = dict(fusion.get("ranges") or {})
    unknown = sorted(set(ranges) - set(order))
    if unknown:
        raise ValueError(
            f"`fusion.ranges` names task(s) {unknown} not in `fusion.order` "
            f"{list(order)}."
        )
    checked = {}
    for name in order:
        if name not in ranges and kinds[name] == "regression":
            raise ValueError(
                f"`fusion.ranges` needs [low, high] for regression task "
                f"'{name}' (the default [0, 1] fits probabilities only)."
            )
        low, high = ranges.get(name, (0.0, 1.0))
        if (
            not all(
                isinstance(v, (int, float))
                and not isinstance(v, bool)
                and math.isfinite(v)
                for v in (low, high)
            )
            or not high > low
        ):
            raise ValueError(
                f"`fusion.ranges['{name}']` must be [low, high] with finite "
                f"low < high. Received: {ranges.get(name)!r}"
            )
        checked[name] = [float(low), float(high)]
    return {
        "method": "lexicographic",
        "order": list(order),
        "buckets": buckets,
        "ranges": checked,
    }


def parse_fusion(text):
    """Reads a fusion config from a command-line string.

    Accepts JSON (`'{"method": "product", "weights": {"click": 1}}'`), a
    path to a JSON file, or weights `"click=1,conversion=0.5"` (weighted
    sum).
    """
    if text is None:
        return None
    text = text.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"`--fusion` is not valid JSON ({err}).") from None
    if text.endswith(".json") or os.path.isfile(text):
        path = pathlib.Path(text)
        if not path.is_file():
            raise ValueError(f"`--fusion` file not found: {text}")
        return json.loads(path.read_text(encoding="utf-8"))
    weights = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ValueError(
                "`--fusion` must be JSON, a .json file or weights like "
                f"'click=1,conversion=0.5'. Received: {text!r}"
            )
    return weights


def fuse(outputs, fusion):
    """The fused ranking score of a batch, `(batch,)` float32.

    With `y_k` the `(batch,)` output of task `k` (a probability for binary
    tasks):

    - `weighted_sum`: `score = sum_k w_k * y_k`.
    - `product`: `score = prod_k max(y_k, 1e-7) ** w_k`, computed as
      `exp(sum_k w_k * log(max(y_k, 1e-7)))`.
    - `lexicographic` over `order = [t_0, ..., t_{K-1}]` with `B` buckets:
      `u_k = clip((y_k - low_k) / (high_k - low_k), 0, 1)`,
      `q_k = min(floor(u_k * B), B - 1)` for `k < K - 1` and
      `q_{K-1} = u_{K-1} * (B - 1)` (the last key stays continuous), and
      `score = sum_k q_k * B ** (K - 1 - k)`. Lower keys add at most
      `B ** (K - 1 - k) - 1`, so a higher bucket of `t_0` always ranks
      first and `t_1` only breaks ties inside a bucket of `t_0` ("rank by
      CTR, then by follow rate"). `B ** K <= 2 ** 24` keeps it exact in
      float32.

    Args:
        outputs: dict of task outputs, `(batch,)` or `(batch, 1)`.
        fusion: a config from `resolve_fusion`.

    Returns:
        A `(batch,)` float32 tensor.
    """

    def flat(name):
        return ops.reshape(ops.cast(outputs[name], "float32"), (-1,))

    method = fusion["method"]
    if method == "weighted_sum":
        terms = [w * flat(n) for n, w in fusion["weights"].items()]
        score = terms[0]
        for term in terms[1:]:
            score = score + term
        return score
    if method == "product":
        logs = [
            w * ops.log(ops.maximum(flat(n), PRODUCT_EPSILON))
            for n, w in fusion["weights"].items()
        ]
        total = logs[0]
        for term in logs[1:]:
            total = total + term
        return ops.exp(total)
    order, buckets = fusion["order"], float(fusion["buckets"])
    score = None
    for k, name in enumerate(order):
        low, high = fusion["ranges"][name]
        unit = ops.clip((flat(name) - low) / (high - low), 0.0, 1.0)
        if k < len(order) - 1:
            key = ops.minimum(ops.floor(unit * buckets), buckets - 1.0)
        else:
            key = unit * (buckets - 1.0)
        term = key * float(buckets ** (len(order) - 1 - k))
        score = term if score is None else score + term
    return score


class _ScoreFusion(keras.layers.Layer):
    """`fuse` as a layer (used to put `score` into the ONNX graph)."""

    def __init__(self, fusion, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.fusion = fusion

    def call(self, outputs):
        return fuse(outputs, self.fusion)

    def compute_output_shape(self, input_shape):
        return (next(iter(input_shape.values()))[0],)


# ---------------------------------------------------------------------------
# Signature functions.
# ---------------------------------------------------------------------------


def _checked(tf, inputs, specs):
    # EnsureShape runs in the server: a wrong width is INVALID_ARGUMENT,
    # never silently reshaped.
    return {
        name: tf.ensure_shape(inputs[name], specs[name].shape, name=name)
        for name in specs
    }


def _forward(tf, model, specs):
    """One traced forward pass, shared by every signature that calls it."""
    return tf.function(
        lambda inputs: model(inputs, training=False),
        input_signature=[specs],
        autograph=False,
    )


def _add_endpoint(tf, archive, name, fn, signature):
    # Traced once here; ExportArchive then reuses the concrete function
    # instead of tracing it again for variables and for the signature.
    function = tf.function(fn, input_signature=signature, autograph=False)
    function.get_concrete_function()
    archive.add_endpoint(name, function)


def _predict_fn(tf, forward, specs, output_names, fusion):
    def serve(inputs):
        outputs = forward(_checked(tf, inputs, specs))
        result = {name: outputs[name] for name in output_names}
        result[SCORE] = fuse(result, fusion)
        return result

    return serve


def _user_fn(tf, user_tower, specs):
    def user_embedding(inputs):
        vector = user_tower(_checked(tf, inputs, specs), training=False)
        return {USER_REPRESENTATION: vector}

    return user_embedding


def _items_fn(tf, item_scorer, specs, output_names, fusion):
    item_names = [n for n in specs if n != USER_REPRESENTATION]
    width = specs[USER_REPRESENTATION].shape[-1]

    def score_items(inputs):
        checked = _checked(tf, inputs, specs)
        user = checked.pop(USER_REPRESENTATION)
        if item_names:
            # One user row is broadcast to every item row (without
            # server-side batching; with it, send one row per item).
            rows = tf.shape(checked[item_names[0]])[0]
            user = tf.broadcast_to(user, tf.stack([rows, width]))
        outputs = item_scorer(
            {**checked, USER_REPRESENTATION: user}, training=False
        )
        result = {name: outputs[name] for name in output_names}
        result[SCORE] = fuse(result, fusion)
        return result

    return score_items


def _missing_value(tf, dtype):
    if dtype == tf.string:
        return ""
    if dtype.is_floating:
        return float("nan")
    return -1


def example_parser(specs):
    """A function parsing serialized `tf.Example`s into model inputs.

    Scalar features are `FixedLenFeature`s whose default is the missing value
    (NaN, -1 or ""); sequences are `VarLenFeature`s that keep their last
    `max_len` entries, left-aligned and padded with the missing value (as
    `keras_mtl.data` does).
    """
    tf = _tf()
    parse_spec = {}
    for name, spec in specs.items():
        if spec.shape.rank == 1:
            parse_spec[name] = tf.io.FixedLenFeature(
                [], spec.dtype, default_value=_missing_value(tf, spec.dtype)
            )
        else:
            parse_spec[name] = tf.io.VarLenFeature(spec.dtype)

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, parse_spec)
        out = {}
        for name, spec in specs.items():
            value = parsed[name]
            if spec.shape.rank == 1:
                out[name] = value
                continue
            width = spec.shape[-1]
            ragged = tf.RaggedTensor.from_sparse(value)[:, -width:]
            out[name] = ragged.to_tensor(
                default_value=_missing_value(tf, spec.dtype),
                shape=[None, width],
            )
        return out

    return parse


def _classify_fn(tf, forward, specs, task):
    parse = example_parser(specs)

    def classify(inputs):
        outputs = forward(parse(inputs))
        p = tf.reshape(tf.cast(outputs[task], tf.float32), [-1, 1])
        rows = tf.shape(p)[0]
        classes = tf.tile(tf.constant([["0", "1"]]), tf.stack([rows, 1]))
        return {"scores": tf.concat([1.0 - p, p], axis=1), "classes": classes}

    return classify


def _regress_fn(tf, forward, specs, task):
    parse = example_parser(specs)

    def regress(inputs):
        outputs = forward(parse(inputs))
        return {"outputs": tf.reshape(tf.cast(outputs[task], tf.float32), [-1])}

    return regress


# ---------------------------------------------------------------------------
# Warmup requests.
# ---------------------------------------------------------------------------


def _sample_column(spec, feature, n, rng):
    """`n` plausible raw values of one input, with unseen and missing ones."""
    shape = (n, *spec.shape[1:])
    size = int(np.prod(shape))
    dtype = spec.dtype.name
    if feature is None:
        if dtype == "string":
            return np.full(shape, b"", dtype=object)
        return np.zeros(shape, dtype=dtype)
    if isinstance(feature, features_lib.NumericFeature):
        scale = math.sqrt(feature.variance) or 1.0
        values = feature.mean + scale * rng.standard_normal(size)
        values[::7] = np.nan
        return values.reshape(shape).astype("float32")
    if feature.vocabulary is not None:
        pool = list(feature.vocabulary)
    elif feature.vocab_size is not None:
        pool = list(range(min(feature.vocab_size, 1000)))
    else:
        pool = [f"value_{i}" if dtype == "string" else i for i in range(100)]
    unseen = "__unseen__" if dtype == "string" else 2**40
    pool = [*pool, unseen, feature.missing_value]
    values = [pool[i] for i in rng.integers(0, len(pool), size)]
    if dtype == "string":
        return np.asarray(
            [str(v).encode() for v in values], dtype=object
        ).reshape(shape)
    return np.asarray(values, dtype="int64").reshape(shape)


def sample_inputs(specs, features, batch_size, seed=0):
    """Synthetic raw inputs for a signature (warmup requests, benchmarks).

    Values come from each feature's vocabulary, plus unseen and missing
    values; inputs without a spec are zeros (or empty strings).

    Args:
        specs: dict of `tf.TensorSpec` (see `input_signature`).
        features: list of feature specs (may be empty).
        batch_size: int. Rows.
        seed: int. Defaults to `0`.

    Returns:
        A dict of numpy arrays keyed by input name.
    """
    by_name = {f.name: f for f in features or ()}
    rng = np.random.default_rng(seed)
    return {
        name: _sample_column(spec, by_name.get(name), batch_size, rng)
        for name, spec in specs.items()
    }


def _check_batch_sizes(warmup):
    if warmup is True:
        return list(DEFAULT_WARMUP_BATCH_SIZES)
    if warmup is False or warmup is None:
        return []
    if isinstance(warmup, (str, os.PathLike)):
        params = parse_batching_config(warmup)
        return sorted({1, *params.allowed_batch_sizes})
    sizes = list(warmup) if isinstance(warmup, (list, tuple)) else None
    if not sizes or not all(
        isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in sizes
    ):
        raise ValueError(
            "`warmup` must be True, False, a list of positive batch sizes or "
            f"a batching config path. Received: warmup={warmup!r}"
        )
    return sorted(set(sizes))


def _write_warmup(path, model_name, predict_sigs, example_sigs, sizes):
    """Writes the warmup TFRecord; returns the number of records."""
    tf = _tf()
    from tensorflow_serving.apis import classification_pb2
    from tensorflow_serving.apis import predict_pb2
    from tensorflow_serving.apis import prediction_log_pb2
    from tensorflow_serving.apis import regression_pb2

    count = 0
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, (specs, features) in predict_sigs.items():
            for size in sizes:
                request = predict_pb2.PredictRequest()
                request.model_spec.name = model_name
                request.model_spec.signature_name = signature
                values = sample_inputs(specs, features, size, seed=size)
                for name, value in values.items():
                    request.inputs[name].CopyFrom(
                        tf.make_tensor_proto(value, dtype=specs[name].dtype)
                    )
                log = prediction_log_pb2.PredictionLog(
                    predict_log=prediction_log_pb2.PredictLog(request=request)
                )
                writer.write(log.SerializeToString())
                count += 1
        for signature, (method, specs, features) in example_sigs.items():
            for size in sizes:
                values = sample_inputs(specs, features, size, seed=size)
                examples = to_examples(values)
                if method == CLASSIFY_METHOD:
                    request = classification_pb2.ClassificationRequest()
                    log_field = "classify_log"
                    log_cls = prediction_log_pb2.ClassifyLog
                else:
                    request = regression_pb2.RegressionRequest()
                    log_field = "regress_log"
                    log_cls = prediction_log_pb2.RegressLog
                request.model_spec.name = model_name
                request.model_spec.signature_name = signature
                request.input.example_list.examples.extend(examples)
                log = prediction_log_pb2.PredictionLog(
                    **{log_field: log_cls(request=request)}
                )
                writer.write(log.SerializeToString())
                count += 1
    return count


def to_examples(columns):
    """Rows of a dict of numpy columns as `tf.train.Example` protos.

    NaN floats, -1 ids and empty strings are left out (the parser fills the
    missing value back in); sequences drop their padding.
    """
    tf = _tf()
    columns = {k: np.asarray(v) for k, v in columns.items()}
    n = len(next(iter(columns.values())))
    examples = []
    for i in range(n):
        feature = {}
        for name, column in columns.items():
            value = np.atleast_1d(column[i])
            if value.dtype.kind == "f":
                kept = value[~np.isnan(value)]
                if kept.size:
                    feature[name] = tf.train.Feature(
                        float_list=tf.train.FloatList(value=kept.tolist())
                    )
            elif value.dtype.kind in "iu":
                kept = value[value != -1]
                if kept.size:
                    feature[name] = tf.train.Feature(
                        int64_list=tf.train.Int64List(value=kept.tolist())
                    )
            else:
                kept = [
                    v if isinstance(v, bytes) else str(v).encode()
                    for v in value.tolist()
                ]
                kept = [v for v in kept if v]
                if kept:
                    feature[name] = tf.train.Feature(
                        bytes_list=tf.train.BytesList(value=kept)
                    )
        examples.append(
            tf.train.Example(features=tf.train.Features(feature=feature))
        )
    return examples


# ---------------------------------------------------------------------------
# Batching config (TF Serving's BatchingParameters).
# ---------------------------------------------------------------------------

# tensorflow-serving-api's Python package does not ship
# session_bundle_config_pb2, so BatchingParameters is declared here with the
# field names, numbers and types of
# tensorflow_serving/servables/tensorflow/session_bundle_config.proto.
BATCHING_FIELDS = (
    ("max_batch_size", 1, "google.protobuf.Int64Value"),
    ("batch_timeout_micros", 2, "google.protobuf.Int64Value"),
    ("max_enqueued_batches", 3, "google.protobuf.Int64Value"),
    ("num_batch_threads", 4, "google.protobuf.Int64Value"),
    ("thread_pool_name", 5, "google.protobuf.StringValue"),
    ("allowed_batch_sizes", 6, "repeated int64"),
    ("pad_variable_length_inputs", 7, "bool"),
)
_BATCHING_CLASS = []


def batching_parameters_class():
    """The `tensorflow.serving.BatchingParameters` message class."""
    if _BATCHING_CLASS:
        return _BATCHING_CLASS[0]
    from google.protobuf import descriptor_pb2
    from google.protobuf import descriptor_pool
    from google.protobuf import message_factory
    from google.protobuf import wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    proto = descriptor_pb2.FileDescriptorProto(
        name="keras_mtl/batching_parameters.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=[wrappers.name],
    )
    message = proto.message_type.add(name="BatchingParameters")
    field_cls = descriptor_pb2.FieldDescriptorProto
    for name, number, kind in BATCHING_FIELDS:
        field = message.field.add(name=name, number=number)
        if kind.startswith("google."):
            field.type = field_cls.TYPE_MESSAGE
            field.type_name = "." + kind
            field.label = field_cls.LABEL_OPTIONAL
        elif kind == "repeated int64":
            field.type = field_cls.TYPE_INT64
            field.label = field_cls.LABEL_REPEATED
        else:
            field.type = field_cls.TYPE_BOOL
            field.label = field_cls.LABEL_OPTIONAL
    pool.Add(proto)
    descriptor = pool.FindMessageTypeByName(
        "tensorflow.serving.BatchingParameters"
    )
    _BATCHING_CLASS.append(message_factory.GetMessageClass(descriptor))
    return _BATCHING_CLASS[0]


def parse_batching_config(path_or_text):
    """Parses a `--batching_parameters_file` as TF Serving does.

    Args:
        path_or_text: path of the file, or its text.

    Returns:
        A `BatchingParameters` message.

    Raises:
        ValueError: unknown fields or bad values, or `allowed_batch_sizes`
            not increasing or not ending at `max_batch_size`.
    """
    from google.protobuf import text_format

    text = str(path_or_text)
    if os.path.isfile(text):
        text = pathlib.Path(text).read_text(encoding="utf-8")
    params = batching_parameters_class()()
    try:
        text_format.Parse(text, params)
    except text_format.ParseError as err:
        raise ValueError(f"Invalid batching config: {err}") from None
    sizes = list(params.allowed_batch_sizes)
    if sizes:
        if sizes != sorted(set(sizes)) or sizes[0] <= 0:
            raise ValueError(
                "`allowed_batch_sizes` must be positive and strictly "
                f"increasing. Received: {sizes}"
            )
        if not params.HasField("max_batch_size") or (
            sizes[-1] != params.max_batch_size.value
        ):
            raise ValueError(
                "The last `allowed_batch_sizes` entry must equal "
                f"`max_batch_size`. Received: allowed_batch_sizes={sizes}, "
                f"max_batch_size={params.max_batch_size.value}"
            )
    return params


# ---------------------------------------------------------------------------
# Version directories.
# ---------------------------------------------------------------------------


def list_versions(base_dir):
    """Sorted integer versions present in `base_dir` (numeric dir names)."""
    base = pathlib.Path(base_dir)
    if not base.is_dir():
        return []
    return sorted(
        int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()
    )


def _check_version(version, base):
    if version is None:
        versions = list_versions(base)
        return (versions[-1] + 1) if versions else 1
    if isinstance(version, str) and version.isdigit():
        version = int(version)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(
            "`version` must be a positive integer (TF Serving reads numeric "
            f"directory names). Received: version={version!r}"
        )
    if (base / str(version)).exists():
        raise ValueError(
            f"`version` {version} already exists in {base}; versions are "
            f"never overwritten. Existing: {list_versions(base)}; the next "
            f"free one is {max(list_versions(base) or [0]) + 1}."
        )
    return version


def _fsync_tree(root):
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            fd = os.open(os.path.join(dirpath, filename), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _patch_method_names(tf, export_dir, methods):
    """Sets Classify/Regress method names, then re-fingerprints the model."""
    if not methods:
        return
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

    path = os.path.join(export_dir, "saved_model.pb")
    proto = saved_model_pb2.SavedModel()
    with open(path, "rb") as f:
        proto.ParseFromString(f.read())
    for meta_graph in proto.meta_graphs:
        for name, method in methods.items():
            meta_graph.signature_def[name].method_name = method
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())
    fingerprint = os.path.join(export_dir, "fingerprint.pb")
    if os.path.exists(fingerprint):
        with open(fingerprint, "wb") as f:
            f.write(fingerprinting.CreateFingerprintDef(export_dir))


def _describe_outputs(tf, export_dir):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    signatures = {}
    for name, sig in proto.meta_graphs[0].signature_def.items():
        if name.startswith("__"):
            continue

        def info(tensors):
            return {
                key: {
                    "dtype": tf.as_dtype(t.dtype).name,
                    "shape": [d.size for d in t.tensor_shape.dim],
                }
                for key, t in sorted(tensors.items())
            }

        signatures[name] = {
            "method_name": sig.method_name,
            "inputs": info(sig.inputs),
            "outputs": info(sig.outputs),
        }
    return signatures


def read_export_metadata(version_dir):
    """The `assets.extra/keras_mtl_export.json` of an exported version."""
    path = pathlib.Path(version_dir) / ASSETS_EXTRA / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No export metadata at {path}.")
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------
# Export.
# ---------------------------------------------------------------------------


def export_for_serving(
    model,
    base_dir,
    version=None,
    fusion=None,
    warmup=True,
    split=False,
    example_signatures=False,
    tasks=None,
    features=None,
    model_name=None,
):
    """Exports a multi-task model as a TF Serving version directory.

    Args:
        model: a functional model with one named input per raw feature and a
            dict of outputs keyed by task name (every zoo builder).
        base_dir: str or path. The model's base path in TF Serving; the
            export goes to `<base_dir>/<version>/`.
        version: int or None. Version to write; `None` takes the next
            integer. An existing version is refused (`ValueError`).
        fusion: fusion config of the `score` output (see `resolve_fusion`
            and `fuse`). Defaults to the sum of the binary task outputs.
        warmup: True (batch sizes `DEFAULT_WARMUP_BATCH_SIZES`), False, a
            list of batch sizes, or a batching config path (1 plus its
            `allowed_batch_sizes`). Defaults to `True`.
        split: bool. Add the `user_embedding` and `score_items` signatures;
            the model must follow the split contract
            (`keras_mtl.models.split_model`). Defaults to `False`.
        example_signatures: bool. Add `classify_<task>` / `regress_<task>`
            signatures over serialized `tf.Example`s. Needs `tasks`.
            Defaults to `False`.
        tasks: list of `keras_mtl.Task`, or None. Task kinds choose the
            default fusion and the example signatures.
        features: list of feature specs, or None to read them from the
            model's `InputBlock`s (used for warmup data and metadata).
        model_name: str. Model name in the warmup requests. Defaults to the
            base directory's name (TF Serving's usual layout).

    Returns:
        The `pathlib.Path` of the version directory.

    Example:

    >>> path = keras_mtl.export.export_for_serving(
    ...     model, "models/ranker", fusion={"click": 1.0, "conversion": 2.0},
    ...     tasks=tasks)
    """
    tf = _tf()
    base = pathlib.Path(base_dir)
    tasks = validate_tasks(tasks) if tasks else None
    features = (
        features_lib.validate_features(features)
        if features
        else model_features(model)
    )
    order = [f.name for f in features]
    specs = input_signature(model, order)
    output_dims = _output_dims(model)
    output_names = list(output_dims)
    fusion = resolve_fusion(fusion, output_dims, tasks)
    sizes = _check_batch_sizes(warmup)
    if example_signatures and not tasks:
        raise ValueError(
            "`example_signatures=True` needs `tasks` to know which outputs "
            "are binary (classify) or regression (regress)."
        )
    for name in specs:
        if name in output_names or name == SCORE:
            raise ValueError(
                f"Input '{name}' has the name of an output; signature names "
                "must be distinct."
            )

    # Endpoints.
    archive = keras.export.ExportArchive()
    for table in _lookup_tables(model):
        archive.track(table)
    forward = _forward(tf, model, specs)
    _add_endpoint(
        tf,
        archive,
        DEFAULT_SIGNATURE,
        _predict_fn(tf, forward, specs, output_names, fusion),
        [specs],
    )
    predict_sigs = {DEFAULT_SIGNATURE: (specs, features)}
    if split:
        user_tower, item_scorer = _split_parts(model)
        user_specs = input_signature(user_tower, order)
        item_specs = input_signature(item_scorer, order)
        missing = sorted(set(output_names) - set(_dict_outputs(item_scorer)))
        if missing:
            raise ValueError(
                f"'{ITEM_SCORER}' lacks output(s) {missing} of the model."
            )
        _add_endpoint(
            tf,
            archive,
            USER_SIGNATURE,
            _user_fn(tf, user_tower, user_specs),
            [user_specs],
        )
        _add_endpoint(
            tf,
            archive,
            ITEMS_SIGNATURE,
            _items_fn(tf, item_scorer, item_specs, output_names, fusion),
            [item_specs],
        )
        predict_sigs[USER_SIGNATURE] = (user_specs, features)
        predict_sigs[ITEMS_SIGNATURE] = (item_specs, features)
    methods, example_sigs = {}, {}
    if example_signatures:
        serialized = [tf.TensorSpec((None,), tf.string, name=EXAMPLES_INPUT)]
        for task in tasks:
            if task.name not in output_dims or output_dims[task.name] != 1:
                continue
            if task.kind == "binary":
                name = f"classify_{task.name}"
                _add_endpoint(
                    tf,
                    archive,
                    name,
                    _classify_fn(tf, forward, specs, task.name),
                    serialized,
                )
                methods[name] = CLASSIFY_METHOD
                example_sigs[name] = (CLASSIFY_METHOD, specs, features)
            name = f"regress_{task.name}"
            _add_endpoint(
                tf,
                archive,
                name,
                _regress_fn(tf, forward, specs, task.name),
                serialized,
            )
            methods[name] = REGRESS_METHOD
            example_sigs[name] = (REGRESS_METHOD, specs, features)

    # Write into a non-numeric temporary directory, then rename.
    version = _check_version(version, base)
    base.mkdir(parents=True, exist_ok=True)
    model_name = model_name or base.resolve().name
    temp = base / f"{_TEMP_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
    final = base / str(version)
    try:
        tf_logger = logging.getLogger("tensorflow")
        level = tf_logger.level
        tf_logger.setLevel(max(level, logging.WARNING))  # "Assets written"
        try:
            archive.write_out(str(temp), verbose=False)
        finally:
            tf_logger.setLevel(level)
        _patch_method_names(tf, str(temp), methods)
        extra = temp / ASSETS_EXTRA
        extra.mkdir()
        records = 0
        if sizes:
            records = _write_warmup(
                extra / WARMUP_FILE,
                model_name,
                predict_sigs,
                example_sigs,
                sizes,
            )
        metadata = {
            "keras_mtl_version": keras_mtl.__version__,
            "tensorflow_version": tf.__version__,
            "keras_version": keras.__version__,
            "exported_at": datetime.datetime.now(datetime.timezone.utc)
            .replace(microsecond=0)
            .isoformat(),
            "model_name": model_name,
            "version": version,
            "model": model.name,
            "fusion": fusion,
            "warmup_batch_sizes": sizes,
            "warmup_records": records,
            "signatures": _describe_outputs(tf, str(temp)),
            "features": [f.get_config() for f in features],
            "tasks": [t.get_config() for t in tasks] if tasks else None,
            "split": bool(split),
        }
        (extra / METADATA_FILE).write_text(
            json.dumps(metadata, indent=2), encoding="utf-8"
        )
        _fsync_tree(temp)
        if final.exists():
            raise ValueError(
                f"Version {version} appeared in {base} during the export; "
                "it is left untouched. Export again to take the next one."
            )
        os.rename(temp, final)
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)
    fd = os.open(base, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return final


def signature_names_are_explicit(names):
    """Whether no name is an automatic one (`output_0`, `inputs_1`, ...)."""
    return not any(_AUTO_NAMES.match(name) for name in names)


# ---------------------------------------------------------------------------
# ONNX.
# ---------------------------------------------------------------------------

_ONNX_REASONS = {
    "StringLookup": (
        "its vocabulary is a TensorFlow hash table (LookupTableFindV2 on a "
        "table handle captured by the traced function); tf2onnx maps such "
        "lookups only when it finds the table's initializer in a frozen "
        "graph, so the node stays a TensorFlow op that ONNX Runtime cannot "
        "run"
    ),
    "IntegerLookup": (
        "same hash-table lookup as StringLookup (LookupTableFindV2), which "
        "tf2onnx leaves unconverted"
    ),
    "Hashing": (
        "FarmHash string bucketing (StringToHashBucketFast) has no ONNX "
        "operator"
    ),
}


def onnx_blockers(model):
    """Layers that the ONNX export cannot convert, with the reason.

    Returns:
        A list of `(layer name, class name, reason)`; empty when the model
        converts (numeric features and `vocab_size` id features do).
    """
    blockers = []
    for layer in _walk_layers(model):
        reason = _ONNX_REASONS.get(type(layer).__name__)
        if reason:
            blockers.append((layer.name, type(layer).__name__, reason))
        if isinstance(layer, InputBlock):
            logged = [f.name for f in layer.numeric if f.log1p]
            if logged:
                blockers.append(
                    (
                        layer.name,
                        f"InputBlock (log1p of {', '.join(map(repr, logged))})",
                        "tf2onnx has no converter for TensorFlow's Log1p op",
                    )
                )
    return blockers


def _fold_captured_constants(onnx_model, concrete_fn, keep):
    """Turns captured-constant graph inputs into initializers.

    tf2onnx's `from_function` lists every non-resource capture of the traced
    function as a graph input; Keras' `Normalization` captures its mean and
    variance as constants, which would become required inputs.
    """
    from onnx import numpy_helper

    values = {}
    for external, internal in concrete_fn.graph.captures:
        if getattr(external, "dtype", None) is None:
            continue
        if external.dtype.name == "resource":
            continue
        try:
            values[internal.name] = np.asarray(external.numpy())
        except AttributeError:
            continue
    graph = onnx_model.graph
    kept = []
    for graph_input in graph.input:
        if graph_input.name in keep:
            kept.append(graph_input)
            continue
        if graph_input.name not in values:
            raise ValueError(
                f"ONNX graph input '{graph_input.name}' is neither a feature "
                "nor a captured constant; cannot export it."
            )
        graph.initializer.append(
            numpy_helper.from_array(values[graph_input.name], graph_input.name)
        )
    del graph.input[:]
    graph.input.extend(kept)


def export_onnx(model, filepath, fusion=None, tasks=None, opset_version=None):
    """Exports the model through Keras' ONNX export, with named outputs.

    The ONNX graph takes the same named raw inputs as `serving_default` and
    returns one output per task plus `score` (see `fuse`). Models whose
    preprocessing uses `StringLookup`, `IntegerLookup` or `Hashing` (features
    with a `vocabulary` or `num_bins`) cannot be converted; `onnx_blockers`
    names them and this function raises `ValueError`. Numeric features and
    `vocab_size` id features convert.

    Args:
        model: a functional model (dict inputs, dict outputs).
        filepath: str or path of the `.onnx` file.
        fusion: fusion config of `score` (see `resolve_fusion`).
        tasks: optional list of `keras_mtl.Task`.
        opset_version: optional ONNX opset.

    Returns:
        The `pathlib.Path` of the written file.
    """
    _tf()
    blockers = onnx_blockers(model)
    if blockers:
        details = "; ".join(
            f"layer '{name}' ({kind}): {why}" for name, kind, why in blockers
        )
        raise ValueError(
            "The model cannot be exported to ONNX: " + details + ". Export it "
            "with export_for_serving (SavedModel), or use numeric and "
            "`vocab_size` id features only."
        )
    try:
        import onnx
        from keras.src.export.onnx import get_concrete_fn
    except ImportError as err:
        raise ImportError(
            "ONNX export needs the `onnx` extra: pip install keras-mtl[onnx] "
            f"({err})."
        ) from None
    output_dims = _output_dims(model)
    fusion = resolve_fusion(fusion, output_dims, tasks)
    specs = input_signature(model, [f.name for f in model_features(model)])
    inputs = {
        name: keras.Input(
            shape=tuple(spec.shape[1:]), dtype=spec.dtype.name, name=name
        )
        for name, spec in specs.items()
    }
    outputs = dict(model(inputs))
    outputs[SCORE] = _ScoreFusion(fusion, name=SCORE)(
        {name: outputs[name] for name in output_dims}
    )
    wrapper = keras.Model(inputs, outputs, name=f"{model.name}_onnx")
    path = pathlib.Path(filepath)
    signature = [specs]
    wrapper.export(
        str(path),
        format="onnx",
        verbose=False,
        input_signature=signature,
        opset_version=opset_version,
    )
    onnx_model = onnx.load(str(path))
    concrete = get_concrete_fn(wrapper, signature)
    if not hasattr(concrete, "graph"):
        concrete = concrete.get_concrete_function()
    _fold_captured_constants(onnx_model, concrete, set(specs))
    names = [o.name for o in onnx_model.graph.output]
    expected = sorted([*output_dims, SCORE])
    if sorted(names) != expected:
        raise ValueError(
            f"ONNX outputs {names} do not match the task outputs {expected}."
        )
    onnx.checker.check_model(onnx_model)
    onnx.save(onnx_model, str(path))
    return path
