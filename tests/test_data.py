import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from keras_mtl import Task
from keras_mtl import data
from keras_mtl import features as F
from keras_mtl.layers import InputBlock

TASKS = [
    Task("click"),
    Task("cart", space="click"),
    Task("purchase", space="cart"),
    Task("watch_time", "regression", space="click"),
]


def make_frame(n=300, seed=0):
    rng = np.random.default_rng(seed)
    click = rng.integers(0, 2, n)
    cart = click * rng.integers(0, 2, n)
    purchase = cart * rng.integers(0, 2, n)
    watch = np.where(click == 1, rng.exponential(30, n), np.nan)
    watch[:5] = np.nan  # some clicks without an observed watch time
    return pd.DataFrame(
        {
            "user_id": rng.integers(0, 50, n),
            "device": rng.choice(["ios", "android", "web"], n),
            "price": np.where(
                rng.random(n) < 0.1, np.nan, rng.lognormal(size=n)
            ),
            "hist": [
                [f"i{v}" for v in rng.integers(0, 20, rng.integers(0, 7))]
                for _ in range(n)
            ],
            "click": click,
            "cart": cart,
            "purchase": purchase,
            "watch_time": watch,
        }
    )


def specs_for(df):
    return F.infer_features(
        df, labels=[t.label for t in TASKS], max_len=4, embed_dim=4
    )


def test_sample_weights_follow_spaces_and_nan_labels():
    df = make_frame()
    x, y, sw = data.dataframe_to_arrays(df, specs_for(df), TASKS)
    np.testing.assert_array_equal(sw["click"], np.ones(len(df)))
    np.testing.assert_array_equal(sw["cart"], (df.click == 1).astype("float32"))
    # Nested space: purchase is observed where cart (inside click) is 1.
    np.testing.assert_array_equal(
        sw["purchase"], ((df.click == 1) & (df.cart == 1)).astype("float32")
    )
    expected = ((df.click == 1) & df.watch_time.notna()).astype("float32")
    np.testing.assert_array_equal(sw["watch_time"], expected)
    assert sw["watch_time"][:5].sum() == 0
    # NaN labels become 0, never NaN, so no NaN reaches a loss.
    assert not np.isnan(y["watch_time"]).any()
    assert set(np.unique(sw["cart"])) <= {0.0, 1.0}


def test_nan_binary_label_is_unobserved():
    df = make_frame()
    df["click"] = df["click"].astype("float64")
    df.loc[df.index[:7], "click"] = np.nan
    _, _, sw = data.dataframe_to_arrays(df, specs_for(make_frame()), TASKS)
    assert sw["click"][:7].sum() == 0 and sw["click"][7:].min() == 1
    # A task inside that space is unobserved there too.
    assert sw["cart"][:7].sum() == 0


def test_sequences_keep_the_last_max_len_entries_and_pad():
    spec = F.SequenceFeature("s", vocabulary=["a", "b", "c"], max_len=3)
    df = pd.DataFrame({"s": [["a", "b", "c", "a"], [], None, "b|c"]})
    x = data.features_to_arrays(df, [spec])
    assert x["s"].tolist() == [
        ["b", "c", "a"],
        ["", "", ""],
        ["", "", ""],
        ["b", "c", ""],
    ]
    ids = F.SequenceFeature("t", vocab_size=10, max_len=2)
    x = data.features_to_arrays(pd.DataFrame({"t": [[1, 2, 3], [4]]}), [ids])
    assert x["t"].tolist() == [[2, 3], [4, -1]]


def test_missing_values_become_mask_markers():
    specs = [
        F.CategoricalFeature("s", vocabulary=["a"]),
        F.CategoricalFeature("i", vocab_size=5),
    ]
    df = pd.DataFrame({"s": ["a", None], "i": [3, np.nan]})
    x = data.features_to_arrays(df, specs)
    assert x["s"].tolist() == ["a", ""]
    assert x["i"].tolist() == [3, -1]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda df: df.drop(columns=["device"]),
            r"missing feature column.*device",
        ),
        (lambda df: df.drop(columns=["cart"]), r"missing label column.*cart"),
        (lambda df: df.iloc[:0], "empty"),
        (
            lambda df: df.assign(
                click=np.where(np.arange(len(df)) < 3, 2, df.click)
            ),
            r"'click' of binary task 'click' has 3 row\(s\) with values "
            "outside",
        ),
        (
            lambda df: df.assign(
                price=["x" if i == 4 else 1.0 for i in range(len(df))]
            ),
            r"column 'price' must be numeric but has 1 non-numeric value",
        ),
        (
            lambda df: df.assign(user_id=np.arange(len(df)) + 0.5),
            r"id column 'user_id' must hold integers",
        ),
        (
            lambda df: df.assign(watch_time=np.inf),
            r"'watch_time' of task 'watch_time' has \d+ infinite",
        ),
    ],
    ids=[
        "missing_feature",
        "missing_label",
        "empty_frame",
        "binary_label_out_of_range",
        "non_numeric_numeric_feature",
        "non_integral_ids",
        "infinite_label",
    ],
)
def test_bad_input_is_refused_with_the_column_named(mutate, message):
    df = make_frame()
    specs = specs_for(df)
    with pytest.raises(ValueError, match=message):
        data.dataframe_to_arrays(mutate(df), specs, TASKS)
    # The dataset builders refuse it too, before any batch is produced.
    with pytest.raises(ValueError, match=message):
        data.from_dataframe(mutate(df), specs, TASKS)


def test_multiclass_labels_checked():
    task = Task("genre", "multiclass", num_classes=3)
    spec = F.NumericFeature("x")
    ok = pd.DataFrame({"x": [1.0, 2.0], "genre": [0, 2]})
    _, y, _ = data.dataframe_to_arrays(ok, [spec], [task])
    assert y["genre"].dtype == np.int64
    bad = pd.DataFrame({"x": [1.0, 2.0], "genre": [0, 3]})
    with pytest.raises(
        ValueError, match=r"1 row\(s\) that are not integers in \[0, 3\)"
    ):
        data.dataframe_to_arrays(bad, [spec], [task])


def _write_csv_and_parquet(df, tmp_path, shards=3):
    csv_df = df.copy()
    csv_df["hist"] = csv_df["hist"].map("|".join)
    parts = np.array_split(np.arange(len(df)), shards)
    for k, idx in enumerate(parts):
        csv_df.iloc[idx].to_csv(tmp_path / f"part-{k}.csv", index=False)
        df.iloc[idx].to_parquet(tmp_path / f"part-{k}.parquet", index=False)


def _collect(ds):
    batches = list(ds.as_numpy_iterator())
    return tuple(
        {k: np.concatenate([b[i][k] for b in batches]) for k in batches[0][i]}
        for i in range(3)
    )


def test_input_block_identical_for_dataframe_csv_and_parquet(tmp_path):
    df = make_frame(n=257)
    specs = specs_for(df)
    _write_csv_and_parquet(df, tmp_path)
    frame_arrays = data.dataframe_to_arrays(df, specs, TASKS)
    streams = {
        "csv": data.from_csv(
            str(tmp_path / "part-*.csv"),
            specs,
            TASKS,
            batch_size=64,
            chunk_size=50,
        ),
        "parquet": data.from_parquet(
            str(tmp_path / "part-*.parquet"),
            specs,
            TASKS,
            batch_size=64,
            chunk_size=50,
        ),
    }
    block = InputBlock(specs)
    expected = np.asarray(block(frame_arrays[0]))
    for fmt, ds in streams.items():
        x, y, sw = _collect(ds)
        assert len(x["price"]) == len(df), fmt  # no row lost
        np.testing.assert_array_equal(
            np.asarray(block(x)), expected, err_msg=fmt
        )
        for task in TASKS:
            np.testing.assert_array_equal(
                y[task.name], frame_arrays[1][task.name]
            )
            np.testing.assert_array_equal(
                sw[task.name], frame_arrays[2][task.name]
            )
    # Batches are sized globally, not per file.
    sizes = [len(b[0]["price"]) for b in streams["csv"].as_numpy_iterator()]
    assert sizes == [64, 64, 64, 64, 1]


def test_from_dataframe_batches_every_row_once_and_shuffles():
    df = make_frame(n=100)
    specs = specs_for(df)
    ds = data.from_dataframe(
        df, specs, TASKS, batch_size=32, shuffle=True, seed=3
    )
    epoch1 = np.concatenate([b[0]["user_id"] for b in ds.as_numpy_iterator()])
    epoch2 = np.concatenate([b[0]["user_id"] for b in ds.as_numpy_iterator()])
    assert sorted(epoch1) == sorted(df.user_id) == sorted(epoch2)
    assert not np.array_equal(epoch1, epoch2)  # a new order each epoch


def test_shuffled_batches_are_seeded_permutations():
    def epoch(ds):
        return np.concatenate(list(ds.as_numpy_iterator()))

    def make(seed, **kwargs):
        return data.arrays_to_dataset(
            np.arange(100), batch_size=32, shuffle=True, seed=seed, **kwargs
        )

    first, again, other = epoch(make(3)), epoch(make(3)), epoch(make(4))
    assert sorted(first) == list(range(100))
    np.testing.assert_array_equal(first, again)  # same seed, same order
    assert not np.array_equal(first, other)
    dropped = make(3, drop_remainder=True)
    assert dropped.element_spec.shape.as_list() == [32]
    sizes = [len(b) for b in dropped.as_numpy_iterator()]
    assert sizes == [32, 32, 32]
    assert len(set(epoch(dropped))) == 96
    # The number of batches stays known (Keras' epochs rely on it).
    assert int(make(3).cardinality()) == 4
    assert int(dropped.cardinality()) == 3


def test_file_sources_shard_and_fail_clearly(tmp_path):
    df = make_frame(n=90)
    specs = specs_for(df)
    _write_csv_and_parquet(df, tmp_path, shards=3)
    pattern = str(tmp_path / "part-*.csv")
    seen = []
    for index in range(2):
        x, _, _ = _collect(
            data.from_csv(
                pattern, specs, TASKS, batch_size=16, shard=(2, index)
            )
        )
        seen.append(len(x["price"]))
    assert seen == [60, 30]  # files 0 and 2, then file 1
    with pytest.raises(FileNotFoundError, match="matched no file"):
        data.from_csv(str(tmp_path / "nope-*.csv"), specs, TASKS)
    bad = df.copy()
    bad.loc[bad.index[0], "click"] = 5
    bad.to_parquet(tmp_path / "bad.parquet", index=False)
    with pytest.raises(ValueError, match=r"bad.parquet.*'click'.*1 row"):
        data.from_parquet(str(tmp_path / "bad.parquet"), specs, TASKS)
    df.drop(columns=["device"]).to_parquet(tmp_path / "cols.parquet")
    with pytest.raises(ValueError, match=r"missing column.*device"):
        data.from_parquet(str(tmp_path / "cols.parquet"), specs, TASKS)
    with pytest.raises(ValueError, match="batch_size"):
        data.from_csv(pattern, specs, TASKS, batch_size=0)


def test_train_val_split_partitions_rows():
    df = make_frame(n=101)
    train, val = data.train_val_split(df, 0.2, seed=1)
    assert len(val) == 20 and len(train) == 81
    assert sorted(train.index.tolist() + val.index.tolist()) == list(range(101))
    again, _ = data.train_val_split(df, 0.2, seed=1)
    assert train.index.equals(again.index)
    with pytest.raises(ValueError, match="val_fraction"):
        data.train_val_split(df, 1.5)


# Property tests: the vectorised conversions against plain-Python references.


@settings(max_examples=60, deadline=None)
@given(
    seqs=st.lists(
        st.lists(st.integers(0, 50), max_size=8), min_size=1, max_size=20
    ),
    max_len=st.integers(1, 6),
)
def test_sequence_padding_matches_reference(seqs, max_len):
    spec = F.SequenceFeature("s", vocab_size=51, max_len=max_len)
    out = data.features_to_arrays(pd.DataFrame({"s": seqs}), [spec])["s"]
    for row, seq in zip(out.tolist(), seqs):
        kept = seq[-max_len:] if seq else []
        assert row == kept + [-1] * (max_len - len(kept))


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from([0.0, 1.0, np.nan]),
            st.sampled_from([0.0, 1.0, np.nan]),
            st.sampled_from([0.5, 3.0, np.nan]),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_sample_weights_match_reference(rows):
    click, conv, watch = (np.array(c, dtype="float64") for c in zip(*rows))
    df = pd.DataFrame(
        {"x": np.ones(len(rows)), "click": click, "conv": conv, "watch": watch}
    )
    tasks = [
        Task("click"),
        Task("conv", space="click"),
        Task("watch", "regression", space="conv"),
    ]
    _, y, sw = data.dataframe_to_arrays(df, [F.NumericFeature("x")], tasks)
    for i, (c, v, w) in enumerate(rows):
        assert sw["click"][i] == (c == c)  # observed unless NaN
        assert sw["conv"][i] == (v == v and c == 1)
        assert sw["watch"][i] == (w == w and v == 1 and c == 1)
        assert not np.isnan(y["watch"][i])
