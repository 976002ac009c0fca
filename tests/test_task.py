import pytest

from keras_mtl import Task
from keras_mtl.task import validate_tasks


def test_task_defaults_and_config_round_trip():
    task = Task("watch_time", "regression", space="click", weight=0.5)
    assert task.label == "watch_time" and task.output_dim == 1
    assert Task.from_config(task.get_config()) == task
    assert Task("genre", "multiclass", num_classes=5).output_dim == 5


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(name="my task"), "name"),
        (dict(name="a", kind="ranking"), "kind"),
        (dict(name="a", space="a"), "itself"),
        (dict(name="a", weight=-1), "weight"),
        (dict(name="a", weight=float("nan")), "weight"),
        (dict(name="a", kind="multiclass"), "num_classes"),
        (dict(name="a", num_classes=3), "num_classes"),
    ],
    ids=[
        "bad_name",
        "bad_kind",
        "self_space",
        "negative_weight",
        "nan_weight",
        "multiclass_without_classes",
        "classes_on_binary",
    ],
)
def test_invalid_task_args(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Task(**kwargs)


def test_validate_tasks_errors():
    with pytest.raises(ValueError, match=r"unknown task.*'clk'"):
        validate_tasks([Task("click"), Task("cvr", space="clk")])
    with pytest.raises(ValueError, match="used twice"):
        validate_tasks([Task("click"), Task("click")])
    with pytest.raises(ValueError, match="must name a binary task"):
        validate_tasks([Task("t", "regression"), Task("c", space="t")])
    with pytest.raises(ValueError, match="cycle"):
        validate_tasks([Task("a", space="b"), Task("b", space="a")])
    with pytest.raises(ValueError, match="at least one"):
        validate_tasks([])
    tasks = validate_tasks(
        [{"name": "click"}, {"name": "cvr", "space": "click"}]
    )
    assert tasks[1].space == "click"
