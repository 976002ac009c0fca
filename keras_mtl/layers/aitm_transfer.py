"""AITM: attention-based transfer of information between sequential tasks."""

import math

import keras
from keras import ops

from keras_mtl.layers.mlp import _clone_initializer
from keras_mtl.layers.mlp import _get_or_raise
from keras_mtl.layers.mlp import _is_positive_int


@keras.saving.register_keras_serializable(package="keras_mtl")
class AITMTransfer(keras.layers.Layer):
    """Adaptive Information Transfer Module of AITM.

    For tasks with a sequential dependence (impression -> click -> purchase),
    task `t`'s tower output `q_t` is fused with information transferred from
    task `t - 1`. The transferred vector is `p = Dense(units)(q_{t-1})`; the
    attention then weighs the two items `u in {p, q_t}` with
    `w_u = softmax_u(<key(u), query(u)> / sqrt(units))` and returns
    `z_t = sum_u w_u * value(u)`, where `query`, `key` and `value` are Dense
    projections (no bias, as in the paper's reference code) shared by both
    items. `z_t` feeds task `t`'s head and is the "previous tower output" of
    task `t + 1`. The first task has no predecessor and uses its tower output
    directly (the model builder handles that).

    Args:
        units: int. Width of the transferred vector, the attention
            projections and the output. The current task's tower output must
            have `units` features. Must be positive.
        kernel_initializer: str or `keras.initializers.Initializer`.
            Initializer of every Dense kernel (cloned per sublayer). Defaults
            to `"glorot_uniform"`.
        kernel_regularizer: str or `keras.regularizers.Regularizer`, or
            `None`. Regularizer of every Dense kernel. Defaults to `None`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: list `[previous_task_tower_output, current_task_tower_output]`
            of tensors of shape `(batch, d_prev)` and `(batch, units)`.

    Returns:
        Tensor of shape `(batch, units)`: the fused representation `z_t`.

    Example:

    ```python
    features = keras.Input((16,))
    click_tower = keras_mtl.layers.MLP([32])(features)
    buy_tower = keras_mtl.layers.MLP([32])(features)
    buy_fused = keras_mtl.layers.AITMTransfer(32)([click_tower, buy_tower])
    p_click = keras.layers.Dense(1, activation="sigmoid")(click_tower)
    p_buy = keras.layers.Dense(1, activation="sigmoid")(buy_fused)
    ```

    References:
        - Xi et al., "Modeling the Sequential Dependence among Audience
          Multi-step Conversions with Multi-task Learning in Targeted Display
          Advertising", KDD 2021, https://arxiv.org/abs/2105.08489
    """

    def __init__(
        self,
        units,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not _is_positive_int(units):
            raise ValueError(
                f"`units` must be a positive integer. Received: units={units!r}"
            )
        self.units = units
        self.kernel_initializer = _get_or_raise(
            keras.initializers.get, "kernel_initializer", kernel_initializer
        )
        self.kernel_regularizer = _get_or_raise(
            keras.regularizers.get, "kernel_regularizer", kernel_regularizer
        )

    def _dense(self, name, use_bias):
        return keras.layers.Dense(
            self.units,
            use_bias=use_bias,
            kernel_initializer=_clone_initializer(self.kernel_initializer),
            kernel_regularizer=self.kernel_regularizer,
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, input_shape):
        if (
            not isinstance(input_shape, (list, tuple))
            or len(input_shape) != 2
            or not isinstance(input_shape[0], (list, tuple))
        ):
            raise ValueError(
                "`AITMTransfer` expects a list of two tensors "
                "[previous_task_tower_output, current_task_tower_output]. "
                f"Received: input_shape={input_shape}"
            )
        previous_shape, current_shape = (tuple(s) for s in input_shape)
        if current_shape[-1] != self.units:
            raise ValueError(
                "The current task's tower output must have `units` features. "
                f"Received: units={self.units}, "
                f"current_task_tower_output shape={current_shape}"
            )
        self.transfer = self._dense("transfer", use_bias=True)
        self.transfer.build(previous_shape)
        self.query = self._dense("query", use_bias=False)
        self.key = self._dense("key", use_bias=False)
        self.value = self._dense("value", use_bias=False)
        for dense in (self.query, self.key, self.value):
            dense.build(current_shape)
        self.built = True

    def call(self, inputs):
        previous, current = inputs
        transferred = self.transfer(previous)
        # The two items {p, q}: (batch, 2, units).
        items = ops.stack([transferred, current], axis=1)
        scores = ops.sum(self.query(items) * self.key(items), axis=-1)
        weights = ops.softmax(scores / math.sqrt(self.units), axis=-1)
        return ops.sum(ops.expand_dims(weights, -1) * self.value(items), axis=1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[1])[:-1] + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "kernel_regularizer": keras.regularizers.serialize(
                    self.kernel_regularizer
                ),
            }
        )
        return config
