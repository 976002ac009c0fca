"""`ShallowTower`: a selection-bias logit from position-like features."""

import keras
from keras import ops

from keras_mtl.layers.mlp import MLP
from keras_mtl.layers.mlp import _clone_initializer
from keras_mtl.layers.mlp import _get_or_raise
from keras_mtl.layers.mlp import _is_positive_int
from keras_mtl.layers.mlp import _is_rate


@keras.saving.register_keras_serializable(package="keras_mtl")
class ShallowTower(keras.layers.Layer):
    """A shallow tower giving bias logits from selection-bias features.

    Zhao et al. (YouTube, 2019) learn position bias with a small tower over
    the features that cause it (the slot an item was shown in, the device)
    whose output is added to the main model's logits while training. The
    main model then only has to explain what the bias tower cannot, and at
    serving time the tower is left out, so the ranking uses the debiased
    main logits.

    The tower is an optional `MLP` then a linear `Dense(num_outputs)`, one
    bias logit per task it corrects. While training, each example's bias
    logits are zeroed with probability `drop_rate` (without rescaling the
    others), the paper's position dropout: the main model sees examples
    where the bias is absent, as it is at serving time, so it does not lean
    on the tower.

    Args:
        num_outputs: int. Number of bias logits (tasks corrected). Defaults
            to `1`.
        units: list of int. Hidden levels of the tower; empty for a linear
            tower. Defaults to `()`.
        activation: str or callable. Hidden activation. Defaults to
            `"relu"`.
        drop_rate: float in `[0, 1)`. Probability of dropping an example's
            bias logits while training. Defaults to `0.0`.
        kernel_initializer: str or `keras.initializers.Initializer`.
            Initializer of every kernel (cloned per level). Defaults to
            `"glorot_uniform"`.
        kernel_regularizer: str or `keras.regularizers.Regularizer`, or
            `None`. Regularizer of every kernel. Defaults to `None`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: tensor of shape `(batch, d)`: the bias features (e.g. the
            embedded position and device).
        training: bool. Whether the bias dropout is active.

    Returns:
        A tensor of shape `(batch, num_outputs)` of bias logits.

    Example:

    ```python
    bias = keras_mtl.layers.ShallowTower(num_outputs=2, drop_rate=0.1)(
        position_and_device
    )
    click_logit = keras.layers.Add()([main_click_logit, bias[:, 0:1]])
    ```

    References:
        - Zhao et al., "Recommending What Video to Watch Next: A Multitask
          Ranking System", RecSys 2019,
          https://dl.acm.org/doi/10.1145/3298689.3346997
    """

    def __init__(
        self,
        num_outputs=1,
        units=(),
        activation="relu",
        drop_rate=0.0,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not _is_positive_int(num_outputs):
            raise ValueError(
                "`num_outputs` must be a positive integer. "
                f"Received: num_outputs={num_outputs!r}"
            )
        if not isinstance(units, (list, tuple)) or not all(
            _is_positive_int(u) for u in units
        ):
            raise ValueError(
                "`units` must be a possibly empty list of positive integers. "
                f"Received: units={units!r}"
            )
        if not _is_rate(drop_rate):
            raise ValueError(
                "`drop_rate` must be a float in [0, 1). "
                f"Received: drop_rate={drop_rate!r}"
            )
        self.num_outputs = num_outputs
        self.units = list(units)
        self.activation = _get_or_raise(
            keras.activations.get, "activation", activation
        )
        self.drop_rate = float(drop_rate)
        self.kernel_initializer = _get_or_raise(
            keras.initializers.get, "kernel_initializer", kernel_initializer
        )
        self.kernel_regularizer = _get_or_raise(
            keras.regularizers.get, "kernel_regularizer", kernel_regularizer
        )
        self.seed_generator = (
            keras.random.SeedGenerator() if self.drop_rate > 0 else None
        )

    def build(self, input_shape):
        shape = tuple(input_shape)
        self.hidden = None
        if self.units:
            self.hidden = MLP(
                self.units,
                activation=self.activation,
                kernel_initializer=_clone_initializer(self.kernel_initializer),
                kernel_regularizer=self.kernel_regularizer,
                dtype=self.dtype_policy,
                name="hidden",
            )
            self.hidden.build(shape)
            shape = shape[:-1] + (self.units[-1],)
        self.output_dense = keras.layers.Dense(
            self.num_outputs,
            kernel_initializer=_clone_initializer(self.kernel_initializer),
            kernel_regularizer=self.kernel_regularizer,
            dtype=self.dtype_policy,
            name="bias_logits",
        )
        self.output_dense.build(shape)
        self.built = True

    def call(self, inputs, training=None):
        x = inputs
        if self.hidden is not None:
            x = self.hidden(x)
        logits = self.output_dense(x)
        if training and self.drop_rate > 0:
            keep = keras.random.uniform(
                (ops.shape(logits)[0], 1), seed=self.seed_generator
            )
            keep = ops.cast(keep >= self.drop_rate, logits.dtype)
            logits = logits * keep
        return logits

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.num_outputs,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_outputs": self.num_outputs,
                "units": self.units,
                "activation": keras.activations.serialize(self.activation),
                "drop_rate": self.drop_rate,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "kernel_regularizer": keras.regularizers.serialize(
                    self.kernel_regularizer
                ),
            }
        )
        return config
