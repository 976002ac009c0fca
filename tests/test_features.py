import numpy as np
import pandas as pd
import pytest

from keras_mtl import features as F


@pytest.fixture
def frame():
    rng = np.random.default_rng(0)
    n = 500
    return pd.DataFrame(
        {
            "user_id": rng.integers(0, 300, n),
            "device": rng.choice(
                ["ios", "android", "web"], n, p=[0.6, 0.3, 0.1]
            ),
            "position": rng.integers(1, 6, n),
            "price": np.where(rng.random(n) < 0.1, np.nan, rng.random(n) * 10),
            "age": rng.normal(30, 5, n),
            "hist": [
                list(rng.integers(0, 40, rng.integers(0, 6))) for _ in range(n)
            ],
            "click": rng.integers(0, 2, n),
        }
    )


def test_infer_features_kinds_and_stats(frame):
    specs = {s.name: s for s in F.infer_features(frame, labels=["click"])}
    assert "click" not in specs
    # Strings: vocabulary, most frequent first.
    assert specs["device"].vocabulary == ["ios", "android", "web"]
    assert specs["device"].dtype == "string"
    # Low-cardinality and *_id integers are categorical ids.
    assert specs["position"].vocabulary is not None
    assert sorted(specs["position"].vocabulary) == [1, 2, 3, 4, 5]
    assert specs["user_id"].dtype == "int64"
    assert isinstance(specs["user_id"], F.CategoricalFeature)
    # Floats are numeric with statistics from the data, NaN ignored.
    price = specs["price"]
    assert isinstance(price, F.NumericFeature)
    np.testing.assert_allclose(price.mean, frame.price.mean(), rtol=1e-12)
    np.testing.assert_allclose(
        price.variance, frame.price.var(ddof=0), rtol=1e-12
    )
    assert price.minimum == frame.price.min()
    assert price.missing_indicator is True
    assert specs["age"].missing_indicator is False
    # Lists are sequences; max_len defaults to the longest list.
    hist = specs["hist"]
    assert isinstance(hist, F.SequenceFeature)
    assert hist.max_len == max(len(h) for h in frame["hist"])
    assert set(hist.vocabulary) == {v for h in frame["hist"] for v in h}


def test_inferred_specs_round_trip_through_json(frame, tmp_path):
    specs = F.infer_features(frame, labels=["click"], embed_dim=4)
    text = F.features_to_json(specs)
    assert F.features_from_json(text) == specs
    F.save_features(specs, tmp_path / "f.json")
    loaded = F.load_features(tmp_path / "f.json")
    assert loaded == specs
    assert [type(s) for s in loaded] == [type(s) for s in specs]


def test_infer_features_hashes_huge_vocabularies():
    df = pd.DataFrame({"q": [f"query {i}" for i in range(50)]})
    (spec,) = F.infer_features(df, max_vocab_size=10)
    assert spec.vocabulary is None and spec.num_bins == 20


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(vocabulary=["a"], embed_dim=0), "embed_dim"),
        (dict(vocabulary=["a"], embed_dim=2.5), "embed_dim"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(num_bins=1), "num_bins"),
        (dict(vocabulary=["a"], num_bins=10), "exactly one"),
        (dict(), "exactly one"),
        (dict(vocabulary=[]), "vocabulary"),
        (dict(vocabulary=["a", "a"]), "duplicate"),
        (dict(vocabulary=["a", 1]), "vocabulary"),
        (dict(vocabulary=["a", ""]), "missing-value"),
        (dict(vocabulary=["a"], shared_embedding=""), "shared_embedding"),
    ],
    ids=[
        "embed_dim_zero",
        "embed_dim_float",
        "vocab_size_zero",
        "num_bins_one",
        "two_encodings",
        "no_encoding",
        "empty_vocabulary",
        "duplicate_vocabulary",
        "mixed_vocabulary",
        "mask_in_vocabulary",
        "empty_shared_name",
    ],
)
def test_invalid_categorical_args(kwargs, field):
    with pytest.raises(ValueError, match=field):
        F.CategoricalFeature("f", **kwargs)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(max_len=0), "max_len"),
        (dict(pooling="attention"), "pooling"),
        (dict(separator="||"), "separator"),
    ],
    ids=["max_len_zero", "unknown_pooling", "long_separator"],
)
def test_invalid_sequence_args(kwargs, field):
    with pytest.raises(ValueError, match=field):
        F.SequenceFeature("s", vocab_size=10, **kwargs)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(variance=-1.0), "variance"),
        (dict(mean=float("nan")), "mean"),
        (dict(normalization="minmax"), "minimum"),
        (dict(normalization="minmax", minimum=2.0, maximum=1.0), "maximum"),
        (dict(normalization="robust"), "normalization"),
        (dict(fill_value=float("inf")), "fill_value"),
    ],
    ids=[
        "neg_variance",
        "nan_mean",
        "minmax_no_stats",
        "max_below_min",
        "unknown_norm",
        "inf_fill",
    ],
)
def test_invalid_numeric_args(kwargs, field):
    with pytest.raises(ValueError, match=field):
        F.NumericFeature("x", **kwargs)


def test_error_message_names_argument_and_value():
    with pytest.raises(ValueError) as err:
        F.CategoricalFeature("device", vocabulary=["a"], embed_dim=0)
    assert "`embed_dim` of feature 'device'" in str(err.value)
    assert "Received: embed_dim=0" in str(err.value)


def test_validate_features_refuses_duplicates_and_mismatched_sharing():
    a = F.CategoricalFeature("a", vocab_size=10)
    with pytest.raises(ValueError, match="used twice"):
        F.validate_features([a, F.CategoricalFeature("a", vocab_size=10)])
    with pytest.raises(ValueError, match="share embedding 'items'"):
        F.validate_features(
            [
                F.CategoricalFeature(
                    "item", vocab_size=10, shared_embedding="items"
                ),
                F.SequenceFeature(
                    "hist", vocab_size=11, shared_embedding="items"
                ),
            ]
        )
    with pytest.raises(ValueError, match="at least one"):
        F.validate_features([])


def test_infer_features_bad_input():
    with pytest.raises(ValueError, match="empty"):
        F.infer_features(pd.DataFrame({"a": []}))
    with pytest.raises(ValueError, match=r"`labels` .*\['ctr'\]"):
        F.infer_features(pd.DataFrame({"a": [1.0]}), labels=["ctr"])
    with pytest.raises(ValueError, match="No feature columns"):
        F.infer_features(pd.DataFrame({"a": [1.0]}), labels=["a"])


def test_numeric_fill_value_defaults_to_mean_in_raw_units():
    assert F.NumericFeature("x", mean=3.0).raw_fill_value == 3.0
    spec = F.NumericFeature("x", mean=np.log1p(9.0), log1p=True)
    np.testing.assert_allclose(spec.raw_fill_value, 9.0)
    assert F.NumericFeature("x", mean=3.0, fill_value=-1.0).raw_fill_value == -1
