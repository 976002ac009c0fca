"""`DUPNEncoder`: DUPN's behaviour-sequence user encoder."""

import keras
from keras import ops

from keras_mtl import features as features_lib
from keras_mtl.layers.attention_pooling import AttentionPooling
from keras_mtl.layers.input_block import InputBlock
from keras_mtl.layers.input_block import resolve_embedding_args
from keras_mtl.layers.mlp import _clone_initializer
from keras_mtl.layers.mlp import _get_or_raise
from keras_mtl.layers.mlp import _is_positive_int


@keras.saving.register_keras_serializable(package="keras_mtl")
class DUPNEncoder(keras.layers.Layer):
    """Encodes a user's raw features and behaviour sequence into one vector.

    The user side of DUPN (Ni et al., KDD 2018):

    1. the behaviour sequence (e.g. recently clicked item ids) is embedded,
       unpooled, by an `InputBlock` (padding positions masked);
    2. an LSTM reads it in order (masked steps are skipped);
    3. `AttentionPooling` pools the LSTM states, with a softmax over the
       non-padding positions, conditioned on the *request context*: the
       embedded non-sequence user features (profile, device, query ...).
       Without such features the attention uses a learned query.

    The output is `[context, pooled]`, concatenated.

    Why the context and not the candidate item: attention conditioned on
    the item (as in DIN) would make the user vector a function of every
    candidate, so it could not be computed once per request and reused for
    every item, nor exported as a separate user tower. DUPN itself
    conditions on the search query and the user profile, which are
    request-side; this layer keeps that choice, so the encoder sees only
    user/request features.

    Args:
        features: list of feature specs (or configs) of the user side. Must
            contain `sequence_feature`; the others form the context.
        sequence_feature: str. Name of the behaviour `SequenceFeature`.
        lstm_units: int. LSTM width (and width of the pooled part).
            Defaults to `32`.
        attention_units: int. Width of the attention hidden layer. Defaults
            to `32`.
        kernel_initializer: str or `keras.initializers.Initializer`.
            Initializer of the attention kernels and the LSTM input kernel.
            Defaults to `"glorot_uniform"`.
        kernel_regularizer: str or `keras.regularizers.Regularizer`, or
            `None`. Regularizer of the same kernels. Defaults to `None`.
        embeddings_initializer: initializer of the embedding tables.
            Defaults to `"uniform"` (as `InputBlock`).
        embeddings_regularizer: optional regularizer of the embedding
            tables.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: dict of raw user tensors keyed by feature name (as made by
            `keras_mtl.layers.input_block.make_inputs(features)`).
        training: bool. Passed to the LSTM.
        return_attention: bool. Also return the `(batch, max_len)`
            attention weights. Defaults to `False`.

    Returns:
        A `(batch, context_dim + lstm_units)` tensor (`output_dim`); with
        `return_attention=True` a tuple `(vector, weights)`.

    Example:

    ```python
    encoder = keras_mtl.layers.DUPNEncoder(
        user_specs, sequence_feature="hist_item_ids", lstm_units=16
    )
    inputs = keras_mtl.layers.input_block.make_inputs(user_specs)
    user_vector = encoder(inputs)
    ```

    References:
        - Ni et al., "Perceive Your Users in Depth: Learning Universal User
          Representations from Multiple E-commerce Tasks", KDD 2018,
          https://arxiv.org/abs/1805.10727
    """

    def __init__(
        self,
        features,
        sequence_feature,
        lstm_units=32,
        attention_units=32,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        embeddings_initializer="uniform",
        embeddings_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.features = features_lib.validate_features(features)
        by_name = {f.name: f for f in self.features}
        if not isinstance(
            by_name.get(sequence_feature), features_lib.SequenceFeature
        ):
            raise ValueError(
                "`sequence_feature` must name a SequenceFeature of "
                f"`features` ({sorted(by_name)}). "
                f"Received: sequence_feature={sequence_feature!r}"
            )
        for name, value in (
            ("lstm_units", lstm_units),
            ("attention_units", attention_units),
        ):
            if not _is_positive_int(value):
                raise ValueError(
                    f"`{name}` must be a positive integer. "
                    f"Received: {name}={value!r}"
                )
        self.sequence_feature = sequence_feature
        self.lstm_units = lstm_units
        self.attention_units = attention_units
        self.kernel_initializer = _get_or_raise(
            keras.initializers.get, "kernel_initializer", kernel_initializer
        )
        self.kernel_regularizer = _get_or_raise(
            keras.regularizers.get, "kernel_regularizer", kernel_regularizer
        )
        self.embeddings_initializer, self.embeddings_regularizer = (
            resolve_embedding_args(
                embeddings_initializer, embeddings_regularizer
            )
        )
        self.context_features = [
            f for f in self.features if f.name != sequence_feature
        ]

    @property
    def context_dim(self):
        return sum(
            f.output_dim
            if isinstance(f, features_lib.NumericFeature)
            else f.embed_dim
            for f in self.context_features
        )

    @property
    def output_dim(self):
        return self.context_dim + self.lstm_units

    def build(self, input_shape=None):
        spec = next(f for f in self.features if f.name == self.sequence_feature)
        self.sequence_block = InputBlock(
            [spec],
            embeddings_initializer=self.embeddings_initializer,
            embeddings_regularizer=self.embeddings_regularizer,
            dtype=self.dtype_policy,
            name="sequence_block",
        )
        self.sequence_block.build()
        self.context_block = None
        if self.context_features:
            self.context_block = InputBlock(
                self.context_features,
                embeddings_initializer=self.embeddings_initializer,
                embeddings_regularizer=self.embeddings_regularizer,
                dtype=self.dtype_policy,
                name="context_block",
            )
            self.context_block.build()
        self.lstm = keras.layers.LSTM(
            self.lstm_units,
            return_sequences=True,
            kernel_initializer=_clone_initializer(self.kernel_initializer),
            kernel_regularizer=self.kernel_regularizer,
            dtype=self.dtype_policy,
            name="lstm",
        )
        self.lstm.build((None, spec.max_len, spec.embed_dim))
        self.attention = AttentionPooling(
            self.attention_units,
            return_attention=True,
            kernel_initializer=_clone_initializer(self.kernel_initializer),
            kernel_regularizer=self.kernel_regularizer,
            dtype=self.dtype_policy,
            name="attention",
        )
        states = (None, spec.max_len, self.lstm_units)
        if self.context_block is not None:
            self.attention.build([states, (None, self.context_dim)])
        else:
            self.attention.build(states)
        self.built = True

    def call(self, inputs, training=None, return_attention=False):
        embedded, mask = self.sequence_block.embed(inputs)[
            self.sequence_feature
        ]
        embedded = ops.cast(embedded, self.compute_dtype)
        states = self.lstm(embedded, mask=mask, training=training)
        if self.context_block is not None:
            context = self.context_block(inputs)
            pooled, weights = self.attention([states, context], mask=mask)
            vector = ops.concatenate(
                [ops.cast(context, pooled.dtype), pooled], axis=-1
            )
        else:
            pooled, weights = self.attention(states, mask=mask)
            vector = pooled
        if return_attention:
            return vector, weights
        return vector

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "features": [f.get_config() for f in self.features],
                "sequence_feature": self.sequence_feature,
                "lstm_units": self.lstm_units,
                "attention_units": self.attention_units,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "kernel_regularizer": keras.regularizers.serialize(
                    self.kernel_regularizer
                ),
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer
                ),
                "embeddings_regularizer": keras.regularizers.serialize(
                    self.embeddings_regularizer
                ),
            }
        )
        return config
