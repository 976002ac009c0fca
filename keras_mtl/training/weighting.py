"""Loss-weighting strategies for multi-task training.

A strategy turns the per-task losses `L_k` (each the masked mean over the
task's sample space, exactly as `keras_mtl.models.compile_model` defines
it) into the objective the optimizer descends:

- `FixedWeighting`: `sum_k w_k L_k` with the compile-time weights (the
  default, and what `compile_model` alone does).
- `UncertaintyWeighting`: a learned log-variance `s_k` per task (Kendall et
  al., 2018).
- `GradNormWeighting`: weights learned so that the tasks' gradient norms on
  the last shared layer follow their relative training rates (Chen et al.,
  2018).
- `DWAWeighting`: dynamic weight average, weights from the ratio of the
  last two epochs' losses (Liu et al., 2019).
- `PCGradWeighting`: fixed weights, but per-task gradients on shared
  variables are projected so they no longer conflict (Yu et al., 2020).
- `GradVacWeighting`: PCGrad generalised: each pair of task gradients is
  adjusted toward the cosine similarity the pair has had on average, not
  only out of conflict (gradient vaccine, Wang et al., 2021).
- `RLWWeighting`: random loss weighting, fresh random weights every step
  (Lin et al., 2022).
- `MGDAWeighting`: the shared variables move along the minimum-norm convex
  combination of the task gradients, a common descent direction (Sener and
  Koltun, 2018).
- `CAGradWeighting`: the shared variables move along the direction, within
  a ball around the summed gradient, that most improves the worst task
  (conflict-averse gradient descent, Liu et al., 2021).
- `IMTLWeighting`: impartial multi-task learning: the shared variables move
  along the combination of task gradients that projects equally onto every
  task's gradient direction (IMTL-G), and learned loss scales make the
  scaled losses equal (IMTL-L) (Liu et al., 2021).
- `NashMTLWeighting`: the shared variables move along the Nash bargaining
  solution of the tasks, `d = sum_k a_k g_k` with `g_k . d = 1 / a_k`
  (Navon et al., 2022).
- `AlignedMTLWeighting`: the task gradients are aligned (made orthogonal,
  of equal norms, the condition number of their matrix 1) before they are
  summed with the fixed weights (Senushkin et al., 2023).
- `FAMOWeighting`: fast adaptive multitask optimization, weights that make
  the tasks' log losses fall at equal rates, without per-task gradients
  (Liu et al., 2023).
- `GLSWeighting`: geometric loss strategy, the objective is the geometric
  mean of the losses (Chennupati et al., 2019).
- `UPGradWeighting`: every task gradient on shared variables is projected
  onto the cone of directions that conflict with no task, and the
  projections are summed (Quinton and Rey, 2024).
- `DBMTLWeighting`: dual balancing, log losses (scale-free) and averaged
  task gradients on shared variables scaled to a common norm (Lin et al.,
  2023).
- `MoCoWeighting`: MGDA's common descent direction from tracked (moving
  average) task gradients instead of noisy batch ones (Fernando et al.,
  2023).
- `STCHWeighting`: smooth Tchebycheff scalarization, a smooth maximum of
  the losses relative to a nadir point measured after a warmup (Lin et
  al., 2024).
- `FairGradWeighting`: shared variables follow the alpha-fair combination
  of the task gradients (Ban and Ji, 2024).

Strategies are layers so that their variables are tracked by the training
model (`keras_mtl.training.MultiTaskModel`) and never by the serving model.
The pure functions `uncertainty_loss`, `gls_loss`, `stch_loss`, `dwa_weights`,
`pcgrad_project`, `gradvac_project`, `mgda_weights`, `cagrad_direction`,
`imtl_weights`, `nash_mtl_weights`, `fairgrad_weights`,
`aligned_mtl_weights`,
`upgrad_weights`, `famo_objective`, `famo_logits_gradient` and
`gradnorm_gradient` implement the published formulas with `keras.ops` and
run on every backend; GradNorm, PCGrad, GradVac, MGDA, CAGrad, IMTL,
Nash-MTL, FairGrad, Aligned-MTL, UPGrad, DB-MTL and MoCo additionally need
per-task gradients, which `MultiTaskModel` computes on the TensorFlow backend.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_mtl.layers.mlp import _is_positive_int

STRATEGIES = (
    "fixed",
    "uncertainty",
    "gradnorm",
    "dwa",
    "rlw",
    "pcgrad",
    "mgda",
    "cagrad",
    "imtl",
    "nash_mtl",
    "aligned_mtl",
    "famo",
    "gradvac",
    "gls",
    "upgrad",
    "db_mtl",
    "moco",
    "stch",
    "fairgrad",
)
# Gradient-based strategies need one backward pass per task.
TASK_GRADIENT_STRATEGIES = (
    "gradnorm",
    "pcgrad",
    "mgda",
    "cagrad",
    "imtl",
    "nash_mtl",
    "aligned_mtl",
    "gradvac",
    "upgrad",
    "db_mtl",
    "moco",
    "fairgrad",
)
_EPSILON = 1e-12


def _check_positive(name, value, allow_zero=False):
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        kind = "a finite number >= 0" if allow_zero else "a positive number"
        raise ValueError(f"`{name}` must be {kind}. Received: {name}={value!r}")
    return float(value)


def _check_fraction(name, value):
    value = _check_positive(name, value, allow_zero=True)
    if value >= 1.0:
        raise ValueError(
            f"`{name}` must be in [0, 1). Received: {name}={value!r}"
        )
    return value


def _check_iterations(iterations):
    if not _is_positive_int(iterations):
        raise ValueError(
            "`iterations` must be a positive integer. "
            f"Received: iterations={iterations!r}"
        )
    return iterations


# ---------------------------------------------------------------------------
# The published formulas, as pure functions.
# ---------------------------------------------------------------------------


def uncertainty_loss(task_losses, log_vars, regression):
    """Kendall et al.'s homoscedastic-uncertainty objective, term by term.

    With `s_k = log(sigma_k^2)` learned per task:

    - regression (Gaussian likelihood): `0.5 * exp(-s_k) * L_k + 0.5 * s_k`;
    - classification (binary or softmax likelihood with a temperature):
      `exp(-s_k) * L_k + 0.5 * s_k`.

    The effective weight of task `k` is `0.5 * exp(-s_k)` (regression) or
    `exp(-s_k)` (classification); at the optimum of `s_k` it is
    `1 / (2 L_k)`, so a noisier task (larger irreducible loss) gets a
    smaller weight.

    Args:
        task_losses: tensor `(num_tasks,)` of per-task losses.
        log_vars: tensor `(num_tasks,)` of log-variances `s_k`.
        regression: list of bool, one per task: use the regression form.

    Returns:
        A tuple `(terms, weights)` of tensors `(num_tasks,)`: the per-task
        terms to sum, and the effective weights `c_k * exp(-s_k)`.

    References:
        Kendall, Gal and Cipolla, "Multi-Task Learning Using Uncertainty to
        Weigh Losses for Scene Geometry and Semantics", CVPR 2018.
        https://arxiv.org/abs/1705.07115
    """
    task_losses = ops.convert_to_tensor(task_losses, "float32")
    log_vars = ops.cast(ops.convert_to_tensor(log_vars), "float32")
    scale = ops.convert_to_tensor(
        [0.5 if r else 1.0 for r in regression], "float32"
    )
    weights = scale * ops.exp(-log_vars)
    return weights * task_losses + 0.5 * log_vars, weights


def gls_loss(task_losses, weights=None):
    """The geometric loss strategy's objective: the losses' geometric mean.

    `prod_k L_k^(w_k / sum_j w_j)` over the tasks whose weight and loss are
    positive (with equal weights, `(prod_k L_k)^(1 / K)`, Chennupati et
    al.'s form). Its gradient is `GLS * sum_k (w_k / sum_j w_j) grad L_k /
    L_k`: each task's gradient is divided by its own loss, so a task whose
    loss is 100 times smaller is not drowned by the others, whatever the
    losses' units. A task with weight 0, or with loss 0 (no labelled rows
    of it in the batch, under the masked mean), is left out of the
    product, so it neither zeroes the objective nor sends the others' weights
    to infinity. With no such task the objective is 0.

    Args:
        task_losses: tensor `(num_tasks,)` of non-negative per-task losses.
        weights: `(num_tasks,)` non-negative exponents, or None (equal).

    Returns:
        A scalar tensor.

    Example:

    >>> keras_mtl.training.gls_loss([4.0, 1.0])
    2.0

    References:
        Chennupati et al., "MultiNet++: Multi-Stream Feature Aggregation
        and Geometric Loss Strategy for Multi-Task Learning", CVPR
        Workshops 2019. https://arxiv.org/abs/1904.08492
    """
    task_losses = ops.convert_to_tensor(task_losses)
    if weights is None:
        weights = ops.ones_like(task_losses)
    weights = ops.cast(ops.convert_to_tensor(weights), task_losses.dtype)
    used = ops.logical_and(task_losses > 0, weights > 0)
    exponents = ops.where(used, weights, 0.0)
    total = ops.sum(exponents)
    logs = ops.where(used, ops.log(ops.where(used, task_losses, 1.0)), 0.0)
    mean_log = ops.sum(exponents * logs) / ops.maximum(total, _EPSILON)
    return ops.where(total > 0, ops.exp(mean_log), 0.0)


def stch_loss(task_losses, nadir, mu=1.0, weights=None):
    """Smooth Tchebycheff scalarization of the normalized log losses.

    With `x_k = log(w_k L_k / z_k)` (`z` the nadir point, e.g. the tasks'
    average losses early in training), the objective is
    `K mu log sum_k exp(x_k / mu)` over the `K` tasks whose weight and loss
    are positive: a smooth maximum, so the gradient goes mostly to the
    task furthest above its nadir, `K softmax(x / mu)_k grad L_k / L_k`.
    As `mu` goes to 0 it becomes the (weighted) Tchebycheff maximum; large
    `mu` spreads the weight evenly. A task with loss 0 (no labelled rows of
    it in the batch) or weight 0 is left out; with no task left the
    objective is 0.

    Args:
        task_losses: tensor `(num_tasks,)` of non-negative per-task losses.
        nadir: `(num_tasks,)` positive reference losses.
        mu: float > 0. Smoothing. Defaults to `1.0`.
        weights: `(num_tasks,)` non-negative preferences, or None (all 1).

    Returns:
        A scalar tensor.

    Example:

    >>> keras_mtl.training.stch_loss([0.5, 2.0], nadir=[1.0, 1.0])
    1.8326

    References:
        Lin et al., "Smooth Tchebycheff Scalarization for Multi-Objective
        Optimization", ICML 2024. https://arxiv.org/abs/2402.19078
    """
    mu = _check_positive("mu", mu)
    task_losses = ops.convert_to_tensor(task_losses)
    nadir = ops.cast(ops.convert_to_tensor(nadir), task_losses.dtype)
    if weights is None:
        weights = ops.ones_like(task_losses)
    weights = ops.cast(ops.convert_to_tensor(weights), task_losses.dtype)
    used = ops.logical_and(task_losses > 0, weights > 0)
    count = ops.sum(ops.cast(used, task_losses.dtype))
    ratio = ops.where(used, weights * task_losses / nadir, 1.0)
    logits = ops.where(used, ops.log(ratio) / mu, -np.inf)
    value = count * mu * ops.logsumexp(logits)
    return ops.where(count > 0, value, 0.0)


def dwa_weights(loss_history, temperature=2.0):
    """Dynamic Weight Average: the task weights of the next epoch.

    `lambda_k(t) = K exp(r_k / T) / sum_i exp(r_i / T)` with
    `r_k = L_k(t-1) / L_k(t-2)`, the ratio of the task's average training
    loss over the last two epochs, and `K` tasks. Until two epochs have been
    seen every weight is 1.

    Args:
        loss_history: array `(num_epochs, num_tasks)` of per-epoch average
            training losses, oldest first (may have 0 rows).
        temperature: float. `T`; larger values give more even weights.
            Defaults to `2.0` (the paper's value).

    Returns:
        A numpy array `(num_tasks,)` of weights summing to `num_tasks`.

    Example:

    >>> keras_mtl.training.dwa_weights([[1.0, 1.0], [0.5, 1.0]])
    array([0.755..., 1.244...])

    References:
        Liu, Johns and Davison, "End-to-End Multi-Task Learning with
        Attention", CVPR 2019 (section 3.3). https://arxiv.org/abs/1803.10704
    """
    temperature = _check_positive("temperature", temperature)
    history = np.asarray(loss_history, dtype="float64")
    if history.ndim != 2:
        raise ValueError(
            "`loss_history` must be 2-D (epochs, tasks). Received shape "
            f"{history.shape}"
        )
    num_tasks = history.shape[1]
    if history.shape[0] < 2:
        return np.ones(num_tasks)
    ratio = history[-1] / np.maximum(history[-2], _EPSILON)
    logits = ratio / temperature
    logits = logits - logits.max()
    return num_tasks * np.exp(logits) / np.exp(logits).sum()


def pcgrad_project(grads, orders=None):
    """PCGrad gradient surgery on a stack of per-task gradients.

    For every task `i`, its gradient is projected in turn onto the normal
    plane of each other task's gradient `g_j` it conflicts with (negative
    dot product): `g_i <- g_i - (g_i . g_j / |g_j|^2) g_j`. Gradients that
    do not conflict are left unchanged. The projected gradients are
    returned; their sum is the update direction.

    Args:
        grads: tensor `(num_tasks, dim)`: one flattened gradient per task.
        orders: optional int tensor `(num_tasks, num_tasks)`. Row `i` is the
            order in which task `i` visits the other tasks (entries equal to
            `i` are skipped). Defaults to `0, 1, ..., num_tasks - 1` for every
            task; the paper draws a random order per step.

    Returns:
        A tensor `(num_tasks, dim)` of projected gradients.

    Example:

    >>> keras_mtl.training.pcgrad_project([[1.0, 0.0], [-1.0, 1.0]])
    [[0.5, 0.5], [-0.5, 0.5]]

    References:
        Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020.
        https://arxiv.org/abs/2001.06782
    """
    grads = ops.convert_to_tensor(grads)
    if len(grads.shape) != 2 or grads.shape[0] is None:
        raise ValueError(
            "`grads` must be a 2-D tensor (num_tasks, dim) with a known "
            f"number of tasks. Received shape {grads.shape}"
        )
    num_tasks = grads.shape[0]
    squared = ops.sum(grads * grads, axis=1)
    projected = []
    for i in range(num_tasks):
        g = grads[i]
        for p in range(num_tasks):
            if orders is None:
                if p == i:
                    continue
                j = p
                other = grads[j]
                sq = squared[j]
                not_self = 1.0
            else:
                j = orders[i][p]
                other = ops.take(grads, j, axis=0)
                sq = ops.take(squared, j, axis=0)
                not_self = ops.cast(ops.not_equal(j, i), grads.dtype)
            dot = ops.sum(g * other)
            coef = ops.where(
                dot < 0, dot / ops.maximum(sq, _EPSILON), ops.zeros_like(dot)
            )
            g = g - (coef * not_self) * other
        projected.append(g)
    return ops.stack(projected)


def gradvac_project(grads, targets, orders=None, beta=0.5):
    """Gradient vaccine on a stack of per-task gradients.

    For every task `i`, visiting the other tasks `j` in turn: with
    `rho = cos(g_i, g_j)` (`g_i` as adjusted so far) below the pair's
    target similarity `phi = targets[i, j]`, `g_j` is added to `g_i` with
    the coefficient that makes their cosine exactly `phi`:
    `|g_i| (phi sqrt(1 - rho^2) - rho sqrt(1 - phi^2)) /
    (|g_j| sqrt(1 - phi^2))`. Every pair's target then moves toward the
    observed `rho`: `phi <- (1 - beta) phi + beta rho`. With all targets
    at 0 this is PCGrad's projection. The adjusted gradients' sum is the
    update direction.

    Args:
        grads: tensor `(num_tasks, dim)`: one flattened gradient per task.
        targets: tensor `(num_tasks, num_tasks)`: the pairs' target cosine
            similarities (start at 0).
        orders: optional int tensor `(num_tasks, num_tasks)`, as in
            `pcgrad_project`. Defaults to `0, 1, ..., num_tasks - 1`.
        beta: float in (0, 1]. The targets' moving-average rate. Defaults
            to `0.5`.

    Returns:
        A tuple `(adjusted (num_tasks, dim), new targets (num_tasks,
        num_tasks))`.

    References:
        Wang et al., "Gradient Vaccine: Investigating and Improving
        Multi-task Optimization in Massively Multilingual Models", ICLR
        2021. https://arxiv.org/abs/2010.05874
    """
    grads = _check_task_grads(grads)
    num_tasks = grads.shape[0]
    targets = ops.cast(targets, grads.dtype)
    norms = ops.sqrt(ops.sum(grads * grads, axis=1))
    adjusted, updated = [], targets
    for i in range(num_tasks):
        g = grads[i]
        for p in range(num_tasks):
            if orders is None:
                if p == i:
                    continue
                j = p
            else:
                j = orders[i][p]
            other = ops.take(grads, j, axis=0)
            other_norm = ops.take(norms, j, axis=0)
            g_norm = ops.sqrt(ops.sum(g * g))
            rho = ops.sum(g * other) / ops.maximum(
                g_norm * other_norm, _EPSILON
            )
            phi = ops.take(ops.take(targets, i, axis=0), j, axis=0)
            room = ops.sqrt(ops.maximum(1.0 - phi * phi, _EPSILON))
            coef = (
                g_norm
                * (
                    phi * ops.sqrt(ops.maximum(1.0 - rho * rho, 0.0))
                    - rho * room
                )
                / ops.maximum(other_norm * room, _EPSILON)
            )
            pair = ops.cast(ops.not_equal(j, i), grads.dtype)
            live = pair * ops.cast(
                (rho < phi) & (other_norm > 0) & (g_norm > 0), grads.dtype
            )
            g = g + (live * coef) * other
            cell = (
                ops.outer(
                    ops.one_hot(i, num_tasks, dtype=grads.dtype),
                    ops.one_hot(j, num_tasks, dtype=grads.dtype),
                )
                * pair
            )
            updated = updated + cell * beta * (rho - phi)
        adjusted.append(g)
    return ops.stack(adjusted), updated


def mgda_weights(grads, iterations=50):
    """MGDA's minimum-norm point in the convex hull of the task gradients.

    Solves `min_a |sum_k a_k g_k|^2` over the simplex (`a_k >= 0`,
    `sum_k a_k = 1`) on the Gram matrix `G G^T`, starting from uniform
    weights, with pairwise Frank-Wolfe steps and an exact line search: each
    step moves weight from the task in use whose gradient agrees most with
    the current direction to the one that agrees least (Sener and Koltun
    solve the same problem with plain Frank-Wolfe; the pairwise steps can
    also empty a task's weight, so the solver converges linearly instead of
    zig-zagging). With two tasks the first step is exact:
    `a_1 = clip((g_2 - g_1) . g_2 / |g_1 - g_2|^2, 0, 1)`. Unless the
    minimum is 0 (a Pareto-stationary point), `d = sum_k a_k g_k` has
    `d . g_k >= |d|^2 > 0` for every task: stepping along `-d` decreases
    every task's loss to first order.

    Args:
        grads: tensor `(num_tasks, dim)`: one flattened gradient per task.
        iterations: int. Solver steps. Defaults to `50`, which reach the
            minimum to about 1e-4 in the weights for up to four tasks;
            more tasks need more.

    Returns:
        A tensor `(num_tasks,)` of weights on the simplex.

    Example:

    >>> keras_mtl.training.mgda_weights([[1.0, 0.0], [0.0, 2.0]])
    [0.8, 0.2]

    References:
        Sener and Koltun, "Multi-Task Learning as Multi-Objective
        Optimization", NeurIPS 2018. https://arxiv.org/abs/1810.04650
    """
    grads = _check_task_grads(grads)
    _check_iterations(iterations)
    num_tasks = grads.shape[0]
    gram = ops.matmul(grads, ops.transpose(grads))
    alpha = ops.full((num_tasks,), 1.0 / num_tasks, dtype=grads.dtype)
    if num_tasks == 1:
        return alpha
    diagonal = ops.diagonal(gram)
    for _ in range(iterations):
        m_alpha = ops.matmul(gram, alpha)  # (G G^T a)_k = v . g_k
        # Pairwise step: move weight from the worst task in use (largest
        # v . g_s) to the best one (smallest v . g_t).
        t = ops.argmin(m_alpha)
        s = ops.argmax(ops.where(alpha > 0, m_alpha, -np.inf))
        e_t = ops.one_hot(t, num_tasks, dtype=grads.dtype)
        e_s = ops.one_hot(s, num_tasks, dtype=grads.dtype)
        # Minimize |v + gamma (g_t - g_s)|^2 over gamma in [0, a_s].
        slope = ops.take(m_alpha, s) - ops.take(m_alpha, t)
        curvature = (
            ops.take(diagonal, t)
            + ops.take(diagonal, s)
            - 2.0 * ops.take(ops.take(gram, t, axis=0), s)
        )
        gamma = ops.where(
            curvature > _EPSILON,
            slope / ops.maximum(curvature, _EPSILON),
            ops.take(alpha, s),
        )
        gamma = ops.clip(gamma, 0.0, ops.take(alpha, s))
        gamma = ops.where(slope > 0, gamma, ops.zeros_like(gamma))
        alpha = alpha + gamma * (e_t - e_s)
    return ops.maximum(alpha, 0.0)


def _combine(weights, grads):
    """`sum_k weights_k grads_k`: `(num_tasks,)` and `(num_tasks, dim)`."""
    return ops.matmul(ops.expand_dims(weights, 0), grads)[0]


def _check_task_grads(grads):
    grads = ops.convert_to_tensor(grads)
    if len(grads.shape) != 2 or grads.shape[0] is None:
        raise ValueError(
            "`grads` must be a 2-D tensor (num_tasks, dim) with a known "
            f"number of tasks. Received shape {grads.shape}"
        )
    return grads


def _cagrad_step(w, gram, g0_gram, radius):
    """One pairwise Frank-Wolfe step of CAGrad's inner problem, with an
    exact line search (see `cagrad_direction`)."""
    num_tasks = w.shape[0]
    gram_w = ops.matmul(gram, w)
    norm_w = ops.sqrt(ops.maximum(ops.sum(w * gram_w), _EPSILON))
    slope = g0_gram + radius * gram_w / norm_w  # gradient of F at w
    t = ops.argmin(slope)
    s = ops.argmax(ops.where(w > 0, slope, -np.inf))
    delta = ops.one_hot(t, num_tasks, dtype=w.dtype) - ops.one_hot(
        s, num_tasks, dtype=w.dtype
    )
    # F(w + gamma delta) = const + b gamma + radius sqrt(p + 2 q gamma +
    # r gamma^2), convex in gamma; minimize it over [0, w_s].
    b = ops.sum(delta * g0_gram)
    p = ops.sum(w * gram_w)
    q = ops.sum(delta * gram_w)
    r = ops.sum(delta * ops.matmul(gram, delta))
    limit = ops.take(w, s)
    # Where the slope keeps one sign (radius sqrt(r) <= |b|, or a flat
    # direction), the minimum is an end of the segment.
    end = ops.where(b < 0, limit, ops.zeros_like(limit))
    beta = -b / ops.maximum(radius, _EPSILON)
    room = r - beta * beta
    interior = (r > _EPSILON) & (room > _EPSILON) & (radius > 0)
    safe_r = ops.maximum(r, _EPSILON)
    u = ops.sign(beta) * ops.sqrt(
        beta
        * beta
        * ops.maximum(p * r - q * q, 0.0)
        / ops.maximum(room, _EPSILON)
    )
    gamma = ops.where(interior, (u - q) / safe_r, end)
    gamma = ops.clip(gamma, 0.0, limit)
    return w + gamma * delta


def cagrad_direction(grads, c=0.5, iterations=50):
    """CAGrad's update direction from the task gradients.

    With `g_0 = sum_k g_k` and `g_w = sum_k w_k g_k`, the weights `w` on the
    simplex minimize `F(w) = g_w . g_0 + c |g_0| |g_w|` (the dual of
    maximizing the worst task's improvement `min_k g_k . d` over the ball
    `|d - g_0| <= c |g_0|`), and the direction is
    `d = (g_0 + c |g_0| g_w / |g_w|) / (1 + c^2)`. `c = 0` gives `g_0`, the
    gradient of the summed losses; a larger `c` trades the average
    improvement for the worst task's. `F` is convex and is minimized on the
    Gram matrix `G G^T` from uniform weights with pairwise Frank-Wolfe
    steps and an exact line search (the 1-D problem has a closed form).
    The original code and LibMTL average the task gradients instead of
    summing them, which gives the same `w` and a `d` smaller by the number
    of tasks.

    Args:
        grads: tensor `(num_tasks, dim)`: one flattened gradient per task.
        c: float >= 0. Radius of the ball, relative to `|g_0|`. Defaults to
            `0.5` (the paper's and LibMTL's default).
        iterations: int. Solver steps. Defaults to `50`.

    Returns:
        A tuple `(direction, weights)`: the `(dim,)` update direction and
        the `(num_tasks,)` weights `w`.

    Example:

    >>> d, w = keras_mtl.training.cagrad_direction([[1.0, 0.0], [0.0, 2.0]])

    References:
        Liu et al., "Conflict-Averse Gradient Descent for Multi-task
        Learning", NeurIPS 2021. https://arxiv.org/abs/2110.14048
    """
    grads = _check_task_grads(grads)
    c = _check_positive("c", c, allow_zero=True)
    _check_iterations(iterations)
    num_tasks = grads.shape[0]
    gram = ops.matmul(grads, ops.transpose(grads))
    g0_gram = ops.sum(gram, axis=1)  # g_k . g_0
    g0_norm = ops.sqrt(ops.maximum(ops.sum(g0_gram), 0.0))
    radius = c * g0_norm
    w = ops.full((num_tasks,), 1.0 / num_tasks, dtype=grads.dtype)
    if num_tasks > 1:
        for _ in range(iterations):
            w = _cagrad_step(w, gram, g0_gram, radius)
        w = ops.maximum(w, 0.0)
    g_w = _combine(w, grads)
    g_w_norm = ops.sqrt(ops.sum(g_w * g_w))
    g0 = ops.sum(grads, axis=0)
    scale = radius / (g_w_norm + 1e-8)
    return (g0 + scale * g_w) / (1.0 + c * c), w


def imtl_weights(grads):
    """IMTL-G's weights: the combination of the task gradients that
    projects equally onto every task's gradient direction.

    With `u_k = g_k / |g_k|`, the weights `a` (summing to 1) give
    `d = sum_k a_k g_k` with `d . u_1 = d . u_2 = ... = d . u_K`: the update
    is impartial, every task's loss decreases at the same rate relative to
    its gradient's length, whatever the gradients' norms. They solve a
    linear system of `K` equations (the sum and the `K - 1` equal
    projections). This is the paper's closed form
    `a_{2:K} = g_1 U^T (D U^T)^{-1}`, with `D` and `U` the differences
    `g_1 - g_k` and `u_1 - u_k`, solved by least squares so that tasks with
    parallel gradients (a singular system, where the paper's inverse does
    not exist) share their weight instead of producing NaN. A task whose
    gradient is zero (no labelled rows of it in the batch) gets weight 0 and
    the others stay impartial among themselves. The weights may be
    negative; the direction depends only on the gradients' directions, its
    length on their norms.

    Args:
        grads: tensor `(num_tasks, dim)`: one flattened gradient per task.

    Returns:
        A tensor `(num_tasks,)` of weights summing to 1.

    Example:

    >>> keras_mtl.training.imtl_weights([[1.0, 0.0], [0.0, 2.0]])
    [0.6667, 0.3333]

    References:
        Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021.
        https://openreview.net/forum?id=IMPnRXEWpvr
    """
    grads = _check_task_grads(grads)
    num_tasks = grads.shape[0]
    if num_tasks == 1:
        return ops.ones((1,), dtype=grads.dtype)
    gram = ops.matmul(grads, ops.transpose(grads))
    norms = ops.sqrt(ops.maximum(ops.diagonal(gram), 0.0))
    valid = ops.cast(norms > _EPSILON * ops.max(norms), grads.dtype)
    # proj[j, k] = g_j . u_k, scaled by the largest norm so that the
    # projection rows are of the order of the sum row (least squares
    # truncates small singular values relative to the largest).
    ref = ops.argmax(norms)
    top = ops.maximum(ops.take(norms, ref), _EPSILON)
    proj = gram / (ops.where(valid > 0, norms, 1.0)[None, :] * top)
    # Row k (a task with a gradient, not the reference): the projections
    # onto u_ref and u_k are equal. The reference's row: the weights sum
    # to 1. The row of a task without gradient: its weight is 0.
    equal = ops.transpose(ops.take(proj, ref, axis=1)[:, None] - proj)
    is_ref = ops.one_hot(ref, num_tasks, dtype=grads.dtype)[:, None]
    projected = (valid[:, None] - is_ref) * equal
    zero_rows = (1.0 - valid[:, None]) * (1.0 - is_ref)
    system = (
        projected + is_ref + zero_rows * ops.eye(num_tasks, dtype=grads.dtype)
    )
    return ops.lstsq(system, is_ref[:, 0])


def nash_mtl_weights(grads, iterations=20):
    """Nash-MTL's weights: the Nash bargaining solution among the tasks.

    The weights `a > 0` solve `(G G^T) a = 1 / a`: the direction
    `d = sum_k a_k g_k` gives every task `g_k . d = 1 / a_k`, the point
    where each task's share of the improvement balances its weight
    (Navon et al.'s condition). It is the stationarity condition of the
    strictly convex `f(a) = a^T G G^T a / 2 - sum_k log a_k`, which is
    self-concordant, so damped Newton steps from `a_k = 1 / |g_k|` (the
    solution when the gradients are orthogonal) stay positive and converge
    (the paper and LibMTL solve a sequence of convex approximations with
    cvxpy instead). It is solved on the unit gradients (whose weights are
    `a_k |g_k|`, so the conditioning depends on the angles only), with a
    ridge of 1e-6 on their cosine matrix that keeps `a` finite where the
    gradients are linearly dependent. The direction does not change when
    a task's gradient is rescaled (its weight rescales inversely), nor
    when all of them are: its length does not shrink with the gradients.
    A task whose gradient is zero (no labelled rows of it in the batch)
    gets weight 0.

    Args:
        grads: tensor `(num_tasks, dim)`: one flattened gradient per task.
        iterations: int. Newton steps. Defaults to `20` (LibMTL's number
            of solver iterations).

    Returns:
        A tensor `(num_tasks,)` of non-negative weights.

    Example:

    >>> keras_mtl.training.nash_mtl_weights([[1.0, 0.0], [0.0, 2.0]])
    [1.0, 0.5]

    References:
        Navon et al., "Multi-Task Learning as a Bargaining Game", ICML
        2022. https://arxiv.org/abs/2202.01017
    """
    grads = _check_task_grads(grads)
    _check_iterations(iterations)
    num_tasks = grads.shape[0]
    eye = ops.eye(num_tasks, dtype=grads.dtype)
    gram = ops.matmul(grads, ops.transpose(grads))
    norms = ops.sqrt(ops.maximum(ops.diagonal(gram), 0.0))
    valid = ops.cast(norms > _EPSILON * ops.max(norms), grads.dtype)
    safe = ops.where(valid > 0, norms, 1.0)
    # Solved on unit gradients (the cosines), whose weights are
    # `a_k |g_k|`: the conditioning then depends on the angles only. A task
    # without gradient gets a unit row (its equation a = 1 / a, apart from
    # the others); it is zeroed below.
    both = valid[:, None] * valid[None, :]
    cosines = both * gram / (safe[:, None] * safe[None, :])
    cosines = cosines + (1.0 - valid + 1e-6 * valid)[:, None] * eye
    a = ops.ones((num_tasks,), dtype=grads.dtype)
    for _ in range(iterations):
        slope = ops.matmul(cosines, a) - 1.0 / a
        hessian = cosines + eye / (a * a)[:, None]
        step = ops.solve(hessian, slope)
        decrement = ops.sqrt(ops.maximum(ops.sum(slope * step), 0.0))
        a = a - step / (1.0 + decrement)
    return valid * a / safe


def fairgrad_weights(grads, alpha=1.0, iterations=30):
    """FairGrad's weights: alpha-fair shares of the improvement among tasks.

    The weights `w > 0` solve `(G G^T) w = w^(-1 / alpha)`: the direction
    `d = sum_k w_k g_k` gives task `k` the improvement `g_k . d =
    w_k^(-1 / alpha)`, the first-order condition of maximizing `sum_k
    (g_k . d)^(1 - alpha) / (1 - alpha)` (alpha-fair utility: `alpha = 1`
    is proportional fairness, Nash-MTL's condition; larger `alpha` moves
    toward max-min fairness, helping the task that improves least). It is
    the stationarity condition of the convex `w^T G G^T w / 2 - sum_k
    phi(w_k)` with `phi' = w^(-1 / alpha)`, solved by damped Newton steps on
    the Gram matrix scaled to a unit mean diagonal (the solution scales
    back exactly, `w = s^(-alpha / (alpha + 1)) w_hat`), with a ridge of
    1e-8 that keeps it finite where gradients are parallel; LibMTL solves
    the same equations with scipy's `least_squares`. A task whose gradient
    is zero (no labelled rows of it in the batch) gets weight 0.

    Args:
        grads: tensor `(num_tasks, dim)`: one flattened gradient per task.
        alpha: float > 0. Fairness. Defaults to `1.0`. Checked up to 16;
            far beyond, the weights of dominated tasks underflow in float64.
        iterations: int. Newton steps. Defaults to `30`.

    Returns:
        A tensor `(num_tasks,)` of non-negative weights.

    Example:

    >>> keras_mtl.training.fairgrad_weights([[1.0, 0.0], [0.0, 2.0]])
    [1.0, 0.5]

    References:
        Ban and Ji, "Fair Resource Allocation in Multi-Task Learning",
        ICML 2024. https://arxiv.org/abs/2402.15638
    """
    grads = _check_task_grads(grads)
    alpha = _check_positive("alpha", alpha)
    _check_iterations(iterations)
    num_tasks = grads.shape[0]
    eye = ops.eye(num_tasks, dtype="float64")
    gram = ops.cast(ops.matmul(grads, ops.transpose(grads)), "float64")
    diagonal = ops.diagonal(gram)
    valid = ops.cast(
        diagonal > _EPSILON * _EPSILON * ops.max(diagonal), "float64"
    )
    count = ops.maximum(ops.sum(valid), 1.0)
    scale = ops.sum(valid * diagonal) / count
    scale = ops.where(scale > 0, scale, 1.0)
    # A task without gradient gets a unit row (its equation w = w^(-1/alpha),
    # apart from the others); it is zeroed below.
    both = valid[:, None] * valid[None, :]
    hessian_base = both * gram / scale
    hessian_base = hessian_base + (1.0 - valid + 1e-8 * valid)[:, None] * eye
    power = -1.0 / alpha
    w = ops.ones((num_tasks,), dtype="float64")
    for _ in range(iterations):
        slope = ops.matmul(hessian_base, w) - ops.power(w, power)
        curvature = (1.0 / alpha) * ops.power(w, power - 1.0)
        step = ops.solve(hessian_base + curvature[:, None] * eye, slope)
        decrement = ops.sqrt(ops.maximum(ops.sum(slope * step), 0.0))
        moved = w - step / (1.0 + decrement)
        w = ops.where(moved > 0, moved, w / 2.0)
    w = valid * w * ops.power(scale, -alpha / (alpha + 1.0))
    return ops.cast(w, grads.dtype)


def aligned_mtl_weights(grads, preferences=None):
    """Aligned-MTL's weights: the task gradients aligned, then summed.

    The aligned gradients `G' = B G` with `B = s_min (G G^T)^(-1/2)` (on
    the span of the gradients; `s_min^2` the smallest non-zero eigenvalue
    of `G G^T`) are orthogonal with equal norms `s_min`: the gradient
    matrix's condition number becomes 1, so no task dominates by its
    gradient's size and no two pull against each other, while the sum stays
    of the order of the smallest gradient component. The direction is
    `d = G'^T p = sum_k a_k g_k` with `a = B p`, `p` the tasks' preferences
    (ones: the sum, Senushkin et al.'s and LibMTL's default). Eigenvalues
    below the largest times `num_tasks` times the float32 epsilon are left
    out (LibMTL's rank cut), so linearly dependent gradients, or a task
    without gradient (weight 0), do not break it. For orthogonal gradients
    of equal norms `a = p`: the weighted sum, unchanged.

    Args:
        grads: tensor `(num_tasks, dim)`: one flattened gradient per task.
        preferences: tensor `(num_tasks,)` or None. Weights of the aligned
            gradients. Defaults to ones.

    Returns:
        A tensor `(num_tasks,)` of weights of the original gradients.

    Example:

    >>> keras_mtl.training.aligned_mtl_weights([[1.0, 0.0], [0.0, 2.0]])
    [1.0, 0.5]

    References:
        Senushkin et al., "Independent Component Alignment for Multi-Task
        Learning", CVPR 2023. https://arxiv.org/abs/2305.19000
    """
    grads = _check_task_grads(grads)
    num_tasks = grads.shape[0]
    if preferences is None:
        preferences = ops.ones((num_tasks,), dtype=grads.dtype)
    preferences = ops.cast(preferences, grads.dtype)
    gram = ops.matmul(grads, ops.transpose(grads))
    values, vectors = ops.eigh(gram)
    tol = ops.max(values) * num_tasks * float(np.finfo("float32").eps)
    keep = values > tol
    safe = ops.where(keep, values, 1.0)
    smallest = ops.min(ops.where(keep, values, np.inf))
    scale = ops.where(keep, ops.sqrt(smallest / safe), 0.0)
    # B = V diag(sqrt(s_min^2 / lambda)) V^T on the kept eigenvectors.
    root = ops.matmul(vectors * scale[None, :], ops.transpose(vectors))
    weights = ops.matmul(root, preferences[:, None])[:, 0]
    return ops.where(ops.any(keep), weights, ops.zeros_like(weights))


def upgrad_weights(grads, preferences=None, iterations=20):
    """UPGrad's weights: every task gradient projected onto the cone of
    directions that conflict with no task, then summed.

    The projection of `g_i` onto the dual cone `{x : g_k . x >= 0 for all
    k}` is `sum_k v_k g_k` with `v = argmin_{v >= e_i} v^T (G G^T) v`
    (Quinton and Rey); the weights are `sum_i p_i v^(i)`, the direction
    `d = sum_k a_k g_k` the preference-weighted sum of the projections.
    Since every projection lies in the cone, so does `d`: `g_k . d >= 0`
    for every task, no task's loss rises to first order. Gradients that
    conflict with none of the others are their own projections, so the
    weights are then the preferences (the plain weighted sum). With two
    tasks, the projections are PCGrad's.

    The `K` small quadratic programs are solved together on the Gram
    matrix, scaled to a unit mean diagonal, in float64 (float32 on JAX
    without `jax_enable_x64`, where exactly parallel gradients can leave a
    system singular), with a ridge of
    1e-10 that keeps them finite where gradients are parallel: by a
    primal-dual active-set method (`iterations` steps, each `K` linear
    systems of size `K`; from the start "every bound active" it ends where
    no gradient conflicts at once), then 10 sweeps of exact coordinate
    descent from the point clipped to the bounds, which keep it feasible
    and only lower the objective. A task whose gradient is zero (no
    labelled rows of it in the batch) gets weight 0.

    Args:
        grads: tensor `(num_tasks, dim)`: one flattened gradient per task.
        preferences: `(num_tasks,)` non-negative weights of the projections,
            or None (all 1).
        iterations: int. Active-set steps. Defaults to `20`.

    Returns:
        A tensor `(num_tasks,)` of non-negative weights.

    Example:

    >>> keras_mtl.training.upgrad_weights([[1.0, 0.0], [-1.0, 1.0]])
    [2.0, 1.5]

    References:
        Quinton and Rey, "Jacobian Descent for Multi-Objective
        Optimization", 2024. https://arxiv.org/abs/2406.16232
    """
    grads = _check_task_grads(grads)
    _check_iterations(iterations)
    num_tasks = grads.shape[0]
    if preferences is None:
        preferences = ops.ones((num_tasks,), dtype=grads.dtype)
    preferences = ops.cast(ops.convert_to_tensor(preferences), "float64")
    gram = ops.cast(ops.matmul(grads, ops.transpose(grads)), "float64")
    diagonal = ops.diagonal(gram)
    valid = ops.cast(
        diagonal > _EPSILON * _EPSILON * ops.max(diagonal), "float64"
    )
    eye = ops.eye(num_tasks, dtype="float64")
    scale = ops.sum(diagonal) / num_tasks
    gram = gram / ops.where(scale > 0, scale, 1.0) + 1e-10 * eye
    # Row i of `v` is the i-th program's variable; `eye` its lower bounds.
    v = eye
    for _ in range(iterations):
        # Bounds that hold actively: positive multiplier (the slope there).
        active = ops.cast(ops.matmul(v, gram) - (v - eye) > 0, "float64")
        free = 1.0 - active
        # Free coordinates solve gram_FF v_F = -gram_FA e_A; active ones
        # sit on their bound.
        system = (free[:, :, None] * free[:, None, :]) * gram[None] + (
            active[:, :, None] * eye[None]
        )
        rhs = active * eye - free * ops.matmul(active * eye, gram)
        v = ops.solve(system, rhs[:, :, None])[:, :, 0]
    v = ops.maximum(v, eye)
    diagonal = ops.diagonal(gram)
    for _ in range(10):
        for j in range(num_tasks):
            column = v[:, j]
            slope = ops.matmul(v, gram[:, j])
            best = ops.maximum(eye[:, j], column - slope / diagonal[j])
            v = v + ops.expand_dims(best - column, 1) * eye[j][None, :]
    weights = valid * ops.matmul(ops.expand_dims(preferences, 0), v)[0]
    return ops.cast(weights, grads.dtype)


def _famo_gaps(task_losses, min_losses):
    losses = ops.convert_to_tensor(task_losses, "float32")
    floor = 0.0 if min_losses is None else ops.cast(min_losses, "float32")
    return losses - floor + 1e-8


def famo_objective(task_losses, logits, min_losses=None):
    """FAMO's training objective and the task weights it puts on the losses.

    With `z = softmax(logits)`, `D_k = L_k - m_k` (`m_k` the losses' lower
    bounds, 0 by default) and `c = sum_k z_k / D_k` (a constant for the
    gradient), the objective is `sum_k z_k log D_k / c`: its gradient is
    `sum_k w_k grad L_k` with `w_k = z_k / (c D_k)`, weights that sum to 1
    and favour the tasks with small losses as much as the log does.

    Args:
        task_losses: tensor `(num_tasks,)` of per-task losses.
        logits: tensor `(num_tasks,)`: FAMO's task logits (`-inf` leaves a
            task out).
        min_losses: tensor `(num_tasks,)` or None. Lower bounds of the
            losses. Defaults to zeros.

    Returns:
        A tuple `(objective, weights)`.

    References:
        Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS
        2023. https://arxiv.org/abs/2306.03792
    """
    gaps = _famo_gaps(task_losses, min_losses)
    z = ops.softmax(ops.cast(logits, "float32"))
    c = ops.stop_gradient(ops.sum(z / gaps))
    weights = z / (c * gaps)
    return ops.sum(z * ops.log(gaps)) / c, ops.stop_gradient(weights)


def famo_logits_gradient(logits, losses_before, losses_after, min_losses=None):
    """The gradient FAMO descends with its task logits after a step.

    `delta_k = log D_k(before) - log D_k(after)` is how fast each task's log
    loss fell in the step; the gradient of `softmax(logits) . delta` is
    `z * (delta - z . delta)`. Descending it moves weight toward the tasks
    that fell least.

    Args:
        logits: tensor `(num_tasks,)` (`-inf` leaves a task out).
        losses_before: tensor `(num_tasks,)`: the losses of a batch before
            the step.
        losses_after: tensor `(num_tasks,)`: the same batch's losses after.
        min_losses: tensor `(num_tasks,)` or None. Defaults to zeros.

    Returns:
        A tensor `(num_tasks,)`.
    """
    delta = ops.log(_famo_gaps(losses_before, min_losses)) - ops.log(
        _famo_gaps(losses_after, min_losses)
    )
    z = ops.softmax(ops.cast(logits, "float32"))
    return z * (delta - ops.sum(z * delta))


def gradnorm_gradient(weights, grad_norms, loss_ratios, alpha):
    """The gradient of GradNorm's `L_grad` with respect to the task weights.

    With `g_k = |grad_W L_k|` the unweighted gradient norm of task `k` on
    the shared weights `W`, `G_k = w_k g_k`, `G = mean_k G_k`, the inverse
    training rate `r_k = (L_k / L_k(0)) / mean_i (L_i / L_i(0))` and the
    target `G r_k^alpha` (held constant, as in the paper),
    `L_grad = sum_k |G_k - G r_k^alpha|` and
    `d L_grad / d w_k = sign(G_k - G r_k^alpha) g_k`.

    Args:
        weights: tensor `(num_tasks,)` of current weights.
        grad_norms: tensor `(num_tasks,)` of unweighted gradient norms
            `g_k`.
        loss_ratios: tensor `(num_tasks,)` of `L_k / L_k(0)`.
        alpha: float. Restoring-force strength; 0 equalises the gradient
            norms, larger values favour the slower tasks more.

    Returns:
        A tuple `(gradient, weighted_norms, targets)` of tensors
        `(num_tasks,)`: `d L_grad / d w`, `G_k` and the targets
        `G r_k^alpha`.

    Example:

    >>> grad, norms, targets = keras_mtl.training.gradnorm_gradient(
    ...     [1.0, 1.0], [2.0, 1.0], [1.0, 1.0], alpha=1.5)
    >>> grad  # [2.0, -1.0]: shrink the first weight, grow the second

    References:
        Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss
        Balancing in Deep Multitask Networks", ICML 2018.
        https://arxiv.org/abs/1711.02257
    """
    weights = ops.cast(ops.convert_to_tensor(weights), "float32")
    grad_norms = ops.cast(ops.convert_to_tensor(grad_norms), "float32")
    loss_ratios = ops.cast(ops.convert_to_tensor(loss_ratios), "float32")
    weighted = weights * grad_norms
    mean_norm = ops.mean(weighted)
    rates = loss_ratios / ops.maximum(ops.mean(loss_ratios), _EPSILON)
    targets = mean_norm * ops.power(rates, alpha)
    return ops.sign(weighted - targets) * grad_norms, weighted, targets


# ---------------------------------------------------------------------------
# Strategies.
# ---------------------------------------------------------------------------


class WeightingStrategy(keras.layers.Layer):
    """Base class: combines per-task losses into the training objective.

    A strategy is attached to a `keras_mtl.training.MultiTaskModel`, which
    calls `setup` once with the tasks, then `set_base_weights` at compile
    time with each task's fixed weight (`task.weight`, or `loss_weights`
    given to compile). Tasks with base weight 0 (e.g. ESMM's `cvr`) are
    monitored only: every strategy keeps their weight at 0.

    Subclasses implement `current_weights()` (current effective weights, a
    tensor `(num_tasks,)`) and, when the objective is not simply
    `sum_k weights_k L_k`, `combine`. Strategies whose update needs
    per-task gradients set `needs_task_gradients = True` and implement
    `task_gradients`; those that need the batch's losses after the update
    set `needs_post_step = True` and implement `after_step` (both
    TensorFlow backend).

    Args:
        **kwargs: standard `keras.layers.Layer` arguments.
    """

    strategy_name = None
    needs_task_gradients = False
    needs_post_step = False

    def __init__(self, **kwargs):
        kwargs.setdefault("name", f"{self.strategy_name or 'custom'}_weighting")
        super().__init__(**kwargs)
        self.task_names = None
        self.task_kinds = None
        self.base_weights = None

    # -- setup -------------------------------------------------------------

    def setup(self, tasks, shared_variables=(), table_variables=()):
        """Creates the strategy's state for `tasks` (list of `Task`).

        `shared_variables`: the model's trainable variables that two or
        more tasks depend on; `table_variables`: those of them that are
        embedding tables (`keras.layers.Embedding`). Only strategies that
        keep per-variable state use them.
        """
        self.task_names = [t.name for t in tasks]
        self.task_kinds = [t.kind for t in tasks]
        self.base_weights = [t.weight for t in tasks]
        self.create_state(len(tasks))
        self.create_variable_state(
            list(shared_variables), list(table_variables)
        )
        self.built = True

    def create_state(self, num_tasks):
        """Creates the strategy's variables (none by default)."""

    def create_variable_state(self, shared_variables, table_variables):
        """Creates state shaped like the shared variables (none by default)."""

    def set_base_weights(self, base_weights):
        """Sets the fixed weights (a list, one per task) at compile time."""
        if len(base_weights) != len(self.task_names):
            raise ValueError(
                f"Expected {len(self.task_names)} base weights, one per "
                f"task. Received: {base_weights!r}"
            )
        self.base_weights = [float(w) for w in base_weights]

    @property
    def num_tasks(self):
        return len(self.task_names)

    @property
    def active(self):
        """1.0 for tasks with a positive base weight, else 0.0 (list)."""
        return [1.0 if w > 0 else 0.0 for w in self.base_weights]

    # -- the objective -----------------------------------------------------

    def current_weights(self):
        """Current effective weight of every task, a tensor `(num_tasks,)`."""
        return ops.convert_to_tensor(self.base_weights, "float32")

    def combine(self, task_losses, training=False):
        """Total loss from a tensor `(num_tasks,)` of per-task losses."""
        return ops.sum(self.current_weights() * task_losses)

    def task_gradients(self, context):  # pragma: no cover - interface
        raise NotImplementedError

    def after_step(self, losses_before, losses_after):  # pragma: no cover
        """Called after each update with the batch's losses before and after
        it (`needs_post_step` strategies)."""
        raise NotImplementedError

    # -- epochs and state --------------------------------------------------

    def on_epoch_end(self, epoch):
        """Called by `TaskWeightLogger` after each training epoch."""

    def extra_logs(self):
        """Extra per-epoch values to log, a dict of floats."""
        return {}

    def get_state(self):
        """Variable values by name, JSON-friendly (for warm starts)."""
        return {v.name: np.asarray(v).tolist() for v in self.variables}

    def set_state(self, state):
        """Restores `get_state()` values (variables missing there are kept)."""
        for v in self.variables:
            if v.name in state:
                v.assign(np.asarray(state[v.name], dtype=v.dtype))

    def get_config(self):
        config = super().get_config()
        for key in ("trainable", "dtype"):
            config.pop(key, None)
        return config


@keras.saving.register_keras_serializable(package="keras_mtl")
class FixedWeighting(WeightingStrategy):
    """Fixed task weights: `sum_k w_k L_k`, as `compile_model` alone does.

    The weights are each task's `weight` (or compile's `loss_weights`).

    Example:

    >>> wrapper = keras_mtl.training.compile(model, tasks, weighting="fixed")
    """

    strategy_name = "fixed"


@keras.saving.register_keras_serializable(package="keras_mtl")
class UncertaintyWeighting(WeightingStrategy):
    """Homoscedastic-uncertainty weighting with a learned log-variance a task.

    Task `k` contributes `b_k (exp(-s_k) L_k + s_k / 2)` for binary and
    multiclass tasks and `b_k (exp(-s_k) L_k / 2 + s_k / 2)` for regression
    tasks, where `s_k = log(sigma_k^2)` is trainable and `b_k` the task's
    fixed weight (0 leaves the task out). The log-variances are trained by
    the model's optimizer together with the network, and never enter the
    serving model. See `uncertainty_loss`.

    Args:
        initial_log_var: float. Initial `s_k` for every task. Defaults to
            `0.0`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    >>> wrapper = keras_mtl.training.compile(
    ...     model, tasks, weighting="uncertainty")

    References:
        Kendall, Gal and Cipolla, "Multi-Task Learning Using Uncertainty to
        Weigh Losses for Scene Geometry and Semantics", CVPR 2018.
        https://arxiv.org/abs/1705.07115
    """

    strategy_name = "uncertainty"

    def __init__(self, initial_log_var=0.0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(initial_log_var, bool) or not isinstance(
            initial_log_var, (int, float)
        ):
            raise ValueError(
                "`initial_log_var` must be a number. "
                f"Received: initial_log_var={initial_log_var!r}"
            )
        self.initial_log_var = float(initial_log_var)

    def create_state(self, num_tasks):
        self.log_vars = self.add_weight(
            name="log_vars",
            shape=(num_tasks,),
            initializer=keras.initializers.Constant(self.initial_log_var),
            trainable=True,
        )

    def _regression(self):
        return [k == "regression" for k in self.task_kinds]

    def current_weights(self):
        _, weights = uncertainty_loss(
            ops.zeros((self.num_tasks,)), self.log_vars, self._regression()
        )
        return weights * ops.convert_to_tensor(self.base_weights, "float32")

    def combine(self, task_losses, training=False):
        terms, _ = uncertainty_loss(
            task_losses, self.log_vars, self._regression()
        )
        base = ops.convert_to_tensor(self.base_weights, "float32")
        return ops.sum(base * terms)

    def get_config(self):
        config = super().get_config()
        config.update({"initial_log_var": self.initial_log_var})
        return config


@keras.saving.register_keras_serializable(package="keras_mtl")
class DWAWeighting(WeightingStrategy):
    """Dynamic Weight Average: weights from the last two epochs' losses.

    During an epoch the weights are constant; at its end the average
    training loss of each task is recorded and the next epoch's weights are
    `b_k lambda_k` with `lambda = dwa_weights(history, temperature)` over
    the tasks with a positive fixed weight `b_k` (so the first two epochs
    use the fixed weights). The epoch hook is run by `TaskWeightLogger`,
    which `MultiTaskModel.fit` adds by itself.

    Args:
        temperature: float. `T` of the softmax. Defaults to `2.0`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    >>> wrapper = keras_mtl.training.compile(
    ...     model, tasks, weighting={"name": "dwa", "temperature": 2.0})

    References:
        Liu, Johns and Davison, "End-to-End Multi-Task Learning with
        Attention", CVPR 2019. https://arxiv.org/abs/1803.10704
    """

    strategy_name = "dwa"

    def __init__(self, temperature=2.0, **kwargs):
        super().__init__(**kwargs)
        self.temperature = _check_positive("temperature", temperature)

    def create_state(self, num_tasks):
        zeros = keras.initializers.Zeros()
        self.lambdas = self.add_weight(
            name="lambdas",
            shape=(num_tasks,),
            initializer="ones",
            trainable=False,
        )
        self.loss_sum = self.add_weight(
            name="loss_sum",
            shape=(num_tasks,),
            initializer=zeros,
            trainable=False,
        )
        self.loss_count = self.add_weight(
            name="loss_count", shape=(), initializer=zeros, trainable=False
        )
        # Average loss of the last two epochs (row 0 the older one) and how
        # many epochs have been recorded (capped at 2).
        self.loss_history = self.add_weight(
            name="loss_history",
            shape=(2, num_tasks),
            initializer=zeros,
            trainable=False,
        )
        self.epochs_seen = self.add_weight(
            name="epochs_seen", shape=(), initializer=zeros, trainable=False
        )

    def current_weights(self):
        base = ops.convert_to_tensor(self.base_weights, "float32")
        return base * self.lambdas

    def combine(self, task_losses, training=False):
        if training:
            self.loss_sum.assign_add(ops.stop_gradient(task_losses))
            self.loss_count.assign_add(1.0)
        return ops.sum(self.current_weights() * task_losses)

    def on_epoch_end(self, epoch):
        count = float(np.asarray(self.loss_count))
        if count == 0:
            return
        mean = np.asarray(self.loss_sum) / count
        history = np.asarray(self.loss_history)
        seen = int(np.asarray(self.epochs_seen))
        history = (
            np.stack([history[1], mean]) if seen else np.stack([mean, mean])
        )
        seen = min(seen + 1, 2)
        self.loss_history.assign(history)
        self.epochs_seen.assign(float(seen))
        active = np.asarray(self.active) > 0
        lambdas = np.ones(self.num_tasks)
        if active.any():
            lambdas[active] = dwa_weights(
                history[2 - seen :, active], self.temperature
            )
        self.lambdas.assign(lambdas.astype("float32"))
        self.loss_sum.assign(np.zeros(self.num_tasks, "float32"))
        self.loss_count.assign(0.0)

    def get_config(self):
        config = super().get_config()
        config.update({"temperature": self.temperature})
        return config


@keras.saving.register_keras_serializable(package="keras_mtl")
class RLWWeighting(WeightingStrategy):
    """Random loss weighting: fresh random task weights at every step.

    Each training step draws `z ~ N(0, I)` over the tasks with a positive
    fixed weight `b_k` and uses the weights `b_k K softmax(z)_k` (`K` the
    number of those tasks): on average every task gets its fixed weight
    (the softmax of i.i.d. draws averages `1 / K`), but each step explores
    another trade-off. Lin et al.'s weights sum to 1 instead of `K`, which
    only rescales the loss. Evaluation and the logged `<task>_weight` use the
    fixed weights, the expectation. Runs on every backend.

    Args:
        seed: int or None. Seed of the random weights. Defaults to `None`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    >>> wrapper = keras_mtl.training.compile(model, tasks, weighting="rlw")

    References:
        Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus
        Test for Multi-Task Learning", TMLR 2022.
        https://arxiv.org/abs/2111.10603
    """

    strategy_name = "rlw"

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = _check_seed(seed)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def random_weights(self):
        """One draw of the training weights, a tensor `(num_tasks,)`."""
        if not any(self.active):
            return ops.zeros((self.num_tasks,))
        active = ops.convert_to_tensor(self.active, "float32")
        z = keras.random.normal((self.num_tasks,), seed=self.seed_generator)
        # Softmax over the active tasks only.
        z = ops.where(active > 0, z, -np.inf)
        share = ops.softmax(z) * ops.sum(active)
        return share * ops.convert_to_tensor(self.base_weights, "float32")

    def combine(self, task_losses, training=False):
        if not training:
            return super().combine(task_losses)
        return ops.sum(ops.stop_gradient(self.random_weights()) * task_losses)

    def get_config(self):
        config = super().get_config()
        config.update({"seed": self.seed})
        return config


@keras.saving.register_keras_serializable(package="keras_mtl")
class GLSWeighting(WeightingStrategy):
    """Geometric loss strategy: the objective is the losses' geometric mean.

    The training (and validation) loss is `gls_loss`: `prod_k
    L_k^(b_k / sum_j b_j)` over the tasks with a positive fixed weight
    `b_k` and a positive loss in the batch (with equal weights, the `K`-th
    root of the product of the losses, as Chennupati et al. and LibMTL
    define it). Its gradient divides each task's gradient by the task's own
    loss, so tasks on different scales (a log loss of 0.05 beside a log
    loss of 0.6, or an MSE in other units) pull with comparable strength,
    without a learned or tuned weight. The logged `<task>_weight` is the
    task's exponent `b_k / sum_j b_j`. No per-task gradients: runs on every
    backend, at the cost of fixed weights.

    Args:
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    >>> wrapper = keras_mtl.training.compile(model, tasks, weighting="gls")

    References:
        Chennupati et al., "MultiNet++: Multi-Stream Feature Aggregation
        and Geometric Loss Strategy for Multi-Task Learning", CVPR
        Workshops 2019. https://arxiv.org/abs/1904.08492
    """

    strategy_name = "gls"

    def current_weights(self):
        exponents = [w if w > 0 else 0.0 for w in self.base_weights]
        total = sum(exponents)
        if total > 0:
            exponents = [w / total for w in exponents]
        return ops.convert_to_tensor(exponents, "float32")

    def combine(self, task_losses, training=False):
        return gls_loss(task_losses, self.current_weights())


@keras.saving.register_keras_serializable(package="keras_mtl")
class STCHWeighting(WeightingStrategy):
    """Smooth Tchebycheff scalarization (STCH) of the tasks' losses.

    For its first `warmup_epochs` epochs the objective is `sum_k b_k log
    L_k` (every task's loss relative to itself; `b_k` the fixed weights);
    the last of them also records each task's average batch loss, the
    nadir point `z_k`. From then on the objective is `stch_loss`:
    `K mu log sum_k exp(log(b_k L_k / z_k) / mu)`, a smooth maximum of the
    tasks' losses relative to where they stood, which sends most of the
    gradient to the task that is furthest behind. No per-task gradients:
    runs on every backend. The nadir point is logged per epoch as
    `<task>_stch_nadir` (1 until it is recorded, at the end of the last
    warmup epoch), and kept by `get_state` with the epoch count, so a warm
    start continues with it. The training and validation `loss` change
    meaning when the warmup ends: stop early on task metrics
    (`MultiTaskEarlyStopping`), not on `val_loss`.

    Args:
        mu: float > 0. Smoothing (LibMTL's default 1.0); smaller is closer
            to the plain maximum. Defaults to `1.0`.
        warmup_epochs: int >= 1. Epochs of summed log losses; the last one
            measures the nadir point. Defaults to `1`: ranking models train
            for a few epochs (or one pass over a day), where LibMTL's 4 would
            use up the run before the scalarization starts.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    >>> wrapper = keras_mtl.training.compile(
    ...     model, tasks, weighting={"name": "stch", "mu": 0.5})

    References:
        Lin et al., "Smooth Tchebycheff Scalarization for Multi-Objective
        Optimization", ICML 2024. https://arxiv.org/abs/2402.19078
    """

    strategy_name = "stch"

    def __init__(self, mu=1.0, warmup_epochs=1, **kwargs):
        super().__init__(**kwargs)
        self.mu = _check_positive("mu", mu)
        if not _is_positive_int(warmup_epochs):
            raise ValueError(
                "`warmup_epochs` must be a positive integer. Received: "
                f"warmup_epochs={warmup_epochs!r}"
            )
        self.warmup_epochs = warmup_epochs

    def create_state(self, num_tasks):
        self.epoch = self.add_weight(
            name="epoch", shape=(), initializer="zeros", trainable=False
        )
        self.nadir = self.add_weight(
            name="nadir",
            shape=(num_tasks,),
            initializer="ones",
            trainable=False,
        )
        self.loss_sum = self.add_weight(
            name="loss_sum",
            shape=(num_tasks,),
            initializer="zeros",
            trainable=False,
        )
        self.loss_count = self.add_weight(
            name="loss_count",
            shape=(num_tasks,),
            initializer="zeros",
            trainable=False,
        )

    def combine(self, task_losses, training=False):
        task_losses = ops.cast(task_losses, "float32")
        weights = ops.convert_to_tensor(self.base_weights, "float32")
        used = ops.logical_and(task_losses > 0, weights > 0)
        logs = ops.log(ops.where(used, task_losses, 1.0))
        warm = ops.sum(ops.where(used, weights * logs, 0.0))
        if training:
            recording = ops.cast(
                self.epoch == self.warmup_epochs - 1, "float32"
            )
            present = ops.cast(used, "float32") * recording
            self.loss_sum.assign_add(present * ops.stop_gradient(task_losses))
            self.loss_count.assign_add(present)
        scalarized = stch_loss(task_losses, self.nadir, self.mu, weights)
        return ops.where(self.epoch < self.warmup_epochs, warm, scalarized)

    def on_epoch_end(self, epoch):
        seen = int(np.asarray(self.epoch))
        if seen == self.warmup_epochs - 1:
            count = np.asarray(self.loss_count)
            total = np.asarray(self.loss_sum)
            nadir = np.where(count > 0, total / np.maximum(count, 1), 1.0)
            self.nadir.assign(nadir.astype("float32"))
        self.epoch.assign(float(seen + 1))

    def extra_logs(self):
        nadir = np.asarray(self.nadir)
        return {
            f"{name}_stch_nadir": float(nadir[k])
            for k, name in enumerate(self.task_names)
            if self.active[k]
        }

    def get_config(self):
        config = super().get_config()
        config.update({"mu": self.mu, "warmup_epochs": self.warmup_epochs})
        return config


def _random_orders(num_tasks, seed_generator):
    """One random order of the tasks per task, `(num_tasks, num_tasks)`."""
    return ops.stack(
        [
            keras.random.shuffle(
                ops.arange(num_tasks, dtype="int32"), seed=seed_generator
            )
            for _ in range(num_tasks)
        ]
    )


def _check_seed(seed):
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int)
    ):
        raise ValueError(
            f"`seed` must be an integer or None. Received: seed={seed!r}"
        )
    return seed


def _dense(grad, variable):
    """A dense gradient, zeros where the task does not reach `variable`."""
    if grad is None:
        return ops.zeros(variable.shape, "float32")
    return ops.cast(grad, "float32")


@keras.saving.register_keras_serializable(package="keras_mtl")
class GradNormWeighting(WeightingStrategy):
    """GradNorm: learned weights that balance the tasks' gradient norms.

    The weights start at the fixed weights `b_k`. At every step, the
    unweighted gradient norm `g_k` of each task on the *last shared layer*
    (the deepest layer every weighted task depends on, e.g. the `MMoELayer`
    of an MMoE model; `MultiTaskModel(shared_layer=...)` overrides it) is
    measured; the network steps with the current weights, then the weights
    take one step down the gradient of `L_grad = sum_k |w_k g_k -
    G r_k^alpha|` (`gradnorm_gradient`), i.e. towards gradient norms in
    proportion to each task's relative inverse training rate. The step is
    Adam-normalised (the raw gradient `g_k` grows as `1 / w_k` near the
    target and makes plain gradient steps overshoot), the weights are kept
    above `1e-3 * sum_k b_k` and renormalised to sum to `sum_k b_k`, as in
    the paper. Needs the TensorFlow backend (one extra backward pass per
    task, on the shared layer only).

    Args:
        alpha: float. Restoring-force strength; larger values pull slower
            tasks harder. Defaults to `1.5`.
        learning_rate: float. Adam step size of the weights: about the
            largest change of a weight per step. Defaults to `0.025`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    >>> wrapper = keras_mtl.training.compile(
    ...     model, tasks, weighting={"name": "gradnorm", "alpha": 1.5})

    References:
        Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss
        Balancing in Deep Multitask Networks", ICML 2018.
        https://arxiv.org/abs/1711.02257
    """

    strategy_name = "gradnorm"
    needs_task_gradients = True

    def __init__(self, alpha=1.5, learning_rate=0.025, **kwargs):
        super().__init__(**kwargs)
        self.alpha = _check_positive("alpha", alpha, allow_zero=True)
        self.learning_rate = _check_positive("learning_rate", learning_rate)

    def create_state(self, num_tasks):
        zeros = keras.initializers.Zeros()
        self.task_weights = self.add_weight(
            name="task_weights",
            shape=(num_tasks,),
            initializer="ones",
            trainable=False,
        )
        self.initial_losses = self.add_weight(
            name="initial_losses",
            shape=(num_tasks,),
            initializer=zeros,
            trainable=False,
        )
        self.steps = self.add_weight(
            name="steps", shape=(), initializer=zeros, trainable=False
        )
        self.grad_norms = self.add_weight(
            name="grad_norms",
            shape=(num_tasks,),
            initializer=zeros,
            trainable=False,
        )
        self.targets = self.add_weight(
            name="targets",
            shape=(num_tasks,),
            initializer=zeros,
            trainable=False,
        )
        # Adam moments of the weights' gradient.
        self.moment_1 = self.add_weight(
            name="moment_1",
            shape=(num_tasks,),
            initializer=zeros,
            trainable=False,
        )
        self.moment_2 = self.add_weight(
            name="moment_2",
            shape=(num_tasks,),
            initializer=zeros,
            trainable=False,
        )

    def current_weights(self):
        base = ops.convert_to_tensor(self.base_weights, "float32")
        # Before the first step the weights are the fixed weights.
        return ops.where(self.steps > 0, self.task_weights, base)

    def task_gradients(self, context):
        active = [i for i, a in enumerate(self.active) if a > 0]
        weights = self.current_weights()
        # The network's step uses the current weights.
        grads = context.gradient(context.scaled_total)
        # Unweighted gradient norms of each active task on the shared layer.
        norms = []
        for i in active:
            shared = context.gradient(
                context.scaled_losses[i], context.norm_variables, dense=True
            )
            squares = [
                ops.sum(ops.square(_dense(g, v)))
                for g, v in zip(shared, context.norm_variables)
            ]
            norms.append(ops.sqrt(ops.sum(ops.stack(squares))))
        norms = ops.stack(norms) / context.loss_scale
        losses = ops.take(ops.stop_gradient(context.task_losses), active)
        first = self.steps <= 0
        initial = ops.take(self.initial_losses, active)
        initial = ops.where(
            ops.logical_or(first, initial <= 0), losses, initial
        )
        ratios = losses / ops.maximum(initial, _EPSILON)
        current = ops.take(weights, active)
        grad, weighted, targets = gradnorm_gradient(
            current, norms, ratios, self.alpha
        )
        index = ops.convert_to_tensor([[i] for i in active], "int32")
        shape = (self.num_tasks,)
        # Adam step on the active weights.
        beta_1, beta_2 = 0.9, 0.999
        t = self.steps + 1.0
        m = beta_1 * ops.take(self.moment_1, active) + (1 - beta_1) * grad
        v = beta_2 * ops.take(self.moment_2, active) + (1 - beta_2) * (
            grad * grad
        )
        m_hat = m / (1.0 - ops.power(beta_1, t))
        v_hat = v / (1.0 - ops.power(beta_2, t))
        total = sum(self.base_weights[i] for i in active)
        new = current - self.learning_rate * m_hat / (ops.sqrt(v_hat) + 1e-8)
        new = ops.maximum(new, 1e-3 * total)
        new = new * (total / ops.sum(new))
        self.task_weights.assign(ops.scatter(index, new, shape))
        self.moment_1.assign(ops.scatter(index, m, shape))
        self.moment_2.assign(ops.scatter(index, v, shape))
        self.initial_losses.assign(ops.scatter(index, initial, shape))
        self.grad_norms.assign(ops.scatter(index, weighted, shape))
        self.targets.assign(ops.scatter(index, targets, shape))
        self.steps.assign_add(1.0)
        return grads

    def extra_logs(self):
        norms = np.asarray(self.grad_norms)
        targets = np.asarray(self.targets)
        logs = {}
        for k, name in enumerate(self.task_names):
            if self.active[k]:
                logs[f"{name}_grad_norm"] = float(norms[k])
                logs[f"{name}_grad_norm_target"] = float(targets[k])
        return logs

    def get_config(self):
        config = super().get_config()
        config.update(
            {"alpha": self.alpha, "learning_rate": self.learning_rate}
        )
        return config


def _shared_surgery_gradients(strategy, context):
    """Gradients of a strategy that combines per-task gradients on shared
    variables (`strategy.combine_shared`) and sums them elsewhere.

    Each active task's gradient is weighted by its current weight. On the
    variables two or more tasks depend on, the flattened task gradients
    `(num_active, dim)` go through `strategy.combine_shared`, which returns
    the combined `(dim,)` gradient; task-specific variables get their own
    task's gradient. With `strategy.shared_scope == "dense"`, shared
    variables whose gradients are sparse (embedding tables) are left out of
    the combination and get the sum of the weighted task gradients, kept
    sparse. Auxiliary losses (KL bounds, regularisers) are added unchanged
    everywhere.
    """
    active = [i for i, a in enumerate(strategy.active) if a > 0]
    variables = context.variables
    shared = list(context.shared)
    weights = strategy.current_weights()
    keep_sparse = strategy.shared_scope == "dense"
    per_task = []
    for i in active:
        grads = context.gradient(
            context.scaled_losses[i], dense=not keep_sparse
        )
        per_task.append(
            [None if g is None else context.scale(g, weights[i]) for g in grads]
        )
    extra = (
        context.gradient(context.scaled_extra, dense=not keep_sparse)
        if context.scaled_extra is not None
        else [None] * len(variables)
    )
    for k in range(len(variables)):
        if any(context.is_sparse(g[k]) for g in per_task):
            shared[k] = False  # summed, not combined
        else:
            for g in per_task:
                g[k] = context.densify(g[k])

    def summed(k):
        parts = [g[k] for g in per_task if g[k] is not None]
        if extra[k] is not None:
            parts.append(extra[k])
        return context.add(parts) if parts else None

    shared_index = [k for k, is_shared in enumerate(shared) if is_shared]
    if not shared_index or not active:
        return [summed(k) for k in range(len(variables))]
    out = [None if shared[k] else summed(k) for k in range(len(variables))]
    flat = ops.stack(
        [
            ops.concatenate(
                [
                    ops.reshape(_dense(g[k], variables[k]), (-1,))
                    for k in shared_index
                ]
            )
            for g in per_task
        ]
    )
    combined = strategy.combine_shared(flat)
    start = 0
    for k in shared_index:
        size = int(np.prod(variables[k].shape))
        g = ops.reshape(combined[start : start + size], variables[k].shape)
        start += size
        if extra[k] is not None:
            g = g + _dense(context.densify(extra[k]), variables[k])
        out[k] = g
    return out


SHARED_SCOPES = ("all", "dense")


def _check_shared_scope(shared_scope):
    if shared_scope not in SHARED_SCOPES:
        raise ValueError(
            f"`shared_scope` must be one of {SHARED_SCOPES}. "
            f"Received: shared_scope={shared_scope!r}"
        )
    return shared_scope


class _SurgeryWeighting(WeightingStrategy):
    """A strategy that combines the per-task gradients of the shared
    variables (`combine_shared`) and sums them on the others.

    `shared_scope`: `"all"` combines on every shared variable; `"dense"`
    leaves out the shared variables whose gradients are sparse (embedding
    tables): they get the weighted sum of the task gradients, as with fixed
    weights, kept sparse."""

    needs_task_gradients = True

    def __init__(self, shared_scope="all", **kwargs):
        super().__init__(**kwargs)
        self.shared_scope = _check_shared_scope(shared_scope)

    def task_gradients(self, context):
        return _shared_surgery_gradients(self, context)

    def get_config(self):
        config = super().get_config()
        config.update({"shared_scope": self.shared_scope})
        return config


@keras.saving.register_keras_serializable(package="keras_mtl")
class PCGradWeighting(_SurgeryWeighting):
    """PCGrad: fixed weights, with conflicting task gradients projected.

    Each task's weighted gradient is computed separately. On the *shared*
    variables (those of layers that two or more tasks depend on: embeddings,
    experts, gates) every task gradient is projected with
    `pcgrad_project`, visiting the other tasks in a random order drawn each
    step; the projected gradients are summed. Task-specific variables
    (towers, heads) receive their own task's gradient unchanged, and
    auxiliary losses (KL bounds, regularisers) are added unprojected.
    Needs the TensorFlow backend (one backward pass per task).

    Args:
        seed: int or None. Seed of the random task orders. Defaults to
            `None`.
        {shared_scope}
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    >>> wrapper = keras_mtl.training.compile(model, tasks, weighting="pcgrad")

    References:
        Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020.
        https://arxiv.org/abs/2001.06782
    """

    strategy_name = "pcgrad"

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = _check_seed(seed)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def combine_shared(self, flat):
        num = flat.shape[0]
        orders = _random_orders(num, self.seed_generator)
        return ops.sum(pcgrad_project(flat, orders), axis=0)

    def get_config(self):
        config = super().get_config()
        config.update({"seed": self.seed})
        return config


@keras.saving.register_keras_serializable(package="keras_mtl")
class GradVacWeighting(_SurgeryWeighting):
    """GradVac: fixed weights; task gradients adjusted toward their usual
    similarity.

    Each task's weighted gradient is computed separately. On the *shared*
    variables every task gradient goes through `gradvac_project`, visiting
    the other tasks in a random order drawn each step: where a pair's
    cosine similarity falls below the moving average of that pair's past
    similarities (its target, starting at 0), the gradient is moved just
    enough to reach it. PCGrad only removes conflicts (target 0); GradVac
    also keeps tasks that usually agree from drifting apart. The adjusted
    gradients are summed. Task-specific variables get their own task's
    gradient, and auxiliary losses are added unchanged. Needs the
    TensorFlow backend (one backward pass per task).

    Args:
        beta: float in (0, 1]. Moving-average rate of the targets.
            Defaults to `0.5` (LibMTL's default).
        seed: int or None. Seed of the random task orders. Defaults to
            `None`.
        {shared_scope}
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    >>> wrapper = keras_mtl.training.compile(model, tasks, weighting="gradvac")

    References:
        Wang et al., "Gradient Vaccine: Investigating and Improving
        Multi-task Optimization in Massively Multilingual Models", ICLR
        2021. https://arxiv.org/abs/2010.05874
    """

    strategy_name = "gradvac"

    def __init__(self, beta=0.5, seed=None, **kwargs):
        super().__init__(**kwargs)
        beta = _check_positive("beta", beta)
        if beta > 1:
            raise ValueError(f"`beta` must be in (0, 1]. Received: beta={beta}")
        self.beta = beta
        self.seed = _check_seed(seed)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def create_state(self, num_tasks):
        self.targets = self.add_weight(
            name="targets",
            shape=(num_tasks, num_tasks),
            initializer="zeros",
            trainable=False,
        )

    def combine_shared(self, flat):
        active = [i for i, a in enumerate(self.active) if a > 0]
        num = len(active)
        orders = _random_orders(num, self.seed_generator)
        index = np.asarray(active)
        targets = ops.take(ops.take(self.targets, index, axis=0), index, axis=1)
        adjusted, targets = gradvac_project(flat, targets, orders, self.beta)
        # Write the active tasks' block back.
        cells = np.stack(np.meshgrid(index, index, indexing="ij"), axis=-1)
        self.targets.assign(
            ops.scatter_update(
                self.targets, cells.reshape(-1, 2), ops.reshape(targets, (-1,))
            )
        )
        return ops.sum(adjusted, axis=0)

    def get_config(self):
        config = super().get_config()
        config.update({"beta": self.beta, "seed": self.seed})
        return config


class _SolvedWeighting(_SurgeryWeighting):
    """A strategy whose shared-variable direction comes from weights solved
    per step (`combine_shared` returns the direction and the weights of the
    active tasks); the last step's weights are logged per epoch as
    `<task>_<log_name>`."""

    log_name = None

    def create_state(self, num_tasks):
        self.alpha = self.add_weight(
            name="alpha",
            shape=(num_tasks,),
            initializer="zeros",
            trainable=False,
        )

    def solve(self, flat):  # pragma: no cover - interface
        """`(direction (dim,), weights (num_active,))` from `flat`."""
        raise NotImplementedError

    def combine_shared(self, flat):
        direction, weights = self.solve(flat)
        active = [i for i, a in enumerate(self.active) if a > 0]
        index = ops.convert_to_tensor([[i] for i in active], "int32")
        self.alpha.assign(ops.scatter(index, weights, (self.num_tasks,)))
        return direction

    def extra_logs(self):
        alpha = np.asarray(self.alpha)
        return {
            f"{name}_{self.log_name}": float(alpha[k])
            for k, name in enumerate(self.task_names)
            if self.active[k]
        }


@keras.saving.register_keras_serializable(package="keras_mtl")
class MGDAWeighting(_SolvedWeighting):
    """MGDA: shared variables follow the min-norm combination of task
    gradients.

    Each task's weighted gradient is computed separately. On the *shared*
    variables (embeddings, experts, gates, bottoms) the update direction is
    `sum_k a_k g_k` with `a = mgda_weights(g)`, the minimum-norm point of the
    gradients' convex hull: a direction that lowers every task's loss to
    first order (none dominates the others however large its gradient).
    Task-specific variables (towers, heads) get their own task's gradient,
    and auxiliary losses are added unchanged, as in `PCGradWeighting`. The
    last step's `a` is logged per epoch as `<task>_mgda_alpha`. Needs the
    TensorFlow backend (one backward pass per task).

    Args:
        iterations: int. Steps of the min-norm solver (`mgda_weights`)
            per training step. Defaults to `50`.
        {shared_scope}
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    >>> wrapper = keras_mtl.training.compile(model, tasks, weighting="mgda")

    References:
        Sener and Koltun, "Multi-Task Learning as Multi-Objective
        Optimization", NeurIPS 2018. https://arxiv.org/abs/1810.04650
    """

    strategy_name = "mgda"
    log_name = "mgda_alpha"

    def __init__(self, iterations=50, **kwargs):
        super().__init__(**kwargs)
        self.iterations = _check_iterations(iterations)

    def solve(self, flat):
        alpha = mgda_weights(flat, self.iterations)
        return _combine(alpha, flat), alpha

    def get_config(self):
        config = super().get_config()
        config.update({"iterations": self.iterations})
        return config


@keras.saving.register_keras_serializable(package="keras_mtl")
class CAGradWeighting(_SolvedWeighting):
    """CAGrad: shared variables follow the conflict-averse direction.

    Each task's weighted gradient is computed separately. On the *shared*
    variables the update direction is `cagrad_direction(g, c)`: within the
    ball of radius `c |g_0|` around the summed gradient `g_0`, the direction
    that most improves the worst task, rescaled by `1 / (1 + c^2)`.
    `c = 0` trains exactly like fixed weights; as `c` grows the direction
    leans toward MGDA's common descent direction. Task-specific variables
    (towers, heads) get their own task's gradient, and auxiliary losses
    are added unchanged, as in `PCGradWeighting`. The last step's weights
    `w` are logged per epoch as `<task>_cagrad_weight`. Needs the
    TensorFlow backend (one backward pass per task).

    Args:
        c: float >= 0. Radius of the ball relative to `|g_0|`. Defaults to
            `0.5`.
        iterations: int. Steps of the inner solver per training step.
            Defaults to `50`.
        {shared_scope}
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    >>> wrapper = keras_mtl.training.compile(
    ...     model, tasks, weighting={"name": "cagrad", "c": 0.4})

    References:
        Liu et al., "Conflict-Averse Gradient Descent for Multi-task
        Learning", NeurIPS 2021. https://arxiv.org/abs/2110.14048
    """

    strategy_name = "cagrad"
    log_name = "cagrad_weight"

    def __init__(self, c=0.5, iterations=50, **kwargs):
        super().__init__(**kwargs)
        self.c = _check_positive("c", c, allow_zero=True)
        self.iterations = _check_iterations(iterations)

    def solve(self, flat):
        return cagrad_direction(flat, self.c, self.iterations)

    def get_config(self):
        config = super().get_config()
        config.update({"c": self.c, "iterations": self.iterations})
        return config


@keras.saving.register_keras_serializable(package="keras_mtl")
class IMTLWeighting(_SolvedWeighting):
    """IMTL: impartial gradients on shared variables, learned loss scales.

    IMTL-G: each task's weighted gradient is computed separately; on the
    *shared* variables the update direction is `sum_k a_k g_k` with
    `a = imtl_weights(g)`, the combination (weights summing to 1) whose
    projections onto every task's unit gradient are equal, so no task
    dominates the shared update by the size of its gradient. Task-specific
    variables (towers, heads) get their own task's gradient, and auxiliary
    losses are added unchanged, as in `PCGradWeighting`. The last step's
    `a` is logged per epoch as `<task>_imtl_alpha`.

    IMTL-L (`loss_scale=True`, the paper's hybrid IMTL): a learned scale
    `s_k` per task; task `k` contributes `b_k (exp(s_k) L_k - s_k)` (`b_k`
    its fixed weight; 0 leaves it out), so the task-specific variables get
    `b_k exp(s_k) grad L_k` and `s_k` is trained by the model's optimizer
    toward `exp(s_k) L_k = 1`: every scaled loss is driven to the same
    value, whatever the task's loss kind and size. The effective weight
    `b_k exp(s_k)` is logged as `<task>_weight`. The scales never enter the
    serving model. With `loss_scale=False` (IMTL-G alone) the fixed weights
    are kept. Needs the TensorFlow backend (one backward pass per task).

    As in the paper and LibMTL the shared update has the size of one
    task's gradient (the weights sum to 1), not of the summed gradient that
    fixed weights apply.

    Args:
        loss_scale: bool. Learn the loss scales (IMTL-L). Defaults to
            `True`.
        {shared_scope}
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    >>> wrapper = keras_mtl.training.compile(model, tasks, weighting="imtl")

    References:
        Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021.
        https://openreview.net/forum?id=IMPnRXEWpvr
    """

    strategy_name = "imtl"
    log_name = "imtl_alpha"

    def __init__(self, loss_scale=True, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(loss_scale, bool):
            raise ValueError(
                "`loss_scale` must be True or False. "
                f"Received: loss_scale={loss_scale!r}"
            )
        self.loss_scale = loss_scale

    def create_state(self, num_tasks):
        super().create_state(num_tasks)
        self.log_scales = None
        if self.loss_scale:
            self.log_scales = self.add_weight(
                name="log_scales",
                shape=(num_tasks,),
                initializer="zeros",
                trainable=True,
            )

    def current_weights(self):
        base = ops.convert_to_tensor(self.base_weights, "float32")
        if self.log_scales is None:
            return base
        return base * ops.exp(self.log_scales)

    def combine(self, task_losses, training=False):
        if self.log_scales is None:
            return super().combine(task_losses, training)
        base = ops.convert_to_tensor(self.base_weights, "float32")
        s = self.log_scales
        return ops.sum(base * (ops.exp(s) * task_losses - s))

    def solve(self, flat):
        alpha = imtl_weights(flat)
        return _combine(alpha, flat), alpha

    def task_gradients(self, context):
        grads = super().task_gradients(context)
        if self.log_scales is not None:
            # d/ds_k of b_k (exp(s_k) L_k - s_k), in the optimizer's
            # (possibly loss-scaled) units like the other gradients.
            base = ops.convert_to_tensor(self.base_weights, "float32")
            value = base * (ops.exp(self.log_scales) * context.task_losses - 1)
            index = [v is self.log_scales for v in context.variables]
            grads[index.index(True)] = value * context.loss_scale
        return grads

    def get_config(self):
        config = super().get_config()
        config.update({"loss_scale": self.loss_scale})
        return config


@keras.saving.register_keras_serializable(package="keras_mtl")
class NashMTLWeighting(_SolvedWeighting):
    """Nash-MTL: shared variables follow the tasks' bargaining solution.

    Each task's weighted gradient is computed separately. On the *shared*
    variables the update direction is `d = sum_k a_k g_k` with
    `a = nash_mtl_weights(g)`: every task gets `g_k . d = 1 / a_k`, the
    Nash bargaining solution of the tasks (it does not depend on the
    gradients' scales, so the fixed task weights only decide which tasks
    take part). `d` is then clipped to `max_norm` (Navon et al.'s and
    LibMTL's default, 1.0): its length does not shrink as the gradients
    do. Task-specific variables (towers, heads) get their own task's
    gradient and auxiliary losses are added unchanged, as in the other
    gradient strategies here (the reference code also scales the towers'
    gradients by `a_k`). The last step's `a` is logged per epoch as
    `<task>_nash_alpha`. Needs the TensorFlow backend (one backward pass
    per task).

    Args:
        iterations: int. Newton steps of the solver per training step.
            Defaults to `20`.
        max_norm: float >= 0. The largest norm of the shared update; 0
            does not clip. Defaults to `1.0`.
        {shared_scope}
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    >>> wrapper = keras_mtl.training.compile(
    ...     model, tasks, weighting="nash_mtl")

    References:
        Navon et al., "Multi-Task Learning as a Bargaining Game", ICML
        2022. https://arxiv.org/abs/2202.01017
    """

    strategy_name = "nash_mtl"
    log_name = "nash_alpha"

    def __init__(self, iterations=20, max_norm=1.0, **kwargs):
        super().__init__(**kwargs)
        self.iterations = _check_iterations(iterations)
        self.max_norm = _check_positive("max_norm", max_norm, allow_zero=True)

    def solve(self, flat):
        alpha = nash_mtl_weights(flat, self.iterations)
        direction = _combine(alpha, flat)
        if self.max_norm > 0:
            norm = ops.sqrt(ops.sum(direction * direction))
            direction = direction * ops.minimum(
                1.0, self.max_norm / ops.maximum(norm, _EPSILON)
            )
        return direction, alpha

    def get_config(self):
        config = super().get_config()
        config.update(
            {"iterations": self.iterations, "max_norm": self.max_norm}
        )
        return config


@keras.saving.register_keras_serializable(package="keras_mtl")
class AlignedMTLWeighting(_SolvedWeighting):
    """Aligned-MTL: shared variables follow the aligned task gradients.

    Each task's gradient is computed separately. On the *shared* variables
    the task gradients are aligned by `aligned_mtl_weights` (made
    orthogonal with equal norms, the smallest singular value of their
    matrix) and summed with the tasks' fixed weights as preferences:
    conflicts and differences in gradient size no longer decide the update,
    the fixed weights do. Task-specific variables (towers, heads) get their
    own task's weighted gradient, and auxiliary losses are added unchanged,
    as in `PCGradWeighting`. The last step's weights of the (unweighted)
    task gradients are logged per epoch as `<task>_aligned_alpha`. Needs
    the TensorFlow backend (one backward pass per task).

    Args:
        {shared_scope}
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    >>> wrapper = keras_mtl.training.compile(
    ...     model, tasks, weighting="aligned_mtl")

    References:
        Senushkin et al., "Independent Component Alignment for Multi-Task
        Learning", CVPR 2023. https://arxiv.org/abs/2305.19000
    """

    strategy_name = "aligned_mtl"
    log_name = "aligned_alpha"

    def solve(self, flat):
        # `flat` holds the weighted gradients w_k g_k; the alignment works
        # on the gradients themselves and the weights are its preferences.
        weights = ops.convert_to_tensor(
            [w for w in self.base_weights if w > 0], flat.dtype
        )
        grads = flat / weights[:, None]
        alpha = aligned_mtl_weights(grads, weights)
        return _combine(alpha, grads), alpha


@keras.saving.register_keras_serializable(package="keras_mtl")
class FairGradWeighting(_SolvedWeighting):
    """FairGrad: shared variables follow the alpha-fair combination of the
    task gradients.

    Each task's weighted gradient is computed separately. On the *shared*
    variables the update is `sum_k w_k g_k` with `fairgrad_weights`, which
    give every task an improvement `g_k . d = w_k^(-1 / alpha)`: `alpha = 1`
    is proportional fairness (Nash-MTL's bargaining condition, without its
    clipping), larger `alpha` favours the task that improves least,
    approaching max-min fairness. Task-specific variables (towers, heads)
    get their own task's weighted gradient, and auxiliary losses are added
    unchanged, as in `NashMTLWeighting`. The last step's weights of the
    (unweighted) task gradients are logged per epoch as
    `<task>_fairgrad_weight`. Needs the TensorFlow backend (one backward
    pass per task).

    Args:
        alpha: float > 0. Fairness. Defaults to `1.0` (LibMTL's).
        iterations: int. Newton steps of the solver per training step.
            Defaults to `30`.
        {shared_scope}
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    >>> wrapper = keras_mtl.training.compile(
    ...     model, tasks, weighting={"name": "fairgrad", "alpha": 2.0})

    References:
        Ban and Ji, "Fair Resource Allocation in Multi-Task Learning",
        ICML 2024. https://arxiv.org/abs/2402.15638
    """

    strategy_name = "fairgrad"
    log_name = "fairgrad_weight"

    def __init__(self, alpha=1.0, iterations=30, **kwargs):
        super().__init__(**kwargs)
        self.alpha_fairness = _check_positive("alpha", alpha)
        self.iterations = _check_iterations(iterations)

    def solve(self, flat):
        # `flat` holds the weighted gradients w_k g_k.
        weights = fairgrad_weights(flat, self.alpha_fairness, self.iterations)
        base = ops.convert_to_tensor(
            [w for w in self.base_weights if w > 0], flat.dtype
        )
        return _combine(weights, flat), weights * base

    def get_config(self):
        config = super().get_config()
        config.update(
            {"alpha": self.alpha_fairness, "iterations": self.iterations}
        )
        return config


@keras.saving.register_keras_serializable(package="keras_mtl")
class UPGradWeighting(_SolvedWeighting):
    """UPGrad: shared variables follow the sum of the task gradients, each
    projected so that it conflicts with no task.

    Each task's weighted gradient is computed separately. On the *shared*
    variables each one is projected onto the cone of directions that
    decrease no task's loss to first order (`upgrad_weights`) and the
    projections are summed: the update conflicts with no task, and where
    no two gradients conflict it is exactly the fixed-weights update. With
    two tasks the projections are PCGrad's, without its random order; with
    more, each projection accounts for all the tasks at once (PCGrad
    projects on one task after another, and a later projection can undo an
    earlier one). Task-specific variables (towers, heads) get their own
    task's weighted gradient, and auxiliary losses are added unchanged, as
    in `PCGradWeighting`. The last step's weights of the (unweighted) task
    gradients are logged per epoch as `<task>_upgrad_alpha`. Needs the
    TensorFlow backend (one backward pass per task).

    Args:
        iterations: int. Active-set steps of the projections (see
            `upgrad_weights`). Defaults to `20`.
        {shared_scope}
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    >>> wrapper = keras_mtl.training.compile(
    ...     model, tasks, weighting="upgrad")

    References:
        Quinton and Rey, "Jacobian Descent for Multi-Objective
        Optimization", 2024. https://arxiv.org/abs/2406.16232
    """

    strategy_name = "upgrad"
    log_name = "upgrad_alpha"

    def __init__(self, iterations=20, **kwargs):
        super().__init__(**kwargs)
        self.iterations = _check_iterations(iterations)

    def solve(self, flat):
        # `flat` holds the weighted gradients w_k g_k, whose projections
        # are w_k times those of g_k: preferences 1 on them.
        weights = upgrad_weights(flat, iterations=self.iterations)
        base = ops.convert_to_tensor(
            [w for w in self.base_weights if w > 0], flat.dtype
        )
        return _combine(weights, flat), weights * base

    def get_config(self):
        config = super().get_config()
        config.update({"iterations": self.iterations})
        return config


class _TrackedGradientWeighting(WeightingStrategy):
    """A strategy that keeps, per task, a moving average of its gradient on
    the shared variables it balances, and moves those variables along a
    combination of the averages (DB-MTL, MoCo).

    Subclasses implement `task_factor` (the factor on each task's gradient,
    e.g. `1 / L_k` for the gradient of `log L_k`), `prepare` (optional),
    `track` (the average's update) and `combine_averages` (the weights of
    the averages in the update). The averages are not part of `get_state`;
    the step count is.
    """

    needs_task_gradients = True
    log_name = None

    def __init__(self, shared_scope="all", **kwargs):
        super().__init__(**kwargs)
        self.shared_scope = _check_shared_scope(shared_scope)

    def create_state(self, num_tasks):
        self.step = self.add_weight(
            name="step", shape=(), initializer="zeros", trainable=False
        )
        self.alpha = self.add_weight(
            name="alpha",
            shape=(num_tasks,),
            initializer="zeros",
            trainable=False,
        )

    def create_variable_state(self, shared_variables, table_variables):
        tables = {id(v) for v in table_variables}
        balanced = [
            v
            for v in shared_variables
            if self.shared_scope == "all" or id(v) not in tables
        ]
        self._balanced = {id(v): k for k, v in enumerate(balanced)}
        self.averages = [
            self.add_weight(
                name=f"average_{k}",
                shape=(self.num_tasks, *v.shape),
                initializer="zeros",
                trainable=False,
            )
            for k, v in enumerate(balanced)
        ]

    def task_factor(self, loss):  # pragma: no cover - interface
        """The factor on a task's gradient, from its loss (a scalar)."""
        raise NotImplementedError

    def prepare(self, current, losses, weights):
        """The tracked gradients from the current ones (default: as is)."""
        return current

    def track(self, previous, current, step):  # pragma: no cover
        """The new average of one variable, `(num_active, ...)`."""
        raise NotImplementedError

    def combine_averages(self, gram, weights, step):  # pragma: no cover
        """The weights `(num_active,)` of the averages in the update, from
        their Gram matrix and the active tasks' fixed weights."""
        raise NotImplementedError

    def task_gradients(self, context):
        variables = context.variables
        active = [i for i, a in enumerate(self.active) if a > 0]
        weights = [self.base_weights[i] for i in active]
        keep_sparse = self.shared_scope == "dense"
        per_task = []
        losses = []
        for i in active:
            loss = ops.stop_gradient(
                ops.cast(context.task_losses[i], "float32")
            )
            losses.append(loss)
            factor = self.task_factor(loss)
            grads = context.gradient(
                context.scaled_losses[i], dense=not keep_sparse
            )
            per_task.append(
                [None if g is None else context.scale(g, factor) for g in grads]
            )
        extra = (
            context.gradient(context.scaled_extra, dense=not keep_sparse)
            if context.scaled_extra is not None
            else [None] * len(variables)
        )
        balanced = [
            k for k, v in enumerate(variables) if id(v) in self._balanced
        ]
        out = []
        for k in range(len(variables)):
            if k in balanced:
                out.append(None)
                continue
            parts = [
                context.scale(g[k], w)
                for g, w in zip(per_task, weights)
                if g[k] is not None
            ]
            if extra[k] is not None:
                parts.append(extra[k])
            out.append(context.add(parts) if parts else None)
        if not balanced or not active:
            return out
        step = self.step + 1.0
        # The averages are kept in the units of the losses, not of the loss
        # scale (mixed precision).
        unscale = 1.0 / context.loss_scale
        current = [
            ops.stack(
                [
                    _dense(context.densify(g[k]), variables[k]) * unscale
                    for g in per_task
                ]
            )
            for k in balanced
        ]
        current = self.prepare(current, ops.stack(losses), weights)
        index = ops.convert_to_tensor([[i] for i in active], "int32")
        states = [
            self.averages[self._balanced[id(variables[k])]] for k in balanced
        ]
        averages = [
            self.track(
                ops.take(state, ops.convert_to_tensor(active), axis=0),
                now,
                step,
            )
            for state, now in zip(states, current)
        ]
        gram = 0.0
        for average in averages:
            flat = ops.reshape(average, (len(active), -1))
            gram = gram + ops.matmul(flat, ops.transpose(flat))
        alpha = self.combine_averages(
            gram, ops.convert_to_tensor(weights, "float32"), step
        )
        for k, state, average in zip(balanced, states, averages):
            update = ops.tensordot(alpha, average, axes=1) * context.loss_scale
            if extra[k] is not None:
                update = update + _dense(
                    context.densify(extra[k]), variables[k]
                )
            out[k] = update
            state.assign(
                ops.scatter_update(state, index, average)
                if len(active) < self.num_tasks
                else average
            )
        self.step.assign(step)
        self.alpha.assign(ops.scatter(index, alpha, (self.num_tasks,)))
        return out

    def extra_logs(self):
        alpha = np.asarray(self.alpha)
        return {
            f"{name}_{self.log_name}": float(alpha[k])
            for k, name in enumerate(self.task_names)
            if self.active[k]
        }

    def get_state(self):
        averages = {id(v) for v in self.averages}
        kept = [v for v in self.variables if id(v) not in averages]
        return {v.name: np.asarray(v).tolist() for v in kept}

    def get_config(self):
        config = super().get_config()
        config.update({"shared_scope": self.shared_scope})
        return config


def _decay(rate, power, step):
    """`rate / step^power`, the schedule of DB-MTL's and MoCo's averages."""
    return rate / ops.power(step, power)


@keras.saving.register_keras_serializable(package="keras_mtl")
class DBMTLWeighting(_TrackedGradientWeighting):
    """DB-MTL: dual balancing, of the loss scales and of the gradient norms.

    Loss scales: every task descends `log L_k` instead of `L_k`, whose
    gradient `grad L_k / L_k` does not depend on the loss's scale (units,
    label range, base rate). Gradient magnitudes: on the *shared* variables
    each task keeps an exponential moving average `m_k` of its log-loss
    gradient (`m_k <- g_k + beta / t^beta_sigma (m_k - g_k)` at step `t`,
    so the average fades into the current gradient as training goes on),
    and the update is `sum_k b_k (max_j |m_j| / |m_k|) m_k`: every task's
    averaged gradient is scaled to the largest norm among them, then
    weighted by its fixed weight `b_k`. Task-specific variables (towers,
    heads) get `sum_k b_k grad log L_k`, and auxiliary losses are added
    unchanged. The weights of the averages in the last step's update,
    `b_k max_j |m_j| / |m_k|`, are logged per epoch as `<task>_db_alpha`;
    the logged training loss is the fixed-weights sum.
    Needs the TensorFlow backend (one backward pass per task).

    The averages take one copy of every balanced variable per task (with
    `shared_scope="all"`, embedding tables included, as in the paper and
    LibMTL). `shared_scope="dense"` leaves the embedding tables
    (`keras.layers.Embedding` weights) out of the balancing: they get
    `sum_k b_k grad log L_k`, kept sparse, and no copy; what a large ID
    vocabulary needs. The averages are not part of `get_state` (they fade
    within a few hundred steps); the step count is.

    Args:
        beta: float in [0, 1). The averages' decay at step 1. Defaults to
            `0.9` (the paper's).
        beta_sigma: float >= 0. How fast the decay falls with the step.
            Defaults to `0.5` (the paper's).
        shared_scope: `"all"` or `"dense"`. Defaults to `"all"`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    >>> wrapper = keras_mtl.training.compile(model, tasks, weighting="db_mtl")

    References:
        Lin et al., "Dual-Balancing for Multi-Task Learning", 2023.
        https://arxiv.org/abs/2308.12029
    """

    strategy_name = "db_mtl"
    log_name = "db_alpha"

    def __init__(self, beta=0.9, beta_sigma=0.5, shared_scope="all", **kwargs):
        super().__init__(shared_scope=shared_scope, **kwargs)
        self.beta = _check_fraction("beta", beta)
        self.beta_sigma = _check_positive(
            "beta_sigma", beta_sigma, allow_zero=True
        )

    def task_factor(self, loss):
        # grad(s L_k) / L_k: the gradient of log L_k, in loss-scale units.
        return 1.0 / (loss + 1e-8)

    def track(self, previous, current, step):
        decay = _decay(self.beta, self.beta_sigma, step)
        return current + decay * (previous - current)

    def combine_averages(self, gram, weights, step):
        norms = ops.sqrt(ops.maximum(ops.diagonal(gram), 0.0))
        scale = ops.where(
            norms > 0, ops.max(norms) / ops.maximum(norms, 1e-30), 0.0
        )
        return scale * weights

    def get_config(self):
        config = super().get_config()
        config.update({"beta": self.beta, "beta_sigma": self.beta_sigma})
        return config


@keras.saving.register_keras_serializable(package="keras_mtl")
class MoCoWeighting(_TrackedGradientWeighting):
    """MoCo: a common descent direction from tracked task gradients.

    MGDA's min-norm combination is biased when it is computed from noisy
    mini-batch gradients. MoCo tracks each task's gradient on the *shared*
    variables with a moving average `y_k <- y_k - beta_t (y_k - g_k)`,
    where `g_k` is the task's gradient rescaled to the norm of its weighted
    loss (`b_k L_k g / |g|`, LibMTL's normalization), and moves weights
    `lambda` on the simplex along the min-norm objective:
    `lambda <- softmax(lambda - gamma_t (Y Y^T + rho I) lambda)`; the shared
    update is `sum_k lambda_k y_k`. `beta_t = beta / t^beta_sigma` and
    `gamma_t = gamma / t^gamma_sigma` at step `t`. Task-specific variables
    (towers, heads) get their own task's weighted gradient, and auxiliary
    losses are added unchanged. `lambda` of the last step is logged per
    epoch as `<task>_moco_lambda`. Needs the TensorFlow backend (one
    backward pass per task).

    The averages take one copy of every balanced variable per task;
    `shared_scope="dense"` leaves the embedding tables out of them (they get
    the weighted sum of the task gradients, kept sparse), as in
    `DBMTLWeighting`. `lambda` and the step count are part of `get_state`,
    the averages are not.

    Args:
        beta: float in (0, 1]. The averages' step at step 1. Defaults to
            `0.5` (LibMTL's).
        beta_sigma: float >= 0. Defaults to `0.5`.
        gamma: float > 0. The step of `lambda` at step 1. Defaults to `0.1`.
        gamma_sigma: float >= 0. Defaults to `0.5`.
        rho: float >= 0. Ridge on the averages' Gram matrix. Defaults to
            `0.0`.
        shared_scope: `"all"` or `"dense"`. Defaults to `"all"`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    >>> wrapper = keras_mtl.training.compile(model, tasks, weighting="moco")

    References:
        Fernando et al., "Mitigating Gradient Bias in Multi-objective
        Learning: A Provably Convergent Approach", ICLR 2023.
        https://openreview.net/forum?id=dLAYGdKTi2
    """

    strategy_name = "moco"
    log_name = "moco_lambda"

    def __init__(
        self,
        beta=0.5,
        beta_sigma=0.5,
        gamma=0.1,
        gamma_sigma=0.5,
        rho=0.0,
        shared_scope="all",
        **kwargs,
    ):
        super().__init__(shared_scope=shared_scope, **kwargs)
        self.beta = _check_positive("beta", beta)
        if self.beta > 1.0:
            raise ValueError(
                f"`beta` must be in (0, 1]. Received: beta={beta!r}"
            )
        self.beta_sigma = _check_positive(
            "beta_sigma", beta_sigma, allow_zero=True
        )
        self.gamma = _check_positive("gamma", gamma)
        self.gamma_sigma = _check_positive(
            "gamma_sigma", gamma_sigma, allow_zero=True
        )
        self.rho = _check_positive("rho", rho, allow_zero=True)

    def create_state(self, num_tasks):
        super().create_state(num_tasks)
        self.lambdas = self.add_weight(
            name="lambdas",
            shape=(num_tasks,),
            initializer="zeros",
            trainable=False,
        )

    def task_factor(self, loss):
        return 1.0

    def prepare(self, current, losses, weights):
        squares = 0.0
        for grads in current:
            flat = ops.reshape(grads, (len(weights), -1))
            squares = squares + ops.sum(flat * flat, axis=1)
        norms = ops.sqrt(squares)
        # The weighted gradients w_k g_k, rescaled to the weighted loss.
        size = ops.convert_to_tensor(weights, "float32") * losses
        scale = size / (norms + 1e-8)
        return [
            grads * ops.reshape(scale, (-1,) + (1,) * (len(grads.shape) - 1))
            for grads in current
        ]

    def track(self, previous, current, step):
        return previous - _decay(self.beta, self.beta_sigma, step) * (
            previous - current
        )

    def combine_averages(self, gram, weights, step):
        active = [i for i, a in enumerate(self.active) if a > 0]
        stored = ops.take(self.lambdas, ops.convert_to_tensor(active), axis=0)
        # Uniform weights at the first step (the stored zeros).
        lambdas = ops.where(
            step > 1.0, stored, ops.full_like(stored, 1.0 / len(active))
        )
        eye = ops.eye(len(active), dtype="float32")
        lambdas = ops.softmax(
            lambdas
            - _decay(self.gamma, self.gamma_sigma, step)
            * ops.matmul(gram + self.rho * eye, lambdas)
        )
        index = ops.convert_to_tensor([[i] for i in active], "int32")
        self.lambdas.assign(ops.scatter(index, lambdas, (self.num_tasks,)))
        return lambdas

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "beta": self.beta,
                "beta_sigma": self.beta_sigma,
                "gamma": self.gamma,
                "gamma_sigma": self.gamma_sigma,
                "rho": self.rho,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_mtl")
class FAMOWeighting(WeightingStrategy):
    """FAMO: weights that make the tasks' log losses fall at equal rates.

    Trains on `famo_objective`: every task's gradient is weighted by
    `w_k = z_k / (c L_k)`, the gradient of `sum_k z_k log L_k / c`, with
    `z = softmax(logits + log b)` over the tasks with a positive fixed
    weight `b_k` (the fixed weights are the tasks' starting shares; the
    logits are learned from 0) and `c` making the weights sum to 1. After
    each update the same batch is
    evaluated again, and the logits take one Adam step (learning rate
    `learning_rate`, PyTorch-style L2 `weight_decay`) along
    `famo_logits_gradient`: weight moves toward the tasks whose log loss
    fell least. No per-task gradients: one backward pass and one extra
    forward pass a step. The extra forward pass leaves the model's
    non-trainable state (batch-norm statistics) as the update left it. The
    last step's weights are logged as `<task>_weight`; evaluation reports
    the fixed-weight loss `sum_k b_k L_k`. Needs the TensorFlow backend (a
    custom train step).

    Args:
        learning_rate: float > 0. Adam's learning rate for the logits.
            Defaults to `0.025` (the paper's and LibMTL's).
        weight_decay: float >= 0. L2 on the logits. Defaults to `1e-3`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    >>> wrapper = keras_mtl.training.compile(model, tasks, weighting="famo")

    References:
        Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS
        2023. https://arxiv.org/abs/2306.03792
    """

    strategy_name = "famo"
    needs_post_step = True

    def __init__(self, learning_rate=0.025, weight_decay=1e-3, **kwargs):
        super().__init__(**kwargs)
        self.learning_rate = _check_positive("learning_rate", learning_rate)
        self.weight_decay = _check_positive(
            "weight_decay", weight_decay, allow_zero=True
        )

    def create_state(self, num_tasks):
        def state(name, shape=(num_tasks,)):
            return self.add_weight(
                name=name, shape=shape, initializer="zeros", trainable=False
            )

        self.logits = state("logits")
        self.m = state("adam_m")
        self.v = state("adam_v")
        self.steps = state("adam_steps", ())
        self.weights_used = state("weights_used")

    def _masked_logits(self):
        active = ops.convert_to_tensor(self.active, "float32")
        return ops.where(active > 0, self.logits, -np.inf)

    def _base(self):
        return ops.convert_to_tensor(self.base_weights, "float32")

    def current_weights(self):
        if not any(self.active):
            return self._base()
        # Before the first step: the objective's weights at equal losses.
        fresh = self._base() / sum(self.base_weights)
        return ops.where(self.steps > 0, self.weights_used, fresh)

    def combine(self, task_losses, training=False):
        if not training or not any(self.active):
            return super().combine(task_losses, training)
        base = self._base()
        # The fixed weights scale each task's share: softmax(logits + log b).
        logits = self._masked_logits() + ops.log(ops.maximum(base, 1e-30))
        objective, weights = famo_objective(task_losses, logits)
        self.weights_used.assign(weights)
        return objective

    def after_step(self, losses_before, losses_after):
        if not any(self.active):
            return
        base = self._base()
        logits = self._masked_logits() + ops.log(ops.maximum(base, 1e-30))
        grad = famo_logits_gradient(logits, losses_before, losses_after)
        active = ops.convert_to_tensor(self.active, "float32")
        grad = active * (grad + self.weight_decay * self.logits)
        # One Adam step (PyTorch's form, beta 0.9 / 0.999, epsilon 1e-8).
        steps = self.steps + 1.0
        m = 0.9 * self.m + 0.1 * grad
        v = 0.999 * self.v + 0.001 * grad * grad
        m_hat = m / (1.0 - ops.power(0.9, steps))
        v_hat = v / (1.0 - ops.power(0.999, steps))
        step = self.learning_rate * m_hat / (ops.sqrt(v_hat) + 1e-8)
        self.m.assign(m)
        self.v.assign(v)
        self.steps.assign(steps)
        self.logits.assign(self.logits - active * step)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "learning_rate": self.learning_rate,
                "weight_decay": self.weight_decay,
            }
        )
        return config


# The `shared_scope` argument, as every gradient-combining strategy's
# docstring states it (like the zoo builders' shared arguments).
_SHARED_SCOPE_ARG = """\
shared_scope: `"all"` or `"dense"`. The shared variables the
            combination covers; `"dense"` leaves out those with sparse
            gradients (embedding tables), which then get the weighted sum
            of the task gradients, kept sparse. Defaults to `"all"`."""

_CLASSES = {
    "fixed": FixedWeighting,
    "uncertainty": UncertaintyWeighting,
    "gradnorm": GradNormWeighting,
    "dwa": DWAWeighting,
    "rlw": RLWWeighting,
    "pcgrad": PCGradWeighting,
    "gradvac": GradVacWeighting,
    "mgda": MGDAWeighting,
    "cagrad": CAGradWeighting,
    "imtl": IMTLWeighting,
    "nash_mtl": NashMTLWeighting,
    "aligned_mtl": AlignedMTLWeighting,
    "famo": FAMOWeighting,
    "gls": GLSWeighting,
    "upgrad": UPGradWeighting,
    "db_mtl": DBMTLWeighting,
    "moco": MoCoWeighting,
    "stch": STCHWeighting,
    "fairgrad": FairGradWeighting,
}


for _strategy in _CLASSES.values():
    if "{shared_scope}" in (_strategy.__doc__ or ""):
        _strategy.__doc__ = _strategy.__doc__.replace(
            "{shared_scope}", _SHARED_SCOPE_ARG
        )


def get(identifier):
    """Returns a fresh `WeightingStrategy` from a name, a mapping or itself.

    Args:
        identifier: one of `"fixed"`, `"uncertainty"`, `"gradnorm"`,
            `"dwa"`, `"rlw"`, `"pcgrad"`, `"mgda"`, `"cagrad"`, `"imtl"`,
            `"nash_mtl"`, `"aligned_mtl"`, `"famo"`, `"gradvac"`,
            `"gls"`, `"upgrad"`, `"db_mtl"`, `"moco"`, `"stch"`,
            `"fairgrad"`; a mapping
            `{"name": ..., **arguments}` (e.g.
            `{"name": "gradnorm", "alpha": 0.5}`); a `WeightingStrategy`
            instance (returned as is); or `None` (fixed).

    Returns:
        A `WeightingStrategy`.
    """
    if identifier is None:
        return FixedWeighting()
    if isinstance(identifier, WeightingStrategy):
        return identifier
    if isinstance(identifier, str):
        name, kwargs = identifier, {}
    elif isinstance(identifier, dict):
        kwargs = dict(identifier)
        name = kwargs.pop("name", None)
    else:
        raise ValueError(
            "`weighting` must be a strategy name, a mapping with a `name`, "
            "or a `keras_mtl.training.WeightingStrategy`. Received: "
            f"weighting={identifier!r}"
        )
    if name not in _CLASSES:
        raise ValueError(
            f"Unknown `weighting` strategy. Received: {name!r}; known: "
            f"{list(STRATEGIES)}"
        )
    try:
        return _CLASSES[name](**kwargs)
    except TypeError as err:
        raise ValueError(
            f"Invalid arguments for weighting strategy '{name}': {err}. "
            f"Received: {kwargs!r}"
        ) from None
