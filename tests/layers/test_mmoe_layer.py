"""Tests of keras_mtl.layers.MMoELayer (MMoE and OMoE)."""

import keras
import numpy as np
import pytest
from expert_weights import NORMALIZATIONS
from expert_weights import randomize
from expert_weights import set_nontrivial_norm_weights

from keras_mtl.layers import MLP
from keras_mtl.layers import MMoELayer

pytestmark = pytest.mark.backend


@pytest.fixture
def mixed_bfloat16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    yield
    keras.config.set_dtype_policy(previous)


def _x(batch=4, dim=5):
    return np.random.default_rng(0).normal(size=(batch, dim)).astype("float32")


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _batch_norm(h, training):
    """Fresh `BatchNormalization` (gamma 1, beta 0, epsilon 1e-3) in NumPy."""
    if training:
        return (h - h.mean(axis=0)) / np.sqrt(h.var(axis=0) + 1e-3)
    return h / np.sqrt(1.0 + 1e-3)  # moving mean 0, moving variance 1


def _layer_norm(h, gamma, beta):
    """Layer normalization of every row (epsilon 1e-3) in NumPy."""
    mean = h.mean(axis=-1, keepdims=True)
    var = h.var(axis=-1, keepdims=True)
    return (h - mean) / np.sqrt(var + 1e-3) * gamma + beta


def _reference(layer, x, training=False):
    """Loop-per-expert NumPy MMoE with the layer's weights (relu experts).

    With `expert_normalization="batch"`, every expert level is normalized
    on its own, as a freshly built batch normalization would; with
    `"layer"`, every expert's units are layer-normalized per example with
    that expert's scale and offset. `gate_normalization` does the same to
    each gate's logits (per gate and expert; over the experts of a gate).
    """
    experts = []
    for e in range(layer.num_experts):
        h = x
        for i, kernel in enumerate(layer.expert_kernels):
            h = h @ _np(kernel)[e]
            if layer.expert_normalization == "batch":
                h = _batch_norm(h, training)
            else:
                h = h + _np(layer.expert_biases[i])[e]
            if layer.expert_normalization == "layer":
                norm = layer.expert_norms[i]
                h = _layer_norm(h, _np(norm.gamma)[e], _np(norm.beta)[e])
            h = np.maximum(h, 0.0)
        experts.append(h)
    experts = np.stack(experts, axis=1)  # (batch, experts, units)
    outputs, gates = [], []
    for t in range(layer.num_tasks):
        g = 0 if layer.single_gate else t
        logits = x @ _np(layer.gate_kernel)[g]
        if layer.gate_normalization == "batch":
            logits = _batch_norm(logits, training)
        else:
            logits = logits + _np(layer.gate_bias)[g]
        if layer.gate_normalization == "layer":
            norm = layer.gate_norm
            logits = _layer_norm(logits, _np(norm.gamma)[g], _np(norm.beta)[g])
        gate = _softmax(logits)
        gates.append(gate)
        outputs.append(np.einsum("be,beu->bu", gate, experts))
    return outputs, np.stack(gates, axis=1)


def test_config_round_trip():
    layer = MMoELayer(
        num_experts=3,
        expert_units=[8, 4],
        num_tasks=2,
        expert_activation="tanh",
        expert_dropout=0.2,
        expert_normalization="batch",
        gate_normalization="layer",
        single_gate=True,
        return_gates=True,
        kernel_initializer="he_uniform",
        kernel_regularizer="l2",
        name="mmoe",
    )
    config = layer.get_config()
    assert MMoELayer.from_config(config).get_config() == config
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert isinstance(revived, MMoELayer)
    assert revived.get_config() == config


@pytest.mark.parametrize(
    "return_gates", [False, True], ids=["outputs", "with_gates"]
)
def test_symbolic_and_eager_call(return_gates):
    layer = MMoELayer(3, [8, 4], 2, return_gates=return_gates)
    symbolic = layer(keras.Input((5,)))
    eager = layer(_x())
    if return_gates:
        symbolic, symbolic_gates = symbolic
        eager, eager_gates = eager
        assert tuple(symbolic_gates.shape) == (None, 2, 3)
        assert _np(eager_gates).shape == (4, 2, 3)
    assert [tuple(t.shape) for t in symbolic] == [(None, 4)] * 2
    assert [_np(t).shape for t in eager] == [(4, 4)] * 2
    expected_shape = [(None, 4)] * 2
    if return_gates:
        expected_shape = (expected_shape, (None, 2, 3))
    assert layer.compute_output_shape((None, 5)) == expected_shape


def test_matches_per_expert_reference():
    layer = MMoELayer(3, [6, 4], 2, return_gates=True)
    x = _x()
    outputs, gates = layer(x)
    expected_outputs, expected_gates = _reference(layer, x)
    np.testing.assert_allclose(_np(gates), expected_gates, rtol=1e-5)
    for out, expected in zip(outputs, expected_outputs):
        np.testing.assert_allclose(_np(out), expected, rtol=1e-5, atol=1e-6)


def _assert_matches_reference(layer, x, outputs, gates, training=False):
    """Gates and (non-zero) outputs equal the NumPy reference's."""
    expected_outputs, expected_gates = _reference(layer, x, training)
    np.testing.assert_allclose(_np(gates), expected_gates, rtol=1e-5)
    for out, expected in zip(outputs, expected_outputs):
        assert np.any(expected != 0.0)
        np.testing.assert_allclose(_np(out), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
def test_batch_norm_matches_per_expert_reference(training):
    layer = MMoELayer(
        3, [6, 4], 2, expert_normalization="batch", return_gates=True
    )
    x = _x(batch=16)
    outputs, gates = layer(x, training=training)
    _assert_matches_reference(layer, x, outputs, gates, training)


def test_batch_norm_replaces_expert_biases():
    layer = MMoELayer(3, [6, 4], 2, expert_normalization="batch")
    layer.build((None, 5))
    assert layer.expert_biases == []
    names = sorted(w.path.split("/", 1)[1] for w in layer.trainable_weights)
    assert names == [
        "expert_batch_norm_0/beta",
        "expert_batch_norm_0/gamma",
        "expert_batch_norm_1/beta",
        "expert_batch_norm_1/gamma",
        "expert_kernel_0",
        "expert_kernel_1",
        "gate_bias",
        "gate_kernel",
    ]
    # Scale and offset per expert and unit.
    assert tuple(layer.expert_norms[1].gamma.shape) == (3 * 4,)


@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
def test_one_expert_with_batch_norm_equals_batch_norm_mlp(training):
    mmoe = MMoELayer(1, [6, 4], 2, expert_normalization="batch")
    bottom = MLP([6, 4], normalization="batch")
    x = _x(batch=8)
    mmoe(x)
    bottom(x)
    for i, dense in enumerate(bottom.dense_layers):
        dense.kernel.assign(mmoe.expert_kernels[i][0])
    expected = _np(bottom(x, training=training))
    assert np.any(expected != 0.0)
    for out in mmoe(x, training=training):
        np.testing.assert_allclose(_np(out), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
def test_layer_norm_matches_per_expert_reference(training):
    layer = MMoELayer(
        3, [6, 4], 2, expert_normalization="layer", return_gates=True
    )
    x = _x(batch=8)
    layer(x)
    randomize(
        layer.expert_biases
        + [n.gamma for n in layer.expert_norms]
        + [n.beta for n in layer.expert_norms]
    )
    outputs, gates = layer(x, training=training)
    _assert_matches_reference(layer, x, outputs, gates)


def test_layer_norm_keeps_biases_and_scales_per_expert():
    layer = MMoELayer(3, [6, 4], 2, expert_normalization="layer")
    layer.build((None, 5))
    names = sorted(w.path.split("/", 1)[1] for w in layer.trainable_weights)
    assert names == [
        "expert_bias_0",
        "expert_bias_1",
        "expert_kernel_0",
        "expert_kernel_1",
        "expert_layer_norm_0/beta",
        "expert_layer_norm_0/gamma",
        "expert_layer_norm_1/beta",
        "expert_layer_norm_1/gamma",
        "gate_bias",
        "gate_kernel",
    ]
    # Scale and offset per expert and unit; no moving statistics.
    assert tuple(layer.expert_norms[1].gamma.shape) == (3, 4)
    assert layer.non_trainable_weights == []


def test_layer_norm_normalizes_each_expert_and_example():
    """Before the relu, every expert's units have mean 0 and variance 1."""
    layer = MMoELayer(3, [6], 1, expert_normalization="layer")
    x = _x(batch=8) * 50.0
    layer(x)
    pre = keras.ops.einsum("bd,edu->beu", x, layer.expert_kernels[0])
    normed = _np(layer.expert_norms[0](pre + layer.expert_biases[0]))
    np.testing.assert_allclose(normed.mean(axis=-1), 0.0, atol=1e-5)
    # Variance v / (v + 1e-3) with v in the thousands: 1 to 1e-6.
    np.testing.assert_allclose(normed.var(axis=-1), 1.0, rtol=1e-5)


def test_one_expert_with_layer_norm_equals_layer_norm_mlp():
    mmoe = MMoELayer(1, [6, 4], 2, expert_normalization="layer")
    bottom = MLP([6, 4], normalization="layer")
    x = _x(batch=8)
    mmoe(x)
    bottom(x)
    randomize(mmoe.expert_biases)
    for i, dense in enumerate(bottom.dense_layers):
        dense.kernel.assign(mmoe.expert_kernels[i][0])
        dense.bias.assign(mmoe.expert_biases[i][0])
    expected = _np(bottom(x))
    assert np.any(expected != 0.0)
    for out in mmoe(x):
        np.testing.assert_allclose(_np(out), expected, rtol=1e-5, atol=1e-6)


GATE_NORMALIZATIONS = pytest.mark.parametrize(
    "gate_normalization, single_gate",
    [("batch", False), ("layer", False), ("batch", True), ("layer", True)],
    ids=[
        "batch_norm",
        "layer_norm",
        "one_gate_batch_norm",
        "one_gate_layer_norm",
    ],
)


@GATE_NORMALIZATIONS
@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
def test_gate_normalization_matches_reference(
    gate_normalization, single_gate, training
):
    layer = MMoELayer(
        4,
        [6],
        3,
        gate_normalization=gate_normalization,
        single_gate=single_gate,
        return_gates=True,
    )
    x = _x(batch=16)
    layer(x)
    if gate_normalization == "layer":
        randomize(
            [layer.gate_bias, layer.gate_norm.gamma, layer.gate_norm.beta]
        )
    outputs, gates = layer(x, training=training)
    _assert_matches_reference(layer, x, outputs, gates, training)
    if single_gate:
        np.testing.assert_array_equal(_np(gates)[:, 1], _np(gates)[:, 0])


@GATE_NORMALIZATIONS
def test_gate_normalization_weights(gate_normalization, single_gate):
    layer = MMoELayer(
        4,
        [6],
        3,
        gate_normalization=gate_normalization,
        single_gate=single_gate,
    )
    layer.build((None, 5))
    num_gates = 1 if single_gate else 3
    names = sorted(w.path.split("/", 1)[1] for w in layer.trainable_weights)
    if gate_normalization == "batch":
        # The offset replaces the gate bias; statistics per gate and expert.
        assert names == [
            "expert_bias_0",
            "expert_kernel_0",
            "gate_batch_norm/beta",
            "gate_batch_norm/gamma",
            "gate_kernel",
        ]
        assert tuple(layer.gate_norm.moving_mean.shape) == (num_gates * 4,)
    else:
        assert names == [
            "expert_bias_0",
            "expert_kernel_0",
            "gate_bias",
            "gate_kernel",
            "gate_layer_norm/beta",
            "gate_layer_norm/gamma",
        ]
        assert tuple(layer.gate_norm.gamma.shape) == (num_gates, 4)
        assert layer.non_trainable_weights == []


def test_gate_layer_norm_fixes_the_gate_temperature():
    """Plain gates follow the scale of their logits (near uniform when the
    logits are small, one-hot when large); layer-normalized gates see
    logits of standard deviation 1 (times the learned scale) whatever that
    scale."""
    x = _x(batch=8)
    gates = {}
    for gate_normalization in (None, "layer"):
        layer = MMoELayer(
            4,
            [3],
            1,
            gate_normalization=gate_normalization,
            return_gates=True,
        )
        layer(x)
        kernel = np.random.default_rng(2).normal(size=(1, 5, 4))
        for scale in (0.01, 10.0, 100.0):
            layer.gate_kernel.assign(scale * kernel)
            gates[gate_normalization, scale] = _np(layer(x)[1])[:, 0]
    assert np.abs(gates[None, 0.01] - 0.25).max() < 0.01
    assert np.median(gates[None, 100.0].max(axis=-1)) > 0.99
    # Logits 10 times larger give the same gates (up to the epsilon).
    np.testing.assert_allclose(
        gates["layer", 10.0], gates["layer", 100.0], atol=1e-3
    )
    assert not np.allclose(gates[None, 10.0], gates[None, 100.0], atol=1e-2)
    # Logits whose variance is below the epsilon (1e-3) are only partly
    # rescaled, but still far from uniform gates.
    assert np.abs(gates["layer", 0.01] - 0.25).max() > 0.1


def test_gate_batch_norm_moving_statistics_update_in_fit():
    model = _two_task_model(
        MMoELayer(3, [6], 2, gate_normalization="batch", name="mmoe")
    )
    moving_mean = model.get_layer("mmoe").gate_norm.moving_mean
    assert np.all(_np(moving_mean) == 0.0)
    model.fit(_x(8), {"a": np.ones((8, 1)), "b": np.zeros((8, 1))}, verbose=0)
    assert np.all(np.isfinite(_np(moving_mean)))
    assert np.any(_np(moving_mean) != 0.0)


def test_exact_values_with_ones():
    layer = MMoELayer(2, [3, 2], 2, kernel_initializer="ones")
    x = np.array([[1.0, 2.0, 0.0, 0.0, 1.0], [-1.0, 0.0, 0.0, 0.0, -3.0]])
    outputs = layer(x.astype("float32"))
    # Every expert: level 0 gives relu(sum(x)) x3, level 1 gives 3 * that;
    # equal gate logits give uniform gates, so the mixture is the same.
    for out in outputs:
        np.testing.assert_allclose(_np(out), [[12.0, 12.0], [0.0, 0.0]])


def test_one_expert_equals_shared_bottom():
    mmoe = MMoELayer(1, [6, 4], 3)
    bottom = MLP([6, 4])
    x = _x()
    outputs = mmoe(x)
    bottom(x)
    for i, dense in enumerate(bottom.dense_layers):
        dense.kernel.assign(mmoe.expert_kernels[i][0])
        dense.bias.assign(mmoe.expert_biases[i][0])
    expected = _np(bottom(x))
    assert np.any(expected != 0.0)
    for out in outputs:
        np.testing.assert_allclose(_np(out), expected, rtol=1e-6, atol=1e-6)


def test_gates_sum_to_one_and_differ_between_tasks():
    layer = MMoELayer(4, [3], 2, return_gates=True)
    x = _x()
    layer(x)
    kernel = np.zeros((2, 5, 4), "float32")
    kernel[1] = np.random.default_rng(1).normal(size=(5, 4))
    layer.gate_kernel.assign(kernel)
    outputs, gates = layer(x)
    gates = _np(gates)
    np.testing.assert_allclose(gates.sum(axis=-1), np.ones((4, 2)), rtol=1e-6)
    np.testing.assert_allclose(gates[:, 0], np.full((4, 4), 0.25), rtol=1e-6)
    np.testing.assert_allclose(gates[:, 1], _softmax(x @ kernel[1]), rtol=1e-5)
    assert not np.allclose(gates[:, 0], gates[:, 1])
    assert not np.allclose(_np(outputs[0]), _np(outputs[1]))


def test_single_gate_is_shared_by_every_task():
    layer = MMoELayer(4, [3], 3, single_gate=True, return_gates=True)
    outputs, gates = layer(_x())
    assert tuple(layer.gate_kernel.shape) == (1, 5, 4)
    gates = _np(gates)
    assert gates.shape == (4, 3, 4)
    for t in (1, 2):
        np.testing.assert_array_equal(gates[:, t], gates[:, 0])
        np.testing.assert_array_equal(_np(outputs[t]), _np(outputs[0]))


def test_each_expert_initialised_separately():
    # Glorot on one (64, 64) expert: limit sqrt(6 / 128); a stacked fan would
    # halve it for 4 experts. An integer seed must still give distinct
    # experts.
    layer = MMoELayer(
        4, [64], 1, kernel_initializer=keras.initializers.GlorotUniform(7)
    )
    layer.build((None, 64))
    kernel = _np(layer.expert_kernels[0])
    limit = np.sqrt(6.0 / 128.0)
    assert np.abs(kernel).max() <= limit
    assert np.abs(kernel).max() > 0.9 * limit
    assert not np.allclose(kernel[0], kernel[1])


def test_dropout_only_in_training():
    layer = MMoELayer(2, [32], 1, expert_dropout=0.5)
    x = _x()
    np.testing.assert_array_equal(
        _np(layer(x, training=False)[0]), _np(layer(x)[0])
    )
    assert not np.allclose(
        _np(layer(x, training=True)[0]), _np(layer(x, training=False)[0])
    )


def test_kernel_regularizer_losses():
    layer = MMoELayer(2, [4, 3], 2, kernel_regularizer="l2")
    layer(_x())
    assert len(layer.losses) == 3  # two expert levels and the gates


def _two_task_model(layer):
    """A compiled model with one Dense head per task output of `layer`."""
    inputs = keras.Input((5,))
    task_a, task_b = layer(inputs)
    model = keras.Model(
        inputs,
        {
            "a": keras.layers.Dense(1, name="a")(task_a),
            "b": keras.layers.Dense(1, name="b")(task_b),
        },
    )
    model.compile(
        optimizer="sgd", loss={"a": "mse", "b": "mse"}, jit_compile=False
    )
    return model


def test_one_step_fit_updates_weights():
    model = _two_task_model(MMoELayer(3, [6, 4], 2, expert_dropout=0.1))
    before = [_np(w) for w in model.trainable_weights]
    history = model.fit(
        _x(8), {"a": np.ones((8, 1)), "b": np.zeros((8, 1))}, verbose=0
    )
    assert np.isfinite(history.history["loss"][0])
    after = [_np(w) for w in model.trainable_weights]
    assert all(not np.allclose(b, a) for b, a in zip(before, after))


def test_batch_norm_moving_statistics_update_in_fit():
    model = _two_task_model(
        MMoELayer(3, [6, 4], 2, expert_normalization="batch", name="mmoe")
    )
    layer = model.get_layer("mmoe")
    moving_mean = layer.expert_norms[0].moving_mean
    assert np.all(_np(moving_mean) == 0.0)
    model.fit(_x(8), {"a": np.ones((8, 1)), "b": np.zeros((8, 1))}, verbose=0)
    assert np.all(np.isfinite(_np(moving_mean)))
    assert np.any(_np(moving_mean) != 0.0)


@NORMALIZATIONS
def test_mixed_bfloat16(
    mixed_bfloat16, expert_normalization, gate_normalization
):
    layer = MMoELayer(
        3,
        [4, 2],
        2,
        expert_normalization=expert_normalization,
        gate_normalization=gate_normalization,
        return_gates=True,
    )
    outputs, gates = layer(_x(), training=True)
    for tensor in [*outputs, gates]:
        assert keras.backend.standardize_dtype(tensor.dtype) == "bfloat16"
    assert all(
        keras.backend.standardize_dtype(w.dtype) == "float32"
        for w in layer.weights
    )
    np.testing.assert_allclose(
        _np(keras.ops.sum(keras.ops.cast(gates, "float32"), axis=-1)),
        np.ones((4, 2)),
        rtol=1e-2,
    )


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_experts": 0}, "num_experts"),
        ({"num_experts": True}, "num_experts"),
        ({"expert_units": []}, "expert_units"),
        ({"expert_units": [4, -1]}, "expert_units"),
        ({"num_tasks": 0}, "num_tasks"),
        ({"num_tasks": 2.0}, "num_tasks"),
        ({"expert_dropout": 1.0}, "expert_dropout"),
        ({"single_gate": "yes"}, "single_gate"),
        ({"return_gates": 1}, "return_gates"),
        ({"expert_activation": "nope"}, "expert_activation"),
        ({"kernel_regularizer": "nope"}, "kernel_regularizer"),
        ({"expert_normalization": "group"}, "expert_normalization"),
        ({"expert_normalization": True}, "expert_normalization"),
        ({"gate_normalization": "softmax"}, "gate_normalization"),
        ({"gate_normalization": False}, "gate_normalization"),
    ],
    ids=[
        "zero_experts",
        "bool_experts",
        "empty_expert_units",
        "negative_expert_unit",
        "zero_tasks",
        "float_tasks",
        "dropout_one",
        "str_single_gate",
        "int_return_gates",
        "unknown_activation",
        "unknown_regularizer",
        "group_normalization",
        "bool_normalization",
        "unknown_gate_normalization",
        "bool_gate_normalization",
    ],
)
def test_invalid_arguments(kwargs, name):
    arguments = {"num_experts": 2, "expert_units": [4], "num_tasks": 2}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=f"`{name}`.*Received: {name}="):
        MMoELayer(**arguments)


@NORMALIZATIONS
def test_keras_save_and_load(
    tmp_path, expert_normalization, gate_normalization
):
    inputs = keras.Input((5,))
    task_a, task_b = MMoELayer(
        3,
        [4],
        2,
        expert_normalization=expert_normalization,
        gate_normalization=gate_normalization,
        name="mmoe",
    )(inputs)
    model = keras.Model(inputs, {"a": task_a, "b": task_b})
    layer = model.get_layer("mmoe")
    set_nontrivial_norm_weights(layer.expert_norms, expert_normalization)
    set_nontrivial_norm_weights([layer.gate_norm], gate_normalization)
    path = tmp_path / "mmoe.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("mmoe"), MMoELayer)
    expected = model.predict(_x(), verbose=0)
    actual = loaded.predict(_x(), verbose=0)
    for key in ("a", "b"):
        np.testing.assert_allclose(actual[key], expected[key])
