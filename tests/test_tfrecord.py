"""TFRecord input: `keras_mtl.data.to_tfrecord` / `from_tfrecord`."""

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from keras_mtl import Task
from keras_mtl import data
from keras_mtl import features as F

TASKS = [
    Task("click"),
    Task("cart", space="click"),
    Task("purchase", space="cart"),
    Task("watch_time", "regression", space="click"),
    Task("rating", "multiclass", num_classes=3),
]


def make_frame(n=301, seed=0):
    rng = np.random.default_rng(seed)
    click = rng.integers(0, 2, n).astype("float64")
    click[3] = np.nan  # an unobserved click: nothing inside is observed
    cart = np.nan_to_num(click) * rng.integers(0, 2, n)
    purchase = cart * rng.integers(0, 2, n)
    watch = np.where(click == 1, rng.exponential(30, n), np.nan)
    rating = rng.integers(0, 3, n).astype("float64")
    rating[::7] = np.nan
    return pd.DataFrame(
        {
            "row": np.arange(n),
            "user_id": np.where(
                rng.random(n) < 0.05, np.nan, rng.integers(0, 50, n)
            ),
            "device": rng.choice(["ios", "android", "web", ""], n),
            "price": np.where(
                rng.random(n) < 0.1, np.nan, rng.lognormal(size=n)
            ),
            "hist": [
                [f"i{v}" for v in rng.integers(0, 20, rng.integers(0, 7))]
                for _ in range(n)
            ],
            "hist_ids": [
                list(rng.integers(0, 30, rng.integers(0, 9))) for _ in range(n)
            ],
            "click": click,
            "cart": cart,
            "purchase": purchase,
            "watch_time": watch,
            "rating": rating,
        }
    )


def make_specs():
    return [
        F.NumericFeature("row", mean=150.0, variance=7500.0),
        F.CategoricalFeature("user_id", vocab_size=50, embed_dim=4),
        F.CategoricalFeature(
            "device", vocabulary=["ios", "android", "web"], embed_dim=2
        ),
        F.NumericFeature("price", mean=1.0, variance=1.0),
        F.SequenceFeature(
            "hist", vocabulary=[f"i{v}" for v in range(20)], max_len=4
        ),
        F.SequenceFeature("hist_ids", vocab_size=30, max_len=5),
    ]


def _batches(ds):
    return [tf.nest.map_structure(lambda t: t.numpy(), b) for b in ds]


def assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        for part_g, part_e in zip(g, e):
            assert sorted(part_g) == sorted(part_e)
            for key in part_e:
                a, b = part_g[key], part_e[key]
                assert a.dtype == b.dtype, key
                assert a.shape == b.shape, key
                np.testing.assert_array_equal(a, b, err_msg=key)


def _rows(ds):
    return np.concatenate([x["row"] for x, _, _ in _batches(ds)]).astype(int)


@pytest.mark.parametrize("compression", [None, "GZIP"], ids=["plain", "gzip"])
def test_round_trip_equals_from_dataframe(tmp_path, compression):
    df, specs = make_frame(), make_specs()
    paths = data.to_tfrecord(
        df,
        tmp_path / "part",
        specs,
        TASKS,
        num_shards=3,
        compression=compression,
    )
    suffix = ".tfrecord.gz" if compression else ".tfrecord"
    assert [p.rsplit("/", 1)[1] for p in paths] == [
        f"part-0000{i}-of-00003{suffix}" for i in range(3)
    ]
    got = _batches(
        data.from_tfrecord(
            str(tmp_path / "part-*"),
            specs,
            TASKS,
            batch_size=64,
            compression=compression,
        )
    )
    expected = _batches(data.from_dataframe(df, specs, TASKS, batch_size=64))
    assert_same_batches(got, expected)
    # The masking really is exercised: spaces, nested spaces, NaN labels.
    sw = {
        k: np.concatenate([b[2][k] for b in expected]) for k in expected[0][2]
    }
    assert sw["click"][3] == 0 and sw["cart"][3] == 0
    assert 0 < sw["purchase"].sum() < sw["cart"].sum() < sw["click"].sum()
    assert sw["rating"][::7].sum() == 0


def test_drop_remainder_and_dtypes(tmp_path):
    df, specs = make_frame(100), make_specs()
    data.to_tfrecord(df, tmp_path / "p", specs, TASKS)
    ds = data.from_tfrecord(
        str(tmp_path / "p-*"), specs, TASKS, batch_size=32, drop_remainder=True
    )
    x, y, sw = ds.element_spec
    assert x["row"].dtype == tf.float32 and x["user_id"].dtype == tf.int64
    assert x["device"].dtype == tf.string
    assert x["hist"].shape.as_list() == [32, 4]
    assert y["rating"].dtype == tf.int64 and y["click"].dtype == tf.float32
    assert sw["click"].dtype == tf.float32
    assert_same_batches(
        _batches(ds),
        _batches(
            data.from_dataframe(
                df, specs, TASKS, batch_size=32, drop_remainder=True
            )
        ),
    )


def test_shuffle_is_a_seeded_permutation(tmp_path):
    df, specs = make_frame(), make_specs()
    data.to_tfrecord(df, tmp_path / "p", specs, TASKS, num_shards=4)
    kwargs = dict(batch_size=50, shuffle=True, shuffle_buffer=64)
    pattern = str(tmp_path / "p-*")
    first = _rows(data.from_tfrecord(pattern, specs, TASKS, seed=1, **kwargs))
    again = _rows(data.from_tfrecord(pattern, specs, TASKS, seed=1, **kwargs))
    other = _rows(data.from_tfrecord(pattern, specs, TASKS, seed=2, **kwargs))
    np.testing.assert_array_equal(first, again)
    assert sorted(first) == list(range(len(df)))
    assert not np.array_equal(first, np.arange(len(df)))
    assert not np.array_equal(first, other)
    # Every pass over a repeated dataset is a new order.
    ds = data.from_tfrecord(pattern, specs, TASKS, seed=1, **kwargs).repeat(2)
    rows = _rows(ds)
    assert sorted(rows[: len(df)]) == sorted(rows[len(df) :])
    assert not np.array_equal(rows[: len(df)], rows[len(df) :])


@pytest.mark.parametrize(
    "num_files, num_shards, shard_by, by_file",
    [(4, 2, "auto", True), (5, 2, "file", True), (2, 3, "auto", False)],
    ids=["files_auto", "files_uneven", "records_fallback"],
)
def test_shards_are_disjoint_and_complete(
    tmp_path, num_files, num_shards, shard_by, by_file
):
    df, specs = make_frame(), make_specs()
    paths = data.to_tfrecord(df, tmp_path / "p", specs, TASKS, num_files)
    pattern = str(tmp_path / "p-*")
    parts = [
        _rows(
            data.from_tfrecord(
                pattern,
                specs,
                TASKS,
                batch_size=40,
                shard=(num_shards, i),
                shard_by=shard_by,
            )
        )
        for i in range(num_shards)
    ]
    together = np.concatenate(parts)
    assert sorted(together) == list(range(len(df)))  # complete, disjoint
    blocks = np.array_split(np.arange(len(df)), num_files)
    for i, rows in enumerate(parts):
        if by_file:
            # Shard i holds exactly files i, i + n, ... in order.
            expected = np.concatenate(blocks[i::num_shards])
            np.testing.assert_array_equal(rows, expected)
        else:
            np.testing.assert_array_equal(
                rows, np.arange(len(df))[i::num_shards]
            )
    assert len(paths) == num_files


def test_sharding_by_file_needs_enough_files(tmp_path):
    df, specs = make_frame(50), make_specs()
    data.to_tfrecord(df, tmp_path / "p", specs, TASKS, num_shards=2)
    with pytest.raises(ValueError, match=r"2 file\(s\) for 3 shards"):
        data.from_tfrecord(
            str(tmp_path / "p-*"), specs, TASKS, shard=(3, 0), shard_by="file"
        )
    with pytest.raises(ValueError, match=r"Received: shard=\(2, 2\)"):
        data.from_tfrecord(str(tmp_path / "p-*"), specs, TASKS, shard=(2, 2))
    with pytest.raises(ValueError, match="Received: shard_by='rows'"):
        data.from_tfrecord(
            str(tmp_path / "p-*"), specs, TASKS, shard=(2, 0), shard_by="rows"
        )


def _example(**values):
    feature = {}
    for key, value in values.items():
        if isinstance(value, float) or (
            isinstance(value, list) and value and isinstance(value[0], float)
        ):
            v = value if isinstance(value, list) else [value]
            feature[key] = tf.train.Feature(
                float_list=tf.train.FloatList(value=v)
            )
        elif isinstance(value, int) or isinstance(value, list):
            v = value if isinstance(value, list) else [value]
            feature[key] = tf.train.Feature(
                int64_list=tf.train.Int64List(value=v)
            )
        else:
            feature[key] = tf.train.Feature(
                bytes_list=tf.train.BytesList(value=[value.encode()])
            )
    return tf.train.Example(
        features=tf.train.Features(feature=feature)
    ).SerializeToString()


def _write(path, records):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return str(path)


SMALL_SPECS = [
    F.CategoricalFeature("user_id", vocab_size=50, embed_dim=4),
    F.CategoricalFeature("item", num_bins=10, embed_dim=4, dtype="string"),
    F.NumericFeature("price", mean=1.0, variance=1.0),
    F.SequenceFeature("hist", vocab_size=30, max_len=3),
]
SMALL_TASKS = [Task("click"), Task("conversion", space="click")]


def test_records_written_elsewhere_spark_style(tmp_path):
    """Integer numerics/labels/strings, long and absent sequences."""
    path = _write(
        tmp_path / "a.tfrecord",
        [
            _example(
                user_id=7,
                item="a",
                price=2,
                hist=[1, 2, 3, 4, 5],
                click=1,
                conversion=0.0,
            )
        ],
    )
    x, y, sw = next(iter(data.from_tfrecord(path, SMALL_SPECS, SMALL_TASKS)))
    np.testing.assert_array_equal(x["hist"].numpy(), [[3, 4, 5]])
    assert x["price"].dtype == tf.float32 and x["price"].numpy()[0] == 2.0
    assert y["click"].dtype == tf.float32
    # Integer string categoricals, and a later record without the
    # sequence key (Spark omits null arrays): an empty sequence.
    frame = pd.DataFrame(
        {
            "user_id": [3, 4],
            "item": [42, 7],
            "price": [0.5, 1.5],
            "hist": [[9], None],
            "click": [0, 1],
            "conversion": [1, 1],
        }
    )
    path = _write(
        tmp_path / "b.tfrecord",
        [
            _example(
                user_id=3, item=42, price=0.5, hist=[9], click=0, conversion=1
            ),
            _example(user_id=4, item=7, price=1.5, click=1, conversion=1),
        ],
    )
    got = _batches(data.from_tfrecord(path, SMALL_SPECS, SMALL_TASKS))
    expected = _batches(data.from_dataframe(frame, SMALL_SPECS, SMALL_TASKS))
    assert_same_batches(got, expected)
    assert got[0][0]["item"].tolist() == [b"42", b"7"]
    np.testing.assert_array_equal(got[0][0]["hist"], [[9, -1, -1], [-1] * 3])
    np.testing.assert_array_equal(got[0][2]["conversion"], [0, 1])


def test_missing_feature_in_first_record_names_it(tmp_path):
    path = _write(
        tmp_path / "a.tfrecord",
        [_example(user_id=1, price=1.0, hist=[1], click=1, conversion=0)],
    )
    with pytest.raises(ValueError, match=r"no feature\(s\) \['item'\]"):
        data.from_tfrecord(path, SMALL_SPECS, SMALL_TASKS)
    path = _write(
        tmp_path / "b.tfrecord",
        [_example(user_id=1, item="a", price=1.0, hist=[1], click=1)],
    )
    with pytest.raises(ValueError, match=r"no label\(s\) \['conversion'\]"):
        data.from_tfrecord(path, SMALL_SPECS, SMALL_TASKS)


def test_missing_feature_in_later_record_names_it(tmp_path):
    good = dict(user_id=1, item="a", price=1.0, hist=[1], click=1, conversion=0)
    bad = dict(good)
    del bad["price"]
    path = _write(tmp_path / "a.tfrecord", [_example(**good), _example(**bad)])
    ds = data.from_tfrecord(path, SMALL_SPECS, SMALL_TASKS, batch_size=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Feature: price"):
        _batches(ds)


@pytest.mark.parametrize(
    "record, message",
    [
        (
            dict(
                user_id=1.0,
                item="a",
                price=1.0,
                hist=[1],
                click=1,
                conversion=0,
            ),
            "int64 categorical 'user_id' is stored as float_list",
        ),
        (
            dict(
                user_id=1,
                item="a",
                price=[1.0, 2.0],
                hist=[1],
                click=1,
                conversion=0,
            ),
            "numeric 'price' holds 2 values",
        ),
        (
            dict(
                user_id=1,
                item="a",
                price=1.0,
                hist=[1],
                click="yes",
                conversion=0,
            ),
            "label 'click' is stored as bytes_list",
        ),
    ],
    ids=["id_as_float", "two_values", "label_as_bytes"],
)
def test_wrong_types_are_refused_naming_the_key(tmp_path, record, message):
    path = _write(tmp_path / "a.tfrecord", [_example(**record)])
    with pytest.raises(ValueError, match=message):
        data.from_tfrecord(path, SMALL_SPECS, SMALL_TASKS)


def test_bad_label_values_fail_naming_the_label(tmp_path):
    path = _write(
        tmp_path / "a.tfrecord",
        [
            _example(
                user_id=1, item="a", price=1.0, hist=[], click=2, conversion=0
            )
        ],
    )
    ds = data.from_tfrecord(path, SMALL_SPECS, SMALL_TASKS)
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"label `click` of task `click` has values outside \{0, 1\}",
    ):
        _batches(ds)


def test_compression_errors(tmp_path):
    df, specs = make_frame(20), make_specs()
    paths = data.to_tfrecord(
        df, tmp_path / "p", specs, TASKS, compression="gzip"
    )
    with pytest.raises(ValueError, match="Pass compression='GZIP'"):
        data.from_tfrecord(paths, specs, TASKS)
    with pytest.raises(ValueError, match="Received: compression='LZ4'"):
        data.from_tfrecord(paths, specs, TASKS, compression="LZ4")
    with pytest.raises(ValueError, match="Received: num_shards=21"):
        data.to_tfrecord(df, tmp_path / "q", specs, TASKS, num_shards=21)
    with pytest.raises(FileNotFoundError, match="matched no file"):
        data.from_tfrecord(str(tmp_path / "nothing-*"), specs, TASKS)


def test_writer_refuses_what_from_dataframe_refuses(tmp_path):
    df, specs = make_frame(20), make_specs()
    df.loc[2, "click"] = 3
    with pytest.raises(ValueError, match="values outside"):
        data.to_tfrecord(df, tmp_path / "p", specs, TASKS)
    assert not list(tmp_path.iterdir())


def test_tfrecord_to_dataframe_reads_back_the_columns(tmp_path):
    df, specs = make_frame(40), make_specs()
    data.to_tfrecord(df, tmp_path / "p", specs, TASKS, num_shards=2)
    back = data.tfrecord_to_dataframe(str(tmp_path / "p-*"), max_rows=30)
    assert len(back) == 30
    np.testing.assert_array_equal(back["row"], np.arange(30))
    assert back["device"].tolist() == df["device"].head(30).tolist()
    assert back["hist"].tolist() == [h[-4:] for h in df["hist"].head(30)]
    np.testing.assert_array_equal(
        back["watch_time"].isna(), df["watch_time"].head(30).isna()
    )


def test_infinite_numeric_feature_fails_naming_it(tmp_path):
    path = _write(
        tmp_path / "a.tfrecord",
        [
            _example(
                user_id=1,
                item="a",
                price=float("inf"),
                hist=[1],
                click=1,
                conversion=0,
            )
        ],
    )
    ds = data.from_tfrecord(path, SMALL_SPECS, SMALL_TASKS)
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match="numeric feature `price` has infinite value",
    ):
        _batches(ds)


@pytest.mark.slow
def test_runner_trains_and_evaluates_on_tfrecord_files(tmp_path):
    from keras_mtl import datasets
    from keras_mtl import metrics
    from keras_mtl import runner

    df = datasets.synthetic_funnel(1500, seed=2, num_users=50, num_items=40)
    tasks = datasets.funnel_tasks()
    specs = F.infer_features(df, labels=datasets.FUNNEL_LABELS)
    train, test = df.iloc[:1200], df.iloc[1200:]
    data.to_tfrecord(
        train, tmp_path / "train" / "part", specs, tasks, 2, "GZIP"
    )
    data.to_tfrecord(test, tmp_path / "test" / "part", specs, tasks, 1, "GZIP")
    config = {
        "dataset": {
            "name": "tfrecord",
            "path": str(tmp_path / "train" / "part-*"),
            "test_path": str(tmp_path / "test" / "part-*"),
            "compression": "GZIP",
        },
        "tasks": [t.get_config() for t in tasks],
        "model": {"architecture": "shared_bottom", "bottom_units": [16]},
        "training": {"epochs": 1, "batch_size": 256},
        "output_dir": str(tmp_path / "run"),
    }
    model, report, out = runner.train(config, verbose=0)
    features = F.load_features(out / "features.json")
    # Inferred from the records: strings, ids and the history sequence.
    kinds = {f.name: type(f).__name__ for f in features}
    assert kinds["device"] == "CategoricalFeature"
    assert kinds["hist_item_ids"] == "SequenceFeature"
    assert not set(kinds) & set(datasets.FUNNEL_LABELS)
    # The streamed test split scores exactly as the DataFrame it came from.
    expected = metrics.evaluate_report(model, test, tasks, features=features)
    assert report.loc["click", "n"] == len(test)
    pd.testing.assert_frame_equal(report, expected)
    again = runner.evaluate(out)
    pd.testing.assert_frame_equal(again, expected)
