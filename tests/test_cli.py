import json
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest
import yaml

from keras_mtl import cli
from keras_mtl import datasets
from keras_mtl import runner


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    code = cli.main(
        ["demo", "--n", "6000", "--epochs", "2", "--output-dir", str(out)]
    )
    return code, out


def test_demo_trains_saves_and_reports(demo_run, capsys):
    code, out = demo_run
    assert code == 0
    for name in (
        "model.keras",
        "features.json",
        "tasks.json",
        "config.json",
        "metrics.json",
    ):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    report = metrics["report"]
    assert metrics["evaluated_on"] == "test"
    assert set(report) == {"click", "conversion", "watch_time"}
    # 10% of 6000 rows are held out; conversion/watch time only on clicks.
    assert report["click"]["n"] == 600
    assert 0 < report["conversion"]["n"] < 600
    assert report["conversion"]["n"] == report["watch_time"]["n"]
    assert 0.5 < report["click"]["auc"] <= 1.0
    assert report["watch_time"]["rmse"] > 0
    assert len(metrics["history"]["loss"]) == 2
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["architecture"] == "mmoe"


def test_evaluate_and_predict_on_a_saved_run(demo_run, tmp_path, capsys):
    _, out = demo_run
    assert cli.main(["evaluate", "--model-dir", str(out)]) == 0
    evaluation = json.loads((out / "evaluation.json").read_text())
    saved = json.loads((out / "metrics.json").read_text())
    np.testing.assert_allclose(
        evaluation["report"]["click"]["auc"],
        saved["report"]["click"]["auc"],
        rtol=1e-6,
    )
    df = datasets.synthetic_funnel(50, seed=9)
    df.loc[df.index[:3], "device"] = "smart-tv"  # unseen category -> OOV
    df["hist_item_ids"] = df["hist_item_ids"].map(
        lambda h: "|".join(map(str, h))
    )
    df.to_csv(tmp_path / "in.csv", index=False)
    code = cli.main(
        [
            "predict",
            "--model-dir",
            str(out),
            "--input",
            str(tmp_path / "in.csv"),
            "--output",
            str(tmp_path / "out.csv"),
            "--keep-columns",
            "user_id",
        ]
    )
    assert code == 0
    preds = pd.read_csv(tmp_path / "out.csv")
    assert list(preds.columns) == [
        "user_id",
        "click",
        "conversion",
        "watch_time",
    ]
    assert len(preds) == 50
    assert preds["click"].between(0, 1).all()
    model, features, tasks, _ = runner.load_run(out)
    from keras_mtl import data

    x = data.features_to_arrays(
        pd.read_csv(
            tmp_path / "in.csv",
            dtype={"item_category": str, "device": str, "hist_item_ids": str},
        ),
        features,
    )
    expected = model.predict(x, verbose=0)["click"][:, 0]
    np.testing.assert_allclose(preds["click"], expected, rtol=1e-5)


def test_train_from_yaml_config(tmp_path):
    config = {
        "dataset": {"name": "funnel", "n": 3000, "seed": 3},
        "tasks": [{"name": "click"}, {"name": "like", "space": "click"}],
        "model": {
            "architecture": "shared_bottom",
            "bottom_units": [16],
            "kernel_initializer": "he_uniform",
            "kernel_regularizer": {"class_name": "L2", "config": {"l2": 1e-4}},
        },
        "training": {"epochs": 1, "batch_size": 512},
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["train", "--config", str(path)]) == 0
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    bottom = model.get_layer("bottom")
    assert type(bottom.kernel_initializer).__name__ == "HeUniform"
    assert bottom.kernel_regularizer.get_config() == {"l2": 1e-4}
    features = json.loads((tmp_path / "run" / "features.json").read_text())
    names = {f["name"] for f in features}
    # Every label of the dataset stays out of the features, trained or not.
    assert names.isdisjoint(datasets.FUNNEL_LABELS)
    tasks = json.loads((tmp_path / "run" / "tasks.json").read_text())
    assert [t["name"] for t in tasks] == ["click", "like"]


def test_run_config_passes_the_dot_interaction_to_the_builder(tmp_path):
    config = {
        "dataset": {"name": "funnel", "n": 3000, "seed": 3},
        "model": {
            "architecture": "esmm",
            "tower_units": [8],
            "interaction": "dot",
            "interaction_features": ["user_id", "item_id"],
        },
        "training": {"epochs": 1, "batch_size": 512},
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["train", "--config", str(path)]) == 0
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    block = model.get_layer("input_block")
    assert block.interaction_features == ["user_id", "item_id"]
    plain = sum(s.output_dim for s in block.numeric) + sum(
        s.embed_dim for s in block.categorical
    )
    assert block.output_dim == plain + 1


@pytest.mark.parametrize(
    "config, message",
    [
        ({"trainng": {}}, r"Unknown config field\(s\) \['trainng'\]"),
        ({"dataset": {"name": "imagenet"}}, "Unknown `dataset.name`"),
        ({"dataset": {"name": "adult"}}, "needs `dataset.path`"),
        (
            {"dataset": {"name": "funnel", "path": "x"}},
            r"\['path'\] do not apply",
        ),
        ({"training": {"epochs": 0}}, "training.epochs"),
        ({"training": {"learning_rate": -1}}, "learning_rate"),
        ({"model": "mmoe"}, "architecture"),
        (
            {"model": {"architecture": "mmoe", "num_expert": 2}},
            r"Builder 'mmoe' has no argument\(s\) \['num_expert'\]",
        ),
        ({"model": {"architecture": "gbdt"}}, "Unknown `architecture`"),
        (
            {"model": {"architecture": "esmm", "interaction": "fm"}},
            r'`interaction` must be None, "dot" or "cross"',
        ),
        (
            {"model": {"architecture": "mmoe", "cross_layers": 3}},
            r'`cross_layers` needs `interaction="cross"`',
        ),
        (
            {"model": {"architecture": "mmoe", "interaction_features": ["a"]}},
            r'`interaction_features` needs `interaction="dot"`',
        ),
        (
            {
                "model": {
                    "architecture": "mmoe",
                    "interaction": "dot",
                    "interaction_features": "user_id",
                }
            },
            "must be a list of feature names",
        ),
        (
            {"model": {"architecture": "ple", "expert_normalization": "group"}},
            r"`expert_normalization` must be one of 'layer', 'batch', None",
        ),
        (
            {"model": {"architecture": "cgc", "gate_normalization": "soft"}},
            r"`gate_normalization` must be one of 'layer', 'batch', None",
        ),
        (
            {"model": {"architecture": "mmoe", "tower_normalization": "l2"}},
            r"`tower_normalization` must be one of 'layer', 'batch', None",
        ),
        (
            {"model": {"architecture": "aitm", "kernel_initializer": "glorot"}},
            "`kernel_initializer` could not be interpreted",
        ),
        (
            {"model": {"architecture": "esmm", "kernel_regularizer": "l3"}},
            "`kernel_regularizer` could not be interpreted",
        ),
        ({"tasks": [{"name": "cvr", "space": "click"}]}, "unknown task"),
    ],
    ids=[
        "typo",
        "dataset",
        "path",
        "extra_field",
        "epochs",
        "lr",
        "model_not_mapping",
        "builder_arg_typo",
        "unknown_architecture",
        "interaction_kind",
        "cross_layers_without_cross",
        "interaction_features_without_dot",
        "interaction_features_string",
        "expert_normalization",
        "gate_normalization",
        "tower_normalization",
        "kernel_initializer",
        "kernel_regularizer",
        "task_space",
    ],
)
def test_bad_configs_fail_before_training(config, message):
    with pytest.raises(ValueError, match=message):
        runner.resolve_config(config)


def test_cli_reports_errors_with_exit_code_2(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"training": {"batch_size": -5}}))
    assert cli.main(["train", "--config", str(path)]) == 2
    assert "training.batch_size" in capsys.readouterr().err
    assert cli.main(["evaluate", "--model-dir", str(tmp_path)]) == 2


def test_module_entry_point_lists_subcommands():
    result = subprocess.run(
        [sys.executable, "-m", "keras_mtl", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    for command in ("train", "evaluate", "predict", "demo"):
        assert command in result.stdout


# ---------------------------------------------------------------------------
# train --distributed
# ---------------------------------------------------------------------------


def _distributed_args(out, *extra):
    return [
        "train",
        "--distributed",
        "--n",
        "3000",
        "--batch-size",
        "256",
        "--checkpoint-every",
        "4",
        "--output-dir",
        str(out),
        *extra,
    ]


def _weights(path):
    model, _, _, _ = runner.load_run(path)
    return model.get_weights()


@pytest.mark.slow
def test_train_distributed_single_worker_saves_and_resumes(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    resumed = tmp_path / "resumed"
    assert cli.main(_distributed_args(resumed, "--epochs", "1")) == 0
    for name in ("model.keras", "features.json", "tasks.json", "config.json"):
        assert (resumed / name).is_file(), name
    metrics = json.loads((resumed / "metrics.json").read_text())
    info = metrics["distributed"]
    # 80% of 3000 rows train: 2400 // 256 = 9 steps an epoch.
    assert info["strategy"] == "MirroredStrategy"
    assert info["num_workers"] == 1 and info["task"] is None
    assert info["steps_per_epoch"] == info["steps_run"] == 9
    assert info["checkpoint_dir"] == str(resumed / "checkpoints")
    assert metrics["evaluated_on"] == "test"
    assert metrics["report"]["click"]["n"] == 300
    assert set(metrics["history"]) == {
        "loss",
        "click_loss",
        "conversion_loss",
        "watch_time_loss",
    }
    assert len(metrics["history"]["loss"]) == 1
    state = (resumed / "checkpoints" / "checkpoint").read_text()
    assert 'model_checkpoint_path: "ckpt-9"' in state and "ckpt-8" in state
    config = json.loads((resumed / "config.json").read_text())
    assert config["training"]["distributed"] is True
    # Asking for 2 epochs resumes from step 9 and runs the second only.
    assert cli.main(_distributed_args(resumed, "--epochs", "2")) == 0
    info = json.loads((resumed / "metrics.json").read_text())["distributed"]
    assert info["steps_run"] == 9 and info["epochs_run"] == [2]
    assert "ckpt-18" in (resumed / "checkpoints" / "checkpoint").read_text()
    # ... and ends exactly where an uninterrupted 2-epoch run ends.
    straight = tmp_path / "straight"
    assert cli.main(_distributed_args(straight, "--epochs", "2")) == 0
    for a, b in zip(_weights(resumed), _weights(straight)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert "Saved model, specs and metrics.json" in capsys.readouterr().out


@pytest.mark.slow
def test_train_distributed_two_workers_through_the_cli(tmp_path):
    from test_distribute import _env
    from test_distribute import _kill
    from test_distribute import _wait

    from keras_mtl import data
    from keras_mtl import features as F
    from keras_mtl.distribute import free_ports

    df = datasets.synthetic_funnel(1200, seed=1, num_users=60, num_items=40)
    df = df.drop(columns=["hist_item_ids"])
    tasks = datasets.funnel_tasks()
    specs = F.infer_features(df, labels=datasets.FUNNEL_LABELS)
    # 3 files for 2 workers: worker 0 reads files 0 and 2, worker 1 file 1.
    data.to_tfrecord(
        df.iloc[:960], tmp_path / "train" / "part", specs, tasks, num_shards=3
    )
    data.to_tfrecord(df.iloc[960:], tmp_path / "test" / "part", specs, tasks)
    out = tmp_path / "run"
    config = {
        "dataset": {
            "name": "tfrecord",
            "path": str(tmp_path / "train" / "part-*"),
            "test_path": str(tmp_path / "test" / "part-*"),
        },
        "tasks": [t.get_config() for t in tasks],
        "model": {"architecture": "shared_bottom", "bottom_units": [16]},
        "training": {
            "distributed": True,
            "epochs": 1,
            "steps_per_epoch": 3,
            "batch_size": 128,
            "checkpoint_every": 2,
        },
        "output_dir": str(out),
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    procs = []
    try:
        for i in range(2):
            tf_config = {
                "cluster": cluster,
                "task": {"type": "worker", "index": i},
            }
            with open(tmp_path / f"log_cli{i}.txt", "w") as log:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "keras_mtl",
                            "train",
                            "--config",
                            str(tmp_path / "run.yaml"),
                        ],
                        cwd=tmp_path,
                        env=_env(TF_CONFIG=json.dumps(tf_config)),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        _wait(procs, tmp_path, "cli")
    finally:
        _kill(procs)
    logs = [(tmp_path / f"log_cli{i}.txt").read_text() for i in range(2)]
    assert "Saved model, specs and metrics.json" in logs[0]
    assert "Worker done; the chief saves the run." in logs[1]
    # Only the chief writes the run; worker 1 only its checkpoint scratch.
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints",
        "config.json",
        "features.json",
        "metrics.json",
        "model.keras",
        "tasks.json",
    ]
    ckpt = out / "checkpoints"
    assert (ckpt / ".worker_worker_1").is_dir()
    assert (
        'model_checkpoint_path: "ckpt-3"' in (ckpt / "checkpoint").read_text()
    )
    metrics = json.loads((out / "metrics.json").read_text())
    info = metrics["distributed"]
    assert info["strategy"] == "MultiWorkerMirroredStrategy"
    assert (info["num_workers"], info["replicas"], info["task"]) == (
        2,
        2,
        "worker:0",
    )
    assert info["steps_run"] == 3 and info["global_batch_size"] == 128
    assert metrics["report"]["click"]["n"] == 240
    assert np.isfinite(metrics["history"]["loss"]).all()
    model, features, _, _ = runner.load_run(out)
    assert {f.name for f in features} == {f.name for f in specs}


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {"training": {"distributed": True, "weighting": "gradnorm"}},
            r"`training.weighting` must be 'fixed' with `training.distributed",
        ),
        (
            {"training": {"distributed": True, "early_stopping_patience": 2}},
            "`training.early_stopping_patience` is not supported",
        ),
        (
            {
                "dataset": {"name": "tfrecord", "path": "x-*"},
                "training": {"distributed": True},
            },
            r"`training.steps_per_epoch` is required .* dataset 'tfrecord'",
        ),
        (
            {"training": {"checkpoint_dir": "/tmp/ckpt"}},
            "`training.checkpoint_dir` applies to distributed training only",
        ),
        (
            {"training": {"distributed": "yes"}},
            "Received: distributed='yes'",
        ),
        (
            {"training": {"distributed": True, "checkpoint_every": 0}},
            "Received: checkpoint_every=0",
        ),
        (
            {"dataset": {"name": "tfrecord", "path": "x", "compression": "lz"}},
            "`dataset.compression` must be",
        ),
    ],
    ids=[
        "weighting",
        "early_stopping",
        "files_without_steps",
        "checkpoint_without_distributed",
        "not_bool",
        "checkpoint_every",
        "compression",
    ],
)
def test_bad_distributed_configs_fail_before_training(config, message):
    with pytest.raises(ValueError, match=message):
        runner.resolve_config(config)


def test_distributed_cli_errors_name_the_field(tmp_path, monkeypatch, capsys):
    bad = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}}
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({**bad, "task": {"type": "worker", "index": 2}})
    )
    assert cli.main(["train", "--distributed", "--n", "100"]) == 2
    err = capsys.readouterr().err
    assert "Malformed `TF_CONFIG`: `task.index` must be an integer" in err
    assert "Received: task.index=2" in err
    # CSV shards by whole files: one file cannot feed two workers.
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({**bad, "task": {"type": "worker", "index": 0}})
    )
    (tmp_path / "only.csv").write_text("a,click\n1,0\n")
    args = [
        "train",
        "--distributed",
        "--dataset",
        "csv",
        "--data-path",
        str(tmp_path / "only.csv"),
        "--steps-per-epoch",
        "10",
    ]
    config = tmp_path / "tasks.yaml"
    config.write_text(yaml.safe_dump({"tasks": [{"name": "click"}]}))
    assert cli.main([*args, "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "`dataset.path` matches 1 csv file(s) for 2 workers" in err
    # Distributed flags without --distributed.
    monkeypatch.delenv("TF_CONFIG")
    assert cli.main(["train", "--checkpoint-every", "5"]) == 2
    assert "`training.checkpoint_every` applies to distributed" in (
        capsys.readouterr().err
    )
