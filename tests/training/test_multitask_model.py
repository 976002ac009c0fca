"""MultiTaskModel: masked losses, strategies in training, logging, saving."""

import glob

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import keras_mtl
from keras_mtl import Task
from keras_mtl import data
from keras_mtl import models
from keras_mtl import training


def _fit(wrapper, arrays, epochs=1, batch_size=100, **kwargs):
    x, y, sw = arrays
    return wrapper.fit(
        x,
        y,
        sample_weight=sw,
        batch_size=batch_size,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        **kwargs,
    )


def _compile(model, tasks, **kwargs):
    """`training.compile` without the (slow) per-task metrics."""
    kwargs.setdefault("metrics", {t.name: [] for t in tasks})
    return training.compile(model, tasks, **kwargs)


def test_fixed_weighting_trains_exactly_like_compile_model(make_problem):
    specs, tasks, arrays = make_problem(
        300, [[1, 0, 0, 0], [0, 1, 0, 0]], [0.3, 0.3], ["binary", "regression"]
    )
    # A masked task: half of t1's rows are outside its space.
    arrays[2]["t1"][::2] = 0.0
    tasks[1] = Task("t1", "regression", weight=0.5)
    keras.utils.set_random_seed(1)
    plain = models.shared_bottom(specs, tasks, bottom_units=[8])
    wrapped = models.shared_bottom(specs, tasks, bottom_units=[8])
    wrapped.set_weights(plain.get_weights())
    models.compile_model(
        plain, tasks, optimizer="sgd", learning_rate=0.1, run_eagerly=True
    )
    wrapper = training.compile(
        wrapped, tasks, optimizer="sgd", learning_rate=0.1, run_eagerly=True
    )
    x, y, sw = arrays
    kwargs = dict(sample_weight=sw, batch_size=100, verbose=0)
    expected = plain.evaluate(x, y, return_dict=True, **kwargs)
    got = wrapper.evaluate(x, y, return_dict=True, **kwargs)
    for key in ("loss", "t0_loss", "t1_loss", "t0_auc", "t1_rmse"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5)
    plain.fit(x, y, sample_weight=sw, batch_size=100, shuffle=False, verbose=0)
    history = _fit(wrapper, arrays)
    for a, b in zip(wrapped.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert history.history["t0_weight"] == [1.0]
    assert history.history["t1_weight"] == [0.5]


@pytest.mark.parametrize("kind", ["regression", "binary"])
def test_uncertainty_gives_the_noisier_task_the_smaller_weight(
    make_problem, kind
):
    # Same signal, but task 1's labels carry far more noise.
    noise = [0.05, 3.0]
    specs, tasks, arrays = make_problem(
        800, [[1, -1, 0.5, 0], [1, -1, 0.5, 0]], noise, [kind, kind]
    )
    model = models.shared_bottom(
        specs, tasks, bottom_units=[16], tower_units=[]
    )
    wrapper = _compile(
        model,
        tasks,
        weighting="uncertainty",
        learning_rate=0.05,
        run_eagerly=True,
    )
    history = _fit(wrapper, arrays, epochs=6)
    clean, noisy = history.history["t0_weight"], history.history["t1_weight"]
    # Both start at the same weight (s = 0: 1 for binary, 0.5 for
    # regression); the clean task's rises, the noisy task's ends below it.
    start = 0.5 if kind == "regression" else 1.0
    assert noisy[-1] < start < clean[-1]
    assert noisy[-1] < 0.5 * clean[-1]
    assert history.history["t1_loss"][-1] > history.history["t0_loss"][-1]
    log_vars = wrapper.weighting.log_vars.numpy()
    assert log_vars[1] > log_vars[0]
    # The log-variances are training state only, never in the serving model.
    assert not any("log_vars" in v.path for v in model.weights)


@pytest.mark.parametrize(
    "alpha, eager", [(0.0, False), (1.5, False)], ids=["alpha0", "alpha1.5"]
)
def test_gradnorm_moves_the_gradient_norm_ratio_toward_its_target(
    make_problem, alpha, eager
):
    # Task 1's labels are 10x larger: its gradients are ~10x larger.
    specs, tasks, arrays = make_problem(
        300,
        [[1, 0.5, 0, 0], [0, 0, 1, 0.5]],
        [0.1, 1.0],
        ["regression", "regression"],
        scale=[1.0, 10.0],
    )
    model = models.shared_bottom(
        specs, tasks, bottom_units=[16], tower_units=[8]
    )
    # The network is frozen (learning rate 0), so the unweighted norms and
    # losses stay put and only GradNorm's weights move.
    wrapper = _compile(
        model,
        tasks,
        weighting={"name": "gradnorm", "alpha": alpha, "learning_rate": 0.05},
        optimizer="sgd",
        learning_rate=0.0,
        run_eagerly=eager,
    )
    strategy = wrapper.weighting
    x, y, sw = arrays
    losses = wrapper.evaluate(
        x, y, sample_weight=sw, batch_size=300, verbose=0, return_dict=True
    )
    # Pretend task 0 has already halved its loss: task 1 is the slower
    # one, so its target is 2^alpha times task 0's.
    strategy.initial_losses.assign([2 * losses["t0_loss"], losses["t1_loss"]])
    strategy.steps.assign(1.0)
    log_target = alpha * np.log(2.0)
    gaps = []

    def record(batch, logs):
        norms = strategy.grad_norms.numpy()
        targets = strategy.targets.numpy()
        np.testing.assert_allclose(
            np.log(targets[1] / targets[0]), log_target, atol=1e-4
        )
        gaps.append(abs(np.log(norms[1] / norms[0]) - log_target))

    # 40 full-batch steps in one epoch.
    tiled = tuple({k: np.tile(v, 40) for k, v in d.items()} for d in arrays)
    history = _fit(
        wrapper,
        tiled,
        batch_size=300,
        callbacks=[keras.callbacks.LambdaCallback(on_train_batch_end=record)],
    )
    assert len(gaps) == 40
    assert gaps[0] > 1.0  # far from the target at first
    assert max(gaps[-5:]) < 0.15 * gaps[0]
    weights = history.history
    assert weights["t1_weight"][-1] < weights["t0_weight"][-1]
    np.testing.assert_allclose(
        weights["t0_weight"][-1] + weights["t1_weight"][-1], 2.0, rtol=1e-5
    )
    assert "t1_grad_norm" in weights and "t1_grad_norm_target" in weights
    # GradNorm measured on the last layer both tasks share.
    assert training.last_shared_layer(model, ["t0", "t1"]).name == "bottom"


def _mse_task_gradients(model, tasks, arrays):
    """Each regression task's masked-MSE gradient of every trainable weight,
    by hand (NumPy, dense; zeros where the task does not reach a weight)."""
    x, y, sw = arrays
    inputs = {k: tf.constant(v) for k, v in x.items()}
    per_task = []
    for task in tasks:
        with tf.GradientTape() as tape:
            pred = model(inputs, training=True)[task.name]
            loss = keras.losses.MeanSquaredError(
                reduction="mean_with_sample_weight"
            )(y[task.name], pred, sw[task.name])
        grads = tape.gradient(loss, model.trainable_weights)
        per_task.append(
            [
                np.zeros(w.shape) if g is None else tf.convert_to_tensor(g)
                for g, w in zip(grads, model.trainable_weights)
            ]
        )
    return [[np.asarray(g) for g in grads] for grads in per_task]


def _conflicting_shared_bottom(make_problem):
    """Two regression tasks with opposite labels on a shared bottom with
    identical heads, so their shared gradients conflict.

    Returns `(model, tasks, arrays, start, per_task, shared, flat)`: the
    weights before training, each task's gradient of every weight (computed
    by hand), which weights are shared, and each task's flattened gradient
    of the shared weights.
    """
    specs, tasks, arrays = make_problem(
        200,
        [[1, 1, 0, 0], [1, 1, 0, 0]],
        [0.0, 0.0],
        ["regression", "regression"],
    )
    x, y, sw = arrays
    y["t1"] = -y["t0"]  # the tasks pull the shared layer apart
    model = models.shared_bottom(specs, tasks, bottom_units=[4], tower_units=[])
    # Identical heads: with opposite labels the shared gradients conflict.
    model.get_layer("t1").set_weights(model.get_layer("t0").get_weights())
    start = [w.numpy().copy() for w in model.trainable_weights]
    per_task = _mse_task_gradients(model, tasks, arrays)
    shared = ["bottom" in w.path for w in model.trainable_weights]
    flat = [
        np.concatenate([g.ravel() for g, s in zip(grads, shared) if s])
        for grads in per_task
    ]
    assert flat[0] @ flat[1] < 0  # they do conflict
    return model, tasks, arrays, start, per_task, shared, flat


def _assert_one_sgd_step(model, start, per_task, shared, combined, lr=0.1):
    """Shared weights moved by `-lr * combined` (flattened), the others by
    their own task's gradient."""
    offset = 0
    for k, (got, w, s) in enumerate(
        zip(model.trainable_weights, start, shared)
    ):
        if s:
            g = combined[offset : offset + w.size].reshape(w.shape)
            offset += w.size
        else:
            g = per_task[0][k] + per_task[1][k]
        np.testing.assert_allclose(
            got.numpy(), w - lr * g, rtol=1e-4, atol=1e-6
        )
    # Not the plain sum of the gradients.
    plain = start[0] - lr * (per_task[0][0] + per_task[1][0])
    assert not np.allclose(model.trainable_weights[0].numpy(), plain)


def test_pcgrad_step_applies_projected_gradients_on_shared_variables(
    make_problem,
):
    model, tasks, arrays, start, per_task, shared, flat = (
        _conflicting_shared_bottom(make_problem)
    )
    g0 = flat[0] - (flat[0] @ flat[1]) / (flat[1] @ flat[1]) * flat[1]
    g1 = flat[1] - (flat[0] @ flat[1]) / (flat[0] @ flat[0]) * flat[0]
    wrapper = _compile(
        model, tasks, weighting="pcgrad", optimizer="sgd", learning_rate=0.1
    )
    _fit(wrapper, arrays, batch_size=200)
    _assert_one_sgd_step(model, start, per_task, shared, g0 + g1)


def test_mgda_step_moves_shared_variables_along_the_min_norm_gradient(
    make_problem,
):
    model, tasks, arrays, start, per_task, shared, flat = (
        _conflicting_shared_bottom(make_problem)
    )
    # Two tasks: the min-norm point of the segment, in closed form.
    g0, g1 = flat
    a0 = np.clip((g1 - g0) @ g1 / ((g0 - g1) @ (g0 - g1)), 0.0, 1.0)
    assert 0.0 < a0 < 1.0
    wrapper = _compile(
        model, tasks, weighting="mgda", optimizer="sgd", learning_rate=0.1
    )
    history = _fit(wrapper, arrays, batch_size=200)
    _assert_one_sgd_step(
        model, start, per_task, shared, a0 * g0 + (1 - a0) * g1
    )
    np.testing.assert_allclose(history.history["t0_mgda_alpha"], [a0], 1e-4)
    np.testing.assert_allclose(history.history["t1_mgda_alpha"], [1 - a0], 1e-4)


def test_cagrad_step_moves_shared_variables_along_its_direction(
    make_problem,
):
    model, tasks, arrays, start, per_task, shared, flat = (
        _conflicting_shared_bottom(make_problem)
    )
    direction, w = training.cagrad_direction(np.stack(flat), c=0.5)
    wrapper = _compile(
        model, tasks, weighting="cagrad", optimizer="sgd", learning_rate=0.1
    )
    history = _fit(wrapper, arrays, batch_size=200)
    _assert_one_sgd_step(
        model, start, per_task, shared, keras.ops.convert_to_numpy(direction)
    )
    logged = [history.history[f"t{k}_cagrad_weight"][0] for k in (0, 1)]
    np.testing.assert_allclose(logged, keras.ops.convert_to_numpy(w), 1e-4)


def test_gradvac_first_step_is_pcgrads_and_sets_the_targets(make_problem):
    model, tasks, arrays, start, per_task, shared, flat = (
        _conflicting_shared_bottom(make_problem)
    )
    g0, g1 = np.asarray(flat, dtype="float64")
    rho = g0 @ g1 / np.linalg.norm(g0) / np.linalg.norm(g1)
    # Targets start at 0: the projections of PCGrad.
    p0 = g0 - (g0 @ g1) / (g1 @ g1) * g1
    p1 = g1 - (g0 @ g1) / (g0 @ g0) * g0
    wrapper = _compile(
        model, tasks, weighting="gradvac", optimizer="sgd", learning_rate=0.1
    )
    _fit(wrapper, arrays, batch_size=200)
    _assert_one_sgd_step(model, start, per_task, shared, p0 + p1)
    targets = keras.ops.convert_to_numpy(wrapper.weighting.targets)
    np.testing.assert_allclose(
        targets, 0.5 * rho * (1 - np.eye(2)), rtol=1e-4, atol=1e-7
    )


def _trains_like_fixed_weights(make_problem, weighting, tasks=None, seed=0):
    """Trains one epoch with `weighting` and with fixed weights from the same
    start (SGD); asserts the same weights and returns the History."""
    specs, two_tasks, arrays = make_problem(
        200, [[1, 0, 0, 0], [0, 1, 0, 0]], [0.1, 0.1], ["binary", "binary"]
    )
    tasks = tasks or two_tasks
    keras.utils.set_random_seed(seed)
    start = models.shared_bottom(specs, tasks, bottom_units=[8]).get_weights()
    trained = []
    for strategy in ("fixed", weighting):
        model = models.shared_bottom(specs, tasks, bottom_units=[8])
        model.set_weights(start)
        wrapper = _compile(model, tasks, weighting=strategy, optimizer="sgd")
        trained.append((_fit(wrapper, arrays), model.get_weights()))
    for a, b in zip(trained[1][1], trained[0][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    return trained[1][0]


def test_cagrad_without_radius_trains_like_fixed_weights(make_problem):
    _trains_like_fixed_weights(
        make_problem, {"name": "cagrad", "c": 0.0}, seed=6
    )


def test_gradvac_with_one_trained_task_is_plain_training(make_problem):
    tasks = [Task("t0"), Task("t1", weight=0.0)]
    _trains_like_fixed_weights(make_problem, "gradvac", tasks, seed=5)


def test_mgda_with_one_trained_task_is_plain_training(make_problem):
    # t1 is monitored only.
    tasks = [Task("t0"), Task("t1", weight=0.0)]
    history = _trains_like_fixed_weights(make_problem, "mgda", tasks, seed=2)
    assert history.history["t0_mgda_alpha"] == [1.0]
    assert "t1_mgda_alpha" not in history.history


def test_imtl_step_moves_shared_variables_impartially_and_trains_the_scales(
    make_problem,
):
    model, tasks, arrays, start, per_task, shared, flat = (
        _conflicting_shared_bottom(make_problem)
    )
    # IMTL-G's closed form with two tasks: the weights summing to 1 whose
    # combination projects equally onto both unit gradients.
    g0, g1 = np.asarray(flat, dtype="float64")
    u0, u1 = g0 / np.linalg.norm(g0), g1 / np.linalg.norm(g1)
    a1 = g0 @ (u0 - u1) / ((g0 - g1) @ (u0 - u1))
    combined = (1 - a1) * g0 + a1 * g1
    np.testing.assert_allclose(combined @ u0, combined @ u1, rtol=1e-9)
    wrapper = _compile(
        model, tasks, weighting="imtl", optimizer="sgd", learning_rate=0.1
    )
    history = _fit(wrapper, arrays, batch_size=200)
    # The scales start at 0 (weight 1), so the network's step is IMTL-G's.
    _assert_one_sgd_step(model, start, per_task, shared, combined)
    logged = [history.history[f"t{k}_imtl_alpha"][0] for k in (0, 1)]
    np.testing.assert_allclose(logged, [1 - a1, a1], rtol=1e-4)
    # IMTL-L: d/ds_k (exp(s_k) L_k - s_k) = L_k - 1 at s_k = 0; one SGD step.
    losses = np.array([history.history[f"t{k}_loss"][0] for k in (0, 1)])
    scales = keras.ops.convert_to_numpy(wrapper.weighting.log_scales)
    np.testing.assert_allclose(scales, -0.1 * (losses - 1.0), rtol=1e-5)
    weights = [history.history[f"t{k}_weight"][0] for k in (0, 1)]
    np.testing.assert_allclose(weights, np.exp(scales), rtol=1e-6)


def test_imtl_loss_scales_equalize_the_scaled_losses(make_problem):
    # Two regression tasks whose losses end up about 300 times apart: the
    # learned scales bring exp(s_k) L_k close to 1 for both (Adam keeps the
    # scales moving a little around the balance as the losses fall).
    specs, tasks, arrays = make_problem(
        400,
        [[1, 0, 0, 0], [0, 1, 0, 0]],
        [0.1, 0.1],
        ["regression", "regression"],
    )
    arrays[1]["t1"] = arrays[1]["t1"] * 20.0
    keras.utils.set_random_seed(3)
    model = models.shared_bottom(specs, tasks, bottom_units=[8])
    wrapper = _compile(model, tasks, weighting="imtl", learning_rate=0.05)
    history = _fit(wrapper, arrays, epochs=80)
    x, y, sw = arrays
    final = wrapper.evaluate(
        x, y, sample_weight=sw, return_dict=True, verbose=0
    )
    losses = np.array([final[f"t{k}_loss"] for k in (0, 1)])
    weights = np.array([history.history[f"t{k}_weight"][-1] for k in (0, 1)])
    assert losses[1] > 50 * losses[0]
    np.testing.assert_allclose(weights * losses, [1.0, 1.0], rtol=0.25)


def test_imtl_gradients_alone_with_one_trained_task_is_plain_training(
    make_problem,
):
    tasks = [Task("t0"), Task("t1", weight=0.0)]
    history = _trains_like_fixed_weights(
        make_problem, {"name": "imtl", "loss_scale": False}, tasks, seed=4
    )
    assert history.history["t0_imtl_alpha"] == [1.0]
    assert history.history["t1_weight"] == [0.0]


def _nash_reference(flat):
    """Nash-MTL's weights of two or more gradients, in float64 by SciPy:
    the minimum of `a^T G G^T a / 2 - sum_k log a_k`."""
    from scipy.optimize import minimize

    grads = np.asarray(flat, dtype="float64")
    gram = grads @ grads.T
    result = minimize(
        lambda a: a @ gram @ a / 2 - np.sum(np.log(a)),
        1.0 / np.linalg.norm(grads, axis=1),
        jac=lambda a: gram @ a - 1.0 / a,
        bounds=[(1e-9, None)] * len(grads),
        method="L-BFGS-B",
        options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 10000},
    )
    return result.x


@pytest.mark.parametrize("max_norm", [1.0, 0.0], ids=["clipped", "unclipped"])
def test_nash_mtl_step_moves_shared_variables_along_the_bargaining_direction(
    make_problem, max_norm
):
    model, tasks, arrays, start, per_task, shared, flat = (
        _conflicting_shared_bottom(make_problem)
    )
    alpha = _nash_reference(flat)
    np.testing.assert_allclose(
        alpha * (np.stack(flat) @ (alpha @ np.stack(flat))), 1.0, rtol=1e-6
    )
    direction = alpha @ np.asarray(flat, dtype="float64")
    norm = np.linalg.norm(direction)
    assert norm > 1.0  # the default clips it
    if max_norm:
        direction = direction * max_norm / norm
    wrapper = _compile(
        model,
        tasks,
        weighting={"name": "nash_mtl", "max_norm": max_norm},
        optimizer="sgd",
        learning_rate=0.1,
    )
    history = _fit(wrapper, arrays, batch_size=200)
    _assert_one_sgd_step(model, start, per_task, shared, direction)
    logged = [history.history[f"t{k}_nash_alpha"][0] for k in (0, 1)]
    np.testing.assert_allclose(logged, alpha, rtol=1e-3)


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_aligned_mtl_step_moves_shared_variables_along_the_aligned_sum(
    make_problem, weight
):
    model, tasks, arrays, start, per_task, shared, flat = (
        _conflicting_shared_bottom(make_problem)
    )
    tasks[1] = Task("t1", "regression", weight=weight)
    # Two gradients: aligned, they are orthogonal with the norm of the
    # smaller singular value; their sum weighted by the task weights is the
    # shared update.
    grads = np.asarray(flat, dtype="float64")
    u, s, vt = np.linalg.svd(grads, full_matrices=False)
    aligned = s.min() * u @ vt
    gram = aligned @ aligned.T
    np.testing.assert_allclose(gram, s.min() ** 2 * np.eye(2), atol=1e-12)
    combined = np.array([1.0, weight]) @ aligned
    wrapper = _compile(
        model,
        tasks,
        weighting="aligned_mtl",
        optimizer="sgd",
        learning_rate=0.1,
    )
    history = _fit(wrapper, arrays, batch_size=200)
    # t1's own tower moves by its weighted gradient.
    per_task[1] = [g * weight for g in per_task[1]]
    _assert_one_sgd_step(model, start, per_task, shared, combined)
    logged = [history.history[f"t{k}_aligned_alpha"][0] for k in (0, 1)]
    alpha = np.linalg.lstsq(grads.T, combined, rcond=None)[0]
    np.testing.assert_allclose(logged, alpha, rtol=1e-3)


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_upgrad_step_moves_shared_variables_along_the_summed_projections(
    make_problem, weight
):
    model, tasks, arrays, start, per_task, shared, flat = (
        _conflicting_shared_bottom(make_problem)
    )
    tasks[1] = Task("t1", "regression", weight=weight)
    # Two weighted gradients in conflict: each projected onto the other's
    # normal plane (PCGrad's projections), then summed.
    rows = np.asarray(flat, dtype="float64") * np.array([[1.0], [weight]])
    dot = rows[0] @ rows[1]
    assert dot < 0
    on_rows = 1.0 - dot / np.sum(rows * rows, axis=1)
    combined = on_rows @ rows
    # The update conflicts with neither task.
    assert np.all(rows @ combined > 0)
    wrapper = _compile(
        model, tasks, weighting="upgrad", optimizer="sgd", learning_rate=0.1
    )
    history = _fit(wrapper, arrays, batch_size=200)
    per_task[1] = [g * weight for g in per_task[1]]
    _assert_one_sgd_step(model, start, per_task, shared, combined)
    logged = [history.history[f"t{k}_upgrad_alpha"][0] for k in (0, 1)]
    np.testing.assert_allclose(logged, on_rows * [1.0, weight], rtol=1e-4)


@pytest.mark.parametrize("alpha", [1.0, 3.0])
def test_fairgrad_step_moves_shared_variables_along_the_fair_combination(
    make_problem, alpha
):
    from scipy.optimize import least_squares

    model, tasks, arrays, start, per_task, shared, flat = (
        _conflicting_shared_bottom(make_problem)
    )
    grads = np.asarray(flat, dtype="float64")
    gram = grads @ grads.T
    w = least_squares(
        lambda v: gram @ v - np.power(1.0 / v, 1.0 / alpha),
        np.ones(2) / 2,
        bounds=(0, np.inf),
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
    ).x
    wrapper = _compile(
        model,
        tasks,
        weighting={"name": "fairgrad", "alpha": alpha},
        optimizer="sgd",
        learning_rate=0.1,
    )
    history = _fit(wrapper, arrays, batch_size=200)
    _assert_one_sgd_step(model, start, per_task, shared, w @ grads)
    logged = [history.history[f"t{k}_fairgrad_weight"][0] for k in (0, 1)]
    np.testing.assert_allclose(logged, w, rtol=1e-4)


def _two_scales(make_problem):
    """Two regression tasks on 200 rows, the second's labels 10x larger."""
    return make_problem(
        200,
        [[1, 0.5, 0, 0], [0, 0, 1, 0.5]],
        [0.1, 1.0],
        ["regression", "regression"],
        scale=[1.0, 10.0],
    )


def test_gls_step_divides_each_task_gradient_by_its_loss(make_problem):
    specs, tasks, arrays = _two_scales(make_problem)
    keras.utils.set_random_seed(3)
    start = models.shared_bottom(specs, tasks, bottom_units=[8]).get_weights()
    x, y, sw = arrays
    probe = models.shared_bottom(specs, tasks, bottom_units=[8])
    probe.set_weights(start)
    before = _compile(probe, tasks).evaluate(
        x, y, sample_weight=sw, batch_size=200, verbose=0, return_dict=True
    )
    losses = np.array([before["t0_loss"], before["t1_loss"]])
    assert losses[1] > 10 * losses[0]  # on very different scales
    gls = np.sqrt(losses.prod())
    # d GLS / d L_k = GLS / (2 L_k): one SGD step of GLS is one step of
    # fixed weights with those weights.
    trained = []
    for weighting, loss_weights in (
        ("gls", None),
        ("fixed", dict(zip(["t0", "t1"], gls / (2 * losses)))),
    ):
        model = models.shared_bottom(specs, tasks, bottom_units=[8])
        model.set_weights(start)
        wrapper = _compile(
            model,
            tasks,
            weighting=weighting,
            loss_weights=loss_weights,
            optimizer="sgd",
            learning_rate=0.05,
        )
        history = _fit(wrapper, arrays, batch_size=200)
        trained.append(model.get_weights())
        if weighting == "gls":
            np.testing.assert_allclose(
                history.history["loss"][0], gls, rtol=1e-5
            )
            assert history.history["t0_weight"] == [0.5]
    for a, b in zip(*trained):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert not np.allclose(trained[0][0], start[0])


def test_stch_warms_up_records_the_nadir_then_scalarizes(make_problem):
    specs, tasks, arrays = _two_scales(make_problem)
    x, y, sw = arrays
    keras.utils.set_random_seed(4)
    model = models.shared_bottom(specs, tasks, bottom_units=[8])
    wrapper = _compile(
        model,
        tasks,
        weighting={"name": "stch", "warmup_epochs": 2},
        optimizer="sgd",
        learning_rate=0.01,
    )
    # Four equal batches: the epoch's logged task loss is the mean of the
    # batch losses, which the last warmup epoch records as the nadir.
    history = _fit(wrapper, arrays, epochs=3, batch_size=50)
    for k in (0, 1):
        nadir = history.history[f"t{k}_stch_nadir"]
        assert nadir[:2] == [1.0, 1.0]
        np.testing.assert_allclose(
            nadir[2], history.history[f"t{k}_loss"][1], rtol=1e-5
        )
    # After the warmup one step is a fixed-weights step with the weights
    # d STCH / d L_k = K softmax(x / mu)_k / L_k, x_k = log(L_k / z_k).
    start = model.get_weights()
    before = _compile(model, tasks).evaluate(
        x, y, sample_weight=sw, batch_size=200, verbose=0, return_dict=True
    )
    losses = np.array([before["t0_loss"], before["t1_loss"]])
    nadir = wrapper.weighting.nadir.numpy().astype("float64")
    logits = np.log(losses / nadir)
    share = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    loss_weights = dict(zip(["t0", "t1"], 2 * share / losses))
    model.set_weights(start)
    history = _fit(wrapper, arrays, batch_size=200)
    np.testing.assert_allclose(
        history.history["loss"][0],
        2 * np.log(np.exp(logits).sum()),
        rtol=1e-5,
    )
    stepped = model.get_weights()
    model.set_weights(start)
    fixed = _compile(
        model,
        tasks,
        loss_weights=loss_weights,
        optimizer="sgd",
        learning_rate=0.01,
    )
    _fit(fixed, arrays, batch_size=200)
    for a, b in zip(stepped, model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert set(wrapper.weighting.get_state()) >= {"epoch", "nadir"}


def _conflicting_embedding_model():
    """A shared bottom over a numeric feature and an embedded categorical
    one, with two regression tasks of opposite labels and identical heads.

    Returns `(wrapper inputs, model, tasks, start, per_task)` with each
    task's gradient of every weight, dense, computed by hand."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"x0": rng.standard_normal(200), "c": rng.choice(list("abcdef"), 200)}
    )
    effect = dict(zip("abcdef", [1.0, -1.0, 0.5, 0.0, 2.0, -0.5]))
    frame["t0"] = frame["x0"] + frame["c"].map(effect)
    frame["t1"] = -frame["t0"]
    tasks = [Task("t0", "regression"), Task("t1", "regression")]
    specs = keras_mtl.infer_features(frame, labels=["t0", "t1"])
    arrays = data.dataframe_to_arrays(frame, specs, tasks)
    keras.utils.set_random_seed(0)
    model = models.shared_bottom(specs, tasks, bottom_units=[4], tower_units=[])
    model.get_layer("t1").set_weights(model.get_layer("t0").get_weights())
    start = [w.numpy().copy() for w in model.trainable_weights]
    return (
        arrays,
        model,
        tasks,
        start,
        _mse_task_gradients(model, tasks, arrays),
    )


def test_dense_shared_scope_sums_embedding_gradients_sparsely():
    arrays, model, tasks, start, per_task = _conflicting_embedding_model()
    paths = [w.path for w in model.trainable_weights]
    table = paths.index("input_block/embedding_8/embeddings")
    bottom = [k for k, p in enumerate(paths) if p.startswith("bottom/")]
    # MGDA on the bottom alone (two tasks: the closed form).
    g0, g1 = (
        np.concatenate([grads[k].ravel() for k in bottom]).astype("float64")
        for grads in per_task
    )
    a0 = np.clip((g1 - g0) @ g1 / ((g0 - g1) @ (g0 - g1)), 0.0, 1.0)
    assert 0.0 < a0 < 1.0
    wrapper = _compile(
        model,
        tasks,
        weighting={"name": "mgda", "shared_scope": "dense"},
        optimizer="sgd",
        learning_rate=0.1,
    )
    sparse = _record_sparse_updates(wrapper)
    history = _fit(wrapper, arrays, batch_size=200)
    assert sparse == ["input_block/embedding_8/embeddings"]
    np.testing.assert_allclose(history.history["t0_mgda_alpha"], [a0], 1e-4)
    got = [w.numpy() for w in model.trainable_weights]
    for k in range(len(paths)):
        if k in bottom:
            g = a0 * per_task[0][k] + (1 - a0) * per_task[1][k]
        else:  # the table: the summed gradient; the heads: their own
            g = per_task[0][k] + per_task[1][k]
        np.testing.assert_allclose(
            got[k], start[k] - 0.1 * g, rtol=1e-4, atol=1e-6
        )
    # With the default scope the table takes part in the combination.
    arrays, model, tasks, start, per_task = _conflicting_embedding_model()
    wrapper = _compile(
        model, tasks, weighting="mgda", optimizer="sgd", learning_rate=0.1
    )
    history = _fit(wrapper, arrays, batch_size=200)
    assert abs(history.history["t0_mgda_alpha"][0] - a0) > 1e-3
    moved = model.trainable_weights[table].numpy() - start[table]
    summed = -0.1 * (per_task[0][table] + per_task[1][table])
    assert not np.allclose(moved, summed, rtol=1e-3)


def _is_sparse(grad):
    return isinstance(grad, tf.IndexedSlices)


def _record_sparse_updates(wrapper):
    """Makes `wrapper` record the paths of the variables it updates with a
    sparse gradient; returns that (growing) list."""
    sparse = []
    apply = wrapper._apply_gradients

    def spy(grads, variables):
        sparse.extend(v.path for g, v in zip(grads, variables) if _is_sparse(g))
        return apply(grads, variables)

    wrapper._apply_gradients = spy
    return sparse


def _mse_losses(model, tasks, arrays):
    """Each regression task's MSE over all rows (their sample weights are
    all 1 here), by hand."""
    x, y, sw = arrays
    assert all(np.all(sw[t.name] == 1) for t in tasks)
    pred = model({k: tf.constant(v) for k, v in x.items()})
    return [
        float(np.mean((y[t.name] - np.asarray(pred[t.name])[:, 0]) ** 2))
        for t in tasks
    ]


def _tracked_variables(model, scope):
    """`(paths, table, balanced)`: the weights' paths, the embedding
    table's index, and the indices DB-MTL and MoCo average per task (the
    shared bottom, and the table unless `scope` is "dense")."""
    paths = [w.path for w in model.trainable_weights]
    table = paths.index("input_block/embedding_8/embeddings")
    balanced = [
        k
        for k, p in enumerate(paths)
        if p.startswith("bottom/") or (scope == "all" and k == table)
    ]
    return paths, table, balanced


@pytest.mark.parametrize("scope", ["all", "dense"])
def test_db_mtl_step_balances_log_loss_gradients(scope):
    arrays, model, tasks, start, per_task = _conflicting_embedding_model()
    losses = _mse_losses(model, tasks, arrays)
    # Gradients of log L_k; after one step each average is 0.1 of its
    # gradient (decay 0.9 / 1^0.5 from zeros).
    log_grads = [
        [g / loss for g in grads] for grads, loss in zip(per_task, losses)
    ]
    paths, table, balanced = _tracked_variables(model, scope)
    norms = np.array(
        [
            0.1 * np.sqrt(sum(np.sum(grads[k] ** 2) for k in balanced))
            for grads in log_grads
        ]
    )
    alpha = norms.max() / norms
    assert not np.allclose(alpha, 1.0)
    wrapper = _compile(
        model,
        tasks,
        weighting={"name": "db_mtl", "shared_scope": scope},
        optimizer="sgd",
        learning_rate=0.1,
    )
    sparse = _record_sparse_updates(wrapper)
    history = _fit(wrapper, arrays, batch_size=200)
    assert sparse == ([] if scope == "all" else [paths[table]])
    logged = [history.history[f"t{k}_db_alpha"][0] for k in (0, 1)]
    np.testing.assert_allclose(logged, alpha, rtol=1e-4)
    got = [w.numpy() for w in model.trainable_weights]
    for k in range(len(paths)):
        if k in balanced:
            g = sum(a * 0.1 * grads[k] for a, grads in zip(alpha, log_grads))
        else:  # heads: their own; the table under "dense": the sum
            g = log_grads[0][k] + log_grads[1][k]
        np.testing.assert_allclose(
            got[k], start[k] - 0.1 * g, rtol=1e-4, atol=1e-6
        )
    strategy = wrapper.weighting
    assert float(strategy.step.numpy()) == 1.0
    assert len(strategy.averages) == len(balanced)
    for average, k in zip(strategy.averages, balanced):
        expected = np.stack([0.1 * grads[k] for grads in log_grads])
        np.testing.assert_allclose(average.numpy(), expected, rtol=1e-4)
    # Warm starts carry the step count, not the averages.
    assert set(strategy.get_state()) == {"step", "alpha"}


@pytest.mark.parametrize("scope", ["all", "dense"])
def test_moco_step_tracks_rescaled_gradients_and_moves_lambda(scope):
    arrays, model, tasks, start, per_task = _conflicting_embedding_model()
    losses = _mse_losses(model, tasks, arrays)
    paths, table, balanced = _tracked_variables(model, scope)
    # Each task's gradient on the balanced variables, rescaled to its loss;
    # the first step's averages are half of them (0 - 0.5 (0 - g)).
    flat = [
        np.concatenate([grads[k].ravel() for k in balanced]).astype("float64")
        for grads in per_task
    ]
    scales = [
        loss / (np.linalg.norm(f) + 1e-8) for loss, f in zip(losses, flat)
    ]
    tracked = np.stack([0.5 * s * f for s, f in zip(scales, flat)])
    logits = 0.5 - 0.1 * (tracked @ tracked.T) @ np.array([0.5, 0.5])
    lambdas = np.exp(logits) / np.exp(logits).sum()
    assert abs(lambdas[0] - lambdas[1]) > 1e-3
    wrapper = _compile(
        model,
        tasks,
        weighting={"name": "moco", "shared_scope": scope},
        optimizer="sgd",
        learning_rate=0.1,
    )
    sparse = _record_sparse_updates(wrapper)
    history = _fit(wrapper, arrays, batch_size=200)
    assert sparse == ([] if scope == "all" else [paths[table]])
    logged = [history.history[f"t{k}_moco_lambda"][0] for k in (0, 1)]
    np.testing.assert_allclose(logged, lambdas, rtol=1e-4)
    got = [w.numpy() for w in model.trainable_weights]
    direction = lambdas @ tracked
    offset = 0
    for k in range(len(paths)):
        if k in balanced:
            size = start[k].size
            g = direction[offset : offset + size].reshape(start[k].shape)
            offset += size
        else:  # heads: their own; the table under "dense": the sum
            g = per_task[0][k] + per_task[1][k]
        np.testing.assert_allclose(
            got[k], start[k] - 0.1 * g, rtol=1e-4, atol=1e-6
        )
    strategy = wrapper.weighting
    assert set(strategy.get_state()) == {"step", "alpha", "lambdas"}
    np.testing.assert_allclose(strategy.lambdas.numpy(), lambdas, rtol=1e-4)
    # Later steps start from the stored lambda and keep it on the simplex.
    _fit(wrapper, arrays, batch_size=100)
    assert float(strategy.step.numpy()) == 3.0
    np.testing.assert_allclose(strategy.lambdas.numpy().sum(), 1.0, rtol=1e-6)


def test_famo_step_weights_the_losses_and_moves_the_logits(make_problem):
    model, tasks, arrays, start, per_task, shared, flat = (
        _conflicting_shared_bottom(make_problem)
    )
    x, y, sw = arrays
    before = _mse_losses(model, tasks, arrays)
    # Logits start at 0: z is uniform and w_k = (1 / L_k) / sum_j 1 / L_j.
    weights = (1.0 / before) / np.sum(1.0 / before)
    wrapper = _compile(
        model, tasks, weighting="famo", optimizer="sgd", learning_rate=0.1
    )
    history = _fit(wrapper, arrays, batch_size=200)
    for k, (got, w0) in enumerate(zip(model.trainable_weights, start)):
        g = weights[0] * per_task[0][k] + weights[1] * per_task[1][k]
        np.testing.assert_allclose(
            got.numpy(), w0 - 0.1 * g, rtol=1e-4, atol=1e-6
        )
    logged = [history.history[f"t{k}_weight"][0] for k in (0, 1)]
    np.testing.assert_allclose(logged, weights, rtol=1e-5)
    # Then one Adam step on the logits from the same batch's losses after
    # the update: the first Adam step is -lr * sign(gradient).
    after = _mse_losses(model, tasks, arrays)
    delta = np.log(before) - np.log(after)
    grad = 0.5 * (delta - delta.mean())
    assert np.all(np.abs(grad) > 1e-3)
    logits = keras.ops.convert_to_numpy(wrapper.weighting.logits)
    np.testing.assert_allclose(logits, -0.025 * np.sign(grad), rtol=1e-4)


def _mse_losses(model, tasks, arrays):
    x, y, sw = arrays
    pred = model.predict(x, batch_size=len(sw["t0"]), verbose=0)
    loss = keras.losses.MeanSquaredError(reduction="mean_with_sample_weight")
    return np.array(
        [float(loss(y[t.name], pred[t.name], sw[t.name])) for t in tasks]
    )


def test_famo_extra_forward_pass_leaves_batch_norm_statistics(make_problem):
    # The batch is evaluated again after the update in training mode; the
    # moving statistics must be those of the one real forward pass, as with
    # fixed weights.
    specs, tasks, arrays = make_problem(
        200, [[1, 0, 0, 0], [0, 1, 0, 0]], [0.1, 0.1], ["binary", "binary"]
    )
    keras.utils.set_random_seed(0)
    model = models.mmoe(
        specs,
        tasks,
        num_experts=2,
        expert_units=[4],
        tower_units=[4],
        expert_normalization="batch",
    )
    start = model.get_weights()

    def statistics():
        return [
            v.numpy()
            for v in model.non_trainable_variables
            if "moving" in v.path
        ]

    initial = statistics()
    assert initial
    moving = {}
    for strategy in ("fixed", "famo"):
        model.set_weights(start)
        wrapper = _compile(model, tasks, weighting=strategy, optimizer="sgd")
        _fit(wrapper, arrays, batch_size=200)
        moving[strategy] = statistics()
    # The step did update them (the variances; the means of standardized
    # inputs stay near 0).
    assert any(not np.allclose(a, s) for a, s in zip(moving["fixed"], initial))
    for a, b in zip(moving["fixed"], moving["famo"]):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("weighting", [None, "fixed", "pcgrad"], ids=str)
def test_kernel_regularizer_adds_its_gradient_to_every_kernel(
    make_problem, weighting
):
    # One SGD step with an L2(l) penalty on the kernels moves each kernel by
    # -lr * 2 * l * w0 more than the same step without it (plain Keras, the
    # wrapper's single backward pass and its per-task gradient path).
    specs, tasks, arrays = make_problem(
        200, [[1, 0, 0, 0], [0, 1, 0, 0]], [0.1, 0.1], ["binary", "binary"]
    )
    l2, lr = 0.05, 0.1
    keras.utils.set_random_seed(5)
    start = models.shared_bottom(specs, tasks, bottom_units=[8]).get_weights()
    trained = {}
    for penalty in (None, keras.regularizers.L2(l2)):
        model = models.shared_bottom(
            specs, tasks, bottom_units=[8], kernel_regularizer=penalty
        )
        model.set_weights(start)
        kwargs = dict(optimizer="sgd", learning_rate=lr)
        if weighting is None:
            models.compile_model(
                model, tasks, metrics={t.name: [] for t in tasks}, **kwargs
            )
            wrapper = model
        else:
            wrapper = _compile(model, tasks, weighting=weighting, **kwargs)
        _fit(wrapper, arrays, batch_size=200)
        trained[penalty is not None] = model
    paths = [w.path for w in trained[True].weights]
    assert sum("kernel" in p for p in paths) == 5  # bottom, 2 towers, 2 heads
    for path, w0, a, b in zip(
        paths,
        start,
        trained[True].get_weights(),
        trained[False].get_weights(),
    ):
        shift = -lr * 2 * l2 * w0 if "kernel" in path else 0.0 * w0
        np.testing.assert_allclose(a - b, shift, atol=2e-6, err_msg=path)


def test_rlw_trains_on_random_weights_and_evaluates_on_fixed_ones(
    make_problem,
):
    specs, tasks, arrays = make_problem(
        300, [[1, 0, 0, 0], [0, 1, 0, 0]], [0.3, 0.3], ["binary", "binary"]
    )
    keras.utils.set_random_seed(4)
    start = models.shared_bottom(specs, tasks, bottom_units=[8]).get_weights()
    wrappers = {}
    for weighting in ("fixed", {"name": "rlw", "seed": 0}):
        model = models.shared_bottom(specs, tasks, bottom_units=[8])
        model.set_weights(start)
        wrappers[str(weighting)] = _compile(
            model, tasks, weighting=weighting, optimizer="sgd"
        )
    fixed, rlw = wrappers.values()
    x, y, sw = arrays
    kwargs = dict(sample_weight=sw, batch_size=100, verbose=0)
    np.testing.assert_allclose(
        rlw.evaluate(x, y, **kwargs), fixed.evaluate(x, y, **kwargs), 1e-6
    )
    _fit(fixed, arrays)
    history = _fit(rlw, arrays)
    assert history.history["t0_weight"] == [1.0]
    assert np.isfinite(history.history["loss"]).all()
    # Three steps with other weights than 1 and 1: other updates.
    moved = [
        not np.allclose(a, b)
        for a, b in zip(rlw.model.get_weights(), fixed.model.get_weights())
    ]
    assert all(moved)


def test_lr_multipliers_scale_updates_of_task_owned_variables_only(
    make_problem,
):
    specs, tasks, arrays = make_problem(
        200, [[1, 0, 0, 0], [0, 1, 0, 0]], [0.1, 0.1], ["binary", "binary"]
    )
    base = models.shared_bottom(specs, tasks, bottom_units=[8], tower_units=[4])
    start = base.get_weights()
    deltas = {}
    for name, multipliers in (("plain", None), ("scaled", {"t0": 3.0})):
        model = models.shared_bottom(
            specs, tasks, bottom_units=[8], tower_units=[4]
        )
        model.set_weights(start)
        wrapper = _compile(
            model, tasks, lr_multipliers=multipliers, learning_rate=0.01
        )
        _fit(wrapper, arrays, batch_size=200)
        deltas[name] = {
            v.path: v.numpy() - s for v, s in zip(model.weights, start)
        }
    for path, plain in deltas["plain"].items():
        scaled = deltas["scaled"][path]
        if path.startswith(("tower_t0", "t0/")):
            np.testing.assert_allclose(
                scaled, 3.0 * plain, rtol=1e-4, atol=1e-7
            )
            assert np.abs(plain).max() > 0
        else:  # shared bottom, t1's tower and head
            np.testing.assert_allclose(scaled, plain, rtol=1e-5, atol=1e-8)


def test_lr_multipliers_refuse_a_task_that_owns_no_variable(make_problem):
    specs, tasks, _ = make_problem(
        50, [[1, 0, 0, 0], [0, 1, 0, 0]], [0.1, 0.1], ["binary", "binary"]
    )
    tasks = models.tasks_for(
        "esmm", [Task("click"), Task("conversion", space="click")]
    )
    model = models.esmm(specs, tasks, tower_units=[4])
    with pytest.raises(ValueError, match="Task 'ctr' owns no variable"):
        training.MultiTaskModel(model, tasks, lr_multipliers={"ctr": 2.0})
    with pytest.raises(ValueError, match="unknown task"):
        training.MultiTaskModel(model, tasks, lr_multipliers={"nope": 2.0})


def _tags(directory):
    tags = set()
    for path in glob.glob(str(directory / "events*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    return tags


def test_task_weights_reach_history_and_tensorboard(make_problem, tmp_path):
    specs, tasks, arrays = make_problem(
        200, [[1, 0, 0, 0], [0, 1, 0, 0]], [0.1, 0.1], ["binary", "binary"]
    )
    model = models.shared_bottom(specs, tasks, bottom_units=[8])
    wrapper = _compile(model, tasks, weighting="dwa", run_eagerly=True)
    logger = training.TaskWeightLogger(log_dir=str(tmp_path))
    history = _fit(wrapper, arrays, epochs=3, callbacks=[logger])
    assert history.history["t0_weight"][:2] == [1.0, 1.0]
    assert history.history["t0_weight"][2] != 1.0  # DWA's first update
    assert {"epoch_t0_weight", "epoch_t1_weight"} <= _tags(tmp_path / "train")


def test_task_weights_reach_the_keras_tensorboard_callback(
    make_problem, tmp_path
):
    pytest.importorskip(
        "tensorboard",
        reason="keras.callbacks.TensorBoard needs the tensorboard package, "
        "which is not installed",
    )
    specs, tasks, arrays = make_problem(
        200, [[1, 0, 0, 0], [0, 1, 0, 0]], [0.1, 0.1], ["binary", "binary"]
    )
    model = models.shared_bottom(specs, tasks, bottom_units=[8])
    wrapper = training.compile(model, tasks, weighting="uncertainty")
    board = keras.callbacks.TensorBoard(str(tmp_path), write_graph=False)
    _fit(wrapper, arrays, epochs=2, callbacks=[board])
    assert {"epoch_t0_weight", "epoch_t0_loss"} <= _tags(tmp_path / "train")


def test_save_writes_a_plain_model_and_the_strategy_state(
    make_problem, tmp_path
):
    specs, tasks, arrays = make_problem(
        200, [[1, 0, 0, 0], [0, 1, 0, 0]], [0.1, 0.1], ["binary", "binary"]
    )
    model = models.mmoe(
        specs, tasks, num_experts=2, expert_units=[4], tower_units=[4]
    )
    wrapper = _compile(
        model,
        tasks,
        weighting="uncertainty",
        learning_rate=0.05,
        run_eagerly=True,
    )
    _fit(wrapper, arrays)
    wrapper.save(tmp_path / "model.keras")
    assert (tmp_path / "model.weighting.json").is_file()
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    assert isinstance(loaded, keras.Model)
    assert not isinstance(loaded, training.MultiTaskModel)
    x = {k: v[:16] for k, v in arrays[0].items()}
    for name, value in loaded.predict(x, verbose=0).items():
        np.testing.assert_allclose(
            value, wrapper.predict(x, verbose=0)[name], rtol=1e-6
        )
    # The wrapper's config round-trips (without weights).
    clone = training.MultiTaskModel.from_config(wrapper.get_config())
    assert isinstance(clone.weighting, training.UncertaintyWeighting)
    assert [t.name for t in clone.tasks] == ["t0", "t1"]
