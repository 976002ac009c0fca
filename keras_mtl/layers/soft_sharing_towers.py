"""Soft parameter sharing: per-task towers pulled together by an L2 penalty."""

import math

import keras
from keras import ops

from keras_mtl.layers.mlp import _get_or_raise
from keras_mtl.layers.mlp import _is_positive_int
from keras_mtl.layers.mlp import _is_rate
from keras_mtl.layers.mmoe_layer import _per_expert_initializer


@keras.saving.register_keras_serializable(package="keras_mtl")
class SoftSharingTowers(keras.layers.Layer):
    """One tower per task, with an L2 penalty on their weight differences.

    Hard sharing ties the tasks' hidden layers; separate towers share
    nothing. Soft sharing sits in between: every task has its own tower of
    the same shape, and the loss gets

        penalty * sum_levels sum_{i < j} ||W_i - W_j||^2

    over the kernels and biases of corresponding levels of towers `i` and
    `j`, so the towers stay close unless the data pays for a difference.
    `penalty = 0` gives independent towers; a large penalty tends to hard
    sharing. Each pair's difference is taken directly, so equal towers give
    exactly 0.

    The towers of a level live in one stacked weight `(K, d_in, units)`
    driven by `ops.einsum`. The penalty is added with `add_loss` only while
    training; `sharing_penalty()` returns its current value.

    Args:
        units: list of int. Width of each tower level (every tower is
            `Dense -> activation -> dropout` per level).
        num_tasks: int. Number of towers. At least 2.
        penalty: float. Weight of the L2 difference penalty, `>= 0`.
            Defaults to `1e-3`.
        activation: str or callable. Activation after every level. Defaults
            to `"relu"`.
        dropout: float. Dropout in `[0, 1)` after every level while
            training. Defaults to `0.0`.
        kernel_initializer: str or `keras.initializers.Initializer`.
            Initializer of every tower's kernels (each tower separately).
            Biases start at zero. Defaults to `"glorot_uniform"`.
        kernel_regularizer: str or `keras.regularizers.Regularizer`, or
            `None`. Regularizer of every tower's kernels (on top of the
            sharing penalty). Defaults to `None`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: a tensor `(batch, d)` fed to every tower, or a list of
            `num_tasks` tensors `(batch, d)`, one per tower.
        training: bool. Whether dropout and the penalty are active.

    Returns:
        A list of `num_tasks` tensors of shape `(batch, units[-1])`.

    Example:

    ```python
    towers = keras_mtl.layers.SoftSharingTowers([32, 16], 2, penalty=1e-2)
    h_click, h_like = towers(shared_features)
    ```

    References:
        - Duong et al., "Low Resource Dependency Parsing: Cross-lingual
          Parameter Sharing in a Neural Network Parser", ACL 2015,
          https://aclanthology.org/P15-2139/
        - Ruder, "An Overview of Multi-Task Learning in Deep Neural
          Networks", 2017, https://arxiv.org/abs/1706.05098
    """

    def __init__(
        self,
        units,
        num_tasks,
        penalty=1e-3,
        activation="relu",
        dropout=0.0,
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
        if not _is_positive_int(num_tasks) or num_tasks < 2:
            raise ValueError(
                "`num_tasks` must be an integer >= 2. "
                f"Received: num_tasks={num_tasks!r}"
            )
        if (
            isinstance(penalty, bool)
            or not isinstance(penalty, (int, float))
            or not math.isfinite(penalty)
            or penalty < 0
        ):
            raise ValueError(
                "`penalty` must be a finite number >= 0. "
                f"Received: penalty={penalty!r}"
            )
        if not _is_rate(dropout):
            raise ValueError(
                "`dropout` must be a float in [0, 1). "
                f"Received: dropout={dropout!r}"
            )
        self.units = list(units)
        self.num_tasks = num_tasks
        self.penalty = float(penalty)
        self.activation = _get_or_raise(
            keras.activations.get, "activation", activation
        )
        self.dropout = float(dropout)
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
        shared = not isinstance(input_shape, list) or (
            input_shape and not isinstance(input_shape[0], (list, tuple))
        )
        if shared:
            shape = tuple(input_shape)
        else:
            if len(input_shape) != self.num_tasks:
                raise ValueError(
                    f"`SoftSharingTowers` with num_tasks={self.num_tasks} "
                    "takes one tensor or a list of that many tensors. "
                    f"Received: input_shape={input_shape}"
                )
            shape = tuple(input_shape[0])
        if shape[-1] is None:
            raise ValueError(
                "The last dimension of the inputs must be defined. "
                f"Received: input_shape={input_shape}"
            )
        self.kernels = []
        self.biases = []
        d_in = shape[-1]
        for i, units in enumerate(self.units):
            self.kernels.append(
                self.add_weight(
                    name=f"kernel_{i}",
                    shape=(self.num_tasks, d_in, units),
                    initializer=_per_expert_initializer(
                        self.kernel_initializer
                    ),
                    regularizer=self.kernel_regularizer,
                )
            )
            self.biases.append(
                self.add_weight(
                    name=f"bias_{i}",
                    shape=(self.num_tasks, units),
                    initializer="zeros",
                )
            )
            d_in = units
        self.built = True

    def sharing_penalty(self):
        """`penalty * sum_levels sum_{i<j} ||W_i - W_j||^2`, float32."""
        total = ops.convert_to_tensor(0.0, "float32")
        for weight in [*self.kernels, *self.biases]:
            w = ops.cast(weight, "float32")
            for i in range(self.num_tasks - 1):
                total = total + ops.sum(ops.square(w[i + 1 :] - w[i]))
        return self.penalty * total

    def call(self, inputs, training=None):
        if isinstance(inputs, (list, tuple)):
            x = ops.stack(list(inputs), axis=1)  # (batch, K, d)
            x = ops.einsum("bkd,kdu->bku", x, self.kernels[0])
        else:
            x = ops.einsum("bd,kdu->bku", inputs, self.kernels[0])
        for i in range(len(self.units)):
            if i > 0:
                x = ops.einsum("bkd,kdu->bku", x, self.kernels[i])
            x = self.activation(x + self.biases[i])
            if training and self.dropout > 0:
                x = keras.random.dropout(
                    x, self.dropout, seed=self.seed_generator
                )
        if training and self.penalty > 0:
            self.add_loss(self.sharing_penalty())
        return [x[:, k, :] for k in range(self.num_tasks)]

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, list) and isinstance(
            input_shape[0], (list, tuple)
        ):
            input_shape = input_shape[0]
        batch = tuple(input_shape)[0]
        return [(batch, self.units[-1])] * self.num_tasks

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "num_tasks": self.num_tasks,
                "penalty": self.penalty,
                "activation": keras.activations.serialize(self.activation),
                "dropout": self.dropout,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "kernel_regularizer": keras.regularizers.serialize(
                    self.kernel_regularizer
                ),
            }
        )
        return config
