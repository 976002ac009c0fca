"""Tests of keras_mtl.layers.PLELevel (CGC and stacked PLE)."""

import keras
import numpy as np
import pytest
from expert_weights import NORMALIZATIONS
from expert_weights import randomize
from expert_weights import set_nontrivial_norm_weights

from keras_mtl.layers import PLELevel

pytestmark = pytest.mark.backend

NUM_TASKS = 3


@pytest.fixture
def mixed_bfloat16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    yield
    keras.config.set_dtype_policy(previous)


def _x(batch=4, dim=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, dim)).astype("float32")


def _branches(batch=4, dim=5):
    """Distinct inputs for the task branches, then the shared branch."""
    return [_x(batch, dim, seed=s) for s in range(NUM_TASKS + 1)]


def _np(x):
    return keras.ops.convert_to_numpy(x)


# The three places a level can stand: first (one input), middle (task and
# shared branches in, shared branch out) and last (no shared branch out).
LEVELS = pytest.mark.parametrize(
    "is_last, list_inputs",
    [(False, False), (False, True), (True, True)],
    ids=["first_level", "middle_level", "last_level"],
)


def _level(**kwargs):
    arguments = {
        "num_tasks": NUM_TASKS,
        "num_task_experts": 2,
        "num_shared_experts": 2,
        "expert_units": [6, 4],
    }
    arguments.update(kwargs)
    return PLELevel(**arguments)


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _mlp(x, kernels, biases, layer_norms=None):
    """A relu expert; `biases=None`: freshly built batch norm (training).

    `layer_norms`: a `(gamma, beta)` pair per level for layer
    normalization (epsilon 1e-3) after the bias.
    """
    for i, kernel in enumerate(kernels):
        x = x @ kernel
        if biases is None:
            x = (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + 1e-3)
        else:
            x = x + biases[i]
        if layer_norms is not None:
            gamma, beta = layer_norms[i]
            mean = x.mean(axis=-1, keepdims=True)
            var = x.var(axis=-1, keepdims=True)
            x = (x - mean) / np.sqrt(var + 1e-3) * gamma + beta
        x = np.maximum(x, 0.0)
    return x


def _expert_layer_norms(layer, norms, index):
    """One expert's `(gamma, beta)` per level, or `None` without them."""
    if layer.expert_normalization != "layer":
        return None
    return [(_np(n.gamma)[index], _np(n.beta)[index]) for n in norms]


def _gate(layer, logits, bias, norm, index):
    """A gate's softmax in NumPy after its bias and `gate_normalization`
    (batch statistics, i.e. training mode, for `"batch"`); `index` picks
    the gate's bias, scale and offset out of their stacks."""
    if layer.gate_normalization == "batch":
        logits = (logits - logits.mean(axis=0)) / np.sqrt(
            logits.var(axis=0) + 1e-3
        )
    else:
        logits = logits + _np(bias)[index]
    if layer.gate_normalization == "layer":
        mean = logits.mean(axis=-1, keepdims=True)
        var = logits.var(axis=-1, keepdims=True)
        logits = (logits - mean) / np.sqrt(var + 1e-3) * _np(norm.gamma)[
            index
        ] + _np(norm.beta)[index]
    return _softmax(logits)


def _reference(layer, inputs):
    """Loop-per-expert NumPy PLE level with the layer's weights.

    With `expert_normalization="batch"`, every expert level is normalized
    on its own with the batch statistics (training mode); with `"layer"`,
    every expert's units are layer-normalized per example with that
    expert's scale and offset. `gate_normalization` does the same to each
    gate's logits (see `_gate`).
    """
    if not isinstance(inputs, list):
        inputs = [inputs] * (layer.num_tasks + 1)
    batch_norm = layer.expert_normalization == "batch"
    task_kernels = [_np(k) for k in layer.task_expert_kernels]
    task_biases = [_np(b) for b in layer.task_expert_biases]
    shared = [
        _mlp(
            inputs[-1],
            [_np(k)[e] for k in layer.shared_expert_kernels],
            None
            if batch_norm
            else [_np(b)[e] for b in layer.shared_expert_biases],
            _expert_layer_norms(layer, layer.shared_expert_norms, e),
        )
        for e in range(layer.num_shared_experts)
    ]
    task_experts, outputs = [], []
    for t in range(layer.num_tasks):
        experts = [
            _mlp(
                inputs[t],
                [k[t, e] for k in task_kernels],
                None if batch_norm else [b[t, e] for b in task_biases],
                _expert_layer_norms(layer, layer.task_expert_norms, (t, e)),
            )
            for e in range(layer.num_task_experts)
        ]
        task_experts += experts
        gate = _gate(
            layer,
            inputs[t] @ _np(layer.task_gate_kernel)[t],
            layer.task_gate_bias,
            layer.task_gate_norm,
            t,
        )
        stacked = np.stack(experts + shared, axis=1)
        outputs.append(np.einsum("be,beu->bu", gate, stacked))
    if not layer.is_last:
        gate = _gate(
            layer,
            inputs[-1] @ _np(layer.shared_gate_kernel),
            layer.shared_gate_bias,
            layer.shared_gate_norm,
            Ellipsis,
        )
        stacked = np.stack(task_experts + shared, axis=1)
        outputs.append(np.einsum("be,beu->bu", gate, stacked))
    return outputs


def test_config_round_trip():
    layer = _level(
        is_last=True,
        expert_activation="gelu",
        expert_dropout=0.1,
        expert_normalization="batch",
        gate_normalization="batch",
        return_gates=True,
        kernel_initializer="he_normal",
        kernel_regularizer="l1",
        name="ple",
    )
    config = layer.get_config()
    assert PLELevel.from_config(config).get_config() == config
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert isinstance(revived, PLELevel)
    assert revived.get_config() == config


@LEVELS
def test_symbolic_and_eager_call(is_last, list_inputs):
    layer = _level(is_last=is_last)
    num_outputs = NUM_TASKS if is_last else NUM_TASKS + 1
    if list_inputs:
        symbolic_inputs = [keras.Input((5,)) for _ in range(NUM_TASKS + 1)]
        eager_inputs = _branches()
        input_shape = [(None, 5)] * (NUM_TASKS + 1)
    else:
        symbolic_inputs, eager_inputs = keras.Input((5,)), _x()
        input_shape = (None, 5)
    symbolic = layer(symbolic_inputs)
    assert [tuple(t.shape) for t in symbolic] == [(None, 4)] * num_outputs
    eager = layer(eager_inputs)
    assert [_np(t).shape for t in eager] == [(4, 4)] * num_outputs
    assert layer.compute_output_shape(input_shape) == (
        [(None, 4)] * num_outputs
    )


@LEVELS
def test_matches_per_expert_reference(is_last, list_inputs):
    layer = _level(is_last=is_last)
    inputs = _branches() if list_inputs else _x()
    outputs = layer(inputs)
    expected = _reference(layer, inputs)
    assert len(outputs) == len(expected)
    for out, exp in zip(outputs, expected):
        np.testing.assert_allclose(_np(out), exp, rtol=1e-5, atol=1e-6)


def _assert_matches_reference(layer, inputs, outputs):
    """The (non-zero) outputs equal the NumPy reference's."""
    expected = _reference(layer, inputs)
    assert len(outputs) == len(expected)
    for out, exp in zip(outputs, expected):
        assert np.any(exp != 0.0)
        np.testing.assert_allclose(_np(out), exp, rtol=1e-4, atol=1e-5)


@LEVELS
def test_batch_norm_matches_per_expert_reference(is_last, list_inputs):
    layer = _level(is_last=is_last, expert_normalization="batch")
    inputs = _branches(batch=16) if list_inputs else _x(batch=16)
    _assert_matches_reference(layer, inputs, layer(inputs, training=True))


@LEVELS
def test_layer_norm_matches_per_expert_reference(is_last, list_inputs):
    layer = _level(is_last=is_last, expert_normalization="layer")
    inputs = _branches(batch=8) if list_inputs else _x(batch=8)
    layer(inputs)
    norms = layer.task_expert_norms + layer.shared_expert_norms
    randomize(
        layer.task_expert_biases
        + layer.shared_expert_biases
        + [n.gamma for n in norms]
        + [n.beta for n in norms]
    )
    for training in (True, False):
        _assert_matches_reference(
            layer, inputs, layer(inputs, training=training)
        )


@LEVELS
@pytest.mark.parametrize("gate_normalization", ["batch", "layer"])
def test_gate_normalization_matches_reference(
    is_last, list_inputs, gate_normalization
):
    layer = _level(is_last=is_last, gate_normalization=gate_normalization)
    inputs = _branches(batch=16) if list_inputs else _x(batch=16)
    layer(inputs)
    if gate_normalization == "layer":
        gates = ["task_gate"] + ([] if is_last else ["shared_gate"])
        randomize(
            [getattr(layer, f"{g}_bias") for g in gates]
            + [w for g in gates for w in getattr(layer, f"{g}_norm").weights]
        )
    _assert_matches_reference(layer, inputs, layer(inputs, training=True))


@pytest.mark.parametrize("gate_normalization", ["batch", "layer"])
def test_gate_normalization_weights(gate_normalization):
    layer = _level(gate_normalization=gate_normalization)
    layer(_x())
    names = {w.path.split("/", 1)[1] for w in layer.trainable_weights}
    gate_names = sorted(n for n in names if "gate" in n)
    kind = f"{gate_normalization}_norm"
    expected = [
        f"shared_gate_{kind}/beta",
        f"shared_gate_{kind}/gamma",
        "shared_gate_kernel",
        f"task_gate_{kind}/beta",
        f"task_gate_{kind}/gamma",
        "task_gate_kernel",
    ]
    all_experts = NUM_TASKS * 2 + 2
    if gate_normalization == "batch":
        # The offset replaces the gate biases; statistics per gate, expert.
        assert gate_names == expected
        assert layer.task_gate_bias is None
        assert tuple(layer.task_gate_norm.moving_mean.shape) == (NUM_TASKS * 4,)
        assert tuple(layer.shared_gate_norm.gamma.shape) == (all_experts,)
    else:
        assert gate_names == sorted(
            expected + ["shared_gate_bias", "task_gate_bias"]
        )
        assert tuple(layer.task_gate_norm.gamma.shape) == (NUM_TASKS, 4)
        assert tuple(layer.shared_gate_norm.beta.shape) == (all_experts,)
        assert layer.non_trainable_weights == []


def test_layer_norm_keeps_biases_and_scales_per_expert():
    layer = _level(is_last=True, expert_normalization="layer")
    layer(_x())
    assert len(layer.task_expert_biases) == len(layer.shared_expert_biases) == 2
    assert tuple(layer.task_expert_norms[0].gamma.shape) == (NUM_TASKS, 2, 6)
    assert tuple(layer.shared_expert_norms[1].beta.shape) == (2, 4)
    assert [n.name for n in layer.shared_expert_norms] == [
        "shared_expert_layer_norm_0",
        "shared_expert_layer_norm_1",
    ]
    assert layer.non_trainable_weights == []


def test_batch_norm_replaces_expert_biases_and_infers_with_moving_stats():
    layer = _level(is_last=True, expert_normalization="batch")
    x = _x(batch=16)
    layer(x)
    assert layer.task_expert_biases == layer.shared_expert_biases == []
    # Statistics, scale and offset per expert and unit.
    assert tuple(layer.task_expert_norms[0].gamma.shape) == (NUM_TASKS * 2 * 6,)
    assert tuple(layer.shared_expert_norms[1].gamma.shape) == (2 * 4,)
    # Fresh moving statistics (mean 0, variance 1): inference divides by
    # sqrt(1 + epsilon), so the biasless level is that much smaller than a
    # plain one with the same kernels (relu is positively homogeneous).
    plain = _level(is_last=True)
    plain(x)
    for name in ("task_expert_kernels", "shared_expert_kernels"):
        for mine, theirs in zip(getattr(layer, name), getattr(plain, name)):
            theirs.assign(mine)
    for name in ("task_gate_kernel", "task_gate_bias"):
        getattr(plain, name).assign(getattr(layer, name))
    scale = (1.0 + 1e-3) ** -(len(layer.expert_units) / 2)
    for out, ref in zip(layer(x, training=False), plain(x)):
        np.testing.assert_allclose(
            _np(out), scale * _np(ref), rtol=1e-5, atol=1e-6
        )


def test_exact_values_with_ones():
    layer = _level(expert_units=[3], kernel_initializer="ones")
    x = np.array([[1.0, 2.0, 0.0, 0.0, 1.0], [-1.0, 0.0, 0.0, 0.0, -3.0]])
    outputs = layer(x.astype("float32"))
    # Every expert gives relu(sum(x)) per unit and the gates are uniform.
    assert len(outputs) == NUM_TASKS + 1
    for out in outputs:
        np.testing.assert_allclose(_np(out), [[4.0] * 3, [0.0] * 3])


def test_task_output_ignores_other_tasks_experts():
    layer = _level()
    inputs = _branches()
    before = [_np(t) for t in layer(inputs)]
    # Perturb task 0's experts at every expert level.
    for kernel in layer.task_expert_kernels:
        value = _np(kernel)
        value[0] = np.random.default_rng(1).normal(size=value[0].shape)
        kernel.assign(value)
    after = [_np(t) for t in layer(inputs)]
    assert not np.allclose(after[0], before[0])
    for t in range(1, NUM_TASKS):
        np.testing.assert_array_equal(after[t], before[t])
    # The shared gate mixes every expert, task 0's included.
    assert not np.allclose(after[-1], before[-1])


def test_task_output_ignores_other_tasks_branches():
    layer = _level()
    inputs = _branches()
    before = [_np(t) for t in layer(inputs)]
    inputs[1] = inputs[1] + 1.0
    after = [_np(t) for t in layer(inputs)]
    assert not np.allclose(after[1], before[1])
    for t in (0, 2):
        np.testing.assert_array_equal(after[t], before[t])


def test_cgc_returns_one_output_per_task_and_no_shared_gate():
    layer = _level(is_last=True)
    outputs = layer(_x())
    assert len(outputs) == NUM_TASKS
    assert not hasattr(layer, "shared_gate_kernel")


def test_return_gates():
    layer = _level(num_task_experts=1, num_shared_experts=2, return_gates=True)
    outputs, gates = layer(_branches())
    gates = _np(gates)
    assert len(outputs) == NUM_TASKS + 1
    assert gates.shape == (4, NUM_TASKS, 3)
    np.testing.assert_allclose(gates.sum(-1), np.ones((4, NUM_TASKS)), 1e-6)
    _, symbolic_gates = layer([keras.Input((5,))] * (NUM_TASKS + 1))
    assert tuple(symbolic_gates.shape) == (None, NUM_TASKS, 3)


def _two_level_model(first_level):
    """`first_level` then a last level, one Dense head per task, compiled;
    returns the model and its output names."""
    inputs = keras.Input((5,))
    towers = _level(expert_units=[4], is_last=True)(first_level(inputs))
    names = [f"task_{t}" for t in range(NUM_TASKS)]
    model = keras.Model(
        inputs,
        {n: keras.layers.Dense(1, name=n)(h) for n, h in zip(names, towers)},
    )
    model.compile(
        optimizer="sgd", loss={n: "mse" for n in names}, jit_compile=False
    )
    return model, names


def test_two_level_ple_one_step_fit():
    model, names = _two_level_model(
        _level(expert_units=[8], expert_dropout=0.1)
    )
    before = [_np(w) for w in model.trainable_weights]
    history = model.fit(
        _x(8), {n: np.ones((8, 1)) for n in names}, batch_size=8, verbose=0
    )
    assert np.isfinite(history.history["loss"][0])
    after = [_np(w) for w in model.trainable_weights]
    assert all(not np.allclose(b, a) for b, a in zip(before, after))


def test_batch_norm_moving_statistics_update_in_fit():
    level = _level(expert_units=[8], expert_normalization="batch")
    model, names = _two_level_model(level)
    norms = level.task_expert_norms + level.shared_expert_norms
    assert all(np.all(_np(n.moving_mean) == 0.0) for n in norms)
    model.fit(
        _x(8), {n: np.ones((8, 1)) for n in names}, batch_size=8, verbose=0
    )
    for norm in norms:
        assert np.all(np.isfinite(_np(norm.moving_mean)))
        assert np.any(_np(norm.moving_mean) != 0.0)


@NORMALIZATIONS
def test_mixed_bfloat16(
    mixed_bfloat16, expert_normalization, gate_normalization
):
    layer = _level(
        return_gates=True,
        expert_normalization=expert_normalization,
        gate_normalization=gate_normalization,
    )
    outputs, gates = layer(_branches(), training=True)
    for tensor in [*outputs, gates]:
        assert keras.backend.standardize_dtype(tensor.dtype) == "bfloat16"
    assert all(
        keras.backend.standardize_dtype(w.dtype) == "float32"
        for w in layer.weights
    )


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_tasks": 0}, "num_tasks"),
        ({"num_task_experts": -1}, "num_task_experts"),
        ({"num_shared_experts": 0}, "num_shared_experts"),
        ({"expert_units": [0]}, "expert_units"),
        ({"is_last": "no"}, "is_last"),
        ({"return_gates": None}, "return_gates"),
        ({"expert_dropout": 2.0}, "expert_dropout"),
        ({"expert_activation": "nope"}, "expert_activation"),
        ({"expert_normalization": "group"}, "expert_normalization"),
        ({"gate_normalization": "group"}, "gate_normalization"),
    ],
    ids=[
        "zero_tasks",
        "negative_task_experts",
        "zero_shared_experts",
        "zero_expert_unit",
        "str_is_last",
        "none_return_gates",
        "dropout_two",
        "unknown_activation",
        "group_normalization",
        "group_gate_normalization",
    ],
)
def test_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`.*Received: {name}="):
        _level(**kwargs)


def test_wrong_number_of_branches():
    with pytest.raises(ValueError, match="num_tasks \\+ 1 = 4 tensors"):
        _level()(_branches()[:3])


@NORMALIZATIONS
def test_keras_save_and_load(
    tmp_path, expert_normalization, gate_normalization
):
    inputs = keras.Input((5,))
    kwargs = {
        "expert_normalization": expert_normalization,
        "gate_normalization": gate_normalization,
    }
    branches = _level(expert_units=[4], name="level_1", **kwargs)(inputs)
    towers = _level(expert_units=[3], is_last=True, name="level_2", **kwargs)(
        branches
    )
    model = keras.Model(inputs, towers)
    set_nontrivial_norm_weights(
        model.get_layer("level_2").shared_expert_norms, expert_normalization
    )
    level_1 = model.get_layer("level_1")
    set_nontrivial_norm_weights(
        [level_1.task_gate_norm, level_1.shared_gate_norm], gate_normalization
    )
    path = tmp_path / "ple.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("level_2"), PLELevel)
    for actual, expected in zip(
        loaded.predict(_x(), verbose=0), model.predict(_x(), verbose=0)
    ):
        np.testing.assert_allclose(actual, expected)
