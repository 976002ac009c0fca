"""A stack of fully connected layers, the building block of towers."""

import keras

_NORMALIZATIONS = (None, "batch", "layer")


def _clone_initializer(initializer):
    """Returns a fresh copy of `initializer` so no instance is shared.

    Keras initializers seeded with an integer (or unseeded) return the same
    values on every call, so each weight gets its own copy.
    """
    if not isinstance(initializer, keras.initializers.Initializer):
        return initializer
    return initializer.__class__.from_config(initializer.get_config())


def _is_positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_rate(value):
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and 0.0 <= value < 1.0
    )


def _get_or_raise(getter, name, value):
    """Resolves `value` with a `keras.*.get` getter, naming `name` on error."""
    try:
        return getter(value)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"`{name}` could not be interpreted ({error}). "
            f"Received: {name}={value!r}"
        ) from None


@keras.saving.register_keras_serializable(package="keras_mtl")
class MLP(keras.layers.Layer):
    """A stack of fully connected layers.

    Each level is `Dense -> normalization (optional) -> activation ->
    dropout`. The activation and dropout are applied after every level,
    including the last one, so the output is a hidden representation; add a
    final `keras.layers.Dense` for logits.

    Args:
        units: list of int. Width of each Dense level, from input to output.
            Must be a non-empty list of positive integers.
        activation: str or callable. Activation applied after every level.
            Defaults to `"relu"`.
        dropout: float. Dropout rate in `[0, 1)` applied after every
            activation during training. Defaults to `0.0`.
        normalization: `None`, `"batch"` or `"layer"`. Normalization applied
            between each Dense and its activation. With `"batch"` the Dense
            layers have no bias (batch normalization's offset replaces it).
            Defaults to `None`.
        kernel_initializer: str or `keras.initializers.Initializer`.
            Initializer of every Dense kernel (cloned per level). Defaults to
            `"glorot_uniform"`.
        kernel_regularizer: str or `keras.regularizers.Regularizer`, or
            `None`. Regularizer of every Dense kernel. Defaults to `None`.
        **kwargs: standard `keras.layers.Layer` arguments (`name`, `dtype`,
            ...).

    Call arguments:
        inputs: tensor of shape `(batch, ..., d)`.
        training: bool. Whether dropout and batch normalization run in
            training mode.

    Returns:
        Tensor of shape `(batch, ..., units[-1])`.

    Example:

    ```python
    tower = keras_mtl.layers.MLP([64, 32], dropout=0.1)
    hidden = tower(keras.random.normal((8, 16)))  # (8, 32)
    ```

    References:
        - Covington et al., "Deep Neural Networks for YouTube
          Recommendations", RecSys 2016,
          https://dl.acm.org/doi/10.1145/2959100.2959190
    """

    def __init__(
        self,
        units,
        activation="relu",
        dropout=0.0,
        normalization=None,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if (
            not isinstance(units, (list, tuple))
            or not units
            or not all(_is_positive_int(u) for u in units)
        ):
            raise ValueError(
                "`units` must be a non-empty list of positive integers. "
                f"Received: units={units!r}"
            )
        if not _is_rate(dropout):
            raise ValueError(
                "`dropout` must be a float in [0, 1). "
                f"Received: dropout={dropout!r}"
            )
        if normalization not in _NORMALIZATIONS:
            raise ValueError(
                "`normalization` must be one of None, 'batch' or 'layer'. "
                f"Received: normalization={normalization!r}"
            )
        self.units = list(units)
        self.activation = _get_or_raise(
            keras.activations.get, "activation", activation
        )
        self.dropout = float(dropout)
        self.normalization = normalization
        self.kernel_initializer = _get_or_raise(
            keras.initializers.get, "kernel_initializer", kernel_initializer
        )
        self.kernel_regularizer = _get_or_raise(
            keras.regularizers.get, "kernel_regularizer", kernel_regularizer
        )
        self.seed_generator = (
            keras.random.SeedGenerator() if self.dropout > 0 else None
        )

    def build(self, input_shape):
        self.dense_layers = []
        self.norm_layers = []
        shape = tuple(input_shape)
        for i, units in enumerate(self.units):
            dense = keras.layers.Dense(
                units,
                use_bias=self.normalization != "batch",
                kernel_initializer=_clone_initializer(self.kernel_initializer),
                kernel_regularizer=self.kernel_regularizer,
                dtype=self.dtype_policy,
                name=f"dense_{i}",
            )
            dense.build(shape)
            self.dense_layers.append(dense)
            shape = shape[:-1] + (units,)
            if self.normalization == "batch":
                norm = keras.layers.BatchNormalization(
                    dtype=self.dtype_policy, name=f"batch_norm_{i}"
                )
            elif self.normalization == "layer":
                norm = keras.layers.LayerNormalization(
                    dtype=self.dtype_policy, name=f"layer_norm_{i}"
                )
            else:
                norm = None
            if norm is not None:
                norm.build(shape)
                self.norm_layers.append(norm)
        self.built = True

    def call(self, inputs, training=None):
        x = inputs
        for i, dense in enumerate(self.dense_layers):
            x = dense(x)
            if self.norm_layers:
                x = self.norm_layers[i](x, training=training)
            x = self.activation(x)
            if training and self.dropout > 0:
                x = keras.random.dropout(
                    x, self.dropout, seed=self.seed_generator
                )
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.units[-1],)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "activation": keras.activations.serialize(self.activation),
                "dropout": self.dropout,
                "normalization": self.normalization,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "kernel_regularizer": keras.regularizers.serialize(
                    self.kernel_regularizer
                ),
            }
        )
        return config
