"""Feature specs: what each raw input column is and how it is encoded.

Three kinds of spec describe every raw feature a ranking model takes:

- `CategoricalFeature`: one id per example, from a vocabulary list, integer
  ids below a vocabulary size, or hashed into a number of bins.
- `NumericFeature`: one float per example, normalised with statistics taken
  from training data; NaN becomes a fill value plus a missing indicator.
- `SequenceFeature`: up to `max_len` ids per example (multi-hot, or a user's
  recent items), pooled by mean, sum or max.

Specs are plain data: they round-trip through JSON (`features_to_json`,
`features_from_json`) and `infer_features` builds them from a DataFrame.
The preprocessing itself lives inside the model (`keras_mtl.layers.
InputBlock`), so serving takes the same raw features as training.
"""

import json
import logging
import math

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "sum", "max")
NORMALIZATIONS = ("standard", "minmax", None)
DTYPES = ("string", "int64")
# Index layout of every categorical lookup: 0 is padding / missing, 1 is the
# out-of-vocabulary bucket, vocabulary entries start at 2.
MASK_INDEX = 0
OOV_INDEX = 1


def _check_name(name):
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"`name` must be a non-empty string. Received: name={name!r}"
        )


def _check_positive_int(name, field, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(
            f"`{field}` of feature '{name}' must be a positive integer. "
            f"Received: {field}={value!r}"
        )
    if value <= 0:
        raise ValueError(
            f"`{field}` of feature '{name}' must be a positive integer. "
            f"Received: {field}={value!r}"
        )


class _Spec:
    kind = None

    def get_config(self):
        config = {"kind": self.kind}
        config.update(
            {k: v for k, v in vars(self).items() if not k.startswith("_")}
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("kind", None)
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and (
            self.get_config() == other.get_config()
        )

    def __repr__(self):
        config = self.get_config()
        config.pop("kind")
        vocab = config.get("vocabulary")
        if vocab is not None and len(vocab) > 6:
            config["vocabulary"] = f"<{len(vocab)} values>"
        args = ", ".join(f"{k}={v!r}" for k, v in config.items())
        return f"{type(self).__name__}({args})"


class CategoricalFeature(_Spec):
    """One categorical id per example.

    Exactly one of `vocabulary`, `vocab_size` and `num_bins` says how raw
    values become embedding rows. Index 0 is reserved for a missing value
    (empty string, or -1 for ids) and index 1 for values outside the
    vocabulary, so unseen categories at serving time never fail.

    Args:
        name: str. Raw input name (the DataFrame column).
        vocabulary: list of str or int, or None. Known values, most frequent
            first. Looked up with `StringLookup` / `IntegerLookup`.
        vocab_size: int or None. Raw values are integer ids in
            `[0, vocab_size)`; others go to the OOV bucket.
        num_bins: int or None. Raw values are hashed into `num_bins` buckets
            with `keras.layers.Hashing`.
        embed_dim: int. Embedding width. Defaults to `8`.
        shared_embedding: str or None. Features with the same name here
            share one embedding table (and must be encoded identically).
        dtype: str or None. `"string"` or `"int64"`, the raw input dtype.
            Defaults to the vocabulary's type, `"int64"` for `vocab_size`
            and `"string"` for `num_bins`.
    """

    kind = "categorical"

    def __init__(
        self,
        name,
        vocabulary=None,
        vocab_size=None,
        num_bins=None,
        embed_dim=8,
        shared_embedding=None,
        dtype=None,
    ):
        _check_name(name)
        given = [
            k
            for k, v in (
                ("vocabulary", vocabulary),
                ("vocab_size", vocab_size),
                ("num_bins", num_bins),
            )
            if v is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"Feature '{name}' needs exactly one of `vocabulary`, "
                f"`vocab_size`, `num_bins`. Received: {given or 'none'}"
            )
        if vocabulary is not None:
            vocabulary = list(vocabulary)
            if not vocabulary:
                raise ValueError(
                    f"`vocabulary` of feature '{name}' must not be empty. "
                    "Received: vocabulary=[]"
                )
            if all(isinstance(v, str) for v in vocabulary):
                inferred = "string"
            elif all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                for v in vocabulary
            ):
                inferred = "int64"
                vocabulary = [int(v) for v in vocabulary]
            else:
                raise ValueError(
                    f"`vocabulary` of feature '{name}' must hold only "
                    "strings or only integers. Received types: "
                    f"{sorted({type(v).__name__ for v in vocabulary})}"
                )
            bad = "" if inferred == "string" else -1
            if bad in vocabulary:
                raise ValueError(
                    f"`vocabulary` of feature '{name}' must not contain "
                    f"{bad!r}, the missing-value marker."
                )
            if len(set(vocabulary)) != len(vocabulary):
                raise ValueError(
                    f"`vocabulary` of feature '{name}' has duplicate values."
                )
            if dtype is not None and dtype != inferred:
                raise ValueError(
                    f"`dtype` of feature '{name}' does not match its "
                    f"vocabulary ({inferred}). Received: dtype={dtype!r}"
                )
            dtype = inferred
        if vocab_size is not None:
            _check_positive_int(name, "vocab_size", vocab_size)
            vocab_size = int(vocab_size)
            if dtype not in (None, "int64"):
                raise ValueError(
                    f"`vocab_size` features take int64 ids; feature "
                    f"'{name}' got dtype={dtype!r}."
                )
            dtype = "int64"
        if num_bins is not None:
            _check_positive_int(name, "num_bins", num_bins)
            num_bins = int(num_bins)
            if num_bins < 2:
                raise ValueError(
                    f"`num_bins` of feature '{name}' must be >= 2. "
                    f"Received: num_bins={num_bins}"
                )
            dtype = dtype or "string"
        if dtype not in DTYPES:
            raise ValueError(
                f"`dtype` of feature '{name}' must be one of {DTYPES}. "
                f"Received: dtype={dtype!r}"
            )
        _check_positive_int(name, "embed_dim", embed_dim)
        if shared_embedding is not None and (
            not isinstance(shared_embedding, str) or not shared_embedding
        ):
            raise ValueError(
                f"`shared_embedding` of feature '{name}' must be a non-empty "
                f"string. Received: shared_embedding={shared_embedding!r}"
            )
        self.name = name
        self.vocabulary = vocabulary
        self.vocab_size = vocab_size
        self.num_bins = num_bins
        self.embed_dim = int(embed_dim)
        self.shared_embedding = shared_embedding
        self.dtype = dtype

    @property
    def table_size(self):
        """Rows of the embedding table, the mask and OOV rows included."""
        if self.vocabulary is not None:
            return len(self.vocabulary) + 2
        if self.vocab_size is not None:
            return self.vocab_size + 2
        # keras.layers.Hashing with a mask value: 0 is the mask, then
        # num_bins - 1 hash buckets.
        return self.num_bins

    @property
    def missing_value(self):
        """Raw value that marks a missing entry (maps to index 0)."""
        return "" if self.dtype == "string" else -1

    def encoding_key(self):
        """What must agree between features that share an embedding."""
        return (
            self.dtype,
            None if self.vocabulary is None else tuple(self.vocabulary),
            self.vocab_size,
            self.num_bins,
            self.embed_dim,
        )


class SequenceFeature(CategoricalFeature):
    """Up to `max_len` categorical ids per example, pooled into one vector.

    Raw input is a `(batch, max_len)` tensor padded with the missing value
    (`""` or -1). In a DataFrame the column holds lists (or strings joined by
    `separator`); `keras_mtl.data` pads and truncates them. Padding never
    contributes to the pooled vector.

    Args:
        name, vocabulary, vocab_size, num_bins, embed_dim, shared_embedding,
            dtype: as in `CategoricalFeature`.
        max_len: int. Length the sequence is padded or truncated to (the most
            recent items are kept: the *last* `max_len`). Defaults to `20`.
        pooling: str. `"mean"`, `"sum"` or `"max"`. Defaults to `"mean"`.
        separator: str. Separator of a sequence written as one string in
            CSV files. Defaults to `"|"`.
    """

    kind = "sequence"

    def __init__(
        self,
        name,
        vocabulary=None,
        vocab_size=None,
        num_bins=None,
        embed_dim=8,
        shared_embedding=None,
        dtype=None,
        max_len=20,
        pooling="mean",
        separator="|",
    ):
        super().__init__(
            name,
            vocabulary=vocabulary,
            vocab_size=vocab_size,
            num_bins=num_bins,
            embed_dim=embed_dim,
            shared_embedding=shared_embedding,
            dtype=dtype,
        )
        _check_positive_int(name, "max_len", max_len)
        if pooling not in POOLINGS:
            raise ValueError(
                f"`pooling` of feature '{name}' must be one of {POOLINGS}. "
                f"Received: pooling={pooling!r}"
            )
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(
                f"`separator` of feature '{name}' must be one character. "
                f"Received: separator={separator!r}"
            )
        self.max_len = int(max_len)
        self.pooling = pooling
        self.separator = separator


class NumericFeature(_Spec):
    """One float per example, normalised inside the model.

    Args:
        name: str. Raw input name.
        mean: float. Mean of the (transformed) training values. Defaults to
            `0.0`.
        variance: float. Variance of the (transformed) training values.
            Defaults to `1.0`.
        minimum: float or None. Minimum, for `normalization="minmax"`.
        maximum: float or None. Maximum, for `normalization="minmax"`.
        normalization: str or None. `"standard"` (z-score), `"minmax"` or
            `None`. Defaults to `"standard"`.
        log1p: bool. Apply `sign(x) * log1p(|x|)` before normalising.
            Defaults to `False`.
        fill_value: float or None. Raw value that replaces NaN. Defaults to
            the mean (in raw units), so a missing value normalises to 0.
        missing_indicator: bool. Also emit a 0/1 column that says the value
            was NaN. Defaults to `True`.
    """

    kind = "numeric"

    def __init__(
        self,
        name,
        mean=0.0,
        variance=1.0,
        minimum=None,
        maximum=None,
        normalization="standard",
        log1p=False,
        fill_value=None,
        missing_indicator=True,
    ):
        _check_name(name)
        for field, value in (("mean", mean), ("variance", variance)):
            if not _is_finite_number(value):
                raise ValueError(
                    f"`{field}` of feature '{name}' must be a finite number. "
                    f"Received: {field}={value!r}"
                )
        if variance < 0:
            raise ValueError(
                f"`variance` of feature '{name}' must be >= 0. "
                f"Received: variance={variance!r}"
            )
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"`normalization` of feature '{name}' must be one of "
                f"{NORMALIZATIONS}. Received: normalization={normalization!r}"
            )
        if normalization == "minmax":
            if not (_is_finite_number(minimum) and _is_finite_number(maximum)):
                raise ValueError(
                    f"Feature '{name}' with normalization='minmax' needs "
                    f"finite `minimum` and `maximum`. Received: "
                    f"minimum={minimum!r}, maximum={maximum!r}"
                )
            if maximum < minimum:
                raise ValueError(
                    f"`maximum` of feature '{name}' is below `minimum`. "
                    f"Received: minimum={minimum!r}, maximum={maximum!r}"
                )
        if fill_value is not None and not _is_finite_number(fill_value):
            raise ValueError(
                f"`fill_value` of feature '{name}' must be a finite number "
                f"or None. Received: fill_value={fill_value!r}"
            )
        self.name = name
        self.mean = float(mean)
        self.variance = float(variance)
        self.minimum = None if minimum is None else float(minimum)
        self.maximum = None if maximum is None else float(maximum)
        self.normalization = normalization
        self.log1p = bool(log1p)
        self.fill_value = None if fill_value is None else float(fill_value)
        self.missing_indicator = bool(missing_indicator)
        self.dtype = "float32"

    def get_config(self):
        config = super().get_config()
        config.pop("dtype")
        return config

    @property
    def raw_fill_value(self):
        """The raw value NaN is replaced with."""
        if self.fill_value is not None:
            return self.fill_value
        if self.log1p:
            # `mean` is in log1p units; invert so the fill lands on it.
            return float(np.sign(self.mean) * np.expm1(abs(self.mean)))
        return self.mean

    @property
    def output_dim(self):
        return 2 if self.missing_indicator else 1


def _is_finite_number(value):
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


SPEC_CLASSES = {
    cls.kind: cls
    for cls in (CategoricalFeature, SequenceFeature, NumericFeature)
}


def feature_from_config(config):
    """Builds one spec from its `get_config()` dict."""
    kind = config.get("kind")
    if kind not in SPEC_CLASSES:
        raise ValueError(
            f"Feature config needs `kind` in {sorted(SPEC_CLASSES)}. "
            f"Received: kind={kind!r} in {config!r}"
        )
    return SPEC_CLASSES[kind].from_config(config)


def validate_features(features):
    """Checks a list of specs as a whole and returns it as a list.

    Raises `ValueError` for an empty list, a duplicate name, or features
    sharing an embedding table while encoded differently.
    """
    features = [
        feature_from_config(f) if isinstance(f, dict) else f for f in features
    ]
    if not features:
        raise ValueError("`features` must hold at least one feature spec.")
    names = set()
    shared = {}
    for spec in features:
        if not isinstance(spec, _Spec):
            raise ValueError(
                f"`features` must hold feature specs. Received: {spec!r}"
            )
        if spec.name in names:
            raise ValueError(f"Feature name '{spec.name}' is used twice.")
        names.add(spec.name)
        if isinstance(spec, CategoricalFeature) and spec.shared_embedding:
            key = spec.encoding_key()
            first = shared.setdefault(spec.shared_embedding, (spec.name, key))
            if first[1] != key:
                raise ValueError(
                    f"Features '{first[0]}' and '{spec.name}' share embedding "
                    f"'{spec.shared_embedding}' but differ in dtype, "
                    "vocabulary, vocab_size, num_bins or embed_dim."
                )
    return features


def features_to_json(features, indent=None):
    """Serialises a list of specs to a JSON string."""
    features = validate_features(features)
    return json.dumps([f.get_config() for f in features], indent=indent)


def features_from_json(text):
    """Reads the list of specs written by `features_to_json`."""
    return validate_features(json.loads(text))


def save_features(features, path):
    with open(path, "w", encoding="utf-8") as f:
        f.write(features_to_json(features, indent=2))


def load_features(path):
    with open(path, encoding="utf-8") as f:
        return features_from_json(f.read())


def _is_listlike(value):
    return isinstance(value, (list, tuple, np.ndarray))


def _vocabulary(values, min_frequency):
    counts = pd.Series(values).value_counts()
    counts = counts[counts >= min_frequency]
    # Most frequent first; ties broken by value so the result is stable.
    order = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    return [k for k, _ in order]


def infer_features(
    df,
    labels=(),
    exclude=(),
    categorical=(),
    embed_dim=8,
    max_int_categories=64,
    max_vocab_size=100_000,
    min_frequency=1,
    max_len=None,
):
    """Builds feature specs from a pandas DataFrame.

    - String, categorical and boolean-free object columns become
      `CategoricalFeature`s with a vocabulary (most frequent first), or
      hashing into `2 * max_vocab_size` bins when there are more than
      `max_vocab_size` distinct values.
    - Columns of lists become `SequenceFeature`s; `max_len` defaults to the
      longest list.
    - Integer columns with at most `max_int_categories` distinct values, or
      whose name ends in `id`/`ids`, become integer-vocabulary categoricals.
    - Other numbers become `NumericFeature`s with mean, variance, min and max
      taken from the data (NaN ignored; a missing indicator is kept when the
      column has NaNs).

    Args:
        df: pandas DataFrame. Training data.
        labels: list of str. Label columns, never features.
        exclude: list of str. Other columns to leave out (ids, timestamps).
        categorical: list of str. Columns that are categorical whatever
            their dtype (integer-coded ids such as Ali-CCP's `101`).
        embed_dim: int. Embedding width of every categorical feature.
        max_int_categories: int. See above. Defaults to `64`.
        max_vocab_size: int. See above. Defaults to `100_000`.
        min_frequency: int. Values seen fewer times go to the OOV bucket.
        max_len: int or None. Length of every sequence feature.

    Returns:
        A list of feature specs, in column order.
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(
            f"`df` must be a pandas DataFrame. Received: {type(df).__name__}"
        )
    if len(df) == 0:
        raise ValueError("`df` is empty (0 rows); nothing to infer from.")
    for field, cols in (
        ("labels", labels),
        ("exclude", exclude),
        ("categorical", categorical),
    ):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ValueError(
                f"`{field}` names columns that are not in the DataFrame: "
                f"{missing}. Columns: {list(df.columns)}"
            )
    skip = set(labels) | set(exclude)
    specs = []
    for col in df.columns:
        if col in skip:
            continue
        series = df[col]
        name = str(col)
        forced = col in categorical
        if pd.api.types.is_bool_dtype(series) and not forced:
            specs.append(_numeric_spec(name, series.astype("float64")))
        elif pd.api.types.is_numeric_dtype(series):
            non_null = series.dropna()
            whole = len(non_null) > 0 and bool(
                np.all(np.mod(non_null.to_numpy(dtype="float64"), 1) == 0)
            )
            if forced and not whole:
                raise ValueError(
                    f"`categorical` column '{name}' holds non-integral "
                    "numbers; categorical numbers must be integer ids."
                )
            integral = pd.api.types.is_integer_dtype(series) or (
                whole and (_is_id_name(name) or forced)
            )
            if integral and (
                forced
                or non_null.nunique() <= max_int_categories
                or _is_id_name(name)
            ):
                values = non_null.astype("int64")
                specs.append(
                    _categorical_spec(
                        name,
                        values,
                        embed_dim,
                        max_vocab_size,
                        min_frequency,
                        "int64",
                    )
                )
            else:
                specs.append(_numeric_spec(name, series))
        else:
            non_null = series.dropna()
            if len(non_null) and _is_listlike(non_null.iloc[0]):
                flat = [v for seq in non_null for v in seq]
                longest = max(len(seq) for seq in non_null)
                dtype = (
                    "int64"
                    if flat
                    and all(isinstance(v, (int, np.integer)) for v in flat)
                    else "string"
                )
                flat = [int(v) if dtype == "int64" else str(v) for v in flat]
                cat = _categorical_spec(
                    name,
                    pd.Series(flat, dtype=object),
                    embed_dim,
                    max_vocab_size,
                    min_frequency,
                    dtype,
                )
                config = cat.get_config()
                config.update(kind="sequence", max_len=max_len or longest)
                specs.append(SequenceFeature.from_config(config))
            else:
                values = non_null.astype(str)
                values = values[values != ""]
                specs.append(
                    _categorical_spec(
                        name,
                        values,
                        embed_dim,
                        max_vocab_size,
                        min_frequency,
                        "string",
                    )
                )
    if not specs:
        raise ValueError(
            "No feature columns left after removing `labels` and `exclude`."
        )
    return validate_features(specs)


def _is_id_name(name):
    lowered = name.lower()
    return lowered.endswith("id") or lowered.endswith("ids")


def _categorical_spec(
    name, values, embed_dim, max_vocab_size, min_frequency, dtype
):
    if dtype == "int64":
        values = values[values != -1]
    vocab = _vocabulary(values, min_frequency)
    if len(vocab) > max_vocab_size:
        logger.info(
            "Feature '%s' has %d values (> max_vocab_size=%d); hashing.",
            name,
            len(vocab),
            max_vocab_size,
        )
        return CategoricalFeature(
            name,
            num_bins=2 * max_vocab_size,
            embed_dim=embed_dim,
            dtype=dtype,
        )
    if not vocab:
        raise ValueError(
            f"Column '{name}' has no value seen at least {min_frequency} "
            "times; cannot build a vocabulary."
        )
    return CategoricalFeature(name, vocabulary=vocab, embed_dim=embed_dim)


def _numeric_spec(name, series):
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64")
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        raise ValueError(
            f"Numeric column '{name}' has no finite value to take "
            "statistics from."
        )
    return NumericFeature(
        name,
        mean=float(finite.mean()),
        variance=float(finite.var()),
        minimum=float(finite.min()),
        maximum=float(finite.max()),
        missing_indicator=bool(np.isnan(values).any()),
    )
