"""`InputBlock`: raw named features in, one dense vector per example out."""

import keras
import numpy as np
from keras import ops

from keras_mtl import features as features_lib
from keras_mtl.layers.missing_value_layer import MissingValueLayer
from keras_mtl.layers.mlp import _clone_initializer
from keras_mtl.layers.mlp import _get_or_raise


def make_inputs(features):
    """One named `keras.Input` per raw feature, typed for serving.

    Scalar features are `(batch,)` tensors; sequence features are
    `(batch, max_len)`. Numeric features are float32, ids int64, string
    categoricals string.

    Args:
        features: list of feature specs.

    Returns:
        A dict of `keras.Input`s keyed by feature name, in spec order.
    """
    features = features_lib.validate_features(features)
    inputs = {}
    for spec in features:
        shape = (
            (spec.max_len,)
            if isinstance(spec, features_lib.SequenceFeature)
            else ()
        )
        inputs[spec.name] = keras.Input(
            shape=shape, dtype=spec.dtype, name=spec.name
        )
    return inputs


def resolve_embedding_args(embeddings_initializer, embeddings_regularizer):
    """`(initializer, regularizer)` of embedding tables, resolved with
    `keras.initializers.get` / `keras.regularizers.get`; a value neither
    understands is refused with the argument's name."""
    return (
        _get_or_raise(
            keras.initializers.get,
            "embeddings_initializer",
            embeddings_initializer,
        ),
        _get_or_raise(
            keras.regularizers.get,
            "embeddings_regularizer",
            embeddings_regularizer,
        ),
    )


INTERACTIONS = (None, "dot", "cross")
# Cross layers of `interaction="cross"` when `cross_layers` is None.
DEFAULT_CROSS_LAYERS = 2


def check_interaction_args(
    interaction,
    interaction_features,
    cross_layers=None,
    cross_projection_dim=None,
):
    """Refuses bad interaction arguments, naming the argument.

    The checks that need no feature specs (the run config makes them before
    any data is read); `InputBlock` adds those against its features.
    """
    if interaction not in INTERACTIONS:
        raise ValueError(
            '`interaction` must be None, "dot" or "cross". '
            f"Received: interaction={interaction!r}"
        )
    if interaction != "dot" and interaction_features is not None:
        raise ValueError(
            '`interaction_features` needs `interaction="dot"` (the cross '
            "network crosses the whole input vector). "
            f"Received: interaction_features={interaction_features!r} "
            f"with interaction={interaction!r}"
        )
    for name, value in (
        ("cross_layers", cross_layers),
        ("cross_projection_dim", cross_projection_dim),
    ):
        if value is None:
            continue
        if interaction != "cross":
            raise ValueError(
                f'`{name}` needs `interaction="cross"`. '
                f"Received: {name}={value!r} with interaction={interaction!r}"
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"`{name}` must be None or a positive integer. "
                f"Received: {name}={value!r}"
            )
    if interaction_features is not None and (
        not isinstance(interaction_features, (list, tuple))
        or not all(isinstance(n, str) for n in interaction_features)
    ):
        raise ValueError(
            "`interaction_features` must be a list of feature names. "
            f"Received: interaction_features={interaction_features!r}"
        )


def _check_interaction(interaction, interaction_features, features):
    """The names of the dot-interacting features, or `None`; named errors."""
    if interaction != "dot":
        return None
    embedded = {
        f.name: f
        for f in features
        if isinstance(f, features_lib.CategoricalFeature)
    }
    if interaction_features is None:
        names = list(embedded)
    else:
        names = list(interaction_features)
        known = {f.name for f in features}
        numeric = [n for n in names if n in known and n not in embedded]
        unknown = [n for n in names if n not in known]
        if numeric or unknown:
            raise ValueError(
                "`interaction_features` must name categorical or sequence "
                f"features. Numeric: {numeric}; not among the features: "
                f"{unknown}. Received: "
                f"interaction_features={interaction_features!r}; embedded "
                f"features: {sorted(embedded)}"
            )
        if len(set(names)) != len(names):
            raise ValueError(
                "`interaction_features` lists a feature twice. "
                f"Received: interaction_features={interaction_features!r}"
            )
    if len(names) < 2:
        raise ValueError(
            '`interaction="dot"` needs at least 2 categorical or sequence '
            f"features to cross. Received: {names}"
        )
    dims = {n: embedded[n].embed_dim for n in names}
    if len(set(dims.values())) > 1:
        raise ValueError(
            '`interaction="dot"` needs one `embed_dim` for every '
            "interacting feature (a dot product of vectors of different "
            f"lengths is undefined). Received embed_dim by feature: {dims}; "
            "set `interaction_features` or the specs' `embed_dim`"
        )
    return names


class _IdentityLookup:
    """Integer ids in `[0, vocab_size)` to table rows; -1 to 0, others 1."""

    def __init__(self, vocab_size):
        self.vocab_size = vocab_size

    def __call__(self, ids):
        ids = ops.cast(ids, "int64")
        known = ops.logical_and(ids >= 0, ids < self.vocab_size)
        return ops.where(known, ids + 2, ops.where(ids == -1, 0, 1))


@keras.saving.register_keras_serializable(package="keras_mtl")
class InputBlock(keras.layers.Layer):
    """Preprocesses raw features and concatenates their embeddings.

    Everything between the raw request and the first hidden layer lives
    here, inside the model, so training and serving take the same raw
    features:

    - categorical features go through `StringLookup`, `IntegerLookup`,
      `Hashing` or an id range check (index 0 = missing, 1 = OOV), then an
      embedding;
    - sequence features are embedded the same way and pooled (mean, sum or
      max) over their non-padding positions;
    - numeric features: NaN becomes the spec's fill value plus a 0/1
      missing indicator, optional `log1p`, then one `Normalization` layer
      for all of them.

    Output layout: the normalised numeric values (spec order), their missing
    indicators, then one embedding per categorical or sequence feature (spec
    order), then, with `interaction="dot"`, the pairwise dot products of
    the interacting features' embeddings (DLRM's dot interaction,
    `keras_rs.layers.DotInteraction`: one value per pair, in its
    lower-triangle order). A multilayer perceptron on concatenated
    embeddings represents a user-item dot product poorly (Rendle et al.,
    2020); the interaction hands it over as an input. With
    `interaction="cross"`, that whole vector `x0` instead goes through a
    DCN-v2 cross network of the same width (`keras_rs.layers.FeatureCross`
    layers: `x_{l+1} = x0 * (W_l x_l + b_l) + x_l`), which learns explicit
    bounded-degree crosses of every input, numeric ones included.

    Embedding lookups are grouped: every categorical and sequence feature
    with the same `embed_dim` shares one table, addressed with per-feature
    offsets, so a model does one gather per embedding width rather than one
    per feature. Features with the same `shared_embedding` name use the same
    rows.

    Args:
        features: list of feature specs (`keras_mtl.features`) or their
            configs.
        embeddings_initializer: initializer of the embedding tables.
            Defaults to `"uniform"` (Keras' `Embedding` default).
        embeddings_regularizer: optional regularizer of the tables.
        learned_fill: bool. Replace a missing numeric value by a trainable
            fill (`MissingValueLayer`, in normalised units, initialised to
            the spec's fill value) instead of the fixed fill. The missing
            indicators are unchanged. Defaults to `False`.
        interaction: `None`, `"dot"` or `"cross"`. With `"dot"`, also output
            the dot product of every pair of `interaction_features`
            embeddings (sequence features pooled first). With `"cross"`,
            output the DCN-v2 cross network of the plain output (same
            width). Defaults to `None`.
        interaction_features: list of categorical or sequence feature names
            that interact, at least 2, all with the same `embed_dim`; only
            with `interaction="dot"`. Defaults to `None`: every categorical
            and sequence feature.
        cross_layers: int. Cross layers of `interaction="cross"` (the
            degree of the crosses is `cross_layers + 1`); only with it.
            Defaults to `None`: 2.
        cross_projection_dim: int. Rank of each cross layer's weight
            (DCN-v2's low-rank `W = U V`, `U` of shape `(d, r)`); only with
            `interaction="cross"`. Defaults to `None`: a full `(d, d)`
            weight.

    Call arguments:
        inputs: dict of raw tensors keyed by feature name, as made by
            `make_inputs`.
        encoded: bool. Whether the categorical and sequence inputs are
            already row ids from `encode` (the fast training path of
            `keras_mtl.models.encoded_model`). Defaults to `False`.

    Returns:
        A `(batch, output_dim)` tensor.

    Example:

    >>> specs = keras_mtl.infer_features(df, labels=["click"])
    >>> block = keras_mtl.layers.InputBlock(specs)
    >>> inputs = block.make_inputs()
    >>> x = block(inputs)
    >>> crossed = keras_mtl.layers.InputBlock(
    ...     specs, interaction="dot",
    ...     interaction_features=["user_id", "item_id", "hist_item_ids"])
    >>> dcn = keras_mtl.layers.InputBlock(
    ...     specs, interaction="cross", cross_layers=3, cross_projection_dim=16)

    References:
        - [Naumov et al., 2019. Deep Learning Recommendation Model for
          Personalization and Recommendation Systems](
          https://arxiv.org/abs/1906.00091)
        - [Rendle et al., 2020. Neural Collaborative Filtering vs. Matrix
          Factorization Revisited](https://arxiv.org/abs/2005.09683)
        - [Wang et al., 2021. DCN V2: Improved Deep & Cross Network and
          Practical Lessons for Web-scale Learning to Rank Systems](
          https://arxiv.org/abs/2008.13535)
    """

    def __init__(
        self,
        features,
        embeddings_initializer="uniform",
        embeddings_regularizer=None,
        learned_fill=False,
        interaction=None,
        interaction_features=None,
        cross_layers=None,
        cross_projection_dim=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(learned_fill, bool):
            raise ValueError(
                "`learned_fill` must be a bool. "
                f"Received: learned_fill={learned_fill!r}"
            )
        self.learned_fill = learned_fill
        self.features = features_lib.validate_features(features)
        self.embeddings_initializer, self.embeddings_regularizer = (
            resolve_embedding_args(
                embeddings_initializer, embeddings_regularizer
            )
        )
        self.numeric = [
            f
            for f in self.features
            if isinstance(f, features_lib.NumericFeature)
        ]
        self.categorical = [
            f
            for f in self.features
            if isinstance(f, features_lib.CategoricalFeature)
        ]
        # Lookup groups: features sharing an embedding share the lookup.
        self._group_of = {
            f.name: f.shared_embedding or f"__{f.name}"
            for f in self.categorical
        }
        # Embedding tables: one per embedding width.
        self._dims = sorted({f.embed_dim for f in self.categorical})
        check_interaction_args(
            interaction,
            interaction_features,
            cross_layers,
            cross_projection_dim,
        )
        self.interaction = interaction
        self.interaction_features = _check_interaction(
            interaction, interaction_features, self.features
        )
        self.cross_layers = cross_layers
        self.cross_projection_dim = cross_projection_dim
        self.dot_interaction = None
        self.feature_crosses = []
        if self.interaction_features:
            import keras_rs

            self.dot_interaction = keras_rs.layers.DotInteraction(
                dtype=self.dtype_policy, name="dot_interaction"
            )
        if interaction == "cross":
            import keras_rs

            self.feature_crosses = [
                keras_rs.layers.FeatureCross(
                    projection_dim=cross_projection_dim,
                    dtype=self.dtype_policy,
                    name=f"feature_cross_{i}",
                )
                for i in range(cross_layers or DEFAULT_CROSS_LAYERS)
            ]
        self.supports_masking = False

    # -- structure ---------------------------------------------------------

    def make_inputs(self):
        """Named `keras.Input`s for this block's features."""
        return make_inputs(self.features)

    @property
    def _plain_dim(self):
        """Width of the numeric values, indicators and embeddings."""
        return sum(f.output_dim for f in self.numeric) + sum(
            f.embed_dim for f in self.categorical
        )

    @property
    def output_dim(self):
        n = len(self.interaction_features or ())
        return self._plain_dim + n * (n - 1) // 2

    def compute_output_shape(self, input_shape):
        batch = next(iter(input_shape.values()))[0]
        return (batch, self.output_dim)

    def _make_lookup(self, spec):
        if spec.vocabulary is not None and spec.dtype == "string":
            return keras.layers.StringLookup(
                vocabulary=spec.vocabulary,
                mask_token="",
                num_oov_indices=1,
                output_mode="int",
                dtype="int64",
                name=f"lookup_{spec.name}",
            )
        if spec.vocabulary is not None:
            return keras.layers.IntegerLookup(
                vocabulary=spec.vocabulary,
                mask_token=-1,
                oov_token=-2,
                num_oov_indices=1,
                output_mode="int",
                dtype="int64",
                name=f"lookup_{spec.name}",
            )
        if spec.num_bins is not None:
            return keras.layers.Hashing(
                num_bins=spec.num_bins,
                mask_value=spec.missing_value,
                dtype="int64",
                name=f"hashing_{spec.name}",
            )
        return _IdentityLookup(spec.vocab_size)

    def build(self, input_shape=None):
        self.lookups = {}
        self.offsets = {}
        sizes = {dim: 0 for dim in self._dims}
        for spec in self.categorical:
            group = self._group_of[spec.name]
            if group in self.lookups:
                continue
            self.lookups[group] = self._make_lookup(spec)
            self.offsets[group] = sizes[spec.embed_dim]
            sizes[spec.embed_dim] += spec.table_size
        # Keyed by str(dim): TensorFlow's SavedModel tracking (used by
        # `model.export` and `keras_mtl.export`) refuses non-string keys.
        self.tables = {}
        for dim in self._dims:
            table = keras.layers.Embedding(
                input_dim=sizes[dim],
                output_dim=dim,
                embeddings_initializer=_clone_initializer(
                    self.embeddings_initializer
                ),
                embeddings_regularizer=self.embeddings_regularizer,
                dtype=self.dtype_policy,
                name=f"embedding_{dim}",
            )
            table.build((None, None))
            self.tables[str(dim)] = table
        if self.numeric:
            mean, variance = [], []
            for spec in self.numeric:
                if spec.normalization == "standard":
                    mean.append(spec.mean)
                    variance.append(spec.variance)
                elif spec.normalization == "minmax":
                    mean.append(spec.minimum)
                    variance.append((spec.maximum - spec.minimum) ** 2)
                else:
                    mean.append(0.0)
                    variance.append(1.0)
            self.normalization = keras.layers.Normalization(
                mean=mean, variance=variance, name="normalization"
            )
            self.normalization.build((None, len(self.numeric)))
            self._fill = [spec.raw_fill_value for spec in self.numeric]
            self._log1p = [spec.log1p for spec in self.numeric]
            self._indicator_columns = [
                i
                for i, spec in enumerate(self.numeric)
                if spec.missing_indicator
            ]
            if self.learned_fill:
                # Start from the fixed fill, in normalised units.
                fill = np.asarray(self._fill, "float64")
                fill = np.where(
                    self._log1p, np.sign(fill) * np.log1p(np.abs(fill)), fill
                )
                scale = np.maximum(np.sqrt(variance), keras.config.epsilon())
                self.missing_value = MissingValueLayer(
                    indicator=False,
                    dtype=self.dtype_policy,
                    name="missing_value",
                )
                self.missing_value.build((None, len(self.numeric)))
                self.missing_value.fill.assign((fill - mean) / scale)
        width = self._plain_dim
        for cross in self.feature_crosses:
            # FeatureCross makes its Dense layers in `build` and leaves them
            # to be built by the first call; build them now, so a reloaded
            # model has every weight before its weights are read.
            cross.build((None, width))
            rank = cross.projection_dim
            if rank is not None:
                cross.down_proj_dense.build((None, width))
            cross.dense.build((None, rank or width))
        self.built = True

    # -- forward -----------------------------------------------------------

    def _check_inputs(self, inputs, features=None):
        if not isinstance(inputs, dict):
            raise ValueError(
                "InputBlock takes a dict of raw features keyed by name. "
                f"Received: {type(inputs).__name__}"
            )
        features = self.features if features is None else features
        missing = [f.name for f in features if f.name not in inputs]
        if missing:
            raise ValueError(
                f"InputBlock is missing input feature(s) {missing}. "
                f"Received keys: {sorted(inputs)}"
            )

    def _numeric_block(self, inputs):
        x = ops.stack(
            [
                ops.reshape(ops.cast(inputs[f.name], "float32"), (-1,))
                for f in self.numeric
            ],
            axis=-1,
        )
        missing = ops.isnan(x)
        x = ops.where(missing, ops.convert_to_tensor(self._fill, "float32"), x)
        if any(self._log1p):
            logged = ops.sign(x) * ops.log1p(ops.abs(x))
            x = ops.where(ops.convert_to_tensor(self._log1p, "bool"), logged, x)
        parts = [self.normalization(x)]
        if self.learned_fill:
            nan = ops.convert_to_tensor(float("nan"), parts[0].dtype)
            parts[0] = self.missing_value(ops.where(missing, nan, parts[0]))
        if self._indicator_columns:
            parts.append(
                ops.cast(
                    ops.take(missing, self._indicator_columns, axis=1),
                    "float32",
                )
            )
        return ops.cast(ops.concatenate(parts, axis=-1), self.compute_dtype)

    def encode(self, inputs, names=None):
        """Maps raw categorical values to their table-local row ids.

        This is the lookup half of the block (vocabulary, hashing or id range
        check; 0 = missing, 1 = OOV) and the only part that XLA cannot
        compile. Run it once over in-memory data (`keras_mtl.data` does, see
        `keras_mtl.models.encoded_model`) and train on the ids with
        `call(..., encoded=True)`.

        Args:
            inputs: dict of raw features keyed by name (extra keys are
                ignored).
            names: optional list of the features to encode. Defaults to
                every categorical and sequence feature of the block.

        Returns:
            A dict keyed by categorical and sequence feature name of int32
            row ids, `(batch,)` or `(batch, max_len)`.
        """
        specs = self.categorical
        if names is not None:
            known = {f.name for f in specs}
            unknown = [n for n in names if n not in known]
            if unknown:
                raise ValueError(
                    f"`names` has feature(s) {unknown} that are not "
                    f"categorical features of this block: {sorted(known)}"
                )
            specs = [f for f in specs if f.name in names]
        self._check_inputs(inputs, specs)
        out = {}
        for spec in specs:
            ids = self.lookups[self._group_of[spec.name]](inputs[spec.name])
            out[spec.name] = ops.cast(ids, "int32")
        return out

    def embed(self, inputs, encoded=False):
        """Embeds every categorical and sequence feature.

        Args:
            inputs: dict of features keyed by name.
            encoded: bool. Whether the categorical inputs are already row
                ids from `encode`. Defaults to `False` (raw values).

        Returns:
            A dict keyed by feature name: `(batch, dim)` for categorical
            features; `(embeddings, mask)` with `(batch, max_len, dim)` and
            `(batch, max_len)` bool for sequence features (unpooled, for
            encoders such as DUPN's).
        """
        self._check_inputs(inputs)
        out = {}
        for dim in self._dims:
            specs = [f for f in self.categorical if f.embed_dim == dim]
            ids, widths, masks = [], [], []
            for spec in specs:
                group = self._group_of[spec.name]
                if encoded:
                    local = inputs[spec.name]
                else:
                    local = self.lookups[group](inputs[spec.name])
                local = ops.cast(local, "int32")
                if isinstance(spec, features_lib.SequenceFeature):
                    local = ops.reshape(local, (-1, spec.max_len))
                else:
                    local = ops.reshape(local, (-1, 1))
                masks.append(local != 0)
                ids.append(local + self.offsets[group])
                widths.append(local.shape[1])
            # One gather for every feature of this width.
            emb = self.tables[str(dim)](ops.concatenate(ids, axis=1))
            start = 0
            for spec, width, mask in zip(specs, widths, masks):
                part = emb[:, start : start + width, :]
                start += width
                if isinstance(spec, features_lib.SequenceFeature):
                    out[spec.name] = (part, mask)
                else:
                    out[spec.name] = part[:, 0, :]
        return out

    @staticmethod
    def pool(embeddings, mask, pooling):
        """Pools `(batch, len, dim)` over the positions where `mask` holds."""
        weights = ops.cast(ops.expand_dims(mask, -1), embeddings.dtype)
        if pooling == "max":
            neg = ops.convert_to_tensor(-1e9, embeddings.dtype)
            pooled = ops.max(ops.where(weights > 0, embeddings, neg), axis=1)
            any_valid = ops.any(mask, axis=1, keepdims=True)
            return ops.where(any_valid, pooled, ops.zeros_like(pooled))
        total = ops.sum(embeddings * weights, axis=1)
        if pooling == "sum":
            return total
        count = ops.maximum(ops.sum(weights, axis=1), 1.0)
        return total / count

    def call(self, inputs, encoded=False):
        self._check_inputs(inputs)
        parts = []
        if self.numeric:
            parts.append(self._numeric_block(inputs))
        if self.categorical:
            embedded = self.embed(inputs, encoded=encoded)
            vectors = {}
            for spec in self.categorical:
                value = embedded[spec.name]
                if isinstance(spec, features_lib.SequenceFeature):
                    value = self.pool(value[0], value[1], spec.pooling)
                vectors[spec.name] = ops.cast(value, self.compute_dtype)
                parts.append(vectors[spec.name])
            if self.dot_interaction is not None:
                parts.append(
                    self.dot_interaction(
                        [vectors[name] for name in self.interaction_features]
                    )
                )
        x0 = parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=-1)
        x = x0
        for cross in self.feature_crosses:
            x = cross(x0, x)
        return x

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "features": [f.get_config() for f in self.features],
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer
                ),
                "embeddings_regularizer": keras.regularizers.serialize(
                    self.embeddings_regularizer
                ),
                "learned_fill": self.learned_fill,
                "interaction": self.interaction,
                "interaction_features": self.interaction_features,
                "cross_layers": self.cross_layers,
                "cross_projection_dim": self.cross_projection_dim,
            }
        )
        return config
