"""Offline contract tests of the TF Serving export (keras_mtl.export).

The server binary cannot run here, so each test checks what the server
relies on: the SavedModel proto, the TF1 Session loader the C++ server uses,
the warmup file, version directories, plus the ONNX export.
"""

import importlib.util
import json
import os
import pathlib
import re
import shutil
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf
from export_fixtures import BATCHING_CONFIG
from export_fixtures import FUSION
from export_fixtures import SPECS
from export_fixtures import TASKS
from export_fixtures import USER_FEATURES
from export_fixtures import arrays
from export_fixtures import exported
from export_fixtures import request_rows
from serving_double import SessionModel
from tensorflow.core.protobuf import saved_model_pb2

from keras_mtl import cli
from keras_mtl import export as export_lib
from keras_mtl import features as features_lib
from keras_mtl import models
from keras_mtl.features import CategoricalFeature
from keras_mtl.features import NumericFeature
from keras_mtl.features import SequenceFeature

TASK_NAMES = [t.name for t in TASKS]
EXPECTED_DTYPES = {
    spec.name: {"float32": tf.float32, "int64": tf.int64, "string": tf.string}[
        spec.dtype
    ]
    for spec in SPECS
}
MAX_BATCH = export_lib.parse_batching_config(
    BATCHING_CONFIG
).max_batch_size.value


@pytest.fixture(scope="module")
def export():
    return exported()


@pytest.fixture(scope="module")
def session_model(export):
    model = SessionModel(export[1])
    yield model
    model.close()


def _saved_model(path):
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((pathlib.Path(path) / "saved_model.pb").read_bytes())
    return proto


def _tiny_model(features=None):
    return models.shared_bottom(
        features or SPECS, TASKS, bottom_units=[4], tower_units=[]
    )


# (a) Signature contract, read from the SavedModel proto. -----------------


def test_signature_contract(export):
    proto = _saved_model(export[1])
    assert len(proto.meta_graphs) == 1
    meta = proto.meta_graphs[0]
    assert list(meta.meta_info_def.tags) == ["serve"]
    sigs = {k: v for k, v in meta.signature_def.items() if k[:2] != "__"}
    assert set(sigs) == {
        "serving_default",
        "user_embedding",
        "score_items",
        "classify_click",
        "classify_conversion",
        "regress_click",
        "regress_conversion",
        "regress_watch_time",
    }
    default = sigs["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    assert set(default.inputs) == {s.name for s in SPECS}
    for spec in SPECS:
        info = default.inputs[spec.name]
        assert info.dtype == EXPECTED_DTYPES[spec.name].as_datatype_enum
        dims = [d.size for d in info.tensor_shape.dim]
        width = [spec.max_len] if isinstance(spec, SequenceFeature) else []
        assert dims == [-1, *width], spec.name
    assert set(default.outputs) == {*TASK_NAMES, "score"}
    for info in default.outputs.values():
        assert info.dtype == tf.float32.as_datatype_enum
        assert info.tensor_shape.dim[0].size == -1
    assert [d.size for d in default.outputs["score"].tensor_shape.dim] == [-1]
    # Split signatures.
    user = sigs["user_embedding"]
    assert set(user.inputs) == set(USER_FEATURES)
    assert [
        d.size for d in user.outputs["user_representation"].tensor_shape.dim
    ] == [-1, 8]
    items = sigs["score_items"]
    assert set(items.inputs) == (
        {s.name for s in SPECS} - set(USER_FEATURES) | {"user_representation"}
    )
    assert set(items.outputs) == {*TASK_NAMES, "score"}
    # Classify / Regress follow TF Serving's input and output rules.
    for task in ("click", "conversion"):
        sig = sigs[f"classify_{task}"]
        assert sig.method_name == "tensorflow/serving/classify"
        assert list(sig.inputs) == ["inputs"]
        assert sig.inputs["inputs"].dtype == tf.string.as_datatype_enum
        assert set(sig.outputs) == {"scores", "classes"}
        assert sig.outputs["scores"].dtype == tf.float32.as_datatype_enum
        assert sig.outputs["classes"].dtype == tf.string.as_datatype_enum
        for out in sig.outputs.values():
            assert [d.size for d in out.tensor_shape.dim] == [-1, 2]
    for task in TASK_NAMES:
        sig = sigs[f"regress_{task}"]
        assert sig.method_name == "tensorflow/serving/regress"
        assert list(sig.inputs) == ["inputs"]
        assert list(sig.outputs) == ["outputs"]
        assert [d.size for d in sig.outputs["outputs"].tensor_shape.dim] == [-1]
    # No automatic names anywhere.
    for sig in sigs.values():
        assert export_lib.signature_names_are_explicit(
            [*sig.inputs, *sig.outputs]
        )
    auto = re.compile(r"^(output|inputs|args)_\d+$")
    names = [n for s in sigs.values() for n in [*s.inputs, *s.outputs]]
    assert not [n for n in names if auto.match(n)]


def test_graph_runs_without_xla_and_checks_shapes(export):
    meta = _saved_model(export[1]).meta_graphs[0]
    ops, must_compile = set(), []
    nodes = list(meta.graph_def.node)
    for function in meta.graph_def.library.function:
        if function.attr["_XlaMustCompile"].b:
            must_compile.append(function.signature.name)
        nodes.extend(function.node_def)
    for node in nodes:
        ops.add(node.op)
        if node.attr["_XlaMustCompile"].b:
            must_compile.append(node.name)
    assert must_compile == []
    assert "XlaCallModule" not in ops
    assert not any(op.startswith("_Xla") or op.startswith("Xla") for op in ops)
    # Preprocessing is inside the graph.
    assert {"LookupTableFindV2", "HashTableV2", "EnsureShape"} <= ops
    ensure = [n.name for n in nodes if n.op == "EnsureShape"]
    for spec in SPECS:
        assert any(n == spec.name or n.startswith(spec.name) for n in ensure)


# (b) Parity through the TF1 Session loader (the C++ server's path). ------


@pytest.mark.parametrize("batch", [1, 37, MAX_BATCH], ids=lambda b: f"b{b}")
def test_session_loader_matches_keras(export, session_model, batch):
    model, _ = export
    x = arrays(request_rows(batch, seed=batch))
    assert "tablet" in set(x["device"]) or batch == 1
    expected = model.predict(x, batch_size=512, verbose=0)
    out = session_model.run("serving_default", x)
    for task in TASK_NAMES:
        assert out[task].shape == (batch, 1)
        np.testing.assert_allclose(out[task], expected[task], atol=1e-5)
    score = (
        FUSION["click"] * expected["click"][:, 0]
        + FUSION["conversion"] * expected["conversion"][:, 0]
    )
    np.testing.assert_allclose(out["score"], score, atol=1e-5)


def test_unseen_values_use_oov_rows_not_errors(export, session_model):
    model, _ = export
    rows = request_rows(2, seed=3)
    base = session_model.run("serving_default", arrays(rows))
    rows.loc[:, "device"] = ["never-seen-1", "never-seen-2"]
    out = session_model.run("serving_default", arrays(rows))
    # Two different unseen strings share the OOV embedding row.
    rows.loc[:, "device"] = ["never-seen-3", "never-seen-4"]
    again = session_model.run("serving_default", arrays(rows))
    np.testing.assert_array_equal(out["click"], again["click"])
    assert np.isfinite(base["click"]).all()


# (c) Everything travels inside the version directory. --------------------


def _assert_serves_like_keras(path, model):
    """The Session loader on `path` gives `model.predict`'s scores."""
    x = arrays(request_rows(9, seed=9))
    expected = model.predict(x, verbose=0)
    loaded = SessionModel(path)
    try:
        out = loaded.run("serving_default", x)
    finally:
        loaded.close()
    for task in TASK_NAMES:
        np.testing.assert_allclose(out[task], expected[task], atol=1e-5)


def test_version_dir_is_self_contained(tmp_path):
    keras.utils.set_random_seed(1)
    model = _tiny_model()
    path = export_lib.export_for_serving(model, tmp_path / "a", warmup=False)
    raw = (path / "saved_model.pb").read_bytes()
    # No path outside the version directory is referenced.
    assert str(tmp_path).encode() not in raw
    assets = path / "assets"
    assert not assets.exists() or sorted(os.listdir(assets)) == []
    moved = tmp_path / "elsewhere" / "1"
    shutil.copytree(path, moved)
    shutil.rmtree(tmp_path / "a")  # the original export, vocabularies and all
    _assert_serves_like_keras(moved, model)


def _categoricals(specs):
    return sum(isinstance(s, CategoricalFeature) for s in specs)


@pytest.mark.parametrize(
    "architecture, kwargs, check",
    [
        (
            "shared_bottom",
            dict(bottom_units=[4], tower_units=[], interaction="dot"),
            # Every embedded feature of the fixture has embed_dim 4: all
            # cross, through keras-rs' DotInteraction.
            lambda m: (
                len(m.get_layer("input_block").interaction_features)
                == _categoricals(SPECS)
            ),
        ),
        (
            "mmoe",
            dict(
                num_experts=2,
                expert_units=[8],
                tower_units=[4],
                interaction="cross",
                cross_projection_dim=4,
            ),
            # keras-rs' FeatureCross layers inside the InputBlock.
            lambda m: len(m.get_layer("input_block").feature_crosses) == 2,
        ),
        *(
            (
                architecture,
                dict(
                    expert_units=[8],
                    tower_units=[4],
                    expert_normalization="layer",
                    tower_normalization="layer",
                ),
                # Per-expert layer norm and the towers' LayerNormalization.
                lambda m: any(
                    getattr(layer, "expert_normalization", None) == "layer"
                    for layer in m.layers
                ),
            )
            for architecture in ("mmoe", "ple")
        ),
        (
            "mmoe",
            dict(expert_units=[8], tower_units=[4], gate_normalization="batch"),
            # Batch-normalized gates, served with their moving statistics.
            lambda m: m.get_layer("mmoe").gate_normalization == "batch",
        ),
        (
            "ple",
            dict(expert_units=[8], tower_units=[4], gate_normalization="layer"),
            lambda m: m.get_layer("ple_level_0").gate_normalization == "layer",
        ),
    ],
    ids=[
        "dot",
        "cross",
        "layer_norm_mmoe",
        "layer_norm_ple",
        "gate_batch_norm_mmoe",
        "gate_layer_norm_ple",
    ],
)
def test_model_options_serve_like_keras(tmp_path, architecture, kwargs, check):
    # The Session loader the C++ server uses runs these layers in the
    # served graph and gives Keras' predictions.
    keras.utils.set_random_seed(2)
    model = models.build(architecture, SPECS, TASKS, **kwargs)
    assert check(model)
    path = export_lib.export_for_serving(model, tmp_path / "a", warmup=False)
    _assert_serves_like_keras(path, model)


# (d) Warmup requests. -----------------------------------------------------


def _warmup_logs(path):
    from tensorflow_serving.apis import prediction_log_pb2

    file = path / "assets.extra" / "tf_serving_warmup_requests"
    logs = []
    for record in tf.data.TFRecordDataset(str(file)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log)
    return logs


def test_warmup_records_parse_replay_and_cover_batch_sizes(
    export, session_model
):
    logs = _warmup_logs(export[1])
    allowed = set(
        export_lib.parse_batching_config(BATCHING_CONFIG).allowed_batch_sizes
    )
    sizes = {}
    for log in logs:
        kind = log.WhichOneof("log_type")
        if kind == "predict_log":
            request = log.predict_log.request
            feeds = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            out = session_model.run(request.model_spec.signature_name, feeds)
            rows = len(next(iter(feeds.values())))
        else:
            request = getattr(log, kind).request
            examples = request.input.example_list.examples
            feeds = {
                "inputs": np.array(
                    [e.SerializeToString() for e in examples], dtype=object
                )
            }
            out = session_model.run(request.model_spec.signature_name, feeds)
            rows = len(examples)
        assert request.model_spec.name == "ranker"
        for value in out.values():
            assert value.shape[0] == rows
            if value.dtype.kind == "f":
                assert np.isfinite(value).all()
        sizes.setdefault(request.model_spec.signature_name, set()).add(rows)
    assert set(sizes) == set(session_model.signatures)
    for name, seen in sizes.items():
        assert allowed <= seen, name
    meta = export_lib.read_export_metadata(export[1])
    assert meta["warmup_records"] == len(logs)


def test_metadata_records_versions_and_signatures(export):
    meta = export_lib.read_export_metadata(export[1])
    assert meta["tensorflow_version"] == tf.__version__
    assert meta["keras_version"] == keras.__version__
    assert meta["fusion"] == {"method": "weighted_sum", "weights": FUSION}
    assert meta["version"] == 1 and meta["model_name"] == "ranker"
    assert set(meta["signatures"]["serving_default"]["outputs"]) == {
        *TASK_NAMES,
        "score",
    }
    assert features_lib.validate_features(meta["features"]) == SPECS


# (g) Split signatures agree with the whole model. --------------------------


def test_split_signatures_match_whole_model(export, session_model):
    model, _ = export
    rows = request_rows(40, seed=5)
    # One user, many items.
    for name in USER_FEATURES:
        rows[name] = [rows[name].iloc[0]] * len(rows)
    x = arrays(rows)
    expected = model.predict(x, verbose=0)
    user_in = {k: v[:1] for k, v in x.items() if k in USER_FEATURES}
    vector = session_model.run("user_embedding", user_in)["user_representation"]
    assert vector.shape == (1, 8)
    items = {k: v for k, v in x.items() if k not in USER_FEATURES}
    tiled = np.repeat(vector, len(rows), axis=0)
    for user_rep in (tiled, vector):  # one row per item, or broadcast
        out = session_model.run(
            "score_items", {**items, "user_representation": user_rep}
        )
        for task in TASK_NAMES:
            np.testing.assert_allclose(out[task], expected[task], atol=1e-5)
        np.testing.assert_allclose(
            out["score"],
            expected["click"][:, 0] + 2 * expected["conversion"][:, 0],
            atol=1e-5,
        )


def test_split_needs_a_separable_model(tmp_path):
    with pytest.raises(ValueError, match="user_tower.*item_scorer"):
        export_lib.export_for_serving(
            _tiny_model(), tmp_path / "m", split=True, warmup=False
        )
    assert not (tmp_path / "m").exists() or not os.listdir(tmp_path / "m")


def test_example_signatures_match_keras(export, session_model):
    model, _ = export
    x = arrays(request_rows(20, seed=7))
    expected = model.predict(x, verbose=0)
    serialized = np.array(
        [e.SerializeToString() for e in export_lib.to_examples(x)],
        dtype=object,
    )
    out = session_model.run("classify_click", {"inputs": serialized})
    np.testing.assert_allclose(
        out["scores"][:, 1], expected["click"][:, 0], atol=1e-5
    )
    np.testing.assert_allclose(out["scores"].sum(axis=1), 1.0, atol=1e-6)
    assert out["classes"][0].tolist() == [b"0", b"1"]
    out = session_model.run("regress_watch_time", {"inputs": serialized})
    np.testing.assert_allclose(
        out["outputs"], expected["watch_time"][:, 0], atol=1e-5
    )


# (h) Atomic versions and (i) no overwrite. --------------------------------


def test_reader_never_sees_a_partial_version(tmp_path):
    base = tmp_path / "ranker"
    base.mkdir()
    seen, problems, done = [], [], threading.Event()

    def poll():
        while True:
            finished = done.is_set()  # one last scan after the export
            for name in os.listdir(base):
                if not name.isdigit():
                    continue
                seen.append(name)
                pb = base / name / "saved_model.pb"
                try:
                    proto = saved_model_pb2.SavedModel()
                    proto.ParseFromString(pb.read_bytes())
                    assert proto.meta_graphs[0].signature_def
                    assert (base / name / "variables").is_dir()
                except Exception as err:  # noqa: BLE001
                    problems.append(f"{name}: {err!r}")
            if finished:
                return

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        path = export_lib.export_for_serving(_tiny_model(), base, warmup=[1])
    finally:
        done.set()
        reader.join(timeout=30)
    assert problems == []
    assert seen and set(seen) == {"1"}
    assert sorted(os.listdir(base)) == ["1"]  # no temporary left behind
    assert path == base / "1"


def test_versions_increment_and_are_never_overwritten(tmp_path):
    model = _tiny_model()
    base = tmp_path / "ranker"
    first = export_lib.export_for_serving(model, base, warmup=False)
    second = export_lib.export_for_serving(model, base, warmup=False)
    assert (first.name, second.name) == ("1", "2")
    before = (first / "saved_model.pb").read_bytes()
    with pytest.raises(ValueError, match="already exists.*never overwritten"):
        export_lib.export_for_serving(model, base, version=1, warmup=False)
    assert (first / "saved_model.pb").read_bytes() == before
    with pytest.raises(ValueError, match="positive integer"):
        export_lib.export_for_serving(model, base, version=0, warmup=False)
    assert export_lib.list_versions(base) == [1, 2]
    assert sorted(os.listdir(base)) == ["1", "2"]


# Fusion. ---------------------------------------------------------------------

OUTPUT_DIMS = {"click": 1, "conversion": 1, "watch_time": 1}


def _fused(fusion, outputs):
    resolved = export_lib.resolve_fusion(fusion, OUTPUT_DIMS, TASKS)
    score = export_lib.fuse(
        {k: np.asarray(v, "float32") for k, v in outputs.items()}, resolved
    )
    return np.asarray(keras.ops.convert_to_numpy(score))


def test_fusion_formulas():
    out = {
        "click": [[0.2], [0.5]],
        "conversion": [[0.1], [0.0]],
        "watch_time": [[3.0], [1.0]],
    }
    np.testing.assert_allclose(
        _fused(None, out), [0.3, 0.5], rtol=1e-6
    )  # default: the binary tasks, weight 1
    np.testing.assert_allclose(
        _fused({"click": 2.0, "watch_time": 0.5}, out), [1.9, 1.5], rtol=1e-6
    )
    np.testing.assert_allclose(
        _fused(
            {"method": "product", "weights": {"click": 1.0, "conversion": 2}},
            out,
        ),
        [0.2 * 0.1**2, 0.5 * 1e-7**2],
        rtol=1e-5,
    )
    lex = {"method": "lexicographic", "order": ["click", "conversion"]}
    # B = 1000: score = min(floor(1000 u0), 999) * 1000 + 999 * u1.
    np.testing.assert_allclose(
        _fused(lex, out), [200 * 1000 + 99.9, 500 * 1000], rtol=1e-6
    )


def test_lexicographic_ranks_by_first_task_then_second():
    rng = np.random.default_rng(0)
    click = rng.random(500).astype("float32")
    follow = rng.random(500).astype("float32")
    lex = {
        "method": "lexicographic",
        "order": ["click", "conversion"],
        "buckets": 100,
    }
    score = _fused(
        lex,
        {"click": click, "conversion": follow, "watch_time": follow},
    )
    bucket = np.minimum(np.floor(click * 100), 99)
    order = np.argsort(-score, kind="stable")
    # Ranked by the click bucket first ...
    assert (np.diff(bucket[order]) <= 0).all()
    # ... then by the follow rate inside a bucket.
    for b in np.unique(bucket):
        inside = order[bucket[order] == b]
        assert (np.diff(follow[inside]) <= 1e-6).all()


@pytest.mark.parametrize(
    "fusion, message",
    [
        ({"clicks": 1.0}, "names 'clicks'"),
        ({"click": float("nan")}, r"weights\['click'\]"),
        ({"method": "max"}, "`fusion.method`"),
        ({"method": "product"}, "`fusion.weights`"),
        ({"method": "lexicographic", "order": []}, "`fusion.order`"),
        (
            {"method": "lexicographic", "order": ["click", "watch_time"]},
            r"`fusion.ranges` needs \[low, high\] for regression",
        ),
        (
            {
                "method": "lexicographic",
                "order": ["click", "conversion"],
                "buckets": 5000,
            },
            "exceeds",
        ),
        ({"method": "weighted_sum", "order": ["click"]}, "do not apply"),
    ],
    ids=[
        "unknown_task",
        "nan_weight",
        "unknown_method",
        "no_weights",
        "empty_order",
        "regression_range",
        "too_many_buckets",
        "wrong_field",
    ],
)
def test_fusion_errors_name_the_field(fusion, message):
    with pytest.raises(ValueError, match=message):
        export_lib.resolve_fusion(fusion, OUTPUT_DIMS, TASKS)


def test_parse_fusion_accepts_json_and_weights(tmp_path):
    assert export_lib.parse_fusion("click=1,conversion=0.5") == {
        "click": 1.0,
        "conversion": 0.5,
    }
    text = '{"method": "product", "weights": {"click": 1}}'
    assert export_lib.parse_fusion(text)["method"] == "product"
    file = tmp_path / "fusion.json"
    file.write_text(text)
    assert export_lib.parse_fusion(str(file))["weights"] == {"click": 1}
    with pytest.raises(ValueError, match="--fusion"):
        export_lib.parse_fusion("click:1")


# CLI. --------------------------------------------------------------------


def test_cli_export(tmp_path, capsys):
    model = _tiny_model()
    run = tmp_path / "run"
    run.mkdir()
    model.save(run / "model.keras")
    features_lib.save_features(SPECS, run / "features.json")
    (run / "tasks.json").write_text(json.dumps([t.get_config() for t in TASKS]))
    (run / "config.json").write_text("{}")
    base = tmp_path / "models" / "ranker"
    argv = ["export", "--model-dir", str(run), "--base-dir", str(base)]
    rc = cli.main(argv + ["--fusion", "click=1,conversion=3", "--no-warmup"])
    assert rc == 0
    meta = export_lib.read_export_metadata(base / "1")
    assert meta["fusion"]["weights"] == {"click": 1.0, "conversion": 3.0}
    assert meta["warmup_records"] == 0
    assert str(base / "1") in capsys.readouterr().out
    rc = cli.main(argv + ["--version", "1", "--no-warmup"])
    assert rc == 2
    assert "already exists" in capsys.readouterr().err
    rc = cli.main(argv + ["--split", "--no-warmup"])
    assert rc == 2
    assert "user_tower" in capsys.readouterr().err


# ONNX. -----------------------------------------------------------------------

HAVE_ONNX = all(
    importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "tf2onnx")
)
ONNX_REASON = "onnx, onnxruntime or tf2onnx not installed (pip install .[onnx])"


@pytest.mark.skipif(not HAVE_ONNX, reason=ONNX_REASON)
@pytest.mark.parametrize(
    "expert_normalization", [None, "layer"], ids=["plain", "layer_norm"]
)
def test_onnx_export_matches_keras_for_numeric_and_id_features(
    tmp_path, expert_normalization
):
    import onnxruntime

    specs = [
        NumericFeature("user_age", mean=38.0, variance=144.0),
        NumericFeature("item_price", mean=29.0, variance=450.0),
        features_lib.CategoricalFeature("item_id", vocab_size=1000),
        SequenceFeature("hist_item_ids", vocab_size=1000, max_len=10),
    ]
    model = models.mmoe(
        specs,
        TASKS,
        num_experts=2,
        expert_units=[8],
        tower_units=[4],
        expert_normalization=expert_normalization,
    )
    path = export_lib.export_onnx(
        model, tmp_path / "model.onnx", fusion=FUSION, tasks=TASKS
    )
    session = onnxruntime.InferenceSession(
        str(path), providers=["CPUExecutionProvider"]
    )
    assert {i.name for i in session.get_inputs()} == {s.name for s in specs}
    names = [o.name for o in session.get_outputs()]
    assert sorted(names) == sorted([*TASK_NAMES, "score"])
    x = arrays(request_rows(33, seed=2))
    x = {s.name: x[s.name] for s in specs}
    expected = model.predict(x, verbose=0)
    got = dict(zip(names, session.run(names, x)))
    for task in TASK_NAMES:
        np.testing.assert_allclose(got[task], expected[task], atol=1e-5)
    np.testing.assert_allclose(
        got["score"],
        expected["click"][:, 0] + 2 * expected["conversion"][:, 0],
        atol=1e-5,
    )


def test_onnx_export_refuses_unconvertible_layers_by_name(tmp_path):
    blockers = export_lib.onnx_blockers(_tiny_model())
    kinds = {name: kind for name, kind, _ in blockers}
    assert kinds["lookup_device"] == "StringLookup"
    assert kinds["lookup_user_id"] == "IntegerLookup"
    logged = [
        NumericFeature("price", log1p=True),
        features_lib.CategoricalFeature("shop", num_bins=10),
    ]
    blockers = export_lib.onnx_blockers(_tiny_model(logged))
    assert {(n, k) for n, k, _ in blockers} == {
        ("hashing_shop", "Hashing"),
        ("input_block", "InputBlock (log1p of 'price')"),
    }
    with pytest.raises(ValueError, match="lookup_device' \\(StringLookup\\)"):
        export_lib.export_onnx(_tiny_model(), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
