"""Cross-stitch unit: learned linear mixing of per-task activations."""

import keras
from keras import ops

from keras_mtl.layers.mlp import _get_or_raise


@keras.saving.register_keras_serializable(package="keras_mtl")
class CrossStitch(keras.layers.Layer):
    """Cross-stitch unit between the towers of `K` tasks.

    Takes the activations `x_1 ... x_K` of the same level of `K` task
    towers and returns `K` new activations, each a learned linear
    combination of all of them:

        out_i = sum_j alpha[i, j] * x_j

    `alpha` is a `(K, K)` float32 weight learned with the rest of the
    network. Initialised to the identity (the default), the unit passes
    every tower's activation through unchanged, so the network starts as
    `K` independent towers and learns how much to share. Any initializer
    of a `(K, K)` matrix works, e.g. one returning `[[0.9, 0.1],
    [0.1, 0.9]]` for the paper's `alpha_S = 0.9, alpha_D = 0.1` start.

    Args:
        alpha_initializer: str or `keras.initializers.Initializer`.
            Initializer of the `(K, K)` mixing matrix. Defaults to
            `"identity"`.
        alpha_regularizer: str or `keras.regularizers.Regularizer`, or
            `None`. Regularizer of the mixing matrix. Defaults to `None`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: list of `K >= 2` tensors of the same shape `(batch, ..., d)`.

    Returns:
        A list of `K` tensors of shape `(batch, ..., d)`, in input order.

    Example:

    ```python
    h_ctr = keras_mtl.layers.MLP([16])(x)
    h_cvr = keras_mtl.layers.MLP([16])(x)
    h_ctr, h_cvr = keras_mtl.layers.CrossStitch()([h_ctr, h_cvr])
    ```

    References:
        - Misra et al., "Cross-stitch Networks for Multi-task Learning",
          CVPR 2016, https://arxiv.org/abs/1604.03539
    """

    def __init__(
        self, alpha_initializer="identity", alpha_regularizer=None, **kwargs
    ):
        super().__init__(**kwargs)
        self.alpha_initializer = _get_or_raise(
            keras.initializers.get, "alpha_initializer", alpha_initializer
        )
        self.alpha_regularizer = _get_or_raise(
            keras.regularizers.get, "alpha_regularizer", alpha_regularizer
        )

    def build(self, input_shape):
        if (
            not isinstance(input_shape, (list, tuple))
            or len(input_shape) < 2
            or not all(isinstance(s, (list, tuple)) for s in input_shape)
        ):
            raise ValueError(
                "`CrossStitch` takes a list of at least two tensors, one per "
                f"task. Received: input_shape={input_shape}"
            )
        shapes = {tuple(s)[1:] for s in input_shape}
        if len(shapes) != 1:
            raise ValueError(
                "Every input of `CrossStitch` must have the same shape. "
                f"Received: input_shape={input_shape}"
            )
        self.num_tasks = len(input_shape)
        self.alpha = self.add_weight(
            name="alpha",
            shape=(self.num_tasks, self.num_tasks),
            initializer=self.alpha_initializer,
            regularizer=self.alpha_regularizer,
        )
        self.built = True

    def call(self, inputs):
        stacked = ops.stack(list(inputs), axis=0)  # (K, batch, ..., d)
        alpha = ops.cast(self.alpha, stacked.dtype)
        mixed = ops.tensordot(alpha, stacked, axes=1)  # (K, batch, ..., d)
        return [mixed[i] for i in range(self.num_tasks)]

    def compute_output_shape(self, input_shape):
        return [tuple(s) for s in input_shape]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "alpha_initializer": keras.initializers.serialize(
                    self.alpha_initializer
                ),
                "alpha_regularizer": keras.regularizers.serialize(
                    self.alpha_regularizer
                ),
            }
        )
        return config
