"""`KLBoundPenalty`: the KL bound as an auxiliary loss of a functional model."""

import math

import keras
from keras import ops

from keras_mtl.losses import _check_epsilon
from keras_mtl.losses import kl_bound


@keras.saving.register_keras_serializable(package="keras_mtl")
class KLBoundPenalty(keras.layers.Layer):
    """Adds the KL bound between a product chain and a joint as a loss.

    Takes `[chain_prob, joint_prob]`, e.g. `p(click) * p(convert | click)`
    and a directly predicted `p(order)`, and while training adds
    `weight * mean(kl_bound(chain_prob, joint_prob))` to the model's losses
    with `self.add_loss`, which `model.fit` adds to the compiled loss.
    Outside training (`predict`, `evaluate`, serving) it adds nothing. It
    returns `joint_prob` unchanged, so the layer sits in the functional
    graph on the path of the joint output.

    Args:
        weight: float. Multiplier of the penalty, finite and `>= 0`.
            Defaults to `1.0`.
        epsilon: float. Probabilities are clipped to
            `[epsilon, 1 - epsilon]`. Defaults to `1e-7`.
        **kwargs: base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: list `[chain_prob, joint_prob]` of two tensors of the same
            shape, e.g. `(batch, 1)`.
        training: bool. Whether the call is a training step; the penalty is
            only added when `True`.

    Returns:
        `joint_prob`, unchanged (the layer does not autocast its inputs, so
        under a mixed precision policy the dtype is kept as well).

    Example:

    >>> ctr = keras.layers.Dense(1, activation="sigmoid")(h_click)
    >>> cvr = keras.layers.Dense(1, activation="sigmoid")(h_conversion)
    >>> order = keras.layers.Dense(1, activation="sigmoid")(h_order)
    >>> order = keras_mtl.layers.KLBoundPenalty(weight=0.1)(
    ...     [keras.layers.Multiply()([ctr, cvr]), order])

    References:
        - [Ma et al., 2018. Entire Space Multi-Task Model](
            https://arxiv.org/abs/1804.07931)
        - [Xi et al., 2021. Adaptive Information Transfer Multi-task (AITM)](
            https://arxiv.org/abs/2105.08489)
    """

    def __init__(self, weight=1.0, epsilon=1e-7, **kwargs):
        # A pass-through must not cast its inputs to the compute dtype of a
        # mixed precision policy; `kl_bound` computes in float32 anyway.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not math.isfinite(weight)
            or weight < 0
        ):
            raise ValueError(
                "`weight` must be a finite number >= 0. "
                f"Received: weight={weight!r}"
            )
        self.weight = float(weight)
        self.epsilon = _check_epsilon(epsilon)

    def call(self, inputs, training=None):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(
                "`inputs` must be a list `[chain_prob, joint_prob]` of two "
                f"tensors. Received: inputs={inputs!r}"
            )
        chain_prob, joint_prob = inputs
        if training:
            penalty = ops.mean(
                kl_bound(chain_prob, joint_prob, epsilon=self.epsilon)
            )
            self.add_loss(self.weight * penalty)
        return joint_prob

    def compute_output_shape(self, input_shape):
        return input_shape[1]

    def get_config(self):
        config = super().get_config()
        config.update({"weight": self.weight, "epsilon": self.epsilon})
        return config
