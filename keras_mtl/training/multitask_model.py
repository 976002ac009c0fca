"""`MultiTaskModel`: trains a zoo model with a loss-weighting strategy.

The wrapper holds the plain functional model (`wrapper.model`, what is
saved and served) and adds what only training needs: the weighting
strategy's variables, per-task loss tracking, learning-rate multipliers,
and, for GradNorm and PCGrad, a `train_step` that takes one gradient per
task (TensorFlow backend).
"""

import keras
import numpy as np
from keras import ops

from keras_mtl import losses as losses_lib
from keras_mtl import metrics as metrics_lib
from keras_mtl.task import validate_tasks
from keras_mtl.training import graph
from keras_mtl.training import weighting as weighting_lib


def _check_lr_multipliers(lr_multipliers, tasks):
    if lr_multipliers is None:
        return {}
    names = [t.name for t in tasks]
    if not isinstance(lr_multipliers, dict):
        raise ValueError(
            "`lr_multipliers` must be a dict {task_name: multiplier}. "
            f"Received: lr_multipliers={lr_multipliers!r}"
        )
    unknown = sorted(set(lr_multipliers) - set(names))
    if unknown:
        raise ValueError(
            f"`lr_multipliers` names unknown task(s) {unknown}. Tasks: {names}"
        )
    checked = {}
    for name, value in lr_multipliers.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not np.isfinite(value)
            or value < 0
        ):
            raise ValueError(
                f"`lr_multipliers['{name}']` must be a finite number >= 0. "
                f"Received: {value!r}"
            )
        checked[name] = float(value)
    return checked


# Propensities are clipped to at least this by default (weights <= 20).
DEFAULT_MIN_PROPENSITY = 0.05


def check_propensity(propensity, min_propensity, tasks):
    """Validates `propensity` and `min_propensity` against `tasks`.

    Returns the propensity mapping (`{}` for None); raises a ValueError
    naming the field otherwise.
    """
    if (
        isinstance(min_propensity, bool)
        or not isinstance(min_propensity, (int, float))
        or not 0 < min_propensity <= 1
    ):
        raise ValueError(
            "`min_propensity` must be a number in (0, 1]. "
            f"Received: min_propensity={min_propensity!r}"
        )
    if propensity is None:
        return {}
    by_name = {t.name: t for t in tasks}
    if not isinstance(propensity, dict):
        raise ValueError(
            "`propensity` must be a dict {task_name: propensity_task_name}. "
            f"Received: propensity={propensity!r}"
        )
    for name, source in propensity.items():
        if name not in by_name:
            raise ValueError(
                f"`propensity` names unknown task '{name}'. "
                f"Tasks: {list(by_name)}"
            )
        if source not in by_name or source == name:
            raise ValueError(
                f"`propensity['{name}']` must name another task, whose "
                f"prediction is the probability that '{name}' is observed. "
                f"Received: {source!r}. Tasks: {list(by_name)}"
            )
        if by_name[source].kind != "binary":
            raise ValueError(
                f"`propensity['{name}']` names task '{source}' of kind "
                f"'{by_name[source].kind}'; a propensity must be the "
                "probability output of a binary task."
            )
        if by_name[name].weight == 0:
            raise ValueError(
                f"Task '{name}' has loss weight 0, so weighting its loss by "
                "a propensity changes nothing. Give it a weight (ESMM: "
                "`esmm_tasks(cvr_weight=0.1)`). Received: "
                f"propensity={propensity!r}"
            )
        space = by_name[name].space
        if space is not None and space != source:
            raise ValueError(
                f"Task '{name}' is observed where '{space}' is positive "
                f"(its `space`), so its propensity is the prediction of "
                f"'{space}', not of '{source}'. Received: "
                f"propensity['{name}']={source!r}"
            )
    return dict(propensity)


def _as_loss(loss, task):
    """A loss instance; functions and names get the masked reduction."""
    if isinstance(loss, keras.losses.Loss):
        return loss
    fn = keras.losses.get(loss) if isinstance(loss, str) else loss
    if isinstance(fn, keras.losses.Loss):
        return fn
    if not callable(fn):
        raise ValueError(
            f"The loss of task '{task.name}' must be a Keras loss, a loss "
            f"name or a function. Received: {loss!r}"
        )
    return keras.losses.LossFunctionWrapper(
        fn, reduction="mean_with_sample_weight", name=task.name
    )


class _GradientContext:
    """What a gradient-based strategy needs inside `train_step` (TF)."""

    def __init__(self, tape, variables, shared, norm_variables, loss_scale):
        self.tape = tape
        self.variables = variables
        self.shared = shared
        self.norm_variables = norm_variables
        self.loss_scale = loss_scale
        self.task_losses = None
        self.scaled_losses = None
        self.scaled_total = None
        self.scaled_extra = None

    def gradient(self, target, variables=None, dense=False):
        import tensorflow as tf

        variables = self.variables if variables is None else variables
        grads = self.tape.gradient(target, variables)
        if dense:
            grads = [
                None if g is None else tf.convert_to_tensor(g) for g in grads
            ]
        return grads

    # Gradients that may be sparse (`tf.IndexedSlices`: the rows of an
    # embedding table a batch looked up).

    @staticmethod
    def is_sparse(grad):
        import tensorflow as tf

        return isinstance(grad, tf.IndexedSlices)

    @staticmethod
    def scale(grad, factor):
        import tensorflow as tf

        if isinstance(grad, tf.IndexedSlices):
            return tf.IndexedSlices(
                grad.values * factor, grad.indices, grad.dense_shape
            )
        return grad * factor

    @staticmethod
    def densify(grad):
        import tensorflow as tf

        return None if grad is None else tf.convert_to_tensor(grad)

    @staticmethod
    def add(parts):
        """The sum of gradients; sparse while every part is sparse."""
        import tensorflow as tf

        if all(isinstance(p, tf.IndexedSlices) for p in parts):
            return tf.IndexedSlices(
                tf.concat([p.values for p in parts], axis=0),
                tf.concat([p.indices for p in parts], axis=0),
                parts[0].dense_shape,
            )
        parts = [tf.convert_to_tensor(p) for p in parts]
        return sum(parts[1:], parts[0])


@keras.saving.register_keras_serializable(package="keras_mtl")
class MultiTaskModel(keras.Model):
    """Trains a multi-task model with a loss-weighting strategy.

    Wraps a functional model whose outputs are a dict keyed by task name
    (any `keras_mtl.models` builder). Each task's loss is exactly the one
    `keras_mtl.models.compile_model` sets (masked to the task's sample space
    by its sample weights, `reduction="mean_with_sample_weight"`); the
    weighting strategy turns them into the training objective, and
    auxiliary losses of the model (KL bounds, AITM calibrator, regularisers)
    are added unweighted. `fit` logs every task's current weight each epoch
    as `<task>_weight` (History, and TensorBoard through
    `keras.callbacks.TensorBoard`) and per-task losses as `<task>_loss`.

    Strategies that need per-task gradients (`"gradnorm"`, `"pcgrad"`,
    `"gradvac"`, `"mgda"`, `"cagrad"`, `"imtl"`, `"nash_mtl"`,
    `"aligned_mtl"`, `"upgrad"`, `"db_mtl"`, `"moco"`, `"fairgrad"`), the
    batch's losses
    after the update
    (`"famo"`) and `lr_multipliers` use a custom `train_step` implemented
    for the TensorFlow backend; other backends get a `NotImplementedError`
    naming the backend. `"fixed"`, `"uncertainty"`, `"dwa"`, `"rlw"`,
    `"gls"` and `"stch"` run on every backend.

    The serving model is `wrapper.model`, a plain functional model: saving
    (`wrapper.save(path)`) writes it, so loading and predicting never need
    this class. The strategy's state goes to a small JSON file beside it
    (see `keras_mtl.training.save_model`).

    Learning-rate multipliers: `lr_multipliers={"click": 2.0}` multiplies
    the *update* the optimizer applies to every variable owned by the task
    (its tower and head: the layers only that task's output depends on),
    which is an exact per-variable learning rate for any optimizer. It is
    the update, not the gradient, that is scaled, because Adam-like
    optimizers normalise gradients and would undo a gradient scaling.
    Shared variables (embeddings, experts, gates) keep the optimizer's
    update: a task's pull on them is set by its loss weight or by the
    weighting strategy. A task that owns no variable (every layer before
    its output is shared, as in ESMM) is refused.

    Inverse propensity weighting: `propensity={"cvr": "ctr"}` divides the
    sample weight of task `cvr` (1 on the clicked rows of its space, 0
    elsewhere) by the model's own click probability, `clip(ctr,
    min_propensity, 1)`, with the gradient stopped. With the default
    `"mean_with_sample_weight"` reduction the task's loss is the
    self-normalised inverse-propensity estimate of its loss over the
    *entire* impression space, `sum(o * l / p) / sum(o / p)`: the
    counterfactual CVR risk of ESCM² (Wang et al., SIGIR 2022), which
    corrects the clicked-row loss for the rows that were not clicked. Give
    the task a nonzero weight (`esmm_tasks(cvr_weight=...)`): ESMM's `cvr`
    has weight 0. The task's metrics keep the plain sample weights (they
    still measure the clicked rows).

    Args:
        model: functional `keras.Model` with a dict of outputs keyed by task.
        tasks: list of `keras_mtl.Task`.
        weighting: str, mapping or `WeightingStrategy`. See
            `keras_mtl.training.weighting.get`. Defaults to `"fixed"`.
        lr_multipliers: dict `{task_name: float >= 0}` or None. Defaults to
            None.
        shared_layer: str or None. Layer whose weights GradNorm measures
            gradient norms on. Defaults to the last layer shared by every
            weighted task.
        propensity: dict `{task_name: propensity_task_name}` or None. Weight
            each listed task's loss by the inverse of the other task's
            prediction (see above). A task with a `space` takes the
            prediction of that space's task. Defaults to None.
        min_propensity: float in (0, 1]. Propensities are clipped to at
            least this, so no row weighs more than `1 / min_propensity`
            times a row predicted certain. Defaults to `0.05`.
        **kwargs: standard `keras.Model` arguments (`name`).

    Example:

    >>> model = keras_mtl.models.mmoe(specs, tasks)
    >>> wrapper = keras_mtl.training.MultiTaskModel(
    ...     model, tasks, weighting="uncertainty")
    >>> keras_mtl.models.compile_model(wrapper, tasks)
    >>> wrapper.fit(train_ds, validation_data=val_ds, epochs=5)
    >>> wrapper.model.save("model.keras")  # plain Keras from here on
    """

    def __init__(
        self,
        model,
        tasks,
        weighting="fixed",
        lr_multipliers=None,
        shared_layer=None,
        propensity=None,
        min_propensity=DEFAULT_MIN_PROPENSITY,
        **kwargs,
    ):
        kwargs.setdefault("name", f"{getattr(model, 'name', 'model')}_mtl")
        super().__init__(**kwargs)
        if isinstance(model, MultiTaskModel):
            raise ValueError(
                "`model` is already a MultiTaskModel; wrap its `.model`."
            )
        if not isinstance(model, keras.Model):
            raise ValueError(
                f"`model` must be a keras.Model. Received: {model!r}"
            )
        tasks = validate_tasks(tasks)
        self._owners = graph.variable_tasks(model, [t.name for t in tasks])
        self.model = model
        self.tasks = tasks
        self.weighting = weighting_lib.get(weighting)
        if self.weighting.task_names is not None:
            raise ValueError(
                "This weighting strategy is already attached to a model; "
                "pass a new instance."
            )
        shared = [v for v in model.trainable_variables if self._is_shared(v)]
        tables = [
            v
            for layer in model._flatten_layers()
            if isinstance(layer, keras.layers.Embedding)
            for v in layer.trainable_variables
        ]
        self.weighting.setup(tasks, shared, tables)
        self.lr_multipliers = _check_lr_multipliers(lr_multipliers, tasks)
        self.propensity = check_propensity(propensity, min_propensity, tasks)
        self.min_propensity = float(min_propensity)
        for name in self.lr_multipliers:
            if not any(o == {name} for o in self._owners.values()):
                raise ValueError(
                    f"Task '{name}' owns no variable: every layer before its "
                    "output is shared with another task, so "
                    "`lr_multipliers` cannot apply to it. Use its loss "
                    "weight instead."
                )
        if shared_layer is not None:
            graph.get_layer(model, shared_layer)
        self.shared_layer = shared_layer
        custom_weighting = (
            self.weighting.needs_task_gradients
            or self.weighting.needs_post_step
        )
        self._custom_step = custom_weighting or bool(self.lr_multipliers)
        if self._custom_step and keras.backend.backend() != "tensorflow":
            what = (
                f"weighting='{self.weighting.strategy_name}'"
                if custom_weighting
                else "`lr_multipliers`"
            )
            raise NotImplementedError(
                f"{what} needs a custom train_step, "
                "implemented for the TensorFlow backend only. The current "
                f"backend is '{keras.backend.backend()}'. Set "
                "KERAS_BACKEND=tensorflow, or use weighting='fixed', "
                "'uncertainty', 'dwa', 'rlw', 'gls' or 'stch' without "
                "`lr_multipliers`."
            )
        self.task_loss_trackers = [
            keras.metrics.Mean(name=f"{t.name}_loss") for t in tasks
        ]
        self._loss_fns = None
        self.built = True

    def _is_shared(self, variable):
        """Whether two or more tasks depend on `variable`."""
        return len(self._owners.get(id(variable), ())) >= 2

    # -- model -------------------------------------------------------------

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    @property
    def output_names(self):
        return self.model.output_names

    # -- compile -----------------------------------------------------------

    def compile(
        self,
        optimizer="adam",
        loss=None,
        loss_weights=None,
        metrics=None,
        weighted_metrics=None,
        **kwargs,
    ):
        """Compiles with per-task losses, weights and weighted metrics.

        Takes `keras.Model.compile` arguments; a missing task in `loss`,
        `loss_weights` or `weighted_metrics` gets the `compile_model`
        default (masked task loss, `task.weight`, task metrics).
        `keras_mtl.models.compile_model(wrapper, tasks)` works as well.
        """
        names = [t.name for t in self.tasks]
        for arg, value in (("loss", loss), ("loss_weights", loss_weights)):
            if value is not None and not isinstance(value, dict):
                raise ValueError(
                    f"`{arg}` of a MultiTaskModel must be a dict keyed by "
                    f"task name. Received: {arg}={value!r}"
                )
            unknown = sorted(set(value or {}) - set(names))
            if unknown:
                raise ValueError(
                    f"`{arg}` names unknown task(s) {unknown}. Tasks: {names}"
                )
        losses = {t.name: losses_lib.task_loss(t) for t in self.tasks}
        losses.update(loss or {})
        weights = {t.name: t.weight for t in self.tasks}
        weights.update(loss_weights or {})
        if weighted_metrics is None:
            weighted_metrics = {
                t.name: metrics_lib.task_metrics(t) for t in self.tasks
            }
        super().compile(
            optimizer=optimizer,
            loss=losses,
            loss_weights=weights,
            metrics=metrics,
            weighted_metrics=weighted_metrics,
            **kwargs,
        )
        self._loss_fns = [_as_loss(losses[t.name], t) for t in self.tasks]
        self.weighting.set_base_weights([weights[n] for n in names])
        # The per-task losses are computed (and tracked) here, not by
        # Keras' CompileLoss.
        self._compile_loss = None

    # -- losses ------------------------------------------------------------

    def _task_losses(self, y, y_pred, sample_weight, track=True):
        if self._loss_fns is None:
            raise ValueError("Compile the MultiTaskModel before training.")
        if not isinstance(y, dict):
            raise ValueError(
                "A MultiTaskModel needs labels as a dict keyed by task name "
                f"(as `keras_mtl.data` yields). Received: {type(y).__name__}"
            )
        values = []
        for task, loss_fn, tracker in zip(
            self.tasks, self._loss_fns, self.task_loss_trackers
        ):
            if task.name not in y:
                raise ValueError(
                    f"No labels for task '{task.name}'. Labels: {sorted(y)}"
                )
            weight = sample_weight
            if isinstance(sample_weight, dict):
                weight = sample_weight.get(task.name)
            pred = y_pred[task.name]
            if task.name in self.propensity:
                weight = self._inverse_propensity(
                    weight, y_pred[self.propensity[task.name]]
                )
            value = ops.cast(loss_fn(y[task.name], pred, weight), "float32")
            if track:
                tracker.update_state(
                    value,
                    sample_weight=ops.cast(ops.shape(pred)[0], "float32"),
                )
            values.append(value)
        return ops.stack(values)

    def _inverse_propensity(self, weight, propensity):
        """`weight / clip(propensity)`, the propensity without gradient."""
        p = ops.clip(
            ops.stop_gradient(ops.cast(propensity, "float32")),
            self.min_propensity,
            1.0,
        )
        if weight is None:
            return ops.reshape(1.0 / p, (-1,))
        weight = ops.cast(weight, "float32")
        return weight / ops.reshape(p, ops.shape(weight))

    def _extra_loss(self):
        extra = [self._aggregate_additional_loss(x) for x in self.losses]
        if not extra:
            return None
        return ops.cast(ops.sum(ops.stack(extra)), "float32")

    def compute_loss(
        self,
        x=None,
        y=None,
        y_pred=None,
        sample_weight=None,
        training=True,
    ):
        task_losses = self._task_losses(y, y_pred, sample_weight)
        total = self.weighting.combine(task_losses, training=training)
        extra = self._extra_loss()
        return total if extra is None else total + extra

    # -- training step -----------------------------------------------------

    def train_step(self, *args):
        if not self._custom_step:
            return super().train_step(*args)
        return self._tf_train_step(*args)

    def _norm_variables(self):
        active = [
            t.name
            for t, w in zip(self.tasks, self.weighting.base_weights)
            if w > 0
        ]
        if self.shared_layer is not None:
            layer = graph.get_layer(self.model, self.shared_layer)
        else:
            layer = graph.last_shared_layer(self.model, active)
        return list(layer.trainable_variables)

    def _tf_train_step(self, data):
        import tensorflow as tf

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        strategy = self.weighting
        variables = list(self.trainable_variables)
        per_task = strategy.needs_task_gradients
        with tf.GradientTape(persistent=per_task) as tape:
            y_pred = self(x, training=True)
            task_losses = self._task_losses(y, y_pred, sample_weight)
            extra = self._extra_loss()
            total = strategy.combine(task_losses, training=True)
            if extra is not None:
                total = total + extra
            batch = ops.shape(tf.nest.flatten(y_pred)[0])[0]
            self._loss_tracker.update_state(total, sample_weight=batch)
            scaled_total = self.optimizer.scale_loss(total)
            if per_task:
                scaled_losses = [
                    self.optimizer.scale_loss(task_losses[i])
                    for i in range(len(self.tasks))
                ]
                scaled_extra = (
                    None if extra is None else self.optimizer.scale_loss(extra)
                )
        if per_task:
            context = _GradientContext(
                tape,
                variables,
                [self._is_shared(v) for v in variables],
                self._norm_variables()
                if strategy.strategy_name == "gradnorm"
                else [],
                self.optimizer.scale_loss(tf.constant(1.0)),
            )
            context.task_losses = task_losses
            context.scaled_losses = scaled_losses
            context.scaled_total = scaled_total
            context.scaled_extra = scaled_extra
            grads = strategy.task_gradients(context)
        else:
            grads = tape.gradient(scaled_total, variables)
        del tape
        self._apply_gradients(grads, variables)
        if strategy.needs_post_step:
            self._post_step(x, y, sample_weight, task_losses)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _post_step(self, x, y, sample_weight, losses_before):
        """Hands the strategy the batch's losses after the update (FAMO).

        The extra forward pass runs in training mode, like the first, and
        the model's non-trainable state (batch-norm statistics, dropout
        seeds) is restored afterwards, as the update left it.
        """
        import tensorflow as tf

        state = self.model.non_trainable_variables
        saved = [tf.identity(v.value) for v in state]
        y_after = self(x, training=True)
        losses_after = self._task_losses(y, y_after, sample_weight, track=False)
        for v, value in zip(state, saved):
            v.assign(value)
        self.weighting.after_step(
            ops.stop_gradient(losses_before), ops.stop_gradient(losses_after)
        )

    def _apply_gradients(self, grads, variables):
        import tensorflow as tf

        scaled = []
        for v in variables:
            owners = self._owners.get(id(v), frozenset())
            if len(owners) == 1:
                (task,) = owners
                if task in self.lr_multipliers:
                    scaled.append((v, self.lr_multipliers[task]))
        before = [tf.identity(v.value) for v, _ in scaled]
        self.optimizer.apply_gradients(zip(grads, variables))
        for (v, multiplier), old in zip(scaled, before):
            v.assign(old + multiplier * (v.value - old))

    # -- fit, save, config -------------------------------------------------

    def fit(self, *args, callbacks=None, **kwargs):
        """`keras.Model.fit`, with a `TaskWeightLogger` added first."""
        from keras_mtl.training.callbacks import TaskWeightLogger

        callbacks = list(callbacks or [])
        if not any(isinstance(c, TaskWeightLogger) for c in callbacks):
            callbacks.insert(0, TaskWeightLogger())
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def save(self, filepath, overwrite=True, **kwargs):
        """Saves the serving model (`self.model`) and the strategy state.

        See `keras_mtl.training.save_model`.
        """
        from keras_mtl.training.incremental import save_model

        return save_model(self, filepath, overwrite=overwrite, **kwargs)

    def get_config(self):
        return {
            "name": self.name,
            "model": keras.saving.serialize_keras_object(self.model),
            "tasks": [t.get_config() for t in self.tasks],
            "weighting": keras.saving.serialize_keras_object(
                type(self.weighting)(**self.weighting.get_config())
            ),
            "lr_multipliers": self.lr_multipliers or None,
            "shared_layer": self.shared_layer,
            "propensity": self.propensity or None,
            "min_propensity": self.min_propensity,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        config["weighting"] = keras.saving.deserialize_keras_object(
            config["weighting"]
        )
        return cls(**config)


def compile(  # noqa: A001 - mirrors keras.Model.compile
    model,
    tasks,
    weighting="fixed",
    lr_multipliers=None,
    shared_layer=None,
    propensity=None,
    min_propensity=DEFAULT_MIN_PROPENSITY,
    **compile_kwargs,
):
    """Wraps a zoo model in a `MultiTaskModel` and compiles it.

    The losses, loss weights and metrics are those of
    `keras_mtl.models.compile_model` (which this calls with
    `compile_kwargs`); `weighting` decides how the per-task losses are
    combined.

    Args:
        model: functional `keras.Model` with a dict of outputs keyed by task.
        tasks: list of `keras_mtl.Task`.
        weighting: `"fixed"` (default), `"uncertainty"`, `"gradnorm"`,
            `"dwa"`, `"rlw"`, `"pcgrad"`, `"mgda"`, `"cagrad"`, `"imtl"`,
            `"nash_mtl"`, `"aligned_mtl"`, `"famo"`, `"gradvac"`, `"gls"`,
            `"upgrad"`, `"db_mtl"`, `"moco"`, `"stch"`, `"fairgrad"`, a
            mapping
            `{"name": ..., **arguments}` (e.g.
            `{"name": "gradnorm", "alpha": 1.5}`) or a `WeightingStrategy`.
        lr_multipliers: dict `{task_name: float}` or None. Learning-rate
            multipliers of task-owned variables (see `MultiTaskModel`).
        shared_layer: str or None. GradNorm's shared layer. Defaults to the
            last layer every weighted task shares.
        propensity: dict `{task_name: propensity_task_name}` or None.
            Inverse propensity weighting of task losses (see
            `MultiTaskModel`; ESCM²'s counterfactual CVR loss is
            `propensity={"cvr": "ctr"}` on `esmm`).
        min_propensity: float. Lower clip of the propensities. Defaults to
            `0.05`.
        **compile_kwargs: `compile_model` arguments (`optimizer`,
            `learning_rate`, `loss`, `loss_weights`, `metrics`, and
            `keras.Model.compile` arguments).

    Returns:
        The compiled `MultiTaskModel`; `.model` is the serving model.

    Example:

    >>> model = keras_mtl.models.mmoe(specs, tasks)
    >>> wrapper = keras_mtl.training.compile(
    ...     model, tasks, weighting={"name": "gradnorm", "alpha": 1.5},
    ...     lr_multipliers={"click": 2.0}, learning_rate=1e-3)
    >>> history = wrapper.fit(train_ds, validation_data=val_ds, epochs=10)
    >>> history.history["click_weight"]  # one value per epoch
    """
    from keras_mtl import models as models_lib

    wrapper = MultiTaskModel(
        model,
        tasks,
        weighting=weighting,
        lr_multipliers=lr_multipliers,
        shared_layer=shared_layer,
        propensity=propensity,
        min_propensity=min_propensity,
    )
    models_lib.compile_model(wrapper, tasks, **compile_kwargs)
    return wrapper
