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
same conversion, so they produce the same stream as the DataFrame path.

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


def _strings(series):
    if pd.api.types.is_float_dtype(series):
        # Integral floats (ids read back with NaN) print without ".0".
        nums = series.to_numpy(dtype="float64")
        ok = ~np.isnan(nums)
        if np.all(np.mod(nums[ok], 1) == 0):
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


def _features_to_arrays(df, features, where):
    x = {}
    for spec in features:
        series = df[spec.name]
        if isinstance(spec, features_lib.NumericFeature):
            x[spec.name] = _numeric(series, spec, where)
        elif isinstance(spec, features_lib.SequenceFeature):
            x[spec.name] = _sequence(series, spec, where)
        else:
            x[spec.name] = _categorical(series, spec, where)
    return x


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


def dataframe_to_arrays(df, features, tasks, where="DataFrame"):
    """Converts a DataFrame to `(x, y, sw)` numpy dicts.

    Args:
        df: pandas DataFrame with one column per feature spec and per task
            label.
        features: list of feature specs (`keras_mtl.features`).
        tasks: list of `keras_mtl.Task`.
        where: str. How errors name the source. Defaults to `"DataFrame"`.

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
    x = _features_to_arrays(df, features, where)
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


def arrays_to_dataset(
    arrays, batch_size=1024, shuffle=False, seed=0, drop_remainder=False
):
    """Batches in-memory arrays (any nest of dicts) into a `tf.data.Dataset`.

    Whole batches are gathered from in-memory tensors by index, which is far
    faster than slicing per example; `shuffle=True` draws a new permutation
    every epoch.
    """
    import tensorflow as tf

    _check_batching(batch_size)
    leaves = tf.nest.flatten(arrays)
    n = len(leaves[0])
    tensors = tf.nest.map_structure(tf.constant, arrays)
    indices = tf.data.Dataset.range(n)
    if shuffle:
        indices = indices.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    indices = indices.batch(batch_size, drop_remainder=drop_remainder)
    ds = indices.map(
        lambda idx: tf.nest.map_structure(lambda t: tf.gather(t, idx), tensors),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
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

    Returns:
        A batched, prefetched `tf.data.Dataset`.
    """
    _check_batching(batch_size)
    arrays = dataframe_to_arrays(df, features, tasks)
    if drop_remainder and len(df) % batch_size:
        logger.info(
            "drop_remainder=True: %d row(s) of the last partial batch are "
            "left out of each epoch.",
            len(df) % batch_size,
        )
    return arrays_to_dataset(
        arrays, batch_size, shuffle, seed, drop_remainder=drop_remainder
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
