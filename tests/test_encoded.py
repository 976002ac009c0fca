"""The fast training path: encoded twin, lookups once, XLA, padded batches."""

import json
import warnings

import keras
import numpy as np
import pandas as pd
import pytest

import keras_mtl
from keras_mtl import data as data_lib
from keras_mtl import models
from keras_mtl import runner
from keras_mtl.datasets import funnel_tasks
from keras_mtl.datasets import synthetic_funnel
from keras_mtl.features import CategoricalFeature
from keras_mtl.features import NumericFeature

ROWS = 3000


@pytest.fixture(scope="module")
def funnel():
    df = synthetic_funnel(ROWS, seed=3)
    tasks = funnel_tasks()
    # String, integer-vocabulary, hashed and sequence features, numerics
    # with missing values.
    features = keras_mtl.infer_features(
        df, labels=[t.name for t in tasks], exclude=["like"]
    )
    features = [
        CategoricalFeature("user_id", num_bins=64, embed_dim=4)
        if f.name == "user_id"
        else f
        for f in features
    ]
    return df, features, tasks


def _model(features, tasks, interaction=None):
    kwargs = {}
    if interaction == "cross":
        kwargs = dict(interaction="cross", cross_projection_dim=4)
    if interaction == "dot":
        # The hashed user id has its own width (4): cross the 8-dim ones.
        kwargs = dict(
            interaction=interaction,
            interaction_features=[
                f.name
                for f in features
                if isinstance(f, CategoricalFeature) and f.embed_dim == 8
            ],
        )
    return models.mmoe(
        features,
        tasks,
        num_experts=3,
        expert_units=(8,),
        tower_units=(4,),
        **kwargs,
    )


@pytest.mark.parametrize("interaction", [None, "dot", "cross"], ids=str)
def test_twin_predicts_like_the_raw_model(funnel, interaction):
    df, features, tasks = funnel
    model = _model(features, tasks, interaction=interaction)
    twin = models.encoded_model(model)
    x = data_lib.features_to_arrays(df, features)
    encoded = models.encode_features(model, x)
    raw = model.predict(x, verbose=0)
    fast = twin.predict(encoded, verbose=0)
    for name in raw:
        np.testing.assert_allclose(fast[name], raw[name], rtol=1e-6)
    # Categoricals become int32 row ids; numerics pass through unchanged.
    assert encoded["device"].dtype == np.int32
    assert encoded["hist_item_ids"].shape == (ROWS, 10)
    np.testing.assert_array_equal(encoded["item_price"], x["item_price"])
    assert set(encoded["device"]) <= {2, 3, 4}


def test_twin_shares_every_weight(funnel):
    _, features, tasks = funnel
    model = _model(features, tasks)
    twin = models.encoded_model(model)
    assert len(twin.weights) == len(model.weights)
    assert all(a is b for a, b in zip(twin.weights, model.weights))


def test_ids_match_the_models_own_category_ids(funnel):
    df, features, tasks = funnel
    model = _model(features, tasks)
    x = data_lib.features_to_arrays(df.head(50), features)
    encoded = models.encode_features(model, x)
    expected = keras_mtl.training.category_ids(
        model, "item_category", df["item_category"].head(50)
    )
    np.testing.assert_array_equal(encoded["item_category"], expected)


def test_training_the_twin_trains_the_raw_model(funnel):
    df, features, tasks = funnel
    # The same seed and data on both paths, without XLA: the same weights.
    results = []
    for fast in (False, True):
        keras.utils.set_random_seed(7)
        model = _model(features, tasks)
        train_model = models.encoded_model(model) if fast else model
        models.compile_model(train_model, tasks, jit_compile=False)
        train_model.fit(
            data_lib.from_dataframe(
                df,
                features,
                tasks,
                256,
                shuffle=True,
                seed=1,
                encode_with=model if fast else None,
            ),
            epochs=2,
            verbose=0,
        )
        x = data_lib.features_to_arrays(df.head(200), features)
        results.append(model.predict(x, verbose=0))
    for name in results[0]:
        np.testing.assert_allclose(
            results[1][name], results[0][name], rtol=1e-5, atol=1e-6
        )


def test_compile_turns_xla_on_for_the_twin_only(funnel):
    _, features, tasks = funnel
    model = _model(features, tasks)
    twin = models.encoded_model(model)
    models.compile_model(twin, tasks)
    assert twin.jit_compile is (keras.backend.backend() == "tensorflow")
    models.compile_model(twin, tasks, jit_compile=False)
    assert twin.jit_compile is False
    # The raw model holds hash tables: never compiled with XLA.
    models.compile_model(model, tasks)
    assert model.jit_compile is False


@pytest.mark.parametrize("interaction", [None, "dot", "cross"], ids=str)
def test_xla_training_matches_the_raw_path(funnel, interaction):
    df, features, tasks = funnel
    x = data_lib.features_to_arrays(df.head(500), features)
    preds = []
    for fast in (False, True):
        keras.utils.set_random_seed(11)
        model = _model(features, tasks, interaction=interaction)
        train_model = models.encoded_model(model) if fast else model
        models.compile_model(train_model, tasks, steps_per_execution=4)
        assert train_model.jit_compile is fast
        train_model.fit(
            data_lib.from_dataframe(
                df,
                features,
                tasks,
                512,
                encode_with=model if fast else None,
                pad_remainder=fast,
            ),
            epochs=2,
            verbose=0,
        )
        preds.append(model.predict(x, verbose=0))
    # XLA reorders float sums: equal up to rounding, not bit for bit; the
    # padding rows of the last batch change nothing.
    for name in preds[0]:
        np.testing.assert_allclose(
            preds[1][name], preds[0][name], rtol=1e-4, atol=1e-5
        )


def test_pad_remainder_pads_with_zero_weight_rows(funnel):
    df, features, tasks = funnel
    ds = data_lib.from_dataframe(
        df.head(700), features, tasks, 512, pad_remainder=True
    )
    batches = list(ds)
    assert [len(b[0]["device"]) for b in batches] == [512, 512]
    x, y, sw = batches[1]
    for name in sw:
        assert float(np.sum(sw[name].numpy()[188:])) == 0.0
    assert set(x["device"].numpy()[188:]) == {b""}
    # The padded batches give the same weighted loss as the plain ones.
    model = _model(features, tasks)
    models.compile_model(model, tasks, jit_compile=False)
    padded = model.evaluate(ds, verbose=0, return_dict=True)
    plain = model.evaluate(
        data_lib.from_dataframe(df.head(700), features, tasks, 512),
        verbose=0,
        return_dict=True,
    )
    for key in ("click_loss", "conversion_loss", "watch_time_loss"):
        assert padded[key] == pytest.approx(plain[key], rel=1e-5)


def test_pad_remainder_errors(funnel):
    df, features, tasks = funnel
    with pytest.raises(ValueError, match="exclude each other"):
        data_lib.from_dataframe(
            df, features, tasks, 512, drop_remainder=True, pad_remainder=True
        )
    with pytest.raises(ValueError, match=r"\(x, y, sample_weight\)"):
        data_lib.arrays_to_dataset({"a": np.zeros(3)}, 2, pad_remainder=True)


def test_encode_dataset_matches_encode_features(funnel, tmp_path):
    df, features, tasks = funnel
    model = _model(features, tasks)
    path = tmp_path / "part-0.parquet"
    df.head(300).to_parquet(path)
    ds = data_lib.from_parquet(str(path), features, tasks, batch_size=300)
    (x, _, _), *_ = list(models.encode_dataset(model, ds))
    expected = models.encode_features(
        model, data_lib.features_to_arrays(df.head(300), features)
    )
    for name in ("device", "item_category", "hist_item_ids", "user_id"):
        np.testing.assert_array_equal(x[name].numpy(), expected[name])


def test_models_the_path_cannot_express(funnel):
    df, features, tasks = funnel
    # DUPN embeds its features inside nested user/item models.
    dupn = models.dupn(
        features, tasks, user_features=["user_id", "device", "user_age"]
    )
    with pytest.raises(ValueError, match="embed raw features inside"):
        models.encoded_model(dupn)
    with pytest.raises(ValueError, match="functional keras-mtl model"):
        models.encoded_model(keras.layers.Dense(2))
    inputs = {"x": keras.Input((3,), name="x")}
    plain = keras.Model(inputs, keras.layers.Dense(1)(inputs["x"]))
    with pytest.raises(ValueError, match="no `InputBlock`"):
        models.encoded_model(plain)
    model = _model(features, tasks)
    with pytest.raises(ValueError, match=r"missing categorical feature"):
        models.encode_features(model, {"user_age": np.zeros(3)})


def test_runner_trains_on_the_fast_path_and_saves_the_raw_model(tmp_path):
    config = {
        "dataset": {"name": "funnel", "n": 4000},
        "training": {"epochs": 1, "steps_per_execution": 4},
        "output_dir": str(tmp_path / "run"),
    }
    model, report, out = runner.train(config, verbose=0)
    saved = keras.saving.load_model(out / "model.keras")
    dtypes = {t.name: t.dtype for t in saved.inputs}
    assert dtypes["device"] == "string"  # raw inputs, ready for serving
    frame = synthetic_funnel(50, seed=9)
    features = keras_mtl.features.load_features(out / "features.json")
    x = data_lib.features_to_arrays(frame, features)
    ours, theirs = model.predict(x, verbose=0), saved.predict(x, verbose=0)
    for name in ours:
        np.testing.assert_allclose(theirs[name], ours[name], rtol=1e-6)
    assert report.loc["click", "n"] == 400
    written = json.loads((out / "config.json").read_text())
    assert written["training"]["fast_path"] is True


def test_runner_validates_the_fast_path_fields(tmp_path):
    for field, value in (("fast_path", "yes"), ("steps_per_execution", 0)):
        config = {"training": {field: value}, "output_dir": str(tmp_path)}
        with pytest.raises(ValueError, match=f"training.{field}"):
            runner.resolve_config(config)


def test_numeric_only_model_gets_a_jit_twin():
    numeric = [NumericFeature("x", mean=0.0, variance=1.0)]
    tasks = [keras_mtl.Task("y")]
    model = models.shared_bottom(numeric, tasks)
    twin = models.encoded_model(model)
    models.compile_model(twin, tasks)
    assert twin.jit_compile is (keras.backend.backend() == "tensorflow")
    x = {"x": np.linspace(-1, 1, 8).astype("float32")}
    np.testing.assert_allclose(
        twin.predict(x, verbose=0)["y"],
        model.predict(x, verbose=0)["y"],
        rtol=1e-5,
    )


def test_dataframe_untouched_by_encoding(funnel):
    df, features, tasks = funnel
    before = df.copy()
    model = _model(features, tasks)
    data_lib.from_dataframe(df, features, tasks, 512, encode_with=model)
    pd.testing.assert_frame_equal(df, before)


def test_from_dataframe_encodes_like_encode_features(funnel):
    df, features, tasks = funnel
    model = _model(features, tasks)
    ds = data_lib.from_dataframe(
        df.head(500), features, tasks, 500, encode_with=model
    )
    (x, _, _), *_ = list(ds)
    expected = models.encode_features(
        model, data_lib.features_to_arrays(df.head(500), features)
    )
    assert sorted(x) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(x[name].numpy(), expected[name])
    assert x["device"].dtype == "int32"
    # Every categorical the model looks up must be among the features.
    without = [f for f in features if f.name != "device"]
    with pytest.raises(ValueError, match=r"`features` is missing.*device"):
        data_lib.from_dataframe(df, without, tasks, 512, encode_with=model)


def test_shuffled_data_fits_whole_epochs_without_warnings(funnel):
    df, features, tasks = funnel
    model = _model(features, tasks)
    twin = models.encoded_model(model)
    models.compile_model(twin, tasks, steps_per_execution=2)
    ds = data_lib.from_dataframe(
        df.head(600),
        features,
        tasks,
        256,
        shuffle=True,
        encode_with=model,
        pad_remainder=True,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = twin.fit(ds, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    ran_out = [w for w in caught if "ran out of data" in str(w.message)]
    assert ran_out == []


def test_string_columns_are_encoded_in_chunks_like_whole(funnel):
    df, features, tasks = funnel
    model = _model(features, tasks)
    encode = models.column_encoder(model)
    series = df["device"].head(50).copy()
    series.iloc[[3, 20]] = None  # missing values map to the missing id
    whole = encode("device", data_lib._strings(series))
    chunked = data_lib._encoded_strings(series, "device", encode, chunk=7)
    np.testing.assert_array_equal(chunked, whole)
    assert chunked.dtype == np.int32 and len(chunked) == 50
    assert chunked[3] == chunked[20] != chunked[0]


def test_float_id_chunks_print_like_the_whole_column(funnel):
    df, features, tasks = funnel
    encode = models.column_encoder(_model(features, tasks))
    # Whole numbers in the first chunk, a fraction only in the last: each
    # chunk must print its floats as the whole column does ("3.0", not "3").
    series = pd.Series([3.0, 1.0, np.nan, 2.0, 4.0, 2.5], dtype="float64")
    assert list(data_lib._strings(series)) == [
        "3.0",
        "1.0",
        "",
        "2.0",
        "4.0",
        "2.5",
    ]
    seen = []

    def recording(name, strings):
        seen.extend(strings)
        return encode(name, strings)

    data_lib._encoded_strings(series, "device", recording, chunk=4)
    assert seen == list(data_lib._strings(series))
