"""One extraction level of Progressive Layered Extraction (PLE / CGC)."""

import keras
from keras import ops

from keras_mtl.layers.mlp import _get_or_raise
from keras_mtl.layers.mlp import _is_positive_int
from keras_mtl.layers.mlp import _is_rate
from keras_mtl.layers.mmoe_layer import _apply_stack_norm
from keras_mtl.layers.mmoe_layer import _check_expert_units
from keras_mtl.layers.mmoe_layer import _check_normalization
from keras_mtl.layers.mmoe_layer import _per_expert_initializer
from keras_mtl.layers.mmoe_layer import _stack_norm


@keras.saving.register_keras_serializable(package="keras_mtl")
class PLELevel(keras.layers.Layer):
    """One extraction level of PLE: task-specific and shared experts.

    Each task owns `num_task_experts` experts and all tasks share
    `num_shared_experts` experts. Task `k`'s softmax gate, fed task `k`'s
    branch, mixes task `k`'s experts and the shared experts only, so task
    `k`'s output never depends on another task's experts. Unless `is_last`,
    a shared gate, fed the shared branch, mixes *all* experts into a new
    shared branch for the next level.

    Task `k`'s experts read task `k`'s branch and the shared experts read the
    shared branch; at the first level every branch is the same input. A
    single level with `is_last=True` is Customized Gate Control (CGC); PLE
    stacks levels, the last one with `is_last=True`.

    Experts are MLPs (`expert_units` levels of Dense + optional batch or
    layer normalization + activation + dropout) whose kernels are stacked,
    `(num_tasks, num_task_experts, d_in, units)` and
    `(num_shared_experts, d_in, units)`, and applied with `ops.einsum`.

    Args:
        num_tasks: int. Number of tasks. Must be positive.
        num_task_experts: int. Experts owned by each task. Must be positive.
        num_shared_experts: int. Experts shared by all tasks. Must be
            positive.
        expert_units: list of int. Width of each expert level; the outputs
            have `expert_units[-1]` features.
        is_last: bool. If `True`, no shared gate and no shared output.
            Defaults to `False`.
        expert_activation: str or callable. Activation after every expert
            level. Defaults to `"relu"`.
        expert_dropout: float. Dropout rate in `[0, 1)` after every expert
            level during training. Defaults to `0.0`.
        expert_normalization: `None`, `"batch"` or `"layer"`. With
            `"batch"`, every expert level is
            `Dense -> BatchNormalization -> activation`, with statistics,
            scale and offset per expert and unit, and the expert kernels
            have no bias (the offset replaces it). With `"layer"`, it is
            `Dense -> LayerNormalization -> activation`, each expert's units
            normalized per example, with scale and offset per expert and
            unit; the biases stay. See `keras_mtl.layers.MMoELayer`.
            Defaults to `None`.
        gate_normalization: `None`, `"batch"` or `"layer"`. Normalizes the
            logits of every gate (task gates and the shared gate) before the
            softmax, per gate and expert: `"batch"` with
            `BatchNormalization` (no gate biases then; torch-rechub's gate),
            `"layer"` over the gate's experts per example. See
            `keras_mtl.layers.MMoELayer`. Defaults to `None`.
        return_gates: bool. If `True`, the call also returns the task gates.
            Defaults to `False`.
        kernel_initializer: str or `keras.initializers.Initializer`.
            Initializer of expert and gate kernels, applied to each expert and
            each gate separately. Biases start at zero. Defaults to
            `"glorot_uniform"`.
        kernel_regularizer: str or `keras.regularizers.Regularizer`, or
            `None`. Regularizer of expert and gate kernels. Defaults to
            `None`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: a tensor of shape `(batch, d)` (first level), or a list of
            `num_tasks + 1` tensors of shape `(batch, d)`: the task branches
            in task order, then the shared branch (the output of the previous
            level).
        training: bool. Whether expert dropout and batch normalization
            (of experts or gates) run in training mode.

    Returns:
        A list of `num_tasks` tensors of shape `(batch, expert_units[-1])`,
        followed by the shared branch of the same shape unless `is_last`.
        With `return_gates=True`, a tuple `(outputs, gates)` where `gates`
        has shape `(batch, num_tasks, num_task_experts + num_shared_experts)`:
        task `k`'s gate weights over its own experts, then the shared experts
        (each row sums to 1). The shared gate is not returned.

    Example:

    ```python
    level_1 = keras_mtl.layers.PLELevel(
        num_tasks=2, num_task_experts=2, num_shared_experts=2,
        expert_units=[32],
    )
    level_2 = keras_mtl.layers.PLELevel(
        num_tasks=2, num_task_experts=2, num_shared_experts=2,
        expert_units=[16], is_last=True,
    )
    ctr_hidden, cvr_hidden = level_2(level_1(keras.random.normal((8, 64))))
    ```

    References:
        - Tang et al., "Progressive Layered Extraction (PLE): A Novel
          Multi-Task Learning (MTL) Model for Personalized Recommendations",
          RecSys 2020, https://dl.acm.org/doi/10.1145/3383313.3412236
    """

    def __init__(
        self,
        num_tasks,
        num_task_experts,
        num_shared_experts,
        expert_units,
        is_last=False,
        expert_activation="relu",
        expert_dropout=0.0,
        expert_normalization=None,
        gate_normalization=None,
        return_gates=False,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (
            ("num_tasks", num_tasks),
            ("num_task_experts", num_task_experts),
            ("num_shared_experts", num_shared_experts),
        ):
            if not _is_positive_int(value):
                raise ValueError(
                    f"`{name}` must be a positive integer. "
                    f"Received: {name}={value!r}"
                )
        _check_expert_units(expert_units)
        for name, value in (
            ("is_last", is_last),
            ("return_gates", return_gates),
        ):
            if not isinstance(value, bool):
                raise ValueError(
                    f"`{name}` must be a bool. Received: {name}={value!r}"
                )
        if not _is_rate(expert_dropout):
            raise ValueError(
                "`expert_dropout` must be a float in [0, 1). "
                f"Received: expert_dropout={expert_dropout!r}"
            )
        _check_normalization("expert_normalization", expert_normalization)
        _check_normalization("gate_normalization", gate_normalization)
        self.num_tasks = num_tasks
        self.num_task_experts = num_task_experts
        self.num_shared_experts = num_shared_experts
        self.expert_units = list(expert_units)
        self.is_last = is_last
        self.expert_activation = _get_or_raise(
            keras.activations.get, "expert_activation", expert_activation
        )
        self.expert_dropout = float(expert_dropout)
        self.expert_normalization = expert_normalization
        self.gate_normalization = gate_normalization
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

    def _input_dim(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and isinstance(
            input_shape[0], (list, tuple)
        ):
            if len(input_shape) != self.num_tasks + 1:
                raise ValueError(
                    "`PLELevel` expects one tensor or a list of "
                    f"num_tasks + 1 = {self.num_tasks + 1} tensors (task "
                    "branches, then the shared branch). Received "
                    f"{len(input_shape)} tensors: input_shape={input_shape}"
                )
            dims = {tuple(shape)[-1] for shape in input_shape}
        else:
            dims = {tuple(input_shape)[-1]}
        if len(dims) != 1 or None in dims:
            raise ValueError(
                "All inputs of `PLELevel` must share one defined last "
                f"dimension. Received: input_shape={input_shape}"
            )
        return dims.pop()

    def _add_kernel(self, name, shape):
        return self.add_weight(
            name=name,
            shape=shape,
            initializer=_per_expert_initializer(self.kernel_initializer),
            regularizer=self.kernel_regularizer,
        )

    def _add_bias(self, name, shape):
        return self.add_weight(name=name, shape=shape, initializer="zeros")

    def build(self, input_shape):
        input_dim = self._input_dim(input_shape)
        num_tasks, task_e = self.num_tasks, self.num_task_experts
        shared_e = self.num_shared_experts
        self.task_expert_kernels = []
        self.task_expert_biases = []
        self.task_expert_norms = []
        self.shared_expert_kernels = []
        self.shared_expert_biases = []
        self.shared_expert_norms = []
        d_in = input_dim
        for i, units in enumerate(self.expert_units):
            task_shape = (num_tasks, task_e, units)
            shared_shape = (shared_e, units)
            self.task_expert_kernels.append(
                self._add_kernel(
                    f"task_expert_kernel_{i}", (num_tasks, task_e, d_in, units)
                )
            )
            self.shared_expert_kernels.append(
                self._add_kernel(
                    f"shared_expert_kernel_{i}", (shared_e, d_in, units)
                )
            )
            for prefix, shape, norms, biases in (
                (
                    "task_expert",
                    task_shape,
                    self.task_expert_norms,
                    self.task_expert_biases,
                ),
                (
                    "shared_expert",
                    shared_shape,
                    self.shared_expert_norms,
                    self.shared_expert_biases,
                ),
            ):
                norm = _stack_norm(
                    self, self.expert_normalization, prefix, i, shape
                )
                if norm is not None:
                    norms.append(norm)
                if self.expert_normalization != "batch":
                    biases.append(self._add_bias(f"{prefix}_bias_{i}", shape))
            d_in = units
        self.task_gate_kernel = self._add_kernel(
            "task_gate_kernel", (num_tasks, input_dim, task_e + shared_e)
        )
        self.task_gate_bias, self.task_gate_norm = self._add_gate_extras(
            "task_gate", (num_tasks, task_e + shared_e)
        )
        if not self.is_last:
            self.shared_gate_kernel = self._add_kernel(
                "shared_gate_kernel", (input_dim, num_tasks * task_e + shared_e)
            )
            self.shared_gate_bias, self.shared_gate_norm = (
                self._add_gate_extras(
                    "shared_gate", (num_tasks * task_e + shared_e,)
                )
            )
        self.built = True

    def _add_gate_extras(self, prefix, shape):
        """A gate's bias (`None` with batch norm) and normalization layer."""
        bias = None
        if self.gate_normalization != "batch":
            bias = self._add_bias(f"{prefix}_bias", shape)
        norm = _stack_norm(self, self.gate_normalization, prefix, None, shape)
        return bias, norm

    def _gate(self, logits, bias, norm, training):
        """Softmax of one gate's logits, after its bias and normalization."""
        if bias is not None:
            logits = logits + bias
        if norm is not None:
            logits = _apply_stack_norm(norm, logits, training)
        return ops.softmax(logits, axis=-1)

    def _activate(self, x, biases, norms, i, training):
        if biases:
            x = x + biases[i]
        if norms:
            x = _apply_stack_norm(norms[i], x, training)
        x = self.expert_activation(x)
        if training and self.expert_dropout > 0:
            x = keras.random.dropout(
                x, self.expert_dropout, seed=self.seed_generator
            )
        return x

    def call(self, inputs, training=None):
        if isinstance(inputs, (list, tuple)):
            task_x = ops.stack(inputs[: self.num_tasks], axis=1)
            shared_x = inputs[self.num_tasks]
            task_eq = "btd,tedu->bteu"
        else:
            task_x = shared_x = inputs
            task_eq = "bd,tedu->bteu"
        task_gate_eq = task_eq.replace("edu->bteu", "de->bte")
        # Task experts: (batch, num_tasks, num_task_experts, units);
        # shared experts: (batch, num_shared_experts, units).
        task_h, shared_h = task_x, shared_x
        for i in range(len(self.expert_units)):
            eq = task_eq if i == 0 else "bted,tedu->bteu"
            task_h = self._activate(
                ops.einsum(eq, task_h, self.task_expert_kernels[i]),
                self.task_expert_biases,
                self.task_expert_norms,
                i,
                training,
            )
            eq = "bd,edu->beu" if i == 0 else "bed,edu->beu"
            shared_h = self._activate(
                ops.einsum(eq, shared_h, self.shared_expert_kernels[i]),
                self.shared_expert_biases,
                self.shared_expert_norms,
                i,
                training,
            )
        # Task gates: (batch, num_tasks, num_task_experts + shared_experts).
        gates = self._gate(
            ops.einsum(task_gate_eq, task_x, self.task_gate_kernel),
            self.task_gate_bias,
            self.task_gate_norm,
            training,
        )
        task_e = self.num_task_experts
        mixed = ops.einsum(
            "bte,bteu->btu", gates[:, :, :task_e], task_h
        ) + ops.einsum("bte,beu->btu", gates[:, :, task_e:], shared_h)
        outputs = [mixed[:, t, :] for t in range(self.num_tasks)]
        if not self.is_last:
            shared_gate = self._gate(
                ops.matmul(shared_x, self.shared_gate_kernel),
                self.shared_gate_bias,
                self.shared_gate_norm,
                training,
            )
            num_task_total = self.num_tasks * task_e
            task_part = ops.reshape(
                shared_gate[:, :num_task_total], (-1, self.num_tasks, task_e)
            )
            outputs.append(
                ops.einsum("bte,bteu->bu", task_part, task_h)
                + ops.einsum(
                    "be,beu->bu", shared_gate[:, num_task_total:], shared_h
                )
            )
        if self.return_gates:
            return outputs, gates
        return outputs

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and isinstance(
            input_shape[0], (list, tuple)
        ):
            batch = input_shape[0][0]
        else:
            batch = input_shape[0]
        num_outputs = self.num_tasks + (0 if self.is_last else 1)
        outputs = [(batch, self.expert_units[-1])] * num_outputs
        if self.return_gates:
            num_experts = self.num_task_experts + self.num_shared_experts
            return outputs, (batch, self.num_tasks, num_experts)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_tasks": self.num_tasks,
                "num_task_experts": self.num_task_experts,
                "num_shared_experts": self.num_shared_experts,
                "expert_units": self.expert_units,
                "is_last": self.is_last,
                "expert_activation": keras.activations.serialize(
                    self.expert_activation
                ),
                "expert_dropout": self.expert_dropout,
                "expert_normalization": self.expert_normalization,
                "gate_normalization": self.gate_normalization,
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
