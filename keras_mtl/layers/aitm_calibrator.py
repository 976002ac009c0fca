"""AITM behavioural expectation calibrator (a penalty on p_next > p_prev)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_mtl")
def aitm_calibrator_loss(p_prev, p_next):
    """Mean of `max(p_next - p_prev, 0)`: the AITM calibrator penalty.

    For sequential tasks a later step cannot be likelier than an earlier one
    (a purchase implies a click), so the penalty is zero when
    `p_next <= p_prev` everywhere and otherwise the mean, over every element,
    of the positive parts of `p_next - p_prev`.

    Args:
        p_prev: tensor of probabilities of the earlier task.
        p_next: tensor of probabilities of the later task, same shape.

    Returns:
        A float32 scalar tensor.

    Example:

    ```python
    penalty = keras_mtl.layers.aitm_calibrator_loss(
        [[0.5], [0.2]], [[0.4], [0.3]]
    )  # mean([0, 0.1]) = 0.05
    ```

    References:
        - Xi et al., KDD 2021, https://arxiv.org/abs/2105.08489
    """
    p_prev = ops.cast(p_prev, "float32")
    p_next = ops.cast(p_next, "float32")
    return ops.mean(ops.maximum(p_next - p_prev, 0.0))


@keras.saving.register_keras_serializable(package="keras_mtl")
class AITMCalibrator(keras.layers.Layer):
    """Adds the AITM behavioural expectation calibrator as an auxiliary loss.

    During training the layer adds `weight * aitm_calibrator_loss(p_prev,
    p_next)` to the model's losses with `self.add_loss`, pushing the later
    task's probability below the earlier task's. It returns `p_next`
    unchanged, so it can sit on the path of the later task's output.

    Args:
        weight: float. Non-negative weight of the penalty (`alpha` in the
            paper). Defaults to `0.6`, the value of the paper's reference
            code.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: list `[p_prev, p_next]` of probability tensors of one shape.
        training: bool. The loss is added only when `True`.

    Returns:
        `p_next`, unchanged.

    Example:

    ```python
    features = keras.Input((16,))
    p_click = keras.layers.Dense(1, activation="sigmoid")(features)
    p_buy = keras.layers.Dense(1, activation="sigmoid")(features)
    # Returns p_buy unchanged; adds 0.6 * penalty to the training loss.
    p_buy = keras_mtl.layers.AITMCalibrator(weight=0.6)([p_click, p_buy])
    ```

    References:
        - Xi et al., "Modeling the Sequential Dependence among Audience
          Multi-step Conversions with Multi-task Learning in Targeted Display
          Advertising", KDD 2021, https://arxiv.org/abs/2105.08489
    """

    def __init__(self, weight=0.6, **kwargs):
        super().__init__(**kwargs)
        if (
            not isinstance(weight, (int, float))
            or isinstance(weight, bool)
            or not weight >= 0
        ):
            raise ValueError(
                "`weight` must be a non-negative number. "
                f"Received: weight={weight!r}"
            )
        self.weight = float(weight)

    def call(self, inputs, training=None):
        p_prev, p_next = inputs
        if training:
            self.add_loss(self.weight * aitm_calibrator_loss(p_prev, p_next))
        return p_next

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[1])

    def get_config(self):
        config = super().get_config()
        config.update({"weight": self.weight})
        return config
