"""MultiTaskEarlyStopping: stop and restore on a weighted mean of metrics."""

import keras
import numpy as np
import pytest

from keras_mtl import models
from keras_mtl import training

# Validation AUCs per epoch. Task a peaks at epoch 1, task b at epoch 4;
# the weighted mean (a: 1, b: 3) peaks at epoch 3.
FAKE_AUC = {
    "a": [0.60, 0.80, 0.70, 0.75, 0.55, 0.50, 0.50, 0.50],
    "b": [0.60, 0.61, 0.66, 0.72, 0.73, 0.50, 0.50, 0.50],
}


class _Snapshot(keras.callbacks.Callback):
    """Fakes per-task validation AUCs and records the weights each epoch."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        for task, values in FAKE_AUC.items():
            logs[f"val_{task}_auc"] = values[epoch]
        self.weights.append([w.copy() for w in self.model.get_weights()])


def _problem(make_problem):
    return make_problem(
        200,
        [[1, 0, 0, 0], [0, 1, 0, 0]],
        [0.1, 0.1],
        ["binary", "binary"],
        names=["a", "b"],
    )


def test_restores_the_epoch_with_the_best_weighted_mean_metric(
    make_problem, tmp_path
):
    specs, tasks, (x, y, sw) = _problem(make_problem)
    model = models.shared_bottom(specs, tasks, bottom_units=[8])
    models.compile_model(
        model,
        tasks,
        learning_rate=0.05,
        metrics={"a": [], "b": []},
        run_eagerly=True,
    )
    snapshot = _Snapshot()
    stop = training.MultiTaskEarlyStopping(
        {"a": 1.0, "b": 3.0},
        metric="auc",
        patience=2,
        checkpoint_path=str(tmp_path / "best.keras"),
    )
    history = model.fit(
        x,
        y,
        sample_weight=sw,
        batch_size=50,
        epochs=8,
        verbose=0,
        callbacks=[snapshot, stop],
    )
    weighted = (np.array(FAKE_AUC["a"]) + 3 * np.array(FAKE_AUC["b"])) / 4
    best = int(np.argmax(weighted[:6]))
    assert best == 3  # neither task's own best epoch
    # Logged, stopped after `patience` epochs without improvement.
    np.testing.assert_allclose(
        history.history["val_weighted_auc"], weighted[:6]
    )
    assert len(history.history["loss"]) == 6
    assert stop.best_epoch == best and stop.stopped_epoch == 5
    # The model holds the weights of the best epoch ...
    for got, want in zip(model.get_weights(), snapshot.weights[best]):
        np.testing.assert_array_equal(got, want)
    # ... which differ from those of the last epoch.
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(snapshot.weights[-1], snapshot.weights[best])
    )
    # The checkpoint is the best epoch's model.
    saved = keras.saving.load_model(tmp_path / "best.keras")
    for got, want in zip(saved.get_weights(), snapshot.weights[best]):
        np.testing.assert_array_equal(got, want)


def test_works_with_a_multitask_model_and_real_metrics(make_problem):
    specs, tasks, (x, y, sw) = _problem(make_problem)
    model = models.shared_bottom(specs, tasks, bottom_units=[8])
    wrapper = training.compile(
        model,
        tasks,
        weighting="uncertainty",
        learning_rate=0.05,
        run_eagerly=True,
    )
    stop = training.MultiTaskEarlyStopping({"a": 1.0, "b": 1.0}, patience=1)
    history = wrapper.fit(
        x,
        y,
        sample_weight=sw,
        batch_size=50,
        epochs=3,
        verbose=0,
        validation_data=(x, y, sw),
        callbacks=[stop],
    )
    mean = (
        np.array(history.history["val_a_auc"])
        + np.array(history.history["val_b_auc"])
    ) / 2
    np.testing.assert_allclose(history.history["val_weighted_auc"], mean)
    assert stop.best_epoch == int(np.argmax(mean))


def test_refuses_bad_arguments_and_missing_metrics(make_problem):
    with pytest.raises(ValueError, match="`task_weights` must be"):
        training.MultiTaskEarlyStopping({})
    with pytest.raises(ValueError, match="task_weights\\['a'\\]"):
        training.MultiTaskEarlyStopping({"a": 0.0})
    with pytest.raises(ValueError, match="`mode` must be"):
        training.MultiTaskEarlyStopping({"a": 1.0}, mode="up")
    with pytest.raises(ValueError, match="`patience` must be"):
        training.MultiTaskEarlyStopping({"a": 1.0}, patience=-1)
    stop = training.MultiTaskEarlyStopping({"a": 1.0})
    with pytest.raises(ValueError, match="no 'val_a_auc' in the logs"):
        stop.weighted_metric({"val_b_auc": 0.5})
