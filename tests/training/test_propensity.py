"""Inverse propensity weighting of a task's loss (ESCM²'s IPS CVR risk)."""

import json

import keras
import numpy as np
import pytest

import keras_mtl
from keras_mtl import Task
from keras_mtl import data
from keras_mtl import datasets
from keras_mtl import models
from keras_mtl import runner
from keras_mtl import training

TASKS = [Task("a"), Task("b", space="a", weight=0.5)]


def _two_heads():
    """`a` and `b` read `x` through their own sigmoid units."""
    x = keras.Input((3,), name="x")
    outputs = {
        "a": keras.layers.Dense(1, activation="sigmoid", name="a")(x),
        "b": keras.layers.Dense(1, activation="sigmoid", name="b")(x),
    }
    model = keras.Model({"x": x}, outputs)
    # p(a) = sigmoid(4 x0 - 3) spans 0.001 .. 0.95 over x0 in [-1, 1.5], so
    # part of the rows sit below the clip.
    model.get_layer("a").set_weights(
        [np.array([[4.0], [0], [0]]), np.array([-3.0])]
    )
    model.get_layer("b").set_weights(
        [np.array([[0.0], [1.5], [-1]]), np.array([0.2])]
    )
    return model


def _arrays(n=400, seed=0):
    rng = np.random.default_rng(seed)
    x = np.stack(
        [
            rng.uniform(-1, 1.5, n),
            rng.standard_normal(n),
            rng.standard_normal(n),
        ],
        axis=1,
    ).astype("float32")
    a = rng.integers(0, 2, n).astype("float32")
    b = a * rng.integers(0, 2, n).astype("float32")
    y = {"a": a, "b": b}
    sample_weight = {"a": np.ones(n, "float32"), "b": a.copy()}
    return {"x": x}, y, sample_weight


def _bce(y, p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


@pytest.mark.backend
def test_the_task_loss_is_the_self_normalised_ips_estimate():
    x, y, sw = _arrays()
    model = _two_heads()
    wrapper = training.compile(
        model,
        TASKS,
        propensity={"b": "a"},
        min_propensity=0.05,
        metrics={"a": [], "b": [keras_mtl.metrics.LogLoss(name="logloss")]},
    )
    got = wrapper.evaluate(
        x, y, sample_weight=sw, batch_size=400, return_dict=True, verbose=0
    )
    pred = model.predict(x, verbose=0)
    p_a = pred["a"].reshape(-1).astype("float64")
    p_b = pred["b"].reshape(-1).astype("float64")
    assert (p_a[sw["b"] > 0] < 0.05).sum() > 20  # the clip matters
    w = sw["b"] / np.clip(p_a, 0.05, 1.0)
    loss_b = _bce(y["b"], p_b)
    ips = (w * loss_b).sum() / w.sum()
    clicked = (sw["b"] * loss_b).sum() / sw["b"].sum()
    assert abs(ips - clicked) > 0.01  # the weighting changes the loss
    np.testing.assert_allclose(got["b_loss"], ips, rtol=1e-5)
    loss_a = _bce(y["a"], p_a).mean()
    np.testing.assert_allclose(got["loss"], loss_a + 0.5 * ips, rtol=1e-5)
    # The task's metrics keep the plain weights: the clicked-row log loss.
    np.testing.assert_allclose(got["b_logloss"], clicked, rtol=1e-5)


# PCGrad takes one gradient per task in its own train step (TensorFlow).
@pytest.mark.parametrize("weighting", ["fixed", "pcgrad"])
def test_the_propensity_task_gets_no_gradient_through_the_weights(weighting):
    frame = datasets.synthetic_funnel(600, seed=3, num_users=50, num_items=40)
    specs = keras_mtl.infer_features(
        frame, labels=datasets.FUNNEL_LABELS, embed_dim=4
    )
    # Only `cvr` carries loss: whatever moves the CTR tower would have to
    # come through its propensity weights.
    tasks = [
        Task("ctr", label="click", weight=0.0),
        Task("cvr", label="conversion", space="ctr", weight=1.0),
        Task("ctcvr", label="conversion", weight=0.0),
    ]
    x, y, sw = data.dataframe_to_arrays(frame, specs, tasks)
    model = models.esmm(specs, tasks, tower_units=[8])
    start = {v.path: v.numpy() for v in model.weights}
    wrapper = training.compile(
        model,
        tasks,
        weighting=weighting,
        propensity={"cvr": "ctr"},
        optimizer="sgd",
        learning_rate=0.5,
        metrics={t.name: [] for t in tasks},
    )
    wrapper.fit(x, y, sample_weight=sw, batch_size=600, epochs=1, verbose=0)
    moved = {
        v.path: np.abs(v.numpy() - start[v.path]).max() for v in model.weights
    }
    ctr = [p for p in moved if p.startswith(("tower_ctr", "ctr_logit"))]
    cvr = [p for p in moved if p.startswith(("tower_cvr", "cvr_logit"))]
    assert ctr and cvr
    assert all(moved[p] == 0 for p in ctr), {p: moved[p] for p in ctr}
    assert all(moved[p] > 0 for p in cvr)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"propensity": ["b", "a"]}, "must be a dict"),
        ({"propensity": {"zz": "a"}}, "unknown task 'zz'"),
        ({"propensity": {"b": "b"}}, r"propensity\['b'\]` must name another"),
        ({"propensity": {"b": "zz"}}, "Received: 'zz'"),
        ({"propensity": {"a": "r"}}, "of kind 'regression'"),
        ({"propensity": {"b": "c"}}, "its propensity is the prediction of"),
        ({"min_propensity": 0.0}, "min_propensity=0.0"),
        ({"min_propensity": 1.5}, "min_propensity=1.5"),
        ({"min_propensity": True}, "min_propensity=True"),
    ],
)
def test_invalid_propensity_arguments(kwargs, message):
    x = keras.Input((3,), name="x")
    outputs = {
        n: keras.layers.Dense(1, activation="sigmoid", name=n)(x)
        for n in ("a", "b", "c", "r")
    }
    model = keras.Model({"x": x}, outputs)
    tasks = [*TASKS, Task("c"), Task("r", "regression")]
    kwargs = {"propensity": {"b": "a"}, **kwargs}
    with pytest.raises(ValueError, match=message):
        training.MultiTaskModel(model, tasks, **kwargs)


def test_propensity_survives_config_save_and_warm_start(tmp_path):
    x, y, sw = _arrays(100)
    wrapper = training.compile(
        _two_heads(),
        TASKS,
        propensity={"b": "a"},
        min_propensity=0.1,
        metrics={"a": [], "b": []},
    )
    config = wrapper.get_config()
    assert config["propensity"] == {"b": "a"}
    clone = training.MultiTaskModel.from_config(config)
    assert (clone.propensity, clone.min_propensity) == ({"b": "a"}, 0.1)
    wrapper.fit(x, y, sample_weight=sw, batch_size=50, verbose=0)
    wrapper.save(tmp_path / "day1.keras")
    again = training.warm_start(tmp_path / "day1.keras", TASKS)
    assert (again.propensity, again.min_propensity) == ({"b": "a"}, 0.1)
    off = training.warm_start(tmp_path / "day1.keras", TASKS, propensity={})
    assert off.propensity == {}


def test_a_task_of_weight_zero_is_refused():
    # ESMM's default `cvr` has weight 0: weighting it would change nothing.
    tasks = models.esmm_tasks()
    with pytest.raises(ValueError, match="Task 'cvr' has loss weight 0"):
        training.check_propensity({"cvr": "ctr"}, 0.05, tasks)
    tasks = models.esmm_tasks(cvr_weight=0.1)
    assert training.check_propensity({"cvr": "ctr"}, 0.05, tasks) == {
        "cvr": "ctr"
    }
    assert training.check_propensity(None, 0.05, tasks) == {}


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"propensity": ["cvr"]}, "`training.propensity` must be null or"),
        ({"propensity": {"cvr": 1}}, "`training.propensity` must be null or"),
        (
            {"min_propensity": 0},
            r"`min_propensity` must be a number in \(0, 1\]",
        ),
        (
            {"propensity": {"cvr": "ctr"}, "distributed": True},
            "`training.propensity` is not supported with `training.distrib",
        ),
    ],
)
def test_runner_refuses_bad_propensity_fields(fields, message):
    with pytest.raises(ValueError, match=message):
        runner.resolve_config({"training": fields})


def _esmm_run_config(tmp_path, propensity, cvr_weight=0.1):
    return {
        "dataset": {"name": "funnel", "n": 1000, "seed": 0},
        "tasks": [
            {"name": "ctr", "label": "click"},
            {
                "name": "cvr",
                "label": "conversion",
                "space": "ctr",
                "weight": cvr_weight,
            },
            {"name": "ctcvr", "label": "conversion"},
        ],
        "model": {"architecture": "esmm", "tower_units": [8]},
        "training": {"epochs": 1, "batch_size": 250, "propensity": propensity},
        "output_dir": str(tmp_path / "run"),
    }


@pytest.mark.slow
def test_runner_trains_with_propensity_and_saves_it(tmp_path):
    config = _esmm_run_config(tmp_path, {"cvr": "ctr"})
    resolved = runner.resolve_config(config)
    assert resolved["training"]["propensity"] == {"cvr": "ctr"}
    assert runner.resolve_config()["training"]["propensity"] is None
    _, report, out = runner.train(config, verbose=0)
    saved = json.loads((out / "model.weighting.json").read_text())
    assert saved["propensity"] == {"cvr": "ctr"}
    assert saved["min_propensity"] == 0.05
    assert report.loc["cvr", "n"] > 0


def test_runner_names_a_bad_propensity_task_before_training(tmp_path):
    config = _esmm_run_config(tmp_path, {"cvr": "click"})
    with pytest.raises(ValueError, match=r"propensity\['cvr'\]"):
        runner.resolve_config(config)
    with pytest.raises(ValueError, match=r"propensity\['cvr'\]"):
        runner.train(config, verbose=0)
    assert not (tmp_path / "run").exists()
    config = _esmm_run_config(tmp_path, {"cvr": "ctr"}, cvr_weight=0.0)
    with pytest.raises(ValueError, match="Task 'cvr' has loss weight 0"):
        runner.train(config, verbose=0)
    # Tasks from the dataset (click, conversion) are known only in `train`,
    # after `tasks_for` made them ESMM's, with `cvr` at weight 0.
    config = _esmm_run_config(tmp_path, {"cvr": "ctr"})
    del config["tasks"]
    assert runner.resolve_config(config)["training"]["propensity"]
    with pytest.raises(ValueError, match="Task 'cvr' has loss weight 0"):
        runner.train(config, verbose=0)
    assert not (tmp_path / "run").exists()
