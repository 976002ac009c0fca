import json
import subprocess
import sys

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
        "model": {"architecture": "shared_bottom", "bottom_units": [16]},
        "training": {"epochs": 1, "batch_size": 512},
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["train", "--config", str(path)]) == 0
    features = json.loads((tmp_path / "run" / "features.json").read_text())
    names = {f["name"] for f in features}
    # Every label of the dataset stays out of the features, trained or not.
    assert names.isdisjoint(datasets.FUNNEL_LABELS)
    tasks = json.loads((tmp_path / "run" / "tasks.json").read_text())
    assert [t["name"] for t in tasks] == ["click", "like"]


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
