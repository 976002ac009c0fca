"""The published formulas: PCGrad, GradVac, MGDA, CAGrad, IMTL, Nash-MTL,
Aligned-MTL, UPGrad, FAMO, GLS, DWA, uncertainty and GradNorm."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_mtl import Task
from keras_mtl import training
from keras_mtl.training import weighting


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), dtype="float64")


def _pcgrad_reference(grads, orders):
    grads = np.asarray(grads, dtype="float64")
    out = []
    for i, g in enumerate(grads):
        g = g.copy()
        for j in orders[i]:
            if j == i:
                continue
            dot = g @ grads[j]
            if dot < 0:
                g = g - dot / (grads[j] @ grads[j]) * grads[j]
        out.append(g)
    return np.stack(out)


@pytest.mark.backend
def test_pcgrad_removes_exactly_the_conflicting_component():
    g1 = np.array([1.0, 0.0, 2.0])
    g2 = np.array([-1.0, 1.0, 0.0])
    assert g1 @ g2 < 0  # they conflict
    out = _np(training.pcgrad_project(np.stack([g1, g2]).astype("float32")))
    # g1 minus its component along g2, and the other way round.
    np.testing.assert_allclose(out[0], g1 - (g1 @ g2) / (g2 @ g2) * g2, 1e-6)
    np.testing.assert_allclose(out[1], g2 - (g1 @ g2) / (g1 @ g1) * g1, 1e-6)
    np.testing.assert_allclose(out[0], [0.5, 0.5, 2.0], atol=1e-6)
    # What is left no longer conflicts: it is orthogonal to the other task.
    assert abs(out[0] @ g2) < 1e-6 and abs(out[1] @ g1) < 1e-6


def _min_norm_reference(grads):
    """The minimum of |a G|^2 over the simplex, by SciPy's SLSQP."""
    from scipy.optimize import minimize

    grads = np.asarray(grads, dtype="float64")
    gram = grads @ grads.T
    k = len(grads)
    result = minimize(
        lambda a: a @ gram @ a,
        np.full(k, 1.0 / k),
        jac=lambda a: 2.0 * gram @ a,
        bounds=[(0.0, 1.0)] * k,
        constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1.0}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    return result.x


@pytest.mark.backend
def test_mgda_two_tasks_is_the_closed_form():
    np.testing.assert_allclose(
        _np(training.mgda_weights([[1.0, 0.0], [0.0, 2.0]])), [0.8, 0.2], 1e-6
    )
    rng = np.random.default_rng(0)
    for _ in range(5):
        g1, g2 = rng.normal(size=(2, 7))
        expected = np.clip((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2)), 0, 1)
        alpha = _np(training.mgda_weights(np.stack([g1, g2]), iterations=1))
        np.testing.assert_allclose(alpha, [expected, 1 - expected], atol=1e-5)
    # One gradient inside the other's direction: the smaller one alone.
    alpha = _np(training.mgda_weights([[1.0, 1.0], [3.0, 3.0]]))
    np.testing.assert_allclose(alpha, [1.0, 0.0], atol=1e-6)


@pytest.mark.backend
def test_mgda_matches_a_quadratic_programming_reference():
    rng = np.random.default_rng(1)
    for num_tasks in (3, 4):
        grads = rng.normal(size=(num_tasks, 6)).astype("float32")
        grads[0] += 2.0  # unequal norms and a non-trivial solution
        alpha = _np(training.mgda_weights(grads))
        expected = _min_norm_reference(grads)
        assert np.all(alpha >= -1e-7)
        np.testing.assert_allclose(alpha.sum(), 1.0, rtol=1e-5)
        np.testing.assert_allclose(alpha, expected, atol=1e-3)
        norm = np.sum((alpha @ grads) ** 2)
        best = np.sum((expected @ grads) ** 2)
        np.testing.assert_allclose(norm, best, rtol=1e-3)


@pytest.mark.backend
def test_mgda_direction_descends_for_every_task():
    grads = np.array(
        [[3.0, 0.0, 1.0], [-1.0, 2.0, 0.5], [0.5, -1.0, 2.0]], "float32"
    )
    alpha = _np(training.mgda_weights(grads))
    d = alpha @ grads
    # KKT of the min-norm problem: d . g_k >= |d|^2 > 0 for every task.
    assert d @ d > 0.1
    assert np.all(grads @ d >= (d @ d) * (1 - 1e-3))


@pytest.mark.backend
def test_mgda_pareto_stationary_point_and_one_task():
    # Opposite gradients: the convex hull holds 0; no common descent.
    alpha = _np(training.mgda_weights([[1.0, 2.0], [-1.0, -2.0]]))
    np.testing.assert_allclose(alpha, [0.5, 0.5], atol=1e-6)
    np.testing.assert_array_equal(_np(training.mgda_weights([[1.0, 2.0]])), [1])
    with pytest.raises(ValueError, match="`iterations` must be"):
        training.mgda_weights([[1.0], [2.0]], iterations=0)
    with pytest.raises(ValueError, match="`grads` must be a 2-D"):
        training.mgda_weights([1.0, 2.0])


def _conflicting_grads(rng, num_tasks, dim=12, scales=None):
    """Random task gradients, the second pulled against the first; with
    `scales=(low, high)` each task's gradient is rescaled by a factor drawn
    from that range (unequal norms)."""
    grads = rng.normal(size=(num_tasks, dim))
    if num_tasks > 1:
        grads[1] -= 0.8 * grads[0]  # a conflict
    if scales is not None:
        grads *= rng.uniform(*scales, size=(num_tasks, 1))
    return grads


def _cagrad_reference(grads, c):
    """CAGrad's weights by SciPy's SLSQP (as the authors' code and LibMTL
    solve them), and the direction from them."""
    from scipy.optimize import minimize

    grads = np.asarray(grads, dtype="float64")
    gram = grads @ grads.T
    k = len(grads)
    radius = c * np.sqrt(gram.sum())
    result = minimize(
        lambda w: w @ gram.sum(axis=1) + radius * np.sqrt(w @ gram @ w),
        np.full(k, 1.0 / k),
        bounds=[(0.0, 1.0)] * k,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    g_w = result.x @ grads
    direction = grads.sum(axis=0) + radius * g_w / np.linalg.norm(g_w)
    return direction / (1.0 + c * c), result.x


@pytest.mark.backend
def test_cagrad_matches_a_slsqp_reference():
    rng = np.random.default_rng(2)
    for num_tasks in (2, 3, 4):
        for c in (0.2, 0.5, 1.0):
            grads = _conflicting_grads(rng, num_tasks, dim=8)
            d, w = training.cagrad_direction(grads.astype("float32"), c)
            expected_d, expected_w = _cagrad_reference(grads, c)
            d, w = _np(d), _np(w)
            assert np.all(w >= 0) and abs(w.sum() - 1.0) < 1e-5
            np.testing.assert_allclose(w, expected_w, atol=1e-3)
            scale = np.linalg.norm(grads.sum(axis=0))
            np.testing.assert_allclose(d, expected_d, atol=1e-3 * scale)


@pytest.mark.backend
def test_cagrad_direction_is_the_best_for_the_worst_task_in_its_ball():
    # max_d min_k g_k . d over |d - g_0| <= c |g_0| (before the rescaling
    # by 1 + c^2): no point of the ball does better for the worst task.
    rng = np.random.default_rng(3)
    grads = np.array([[2.0, 0.0, 0.5], [-1.0, 1.0, 0.0], [0.0, -0.5, 1.0]])
    c = 0.6
    d, _ = training.cagrad_direction(grads.astype("float32"), c, 200)
    d = _np(d) * (1.0 + c * c)
    g0 = grads.sum(axis=0)
    radius = c * np.linalg.norm(g0)
    np.testing.assert_allclose(np.linalg.norm(d - g0), radius, rtol=1e-4)
    worst = np.min(grads @ d)
    assert worst > np.min(grads @ g0)  # better than the plain sum
    offsets = rng.normal(size=(20000, 3))
    offsets *= (
        radius
        * rng.random((20000, 1)) ** (1 / 3)
        / np.linalg.norm(offsets, axis=1, keepdims=True)
    )
    others = np.min((g0 + offsets) @ grads.T, axis=1)
    assert others.max() <= worst + 1e-4 * radius * np.abs(grads).max()


@pytest.mark.backend
def test_cagrad_without_radius_is_the_summed_gradient():
    grads = np.array([[1.0, 2.0, 0.0], [-3.0, 0.5, 1.0]], "float32")
    d, _ = training.cagrad_direction(grads, c=0.0)
    np.testing.assert_allclose(_np(d), grads.sum(axis=0), rtol=1e-6)
    d, w = training.cagrad_direction(grads[:1], c=0.5)
    # One task: w = 1 and d = g (1 + c) / (1 + c^2).
    np.testing.assert_allclose(_np(w), [1.0])
    np.testing.assert_allclose(_np(d), grads[0] * 1.5 / 1.25, rtol=1e-6)
    with pytest.raises(ValueError, match="`c` must be"):
        training.cagrad_direction(grads, c=-0.1)
    with pytest.raises(ValueError, match="`grads` must be a 2-D"):
        training.cagrad_direction([1.0, 2.0])
    with pytest.raises(ValueError, match="`iterations` must be"):
        training.CAGradWeighting(iterations=0)


@pytest.mark.backend
def test_pcgrad_leaves_non_conflicting_gradients_unchanged():
    grads = np.array([[1.0, 0.0, 2.0], [1.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    out = _np(training.pcgrad_project(grads.astype("float32")))
    np.testing.assert_array_equal(out, grads)


@pytest.mark.backend
def test_pcgrad_follows_each_tasks_order_like_the_reference():
    grads = np.array(
        [[1.0, -2.0, 0.5], [-1.0, 1.0, 1.0], [0.5, 1.0, -2.0]], "float32"
    )
    orders = np.array([[2, 1, 0], [0, 2, 1], [1, 2, 0]], "int32")
    out = _np(training.pcgrad_project(grads, orders))
    np.testing.assert_allclose(out, _pcgrad_reference(grads, orders), 1e-5)
    # The order matters when three tasks conflict.
    other = _np(training.pcgrad_project(grads))
    assert not np.allclose(out, other)


@pytest.mark.backend
def test_dwa_weights_follow_the_published_formula():
    history = np.array([[1.0, 2.0, 0.5], [0.8, 1.9, 0.45], [0.6, 1.9, 0.5]])
    # Liu et al. 2019, eq. 7: lambda_k = K exp(w_k / T) / sum_i exp(w_i / T)
    # with w_k = L_k(t-1) / L_k(t-2).
    r = history[-1] / history[-2]
    expected = 3 * np.exp(r / 2.0) / np.exp(r / 2.0).sum()
    np.testing.assert_allclose(training.dwa_weights(history), expected)
    np.testing.assert_allclose(
        training.dwa_weights(history, temperature=0.5),
        3 * np.exp(r / 0.5) / np.exp(r / 0.5).sum(),
    )
    # The first two epochs use weight 1.
    np.testing.assert_array_equal(training.dwa_weights(history[:1]), [1, 1, 1])
    np.testing.assert_array_equal(
        training.dwa_weights(np.zeros((0, 3))), [1, 1, 1]
    )
    # The task whose loss fell least gets the largest weight.
    assert np.argmax(training.dwa_weights(history)) == 2


@pytest.mark.backend
def test_dwa_strategy_applies_the_formula_to_epoch_average_losses():
    tasks = [Task("a"), Task("b"), Task("idle", weight=0.0), Task("c")]
    strategy = training.DWAWeighting(temperature=2.0)
    strategy.setup(tasks)
    strategy.set_base_weights([1.0, 2.0, 0.0, 1.0])
    batches = [  # two batches per epoch, four epochs
        [[1.0, 2.0, 5.0, 0.5], [1.2, 2.2, 5.0, 0.7]],
        [[0.8, 2.0, 5.0, 0.5], [0.6, 1.8, 5.0, 0.5]],
        [[0.5, 1.9, 5.0, 0.5], [0.5, 1.7, 5.0, 0.4]],
        [[0.4, 1.8, 5.0, 0.5], [0.4, 1.8, 5.0, 0.5]],
    ]
    averages = []
    for epoch, epoch_batches in enumerate(batches):
        used = _np(strategy.current_weights())
        if epoch < 2:
            np.testing.assert_allclose(used, [1.0, 2.0, 0.0, 1.0])
        else:
            # The weights of this epoch come from the previous two.
            prev = np.array(averages[-2:])[:, [0, 1, 3]]
            lam = training.dwa_weights(prev, 2.0)
            np.testing.assert_allclose(
                used, [lam[0], 2.0 * lam[1], 0.0, lam[2]], rtol=1e-6
            )
        for losses in epoch_batches:
            total = strategy.combine(
                ops.convert_to_tensor(losses, "float32"), training=True
            )
            np.testing.assert_allclose(_np(total), used @ losses, rtol=1e-6)
        # Validation losses do not count.
        strategy.combine(ops.ones((4,)), training=False)
        averages.append(np.mean(epoch_batches, axis=0))
        strategy.on_epoch_end(epoch)


@pytest.mark.backend
def test_rlw_draws_weights_whose_mean_is_the_fixed_weights():
    tasks = [Task("a"), Task("b", weight=2.0), Task("idle", weight=0.0)]
    strategy = training.RLWWeighting(seed=3)
    strategy.setup(tasks)
    draws = np.stack([_np(strategy.random_weights()) for _ in range(4000)])
    # The idle task stays at 0; the others are b_k * 2 * softmax(z).
    np.testing.assert_array_equal(draws[:, 2], 0.0)
    assert np.all(draws[:, :2] > 0)
    np.testing.assert_allclose(draws[:, 0] + draws[:, 1] / 2.0, 2.0, 1e-5)
    # softmax of i.i.d. normals: each share averages 1/2 (standard error
    # of the mean here about 0.004).
    np.testing.assert_allclose(draws[:, :2].mean(axis=0), [1.0, 2.0], 0.02)
    # A new trade-off every step, spread well beyond rounding.
    assert draws[:, 0].std() > 0.3
    # Training combines the losses with one draw; evaluation with the
    # fixed weights.
    losses = ops.convert_to_tensor([1.0, 1.0, 5.0])
    total = _np(strategy.combine(losses, training=True))
    assert 0.0 < total < 4.0 and not np.isclose(total, 3.0)
    np.testing.assert_allclose(_np(strategy.combine(losses)), 3.0)
    np.testing.assert_allclose(_np(strategy.current_weights()), [1, 2, 0])
    # The same seed draws the same sequence.
    again = training.RLWWeighting(seed=3)
    again.setup(tasks)
    np.testing.assert_allclose(_np(again.random_weights()), draws[0])


@pytest.mark.backend
def test_uncertainty_loss_has_kendalls_classification_and_regression_forms():
    losses = np.array([0.7, 2.0, 0.3], "float32")
    log_vars = np.array([0.5, -1.0, 1.5], "float32")
    regression = [False, True, False]
    terms, weights = training.uncertainty_loss(losses, log_vars, regression)
    np.testing.assert_allclose(
        _np(terms),
        [
            np.exp(-0.5) * 0.7 + 0.25,  # classification: e^-s L + s/2
            0.5 * np.exp(1.0) * 2.0 - 0.5,  # regression: e^-s L / 2 + s/2
            np.exp(-1.5) * 0.3 + 0.75,
        ],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        _np(weights), [np.exp(-0.5), 0.5 * np.exp(1.0), np.exp(-1.5)], 1e-6
    )


@pytest.mark.backend
def test_uncertainty_log_variance_optimum_gives_the_noisier_task_less_weight():
    # d/ds [e^-s L + s/2] = 0 at s = log(2L): weight e^-s = 1 / (2L).
    strategy = training.UncertaintyWeighting()
    strategy.setup([Task("clean"), Task("noisy"), Task("r", "regression")])
    losses = np.array([0.1, 0.6, 4.0], "float32")
    strategy.log_vars.assign(np.log([0.2, 1.2, 4.0]).astype("float32"))
    weights = _np(strategy.current_weights())
    np.testing.assert_allclose(weights, [5.0, 1 / 1.2, 0.125], rtol=1e-5)
    # Stationary point: d/ds (w(s) L + s / 2) = -w L + 1/2 = 0.
    np.testing.assert_allclose(weights * losses, 0.5, rtol=1e-5)
    assert weights[0] > weights[1]


@pytest.mark.backend
def test_gradnorm_gradient_is_the_derivative_of_l_grad():
    weights = np.array([1.0, 0.5, 2.0], "float32")
    norms = np.array([2.0, 1.0, 0.3], "float32")
    ratios = np.array([1.0, 1.5, 0.5], "float32")
    grad, weighted, targets = training.gradnorm_gradient(
        weights, norms, ratios, alpha=1.5
    )
    g = weights * norms  # G_k = w_k g_k
    rates = ratios / ratios.mean()
    expected_targets = g.mean() * rates**1.5
    np.testing.assert_allclose(_np(weighted), g, rtol=1e-6)
    np.testing.assert_allclose(_np(targets), expected_targets, rtol=1e-6)
    # d/dw_k sum_i |w_i g_i - target_i| (targets held constant).
    np.testing.assert_allclose(
        _np(grad), np.sign(g - expected_targets) * norms, rtol=1e-6
    )

    def l_grad(w):
        return np.abs(w * norms - expected_targets).sum()

    # A small step down the gradient lowers L_grad.
    step = weights - 0.01 * _np(grad)
    assert l_grad(step) < l_grad(weights)
    # A slower task (higher loss ratio) gets a larger target.
    assert _np(targets)[1] > _np(targets)[0] > _np(targets)[2]


@pytest.mark.backend
def test_get_accepts_names_mappings_and_instances_and_refuses_others():
    assert isinstance(training.get_weighting("fixed"), training.FixedWeighting)
    assert isinstance(training.get_weighting(None), training.FixedWeighting)
    gradnorm = training.get_weighting({"name": "gradnorm", "alpha": 0.5})
    assert isinstance(gradnorm, training.GradNormWeighting)
    assert gradnorm.alpha == 0.5
    dwa = training.DWAWeighting(temperature=1.0)
    assert training.get_weighting(dwa) is dwa
    with pytest.raises(ValueError, match="Unknown `weighting`.*'magic'"):
        training.get_weighting("magic")
    with pytest.raises(ValueError, match="beta"):
        training.get_weighting({"name": "gradnorm", "beta": 1})
    with pytest.raises(ValueError, match="`alpha` must be"):
        training.get_weighting({"name": "gradnorm", "alpha": -1})
    with pytest.raises(ValueError, match="`temperature` must be"):
        training.DWAWeighting(temperature=0)
    with pytest.raises(ValueError, match="`seed` must be"):
        training.get_weighting({"name": "rlw", "seed": "one"})
    with pytest.raises(ValueError, match=r"`beta` must be in \[0, 1\)"):
        training.get_weighting({"name": "db_mtl", "beta": 1.0})
    with pytest.raises(ValueError, match="`beta_sigma` must be"):
        training.get_weighting({"name": "db_mtl", "beta_sigma": -0.5})
    with pytest.raises(ValueError, match="`shared_scope` must be"):
        training.get_weighting({"name": "db_mtl", "shared_scope": "tables"})
    with pytest.raises(ValueError, match=r"`beta` must be in \(0, 1\]"):
        training.get_weighting({"name": "moco", "beta": 1.5})
    for key in ("beta", "gamma"):
        with pytest.raises(ValueError, match=f"`{key}` must be a positive"):
            training.get_weighting({"name": "moco", key: 0.0})
    with pytest.raises(ValueError, match="`rho` must be"):
        training.get_weighting({"name": "moco", "rho": -1.0})
    with pytest.raises(ValueError, match="`warmup_epochs` must be"):
        training.get_weighting({"name": "stch", "warmup_epochs": 0})
    with pytest.raises(ValueError, match="`alpha` must be a positive"):
        training.get_weighting({"name": "fairgrad", "alpha": 0})
    with pytest.raises(ValueError, match="strategy name"):
        training.get_weighting(3)
    names = "fixed uncertainty gradnorm dwa rlw pcgrad mgda cagrad imtl"
    names += " nash_mtl aligned_mtl famo gradvac gls upgrad db_mtl moco stch"
    names += " fairgrad"
    names = names.split()
    assert list(training.STRATEGIES) == names
    for name in names:
        assert training.get_weighting(name).strategy_name == name


def _imtl_reference(grads):
    """IMTL-G's weights by the paper's closed form, as LibMTL computes
    them: `a_{2:K} = g_1 U^T (D U^T)^{-1}`, `a_1 = 1 - sum a_{2:K}`."""
    grads = np.asarray(grads, dtype="float64")
    unit = grads / np.linalg.norm(grads, axis=1, keepdims=True)
    d = grads[:1] - grads[1:]
    u = unit[:1] - unit[1:]
    rest = grads[0] @ u.T @ np.linalg.inv(d @ u.T)
    return np.concatenate([[1.0 - rest.sum()], rest])


@pytest.mark.backend
def test_imtl_matches_the_closed_form_and_projects_equally():
    rng = np.random.default_rng(4)
    for num_tasks in (2, 3, 4, 5):
        grads = _conflicting_grads(rng, num_tasks, scales=(0.05, 20.0))
        alpha = _np(training.imtl_weights(grads.astype("float32")))
        np.testing.assert_allclose(alpha, _imtl_reference(grads), atol=1e-5)
        np.testing.assert_allclose(alpha.sum(), 1.0, atol=1e-6)
        # Impartial: d . u_k is the same for every task, and positive.
        d = alpha @ grads
        proj = grads @ d / np.linalg.norm(grads, axis=1)
        np.testing.assert_allclose(proj, proj[0], rtol=1e-4)
        assert proj[0] > 0


@pytest.mark.backend
def test_imtl_direction_ignores_gradient_norms():
    # Rescaling one task's gradient changes the weights, not the direction.
    grads = np.array([[2.0, 0.0, 1.0], [-1.0, 1.0, 0.0], [0.5, -2.0, 1.0]])
    d = _np(training.imtl_weights(grads.astype("float32"))) @ grads
    scaled = grads * np.array([[100.0], [1.0], [0.01]])
    alpha = _np(training.imtl_weights(scaled.astype("float32")))
    d_scaled = alpha @ scaled
    cosine = d @ d_scaled / np.linalg.norm(d) / np.linalg.norm(d_scaled)
    np.testing.assert_allclose(cosine, 1.0, atol=1e-5)
    np.testing.assert_allclose(
        _np(training.imtl_weights([[1.0, 0.0], [0.0, 2.0]])),
        [2 / 3, 1 / 3],
        rtol=1e-6,  # float32
    )


@pytest.mark.backend
def test_imtl_tasks_without_gradient_and_parallel_tasks():
    # A task with no labelled rows in the batch (zero gradient) gets weight
    # 0; the others get the closed form of the smaller problem.
    grads = np.array([[1.0, 0.0, 0.5], [0.0, 0.0, 0.0], [1.0, 1.0, -1.0]])
    alpha = _np(training.imtl_weights(grads.astype("float32")))
    np.testing.assert_allclose(alpha[1], 0.0, atol=1e-6)
    np.testing.assert_allclose(
        alpha[[0, 2]], _imtl_reference(grads[[0, 2]]), atol=1e-5
    )
    # Parallel gradients make the closed form singular: they share their
    # weight and the projections stay equal.
    grads = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    alpha = _np(training.imtl_weights(grads.astype("float32")))
    assert np.all(np.isfinite(alpha))
    np.testing.assert_allclose(alpha.sum(), 1.0, atol=1e-6)
    np.testing.assert_allclose(alpha @ grads, [4 / 7, 4 / 7], rtol=1e-5)
    # Every gradient zero (nothing to learn), and one task.
    np.testing.assert_allclose(
        _np(training.imtl_weights(np.zeros((2, 3), "float32"))).sum(), 1.0
    )
    np.testing.assert_array_equal(_np(training.imtl_weights([[3.0, 1.0]])), [1])
    with pytest.raises(ValueError, match="`grads` must be a 2-D"):
        training.imtl_weights([1.0, 2.0])
    with pytest.raises(ValueError, match="`loss_scale` must be True or"):
        training.IMTLWeighting(loss_scale="yes")


def _nash_residual(grads, alpha):
    """Nash-MTL's condition `a_k (G G^T a)_k = 1`, in float64."""
    grads = np.asarray(grads, dtype="float64")
    return alpha * (grads @ grads.T @ alpha) - 1.0


@pytest.mark.backend
def test_nash_mtl_solves_the_bargaining_condition():
    rng = np.random.default_rng(5)
    for num_tasks in (1, 2, 3, 4, 5):
        for _ in range(10):
            grads = _conflicting_grads(rng, num_tasks, scales=(0.01, 100.0))
            alpha = _np(training.nash_mtl_weights(grads.astype("float32")))
            assert np.all(alpha > 0)
            np.testing.assert_allclose(
                _nash_residual(grads, alpha), 0.0, atol=1e-3
            )
            # Every task's directional derivative is 1 / a_k.
            d = alpha @ grads
            np.testing.assert_allclose(grads @ d, 1.0 / alpha, rtol=1e-3)


@pytest.mark.backend
def test_nash_mtl_direction_ignores_gradient_scales():
    grads = np.array([[2.0, 0.0, 1.0], [-1.0, 1.0, 0.0], [0.5, -2.0, 1.0]])
    alpha = _np(training.nash_mtl_weights(grads.astype("float32")))
    scales = np.array([100.0, 1.0, 0.01])
    scaled = _np(
        training.nash_mtl_weights((grads * scales[:, None]).astype("float32"))
    )
    np.testing.assert_allclose(scaled, alpha / scales, rtol=1e-4)
    np.testing.assert_allclose(
        scaled @ (grads * scales[:, None]), alpha @ grads, rtol=1e-4
    )
    # Orthogonal gradients: a_k = 1 / |g_k|.
    np.testing.assert_allclose(
        _np(training.nash_mtl_weights([[1.0, 0.0], [0.0, 2.0]])),
        [1.0, 0.5],
        rtol=1e-5,
    )


@pytest.mark.backend
def test_nash_mtl_tasks_without_gradient_and_opposite_gradients():
    grads = np.array([[1.0, 0.0, 0.5], [0.0, 0.0, 0.0], [1.0, 1.0, -1.0]])
    alpha = _np(training.nash_mtl_weights(grads.astype("float32")))
    assert alpha[1] == 0.0
    np.testing.assert_allclose(
        _nash_residual(grads[[0, 2]], alpha[[0, 2]]), 0.0, atol=1e-4
    )
    # Opposite gradients (a Pareto-stationary point): finite weights and
    # no shared update.
    grads = np.array([[1.0, 2.0], [-1.0, -2.0]], "float32")
    alpha = _np(training.nash_mtl_weights(grads))
    assert np.all(np.isfinite(alpha))
    assert np.linalg.norm(alpha @ grads) < 1e-3 * np.linalg.norm(grads[0])
    np.testing.assert_array_equal(
        _np(training.nash_mtl_weights(np.zeros((2, 3), "float32"))), [0, 0]
    )
    with pytest.raises(ValueError, match="`iterations` must be"):
        training.nash_mtl_weights(grads, iterations=0)
    with pytest.raises(ValueError, match="`max_norm` must be"):
        training.NashMTLWeighting(max_norm=-1.0)


def _aligned_reference(grads, preferences):
    """Aligned-MTL in float64, as LibMTL computes it: `B = s_min V
    diag(lambda^-1/2) V^T` on the eigenvalues above LibMTL's rank cut.
    Returns the weights `B p` and the aligned gradients `B G`."""
    grads = np.asarray(grads, dtype="float64")
    values, vectors = np.linalg.eigh(grads @ grads.T)
    keep = values > values.max() * len(grads) * np.finfo("float32").eps
    values, vectors = values[keep], vectors[:, keep]
    root = np.sqrt(values.min()) * (vectors / np.sqrt(values)) @ vectors.T
    return root @ preferences, root @ grads


@pytest.mark.backend
def test_aligned_mtl_matches_the_reference_and_aligns_the_gradients():
    rng = np.random.default_rng(6)
    for num_tasks in (2, 3, 4, 5):
        grads = _conflicting_grads(rng, num_tasks, scales=(0.05, 20.0))
        preferences = rng.uniform(0.5, 2.0, size=num_tasks)
        alpha = _np(
            training.aligned_mtl_weights(
                grads.astype("float32"), preferences.astype("float32")
            )
        )
        expected, aligned = _aligned_reference(grads, preferences)
        np.testing.assert_allclose(alpha, expected, rtol=1e-4)
        # The aligned gradients are orthogonal with equal norms, and the
        # direction is their preference-weighted sum.
        gram = aligned @ aligned.T
        np.testing.assert_allclose(
            gram, gram[0, 0] * np.eye(num_tasks), atol=1e-9 * gram[0, 0]
        )
        np.testing.assert_allclose(
            alpha @ grads, preferences @ aligned, rtol=1e-4, atol=1e-6
        )


@pytest.mark.backend
def test_aligned_mtl_degenerate_gradients():
    # Orthogonal gradients of equal norms: the plain (weighted) sum.
    np.testing.assert_allclose(
        _np(training.aligned_mtl_weights([[2.0, 0.0], [0.0, 2.0]], [1, 3])),
        [1.0, 3.0],
        rtol=1e-6,
    )
    # A task without gradient gets weight 0; the others are aligned alone.
    grads = np.array([[1.0, 0.0, 0.5], [0.0, 0.0, 0.0], [1.0, 1.0, -1.0]])
    alpha = _np(training.aligned_mtl_weights(grads.astype("float32")))
    np.testing.assert_allclose(alpha[1], 0.0, atol=1e-6)
    expected, _ = _aligned_reference(grads[[0, 2]], np.ones(2))
    np.testing.assert_allclose(alpha[[0, 2]], expected, rtol=1e-5)
    # Opposite gradients (a Pareto-stationary point): no shared update.
    grads = np.array([[1.0, 2.0], [-1.0, -2.0]], "float32")
    alpha = _np(training.aligned_mtl_weights(grads))
    assert np.linalg.norm(alpha @ grads) < 1e-5
    np.testing.assert_array_equal(
        _np(training.aligned_mtl_weights(np.zeros((2, 3), "float32"))), [0, 0]
    )
    with pytest.raises(ValueError, match="`grads` must be a 2-D"):
        training.aligned_mtl_weights([1.0, 2.0])


@pytest.mark.backend
def test_famo_objective_weights_and_logits_gradient():
    losses = np.array([0.5, 2.0, 8.0], "float32")
    logits = np.array([0.3, -0.2, 0.1], "float32")
    objective, weights = training.famo_objective(losses, logits)
    z = np.exp(logits) / np.exp(logits).sum()
    c = np.sum(z / losses)
    np.testing.assert_allclose(_np(weights), z / (c * losses), rtol=1e-5)
    np.testing.assert_allclose(_np(weights).sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(
        _np(objective), np.sum(z * np.log(losses)) / c, rtol=1e-5
    )
    # The logits' gradient is that of softmax(logits) . delta, delta the
    # fall of each log loss (central differences in float64).
    after = np.array([0.4, 1.9, 7.0], "float32")
    delta = np.log(losses.astype("float64")) - np.log(after)
    grad = _np(training.famo_logits_gradient(logits, losses, after))

    def value(w):
        return np.exp(w) / np.exp(w).sum() @ delta

    eye = np.eye(3) * 1e-6
    numeric = [(value(logits + e) - value(logits - e)) / 2e-6 for e in eye]
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-7)
    # A task left out (-inf logit) gets no weight and no gradient.
    out = np.array([0.0, -np.inf, 0.0], "float32")
    _, weights = training.famo_objective(losses, out)
    assert _np(weights)[1] == 0.0
    assert _np(training.famo_logits_gradient(out, losses, after))[1] == 0.0
    with pytest.raises(ValueError, match="`learning_rate` must be"):
        training.FAMOWeighting(learning_rate=0)
    with pytest.raises(ValueError, match="`weight_decay` must be"):
        training.FAMOWeighting(weight_decay=-1.0)


NON_DEFAULT_ARGUMENTS = {
    "fixed": {},
    "uncertainty": {"initial_log_var": 0.5},
    "gradnorm": {"alpha": 0.5},
    "dwa": {"temperature": 3.0},
    "rlw": {"seed": 3},
    "pcgrad": {"seed": 1, "shared_scope": "dense"},
    "mgda": {"iterations": 10, "shared_scope": "dense"},
    "cagrad": {"c": 0.3, "iterations": 20},
    "imtl": {"loss_scale": False},
    "nash_mtl": {"iterations": 5, "max_norm": 0.0},
    "aligned_mtl": {"shared_scope": "dense"},
    "famo": {"learning_rate": 0.01, "weight_decay": 0.0},
    "gradvac": {"beta": 0.25, "seed": 2, "shared_scope": "dense"},
    "gls": {},
    "upgrad": {"iterations": 10, "shared_scope": "dense"},
    "db_mtl": {"beta": 0.5, "beta_sigma": 0.25, "shared_scope": "dense"},
    "moco": {
        "beta": 0.25,
        "beta_sigma": 0.0,
        "gamma": 0.2,
        "gamma_sigma": 1.0,
        "rho": 0.1,
        "shared_scope": "dense",
    },
    "stch": {"mu": 0.5, "warmup_epochs": 2},
    "fairgrad": {"alpha": 2.0, "iterations": 10, "shared_scope": "dense"},
}


@pytest.mark.parametrize("name", list(training.STRATEGIES))
def test_strategy_arguments_survive_keras_serialization(name):
    arguments = NON_DEFAULT_ARGUMENTS[name]
    strategy = training.get_weighting({"name": name, **arguments})
    config = keras.saving.serialize_keras_object(strategy)
    clone = keras.saving.deserialize_keras_object(config)
    assert type(clone) is type(strategy)
    assert clone.get_config() == strategy.get_config()
    for key, value in arguments.items():
        assert clone.get_config()[key] == value


def _cosine(u, v):
    return u @ v / np.linalg.norm(u) / np.linalg.norm(v)


@pytest.mark.backend
def test_gradvac_with_zero_targets_is_pcgrad():
    rng = np.random.default_rng(7)
    for num_tasks in (2, 3, 4):
        grads = rng.normal(size=(num_tasks, 6)).astype("float32")
        grads[1] -= 1.5 * grads[0]  # a conflict
        orders = np.stack([rng.permutation(num_tasks) for _ in grads])
        adjusted, _ = training.gradvac_project(
            grads, np.zeros((num_tasks, num_tasks), "float32"), orders
        )
        np.testing.assert_allclose(
            _np(adjusted),
            _pcgrad_reference(grads, orders),
            rtol=1e-5,
            atol=1e-6,
        )


@pytest.mark.backend
def test_gradvac_reaches_the_target_similarity_and_updates_targets():
    grads = np.array([[1.0, 0.2], [0.3, 1.0]])
    rho = _cosine(grads[0], grads[1])
    phi = 0.8  # above the pair's cosine: both gradients are moved to it
    targets = np.array([[0.0, phi], [phi, 0.0]])
    adjusted, updated = training.gradvac_project(
        grads.astype("float32"), targets.astype("float32"), beta=0.25
    )
    adjusted = _np(adjusted)
    np.testing.assert_allclose(_cosine(adjusted[0], grads[1]), phi, rtol=1e-5)
    np.testing.assert_allclose(_cosine(adjusted[1], grads[0]), phi, rtol=1e-5)
    expected = targets + 0.25 * (rho - targets) * (1 - np.eye(2))
    np.testing.assert_allclose(_np(updated), expected, rtol=1e-5)
    # Below the cosine: nothing to do; the targets still move.
    low = np.array([[0.0, 0.1], [0.1, 0.0]], "float32")
    adjusted, updated = training.gradvac_project(grads.astype("float32"), low)
    np.testing.assert_allclose(_np(adjusted), grads, rtol=1e-6)
    np.testing.assert_allclose(
        _np(updated)[0, 1], 0.1 + 0.5 * (rho - 0.1), rtol=1e-5
    )
    with pytest.raises(ValueError, match="`beta` must be"):
        training.GradVacWeighting(beta=1.5)


def _tiny_model():
    inputs = {"x": keras.Input((3,), name="x")}
    hidden = keras.layers.Dense(4, name="shared")(inputs["x"])
    outputs = {
        "a": keras.layers.Dense(1, name="a")(hidden),
        "b": keras.layers.Dense(1, name="b")(hidden),
    }
    return keras.Model(inputs, outputs), [Task("a"), Task("b")]


@pytest.mark.backend
@pytest.mark.parametrize(
    "kwargs",
    [
        {"weighting": "gradnorm"},
        {"weighting": "pcgrad"},
        {"weighting": "mgda"},
        {"weighting": "imtl"},
        {"weighting": "nash_mtl"},
        {"weighting": "aligned_mtl"},
        {"weighting": "famo"},
        {"weighting": "gradvac"},
        {"weighting": "upgrad"},
        {"weighting": "db_mtl"},
        {"weighting": "moco"},
        {"weighting": "fairgrad"},
        {"lr_multipliers": {"a": 2.0}},
    ],
    ids=[
        "gradnorm",
        "pcgrad",
        "mgda",
        "imtl",
        "nash_mtl",
        "aligned_mtl",
        "famo",
        "gradvac",
        "upgrad",
        "db_mtl",
        "moco",
        "fairgrad",
        "lr_multipliers",
    ],
)
def test_per_task_gradient_features_refuse_other_backends(kwargs, monkeypatch):
    model, tasks = _tiny_model()
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(NotImplementedError, match="backend is 'jax'"):
        training.MultiTaskModel(model, tasks, **kwargs)
    # Loss-only strategies do not need the TensorFlow backend.
    wrapper = training.MultiTaskModel(model, tasks, weighting="dwa")
    assert isinstance(wrapper.weighting, weighting.DWAWeighting)
    model, tasks = _tiny_model()
    wrapper = training.MultiTaskModel(model, tasks, weighting="gls")
    assert isinstance(wrapper.weighting, weighting.GLSWeighting)
    model, tasks = _tiny_model()
    wrapper = training.MultiTaskModel(model, tasks, weighting="stch")
    assert isinstance(wrapper.weighting, weighting.STCHWeighting)


def _upgrad_reference(grads, preferences):
    """UPGrad's weights from `K` box-constrained programs solved by
    scipy's L-BFGS-B: `sum_i p_i argmin_{v >= e_i} v^T G G^T v`."""
    from scipy.optimize import minimize

    grads = np.asarray(grads, dtype="float64")
    gram = grads @ grads.T
    num_tasks = len(grads)
    total = np.zeros(num_tasks)
    for i in range(num_tasks):
        low = np.eye(num_tasks)[i]
        result = minimize(
            lambda v: v @ gram @ v,
            low + 0.1,
            jac=lambda v: 2 * gram @ v,
            bounds=[(b, None) for b in low],
            method="L-BFGS-B",
            options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10000},
        )
        total += preferences[i] * result.x
    return total


@pytest.mark.backend
@pytest.mark.parametrize(
    "num_tasks, dim, collinear",
    [(3, 8, False), (5, 8, False), (4, 2, False), (3, 30, True)],
)
def test_upgrad_matches_a_quadratic_programming_reference(
    num_tasks, dim, collinear
):
    rng = np.random.default_rng(num_tasks)
    for _ in range(3):
        grads = rng.normal(size=(num_tasks, dim)).astype("float32")
        if collinear:
            # Two nearly parallel tasks (cosine about 0.99) against a third,
            # with norms 100x apart: an ill-conditioned program.
            grads[1] = 0.01 * (grads[0] + 0.1 * grads[1])
            grads[2] = -0.5 * grads[0] + 0.5 * grads[2]
        preferences = rng.uniform(0.5, 2.0, num_tasks).astype("float32")
        alpha = _np(training.upgrad_weights(grads, preferences))
        expected = _upgrad_reference(grads, preferences)
        direction = alpha @ grads
        np.testing.assert_allclose(
            direction, expected @ grads, rtol=1e-4, atol=1e-4
        )
        if dim >= num_tasks:
            # Independent gradients: the weights are unique too.
            np.testing.assert_allclose(alpha, expected, rtol=1e-4, atol=1e-5)
        # The direction conflicts with no task.
        products = grads.astype("float64") @ direction
        scale = np.sum(grads.astype("float64") ** 2, axis=1).max()
        assert np.all(products >= -1e-5 * scale)


@pytest.mark.backend
def test_upgrad_is_the_weighted_sum_without_conflict_and_pcgrad_for_two():
    # Pairwise non-negative dot products: nothing to project.
    grads = np.array([[1.0, 0.0, 1.0], [0.5, 2.0, 0.0], [0.0, 1.0, 1.0]])
    alpha = _np(training.upgrad_weights(grads.astype("float32"), [1, 2, 3]))
    np.testing.assert_allclose(alpha, [1, 2, 3], rtol=1e-6)
    # Two conflicting tasks: the sum of PCGrad's two projections.
    grads = np.array([[1.0, 0.0], [-1.0, 1.0]], dtype="float32")
    alpha = _np(training.upgrad_weights(grads))
    np.testing.assert_allclose(alpha, [2.0, 1.5], rtol=1e-6)
    projected = _pcgrad_reference(grads, [[0, 1], [1, 0]]).sum(axis=0)
    np.testing.assert_allclose(alpha @ grads, projected, rtol=1e-6)


@pytest.mark.backend
def test_upgrad_degenerate_gradients():
    # A task without gradient gets weight 0; the others are unaffected.
    grads = np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, 1.0]], dtype="float32")
    alpha = _np(training.upgrad_weights(grads))
    np.testing.assert_allclose(alpha, [2.0, 0.0, 1.5], rtol=1e-6)
    # Exactly opposite gradients: both projections are 0.
    alpha = _np(training.upgrad_weights([[1.0, 2.0], [-2.0, -4.0]]))
    np.testing.assert_allclose(
        alpha @ np.array([[1.0, 2.0], [-2.0, -4.0]]), [0, 0], atol=1e-5
    )
    np.testing.assert_allclose(
        _np(training.upgrad_weights(np.zeros((2, 3), "float32"))), [0, 0]
    )
    with pytest.raises(ValueError, match="`iterations` must be"):
        training.upgrad_weights([[1.0, 0.0]], iterations=0)
    with pytest.raises(ValueError, match="2-D tensor"):
        training.upgrad_weights([1.0, 2.0])


@pytest.mark.backend
def test_gls_loss_is_the_weighted_geometric_mean_of_the_present_losses():
    np.testing.assert_allclose(_np(training.gls_loss([4.0, 1.0])), 2.0)
    np.testing.assert_allclose(
        _np(training.gls_loss([8.0, 1.0, 0.5])), 2.0 ** (2 / 3), rtol=1e-6
    )
    # Exponents w_k / sum w: (8^1 * 1^3)^(1/4).
    np.testing.assert_allclose(
        _np(training.gls_loss([8.0, 1.0], [1.0, 3.0])), 8.0**0.25, rtol=1e-6
    )
    # A task with loss 0 (no labelled rows) or weight 0 is left out.
    np.testing.assert_allclose(_np(training.gls_loss([4.0, 0.0, 1.0])), 2.0)
    np.testing.assert_allclose(
        _np(training.gls_loss([4.0, 9.0, 1.0], [1.0, 0.0, 1.0])), 2.0
    )
    assert _np(training.gls_loss([0.0, 0.0])) == 0.0
    # d GLS / d L_k = GLS w_k / (sum w L_k), by central differences.
    losses = np.array([0.3, 2.0, 0.05])
    weights = np.array([1.0, 0.5, 2.0])
    value = _np(training.gls_loss(losses, weights))
    for k in range(3):
        step = np.zeros(3)
        step[k] = 1e-3 * losses[k]
        slope = (
            _np(training.gls_loss(losses + step, weights))
            - _np(training.gls_loss(losses - step, weights))
        ) / (2 * step[k])
        expected = value * weights[k] / (weights.sum() * losses[k])
        np.testing.assert_allclose(slope, expected, rtol=1e-3)


@pytest.mark.backend
def test_stch_loss_is_a_smooth_maximum_of_normalized_log_losses():
    losses = np.array([0.3, 2.0, 0.05])
    nadir = np.array([0.5, 1.0, 0.1])
    weights = np.array([1.0, 0.5, 3.0])
    x = np.log(weights * losses / nadir)
    assert np.sum(x == x.max()) == 1
    for mu in (1.0, 0.2):
        np.testing.assert_allclose(
            _np(training.stch_loss(losses, nadir, mu, weights)),
            3 * mu * np.log(np.sum(np.exp(x / mu))),
            rtol=1e-5,
        )
    # Small mu: K times the largest normalized log loss.
    np.testing.assert_allclose(
        _np(training.stch_loss(losses, nadir, 1e-3, weights)),
        3 * x.max(),
        rtol=1e-3,
    )
    # Tasks with loss 0 or weight 0 are left out.
    np.testing.assert_allclose(
        _np(training.stch_loss([0.5, 0.0, 2.0], [1.0, 1.0, 1.0])),
        2 * np.log(2.5),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        _np(
            training.stch_loss([0.5, 9.0, 2.0], [1.0, 1.0, 1.0], 1.0, [1, 0, 1])
        ),
        2 * np.log(2.5),
        rtol=1e-6,
    )
    assert _np(training.stch_loss([0.0, 0.0], [1.0, 1.0])) == 0.0
    # d / d L_k = K softmax(x / mu)_k / L_k, by central differences.
    value = lambda v: _np(training.stch_loss(v, nadir, 0.5, weights))  # noqa: E731
    share = np.exp(x / 0.5) / np.exp(x / 0.5).sum()
    for k in range(3):
        step = np.zeros(3)
        step[k] = 1e-3 * losses[k]
        slope = (value(losses + step) - value(losses - step)) / (2 * step[k])
        np.testing.assert_allclose(slope, 3 * share[k] / losses[k], rtol=1e-3)
    with pytest.raises(ValueError, match="`mu` must be"):
        training.stch_loss(losses, nadir, mu=0.0)


def _fairgrad_reference(grads, alpha):
    """FairGrad's weights as LibMTL computes them: scipy's least_squares
    on `G G^T w - w^(-1 / alpha)` from uniform weights, `w >= 0`."""
    from scipy.optimize import least_squares

    grads = np.asarray(grads, dtype="float64")
    gram = grads @ grads.T
    result = least_squares(
        lambda w: gram @ w - np.power(1.0 / w, 1.0 / alpha),
        np.ones(len(gram)) / len(gram),
        bounds=(0, np.inf),
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
    )
    return result.x


@pytest.mark.backend
@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
def test_fairgrad_matches_least_squares_and_the_fairness_condition(alpha):
    rng = np.random.default_rng(int(alpha * 10))
    for num_tasks in (2, 3, 5):
        grads = rng.normal(size=(num_tasks, 12)) * rng.uniform(
            0.1, 10, (num_tasks, 1)
        )
        grads = grads.astype("float32")
        w = _np(training.fairgrad_weights(grads, alpha))
        np.testing.assert_allclose(
            w, _fairgrad_reference(grads, alpha), rtol=1e-4
        )
        # Every task's improvement g_k . d is w_k^(-1 / alpha).
        gains = grads.astype("float64") @ (w @ grads.astype("float64"))
        np.testing.assert_allclose(gains, w ** (-1.0 / alpha), rtol=1e-4)
    # alpha = 1 is Nash-MTL's condition, whose orthogonal solution is 1/|g|.
    np.testing.assert_allclose(
        _np(training.fairgrad_weights([[1.0, 0.0], [0.0, 2.0]], 1.0)),
        [1.0, 0.5],
        rtol=1e-6,
    )


@pytest.mark.backend
def test_fairgrad_larger_alpha_helps_the_task_that_improves_least():
    # A small gradient beside a large one: the small task's share of the
    # improvement g_k . d grows with alpha (toward max-min fairness).
    grads = np.array([[0.2, 0.0, 0.1], [1.0, 3.0, 0.0]], dtype="float32")
    shares = []
    for alpha in (0.5, 1.0, 4.0, 16.0):
        w = _np(training.fairgrad_weights(grads, alpha, iterations=60))
        gains = grads.astype("float64") @ (w @ grads.astype("float64"))
        np.testing.assert_allclose(gains, w ** (-1.0 / alpha), rtol=1e-4)
        shares.append(gains[0] / gains.sum())
    assert shares == sorted(shares)
    assert shares[0] < 0.05 and shares[-1] > 0.19
    # A task without gradient gets weight 0.
    w = _np(training.fairgrad_weights([[1.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(w, [1.0, 0.0], rtol=1e-6)
