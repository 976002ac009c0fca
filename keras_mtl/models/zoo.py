"""The core model zoo: shared bottoms, MoE, PLE, ESMM and AITM builders.

Every builder takes the feature specs and the tasks and returns a
`keras.Model` whose inputs are one named raw input per feature and whose
outputs are a dict keyed by task name (binary: sigmoid probability,
regression: linear value, multiclass: softmax), so TF Serving clients see
task names. `compile_model` then sets each task's masked loss, weight and
metrics.
"""

import contextlib
import functools
import inspect
import random

import keras

from keras_mtl import features as features_lib
from keras_mtl import losses as losses_lib
from keras_mtl import metrics as metrics_lib
from keras_mtl.layers import MLP
from keras_mtl.layers import AITMCalibrator
from keras_mtl.layers import AITMTransfer
from keras_mtl.layers import ESMMHead
from keras_mtl.layers import InputBlock
from keras_mtl.layers import KLBoundPenalty
from keras_mtl.layers import MMoELayer
from keras_mtl.layers import PLELevel
from keras_mtl.layers.input_block import check_interaction_args
from keras_mtl.layers.mlp import _clone_initializer
from keras_mtl.layers.mlp import _get_or_raise
from keras_mtl.task import Task
from keras_mtl.task import validate_tasks


def _check_units(name, units, allow_empty=False):
    units = list(units) if isinstance(units, (list, tuple)) else units
    if (
        not isinstance(units, list)
        or (not units and not allow_empty)
        or not all(
            isinstance(u, int) and not isinstance(u, bool) and u > 0
            for u in units
        )
    ):
        raise ValueError(
            f"`{name}` must be a {'possibly empty ' if allow_empty else ''}"
            f"list of positive integers. Received: {name}={units!r}"
        )
    return units


def _check_normalization(name, value, allowed):
    if value not in allowed:
        raise ValueError(
            f"`{name}` must be one of {', '.join(map(repr, allowed))}. "
            f"Received: {name}={value!r}"
        )
    return value


def _check_initializer(name, value):
    """Refuses an initializer Keras cannot interpret, naming `name`.

    Keras draws a default seed from Python's `random` when it makes an
    unseeded initializer, so the state is restored: checking must not change
    the weights a seeded run builds.
    """
    state = random.getstate()
    try:
        _get_or_raise(keras.initializers.get, name, value)
    finally:
        random.setstate(state)
    return value


def _dense_args(kernel_initializer="glorot_uniform", kernel_regularizer=None):
    """A builder's `kernel_initializer` and `kernel_regularizer`, checked.

    Returns them as keyword arguments for every Dense-like layer the builder
    makes (`MLP`, `MMoELayer`, `PLELevel`, `AITMTransfer`, `task_head`...).
    Raises `ValueError` naming the argument Keras cannot interpret.
    """
    _check_initializer("kernel_initializer", kernel_initializer)
    _get_or_raise(
        keras.regularizers.get, "kernel_regularizer", kernel_regularizer
    )
    return {
        "kernel_initializer": kernel_initializer,
        "kernel_regularizer": kernel_regularizer,
    }


def _output_dense(units, activation, name, dense):
    """A float32 output Dense with the builder's `_dense_args`."""
    dense = dense or {}
    return keras.layers.Dense(
        units,
        activation=activation,
        # One initializer instance draws the same values on every call.
        kernel_initializer=_clone_initializer(
            dense.get("kernel_initializer", "glorot_uniform")
        ),
        kernel_regularizer=dense.get("kernel_regularizer"),
        dtype="float32",
        name=name,
    )


def _check_common(features, tasks, tower_units, dropout):
    features = features_lib.validate_features(features)
    tasks = validate_tasks(tasks)
    tower_units = _check_units("tower_units", tower_units, allow_empty=True)
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(
            f"`dropout` must be in [0, 1). Received: dropout={dropout!r}"
        )
    return features, tasks, tower_units


# Stack of `(inputs, x)` pairs pushed by `precomputed_input`.
_PRECOMPUTED = []


@contextlib.contextmanager
def precomputed_input(inputs, x):
    """Makes the builders called inside use a given input vector.

    Inside the block, every builder skips its own `InputBlock` and uses
    `inputs` (a dict of `keras.Input`s, the model's inputs) and `x` (the
    `(batch, d)` vector computed from them) instead; the sharing block and
    towers are built as usual. `keras_mtl.models.split_model` uses it to put
    a zoo architecture on top of item embeddings plus a user vector.

    Args:
        inputs: dict of `keras.Input`s, the inputs of the model to build.
        x: KerasTensor. The input vector the sharing block takes.

    Example:

    >>> with keras_mtl.models.zoo.precomputed_input(inputs, x):
    ...     scorer = keras_mtl.models.mmoe(item_specs, tasks)
    """
    _PRECOMPUTED.append((inputs, x))
    try:
        yield
    finally:
        _PRECOMPUTED.pop()


# The builders' arguments that configure their `InputBlock`.
_INPUT_BLOCK_ARGS = (
    "embeddings_initializer",
    "embeddings_regularizer",
    "interaction",
    "interaction_features",
    "cross_layers",
    "cross_projection_dim",
)
_INTERACTION_ARGS = _INPUT_BLOCK_ARGS[2:]


def _input_block_args(builder_args):
    """The `InputBlock` arguments among a builder's arguments (`locals()`)."""
    return {k: builder_args[k] for k in _INPUT_BLOCK_ARGS}


def _inputs_and_embedding(features, builder_args):
    """The model inputs and the `(batch, d)` input vector of a builder.

    `builder_args`: the calling builder's arguments (its `locals()`); those
    named in `_INPUT_BLOCK_ARGS` configure the `InputBlock`.
    """
    args = _input_block_args(builder_args)
    if _PRECOMPUTED:
        given = {k: args[k] for k in _INTERACTION_ARGS}
        if any(v is not None for v in given.values()):
            received = ", ".join(f"{k}={v!r}" for k, v in given.items())
            raise ValueError(
                "`interaction` is an option of the builder's own "
                "`InputBlock`; inside `precomputed_input` the builder takes "
                "the given input vector instead, so it would be ignored. "
                f"Received: {received}"
            )
        return _PRECOMPUTED[-1]
    block = InputBlock(features, name="input_block", **args)
    inputs = block.make_inputs()
    return inputs, block(inputs)


def task_head(task, name=None, dense=None):
    """The output layer of a task: its activation, always float32.

    `dense`: the builder's `_dense_args` (Keras' defaults without).
    """
    activation = {
        "binary": "sigmoid",
        "regression": None,
        "multiclass": "softmax",
    }[task.kind]
    return _output_dense(task.output_dim, activation, name or task.name, dense)


def tower(
    task,
    units,
    activation,
    dropout,
    prefix="tower",
    normalization=None,
    dense=None,
):
    """A task tower (`MLP`), or None when `units` is empty.

    `dense`: the builder's `_dense_args` (Keras' defaults without).
    """
    if not units:
        return None
    return MLP(
        units,
        activation=activation,
        dropout=dropout,
        normalization=normalization,
        name=f"{prefix}_{task.name}",
        **(dense or {}),
    )


def _towers_and_heads(
    task_inputs,
    tasks,
    tower_units,
    activation,
    dropout,
    dense,
    normalization=None,
):
    outputs = {}
    for task, h in zip(tasks, task_inputs):
        layer = tower(
            task,
            tower_units,
            activation,
            dropout,
            normalization=normalization,
            dense=dense,
        )
        if layer is not None:
            h = layer(h)
        outputs[task.name] = task_head(task, dense=dense)(h)
    return outputs


def _check_kl_bounds(kl_bounds, tasks):
    """`[(chain_task_names, joint_task_name, weight), ...]`, validated."""
    by_name = {t.name: t for t in tasks}
    checked = []
    for bound in kl_bounds or ():
        if not (isinstance(bound, (list, tuple)) and len(bound) == 3):
            raise ValueError(
                "Each `kl_bounds` entry must be (chain_task_names, "
                f"joint_task_name, weight). Received: {bound!r}"
            )
        chain, joint, weight = bound
        chain = [chain] if isinstance(chain, str) else list(chain)
        for name in [*chain, joint]:
            if name not in by_name or by_name[name].kind != "binary":
                raise ValueError(
                    f"`kl_bounds` names '{name}', which is not a binary "
                    f"task. Binary tasks: "
                    f"{[t.name for t in tasks if t.kind == 'binary']}"
                )
        if joint in chain or not chain:
            raise ValueError(
                "`kl_bounds` needs a non-empty chain that excludes the joint "
                f"task. Received: chain={chain}, joint={joint!r}"
            )
        checked.append((chain, joint, weight))
    return checked


def _attach_kl_bounds(outputs, kl_bounds):
    """Adds each KL bound between a product chain and a joint output.

    The joint output is routed through `KLBoundPenalty`, which returns it
    unchanged and adds the weighted symmetric KL as a training loss.
    """
    for chain, joint, weight in kl_bounds:
        product = outputs[chain[0]]
        for name in chain[1:]:
            product = keras.layers.Multiply(
                dtype="float32", name=f"chain_{joint}_{name}"
            )([product, outputs[name]])
        outputs[joint] = KLBoundPenalty(
            weight=weight, name=f"kl_bound_{joint}"
        )([product, outputs[joint]])
    return outputs


def shared_bottom(
    features,
    tasks,
    bottom_units=(128, 64),
    tower_units=(32,),
    activation="relu",
    dropout=0.0,
    kernel_initializer="glorot_uniform",
    kernel_regularizer=None,
    embeddings_initializer="uniform",
    embeddings_regularizer=None,
    interaction=None,
    interaction_features=None,
    cross_layers=None,
    cross_projection_dim=None,
    kl_bounds=None,
    name="shared_bottom",
):
    """Shared-bottom multi-task model: one shared MLP, then a tower per task.

    Args:
        features: list of feature specs.
        tasks: list of `keras_mtl.Task`.
        bottom_units: list of int. Shared hidden layers. Defaults to
            `(128, 64)`.
        tower_units: list of int. Hidden layers of each task tower (may be
            empty). Defaults to `(32,)`.
        activation: str. Hidden activation. Defaults to `"relu"`.
        dropout: float. Dropout after each hidden layer. Defaults to
            `0.0`.{embeddings}
        kl_bounds: list of `(chain_task_names, joint_task_name, weight)`.
            Each adds `weight * KLBound(prod(chain), joint)` as a training
            loss (see `keras_mtl.layers.KLBoundPenalty`). Defaults to none.
        name: str. Model name.

    Returns:
        A functional `keras.Model` with a dict of outputs keyed by task.

    Example:

    >>> model = keras_mtl.models.shared_bottom(specs, tasks)
    >>> keras_mtl.models.compile_model(model, tasks)

    References:
        Caruana, "Multitask Learning", Machine Learning 28, 1997.
        https://doi.org/10.1023/A:1007379606734
    """
    # Layers.
    features, tasks, tower_units = _check_common(
        features, tasks, tower_units, dropout
    )
    dense = _dense_args(kernel_initializer, kernel_regularizer)
    bottom_units = _check_units("bottom_units", bottom_units)
    kl_bounds = _check_kl_bounds(kl_bounds, tasks)
    bottom = MLP(
        bottom_units,
        activation=activation,
        dropout=dropout,
        name="bottom",
        **dense,
    )
    # Functional graph.
    inputs, x = _inputs_and_embedding(features, locals())
    shared = bottom(x)
    outputs = _towers_and_heads(
        [shared] * len(tasks), tasks, tower_units, activation, dropout, dense
    )
    outputs = _attach_kl_bounds(outputs, kl_bounds)
    # Config: the model is plain functional; its config is the graph.
    return keras.Model(inputs, outputs, name=name)


# The Dense and input-block arguments every builder documents
# (`shared_bottom` and `_COMMON_ARGS`).
_EMBEDDINGS_ARGS = """
        kernel_initializer: str or `keras.initializers.Initializer`.
            Initializer of every Dense kernel after the input block (bottom,
            experts, gates, towers, attention and transfer layers, output
            layers, an LSTM's input kernel), cloned per layer and per
            expert and gate slice, so the fans are those of one Dense and an
            unseeded initializer draws fresh values for each. Biases start
            at zero; an LSTM's recurrent kernel and cross-stitch units keep
            their own initializers. Defaults to `"glorot_uniform"` (Keras'
            `Dense` default). PyTorch's `nn.Linear` kernels (torch-rechub's)
            are `keras.initializers.VarianceScaling(1 / 3, "fan_in",
            "uniform")`.
        kernel_regularizer: optional regularizer of those kernels, e.g.
            `keras.regularizers.L2(1e-5)` (DeepCTR's `l2_reg_dnn`). Its
            penalty is added to the training loss. Defaults to `None`.
        embeddings_initializer: str or `keras.initializers.Initializer`.
            Initializer of the embedding tables. Defaults to `"uniform"`
            (Keras' `Embedding` default, uniform in [-0.05, 0.05]); DeepCTR
            and torch-rechub start their tables at
            `keras.initializers.RandomNormal(0.0, 1e-4)`.
        embeddings_regularizer: optional regularizer of the embedding tables.
        interaction: `None`, `"dot"` or `"cross"`. `"dot"`: also feed the
            model the dot product of every pair of embedded features (DLRM's
            dot interaction); a multilayer perceptron on concatenated
            embeddings represents a user-item dot product poorly.
            `"cross"`: feed it a DCN-v2 cross network of the input vector
            instead (same width). See `keras_mtl.layers.InputBlock`.
            Defaults to `None`.
        interaction_features: list of the categorical or sequence features
            that interact (same `embed_dim`), with `interaction="dot"`.
            Defaults to `None`: all of them.
        cross_layers: int. Cross layers, with `interaction="cross"`.
            Defaults to `None`: 2.
        cross_projection_dim: int. Rank of each cross layer's weight, with
            `interaction="cross"`. Defaults to `None`: full rank."""

_COMMON_ARGS = (
    """
        features: list of feature specs.
        tasks: list of `keras_mtl.Task`.
        tower_units: list of int. Hidden layers of each task tower (may be
            empty). Defaults to `(32,)`.
        activation: str. Hidden activation. Defaults to `"relu"`.
        dropout: float. Dropout in towers (and experts). Defaults to `0.0`."""
    + _EMBEDDINGS_ARGS
    + """
        kl_bounds: list of `(chain_task_names, joint_task_name, weight)`, as
            in `shared_bottom`."""
)


# Normalization inside the task towers of the mixture-of-experts builders.
TOWER_NORMALIZATIONS = ("layer", "batch", None)

_TOWER_NORMALIZATION_ARG = """
        tower_normalization: `"layer"`, `"batch"` or `None`. Normalization
            between each tower Dense and its activation (`MLP`'s
            `normalization`; no effect without towers). A softmax gate
            mixes the experts into a vector of smaller scale than one
            expert's output (softly gated experts average out), which slows
            the towers' training; normalizing restores the scale. With
            `None`, MMoE and PLE trail a shared-bottom model on UCI Adult
            (binary tasks) and are still improving at 30 epochs; with
            `"layer"` they match or beat it and stop early
            (`docs/BENCHMARKS.md`). Layer norm removes each example's
            scale across the tower's units, which costs regression
            towers: on `synthetic_correlated` (two regression tasks)
            MMoE's held-out MSE rose from 0.30 to 0.82 with it
            (notebook 03's setting, correlation 1.0). `"layer"` has no
            moving statistics, so training and serving compute the same
            function at any batch size. Defaults to `None`."""


def shared_embedding_towers(
    features,
    tasks,
    tower_units=(128, 64),
    activation="relu",
    dropout=0.0,
    kernel_initializer="glorot_uniform",
    kernel_regularizer=None,
    embeddings_initializer="uniform",
    embeddings_regularizer=None,
    interaction=None,
    interaction_features=None,
    cross_layers=None,
    cross_projection_dim=None,
    kl_bounds=None,
    name="shared_embedding_towers",
):
    """Shared embeddings, no shared hidden layer: one full tower per task.

    Args:{common}
        name: str. Model name.

    Returns:
        A functional `keras.Model` with a dict of outputs keyed by task.

    Example:

    >>> model = keras_mtl.models.shared_embedding_towers(specs, tasks)
    """
    # Layers.
    features, tasks, tower_units = _check_common(
        features, tasks, tower_units, dropout
    )
    dense = _dense_args(kernel_initializer, kernel_regularizer)
    kl_bounds = _check_kl_bounds(kl_bounds, tasks)
    # Functional graph.
    inputs, x = _inputs_and_embedding(features, locals())
    outputs = _towers_and_heads(
        [x] * len(tasks), tasks, tower_units, activation, dropout, dense
    )
    outputs = _attach_kl_bounds(outputs, kl_bounds)
    return keras.Model(inputs, outputs, name=name)


def mmoe(
    features,
    tasks,
    num_experts=8,
    expert_units=(64,),
    tower_units=(32,),
    activation="relu",
    dropout=0.0,
    single_gate=False,
    expert_normalization=None,
    gate_normalization=None,
    tower_normalization=None,
    kernel_initializer="glorot_uniform",
    kernel_regularizer=None,
    embeddings_initializer="uniform",
    embeddings_regularizer=None,
    interaction=None,
    interaction_features=None,
    cross_layers=None,
    cross_projection_dim=None,
    kl_bounds=None,
    name="mmoe",
):
    """Multi-gate Mixture-of-Experts model (`MMoELayer` + task towers).

    Args:
        num_experts: int. Number of shared experts. Defaults to `8`.
        expert_units: list of int. Hidden layers of each expert. Defaults to
            `(64,)`.{common}
        single_gate: bool. One gate for every task (OMoE). Defaults to
            `False`.
        expert_normalization: `None`, `"batch"` or `"layer"`: batch or
            layer normalization inside every expert level (see
            `MMoELayer`). Defaults to `None`.
        gate_normalization: `None`, `"batch"` or `"layer"`: batch or layer
            normalization of the gate logits before the softmax (see
            `MMoELayer`). Defaults to `None`.{tower_normalization}
        name: str. Model name.

    Returns:
        A functional `keras.Model` with a dict of outputs keyed by task. Its
        `MMoELayer` is named `"mmoe"`.

    Example:

    >>> model = keras_mtl.models.mmoe(specs, tasks, num_experts=4)

    References:
        Ma et al., "Modeling Task Relationships in Multi-task Learning with
        Multi-gate Mixture-of-Experts", KDD 2018.
        https://dl.acm.org/doi/10.1145/3219819.3220007
    """
    # Layers.
    features, tasks, tower_units = _check_common(
        features, tasks, tower_units, dropout
    )
    dense = _dense_args(kernel_initializer, kernel_regularizer)
    kl_bounds = _check_kl_bounds(kl_bounds, tasks)
    _check_normalization(
        "tower_normalization", tower_normalization, TOWER_NORMALIZATIONS
    )
    experts = MMoELayer(
        num_experts=num_experts,
        expert_units=list(expert_units),
        num_tasks=len(tasks),
        expert_activation=activation,
        expert_dropout=dropout,
        expert_normalization=expert_normalization,
        gate_normalization=gate_normalization,
        single_gate=single_gate,
        name="mmoe",
        **dense,
    )
    # Functional graph.
    inputs, x = _inputs_and_embedding(features, locals())
    outputs = _towers_and_heads(
        experts(x),
        tasks,
        tower_units,
        activation,
        dropout,
        dense,
        normalization=tower_normalization,
    )
    outputs = _attach_kl_bounds(outputs, kl_bounds)
    return keras.Model(inputs, outputs, name=name)


def omoe(features, tasks, name="omoe", **kwargs):
    """One-gate Mixture-of-Experts: `mmoe` with a single shared gate.

    Takes the arguments of `mmoe` except `single_gate`.

    Example:

    >>> model = keras_mtl.models.omoe(specs, tasks, num_experts=4)

    References:
        Ma et al., KDD 2018 (the OMoE baseline).
        https://dl.acm.org/doi/10.1145/3219819.3220007
    """
    if "single_gate" in kwargs:
        raise ValueError(
            "`omoe` always uses one gate; use `mmoe` to choose. "
            f"Received: single_gate={kwargs['single_gate']!r}"
        )
    return mmoe(features, tasks, single_gate=True, name=name, **kwargs)


def ple(
    features,
    tasks,
    num_levels=2,
    num_task_experts=2,
    num_shared_experts=1,
    expert_units=(64,),
    tower_units=(32,),
    activation="relu",
    dropout=0.0,
    expert_normalization=None,
    gate_normalization=None,
    tower_normalization=None,
    kernel_initializer="glorot_uniform",
    kernel_regularizer=None,
    embeddings_initializer="uniform",
    embeddings_regularizer=None,
    interaction=None,
    interaction_features=None,
    cross_layers=None,
    cross_projection_dim=None,
    kl_bounds=None,
    name="ple",
):
    """Progressive Layered Extraction: `num_levels` stacked `PLELevel`s.

    Args:
        num_levels: int. Extraction levels; the last one drops the shared
            branch. Defaults to `2`.
        num_task_experts: int. Experts owned by each task, per level.
            Defaults to `2`.
        num_shared_experts: int. Shared experts per level. Defaults to `1`.
        expert_units: list of int. Hidden layers of each expert. Defaults to
            `(64,)`.{common}
        expert_normalization: `None`, `"batch"` or `"layer"`: batch or
            layer normalization inside every expert level (see
            `PLELevel`). Defaults to `None`.
        gate_normalization: `None`, `"batch"` or `"layer"`: batch or layer
            normalization of every gate's logits before the softmax (see
            `PLELevel`). Defaults to `None`.{tower_normalization}
        name: str. Model name.

    Returns:
        A functional `keras.Model` with a dict of outputs keyed by task. Its
        levels are named `"ple_level_0"`, `"ple_level_1"`, ...

    Example:

    >>> model = keras_mtl.models.ple(specs, tasks, num_levels=2)

    References:
        Tang et al., "Progressive Layered Extraction (PLE): A Novel
        Multi-Task Learning (MTL) Model for Personalized Recommendations",
        RecSys 2020. https://dl.acm.org/doi/10.1145/3383313.3412236
    """
    # Layers.
    features, tasks, tower_units = _check_common(
        features, tasks, tower_units, dropout
    )
    dense = _dense_args(kernel_initializer, kernel_regularizer)
    kl_bounds = _check_kl_bounds(kl_bounds, tasks)
    if (
        isinstance(num_levels, bool)
        or not isinstance(num_levels, int)
        or (num_levels < 1)
    ):
        raise ValueError(
            "`num_levels` must be a positive integer. "
            f"Received: num_levels={num_levels!r}"
        )
    _check_normalization(
        "tower_normalization", tower_normalization, TOWER_NORMALIZATIONS
    )
    levels = [
        PLELevel(
            num_tasks=len(tasks),
            num_task_experts=num_task_experts,
            num_shared_experts=num_shared_experts,
            expert_units=list(expert_units),
            is_last=level == num_levels - 1,
            expert_activation=activation,
            expert_dropout=dropout,
            expert_normalization=expert_normalization,
            gate_normalization=gate_normalization,
            name=f"ple_level_{level}",
            **dense,
        )
        for level in range(num_levels)
    ]
    # Functional graph.
    inputs, x = _inputs_and_embedding(features, locals())
    branches = x
    for level in levels:
        branches = level(branches)
    outputs = _towers_and_heads(
        branches,
        tasks,
        tower_units,
        activation,
        dropout,
        dense,
        normalization=tower_normalization,
    )
    outputs = _attach_kl_bounds(outputs, kl_bounds)
    return keras.Model(inputs, outputs, name=name)


def cgc(features, tasks, name="cgc", **kwargs):
    """Customized Gate Control: a single-level `ple` (no shared branch out).

    Takes the arguments of `ple` except `num_levels`.

    Example:

    >>> model = keras_mtl.models.cgc(specs, tasks, num_task_experts=2)

    References:
        Tang et al., RecSys 2020 (section 4.2, CGC).
        https://dl.acm.org/doi/10.1145/3383313.3412236
    """
    if "num_levels" in kwargs:
        raise ValueError(
            "`cgc` is one level; use `ple` for more. "
            f"Received: num_levels={kwargs['num_levels']!r}"
        )
    return ple(features, tasks, num_levels=1, name=name, **kwargs)


ESMM_OUTPUTS = ("ctr", "cvr", "ctcvr")


def esmm_tasks(
    click_label="click", conversion_label="conversion", cvr_weight=0.0
):
    """The tasks of `esmm`: `ctr`, `cvr` and `ctcvr`.

    `ctr` learns the click label and `ctcvr` the click-and-convert label
    (the conversion column, 0 wherever there was no click), both on every
    impression. `cvr` is monitored on clicked rows (`space="ctr"`) with loss
    weight `cvr_weight`, 0 by default: it gets no gradient of its own, only
    through `ctcvr`, as ESMM prescribes; its metrics are the usual
    clicked-space CVR metrics.

    A nonzero `cvr_weight` trains `cvr` on the clicked rows as well. Alone
    (`compile_model`) that is a clicked-row CVR loss; with
    `keras_mtl.training.compile(model, tasks, propensity={"cvr": "ctr"})`
    each clicked row is weighted by the inverse of the model's pCTR, which
    makes it ESCM²'s counterfactual (IPS) CVR loss over the entire space.

    Args:
        click_label: str. Column of the click label. Defaults to `"click"`.
        conversion_label: str. Column of the conversion label, 0 without a
            click. Defaults to `"conversion"`.
        cvr_weight: float >= 0. Loss weight of `cvr`. Defaults to `0.0`.

    Returns:
        A list of three `keras_mtl.Task`.

    Example:

    >>> tasks = keras_mtl.models.esmm_tasks(cvr_weight=0.1)
    >>> model = keras_mtl.models.esmm(specs, tasks)
    >>> wrapper = keras_mtl.training.compile(
    ...     model, tasks, propensity={"cvr": "ctr"})  # ESCM²-IPS

    References:
        Wang et al., "ESCM²: Entire Space Counterfactual Multi-Task Model
        for Post-Click Conversion Rate Estimation", SIGIR 2022.
        https://arxiv.org/abs/2204.05125
    """
    return [
        Task("ctr", label=click_label),
        Task("cvr", label=conversion_label, space="ctr", weight=cvr_weight),
        Task("ctcvr", label=conversion_label),
    ]


def esmm(
    features,
    tasks=None,
    tower_units=(128, 64),
    activation="relu",
    dropout=0.0,
    kernel_initializer="glorot_uniform",
    kernel_regularizer=None,
    embeddings_initializer="uniform",
    embeddings_regularizer=None,
    interaction=None,
    interaction_features=None,
    cross_layers=None,
    cross_projection_dim=None,
    name="esmm",
):
    """Entire Space Multi-task Model: pCTCVR = pCTR * pCVR over impressions.

    Two towers over shared embeddings give a CTR and a CVR logit;
    `ESMMHead` turns them into `ctr`, `cvr` and `ctcvr = ctr * cvr`. With
    `esmm_tasks()` only `ctr` and `ctcvr` carry loss (both on every
    impression), so CVR is learned over the entire space, through `ctcvr`
    only, and does not inherit the clicked-sample selection bias.
    `esmm_tasks(cvr_weight=...)` adds a clicked-row CVR loss; trained with
    `keras_mtl.training.compile(..., propensity={"cvr": "ctr"})` it is
    ESCM²'s inverse-propensity-weighted CVR loss (see `esmm_tasks`).

    Args:
        features: list of feature specs.
        tasks: the tasks `ctr`, `cvr`, `ctcvr`. Defaults to `esmm_tasks()`
            (labels `click` and `conversion`); see there.
        tower_units: list of int. Hidden layers of the CTR and CVR towers.
            Defaults to `(128, 64)`.
        activation, dropout, kernel_initializer, kernel_regularizer,
            embeddings_initializer, embeddings_regularizer, interaction,
            interaction_features, cross_layers, cross_projection_dim: as in
            `shared_bottom`.
        name: str. Model name.

    Returns:
        A functional `keras.Model` with outputs `ctr`, `cvr`, `ctcvr`.

    Example:

    >>> tasks = keras_mtl.models.esmm_tasks()
    >>> model = keras_mtl.models.esmm(specs, tasks)
    >>> keras_mtl.models.compile_model(model, tasks)

    References:
        Ma et al., "Entire Space Multi-Task Model: An Effective Approach for
        Estimating Post-Click Conversion Rate", SIGIR 2018.
        https://arxiv.org/abs/1804.07931
    """
    # Layers.
    tasks = esmm_tasks() if tasks is None else tasks
    features, tasks, tower_units = _check_common(
        features, tasks, tower_units, dropout
    )
    dense = _dense_args(kernel_initializer, kernel_regularizer)
    names = sorted(t.name for t in tasks)
    if names != sorted(ESMM_OUTPUTS) or any(t.kind != "binary" for t in tasks):
        raise ValueError(
            "`esmm` takes three binary tasks named 'ctr', 'cvr' and 'ctcvr' "
            f"(see `esmm_tasks`). Received: {names}"
        )
    if any(t.space for t in tasks if t.name != "cvr"):
        raise ValueError(
            "ESMM's 'ctr' and 'ctcvr' live on the entire impression space; "
            "remove their `space` (the conversion label is 0 without a "
            "click)."
        )
    ctr_tower = (
        MLP(
            tower_units,
            activation=activation,
            dropout=dropout,
            name="tower_ctr",
            **dense,
        )
        if tower_units
        else None
    )
    cvr_tower = (
        MLP(
            tower_units,
            activation=activation,
            dropout=dropout,
            name="tower_cvr",
            **dense,
        )
        if tower_units
        else None
    )
    ctr_logit = _output_dense(1, None, "ctr_logit", dense)
    cvr_logit = _output_dense(1, None, "cvr_logit", dense)
    head = ESMMHead(dtype="float32", name="esmm_head")
    # Functional graph.
    inputs, x = _inputs_and_embedding(features, locals())
    h_ctr = ctr_tower(x) if ctr_tower else x
    h_cvr = cvr_tower(x) if cvr_tower else x
    p_ctr, p_cvr, p_ctcvr = head([ctr_logit(h_ctr), cvr_logit(h_cvr)])
    outputs = {
        "ctr": keras.layers.Identity(dtype="float32", name="ctr")(p_ctr),
        "cvr": keras.layers.Identity(dtype="float32", name="cvr")(p_cvr),
        "ctcvr": keras.layers.Identity(dtype="float32", name="ctcvr")(p_ctcvr),
    }
    return keras.Model(inputs, outputs, name=name)


def aitm(
    features,
    tasks,
    tower_units=(128, 64),
    activation="relu",
    dropout=0.0,
    calibrator_weight=0.6,
    kernel_initializer="glorot_uniform",
    kernel_regularizer=None,
    embeddings_initializer="uniform",
    embeddings_regularizer=None,
    interaction=None,
    interaction_features=None,
    cross_layers=None,
    cross_projection_dim=None,
    name="aitm",
):
    """Adaptive Information Transfer Multi-task model over a conversion path.

    `tasks` are the steps of one path in order (impression -> click ->
    purchase ...), each a binary task over the entire impression space. Each
    step has its own tower; from the second step on, `AITMTransfer` fuses
    the previous step's representation into the current one, and
    `AITMCalibrator` adds `calibrator_weight * mean(max(p_t - p_{t-1}, 0))`
    so a later step is never predicted likelier than an earlier one.

    Args:
        features: list of feature specs.
        tasks: list of binary `keras_mtl.Task`, in path order, without
            `space` (every step is modelled on every impression).
        tower_units: list of int. Hidden layers of each tower; the last width
            is the transfer width. Defaults to `(128, 64)`.
        activation, dropout, kernel_initializer, kernel_regularizer,
            embeddings_initializer, embeddings_regularizer, interaction,
            interaction_features, cross_layers, cross_projection_dim: as in
            `shared_bottom`.
        calibrator_weight: float. Weight of the calibrator loss. Defaults to
            `0.6` (the paper's value).
        name: str. Model name.

    Returns:
        A functional `keras.Model` with a dict of outputs keyed by task.

    Example:

    >>> tasks = [keras_mtl.Task("click"), keras_mtl.Task("conversion")]
    >>> model = keras_mtl.models.aitm(specs, tasks)

    References:
        Xi et al., "Modeling the Sequential Dependence among Audience
        Multi-step Conversions with Multi-task Learning in Targeted Display
        Advertising", KDD 2021. https://arxiv.org/abs/2105.08489
    """
    # Layers.
    features, tasks, tower_units = _check_common(
        features, tasks, tower_units, dropout
    )
    dense = _dense_args(kernel_initializer, kernel_regularizer)
    if not tower_units:
        raise ValueError(
            "`aitm` needs towers; `tower_units` sets the transfer width. "
            "Received: tower_units=[]"
        )
    if len(tasks) < 2 or any(t.kind != "binary" for t in tasks):
        raise ValueError(
            "`aitm` models a path of at least two binary tasks. Received: "
            f"{[(t.name, t.kind) for t in tasks]}"
        )
    spaced = [t.name for t in tasks if t.space]
    if spaced:
        raise ValueError(
            f"AITM models every step on the entire impression space; remove "
            f"`space` from task(s) {spaced} (labels are 0 where the path "
            "stopped earlier)."
        )
    towers = [
        tower(t, tower_units, activation, dropout, dense=dense) for t in tasks
    ]
    transfers = [
        AITMTransfer(tower_units[-1], name=f"transfer_{t.name}", **dense)
        for t in tasks[1:]
    ]
    heads = [task_head(t, name=f"head_{t.name}", dense=dense) for t in tasks]
    calibrators = [
        AITMCalibrator(weight=calibrator_weight, dtype="float32", name=t.name)
        for t in tasks[1:]
    ]
    # Functional graph.
    inputs, x = _inputs_and_embedding(features, locals())
    outputs = {}
    z_prev = towers[0](x)
    p_prev = heads[0](z_prev)
    outputs[tasks[0].name] = keras.layers.Identity(
        dtype="float32", name=tasks[0].name
    )(p_prev)
    for k in range(1, len(tasks)):
        z = transfers[k - 1]([z_prev, towers[k](x)])
        p = heads[k](z)
        p = calibrators[k - 1]([p_prev, p])
        outputs[tasks[k].name] = p
        z_prev, p_prev = z, p
    return keras.Model(inputs, outputs, name=name)


def compile_model(
    model,
    tasks,
    optimizer="adam",
    learning_rate=1e-3,
    loss=None,
    loss_weights=None,
    metrics=None,
    **kwargs,
):
    """Compiles a multi-task model with per-task defaults.

    Each task gets the loss of its kind, reduced with
    `"mean_with_sample_weight"` so that the per-output sample weights from
    `keras_mtl.data` restrict it to the task's sample space; the task's
    `weight` as its loss weight; and its metrics (AUC, logloss, PCOC; RMSE,
    MAE; accuracy) as weighted metrics, so they respect the space too.
    Anything passed here wins over the defaults, task by task.

    On TensorFlow (outside a distribution strategy, where Keras does it
    itself) the loss trackers, metric and optimizer variables are created
    here rather than inside the first trace of the train step, so `fit`
    traces that step once instead of twice. As with `keras.Model.compile`,
    compile again after changing which layers are trainable. Also on
    TensorFlow, after the first call of the train and the test function
    (their trace and XLA compile) the heap's free memory is returned to the
    OS once (glibc `malloc_trim`; nothing elsewhere), so the compiler's
    transient memory does not stay in the process for the whole run.

    Args:
        model: a model with one output per task name.
        tasks: list of `keras_mtl.Task`.
        optimizer: str or optimizer. Defaults to `"adam"`.
        learning_rate: float. Used when `optimizer` is a string. Defaults to
            `1e-3`.
        loss: dict of losses by task name overriding the defaults.
        loss_weights: dict of loss weights by task name overriding
            `task.weight`.
        metrics: dict of weighted metrics by task name overriding the
            defaults.
        **kwargs: passed to `model.compile` (`jit_compile`,
            `steps_per_execution`, ...).

    Returns:
        The compiled model.
    """
    tasks = validate_tasks(tasks)
    names = [t.name for t in tasks]
    outputs = getattr(model, "output_names", None) or names
    missing = [n for n in names if n not in outputs]
    if missing:
        raise ValueError(
            f"The model has no output for task(s) {missing}. "
            f"Model outputs: {list(outputs)}"
        )
    for arg, value in (
        ("loss", loss),
        ("loss_weights", loss_weights),
        ("metrics", metrics),
    ):
        if value is not None:
            unknown = sorted(set(value) - set(names))
            if unknown:
                raise ValueError(
                    f"`{arg}` names unknown task(s) {unknown}. Tasks: {names}"
                )
    losses = {t.name: losses_lib.task_loss(t) for t in tasks}
    losses.update(loss or {})
    weights = {t.name: t.weight for t in tasks}
    weights.update(loss_weights or {})
    weighted = {t.name: metrics_lib.task_metrics(t) for t in tasks}
    weighted.update(metrics or {})
    if isinstance(optimizer, str):
        optimizer = keras.optimizers.get(
            {
                "class_name": optimizer,
                "config": {"learning_rate": learning_rate},
            }
        )
    kwargs.setdefault("weighted_metrics", weighted)
    from keras_mtl.models import encoded as encoded_lib

    # An encoded twin (the fast path) is compiled with XLA unless told
    # otherwise; Keras alone would refuse it for the unused lookup layers.
    jit = kwargs.get("jit_compile", "auto")
    twin = encoded_lib.is_encoded(model) and jit in (True, "auto")
    if twin:
        kwargs["jit_compile"] = False
    model.compile(
        optimizer=optimizer,
        loss=losses,
        loss_weights=weights,
        **kwargs,
    )
    if twin:
        encoded_lib.force_jit(model)
    _build_training_state(model, tasks)
    _trim_heap_after_compiling(model)
    return model


@functools.cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None where the C library has none (macOS,
    musl)."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


def _trim_heap():
    """Returns the heap's free memory to the OS; False where it cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def _trim_heap_after_compiling(model):
    """Trims the heap once after the first call of each step function.

    The first call of a train or test function traces it and (with XLA)
    compiles it; the compiler's memory is freed then, but glibc keeps it
    mapped, so the process stays ~100 MiB above what training needs for
    the rest of the run. One `malloc_trim` after that first call gives it
    back; later calls go straight to Keras' function. Keras' `compile`
    drops its step functions, so a new one is trimmed after once again.
    """
    if keras.backend.backend() != "tensorflow":
        return
    for kind in ("train", "test"):
        make = getattr(model, f"make_{kind}_function")
        if not getattr(make, "_keras_mtl_trims", False):
            setattr(
                model, f"make_{kind}_function", _trimming(model, kind, make)
            )


def _trimming(model, kind, make):
    """`make` (Keras' `make_{kind}_function`), with the first call of the
    function it makes followed by `_trim_heap()`."""
    attr = f"{kind}_function"

    def make_function(force=False):
        make(force=force)
        function = getattr(model, attr)
        if function is None or getattr(function, "_keras_mtl_trims", False):
            return function

        def first_call(*args, **kwargs):
            result = function(*args, **kwargs)
            function._keras_mtl_trims = True
            setattr(model, attr, function)
            _trim_heap()
            return result

        first_call._keras_mtl_trims = True
        setattr(model, attr, first_call)
        return first_call

    make_function._keras_mtl_trims = True
    return make_function


def _output_spec(model):
    """The model's output structure of KerasTensors, or None if unknown."""
    for candidate in (model, getattr(model, "model", None)):
        try:
            output = candidate.output
        except (AttributeError, ValueError):
            continue
        if isinstance(output, dict):
            return output
    return None


def _build_training_state(model, tasks):
    """Creates the loss trackers, metric and optimizer variables now.

    Without a distribution strategy, Keras on TensorFlow creates them while
    it traces the first training step; variables created inside a
    `tf.function`'s first trace make TensorFlow trace the whole step a second
    time (about as long again, before XLA compiles it). Building them here,
    on one row of zeros as Keras' own symbolic build does under a strategy,
    leaves one trace. The metric state is reset afterwards.
    """
    if keras.backend.backend() != "tensorflow" or model.optimizer is None:
        return
    import tensorflow as tf

    spec = _output_spec(model)
    if tf.distribute.has_strategy() or spec is None:
        # Keras builds this state itself under a strategy.
        return
    if any(None in tuple(t.shape[1:]) for t in spec.values()):
        # No row of zeros to build with; Keras builds it in the first trace.
        return
    y_pred = {
        name: keras.ops.zeros((1,) + tuple(t.shape[1:]), dtype=t.dtype)
        for name, t in spec.items()
    }
    y = {t.name: keras.ops.zeros_like(y_pred[t.name]) for t in tasks}
    weights = {t.name: keras.ops.ones((1,)) for t in tasks}
    model.compute_loss(
        y=y, y_pred=y_pred, sample_weight=weights, training=False
    )
    model.compute_metrics(None, y, y_pred, sample_weight=weights)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.reset_metrics()


shared_bottom.__doc__ = shared_bottom.__doc__.replace(
    "{embeddings}", _EMBEDDINGS_ARGS
)
for _builder in (shared_embedding_towers, mmoe, ple):
    _builder.__doc__ = _builder.__doc__.replace(
        "{common}", _COMMON_ARGS
    ).replace("{tower_normalization}", _TOWER_NORMALIZATION_ARG)

BUILDERS = {
    "shared_bottom": shared_bottom,
    "shared_embedding_towers": shared_embedding_towers,
    "mmoe": mmoe,
    "omoe": omoe,
    "cgc": cgc,
    "ple": ple,
    "esmm": esmm,
    "aitm": aitm,
}


def tasks_for(architecture, tasks):
    """Adapts click/conversion tasks to what `architecture` trains.

    `esmm` and `aitm` model a conversion path over the entire impression
    space. Given the usual ranking tasks (a click task, and a conversion
    task with `space="click"`), this returns `esmm_tasks(...)` for `esmm`
    and the path without spaces for `aitm`; other architectures get the
    tasks unchanged.
    """
    tasks = validate_tasks(tasks)
    if architecture not in ("esmm", "aitm"):
        return tasks
    if architecture == "esmm" and sorted(t.name for t in tasks) == sorted(
        ESMM_OUTPUTS
    ):
        return tasks
    binary = [t for t in tasks if t.kind == "binary"]
    roots = [t for t in binary if t.space is None]
    path = roots[:1]
    while path:
        nxt = [t for t in binary if t.space == path[-1].name]
        if not nxt:
            break
        path.append(nxt[0])
    if len(path) < 2:
        raise ValueError(
            f"`{architecture}` needs a path of binary tasks (e.g. click, then "
            "conversion with space='click'). Received: "
            f"{[(t.name, t.kind, t.space) for t in tasks]}"
        )
    if architecture == "esmm":
        return esmm_tasks(path[0].label, path[1].label)
    return [Task(t.name, label=t.label, weight=t.weight) for t in path]


def check_builder_args(architecture, kwargs):
    """Refuses an unknown architecture or builder argument, naming it, and
    a bad interaction argument (`interaction`, `interaction_features`,
    `cross_layers`, `cross_projection_dim`), `expert_normalization`,
    `gate_normalization` or `tower_normalization` value, and an initializer
    or regularizer Keras cannot interpret (the checks that need no feature
    specs)."""
    if architecture not in BUILDERS:
        raise ValueError(
            f"Unknown `architecture`. Received: architecture={architecture!r}"
            f"; known: {sorted(BUILDERS)}"
        )
    accepted = set(inspect.signature(BUILDERS[architecture]).parameters)
    if architecture in ("omoe", "cgc"):
        # They forward **kwargs to mmoe / ple.
        base = mmoe if architecture == "omoe" else ple
        accepted |= set(inspect.signature(base).parameters)
    accepted -= {"features", "tasks", "kwargs"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(
            f"Builder '{architecture}' has no argument(s) {unknown}. "
            f"It takes: {sorted(accepted)}"
        )
    check_interaction_args(
        kwargs.get("interaction"),
        kwargs.get("interaction_features"),
        kwargs.get("cross_layers"),
        kwargs.get("cross_projection_dim"),
    )
    for name in (
        "expert_normalization",
        "gate_normalization",
        "tower_normalization",
    ):
        _check_normalization(name, kwargs.get(name), TOWER_NORMALIZATIONS)
    _dense_args(
        kwargs.get("kernel_initializer", "glorot_uniform"),
        kwargs.get("kernel_regularizer"),
    )
    if "embeddings_initializer" in kwargs:
        _check_initializer(
            "embeddings_initializer", kwargs["embeddings_initializer"]
        )


def build(architecture, features, tasks, **kwargs):
    """Builds a zoo model by name (see `BUILDERS`)."""
    check_builder_args(architecture, kwargs)
    builder = BUILDERS[architecture]
    return builder(features, tasks, **kwargs)
