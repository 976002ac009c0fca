"""Callbacks for multi-task training: task weights and early stopping."""

import math
import os

import keras
import numpy as np


def write_scalars(writer, scalars, step):
    """Writes scalars to TensorBoard with TensorFlow alone.

    `tf.summary.scalar` needs the `tensorboard` package; this writes the
    same records (scalar-plugin metadata) with `tf.summary.write`, so
    TensorBoard shows them as scalars even where only TensorFlow is
    installed.

    Args:
        writer: a `tf.summary` writer, or a log directory (str).
        scalars: dict `{tag: float}`.
        step: int. The step (e.g. the epoch).
    """
    import tensorflow as tf

    if isinstance(writer, (str, os.PathLike)):
        writer = tf.summary.create_file_writer(os.fspath(writer))
    metadata = tf.compat.v1.SummaryMetadata(
        plugin_data=tf.compat.v1.SummaryMetadata.PluginData(
            plugin_name="scalars"
        )
    )
    with writer.as_default():
        for tag, value in scalars.items():
            tf.summary.write(
                tag,
                tf.constant(float(value), tf.float32),
                step=int(step),
                metadata=metadata,
            )
    writer.flush()


class TaskWeightLogger(keras.callbacks.Callback):
    """Logs every task's current loss weight at the end of each epoch.

    Adds `<task>_weight` (and GradNorm's `<task>_grad_norm` and
    `<task>_grad_norm_target`) to the epoch logs, so they land in the
    `History` and in TensorBoard through `keras.callbacks.TensorBoard`
    (placed after this callback; it needs the `tensorboard` package). With
    `log_dir`, also writes them itself to `<log_dir>/train` as
    `epoch_<task>_weight`, the names the Keras callback uses, with
    TensorFlow alone. Then runs the strategy's epoch hook (DWA computes the
    next epoch's weights there). `MultiTaskModel.fit` adds one (without
    `log_dir`) at the front of the callbacks unless one is given.

    Args:
        log_dir: str or None. TensorBoard directory. Defaults to None.

    Example:

    >>> history = wrapper.fit(ds, epochs=5, callbacks=[
    ...     keras_mtl.training.TaskWeightLogger(log_dir="logs")])
    >>> history.history["click_weight"]  # one value per epoch
    """

    def __init__(self, log_dir=None):
        super().__init__()
        self.log_dir = log_dir
        self._writer = None

    def on_train_begin(self, logs=None):
        if self.log_dir is not None and self._writer is None:
            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(
                os.path.join(os.fspath(self.log_dir), "train")
            )

    def on_epoch_end(self, epoch, logs=None):
        strategy = getattr(self.model, "weighting", None)
        if strategy is None:
            raise ValueError(
                "TaskWeightLogger needs a keras_mtl.training.MultiTaskModel. "
                f"Received: {type(self.model).__name__}"
            )
        weights = np.asarray(strategy.current_weights())
        values = {
            f"{name}_weight": float(value)
            for name, value in zip(strategy.task_names, weights)
        }
        values.update(strategy.extra_logs())
        if logs is not None:
            logs.update(values)
        if self._writer is not None:
            write_scalars(
                self._writer,
                {f"epoch_{k}": v for k, v in values.items()},
                epoch,
            )
        strategy.on_epoch_end(epoch)


class MultiTaskEarlyStopping(keras.callbacks.Callback):
    """Early stopping and checkpointing on a weighted mean of task metrics.

    At the end of every epoch computes
    `sum_k c_k m_k / sum_k c_k` over the logged per-task metrics
    `m_k = logs[f"{prefix}{task}_{metric}"]` (e.g. `val_click_auc`), adds it
    to the logs as `{prefix}weighted_{metric}`, and keeps the weights of
    the best epoch. Training stops after `patience` epochs without an
    improvement larger than `min_delta`; at the end of training the best
    weights are restored (`restore_best_weights=True`) whether or not it
    stopped early. With `checkpoint_path`, the serving model of every new
    best epoch is saved there (`.keras`).

    Args:
        task_weights: dict `{task_name: float > 0}`. Tasks to average and
            their weights.
        metric: str. Metric name as logged per task. Defaults to `"auc"`.
        mode: `"max"` or `"min"`. Defaults to `"max"`.
        patience: int. Epochs without improvement before stopping.
            Defaults to `3`.
        min_delta: float. Smallest improvement that counts. Defaults to `0`.
        restore_best_weights: bool. Defaults to `True`.
        checkpoint_path: str or None. Where to save the best model.
            Defaults to `None`.
        prefix: str. Log-key prefix. Defaults to `"val_"`.
        verbose: int. 1 prints when stopping and restoring. Defaults to `0`.

    Attributes:
        best: the best weighted metric.
        best_epoch: its epoch (0-based), or None.
        stopped_epoch: the epoch training stopped at, or 0.

    Example:

    >>> stop = keras_mtl.training.MultiTaskEarlyStopping(
    ...     {"income": 1.0, "never_married": 1.0}, metric="auc", patience=3)
    >>> model.fit(train_ds, validation_data=val_ds, epochs=50,
    ...           callbacks=[stop])
    """

    def __init__(
        self,
        task_weights,
        metric="auc",
        mode="max",
        patience=3,
        min_delta=0.0,
        restore_best_weights=True,
        checkpoint_path=None,
        prefix="val_",
        verbose=0,
    ):
        super().__init__()
        if not isinstance(task_weights, dict) or not task_weights:
            raise ValueError(
                "`task_weights` must be a non-empty dict {task: weight}. "
                f"Received: task_weights={task_weights!r}"
            )
        for name, value in task_weights.items():
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not value > 0
                or not math.isfinite(value)
            ):
                raise ValueError(
                    f"`task_weights['{name}']` must be a positive number. "
                    f"Received: {value!r}"
                )
        if mode not in ("max", "min"):
            raise ValueError(
                f"`mode` must be 'max' or 'min'. Received: mode={mode!r}"
            )
        if isinstance(patience, bool) or not isinstance(patience, int):
            raise ValueError(
                "`patience` must be a non-negative integer. "
                f"Received: patience={patience!r}"
            )
        if patience < 0:
            raise ValueError(
                "`patience` must be a non-negative integer. "
                f"Received: patience={patience!r}"
            )
        if not isinstance(min_delta, (int, float)) or min_delta < 0:
            raise ValueError(
                "`min_delta` must be a number >= 0. "
                f"Received: min_delta={min_delta!r}"
            )
        self.task_weights = {k: float(v) for k, v in task_weights.items()}
        self.metric = metric
        self.mode = mode
        self.patience = patience
        self.min_delta = float(min_delta)
        self.restore_best_weights = restore_best_weights
        self.checkpoint_path = checkpoint_path
        self.prefix = prefix
        self.verbose = verbose
        self.monitor = f"{prefix}weighted_{metric}"

    def on_train_begin(self, logs=None):
        self.best = -math.inf if self.mode == "max" else math.inf
        self.best_epoch = None
        self.best_weights = None
        self.wait = 0
        self.stopped_epoch = 0

    def weighted_metric(self, logs):
        """The weighted mean of the per-task metrics in `logs` (or NaN)."""
        total = weight = 0.0
        single = f"{self.prefix}{self.metric}"
        for name, c in self.task_weights.items():
            key = f"{self.prefix}{name}_{self.metric}"
            if key not in logs and len(self.task_weights) == 1:
                # Keras does not prefix the metrics of a one-output model.
                key = single if single in logs else key
            if key not in logs:
                raise ValueError(
                    f"MultiTaskEarlyStopping found no '{key}' in the logs. "
                    f"Logged: {sorted(logs)}. Pass validation data and "
                    "compile the task's metric."
                )
            total += c * float(logs[key])
            weight += c
        return total / weight

    def _improved(self, value):
        if math.isnan(value):
            return False
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        value = self.weighted_metric(logs)
        logs[self.monitor] = value
        if self._improved(value):
            self.best = value
            self.best_epoch = epoch
            self.wait = 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.checkpoint_path is not None:
                serving = getattr(self.model, "model", self.model)
                serving.save(self.checkpoint_path)
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.verbose and self.stopped_epoch:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose:
                print(
                    "Restoring model weights from the end of the best epoch: "
                    f"{self.best_epoch + 1} ({self.monitor}={self.best:.5f})."
                )
            self.model.set_weights(self.best_weights)
