"""`MissingValueLayer`: a learned fill value for missing numeric features."""

import keras
from keras import ops

from keras_mtl.layers.mlp import _get_or_raise


@keras.saving.register_keras_serializable(package="keras_mtl")
class MissingValueLayer(keras.layers.Layer):
    """Replaces NaN with a learned per-column fill value, plus an indicator.

    A fixed fill (0, or the mean) is a guess about what a missing value
    stands for, and it is often wrong: a price is missing on cheap listings,
    an age on young users. This layer learns the fill instead: column `j`
    of the input keeps its value where it is observed and takes the
    trainable `fill[j]` where it is NaN, so the gradient of the loss moves
    `fill[j]` to wherever the missing rows are best represented. With
    `indicator=True` a 0/1 column per feature says which values were
    missing, so the model can also learn a separate effect of missingness.

    The fill is a float32 weight of shape `(num_features,)`; the output is in
    the compute dtype. Inputs are expected already scaled (e.g. normalised),
    so the fill lives in the same units. `keras_mtl.layers.InputBlock` uses
    this layer for its numeric features with `learned_fill=True`.

    Args:
        indicator: bool. Also return one 0/1 missing-indicator column per
            feature. Defaults to `True`.
        fill_initializer: str or `keras.initializers.Initializer`. Initial
            fill values. Defaults to `"zeros"`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: float tensor of shape `(batch, num_features)`; NaN marks a
            missing value.

    Returns:
        A tensor of shape `(batch, num_features)`, or with `indicator=True`
        `(batch, 2 * num_features)`: the filled values, then the indicators.

    Example:

    ```python
    x = np.array([[1.0, np.nan], [np.nan, 2.0]], "float32")
    filled = keras_mtl.layers.MissingValueLayer()(x)  # (2, 4)
    ```

    References:
        - Le Morvan et al., "What's a good imputation to predict with
          missing values?", NeurIPS 2021, https://arxiv.org/abs/2106.00311
    """

    def __init__(self, indicator=True, fill_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(indicator, bool):
            raise ValueError(
                f"`indicator` must be a bool. Received: indicator={indicator!r}"
            )
        self.indicator = indicator
        self.fill_initializer = _get_or_raise(
            keras.initializers.get, "fill_initializer", fill_initializer
        )

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(
                "`MissingValueLayer` takes a `(batch, num_features)` input "
                f"with a known last dimension. Received: input_shape="
                f"{input_shape}"
            )
        self.fill = self.add_weight(
            name="fill",
            shape=(input_shape[-1],),
            initializer=self.fill_initializer,
        )
        self.built = True

    def call(self, inputs):
        # NaN survives the cast to a lower-precision compute dtype.
        x = ops.cast(inputs, self.compute_dtype)
        missing = ops.isnan(x)
        fill = ops.cast(self.fill, self.compute_dtype)
        filled = ops.where(missing, ops.broadcast_to(fill, ops.shape(x)), x)
        if not self.indicator:
            return filled
        return ops.concatenate(
            [filled, ops.cast(missing, self.compute_dtype)], axis=-1
        )

    def compute_output_shape(self, input_shape):
        width = input_shape[-1] * (2 if self.indicator else 1)
        return (input_shape[0], width)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "indicator": self.indicator,
                "fill_initializer": keras.initializers.serialize(
                    self.fill_initializer
                ),
            }
        )
        return config
