"""Multi-gate Mixture-of-Experts (MMoE) and its one-gate variant (OMoE)."""

import math

import keras
from keras import ops

from keras_mtl.layers.mlp import _NORMALIZATIONS
from keras_mtl.layers.mlp import _get_or_raise
from keras_mtl.layers.mlp import _is_positive_int
from keras_mtl.layers.mlp import _is_rate


def _per_expert_initializer(initializer):
    """Initializes a stacked weight `(*groups, d_in, d_out)` slice by slice.

    Every `(d_in, d_out)` slice (one expert, or one task's gate) gets its own
    copy of `initializer`, so fan-based initializers (Glorot, He) see the fans
    of one expert rather than of the whole stack, and the slices differ even
    when the initializer carries an integer seed (offset per slice).
    """

    def initialize(shape, dtype=None):
        shape = tuple(shape)
        num_slices = math.prod(shape[:-2])
        slices = []
        for i in range(num_slices):
            if isinstance(initializer, keras.initializers.Initializer):
                config = initializer.get_config()
                if isinstance(config.get("seed"), int):
                    config["seed"] = config["seed"] + i
                init = initializer.__class__.from_config(config)
            else:
                init = initializer
            slices.append(init(shape[-2:], dtype=dtype))
        return ops.reshape(ops.stack(slices), shape)

    return initialize


def _check_expert_units(expert_units):
    if (
        not isinstance(expert_units, (list, tuple))
        or not expert_units
        or not all(_is_positive_int(u) for u in expert_units)
    ):
        raise ValueError(
            "`expert_units` must be a non-empty list of positive integers. "
            f"Received: expert_units={expert_units!r}"
        )


def _check_normalization(name, value):
    """Raises unless `value` (the argument `name`) is a normalization kind."""
    if value not in _NORMALIZATIONS:
        raise ValueError(
            f"`{name}` must be None, 'batch' or 'layer'. "
            f"Received: {name}={value!r}"
        )


class _StackedLayerNormalization(keras.layers.Layer):
    """Layer normalization of every row of a `(batch, *stack)` tensor.

    The last axis (an expert's units, or a gate's logits over its experts)
    is normalized with `keras.layers.LayerNormalization` (epsilon 1e-3),
    then scaled and offset with a weight of shape `stack`: one scale and one
    offset per element, as if every expert (gate) were an MLP with its own
    layer normalization.
    """

    def __init__(self, stack, **kwargs):
        super().__init__(**kwargs)
        self.stack = tuple(stack)
        self.norm = keras.layers.LayerNormalization(
            axis=-1, center=False, scale=False, dtype=self.dtype_policy
        )

    def build(self, input_shape):
        self.gamma = self.add_weight(
            name="gamma", shape=self.stack, initializer="ones"
        )
        self.beta = self.add_weight(
            name="beta", shape=self.stack, initializer="zeros"
        )
        self.norm.build(input_shape)
        self.built = True

    def call(self, inputs):
        return self.norm(inputs) * self.gamma + self.beta


def _stack_norm(layer, kind, prefix, level, shape):
    """A built normalization layer for a stack of experts or gates, or `None`.

    `shape` is the stacked output without the batch axis, e.g.
    `(num_experts, units)` or `(num_gates, num_experts)`; the layer is named
    `{prefix}_batch_norm{suffix}` or `{prefix}_layer_norm{suffix}`, the
    suffix `_{level}` unless `level` is `None`.

    - `kind="batch"`: a `BatchNormalization` over the flattened stack, i.e.
      statistics, scale and offset per element (the kernels it follows then
      have no bias).
    - `kind="layer"`: the last axis is normalized per example
      (`_StackedLayerNormalization`); the biases stay, as in
      `MLP(normalization="layer")`.
    """
    suffix = "" if level is None else f"_{level}"
    if kind == "batch":
        norm = keras.layers.BatchNormalization(
            dtype=layer.dtype_policy, name=f"{prefix}_batch_norm{suffix}"
        )
        norm.build((None, math.prod(shape)))
    elif kind == "layer":
        norm = _StackedLayerNormalization(
            shape, dtype=layer.dtype_policy, name=f"{prefix}_layer_norm{suffix}"
        )
        norm.build((None, *shape))
    else:
        norm = None
    return norm


def _apply_stack_norm(norm, x, training):
    """Applies `_stack_norm`'s layer to a `(batch, *stack)` tensor."""
    if isinstance(norm, _StackedLayerNormalization):
        return norm(x)
    stack = tuple(x.shape[1:])
    x = norm(ops.reshape(x, (-1, math.prod(stack))), training=training)
    return ops.reshape(x, (-1, *stack))


@keras.saving.register_keras_serializable(package="keras_mtl")
class MMoELayer(keras.layers.Layer):
    """Multi-gate Mixture-of-Experts: shared experts, one softmax gate a task.

    Every expert is an MLP (`expert_units` levels of Dense + optional batch
    or layer normalization + activation + dropout) applied to the same
    input. All experts of a level live in one stacked kernel of shape
    `(num_experts, d_in, units)` applied with `ops.einsum`. Task `k` gets a
    softmax gate `g_k(x) = softmax(x W_k + b_k)` over the experts (the
    logits normalized first with `gate_normalization`) and its output is
    `sum_i g_k(x)_i * expert_i(x)`. With `single_gate=True` every task
    shares one gate (OMoE in the paper).

    Args:
        num_experts: int. Number of experts. Must be positive.
        expert_units: list of int. Width of each expert level; the outputs
            have `expert_units[-1]` features.
        num_tasks: int. Number of tasks (gates and outputs). Must be positive.
        expert_activation: str or callable. Activation after every expert
            level. Defaults to `"relu"`.
        expert_dropout: float. Dropout rate in `[0, 1)` after every expert
            level during training. Defaults to `0.0`.
        expert_normalization: `None`, `"batch"` or `"layer"`. With
            `"batch"`, every expert level is
            `Dense -> BatchNormalization -> activation`, with statistics,
            scale and offset per expert and unit (the stacked
            `(batch, num_experts, units)` tensor is normalized as
            `(batch, num_experts * units)`), and the expert kernels have no
            bias (the offset replaces it). This is how torch-rechub builds
            its experts. It speeds up training (UCI Adult: 16 epochs
            instead of 30+), but normalizing the towers after the mixture
            did more (`keras_mtl.models.mmoe`'s `tower_normalization`).
            The moving statistics use Keras' momentum 0.99, so with few
            steps per epoch they lag the training statistics for several
            epochs; do not follow these experts with batch-normalized
            towers then. With `"layer"`, every expert level is
            `Dense -> LayerNormalization -> activation`: each expert's units
            are normalized per example (epsilon 1e-3), with scale and
            offset per expert and unit, and the biases stay (as in
            `MLP(normalization="layer")`). It has no moving statistics, so
            it computes the same function in training and serving, whatever
            the batch size. Defaults to `None`.
        gate_normalization: `None`, `"batch"` or `"layer"`. Normalizes the
            gate logits before the softmax. With `"batch"`, every gate is
            `Dense -> BatchNormalization -> softmax`, with statistics, scale
            and offset per gate and expert, and no gate bias (the offset
            replaces it); this is torch-rechub's gate. With `"layer"`, each
            gate's logits are normalized over its experts per example
            (epsilon 1e-3), then scaled and offset per gate and expert; the
            bias stays. Either way the softmax sees logits of a learned
            scale from the first step, where plain gates start near uniform.
            The batch variant's moving statistics lag with few steps per
            epoch, as the experts' do. On UCI Adult neither variant beat
            plain gates (`docs/BENCHMARKS.md`). Defaults to `None`.
        single_gate: bool. If `True`, one gate is shared by every task
            (OMoE). Defaults to `False`.
        return_gates: bool. If `True`, the call also returns the gate
            weights. Defaults to `False`.
        kernel_initializer: str or `keras.initializers.Initializer`.
            Initializer of expert and gate kernels, applied to each expert and
            each gate separately. Biases start at zero. Defaults to
            `"glorot_uniform"`.
        kernel_regularizer: str or `keras.regularizers.Regularizer`, or
            `None`. Regularizer of expert and gate kernels. Defaults to
            `None`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: tensor of shape `(batch, d)`.
        training: bool. Whether expert dropout and batch normalization
            (of experts or gates) run in training mode.

    Returns:
        A list of `num_tasks` tensors of shape `(batch, expert_units[-1])`.
        With `return_gates=True`, a tuple `(task_outputs, gates)` where
        `gates` has shape `(batch, num_tasks, num_experts)` and sums to 1
        over the last axis (identical across tasks when `single_gate`).

    Example:

    ```python
    mmoe = keras_mtl.layers.MMoELayer(
        num_experts=4, expert_units=[32, 16], num_tasks=2
    )
    ctr_hidden, cvr_hidden = mmoe(keras.random.normal((8, 64)))  # (8, 16)
    ```

    References:
        - Ma et al., "Modeling Task Relationships in Multi-task Learning with
          Multi-gate Mixture-of-Experts", KDD 2018,
          https://dl.acm.org/doi/10.1145/3219819.3220007
    """

    def __init__(
        self,
        num_experts,
        expert_units,
        num_tasks,
        expert_activation="relu",
        expert_dropout=0.0,
        expert_normalization=None,
        gate_normalization=None,
        single_gate=False,
        return_gates=False,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not _is_positive_int(num_experts):
            raise ValueError(
                "`num_experts` must be a positive integer. "
                f"Received: num_experts={num_experts!r}"
            )
        _check_expert_units(expert_units)
        if not _is_positive_int(num_tasks):
            raise ValueError(
                "`num_tasks` must be a positive integer. "
                f"Received: num_tasks={num_tasks!r}"
            )
        if not _is_rate(expert_dropout):
            raise ValueError(
                "`expert_dropout` must be a float in [0, 1). "
                f"Received: expert_dropout={expert_dropout!r}"
            )
        _check_normalization("expert_normalization", expert_normalization)
        _check_normalization("gate_normalization", gate_normalization)
        if not isinstance(single_gate, bool):
            raise ValueError(
                "`single_gate` must be a bool. "
                f"Received: single_gate={single_gate!r}"
            )
        if not isinstance(return_gates, bool):
            raise ValueError(
                "`return_gates` must be a bool. "
                f"Received: return_gates={return_gates!r}"
            )
        self.num_experts = num_experts
        self.expert_units = list(expert_units)
        self.num_tasks = num_tasks
        self.expert_activation = _get_or_raise(
            keras.activations.get, "expert_activation", expert_activation
        )
        self.expert_dropout = float(expert_dropout)
        self.expert_normalization = expert_normalization
        self.gate_normalization = gate_normalization
        self.single_gate = single_gate
        self.return_gates = return_gates
        self.kernel_initializer = _get_or_raise(
            keras.initializers.get, "kernel_initializer", kernel_initializer
        )
        self.kernel_regularizer = _get_or_raise(
            keras.regularizers.get, "kernel_regularizer", kernel_regularizer
        )
        self.seed_generator = (
            keras.random.SeedGenerator() if self.expert_dropout > 0 else None
        )

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                "The last dimension of the inputs of `MMoELayer` must be "
                f"defined. Received: input_shape={input_shape}"
            )
        self.expert_kernels = []
        self.expert_biases = []
        self.expert_norms = []
        d_in = input_dim
        for i, units in enumerate(self.expert_units):
            self.expert_kernels.append(
                self.add_weight(
                    name=f"expert_kernel_{i}",
                    shape=(self.num_experts, d_in, units),
                    initializer=_per_expert_initializer(
                        self.kernel_initializer
                    ),
                    regularizer=self.kernel_regularizer,
                )
            )
            norm = _stack_norm(
                self,
                self.expert_normalization,
                "expert",
                i,
                (self.num_experts, units),
            )
            if norm is not None:
                self.expert_norms.append(norm)
            if self.expert_normalization != "batch":
                self.expert_biases.append(
                    self.add_weight(
                        name=f"expert_bias_{i}",
                        shape=(self.num_experts, units),
                        initializer="zeros",
                    )
                )
            d_in = units
        num_gates = 1 if self.single_gate else self.num_tasks
        self.gate_kernel = self.add_weight(
            name="gate_kernel",
            shape=(num_gates, input_dim, self.num_experts),
            initializer=_per_expert_initializer(self.kernel_initializer),
            regularizer=self.kernel_regularizer,
        )
        if self.gate_normalization != "batch":
            self.gate_bias = self.add_weight(
                name="gate_bias",
                shape=(num_gates, self.num_experts),
                initializer="zeros",
            )
        self.gate_norm = _stack_norm(
            self,
            self.gate_normalization,
            "gate",
            None,
            (num_gates, self.num_experts),
        )
        self.built = True

    def call(self, inputs, training=None):
        # Experts: (batch, num_experts, units) after every level.
        x = ops.einsum("bd,edu->beu", inputs, self.expert_kernels[0])
        for i in range(len(self.expert_units)):
            if i > 0:
                x = ops.einsum("bed,edu->beu", x, self.expert_kernels[i])
            if self.expert_biases:
                x = x + self.expert_biases[i]
            if self.expert_norms:
                x = _apply_stack_norm(self.expert_norms[i], x, training)
            x = self.expert_activation(x)
            if training and self.expert_dropout > 0:
                x = keras.random.dropout(
                    x, self.expert_dropout, seed=self.seed_generator
                )
        # Gates: (batch, num_gates, num_experts).
        gate_logits = ops.einsum("bd,gde->bge", inputs, self.gate_kernel)
        if self.gate_normalization != "batch":
            gate_logits = gate_logits + self.gate_bias
        if self.gate_norm is not None:
            gate_logits = _apply_stack_norm(
                self.gate_norm, gate_logits, training
            )
        if self.num_experts == 1:
            # Softmax over one expert is 1; `ops.softmax` would warn.
            gates = ops.exp(
                gate_logits - ops.logsumexp(gate_logits, axis=-1, keepdims=True)
            )
        else:
            gates = ops.softmax(gate_logits, axis=-1)
        if self.single_gate:
            gates = ops.repeat(gates, self.num_tasks, axis=1)
        mixed = ops.einsum("bte,beu->btu", gates, x)
        outputs = [mixed[:, t, :] for t in range(self.num_tasks)]
        if self.return_gates:
            return outputs, gates
        return outputs

    def compute_output_shape(self, input_shape):
        batch = input_shape[0]
        outputs = [(batch, self.expert_units[-1])] * self.num_tasks
        if self.return_gates:
            return outputs, (batch, self.num_tasks, self.num_experts)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_experts": self.num_experts,
                "expert_units": self.expert_units,
                "num_tasks": self.num_tasks,
                "expert_activation": keras.activations.serialize(
                    self.expert_activation
                ),
                "expert_dropout": self.expert_dropout,
                "expert_normalization": self.expert_normalization,
                "gate_normalization": self.gate_normalization,
                "single_gate": self.single_gate,
                "return_gates": self.return_gates,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "kernel_regularizer": keras.regularizers.serialize(
                    self.kernel_regularizer
                ),
            }
        )
        return config
