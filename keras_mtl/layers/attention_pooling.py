"""`AttentionPooling`: masked additive attention over a sequence."""

import keras
from keras import ops

from keras_mtl.layers.mlp import _clone_initializer
from keras_mtl.layers.mlp import _get_or_raise
from keras_mtl.layers.mlp import _is_positive_int


def masked_softmax(scores, mask):
    """Softmax over the last axis restricted to `mask`; 0 where it is off.

    Rows without any valid position get all-zero weights (not NaN).
    """
    valid = ops.cast(mask, scores.dtype)
    lowest = ops.convert_to_tensor(-1e9, scores.dtype)
    scores = ops.where(mask, scores, lowest)
    scores = scores - ops.max(scores, axis=-1, keepdims=True)
    weights = ops.exp(scores) * valid
    total = ops.sum(weights, axis=-1, keepdims=True)
    return weights / ops.maximum(
        total, ops.convert_to_tensor(1e-9, total.dtype)
    )


@keras.saving.register_keras_serializable(package="keras_mtl")
class AttentionPooling(keras.layers.Layer):
    """Pools a sequence with additive attention, optionally query-conditioned.

    Each position `t` of the sequence `h` gets a score

        s_t = v . tanh(W_h h_t + W_q q + b)

    (Bahdanau-style additive attention), where `q` is an optional query
    vector per example; without a query, the bias `b` plays the role of a
    learned query shared by every example. The scores are turned into
    weights by a softmax over the positions where `mask` holds; padding
    positions get exactly 0 weight, and a row without any valid position
    gets all-zero weights and a zero output. The output is
    `sum_t a_t h_t`.

    The softmax runs in float32 whatever the dtype policy.

    Args:
        units: int. Width of the attention hidden layer. Defaults to `32`.
        return_attention: bool. Also return the weights. Defaults to
            `False`.
        kernel_initializer: str or `keras.initializers.Initializer`.
            Initializer of `W_h`, `W_q` and `v`. Defaults to
            `"glorot_uniform"`.
        kernel_regularizer: str or `keras.regularizers.Regularizer`, or
            `None`. Regularizer of `W_h`, `W_q` and `v`. Defaults to `None`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: the sequence `(batch, length, d)`, or a list
            `[sequence, query]` with a query of shape `(batch, d_q)`.
        mask: optional bool tensor `(batch, length)`; True at valid
            positions (with `[sequence, query]`, Keras' list of the two
            inputs' masks is accepted too: the sequence's is used).
            Defaults to every position valid.

    Returns:
        A `(batch, d)` tensor; with `return_attention=True`, a tuple
        `(pooled, weights)` with `(batch, length)` weights that sum to 1
        over the valid positions.

    Example:

    ```python
    pool = keras_mtl.layers.AttentionPooling(16, return_attention=True)
    pooled, weights = pool([lstm_states, user_context], mask=history_mask)
    ```

    References:
        - Bahdanau et al., "Neural Machine Translation by Jointly Learning
          to Align and Translate", ICLR 2015,
          https://arxiv.org/abs/1409.0473
        - Ni et al., "Perceive Your Users in Depth: Learning Universal User
          Representations from Multiple E-commerce Tasks", KDD 2018,
          https://arxiv.org/abs/1805.10727
    """

    def __init__(
        self,
        units=32,
        return_attention=False,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not _is_positive_int(units):
            raise ValueError(
                f"`units` must be a positive integer. Received: units={units!r}"
            )
        if not isinstance(return_attention, bool):
            raise ValueError(
                "`return_attention` must be a bool. "
                f"Received: return_attention={return_attention!r}"
            )
        self.units = units
        self.return_attention = return_attention
        self.kernel_initializer = _get_or_raise(
            keras.initializers.get, "kernel_initializer", kernel_initializer
        )
        self.kernel_regularizer = _get_or_raise(
            keras.regularizers.get, "kernel_regularizer", kernel_regularizer
        )

    @staticmethod
    def _split_shapes(input_shape):
        if isinstance(input_shape, (list, tuple)) and isinstance(
            input_shape[0], (list, tuple)
        ):
            if len(input_shape) != 2:
                raise ValueError(
                    "`AttentionPooling` takes a sequence or a list "
                    "[sequence, query]. Received: input_shape="
                    f"{input_shape}"
                )
            return tuple(input_shape[0]), tuple(input_shape[1])
        return tuple(input_shape), None

    def build(self, input_shape):
        sequence_shape, query_shape = self._split_shapes(input_shape)
        if len(sequence_shape) != 3 or sequence_shape[-1] is None:
            raise ValueError(
                "The sequence of `AttentionPooling` must have shape "
                "(batch, length, d) with a known d. Received: "
                f"input_shape={input_shape}"
            )
        self.sequence_kernel = self.add_weight(
            name="sequence_kernel",
            shape=(sequence_shape[-1], self.units),
            initializer=_clone_initializer(self.kernel_initializer),
            regularizer=self.kernel_regularizer,
        )
        self.query_kernel = None
        if query_shape is not None:
            self.query_kernel = self.add_weight(
                name="query_kernel",
                shape=(query_shape[-1], self.units),
                initializer=_clone_initializer(self.kernel_initializer),
                regularizer=self.kernel_regularizer,
            )
        self.bias = self.add_weight(
            name="bias", shape=(self.units,), initializer="zeros"
        )
        self.score_kernel = self.add_weight(
            name="score_kernel",
            shape=(self.units, 1),
            initializer=_clone_initializer(self.kernel_initializer),
            regularizer=self.kernel_regularizer,
        )
        self.built = True

    def call(self, inputs, mask=None):
        if isinstance(inputs, (list, tuple)):
            sequence, query = inputs
        else:
            sequence, query = inputs, None
        hidden = ops.matmul(sequence, self.sequence_kernel) + self.bias
        if query is not None:
            projected = ops.matmul(query, self.query_kernel)
            hidden = hidden + ops.expand_dims(projected, 1)
        scores = ops.squeeze(
            ops.matmul(ops.tanh(hidden), self.score_kernel), axis=-1
        )
        if isinstance(mask, (list, tuple)):
            # Keras passes one mask per input for `[sequence, query]`; the
            # query's is None.
            mask = mask[0]
        if mask is None:
            mask = ops.ones(ops.shape(scores), dtype="bool")
        else:
            mask = ops.cast(mask, "bool")
        weights = masked_softmax(ops.cast(scores, "float32"), mask)
        weights = ops.cast(weights, sequence.dtype)
        pooled = ops.einsum("bt,btd->bd", weights, sequence)
        if self.return_attention:
            return pooled, weights
        return pooled

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        sequence_shape, _ = self._split_shapes(input_shape)
        pooled = (sequence_shape[0], sequence_shape[-1])
        if self.return_attention:
            return pooled, sequence_shape[:2]
        return pooled

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "return_attention": self.return_attention,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "kernel_regularizer": keras.regularizers.serialize(
                    self.kernel_regularizer
                ),
            }
        )
        return config
