"""Tests for keras_mtl.tuning: search space, objective, Pareto front, runs."""

import json
import math
import pathlib
import runpy
import sys

import keras
import keras_tuner
import numpy as np
import pandas as pd
import pytest
import yaml

import keras_mtl
from keras_mtl import cli
from keras_mtl import data
from keras_mtl import datasets
from keras_mtl import runner
from keras_mtl import training
from keras_mtl import tuning

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Small, fast inputs: three features, two tasks.
EXCLUDE = ["hist_item_ids", "user_id", "item_id", "item_category", "position"]
TASKS = [{"name": "click"}, {"name": "conversion", "space": "click"}]
SMALL_SPACE = {
    "architecture": ["mmoe", "esmm"],
    "num_experts": [2, 3],
    "expert_units": [4, 8],
    "tower_units": [4],
    "learning_rate": [0.003, 0.01],
    "weighting": ["fixed", "uncertainty"],
}


@pytest.fixture(scope="module")
def funnel():
    df = datasets.synthetic_funnel(2000, seed=0)
    tasks = datasets.funnel_tasks()
    specs = keras_mtl.infer_features(
        df, labels=datasets.FUNNEL_LABELS, exclude=EXCLUDE
    )
    return df, specs, tasks


def _config(tmp_path, **overrides):
    config = {
        "dataset": {"name": "funnel", "n": 2000, "seed": 0},
        "exclude": EXCLUDE,
        "tasks": TASKS,
        "training": {
            "epochs": 1,
            "batch_size": 512,
            "seed": 0,
            "val_fraction": 0.25,
            "test_fraction": 0.0,
        },
        "output_dir": str(tmp_path / "search"),
        "tuner": {"algorithm": "random", "max_trials": 2},
        "objective": {
            "metric": "auc",
            "weights": {"click": 1, "conversion": 3},
        },
        "search_space": SMALL_SPACE,
        # Tracing a train/test function costs more than 1 epoch on 1500
        # rows; eager steps keep the search test fast (the graph path is
        # the training tests' subject).
        "compile": {"run_eagerly": True},
    }
    config.update(overrides)
    return config


# ---------------------------------------------------------------------------
# Search space and HyperModel.
# ---------------------------------------------------------------------------


def test_fresh_hyperparameters_give_documented_defaults(funnel):
    _, specs, tasks = funnel
    hypermodel = tuning.MultiTaskHyperModel(specs, tasks)
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    assert hp.values == {
        "architecture": "mmoe",
        "num_experts": 8,
        "expert_units": 64,
        "tower_units": 32,
        "dropout": 0.0,
        "learning_rate": 1e-3,
        "weighting": "fixed",
        "loss_weight_click": 1.0,
        "loss_weight_conversion": 1.0,
        "loss_weight_watch_time": 1.0,
    }
    assert isinstance(model, training.MultiTaskModel)
    assert model.weighting.strategy_name == "fixed"
    mmoe = model.model.get_layer("mmoe")
    assert (mmoe.num_experts, list(mmoe.expert_units)) == (8, [64])
    assert model.model.get_layer("tower_click").units == [32]
    lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    assert lr == pytest.approx(1e-3)
    # Every architecture-specific value is declared in a conditional scope.
    space = {p.name: p for p in hp.space}
    assert space["num_levels"].conditions[0].values == ["ple"]
    assert sorted(space["num_experts"].conditions[0].values) == ["mmoe"]
    assert space["bottom_units"].conditions[0].values == ["shared_bottom"]
    assert not space["learning_rate"].conditions


def test_conditional_values_follow_the_architecture(funnel):
    _, specs, tasks = funnel
    hypermodel = tuning.MultiTaskHyperModel(
        specs, tasks, search_space={**tuning.DEFAULT_SEARCH_SPACE}
    )
    hp = keras_tuner.HyperParameters()
    hp.Fixed("architecture", "ple")
    arch, kwargs, lr, weighting, loss_weights = hypermodel.declare(hp)
    assert arch == "ple"
    assert kwargs == {
        "num_task_experts": 2,
        "num_shared_experts": 1,
        "num_levels": 2,
        "expert_units": [64],
        "tower_units": [32],
        "dropout": 0.0,
    }
    assert "num_experts" not in hp.values
    model = hypermodel.build(hp)
    names = [layer.name for layer in model.model.layers]
    assert "ple_level_1" in names and "ple_level_2" not in names
    hp = keras_tuner.HyperParameters()
    hp.Fixed("architecture", "shared_bottom")
    _, kwargs, *_ = hypermodel.declare(hp)
    assert kwargs["bottom_units"] == [128, 64]
    assert "expert_units" not in kwargs


def test_interaction_is_searched_as_none_dot_or_cross(funnel):
    df, _, tasks = funnel
    # device, item_category and position embedded: 3 pairwise dots.
    specs = keras_mtl.infer_features(
        df,
        labels=datasets.FUNNEL_LABELS,
        exclude=["hist_item_ids", "user_id", "item_id"],
    )
    hypermodel = tuning.MultiTaskHyperModel(
        specs,
        tasks,
        search_space={
            "architecture": ["mmoe", "shared_bottom"],
            "interaction": ["none", "dot", "cross"],
        },
    )
    hp = keras_tuner.HyperParameters()
    _, kwargs, *_ = hypermodel.declare(hp)
    assert kwargs == {"interaction": None}
    plain = hypermodel.build(hp).model.get_layer("input_block").output_dim
    space = {p.name: p for p in hp.space}
    assert sorted(space["interaction"].conditions[0].values) == [
        "mmoe",
        "shared_bottom",
    ]
    hp = keras_tuner.HyperParameters()
    hp.Fixed("interaction", "dot")
    _, kwargs, *_ = hypermodel.declare(hp)
    assert kwargs == {"interaction": "dot"}
    block = hypermodel.build(hp).model.get_layer("input_block")
    assert block.output_dim == plain + 3
    hp = keras_tuner.HyperParameters()
    hp.Fixed("interaction", "cross")
    _, kwargs, *_ = hypermodel.declare(hp)
    assert kwargs == {"interaction": "cross"}
    block = hypermodel.build(hp).model.get_layer("input_block")
    assert block.output_dim == plain and len(block.feature_crosses) == 2


def test_normalizations_are_searched_with_none(funnel):
    _, specs, tasks = funnel
    hypermodel = tuning.MultiTaskHyperModel(
        specs,
        tasks,
        search_space={
            "architecture": ["mmoe", "ple", "shared_bottom"],
            "expert_normalization": ["none", "batch", "layer"],
            "gate_normalization": ["none", "batch"],
            "tower_normalization": ["none", "layer"],
        },
    )
    hp = keras_tuner.HyperParameters()
    _, kwargs, *_ = hypermodel.declare(hp)
    assert kwargs == {
        "expert_normalization": None,
        "gate_normalization": None,
        "tower_normalization": None,
    }
    space = {p.name: p for p in hp.space}
    # Only the mixture-of-experts builders take them.
    for key in (
        "expert_normalization",
        "gate_normalization",
        "tower_normalization",
    ):
        assert sorted(space[key].conditions[0].values) == ["mmoe", "ple"]
    hp = keras_tuner.HyperParameters()
    hp.Fixed("architecture", "ple")
    hp.Fixed("expert_normalization", "layer")
    hp.Fixed("gate_normalization", "batch")
    hp.Fixed("tower_normalization", "layer")
    _, kwargs, *_ = hypermodel.declare(hp)
    assert kwargs == {
        "expert_normalization": "layer",
        "gate_normalization": "batch",
        "tower_normalization": "layer",
    }
    model = hypermodel.build(hp).model
    assert model.get_layer("ple_level_1").expert_normalization == "layer"
    assert model.get_layer("ple_level_1").gate_normalization == "batch"
    tower = model.get_layer(f"tower_{tasks[0].name}")
    assert [type(n) for n in tower.norm_layers] == [
        keras.layers.LayerNormalization
    ]


def test_l2_strengths_are_searched_as_regularizer_configs(funnel):
    _, specs, tasks = funnel
    hypermodel = tuning.MultiTaskHyperModel(
        specs,
        tasks,
        search_space={
            "architecture": ["shared_bottom", "esmm"],
            "kernel_l2": {"values": [0.0, 1e-4], "default": 1e-4},
            "embeddings_l2": {"min": 1e-6, "max": 1e-3, "sampling": "log"},
        },
    )
    hp = keras_tuner.HyperParameters()
    hp.Fixed("embeddings_l2", 1e-5)
    _, kwargs, *_ = hypermodel.declare(hp)
    assert kwargs == {
        "kernel_regularizer": {"class_name": "L2", "config": {"l2": 1e-4}},
        "embeddings_regularizer": {"class_name": "L2", "config": {"l2": 1e-5}},
    }
    json.dumps(kwargs)  # the best trial's run config is plain JSON
    model = hypermodel.build(hp).model
    assert model.get_layer("bottom").kernel_regularizer.get_config() == {
        "l2": 1e-4
    }
    # Every Dense kernel and every table adds its penalty to the loss.
    expected = sum(
        (1e-4 if "kernel" in w.path else 1e-5) * np.sum(np.square(w.numpy()))
        for w in model.trainable_weights
        if "kernel" in w.path or "embeddings" in w.path
    )
    got = sum(float(keras.ops.convert_to_numpy(x)) for x in model.losses)
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    hp = keras_tuner.HyperParameters()
    hp.Fixed("kernel_l2", 0.0)
    _, kwargs, *_ = hypermodel.declare(hp)
    assert kwargs["kernel_regularizer"] is None


@pytest.mark.parametrize(
    "space, message",
    [
        ({"kernel_l2": [-1e-4]}, "`search_space.kernel_l2` values must be"),
        (
            {"embeddings_l2": [1e-5], "embeddings_regularizer": ["l2"]},
            "sets `embeddings_regularizer` twice",
        ),
    ],
    ids=["negative", "twice"],
)
def test_l2_strengths_refuse_bad_spaces(funnel, space, message):
    _, specs, tasks = funnel
    with pytest.raises(ValueError, match=message):
        tuning.MultiTaskHyperModel(
            specs, tasks, search_space={"architecture": ["mmoe"], **space}
        )


def test_loss_weights_and_esmm_routing(funnel):
    _, specs, tasks = funnel
    space = {
        "architecture": ["esmm", "mmoe"],
        "loss_weight_conversion": [2.0, 1.0],
    }
    hypermodel = tuning.MultiTaskHyperModel(specs, tasks, search_space=space)
    # ESMM's ctr and cvr are click and conversion on their own spaces;
    # ctcvr is a new task on the conversion label over every row.
    assert hypermodel.routes["esmm"] == {
        "ctr": "click",
        "cvr": "conversion",
        "ctcvr": "ctcvr",
    }
    assert [t.name for t in hypermodel.data_tasks] == [
        "click",
        "conversion",
        "watch_time",
        "ctcvr",
    ]
    assert hypermodel.outputs["esmm"] == {"click": "ctr", "conversion": "cvr"}
    _, weights = hypermodel.task_loss_weights(
        "esmm", {"conversion": 2.0, "click": 1.0}
    )
    assert weights == {"ctr": 1.0, "cvr": 0.0, "ctcvr": 2.0}
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    assert sorted(model.output_names) == ["ctcvr", "ctr", "cvr"]
    assert model.weighting.base_weights == [1.0, 0.0, 2.0]


def test_weighted_metric_callback_logs_objective_and_aliases():
    callback = tuning.WeightedTaskMetric(
        {"click": 1.0, "conversion": 3.0}, outputs={"click": "ctr"}
    )
    logs = {"val_ctr_auc": 0.8, "val_conversion_auc": 0.6}
    callback.on_epoch_end(0, logs)
    assert logs["val_weighted_auc"] == pytest.approx((0.8 + 3 * 0.6) / 4)
    assert logs["val_click_auc"] == 0.8
    with pytest.raises(ValueError, match="val_conversion_auc"):
        callback.on_epoch_end(0, {"val_ctr_auc": 0.8})


# ---------------------------------------------------------------------------
# Pareto front.
# ---------------------------------------------------------------------------


def test_pareto_front_on_hand_made_table():
    table = pd.DataFrame(
        {
            "click": [0.70, 0.60, 0.65, 0.60, 0.70, np.nan, 0.50, 0.72],
            "conversion": [0.60, 0.70, 0.60, 0.70, 0.55, 0.99, 0.50, 0.40],
        },
        index=list("abcdefgh"),
    )
    front = tuning.pareto_front(table, ["click", "conversion"])
    # a: best click at 0.60 conversion; b and d: identical, both kept;
    # c is dominated by a, e by a, g by all; f has a NaN; h wins on click.
    assert front.to_dict() == {
        "a": True,
        "b": True,
        "c": False,
        "d": True,
        "e": False,
        "f": False,
        "g": False,
        "h": True,
    }
    # Lower is better for logloss: reverses what dominates.
    losses = pd.DataFrame({"x": [0.3, 0.2, 0.4], "y": [0.3, 0.4, 0.2]})
    front = tuning.pareto_front(
        losses, ["x", "y"], directions={"x": "min", "y": "min"}
    )
    assert front.tolist() == [True, True, True]
    front = tuning.pareto_front(
        losses, ["x", "y"], directions={"x": "min", "y": "max"}
    )
    assert front.tolist() == [False, True, False]
    # Three tasks: a trial best on none alone can still be on the front.
    three = pd.DataFrame(
        {
            "a": [1, 0, 0, 0.5, 0.4],
            "b": [0, 1, 0, 0.5, 0.4],
            "c": [0, 0, 1, 0.5, 0.4],
        }
    )
    assert tuning.pareto_front(three, ["a", "b", "c"]).tolist() == [
        True,
        True,
        True,
        True,
        False,
    ]
    with pytest.raises(ValueError, match="not in the table"):
        tuning.pareto_front(table, ["click", "ctr"])


# ---------------------------------------------------------------------------
# Searches.
# ---------------------------------------------------------------------------


def _trial_files(directory):
    return {
        p.parent.name: p.stat().st_mtime_ns
        for p in sorted((directory / "search").glob("trial_*/trial.json"))
    }


@pytest.mark.slow
def test_search_writes_reports_and_resumes(tmp_path, capsys):
    config = _config(tmp_path)
    result = tuning.run_search(config, verbose=0)
    out = tmp_path / "search"
    assert sorted(result.new_trials) == ["0", "1"]

    # All trials, each task's metric, the weighted objective.
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 2
    assert (trials["status"] == "COMPLETED").all()
    click, conversion = trials["val_click_auc"], trials["val_conversion_auc"]
    assert click.between(0, 1).all() and conversion.between(0, 1).all()
    np.testing.assert_allclose(
        trials["val_weighted_auc"], (click + 3 * conversion) / 4, rtol=1e-6
    )
    assert set(trials["architecture"]) <= {"mmoe", "esmm"}
    # The front CSV holds exactly the non-dominated trials.
    expected = tuning.pareto_front(
        trials, ["val_click_auc", "val_conversion_auc"]
    )
    assert trials["pareto"].tolist() == expected.tolist()
    front = pd.read_csv(out / "pareto.csv")
    assert front["trial_id"].tolist() == trials["trial_id"][expected].tolist()
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The best trial's model is saved as a run `keras-mtl evaluate` reads.
    best_id = trials.loc[trials["val_weighted_auc"].idxmax(), "trial_id"]
    assert result.best_trial_id == str(best_id)
    model, specs, tasks, run_config = runner.load_run(out / "best")
    hps = json.loads((out / "best" / "hyperparameters.json").read_text())
    assert run_config["model"]["architecture"] == hps["values"]["architecture"]
    # config.json is a run config that retrains the best trial.
    resolved = runner.resolve_config(run_config)
    assert resolved["training"]["weighting"] == hps["values"]["weighting"]
    assert resolved["training"]["learning_rate"] == pytest.approx(
        hps["values"]["learning_rate"]
    )
    df = datasets.synthetic_funnel(64, seed=1)
    preds = model.predict(data.features_to_arrays(df, specs), verbose=0)
    assert sorted(preds) == sorted(t.name for t in tasks)
    summary = tuning.format_summary(result)
    assert f"Best trial {best_id}: val_weighted_auc" in summary
    assert "Pareto front across tasks" in summary

    # Again through the CLI with the same directory: nothing is redone.
    before = _trial_files(out)
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["tune", "--config", str(path), "--verbose", "0"]) == 0
    assert "Trials: 2 (0 run now, 2 reloaded)" in capsys.readouterr().out
    assert _trial_files(out) == before
    pd.testing.assert_frame_equal(pd.read_csv(out / "trials.csv"), trials)

    # A larger budget continues where the search stopped: one new trial.
    config["tuner"] = {"algorithm": "random", "max_trials": 3}
    result = tuning.run_search(config, verbose=0)
    assert result.new_trials == ["2"]
    assert _trial_files(out).items() >= before.items()
    assert len(pd.read_csv(out / "trials.csv")) == 3


# ---------------------------------------------------------------------------
# Bad input: errors before any trial.
# ---------------------------------------------------------------------------

BAD_CONFIGS = {
    "unknown_architecture": (
        {"search_space": {**SMALL_SPACE, "architecture": ["mmoe", "mmoee"]}},
        "Unknown `architecture`.*'mmoee'",
    ),
    "empty_search_space": ({"search_space": {}}, "search space is empty"),
    "empty_choice": (
        {"search_space": {**SMALL_SPACE, "num_experts": []}},
        "num_experts` is empty",
    ),
    "nothing_to_search": (
        {"search_space": {"architecture": "mmoe", "num_experts": [4]}},
        "nothing to search",
    ),
    "unknown_objective_task": (
        {"objective": {"weights": {"click": 1.0, "purchase": 1.0}}},
        "unknown task 'purchase'",
    ),
    "objective_task_without_metric": (
        {
            "tasks": [*TASKS, {"name": "watch_time", "kind": "regression"}],
            "objective": {"weights": {"click": 1.0, "watch_time": 1.0}},
        },
        "watch_time' is regression",
    ),
    "argument_no_architecture_takes": (
        {"search_space": {**SMALL_SPACE, "num_levels": [1, 2]}},
        "num_levels.*applies to \\['ple'\\]",
    ),
    "interaction_value": (
        {"search_space": {**SMALL_SPACE, "interaction": ["none", "fm"]}},
        r"search_space.interaction` values must be \['cross', 'dot', 'none'\]",
    ),
    "cross_layers_without_fixed_cross": (
        {
            "search_space": {
                **SMALL_SPACE,
                "interaction": ["none", "cross"],
                "cross_layers": [1, 2],
            }
        },
        r"search_space.cross_layers` needs `interaction` fixed to 'cross'",
    ),
    "normalization_value": (
        {
            "search_space": {
                **SMALL_SPACE,
                "expert_normalization": ["none", "group"],
            }
        },
        r"search_space.expert_normalization` values must be "
        r"\['batch', 'layer', 'none'\]",
    ),
    "unknown_tuner": ({"tuner": {"algorithm": "grid"}}, "tuner.algorithm"),
}


@pytest.mark.parametrize(
    "overrides,message", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys()
)
def test_bad_config_errors_before_any_trial(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        tuning.run_search(_config(tmp_path, **overrides), verbose=0)
    assert not (tmp_path / "search" / "search").exists()


def test_bad_config_through_script_and_cli(tmp_path, capsys, monkeypatch):
    config = _config(tmp_path)
    config["search_space"] = {**SMALL_SPACE, "architecture": ["nope"]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["tune", "--config", str(path)]) == 2
    assert "keras-mtl tune: error: Unknown `architecture`" in (
        capsys.readouterr().err
    )
    script = ROOT / "tuning" / "search.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--config", str(path)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 2
    assert "Unknown `architecture`" in capsys.readouterr().err
    assert not (tmp_path / "search").exists()


def test_shipped_configs_resolve():
    for name in ("funnel", "adult"):
        config = runner.load_config_file(
            ROOT / "tuning" / "configs" / f"{name}.yaml"
        )
        resolved = tuning.resolve_tuning_config(config)
        space = tuning.check_search_space(resolved["search_space"])
        assert len(space["architecture"]["values"]) >= 4
        assert "weighting" in space and "learning_rate" in space
    adult = runner.load_config_file(ROOT / "tuning" / "configs" / "adult.yaml")
    assert adult["dataset"]["path"] == "../shared/data/adult"
    assert math.isclose(
        tuning.resolve_tuning_config(adult)["training"]["val_fraction"], 0.1
    )


def test_tuning_and_keras_tuner_load_on_first_use():
    import subprocess

    code = (
        "import sys, keras_mtl\n"
        "assert 'keras_tuner' not in sys.modules, 'imported eagerly'\n"
        "print(keras_mtl.tuning.__name__, 'keras_tuner' in sys.modules)\n"
        "from keras_mtl import tuning\n"
        "assert tuning is keras_mtl.tuning\n"
        "try:\n"
        "    keras_mtl.no_such_module\n"
        "except AttributeError as e:\n"
        "    print(e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines == [
        "keras_mtl.tuning True",
        "module 'keras_mtl' has no attribute 'no_such_module'",
    ]
