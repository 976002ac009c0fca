"""Data pipelines: DataFrames and sharded files to `(x, y, sample_weight)`.

Every source yields the same structure, ready for `model.fit`:

- `x`: dict of raw features, one entry per feature spec (float32 numeric,
  int64 ids, string categoricals; sequences padded to `(n, max_len)`);
- `y`: dict of labels, one per task (NaN replaced by 0; int64 for
  multiclass);
- `sw`: dict of per-task sample weights: 0 outside the task's sample space
  (rows where its `space` task is not positive) and where its label is NaN,
  1 elsewhere. Compiled with `reduction="mean_with_sample_weight"` losses,
  each task's loss is then the mean over its observed rows.

Sources: `from_dataframe` (in memory), and `from_csv` / `from_parquet` for
sharded files larger than memory, which read chunk by chunk through the very
same conversion, so they produce the same stream as the DataFrame path;
`from_tfrecord` streams `tf.train.Example` shards (as Spark writes them;
`to_tfrecord` writes them from a DataFrame). Every file reader takes
`shard=` so each worker reads its own files.

The fast training path (`keras_mtl.models.encoded_model`):
`from_dataframe(..., encode_with=model)` maps the categorical features to
embedding row ids once, and `pad_remainder=True` pads the last batch with
zero-weight rows so an XLA-compiled step sees one batch shape.

Bad input raises `ValueError` naming the column before any work starts. No
row is ever dropped.
"""

import glob
import logging
import os
import zlib

import numpy as np
import pandas as pd

from keras_mtl import features as features_lib
from keras_mtl.task import validate_tasks

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# Conversion of one DataFrame (or one chunk of a file).
# ---------------------------------------------------------------------------


def _check_frame(df, features, tasks, where):
    if not isinstance(df, pd.DataFrame):
        raise ValueError(
            f"{where}: expected a pandas DataFrame. "
            f"Received: {type(df).__name__}"
        )
    if len(df) == 0:
        raise ValueError(f"{where}: the DataFrame is empty (0 rows).")
    missing = [f.name for f in features if f.name not in df.columns]
    if missing:
        raise ValueError(
            f"{where}: missing feature column(s) {missing}. "
            f"Columns present: {list(df.columns)}"
        )
    missing = [t.label for t in tasks or () if t.label not in df.columns]
    if missing:
        raise ValueError(
            f"{where}: missing label column(s) {missing}. "
            f"Columns present: {list(df.columns)}"
        )


def _examples(series, mask, k=3):
    return list(series[mask].head(k).tolist())


def _to_float(series, column, where):
    """Numeric column to float64, refusing non-numeric values."""
    if pd.api.types.is_bool_dtype(series):
        return series.to_numpy(dtype="float64")
    values = pd.to_numeric(series, errors="coerce")
    bad = values.isna() & series.notna()
    if pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(
        series
    ):
        # Empty strings are missing values, not garbage.
        bad &= series.astype(str).str.strip() != ""
    if bad.any():
        raise ValueError(
            f"{where}: column '{column}' must be numeric but has "
            f"{int(bad.sum())} non-numeric value(s), e.g. "
            f"{_examples(series, bad)}"
        )
    return values.to_numpy(dtype="float64")


def _numeric(series, spec, where):
    values = _to_float(series, spec.name, where)
    inf = np.isinf(values)
    if inf.any():
        raise ValueError(
            f"{where}: numeric feature '{spec.name}' has {int(inf.sum())} "
            "infinite value(s); use NaN for a missing value."
        )
    return values.astype("float32")


def _int_ids(series, column, where):
    values = _to_float(series, column, where)
    finite = ~np.isnan(values)
    if np.any(np.mod(values[finite], 1) != 0):
        raise ValueError(
            f"{where}: id column '{column}' must hold integers but has "
            f"non-integral values, e.g. "
            f"{values[finite][np.mod(values[finite], 1) != 0][:3].tolist()}"
        )
    return np.where(finite, values, -1).astype("int64")


def _integral_floats(series):
    """Whether `series` is a float column holding only whole numbers (ids
    read back with NaN), which print without ".0"."""
    if not pd.api.types.is_float_dtype(series):
        return False
    nums = series.to_numpy(dtype="float64")
    return bool(np.all(np.mod(nums[~np.isnan(nums)], 1) == 0))


def _strings(series, integral=None):
    """A column as Python strings, missing values as "".

    `integral`: `_integral_floats` of the whole column, when `series` is
    a chunk of it (so every chunk prints its floats the same way).
    """
    if integral is None:
        integral = _integral_floats(series)
    if integral:
        nums = series.to_numpy(dtype="float64")
        ok = ~np.isnan(nums)
        out = np.full(len(series), "", dtype=object)
        out[ok] = nums[ok].astype("int64").astype(str)
        return out
    out = series.astype(object).where(series.notna(), "")
    return out.astype(str).to_numpy(dtype=object)


def _categorical(series, spec, where):
    if spec.dtype == "int64":
        return _int_ids(series, spec.name, where)
    return _strings(series)


def _sequence(series, spec, where):
    """Lists (or separator-joined strings) to a `(n, max_len)` array.

    The last `max_len` entries are kept (the most recent behaviour); shorter
    sequences are left-aligned and padded with the missing value.
    """
    n, max_len = len(series), spec.max_len
    pad = spec.missing_value
    seqs = []
    for value in series.tolist():
        if value is None or (isinstance(value, float) and np.isnan(value)):
            seqs.append(())
        elif isinstance(value, str):
            seqs.append(value.split(spec.separator) if value else ())
        elif isinstance(value, (list, tuple, np.ndarray)):
            seqs.append(value)
        else:
            raise ValueError(
                f"{where}: sequence feature '{spec.name}' needs lists or "
                f"'{spec.separator}'-joined strings. Received a "
                f"{type(value).__name__}: {value!r}"
            )
    lengths = np.fromiter((len(s) for s in seqs), dtype="int64", count=n)
    kept = np.minimum(lengths, max_len)
    flat = [v for s, k in zip(seqs, kept) for v in list(s)[len(s) - k :]]
    if spec.dtype == "int64":
        try:
            flat = np.asarray(flat, dtype="float64")
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"{where}: sequence feature '{spec.name}' has int64 ids but "
                f"holds non-numeric entries ({err})."
            ) from None
        if np.any(np.mod(flat, 1) != 0):
            raise ValueError(
                f"{where}: sequence feature '{spec.name}' has non-integral ids."
            )
        flat = flat.astype("int64")
        out = np.full((n, max_len), pad, dtype="int64")
    else:
        flat = np.asarray([str(v) for v in flat], dtype=object)
        out = np.full((n, max_len), pad, dtype=object)
    rows = np.repeat(np.arange(n), kept)
    starts = np.cumsum(kept) - kept
    cols = np.arange(len(flat)) - np.repeat(starts, kept)
    out[rows, cols] = flat
    return out


def features_to_arrays(df, features, where="DataFrame"):
    """Raw feature columns of `df` as a dict of model-ready numpy arrays."""
    features = features_lib.validate_features(features)
    _check_frame(df, features, (), where)
    return _features_to_arrays(df, features, where)


def _features_to_arrays(df, features, where, encode=None):
    x = {}
    for spec in features:
        series = df[spec.name]
        if isinstance(spec, features_lib.NumericFeature):
            x[spec.name] = _numeric(series, spec, where)
        elif isinstance(spec, features_lib.SequenceFeature):
            x[spec.name] = _sequence(series, spec, where)
        elif encode is not None and spec.dtype != "int64":
            x[spec.name] = _encoded_strings(series, spec.name, encode)
            continue
        else:
            x[spec.name] = _categorical(series, spec, where)
        if encode is not None:
            # One raw column alive at a time (see `from_dataframe`).
            x[spec.name] = encode(spec.name, x[spec.name])
    return x


def _encoded_strings(series, name, encode, chunk=262_144):
    """A string column through `encode`, `chunk` rows at a time.

    A million Python strings take ~60 MiB, and converting a pandas column
    to them makes more than one copy; chunking keeps only one chunk's
    strings alive while the ids accumulate.
    """
    integral = _integral_floats(series)
    parts = [
        encode(name, _strings(series.iloc[i : i + chunk], integral))
        for i in range(0, len(series), chunk)
    ]
    return np.concatenate(parts)


def _labels(df, task, where):
    series = df[task.label]
    values = _to_float(series, task.label, where)
    observed = ~np.isnan(values)
    if np.isinf(values).any():
        raise ValueError(
            f"{where}: label column '{task.label}' of task '{task.name}' has "
            f"{int(np.isinf(values).sum())} infinite value(s)."
        )
    if task.kind == "binary":
        bad = observed & (values != 0) & (values != 1)
        if bad.any():
            raise ValueError(
                f"{where}: label column '{task.label}' of binary task "
                f"'{task.name}' has {int(bad.sum())} row(s) with values "
                f"outside {{0, 1}}, e.g. {values[bad][:3].tolist()}"
            )
    elif task.kind == "multiclass":
        bad = observed & (
            (np.mod(np.nan_to_num(values), 1) != 0)
            | (values < 0)
            | (values >= task.num_classes)
        )
        if bad.any():
            raise ValueError(
                f"{where}: label column '{task.label}' of multiclass task "
                f"'{task.name}' has {int(bad.sum())} row(s) that are not "
                f"integers in [0, {task.num_classes}), e.g. "
                f"{values[bad][:3].tolist()}"
            )
    return values, observed


def dataframe_to_arrays(df, features, tasks, where="DataFrame", encode=None):
    """Converts a DataFrame to `(x, y, sw)` numpy dicts.

    Args:
        df: pandas DataFrame with one column per feature spec and per task
            label.
        features: list of feature specs (`keras_mtl.features`).
        tasks: list of `keras_mtl.Task`.
        where: str. How errors name the source. Defaults to `"DataFrame"`.
        encode: optional function `(name, raw_values) -> values` applied
            to each feature column as soon as it is converted, e.g.
            `keras_mtl.models.column_encoder(model)` for the fast path.
            Defaults to `None`.

    Returns:
        `(x, y, sw)`: raw features by feature name; labels by task name
        (float32, NaN replaced by 0, or int64 for multiclass); sample weights
        by task name (float32, 0 outside the task's space and for NaN
        labels).

    Example:

    >>> x, y, sw = keras_mtl.data.dataframe_to_arrays(df, features, tasks)
    >>> model.fit(x, y, sample_weight=sw)
    """
    features = features_lib.validate_features(features)
    tasks = validate_tasks(tasks)
    _check_frame(df, features, tasks, where)
    x = _features_to_arrays(df, features, where, encode)
    raw = {t.name: _labels(df, t, where) for t in tasks}
    by_name = {t.name: t for t in tasks}
    y, sw = {}, {}
    for task in tasks:
        values, observed = raw[task.name]
        weight = observed.copy()
        space = task.space
        if space is not None:
            space_values = raw[space][0]
            weight &= space_values == 1
            # A space inside a space (e.g. purchase within add-to-cart within
            # click) only narrows the region further.
            space = by_name[space].space
            while space is not None:
                weight &= raw[space][0] == 1
                space = by_name[space].space
        filled = np.where(observed, values, 0.0)
        if task.kind == "multiclass":
            y[task.name] = filled.astype("int64")
        else:
            y[task.name] = filled.astype("float32")
        sw[task.name] = weight.astype("float32")
    return x, y, sw


# ---------------------------------------------------------------------------
# tf.data pipelines.
# ---------------------------------------------------------------------------


def _check_batching(batch_size, shuffle_buffer=None):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise ValueError(
            "`batch_size` must be a positive integer. "
            f"Received: batch_size={batch_size!r}"
        )
    if batch_size <= 0:
        raise ValueError(
            "`batch_size` must be a positive integer. "
            f"Received: batch_size={batch_size!r}"
        )
    if shuffle_buffer is not None and (
        not isinstance(shuffle_buffer, int) or shuffle_buffer <= 0
    ):
        raise ValueError(
            "`shuffle_buffer` must be a positive integer or None. "
            f"Received: shuffle_buffer={shuffle_buffer!r}"
        )


def _shuffled_index_batches(n, batch_size, seed, drop_remainder):
    """Batches of a new seeded permutation of `range(n)` every epoch.

    One permutation tensor per epoch, cut into batches, instead of
    `Dataset.shuffle(n)`: a full-size shuffle buffer holds every index as
    its own element (about 80 MiB per million rows, two buffers alive
    across an epoch boundary). Each new iterator draws a new epoch seed
    from `Dataset.random(seed, rerandomize_each_iteration=True)`, so the
    order changes every epoch and repeats across runs with the same seed
    (`seed=None`: a new order every run).
    """
    import tensorflow as tf

    full = n - n % batch_size
    tail = n > full and not drop_remainder

    def epoch(epoch_seed):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64),
            seed=tf.stack([epoch_seed, tf.constant(seed or 0, tf.int64)]),
        )
        batches = tf.data.Dataset.from_tensor_slices(
            tf.reshape(order[:full], [-1, batch_size])
        )
        if tail:
            rest = tf.data.Dataset.from_tensors(order[full:])
            batches = batches.concatenate(rest)
        return batches

    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    batches = seeds.take(1).flat_map(epoch)
    # `flat_map` hides the length; Keras needs it for its progress bar and
    # to know an epoch's steps without running out of data.
    count = full // batch_size + int(tail)
    return batches.apply(tf.data.experimental.assert_cardinality(count))


def arrays_to_dataset(
    arrays,
    batch_size=1024,
    shuffle=False,
    seed=0,
    drop_remainder=False,
    pad_remainder=False,
):
    """Batches in-memory arrays (any nest of dicts) into a `tf.data.Dataset`.

    Whole batches are gathered from in-memory tensors by index, which is far
    faster than slicing per example; `shuffle=True` draws a new permutation
    every epoch.

    `pad_remainder=True` pads the last partial batch with zero rows up to
    `batch_size`, so every batch has one static shape (XLA compiles a step
    once per shape). Use it only on `(x, y, sample_weight)` data: the
    padding rows get sample weight 0 for every task, so they add nothing
    to the losses (`mean_with_sample_weight` divides by the weights) or the
    weighted metrics.
    """
    import tensorflow as tf

    _check_batching(batch_size)
    if pad_remainder and drop_remainder:
        raise ValueError(
            "`pad_remainder` and `drop_remainder` exclude each other. "
            "Received: both True"
        )
    if pad_remainder and not (isinstance(arrays, tuple) and len(arrays) == 3):
        raise ValueError(
            "`pad_remainder=True` needs `(x, y, sample_weight)` arrays: the "
            "padding rows are masked by a zero sample weight. Received: "
            f"{type(arrays).__name__}"
        )
    leaves = tf.nest.flatten(arrays)
    n = len(leaves[0])
    tensors = tf.nest.map_structure(tf.constant, arrays)
    if shuffle:
        indices = _shuffled_index_batches(n, batch_size, seed, drop_remainder)
    else:
        indices = tf.data.Dataset.range(n).batch(
            batch_size, drop_remainder=drop_remainder
        )

    def gather(idx):
        batch = tf.nest.map_structure(lambda t: tf.gather(t, idx), tensors)
        if not pad_remainder:
            return batch
        missing = batch_size - tf.shape(idx)[0]

        def pad(t):
            paddings = [[0, missing]] + [[0, 0]] * (len(t.shape) - 1)
            fill = "" if t.dtype == tf.string else 0
            out = tf.pad(t, paddings, constant_values=fill)
            return tf.ensure_shape(out, [batch_size, *t.shape[1:]])

        return tf.nest.map_structure(pad, batch)

    ds = indices.map(
        gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    return ds.prefetch(tf.data.AUTOTUNE)


def from_dataframe(
    df,
    features,
    tasks,
    batch_size=1024,
    shuffle=False,
    seed=0,
    drop_remainder=False,
    encode_with=None,
    pad_remainder=False,
):
    """A `tf.data.Dataset` of `(x, y, sw)` batches from a DataFrame.

    Args:
        df: pandas DataFrame.
        features: list of feature specs.
        tasks: list of `keras_mtl.Task`.
        batch_size: int. Defaults to `1024`.
        shuffle: bool. Reshuffle every epoch. Defaults to `False`.
        seed: int. Shuffle seed. Defaults to `0`.
        drop_remainder: bool. Drop the last partial batch (logged with its
            row count). Defaults to `False`.
        encode_with: optional raw-input keras-mtl model. When given, the
            categorical features are mapped to embedding row ids once, here,
            with that model's lookups, for its
            `keras_mtl.models.encoded_model` twin (the fast training path).
            Defaults to `None` (raw features).
        pad_remainder: bool. Pad the last partial batch with zero-weight
            rows to `batch_size`, so an XLA-compiled step sees one shape
            (see `arrays_to_dataset`). Defaults to `False`.

    Returns:
        A batched, prefetched `tf.data.Dataset`.
    """
    _check_batching(batch_size)
    encode = None
    if encode_with is not None:
        from keras_mtl.models.encoded import column_encoder

        encode = column_encoder(encode_with)
        given = {spec.name for spec in features_lib.validate_features(features)}
        missing = sorted(set(encode.names) - given)
        if missing:
            raise ValueError(
                f"`features` is missing categorical feature(s) {missing} of "
                f"the `encode_with` model. Received: {sorted(given)}"
            )
    arrays = dataframe_to_arrays(df, features, tasks, encode=encode)
    if drop_remainder and len(df) % batch_size:
        logger.info(
            "drop_remainder=True: %d row(s) of the last partial batch are "
            "left out of each epoch.",
            len(df) % batch_size,
        )
    return arrays_to_dataset(
        arrays,
        batch_size,
        shuffle,
        seed,
        drop_remainder=drop_remainder,
        pad_remainder=pad_remainder,
    )


def _list_files(file_pattern, shard):
    patterns = [file_pattern] if isinstance(file_pattern, str) else file_pattern
    files = []
    for pattern in patterns:
        matched = sorted(glob.glob(os.fspath(pattern)))
        if not matched:
            raise FileNotFoundError(
                f"`file_pattern` matched no file: {os.fspath(pattern)!r}"
            )
        files.extend(matched)
    if shard is not None:
        num_shards, index = shard
        if not 0 <= index < num_shards:
            raise ValueError(
                "`shard` must be (num_shards, index) with 0 <= index < "
                f"num_shards. Received: shard={shard!r}"
            )
        files = files[index::num_shards]
        if not files:
            raise ValueError(
                f"Shard {index} of {num_shards} got no file out of "
                f"{len(patterns)} pattern(s); use at least as many files as "
                "workers."
            )
    return files


def _csv_dtypes(features):
    """Read string categoricals as text so ids like '007' stay intact."""
    return {
        f.name: str
        for f in features
        if isinstance(f, features_lib.CategoricalFeature)
        and (f.dtype == "string" or isinstance(f, features_lib.SequenceFeature))
    }


def _read_chunks(path, fmt, features, tasks, chunk_size):
    columns = [f.name for f in features] + [t.label for t in tasks]
    columns = list(dict.fromkeys(columns))
    if fmt == "csv":
        reader = pd.read_csv(
            path,
            chunksize=chunk_size,
            dtype=_csv_dtypes(features),
            keep_default_na=True,
        )
        yield from reader
    else:
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        names = set(parquet.schema_arrow.names)
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing}. Columns present: "
                f"{parquet.schema_arrow.names}"
            )
        for batch in parquet.iter_batches(
            batch_size=chunk_size, columns=columns
        ):
            yield batch.to_pandas()


def _signature(features, tasks):
    import tensorflow as tf

    x = {}
    for spec in features:
        dtype = {"float32": tf.float32, "int64": tf.int64}.get(
            spec.dtype, tf.string
        )
        if isinstance(spec, features_lib.SequenceFeature):
            x[spec.name] = tf.TensorSpec((None, spec.max_len), dtype)
        else:
            x[spec.name] = tf.TensorSpec((None,), dtype)
    y = {
        t.name: tf.TensorSpec(
            (None,), tf.int64 if t.kind == "multiclass" else tf.float32
        )
        for t in tasks
    }
    sw = {t.name: tf.TensorSpec((None,), tf.float32) for t in tasks}
    return x, y, sw


def _from_files(
    fmt,
    file_pattern,
    features,
    tasks,
    batch_size,
    shuffle,
    seed,
    chunk_size,
    shard,
    drop_remainder,
):
    import tensorflow as tf

    features = features_lib.validate_features(features)
    tasks = validate_tasks(tasks)
    _check_batching(batch_size)
    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(
            "`chunk_size` must be a positive integer. "
            f"Received: chunk_size={chunk_size!r}"
        )
    files = _list_files(file_pattern, shard)
    # Validate the schema and the first chunk eagerly, before any training
    # starts; later chunks are checked the same way as they stream in.
    first = next(_read_chunks(files[0], fmt, features, tasks, chunk_size))
    dataframe_to_arrays(first, features, tasks, where=files[0])

    def generate(path):
        path = path.decode() if isinstance(path, bytes) else path
        rng = np.random.default_rng([seed, zlib.crc32(path.encode())])
        for i, chunk in enumerate(
            _read_chunks(path, fmt, features, tasks, chunk_size)
        ):
            x, y, sw = dataframe_to_arrays(
                chunk, features, tasks, where=f"{path} (chunk {i})"
            )
            if shuffle:
                order = rng.permutation(len(chunk))
                x, y, sw = (
                    {k: v[order] for k, v in d.items()} for d in (x, y, sw)
                )
            yield x, y, sw

    signature = _signature(features, tasks)
    file_ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        file_ds = file_ds.shuffle(len(files), seed=seed)
    read = lambda path: tf.data.Dataset.from_generator(  # noqa: E731
        generate, output_signature=signature, args=(path,)
    )
    if shuffle:
        ds = file_ds.interleave(
            read,
            cycle_length=min(4, len(files)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    else:
        # File order, then row order: the same stream as the DataFrame.
        ds = file_ds.flat_map(read)
    ds = ds.rebatch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


def from_csv(
    file_pattern,
    features,
    tasks,
    batch_size=1024,
    shuffle=False,
    seed=0,
    chunk_size=65_536,
    shard=None,
    drop_remainder=False,
):
    """Streams sharded CSV files as `(x, y, sw)` batches.

    Files are read chunk by chunk with pandas and converted exactly as
    `from_dataframe` converts a frame, so the stream equals the DataFrame
    path for the same rows (in file order when `shuffle=False`). Memory is
    bounded by `chunk_size`, not by the data.

    Args:
        file_pattern: str or list of str. Glob pattern(s); matched files are
            read in sorted order.
        features: list of feature specs.
        tasks: list of `keras_mtl.Task`.
        batch_size: int. Defaults to `1024`.
        shuffle: bool. Shuffle file order and rows within each chunk, and
            interleave 4 files. Defaults to `False`.
        seed: int. Defaults to `0`.
        chunk_size: int. Rows read at a time. Defaults to `65_536`.
        shard: tuple `(num_shards, index)` or None. Keep every
            `num_shards`-th file starting at `index` (one shard per worker).
        drop_remainder: bool. Defaults to `False`.

    Returns:
        A batched `tf.data.Dataset`.
    """
    return _from_files(
        "csv",
        file_pattern,
        features,
        tasks,
        batch_size,
        shuffle,
        seed,
        chunk_size,
        shard,
        drop_remainder,
    )


def from_parquet(
    file_pattern,
    features,
    tasks,
    batch_size=1024,
    shuffle=False,
    seed=0,
    chunk_size=65_536,
    shard=None,
    drop_remainder=False,
):
    """Streams sharded Parquet files as `(x, y, sw)` batches.

    Same contract as `from_csv`; row groups are read with pyarrow.
    """
    return _from_files(
        "parquet",
        file_pattern,
        features,
        tasks,
        batch_size,
        shuffle,
        seed,
        chunk_size,
        shard,
        drop_remainder,
    )


def train_val_split(df, val_fraction=0.2, seed=0):
    """Splits a DataFrame at random into `(train_df, val_df)`.

    Args:
        df: pandas DataFrame.
        val_fraction: float in (0, 1). Share of rows for validation.
            Defaults to `0.2`.
        seed: int. Defaults to `0`.

    Returns:
        `(train_df, val_df)`; together they hold every row exactly once.
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(
            f"`df` must be a pandas DataFrame. Received: {type(df).__name__}"
        )
    if not isinstance(val_fraction, (int, float)) or not (0 < val_fraction < 1):
        raise ValueError(
            "`val_fraction` must be in (0, 1). "
            f"Received: val_fraction={val_fraction!r}"
        )
    n_val = int(round(len(df) * val_fraction))
    if n_val == 0 or n_val == len(df):
        raise ValueError(
            f"`val_fraction={val_fraction}` of {len(df)} rows leaves one "
            "side empty."
        )
    order = np.random.default_rng(seed).permutation(len(df))
    return df.iloc[order[n_val:]], df.iloc[order[:n_val]]


# ---------------------------------------------------------------------------
# TFRecord files of `tf.train.Example` records.
# ---------------------------------------------------------------------------

TFRECORD_COMPRESSIONS = (None, "GZIP", "ZLIB")
_TFRECORD_SUFFIX = {None: ".tfrecord", "GZIP": ".tfrecord.gz", "ZLIB": ".zz"}


def _check_compression(compression):
    if isinstance(compression, str):
        compression = compression.upper() or None
    if compression not in TFRECORD_COMPRESSIONS:
        raise ValueError(
            "`compression` must be None, 'GZIP' or 'ZLIB'. "
            f"Received: compression={compression!r}"
        )
    return compression


def _check_label_names(features, tasks):
    labels = {t.label for t in tasks}
    clash = sorted(labels & {f.name for f in features})
    if clash:
        raise ValueError(
            f"Label column(s) {clash} are also feature names; a "
            "tf.train.Example holds one value list per key."
        )


def _kept_lengths(series, spec):
    """Entries of each sequence that `_sequence` keeps (the last max_len)."""
    out = np.zeros(len(series), dtype="int64")
    for i, value in enumerate(series.tolist()):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        if isinstance(value, str):
            n = len(value.split(spec.separator)) if value else 0
        else:
            n = len(value)
        out[i] = min(n, spec.max_len)
    return out


def to_tfrecord(df, path, features, tasks, num_shards=1, compression=None):
    """Writes a DataFrame as sharded TFRecord files of `tf.train.Example`.

    The rows are converted exactly as `from_dataframe` converts them (and
    refused for the same reasons), then written one `tf.train.Example` per
    row with one key per feature and per task label:

    - numeric feature: `float_list` with one value (NaN when missing);
    - `int64` categorical: `int64_list` with one value (-1 when missing);
    - `string` categorical: `bytes_list` with one value (`b""` when
      missing);
    - sequence: the kept entries (the last `max_len`), unpadded, as an
      `int64_list` or `bytes_list` (empty when missing);
    - label: `float_list` with one value, NaN where it is not observed.

    `from_tfrecord` reads the files back into the very batches
    `from_dataframe` yields for `df`. Rows go to the shards in contiguous
    blocks, so the sorted file names list them in row order. Writing is a
    Python loop (tens of thousands of rows a second): meant for tests,
    examples and moderate data; write large data with Spark (see
    docs/distributed.md for the schema).

    Args:
        df: pandas DataFrame.
        path: str. Path prefix; shard `i` of `n` is written to
            `{path}-{i:05d}-of-{n:05d}.tfrecord` (`.tfrecord.gz` for GZIP,
            `.zz` for ZLIB). Missing parent directories are created.
        features: list of feature specs.
        tasks: list of `keras_mtl.Task`.
        num_shards: int. Number of files, at most the number of rows.
            Defaults to `1`.
        compression: None, `"GZIP"` or `"ZLIB"`. Defaults to `None`.

    Returns:
        The list of written file paths, in row order.

    Example:

    >>> paths = keras_mtl.data.to_tfrecord(
    ...     df, "/data/train/part", features, tasks, num_shards=8)
    >>> ds = keras_mtl.data.from_tfrecord(
    ...     "/data/train/part-*", features, tasks, batch_size=1024)
    """
    import tensorflow as tf

    features = features_lib.validate_features(features)
    tasks = validate_tasks(tasks)
    compression = _check_compression(compression)
    _check_label_names(features, tasks)
    if (
        isinstance(num_shards, bool)
        or not isinstance(num_shards, int)
        or num_shards < 1
    ):
        raise ValueError(
            "`num_shards` must be a positive integer. "
            f"Received: num_shards={num_shards!r}"
        )
    x, _, _ = dataframe_to_arrays(df, features, tasks)
    if num_shards > len(df):
        raise ValueError(
            f"`num_shards` must be at most the number of rows ({len(df)}). "
            f"Received: num_shards={num_shards}"
        )
    labels = {}
    for task in tasks:
        labels[task.label] = _labels(df, task, "DataFrame")[0].astype("float32")
    kept = {
        spec.name: _kept_lengths(df[spec.name], spec)
        for spec in features
        if isinstance(spec, features_lib.SequenceFeature)
    }

    def float_feature(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    def int_feature(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    def bytes_feature(values):
        return tf.train.Feature(
            bytes_list=tf.train.BytesList(
                value=[v.encode("utf-8") for v in values]
            )
        )

    def example(i):
        out = {}
        for spec in features:
            values = x[spec.name][i]
            if spec.name in kept:
                values = values[: kept[spec.name][i]]
            else:
                values = [values]
            if isinstance(spec, features_lib.NumericFeature):
                out[spec.name] = float_feature(values)
            elif spec.dtype == "int64":
                out[spec.name] = int_feature(values)
            else:
                out[spec.name] = bytes_feature(values)
        for label, values in labels.items():
            out[label] = float_feature([values[i]])
        return tf.train.Example(features=tf.train.Features(feature=out))

    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    options = tf.io.TFRecordOptions(compression_type=compression or "")
    paths = []
    for i, rows in enumerate(np.array_split(np.arange(len(df)), num_shards)):
        name = (
            f"{os.fspath(path)}-{i:05d}-of-{num_shards:05d}"
            f"{_TFRECORD_SUFFIX[compression]}"
        )
        with tf.io.TFRecordWriter(name, options) as writer:
            for row in rows:
                writer.write(example(row).SerializeToString())
        paths.append(name)
    return paths


def _list_tfrecord_files(file_pattern):
    """Sorted matches of the pattern(s), through `tf.io.gfile`.

    Local paths, and any filesystem TensorFlow reads (e.g. `gs://`).
    """
    import tensorflow as tf

    patterns = [file_pattern] if isinstance(file_pattern, str) else file_pattern
    if not isinstance(patterns, (list, tuple)):
        patterns = [patterns]  # a pathlib.Path
    files = []
    for pattern in patterns:
        matched = sorted(tf.io.gfile.glob(os.fspath(pattern)))
        if not matched:
            raise FileNotFoundError(
                f"`file_pattern` matched no file: {os.fspath(pattern)!r}"
            )
        files.extend(matched)
    return files


def _tfrecord_read_error(path, compression, err):
    hint = (
        " Is the file compressed? Pass compression='GZIP' (or 'ZLIB')."
        if compression is None
        else " Is the file compressed the way `compression` says?"
    )
    return ValueError(
        f"{path}: cannot read a TFRecord ({type(err).__name__}: "
        f"{str(err).splitlines()[0][:200]}).{hint} "
        f"Received: compression={compression!r}"
    )


def _first_example(files, compression):
    """The first `tf.train.Example` of `files`, with the file holding it."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    for path in files:
        ds = tf.data.TFRecordDataset(path, compression_type=compression or "")
        try:
            records = [r.numpy() for r in ds.take(1)]
        except tf.errors.OpError as err:
            raise _tfrecord_read_error(path, compression, err) from None
        if not records:
            continue
        try:
            return path, tf.train.Example.FromString(records[0])
        except DecodeError as err:
            raise ValueError(
                f"{path}: the first record is not a serialized "
                f"tf.train.Example ({err})."
            ) from None
    raise ValueError(f"No record in the {len(files)} TFRecord file(s).")


def _tfrecord_kinds(example, path, features, tasks):
    """Checks the first record's keys; returns each key's value-list kind.

    Scalar features and labels must hold exactly one value; numeric
    features and labels may be stored as floats or integers, string
    categoricals as bytes or integers (read as their decimal strings).
    """
    present = example.features.feature
    missing = [f.name for f in features if f.name not in present]
    if missing:
        raise ValueError(
            f"{path}: the first record has no feature(s) {missing}. "
            f"Keys present: {sorted(present)}"
        )
    labels = list(dict.fromkeys(t.label for t in tasks))
    missing = [label for label in labels if label not in present]
    if missing:
        raise ValueError(
            f"{path}: the first record has no label(s) {missing} (write NaN "
            f"where a label is not observed). Keys present: {sorted(present)}"
        )
    kinds = {}
    checks = [(spec.name, spec) for spec in features]
    checks += [(label, None) for label in labels]
    for name, spec in checks:
        kind = present[name].WhichOneof("kind")
        sequence = isinstance(spec, features_lib.SequenceFeature)
        if spec is None or isinstance(spec, features_lib.NumericFeature):
            allowed, what = ("float_list", "int64_list"), "numeric"
        elif spec.dtype == "int64":
            allowed, what = ("int64_list",), "int64 categorical"
        else:
            allowed, what = ("bytes_list", "int64_list"), "string categorical"
        if spec is None:
            what = "label"
        if kind is None and sequence:
            kind = allowed[0]  # an empty sequence
        if kind not in allowed:
            raise ValueError(
                f"{path}: {what} '{name}' is stored as {kind}; expected "
                f"{' or '.join(allowed)}."
            )
        count = len(getattr(present[name], kind).value)
        if not sequence and count != 1:
            raise ValueError(
                f"{path}: {what} '{name}' holds {count} values in the first "
                "record; it needs exactly one (a list of ids needs a "
                "SequenceFeature)."
            )
        kinds[name] = kind
    return kinds


def _shard_files(files, shard, shard_by):
    """Files this shard reads, and the record shard (or None)."""
    if shard_by not in ("auto", "file", "data"):
        raise ValueError(
            "`shard_by` must be 'auto', 'file' or 'data'. "
            f"Received: shard_by={shard_by!r}"
        )
    if shard is None:
        return files, None
    if (
        not isinstance(shard, (tuple, list))
        or len(shard) != 2
        or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in shard
        )
        or not 0 <= shard[1] < shard[0]
    ):
        raise ValueError(
            "`shard` must be (num_shards, index) with 0 <= index < "
            f"num_shards. Received: shard={shard!r}"
        )
    num_shards, index = shard
    if num_shards == 1:
        return files, None
    if shard_by == "file" or (shard_by == "auto" and len(files) >= num_shards):
        if len(files) < num_shards:
            raise ValueError(
                f"shard_by='file' needs at least as many files as shards: "
                f"{len(files)} file(s) for {num_shards} shards. Use "
                "shard_by='data' or write more files."
            )
        return files[index::num_shards], None
    logger.info(
        "%d TFRecord file(s) for %d shards: sharding by record (every "
        "shard reads every file and keeps every %d-th record).",
        len(files),
        num_shards,
        num_shards,
    )
    return files, (num_shards, index)


def _tfrecord_parser(features, tasks, kinds):
    """A function from a batch of serialized records to `(x, y, sw)`."""
    import tensorflow as tf

    dtypes = {
        "float_list": tf.float32,
        "int64_list": tf.int64,
        "bytes_list": tf.string,
    }
    spec_map = {}
    for spec in features:
        dtype = dtypes[kinds[spec.name]]
        if isinstance(spec, features_lib.SequenceFeature):
            spec_map[spec.name] = tf.io.RaggedFeature(
                dtype, row_splits_dtype=tf.int64
            )
        else:
            spec_map[spec.name] = tf.io.FixedLenFeature([], dtype)
    for task in tasks:
        spec_map[task.label] = tf.io.FixedLenFeature(
            [], dtypes[kinds[task.label]]
        )
    by_name = {t.name: t for t in tasks}

    def check(bad, message):
        return tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(bad)), [message]
        )

    # Straight-line graph code: AutoGraph conversion would only cost time.
    @tf.autograph.experimental.do_not_convert
    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec_map)
        checks = []
        x = {}
        for spec in features:
            value = parsed[spec.name]
            if isinstance(spec, features_lib.NumericFeature):
                value = tf.cast(value, tf.float32)
                checks.append(
                    check(
                        tf.math.is_inf(value),
                        f"TFRecord numeric feature `{spec.name}` has "
                        "infinite value(s); use NaN for a missing value.",
                    )
                )
            else:
                if spec.dtype == "string" and value.dtype != tf.string:
                    value = (
                        value.with_flat_values(
                            tf.strings.as_string(value.flat_values)
                        )
                        if isinstance(value, tf.RaggedTensor)
                        else tf.strings.as_string(value)
                    )
                if isinstance(spec, features_lib.SequenceFeature):
                    value = value[:, -spec.max_len :].to_tensor(
                        default_value=spec.missing_value,
                        shape=[None, spec.max_len],
                    )
            x[spec.name] = value
        raw = {}
        for task in tasks:
            value = tf.cast(parsed[task.label], tf.float32)
            observed = tf.logical_not(tf.math.is_nan(value))
            where = f"TFRecord label `{task.label}` of task `{task.name}`"
            checks.append(
                check(tf.math.is_inf(value), f"{where} has infinite values.")
            )
            if task.kind == "binary":
                bad = observed & (value != 0) & (value != 1)
                checks.append(
                    check(bad, f"{where} has values outside {{0, 1}}.")
                )
            elif task.kind == "multiclass":
                bad = observed & (
                    (value != tf.floor(value))
                    | (value < 0)
                    | (value >= task.num_classes)
                )
                checks.append(
                    check(
                        bad,
                        f"{where} has values that are not integers in "
                        f"[0, {task.num_classes}).",
                    )
                )
            raw[task.name] = (value, observed)
        y, sw = {}, {}
        for task in tasks:
            value, observed = raw[task.name]
            weight = observed
            space = task.space
            while space is not None:
                weight &= raw[space][0] == 1
                space = by_name[space].space
            filled = tf.where(observed, value, tf.zeros_like(value))
            y[task.name] = (
                tf.cast(filled, tf.int64)
                if task.kind == "multiclass"
                else filled
            )
            sw[task.name] = tf.cast(weight, tf.float32)
        with tf.control_dependencies(checks):
            return tf.nest.map_structure(tf.identity, (x, y, sw))

    return parse


def from_tfrecord(
    file_pattern,
    features,
    tasks,
    batch_size=1024,
    shuffle=False,
    seed=0,
    shard=None,
    shard_by="auto",
    compression=None,
    shuffle_buffer=10_000,
    drop_remainder=False,
):
    """Streams TFRecord files of `tf.train.Example` as `(x, y, sw)` batches.

    Records are batched first and parsed a batch at a time with
    `tf.io.parse_example`, all inside `tf.data`. The result equals
    `from_dataframe` for the same rows (same dtypes, shapes, values,
    masking; in file order then record order when `shuffle=False`): labels
    NaN become 0 with weight 0, and a task's weight is 0 outside its space.
    The schema is the one `to_tfrecord` writes (see docs/distributed.md for
    Spark): every scalar feature and every label holds exactly one value in
    every record (a missing one is an error naming the key; write NaN, -1
    or `b""` for missing values); numeric features and labels may be
    floats or integers, string categoricals bytes or integers; a sequence
    is a value list of any length, of which the last `max_len` entries are
    kept (a record without the key is an empty sequence). The first record
    is checked eagerly, so a misspelt or mistyped key fails before
    training with a `ValueError`; a later record without a key fails while
    iterating with TensorFlow's `InvalidArgumentError` naming it.

    Args:
        file_pattern: str or list of str. Glob pattern(s), listed with
            `tf.io.gfile.glob` (local paths, or any filesystem TensorFlow
            reads); matched files are read in sorted order.
        features: list of feature specs.
        tasks: list of `keras_mtl.Task`.
        batch_size: int. Defaults to `1024`.
        shuffle: bool. Shuffle the file order (every pass), interleave 4
            files and shuffle records in a buffer of `shuffle_buffer`.
            Defaults to `False`.
        seed: int. Seed of every shuffle; the stream is deterministic for
            a given seed. Defaults to `0`.
        shard: tuple `(num_shards, index)` or None. The part of the data
            this reader keeps (one shard per worker).
        shard_by: `"auto"`, `"file"` or `"data"`. `"file"`: keep every
            `num_shards`-th file starting at `index` (needs at least as
            many files as shards); `"data"`: read every file and keep
            every `num_shards`-th record; `"auto"`: by file when there are
            enough files, else by record. Defaults to `"auto"`.
        compression: None, `"GZIP"` or `"ZLIB"`. Defaults to `None`.
        shuffle_buffer: int. Records in the shuffle buffer. Defaults to
            `10_000`.
        drop_remainder: bool. Defaults to `False`.

    Returns:
        A batched, prefetched `tf.data.Dataset`.

    Example:

    >>> ds = keras_mtl.data.from_tfrecord(
    ...     "/data/train/part-*.tfrecord.gz", features, tasks,
    ...     batch_size=1024, shuffle=True, compression="GZIP")
    >>> model.fit(ds, epochs=3)
    """
    import tensorflow as tf

    features = features_lib.validate_features(features)
    tasks = validate_tasks(tasks)
    _check_batching(batch_size, shuffle_buffer)
    compression = _check_compression(compression)
    _check_label_names(features, tasks)
    files = _list_tfrecord_files(file_pattern)
    files, record_shard = _shard_files(files, shard, shard_by)
    path, example = _first_example(files, compression)
    kinds = _tfrecord_kinds(example, path, features, tasks)
    parse = _tfrecord_parser(features, tasks, kinds)

    compression_type = compression or ""
    file_ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        file_ds = file_ds.shuffle(
            len(files), seed=seed, reshuffle_each_iteration=True
        )
        ds = file_ds.interleave(
            lambda f: tf.data.TFRecordDataset(f, compression_type),
            cycle_length=min(4, len(files)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    else:
        # File order, then record order: the same stream as the DataFrame.
        ds = tf.data.TFRecordDataset(file_ds, compression_type)
    if record_shard is not None:
        ds = ds.shard(*record_shard)
    if shuffle:
        ds = ds.shuffle(
            shuffle_buffer, seed=seed, reshuffle_each_iteration=True
        )
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def tfrecord_to_dataframe(file_pattern, max_rows=None, compression=None):
    """Decodes `tf.train.Example` records into a pandas DataFrame.

    For inspection and for inferring feature specs
    (`keras_mtl.features.infer_features`). One column per key: a key that
    holds exactly one value in every record read becomes a scalar column
    (bytes decoded as UTF-8); any other key becomes a column of lists, and
    a record without a key holds None there.

    Args:
        file_pattern: str or list of str. Glob pattern(s), read in sorted
            order.
        max_rows: int or None. Records to read at most. Defaults to all.
        compression: None, `"GZIP"` or `"ZLIB"`. Defaults to `None`.

    Returns:
        A pandas DataFrame.
    """
    import tensorflow as tf

    compression = _check_compression(compression)
    if max_rows is not None and (
        isinstance(max_rows, bool)
        or not isinstance(max_rows, int)
        or max_rows < 1
    ):
        raise ValueError(
            "`max_rows` must be a positive integer or None. "
            f"Received: max_rows={max_rows!r}"
        )
    files = _list_tfrecord_files(file_pattern)
    ds = tf.data.TFRecordDataset(files, compression or "")
    if max_rows is not None:
        ds = ds.take(max_rows)
    rows = []
    try:
        for batch in ds.batch(1024).as_numpy_iterator():
            for record in batch:
                feature = tf.train.Example.FromString(record).features.feature
                row = {}
                for key, value in feature.items():
                    kind = value.WhichOneof("kind")
                    values = list(getattr(value, kind).value) if kind else []
                    if kind == "bytes_list":
                        values = [v.decode("utf-8") for v in values]
                    row[key] = values
                rows.append(row)
    except tf.errors.OpError as err:
        raise _tfrecord_read_error(files[0], compression, err) from None
    keys = list(dict.fromkeys(k for row in rows for k in row))
    columns = {}
    for key in keys:
        values = [row.get(key) for row in rows]
        if all(v is not None and len(v) == 1 for v in values):
            columns[key] = [v[0] for v in values]
        else:
            columns[key] = values
    return pd.DataFrame(columns)
