"""Losses of keras-mtl: masked per-task losses and the KL bound.

Every task is trained on its own sample space. `task_loss` returns the Keras
loss for a task's kind with `reduction="mean_with_sample_weight"`, so with
the per-output `sample_weight` that `keras_mtl.data` yields (0 outside the
space or where the label is NaN, 1 elsewhere) the loss is the mean over the
samples inside the space: `sum(w * l) / sum(w)`.

`KLBound` (and its functional form `kl_bound`) is a consistency loss between
a probability obtained as a product chain, e.g. `p(click) * p(convert |
click)`, and the same event predicted directly, e.g. `p(order)`.
"""

import math

import keras
from keras import ops

from keras_mtl.task import Task

_TASK_LOSSES = {
    "binary": keras.losses.BinaryCrossentropy,
    "regression": keras.losses.MeanSquaredError,
    "multiclass": keras.losses.SparseCategoricalCrossentropy,
}


def task_loss(task):
    """Returns the Keras loss of a task, averaged over its sample space.

    Binary tasks get `keras.losses.BinaryCrossentropy`, regression tasks
    `keras.losses.MeanSquaredError` and multiclass tasks
    `keras.losses.SparseCategoricalCrossentropy` (integer labels, softmax
    probabilities). The loss is named after the task and uses
    `reduction="mean_with_sample_weight"`: given per-output sample weights
    `w` it returns `sum(w * loss) / sum(w)`, i.e. the mean over the samples
    inside the task's space, and 0 for a batch with no such sample.

    Args:
        task: `keras_mtl.Task`. The task whose loss to build.

    Returns:
        A new `keras.losses.Loss` instance named `task.name`.

    Example:

    >>> tasks = [keras_mtl.Task("click"),
    ...          keras_mtl.Task("conversion", space="click")]
    >>> model.compile(
    ...     optimizer="adam",
    ...     loss={t.name: keras_mtl.losses.task_loss(t) for t in tasks},
    ...     loss_weights={t.name: t.weight for t in tasks},
    ... )
    >>> model.fit(dataset)  # dataset yields (x, y, sample_weight) dicts
    """
    if not isinstance(task, Task):
        raise ValueError(
            f"`task` must be a `keras_mtl.Task`. Received: task={task!r}"
        )
    loss_class = _TASK_LOSSES[task.kind]
    return loss_class(reduction="mean_with_sample_weight", name=task.name)


def _check_epsilon(epsilon):
    if (
        isinstance(epsilon, bool)
        or not isinstance(epsilon, (int, float))
        or not math.isfinite(epsilon)
        or not 0 < epsilon < 0.5
    ):
        raise ValueError(
            "`epsilon` must be a number in (0, 0.5). "
            f"Received: epsilon={epsilon!r}"
        )
    return float(epsilon)


def kl_bound(p, q, epsilon=1e-7):
    """Symmetric Bernoulli KL divergence between two probabilities.

    Computes `KL(p || q) + KL(q || p)` of the Bernoulli distributions with
    success probabilities `p` and `q`, which simplifies to
    `(p - q) * (logit(p) - logit(q))`. Both probabilities are clipped to
    `[epsilon, 1 - epsilon]` first, so the value is finite at 0 and 1, and it
    is exactly 0 where `p == q`. The computation runs in at least float32
    (in bfloat16 `1 - 1e-7` would round to 1).

    Like `keras.losses.binary_crossentropy`, the values are averaged over the
    last axis, so `(batch, 1)` inputs give one value per sample.

    Args:
        p: tensor of probabilities, e.g. a product chain
            `p(click) * p(convert | click)`.
        q: tensor of probabilities of the same shape, e.g. a directly
            predicted joint `p(order)`.
        epsilon: float. Clipping margin, in `(0, 0.5)`. Defaults to `1e-7`.

    Returns:
        Tensor of shape `p.shape[:-1]` with the per-sample divergence.

    Example:

    >>> p = np.array([[0.1], [0.5], [1.0]])
    >>> q = np.array([[0.1], [0.4], [0.0]])
    >>> keras_mtl.losses.kl_bound(p, q)  # [0.0, 0.0405, 32.24]

    References:
        - [Ma et al., 2018. Entire Space Multi-Task Model](
            https://arxiv.org/abs/1804.07931)
        - [Xi et al., 2021. Adaptive Information Transfer Multi-task (AITM)](
            https://arxiv.org/abs/2105.08489)
    """
    epsilon = _check_epsilon(epsilon)
    p = ops.convert_to_tensor(p)
    q = ops.convert_to_tensor(q)
    dtype = keras.backend.result_type(p.dtype, q.dtype, "float32")
    p = ops.clip(ops.cast(p, dtype), epsilon, 1.0 - epsilon)
    q = ops.clip(ops.cast(q, dtype), epsilon, 1.0 - epsilon)
    logit_p = ops.log(p) - ops.log1p(-p)
    logit_q = ops.log(q) - ops.log1p(-q)
    return ops.mean((p - q) * (logit_p - logit_q), axis=-1)


@keras.saving.register_keras_serializable(package="keras_mtl")
class KLBound(keras.losses.Loss):
    """Symmetric KL between a product-chain probability and a joint one.

    In a conversion funnel the probability of an order can be obtained two
    ways: as the product chain `p(click) * p(convert | click)` or predicted
    directly by an order head. `KLBound` penalises their disagreement with
    the symmetric Bernoulli divergence `KL(p || q) + KL(q || p)` (see
    `keras_mtl.losses.kl_bound`), which is 0 when they agree and finite even
    at probabilities 0 and 1.

    Reduction and `sample_weight` are handled by `keras.losses.Loss`. To add
    the penalty inside a functional model use
    `keras_mtl.layers.KLBoundPenalty`.

    Args:
        epsilon: float. Probabilities are clipped to
            `[epsilon, 1 - epsilon]`. Defaults to `1e-7`.
        reduction: str. Keras reduction of the per-sample values. Defaults to
            `"sum_over_batch_size"`.
        name: str. Name of the loss. Defaults to `"kl_bound"`.
        dtype: dtype of the loss computation. Defaults to `None` (floatx).

    Call arguments:
        y_true: tensor of probabilities `p`, e.g. the product chain.
        y_pred: tensor of probabilities `q`, e.g. the predicted joint.
        sample_weight: optional tensor of per-sample weights.

    Returns:
        The reduced loss; with `reduction=None` the per-sample values.

    Example:

    >>> loss = keras_mtl.losses.KLBound()
    >>> loss(ctr * cvr, ctcvr)

    References:
        - [Ma et al., 2018. Entire Space Multi-Task Model](
            https://arxiv.org/abs/1804.07931)
        - [Xi et al., 2021. Adaptive Information Transfer Multi-task (AITM)](
            https://arxiv.org/abs/2105.08489)
    """

    def __init__(
        self,
        epsilon=1e-7,
        reduction="sum_over_batch_size",
        name="kl_bound",
        dtype=None,
    ):
        self.epsilon = _check_epsilon(epsilon)
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        y_true, y_pred = _same_rank(y_true, y_pred)
        return kl_bound(y_true, y_pred, epsilon=self.epsilon)

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config


def _same_rank(y_true, y_pred):
    """Expands a rank-1 side to `(batch, 1)` to match the other side."""
    if len(y_true.shape) == len(y_pred.shape) - 1:
        y_true = ops.expand_dims(y_true, -1)
    elif len(y_pred.shape) == len(y_true.shape) - 1:
        y_pred = ops.expand_dims(y_pred, -1)
    return y_true, y_pred
