"""Gate diagnostics of MMoE, OMoE, CGC and PLE models."""

import glob
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_mtl import Task
from keras_mtl import layers
from keras_mtl import models
from keras_mtl import training

ARCHITECTURES = {
    "mmoe": dict(num_experts=3, expert_units=[4], tower_units=[]),
    "omoe": dict(num_experts=3, expert_units=[4], tower_units=[]),
    "cgc": dict(num_task_experts=2, num_shared_experts=1, expert_units=[4]),
    "ple": dict(
        num_levels=2, num_task_experts=1, num_shared_experts=2, expert_units=[4]
    ),
}


def _experts(frame):
    return frame[[c for c in frame.columns if "expert" in c]]


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES), ids=str)
def test_per_task_rows_sum_to_one(make_problem, architecture):
    specs, tasks, (x, _, _) = make_problem(
        300, [[1, 0, 0, 0], [0, 1, 0, 0]], [0.1, 0.1], ["binary", "binary"]
    )
    model = models.build(
        architecture, specs, tasks, **ARCHITECTURES[architecture]
    )
    frame = training.gate_diagnostics(model, x, tasks)
    levels = (
        ["ple_level_0", "ple_level_1"]
        if architecture == "ple"
        else ["ple_level_0" if architecture == "cgc" else "mmoe"]
    )
    assert list(frame.index) == [(lv, t) for lv in levels for t in ("t0", "t1")]
    np.testing.assert_allclose(
        _experts(frame).sum(axis=1, skipna=True), 1.0, rtol=1e-5
    )
    assert (frame["normalized_entropy"].between(0, 1 + 1e-6)).all()
    # The mean gate is at least as spread as the average single gate.
    assert (frame["entropy"] >= frame["sample_entropy"] - 1e-6).all()
    if architecture == "omoe":  # one gate: identical rows
        np.testing.assert_allclose(
            frame.loc[("mmoe", "t0")], frame.loc[("mmoe", "t1")]
        )
    if architecture in ("cgc", "ple"):
        assert {"task_expert_0", "shared_expert_0"} <= set(frame.columns)


@pytest.mark.backend
def test_values_match_the_gates_exactly():
    # Zero gate kernel and hand-set biases: known gate weights everywhere.
    inputs = keras.Input((3,), name="x")
    moe = layers.MMoELayer(
        num_experts=3, expert_units=[2], num_tasks=2, name="mmoe"
    )
    hidden = moe(inputs)
    outputs = {
        "a": keras.layers.Dense(1, name="a")(hidden[0]),
        "b": keras.layers.Dense(1, name="b")(hidden[1]),
    }
    model = keras.Model({"x": inputs}, outputs)
    moe.gate_kernel.assign(np.zeros(moe.gate_kernel.shape, "float32"))
    moe.gate_bias.assign(
        np.log([[1.0, 1.0, 2.0], [1.0, 1.0, 1.0]]).astype("float32")
    )
    x = {"x": np.random.default_rng(0).normal(size=(10, 3)).astype("float32")}
    frame = training.gate_diagnostics(model, x, [Task("a"), Task("b")])
    np.testing.assert_allclose(
        _experts(frame).to_numpy(),
        [[0.25, 0.25, 0.5], [1 / 3, 1 / 3, 1 / 3]],
        rtol=1e-5,
    )
    uniform = math.log(3)
    np.testing.assert_allclose(frame["entropy"].iloc[1], uniform, rtol=1e-5)
    np.testing.assert_allclose(
        frame["normalized_entropy"].iloc[1], 1.0, rtol=1e-5
    )
    expected = -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))
    np.testing.assert_allclose(frame["entropy"].iloc[0], expected, rtol=1e-5)


def test_callback_tracks_gates_per_epoch_and_logs_them(make_problem, tmp_path):
    specs, tasks, (x, y, sw) = make_problem(
        300, [[1, 0, 0, 0], [0, 1, 0, 0]], [0.1, 0.1], ["binary", "binary"]
    )
    model = models.mmoe(specs, tasks, **ARCHITECTURES["mmoe"])
    models.compile_model(
        model,
        tasks,
        learning_rate=0.05,
        metrics={"t0": [], "t1": []},
        run_eagerly=True,
    )
    gates = training.GateDiagnostics(x, tasks, log_dir=str(tmp_path))
    history = model.fit(
        x,
        y,
        sample_weight=sw,
        batch_size=100,
        epochs=2,
        verbose=0,
        callbacks=[gates],
    )
    assert len(gates.frames) == 2
    table = gates.history()
    assert table.index.names == ["epoch", "layer", "task"]
    # The gates follow training: epoch 2's differ from epoch 1's.
    assert not np.allclose(
        _experts(gates.frames[0]).to_numpy(),
        _experts(gates.frames[1]).to_numpy(),
    )
    np.testing.assert_allclose(
        history.history["gate_entropy_mmoe_t0"],
        table.xs(("mmoe", "t0"), level=("layer", "task"))["normalized_entropy"],
    )
    tags = set()
    for path in glob.glob(str(tmp_path / "gates" / "events*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    assert {"gates/mmoe/t0/expert_0", "gates/mmoe/t1/entropy"} <= tags


def test_refuses_a_model_without_gates(make_problem):
    specs, tasks, (x, _, _) = make_problem(
        50, [[1, 0, 0, 0], [0, 1, 0, 0]], [0.1, 0.1], ["binary", "binary"]
    )
    model = models.shared_bottom(specs, tasks, bottom_units=[4])
    with pytest.raises(ValueError, match="no gate layer"):
        training.gate_diagnostics(model, x)
