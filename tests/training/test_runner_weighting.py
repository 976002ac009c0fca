"""The runner's `training.weighting` field."""

import json

import pytest

from keras_mtl import runner
from keras_mtl import training

CASES = [
    "fixed",
    "uncertainty",
    "pcgrad",
    {"name": "gradnorm", "alpha": 0.5},
    {"name": "dwa", "temperature": 1.0},
    {"name": "mgda", "iterations": 20},
    {"name": "rlw", "seed": 1},
    {"name": "cagrad", "c": 0.4},
    {"name": "imtl", "loss_scale": False},
    {"name": "nash_mtl", "max_norm": 0.5},
    "aligned_mtl",
    {"name": "pcgrad", "shared_scope": "dense"},
    {"name": "famo", "learning_rate": 0.01},
    {"name": "gradvac", "beta": 0.1},
    "gls",
    {"name": "upgrad", "iterations": 5},
    {"name": "db_mtl", "shared_scope": "dense"},
    {"name": "moco", "gamma": 0.05},
    {"name": "stch", "mu": 0.5},
    {"name": "fairgrad", "alpha": 2.0},
]


def _case_id(weighting):
    if isinstance(weighting, str):
        return weighting
    return "_".join([weighting["name"], *sorted(set(weighting) - {"name"})])


def test_cases_cover_every_strategy():
    names = {c if isinstance(c, str) else c["name"] for c in CASES}
    assert names == set(training.STRATEGIES)


@pytest.mark.parametrize("weighting", CASES, ids=_case_id)
def test_resolve_config_accepts_strategies(weighting):
    config = runner.resolve_config({"training": {"weighting": weighting}})
    assert config["training"]["weighting"] == weighting
    assert runner.resolve_config()["training"]["weighting"] == "fixed"


@pytest.mark.parametrize(
    "weighting, message",
    [
        ("magic", "Unknown `weighting` strategy"),
        ({"name": "dwa", "temperature": -1}, "`temperature` must be"),
        ({"name": "mgda", "iterations": 0}, "`iterations` must be"),
        ({"name": "cagrad", "c": -1}, "`c` must be"),
        ({"name": "imtl", "loss_scale": "yes"}, "`loss_scale` must be"),
        ({"name": "nash_mtl", "max_norm": -1}, "`max_norm` must be"),
        ({"name": "mgda", "shared_scope": "sparse"}, "`shared_scope` must be"),
        ({"alpha": 1.0}, "Unknown `weighting` strategy. Received: None"),
        (3, "must be a strategy name"),
    ],
    ids=[
        "unknown",
        "bad_argument",
        "mgda_iterations",
        "cagrad_radius",
        "imtl_loss_scale",
        "nash_max_norm",
        "shared_scope",
        "no_name",
        "not_a_name",
    ],
)
def test_resolve_config_refuses_bad_strategies(weighting, message):
    with pytest.raises(ValueError, match=message):
        runner.resolve_config({"training": {"weighting": weighting}})


@pytest.mark.slow
def test_train_logs_weights_and_saves_the_strategy_state(tmp_path):
    config = {
        "dataset": {"name": "funnel", "n": 1000, "seed": 0},
        "model": {
            "architecture": "mmoe",
            "num_experts": 2,
            "expert_units": [8],
            "tower_units": [4],
        },
        "training": {
            "epochs": 2,
            "batch_size": 256,
            "weighting": {"name": "uncertainty", "initial_log_var": 0.5},
        },
        "output_dir": str(tmp_path / "run"),
    }
    model, report, out = runner.train(config, verbose=0)
    assert not isinstance(model, training.MultiTaskModel)
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]["click_weight"]) == 2
    assert len(metrics["history"]["val_click_loss"]) == 2
    state = json.loads((out / "model.weighting.json").read_text())
    assert state["weighting"]["name"] == "uncertainty"
    assert state["weighting"]["initial_log_var"] == 0.5
    # The saved run still loads with the runner, and warm-starts.
    loaded, _, tasks, _ = runner.load_run(out)
    warm = training.warm_start(out / "model.keras", tasks)
    assert isinstance(warm.weighting, training.UncertaintyWeighting)
    assert report.loc["click", "n"] > 0
    assert loaded.output_names == model.output_names
