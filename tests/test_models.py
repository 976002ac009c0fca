import keras
import numpy as np
import pytest

import keras_mtl
from keras_mtl import Task
from keras_mtl import data
from keras_mtl import datasets
from keras_mtl import models
from keras_mtl.training import weighting as weighting_lib

FUNNEL = datasets.synthetic_funnel(1200, seed=1)
SPECS = keras_mtl.infer_features(
    FUNNEL, labels=datasets.FUNNEL_LABELS, embed_dim=4
)
TASKS = datasets.funnel_tasks()

BUILD_CASES = {
    "shared_bottom": dict(bottom_units=[16], tower_units=[8]),
    "shared_embedding_towers": dict(tower_units=[16]),
    "mmoe": dict(num_experts=3, expert_units=[8], tower_units=[8]),
    "omoe": dict(num_experts=3, expert_units=[8], tower_units=[8]),
    "cgc": dict(num_task_experts=2, num_shared_experts=1, expert_units=[8]),
    "ple": dict(num_levels=2, expert_units=[8], tower_units=[4]),
    "esmm": dict(tower_units=[8]),
    "aitm": dict(tower_units=[8]),
}


def _arrays(tasks, n=None):
    df = FUNNEL if n is None else FUNNEL.head(n)
    return data.dataframe_to_arrays(df, SPECS, tasks)


def _assert_reloads_identically(model, tasks, outputs, path):
    """Saved as `.keras` and reloaded (safe mode): the same predictions."""
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    xs, _, _ = _arrays(tasks, n=64)
    before = model.predict(xs, verbose=0)
    after = loaded.predict(xs, verbose=0)
    for name in outputs:
        np.testing.assert_array_equal(after[name], before[name])


@pytest.mark.parametrize("architecture", sorted(BUILD_CASES), ids=str)
def test_builder_trains_and_reloads_identically(architecture, tmp_path):
    tasks = models.tasks_for(architecture, TASKS)
    model = models.build(
        architecture, SPECS, tasks, **BUILD_CASES[architecture]
    )
    expected = (
        ["ctr", "cvr", "ctcvr"]
        if architecture == "esmm"
        else [t.name for t in tasks]
    )
    assert sorted(model.output_names) == sorted(expected)
    assert {i.name for i in model.inputs} == {s.name for s in SPECS}
    models.compile_model(model, tasks, learning_rate=0.01)
    x, y, sw = _arrays(tasks)
    history = model.fit(
        x, y, sample_weight=sw, batch_size=256, epochs=2, verbose=0
    )
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[1] < losses[0]
    _assert_reloads_identically(model, tasks, expected, tmp_path / "m.keras")


@pytest.mark.parametrize(
    "weighting",
    # Keras' step, and every strategy with a custom train step.
    [None, "fixed", *weighting_lib.TASK_GRADIENT_STRATEGIES, "famo"],
    ids=str,
)
def test_fit_traces_the_train_step_once(weighting):
    # Loss trackers, metric and optimizer variables created inside the
    # first trace would make TensorFlow trace the whole step a second time.
    from keras_mtl import training

    model = models.mmoe(
        SPECS, TASKS, num_experts=2, expert_units=[8], tower_units=[4]
    )
    if weighting is None:
        model = models.compile_model(model, TASKS, steps_per_execution=4)
    else:
        model = training.compile(
            model, TASKS, weighting=weighting, steps_per_execution=4
        )
    traces = []
    step = model.train_step

    def counted(batch):
        traces.append(1)
        return step(batch)

    model.train_step = counted
    x, y, sw = _arrays(TASKS, n=512)
    history = model.fit(
        x, y, sample_weight=sw, batch_size=64, epochs=2, verbose=0
    )
    assert len(traces) == 1
    assert np.isfinite(history.history["loss"]).all()


def test_heap_is_trimmed_once_after_each_step_function_compiles(
    monkeypatch,
):
    import platform

    from keras_mtl.models import zoo

    assert zoo._trim_heap() is (platform.libc_ver()[0] == "glibc")
    trims = []
    monkeypatch.setattr(zoo, "_trim_heap", lambda: trims.append(1))
    model = models.mmoe(
        SPECS, TASKS, num_experts=2, expert_units=[8], tower_units=[4]
    )
    models.compile_model(model, TASKS, steps_per_execution=2)
    models.compile_model(model, TASKS, steps_per_execution=2)  # no rewrap
    x, y, sw = _arrays(TASKS, n=512)
    kwargs = dict(sample_weight=sw, batch_size=64, verbose=0)
    model.fit(x, y, epochs=2, validation_data=(x, y, sw), **kwargs)
    assert len(trims) == 2  # the train and the test function, once each
    train_function = model.train_function
    model.fit(x, y, epochs=1, **kwargs)
    model.evaluate(x, y, **kwargs)
    assert len(trims) == 2
    assert model.train_function is train_function


def test_compile_leaves_no_metric_state():
    model = models.mmoe(
        SPECS, TASKS, num_experts=2, expert_units=[8], tower_units=[4]
    )
    models.compile_model(model, TASKS)
    state = [v for m in model.metrics for v in m.variables]
    assert state, "compile_model builds the metric state"
    for variable in state:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), 0)


def test_compile_defaults_are_masked_weighted_and_overridable():
    tasks = [
        Task("click"),
        Task("conversion", space="click", weight=2.0),
        Task("watch_time", "regression", space="click"),
    ]
    model = models.shared_bottom(SPECS, tasks, bottom_units=[8], tower_units=[])
    models.compile_model(
        model, tasks, loss={"watch_time": keras.losses.Huber()}
    )
    # Default losses reduce over the task's own sample space.
    assert model.loss["click"].reduction == "mean_with_sample_weight"
    assert isinstance(model.loss["watch_time"], keras.losses.Huber)
    # The total is the task-weighted sum of the per-task losses.
    x, y, sw = data.dataframe_to_arrays(FUNNEL.head(300), SPECS, tasks)
    result = model.evaluate(
        x, y, sample_weight=sw, batch_size=300, verbose=0, return_dict=True
    )
    np.testing.assert_allclose(
        result["loss"],
        result["click_loss"]
        + 2.0 * result["conversion_loss"]
        + result["watch_time_loss"],
        rtol=1e-5,
    )
    assert {
        "click_auc",
        "click_logloss",
        "click_pcoc",
        "watch_time_rmse",
        "watch_time_mae",
    } <= set(result)
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['ctr'\]"):
        models.compile_model(model, tasks, loss_weights={"ctr": 1.0})
    with pytest.raises(ValueError, match=r"no output for task\(s\) \['like'\]"):
        models.compile_model(model, [*tasks, Task("like", space="click")])


def test_masked_training_loss_equals_in_space_mean():
    tasks = [Task("click"), Task("conversion", space="click")]
    model = models.shared_bottom(SPECS, tasks, bottom_units=[8], tower_units=[])
    models.compile_model(model, tasks)
    x, y, sw = _arrays(tasks, n=500)
    result = model.evaluate(
        x, y, sample_weight=sw, batch_size=500, verbose=0, return_dict=True
    )
    p = model.predict(x, verbose=0)["conversion"][:, 0].astype("float64")
    p = np.clip(p, 1e-7, 1 - 1e-7)
    bce = -(y["conversion"] * np.log(p) + (1 - y["conversion"]) * np.log(1 - p))
    clicked = sw["conversion"] > 0
    np.testing.assert_allclose(
        result["conversion_loss"], bce[clicked].mean(), rtol=1e-4
    )


def test_esmm_gradient_reaches_cvr_only_through_ctcvr():
    tasks = models.esmm_tasks()
    model = models.esmm(SPECS, tasks, tower_units=[8])
    assert [t.weight for t in tasks] == [1.0, 0.0, 1.0]  # cvr: no own loss
    x, y, sw = _arrays(tasks)
    cvr_kernel = model.get_layer("cvr_logit").kernel
    before = keras.ops.convert_to_numpy(cvr_kernel).copy()
    # Train on ctr alone: the CVR tower must not move.
    model.compile(
        "adam", loss={"ctr": "binary_crossentropy"}, loss_weights={"ctr": 1.0}
    )
    model.fit(x, {"ctr": y["ctr"]}, epochs=1, batch_size=256, verbose=0)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(cvr_kernel), before
    )
    p = model.predict(x, verbose=0)
    np.testing.assert_allclose(p["ctcvr"], p["ctr"] * p["cvr"], rtol=1e-6)


def test_kl_bound_adds_a_training_loss_and_keeps_outputs():
    tasks = [Task("click"), Task("conversion"), Task("order")]
    df = FUNNEL.assign(order=FUNNEL.conversion)
    x, y, sw = data.dataframe_to_arrays(df, SPECS, tasks)
    bound = models.shared_bottom(
        SPECS,
        tasks,
        bottom_units=[8],
        kl_bounds=[(("click", "conversion"), "order", 0.5)],
    )
    assert "kl_bound_order" in [layer.name for layer in bound.layers]
    out = bound(x, training=True)
    assert len(bound.losses) == 1
    p = {
        k: keras.ops.convert_to_numpy(v)[:, 0].astype("float64")
        for k, v in out.items()
    }
    chain = np.clip(p["click"] * p["conversion"], 1e-7, 1 - 1e-7)
    joint = np.clip(p["order"], 1e-7, 1 - 1e-7)
    kl = chain * np.log(chain / joint) + (1 - chain) * np.log(
        (1 - chain) / (1 - joint)
    )
    kl += joint * np.log(joint / chain) + (1 - joint) * np.log(
        (1 - joint) / (1 - chain)
    )
    np.testing.assert_allclose(
        float(keras.ops.convert_to_numpy(bound.losses[0])),
        0.5 * kl.mean(),
        rtol=1e-3,
    )
    with pytest.raises(ValueError, match="not a binary task"):
        models.shared_bottom(
            SPECS, tasks, kl_bounds=[(("click",), "nope", 1.0)]
        )


def test_tasks_for_adapts_funnel_tasks():
    assert [t.name for t in models.tasks_for("esmm", TASKS)] == [
        "ctr",
        "cvr",
        "ctcvr",
    ]
    path = models.tasks_for("aitm", TASKS)
    assert [(t.name, t.space) for t in path] == [
        ("click", None),
        ("conversion", None),
    ]
    assert models.tasks_for("mmoe", TASKS) == TASKS
    with pytest.raises(ValueError, match="path of binary tasks"):
        models.tasks_for("esmm", [Task("click")])


@pytest.mark.parametrize("architecture", sorted(BUILD_CASES), ids=str)
def test_builder_dot_interaction_widens_input_and_reloads(
    architecture, tmp_path
):
    tasks = models.tasks_for(architecture, TASKS)
    kwargs = BUILD_CASES[architecture]
    plain = models.build(architecture, SPECS, tasks, **kwargs)
    crossed = models.build(
        architecture, SPECS, tasks, interaction="dot", **kwargs
    )
    # 6 embedded features (user, item, category, device, position and the
    # pooled history): 15 pairwise dots on top of the plain input vector.
    assert (
        crossed.get_layer("input_block").output_dim
        == plain.get_layer("input_block").output_dim + 15
    )
    expected = list(crossed.output_names)
    _assert_reloads_identically(crossed, tasks, expected, tmp_path / "m.keras")


@pytest.mark.parametrize("architecture", sorted(BUILD_CASES), ids=str)
def test_builder_cross_interaction_keeps_width_and_reloads(
    architecture, tmp_path
):
    tasks = models.tasks_for(architecture, TASKS)
    kwargs = BUILD_CASES[architecture]
    plain = models.build(architecture, SPECS, tasks, **kwargs)
    crossed = models.build(
        architecture,
        SPECS,
        tasks,
        interaction="cross",
        cross_layers=3,
        cross_projection_dim=8,
        **kwargs,
    )
    block = crossed.get_layer("input_block")
    # The cross network replaces the input vector by one of its width.
    assert block.output_dim == plain.get_layer("input_block").output_dim
    assert [c.projection_dim for c in block.feature_crosses] == [8] * 3
    # Each layer: U (d, 8), V (8, d) and a bias (d,) on top of the plain.
    d = block.output_dim
    assert crossed.count_params() - plain.count_params() == 3 * (
        d * 8 + 8 * d + d
    )
    expected = list(crossed.output_names)
    _assert_reloads_identically(crossed, tasks, expected, tmp_path / "m.keras")


@pytest.mark.parametrize(
    "kwargs",
    [dict(interaction="dot"), dict(interaction="cross", cross_layers=3)],
    ids=["dot", "cross"],
)
def test_precomputed_input_refuses_interaction(kwargs):
    inputs = {s.name: keras.Input(shape=(), name=s.name) for s in SPECS[:1]}
    x = keras.layers.Dense(4)(keras.ops.expand_dims(inputs[SPECS[0].name], -1))
    with models.zoo.precomputed_input(inputs, x):
        with pytest.raises(ValueError, match="interaction.*precomputed_input"):
            models.mmoe(SPECS, TASKS, **kwargs)


@pytest.mark.parametrize(
    "architecture, kwargs, message",
    [
        ("mmoe", dict(num_experts=0), "num_experts"),
        ("mmoe", dict(tower_units=[0]), "tower_units"),
        ("shared_bottom", dict(bottom_units=[]), "bottom_units"),
        ("ple", dict(num_levels=0), "num_levels"),
        ("mmoe", dict(dropout=1.5), "dropout"),
        ("cgc", dict(num_levels=2), "num_levels"),
        ("omoe", dict(single_gate=False), "single_gate"),
        ("mmoe", dict(tower_normalization="group"), "tower_normalization"),
        ("ple", dict(expert_normalization="group"), "expert_normalization"),
        ("omoe", dict(gate_normalization="group"), "gate_normalization"),
        (
            "shared_bottom",
            dict(embeddings_initializer="nope"),
            "embeddings_initializer",
        ),
        ("mmoe", dict(embeddings_regularizer="nope"), "embeddings_regularizer"),
        ("aitm", dict(kernel_initializer="nope"), "kernel_initializer"),
        ("ple", dict(kernel_regularizer="nope"), "kernel_regularizer"),
    ],
    ids=[
        "experts",
        "towers",
        "bottom",
        "levels",
        "dropout",
        "cgc_levels",
        "omoe_gate",
        "tower_normalization",
        "expert_normalization",
        "gate_normalization",
        "embeddings_initializer",
        "embeddings_regularizer",
        "kernel_initializer",
        "kernel_regularizer",
    ],
)
def test_invalid_builder_arguments(architecture, kwargs, message):
    with pytest.raises(ValueError, match=message):
        models.build(architecture, SPECS, TASKS, **kwargs)


def test_kernel_initializer_sees_the_fans_of_one_dense(tmp_path):
    # PyTorch's nn.Linear kernels: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), with
    # the fan-in of one expert or gate, not of the stacked weight.
    torch_init = keras.initializers.VarianceScaling(
        scale=1 / 3, mode="fan_in", distribution="uniform"
    )
    model = models.mmoe(
        SPECS,
        TASKS,
        num_experts=4,
        expert_units=[16],
        tower_units=[8],
        kernel_initializer=torch_init,
    )
    width = model.get_layer("mmoe").input.shape[-1]
    bounds = {
        "mmoe/expert_kernel_0": 1 / np.sqrt(width),
        "mmoe/gate_kernel": 1 / np.sqrt(width),
        "tower_click/dense_0/kernel": 1 / np.sqrt(16),
        "click/kernel": 1 / np.sqrt(8),
    }
    weights = {w.path: w.numpy() for w in model.weights}
    for path, bound in bounds.items():
        largest = np.abs(weights[path]).max()
        assert 0.7 * bound < largest <= bound, (path, largest, bound)
    # One unseeded instance, a fresh draw for every layer and slice.
    experts = weights["mmoe/expert_kernel_0"]
    assert not np.array_equal(experts[0], experts[1])
    for layer in ("tower_{}/dense_0/kernel", "{}/kernel"):
        assert not np.array_equal(
            weights[layer.format("click")], weights[layer.format("conversion")]
        )
    _fit_and_assert_reloads(model, tmp_path)


def test_checking_an_initializer_leaves_the_seeded_draws_alone():
    # Keras draws an unseeded initializer's seed from Python's `random`: a
    # check that made one would shift every weight a seeded run builds.
    keras.utils.set_random_seed(3)
    default = models.mmoe(SPECS, TASKS, num_experts=2, expert_units=[4])
    keras.utils.set_random_seed(3)
    models.zoo.check_builder_args("mmoe", dict(kernel_initializer="he_normal"))
    checked = models.mmoe(
        SPECS,
        TASKS,
        num_experts=2,
        expert_units=[4],
        kernel_initializer="glorot_uniform",
    )
    for a, b in zip(default.weights, checked.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def _expert_layers(model):
    """The model's `MMoELayer` / `PLELevel`s (at least one)."""
    layers = [
        layer
        for layer in model.layers
        if layer.name == "mmoe" or layer.name.startswith("ple_level")
    ]
    assert layers
    return layers


def _fit_and_assert_reloads(model, tmp_path):
    """One epoch of fit with finite losses, then a `.keras` round trip."""
    x, y, sw = _arrays(TASKS, n=64)
    models.compile_model(model, TASKS)
    history = model.fit(x, y, sample_weight=sw, batch_size=32, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    _assert_reloads_identically(
        model, TASKS, [t.name for t in TASKS], tmp_path / "model.keras"
    )


@pytest.mark.parametrize("architecture", ["mmoe", "omoe", "ple", "cgc"])
@pytest.mark.parametrize(
    "tower_normalization, expected",
    [
        ("default", None),
        ("layer", keras.layers.LayerNormalization),
        ("batch", keras.layers.BatchNormalization),
        (None, None),
    ],
    ids=["default_none", "layer", "batch", "none"],
)
def test_moe_builders_normalize_towers_and_experts(
    architecture, tower_normalization, expected
):
    kwargs = dict(BUILD_CASES[architecture], tower_units=[8])
    if tower_normalization != "default":
        kwargs["tower_normalization"] = tower_normalization
    model = models.build(
        architecture, SPECS, TASKS, expert_normalization="batch", **kwargs
    )
    for task in TASKS:
        tower = model.get_layer(f"tower_{task.name}")
        assert [type(n) for n in tower.norm_layers] == (
            [expected] if expected else []
        )
    sharing = _expert_layers(model)
    assert all(layer.expert_normalization == "batch" for layer in sharing)
    x, y, sw = _arrays(TASKS, n=64)
    models.compile_model(model, TASKS)
    history = model.fit(x, y, sample_weight=sw, batch_size=32, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


@pytest.mark.parametrize("architecture", ["mmoe", "omoe", "ple", "cgc"])
@pytest.mark.parametrize("gate_normalization", ["batch", "layer"])
def test_moe_builders_normalize_gates(
    architecture, gate_normalization, tmp_path
):
    model = models.build(
        architecture,
        SPECS,
        TASKS,
        gate_normalization=gate_normalization,
        **BUILD_CASES[architecture],
    )
    sharing = _expert_layers(model)
    assert all(s.gate_normalization == gate_normalization for s in sharing)
    # Batch-normalized gates reload with their moving statistics.
    _fit_and_assert_reloads(model, tmp_path)


def test_esmm_and_aitm_refuse_wrong_tasks():
    with pytest.raises(ValueError, match="'ctr', 'cvr' and 'ctcvr'"):
        models.esmm(SPECS, TASKS)
    with pytest.raises(ValueError, match="entire impression space"):
        models.aitm(SPECS, [Task("click"), Task("conversion", space="click")])
    with pytest.raises(ValueError, match="Unknown `architecture`"):
        models.build("transformer", SPECS, TASKS)


@pytest.mark.parametrize("architecture", ["mmoe", "omoe", "ple", "cgc"])
def test_moe_builders_layer_normalize_experts(architecture, tmp_path):
    model = models.build(
        architecture,
        SPECS,
        TASKS,
        expert_normalization="layer",
        tower_normalization="layer",
        **BUILD_CASES[architecture],
    )
    sharing = _expert_layers(model)
    for layer in sharing:
        assert layer.expert_normalization == "layer"
        # Layer norm has no moving statistics to drift between train and
        # serve: the experts hold trainable weights only.
        assert layer.non_trainable_weights == []
    _fit_and_assert_reloads(model, tmp_path)
