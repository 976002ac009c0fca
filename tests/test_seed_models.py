"""Tests of the seed builders (keras_mtl.models.seeds) and keras_mtl.ranking.

Each builder trains for two epochs on a small funnel (loss falls) and
reloads from `.keras` with `safe_mode=True` giving identical predictions;
each also has its paper-specific property checked on the same model.
Metrics are left out of `compile_model` (they are tested elsewhere) to keep
the tests fast.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_mtl
from keras_mtl import Task
from keras_mtl import data
from keras_mtl import datasets
from keras_mtl import features
from keras_mtl import models
from keras_mtl import ranking


def _funnel():
    df = datasets.synthetic_funnel(400, seed=1, num_users=40, num_items=80)
    rng = np.random.default_rng(0)
    # No cart label in the funnel: a DAction on a third of the clicks,
    # more likely before a purchase (0 without a click, as ESM2 needs).
    cart = (df["conversion"] == 1) | (rng.random(len(df)) < 0.3)
    df["cart"] = (df["click"] * cart).astype("int64")
    # A 1-5 satisfaction rating after a click, higher when liked.
    rating = 2.0 + 2.0 * df["like"] + rng.normal(0.0, 0.5, len(df))
    df["rating"] = rating.clip(1.0, 5.0)  # NaN without a click
    return df


FUNNEL = _funnel()
LABELS = [*datasets.FUNNEL_LABELS, "cart", "rating"]
SPECS = keras_mtl.infer_features(FUNNEL, labels=LABELS, embed_dim=4)
TASKS = datasets.funnel_tasks()
USER_FEATURES = ["user_id", "device", "user_age"]


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _predict(model, x):
    """An inference call (cheaper than `predict` for one small batch)."""
    return keras.tree.map_structure(_np, model(x, training=False))


def _train_and_reload(model, tasks, tmp_path):
    """Fits two epochs (loss must fall); returns the reloaded model.

    Four steps run faster eagerly than traced (each layer's own tests fit
    in graph mode).
    """
    models.compile_model(
        model,
        tasks,
        learning_rate=0.02,
        weighted_metrics={},
        run_eagerly=True,
    )
    x, y, sw = data.dataframe_to_arrays(FUNNEL, SPECS, tasks)
    history = model.fit(
        x, y, sample_weight=sw, batch_size=200, epochs=2, verbose=0
    )
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[1] < losses[0], losses
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    xs = {k: v[:64] for k, v in x.items()}
    before = _predict(model, xs)
    after = _predict(loaded, xs)
    assert sorted(after) == sorted(t.name for t in tasks)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])
    return loaded, xs, before


def test_esm2_trains_reloads_and_decomposes(tmp_path):
    tasks = models.esm2_tasks(action_label="cart")
    assert [(t.name, t.space, t.weight) for t in tasks] == [
        ("ctr", None, 1.0),
        ("ctavr", None, 1.0),
        ("ctcvr", None, 1.0),
        ("avr", "ctr", 0.0),
        ("cvr", "ctr", 0.0),
    ]
    model = models.build("esm2", SPECS, tasks, tower_units=[8])
    loaded, xs, outputs = _train_and_reload(model, tasks, tmp_path)
    # The four branch logits, turned into probabilities here.
    branches = ("ctr", "avr", "cvr_daction", "cvr_oaction")
    logits = [loaded.get_layer(f"{b}_logit").output for b in branches]
    probe = keras.Model(loaded.input, logits)
    ctr, avr, cvr_d, cvr_o = (
        1.0 / (1.0 + np.exp(-z.astype("float64"))) for z in _predict(probe, xs)
    )
    # The decomposed probabilities multiply to the purchase probability.
    cvr = avr * cvr_d + (1.0 - avr) * cvr_o
    np.testing.assert_allclose(outputs["cvr"], cvr, rtol=1e-5)
    np.testing.assert_allclose(outputs["ctcvr"], ctr * cvr, rtol=1e-5)
    np.testing.assert_allclose(outputs["ctavr"], ctr * avr, rtol=1e-5)
    np.testing.assert_allclose(outputs["avr"], avr, rtol=1e-5)


def test_dupn_trains_reloads_and_splits_user_and_item(tmp_path):
    model = models.build(
        "dupn",
        SPECS,
        TASKS,
        user_features=USER_FEATURES,
        sequence_feature="hist_item_ids",
        lstm_units=8,
        attention_units=8,
        representation_units=[6],
        tower_units=[8],
    )
    loaded, xs, outputs = _train_and_reload(model, TASKS, tmp_path)
    # The serving contract: user_tower -> item_scorer is the full model.
    user_tower = loaded.get_layer("user_tower")
    item_scorer = loaded.get_layer("item_scorer")
    user_names = {*USER_FEATURES, "hist_item_ids"}
    assert {t.name for t in user_tower.inputs} == user_names
    assert tuple(user_tower.output.shape) == (None, 6)
    item_names = {s.name for s in SPECS} - user_names
    assert {t.name for t in item_scorer.inputs} == {
        *item_names,
        "user_representation",
    }
    user_vectors = _predict(user_tower, {k: xs[k] for k in user_names})
    scores = _predict(
        item_scorer,
        {
            **{k: xs[k] for k in item_names},
            "user_representation": user_vectors,
        },
    )
    for task in TASKS:
        np.testing.assert_allclose(
            scores[task.name], outputs[task.name], rtol=1e-5, atol=1e-7
        )
    # Attention: sums to 1 over the history, 0 on padding.
    encoder = user_tower.get_layer("dupn_encoder")
    _, weights = encoder({k: xs[k] for k in user_names}, return_attention=True)
    weights = _np(weights)
    valid = xs["hist_item_ids"] != -1
    assert valid.any(axis=1).sum() > 10 and (~valid).any()
    np.testing.assert_allclose(
        weights[valid.any(axis=1)].sum(axis=1), 1.0, rtol=1e-5
    )
    assert np.all(weights[~valid] == 0.0)


YOUTUBE_TASKS = [
    Task("click"),
    Task("watch_time", "regression", space="click"),
    Task("like", space="click"),
    Task("rating", "regression", space="click"),
]


def test_youtube_ranker_serves_the_main_model_without_position(tmp_path):
    model = models.build(
        "youtube_ranker",
        SPECS,
        YOUTUBE_TASKS,
        num_experts=2,
        expert_units=[8],
        tower_units=[4],
    )
    loaded, xs, outputs = _train_and_reload(model, YOUTUBE_TASKS, tmp_path)
    serving = models.youtube_serving_model(loaded)
    # Serving: the position input is absent, the bias tower left out.
    main_names = {s.name for s in SPECS} - {"position"}
    assert {t.name for t in serving.inputs} == main_names
    xs_main = {k: xs[k] for k in main_names}
    served = _predict(serving, xs_main)
    logits = _predict(loaded.get_layer("main_model"), xs_main)
    for task in YOUTUBE_TASKS:
        expected = logits[task.name].astype("float64")
        if task.kind == "binary":
            expected = 1.0 / (1.0 + np.exp(-expected))
        np.testing.assert_allclose(served[task.name], expected, rtol=1e-5)
    # While training, the bias logit of the position shifts the binary
    # tasks; regression tasks are not biased by default.
    assert not np.allclose(outputs["click"], served["click"])
    np.testing.assert_allclose(
        outputs["watch_time"], served["watch_time"], rtol=1e-6
    )
    # With the shallow tower removed (its logits zeroed), the training
    # model's predictions are the serving ones.
    for weight in loaded.get_layer("shallow_tower").weights:
        weight.assign(np.zeros(weight.shape, "float32"))
    zeroed = _predict(loaded, xs)
    for task in YOUTUBE_TASKS:
        np.testing.assert_allclose(
            zeroed[task.name], served[task.name], rtol=1e-6
        )


def test_cross_stitch_starts_as_independent_towers_and_trains(tmp_path):
    model = models.build("cross_stitch", SPECS, TASKS, tower_units=[8, 4])
    x, _, _ = data.dataframe_to_arrays(FUNNEL.head(32), SPECS, TASKS)
    # Identity stitches: each task is its own tower over the embeddings.
    h0 = model.get_layer("input_block")(x)
    outputs = model(x)
    for task in TASKS:
        h = h0
        for level in range(2):
            h = model.get_layer(f"tower_{task.name}_{level}")(h)
        np.testing.assert_allclose(
            _np(outputs[task.name]),
            _np(model.get_layer(task.name)(h)),
            rtol=1e-5,
            atol=1e-7,
        )
    loaded, _, _ = _train_and_reload(model, TASKS, tmp_path)
    alpha = _np(loaded.get_layer("cross_stitch_0").alpha)
    assert alpha.shape == (3, 3)
    assert not np.allclose(alpha, np.eye(3))  # it learned to share


def test_soft_sharing_penalty_trains_and_vanishes_for_equal_towers(
    tmp_path,
):
    model = models.build(
        "soft_sharing", SPECS, TASKS, tower_units=[8, 4], penalty=0.01
    )
    loaded, xs, _ = _train_and_reload(model, TASKS, tmp_path)
    towers = loaded.get_layer("soft_sharing_towers")
    assert towers.penalty == 0.01
    loaded(xs, training=True)
    assert len(loaded.losses) == 1
    assert float(_np(loaded.losses[0])) > 0.0
    for weight in towers.weights:
        value = _np(weight)
        weight.assign(np.broadcast_to(value[:1], value.shape))
    assert float(_np(towers.sharing_penalty())) == 0.0
    loaded(xs, training=True)
    assert float(_np(loaded.losses[0])) == 0.0


def test_pairwise_loss_prefers_the_higher_graded_item():
    loss = ranking.pairwise_logistic_loss(reduction="sum")
    labels = np.array([[2.0, 0.0]], "float32")
    right = float(_np(loss(labels, np.array([[2.0, 0.0]], "float32"))))
    wrong = float(_np(loss(labels, np.array([[0.0, 2.0]], "float32"))))
    tie = float(_np(loss(labels, np.array([[1.0, 1.0]], "float32"))))
    np.testing.assert_allclose(tie, np.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(right, np.log1p(np.exp(-2.0)), rtol=1e-6)
    assert right < tie < wrong
    # Padding (label -1) forms no pair, whatever its score.
    padded = np.array([[2.0, 0.0, -1.0]], "float32")
    scores = np.array([[2.0, 0.0, 50.0]], "float32")
    np.testing.assert_allclose(
        float(_np(loss(padded, scores))), right, rtol=1e-6
    )
    # The gradient raises the higher-graded score and lowers the other.
    # (Away from an exact tie: keras-rs writes the loss with |s_i - s_j|,
    # whose gradient TensorFlow takes as 0 at 0.)
    scores = tf.Variable(np.array([[0.0, 0.5]], "float32"))
    with tf.GradientTape() as tape:
        value = loss(labels, scores)
    gradient = _np(tape.gradient(value, scores))
    step = 1.0 / (1.0 + np.exp(-0.5))  # sigmoid(s_j - s_i)
    np.testing.assert_allclose(gradient, [[-step, step]], rtol=1e-5)


def test_grades_and_lists_exact():
    labels = {
        "conversion": np.array([0, 1, 0, 0, 0]),
        "cart": np.array([0, 1, 1, 0, 0]),
        "click": np.array([1, 1, 1, 0, np.nan]),
    }
    grades = ranking.grade_labels(labels, ["conversion", "cart", "click"])
    np.testing.assert_array_equal(grades, [1, 3, 2, 0, 0])
    x = {
        "id": np.array([10, 11, 12, 13, 14], "int64"),
        "price": np.array([1.0, 2.0, 3.0, 4.0, 5.0], "float32"),
        "name": np.array(["a", "b", "c", "d", "e"], object),
    }
    groups = np.array(["u2", "u1", "u2", "u2", "u1"])
    x_lists, y_lists = ranking.group_into_lists(x, grades, groups, 2)
    # u1: rows 1, 4; u2: rows 0, 2 then 3 (its second list).
    np.testing.assert_array_equal(y_lists, [[3, 0], [1, 2], [0, -1]])
    np.testing.assert_array_equal(x_lists["id"], [[11, 14], [10, 12], [13, -1]])
    assert x_lists["name"].tolist() == [["b", "e"], ["a", "c"], ["d", ""]]
    assert np.isnan(x_lists["price"][2, 1])
    with pytest.raises(ValueError, match="`list_size`.*Received: list_size="):
        ranking.group_into_lists(x, grades, groups, 1)
    with pytest.raises(ValueError, match=r"\['purchase'\]"):
        ranking.grade_labels(labels, ["purchase", "click"])


def test_pairwise_ranker_trains_on_graded_lists_and_reloads(tmp_path):
    x, y = ranking.graded_lists(
        FUNNEL,
        SPECS,
        grade_order=["conversion", "cart", "click"],
        group_by="user_id",
        list_size=8,
    )
    assert y.shape[1] == 8 and x["hist_item_ids"].shape[1:] == (8, 10)
    assert set(np.unique(y)) <= {-1.0, 0.0, 1.0, 2.0, 3.0}
    model = models.pairwise_ranker(SPECS, list_size=8, tower_units=[8])
    model.compile(
        keras.optimizers.Adam(0.02),
        loss=ranking.pairwise_logistic_loss(),
        run_eagerly=True,
    )
    # Keras' NumPy adapter refuses 2-D string arrays: go through tf.data.
    train = data.arrays_to_dataset((x, y), batch_size=32)
    history = model.fit(train, epochs=2, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[1] < losses[0], losses
    path = tmp_path / "ranker.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    head = {k: v[:16] for k, v in x.items()}
    before = _predict(model, head)["score"]
    np.testing.assert_array_equal(_predict(loaded, head)["score"], before)
    assert before.shape == (16, 8)
    # The served scorer scores single items, the same as inside a list.
    flat = {k: v[:2].reshape((16, *v.shape[2:])) for k, v in x.items()}
    single = _predict(loaded.get_layer("scorer"), flat)["score"]
    np.testing.assert_allclose(
        single[:, 0], before[:2].reshape(-1), rtol=1e-5, atol=1e-6
    )


def test_seed_builders_are_registered():
    for name in (
        "esm2",
        "dupn",
        "youtube_ranker",
        "cross_stitch",
        "soft_sharing",
    ):
        assert name in models.BUILDERS
    with pytest.raises(ValueError, match=r"no argument\(s\) \['nope'\]"):
        models.build("dupn", SPECS, TASKS, nope=1)


@pytest.mark.parametrize(
    "builder, kwargs, message",
    [
        ("esm2", dict(tasks=TASKS), "'ctr', 'ctavr' and 'ctcvr'"),
        (
            "esm2",
            dict(
                tasks=[Task("ctr"), Task("ctavr"), Task("ctcvr", space="ctr")]
            ),
            "entire impression space",
        ),
        ("dupn", dict(user_features=["nope"]), r"unknown feature\(s\)"),
        ("dupn", dict(representation_units=[0]), "representation_units"),
        (
            "youtube_ranker",
            dict(position_features=["nope"]),
            "`position_features`",
        ),
        (
            "youtube_ranker",
            dict(bias_tasks=["conversion", "nope"]),
            "`bias_tasks`",
        ),
        ("cross_stitch", dict(tasks=TASKS[:1]), "two or more tasks"),
        ("cross_stitch", dict(tower_units=[]), "tower_units"),
        ("soft_sharing", dict(penalty=-1.0), "`penalty`"),
        ("pairwise_ranker", dict(list_size=1), "`list_size`"),
        ("dupn", dict(kernel_initializer="nope"), "`kernel_initializer`"),
        (
            "pairwise_ranker",
            dict(kernel_regularizer="nope"),
            "`kernel_regularizer`",
        ),
    ],
    ids=[
        "esm2_tasks",
        "esm2_space",
        "dupn_user_features",
        "dupn_units",
        "youtube_position",
        "youtube_bias_tasks",
        "cross_stitch_one_task",
        "cross_stitch_no_towers",
        "soft_sharing_penalty",
        "pairwise_list_size",
        "dupn_kernel_initializer",
        "pairwise_kernel_regularizer",
    ],
)
def test_invalid_builder_arguments(builder, kwargs, message):
    kwargs = dict(kwargs)
    if builder != "pairwise_ranker":
        kwargs.setdefault("tasks", TASKS)
    with pytest.raises(ValueError, match=message):
        getattr(models, builder)(SPECS, **kwargs)


EMBEDDING_CASES = {
    "shared_bottom": dict(bottom_units=[8], tower_units=[4]),
    "shared_embedding_towers": dict(tower_units=[8]),
    "mmoe": dict(num_experts=2, expert_units=[8], tower_units=[4]),
    "omoe": dict(num_experts=2, expert_units=[8], tower_units=[4]),
    "cgc": dict(expert_units=[8]),
    "ple": dict(expert_units=[8]),
    "esmm": dict(tower_units=[8]),
    "aitm": dict(tower_units=[8]),
    "esm2": dict(tasks=models.esm2_tasks(action_label="cart"), tower_units=[8]),
    "dupn": dict(
        user_features=USER_FEATURES,
        lstm_units=4,
        attention_units=4,
        tower_units=[4],
    ),
    "youtube_ranker": dict(
        tasks=YOUTUBE_TASKS, num_experts=2, expert_units=[8], tower_units=[4]
    ),
    "cross_stitch": dict(tower_units=[8]),
    "soft_sharing": dict(tower_units=[8]),
    "split_model": dict(user_features=USER_FEATURES, num_experts=2),
    "pairwise_ranker": dict(list_size=4, tower_units=[8]),
}


def test_embedding_cases_cover_every_builder():
    assert set(EMBEDDING_CASES) == {
        *models.BUILDERS,
        "split_model",
        "pairwise_ranker",
    }


def _build_case(builder, **arguments):
    """`builder` on its `EMBEDDING_CASES` arguments plus `arguments`."""
    kwargs = dict(EMBEDDING_CASES[builder])
    if builder != "pairwise_ranker":
        kwargs.setdefault("tasks", models.tasks_for(builder, TASKS))
    return getattr(models, builder)(SPECS, **arguments, **kwargs)


@pytest.mark.parametrize("builder", sorted(EMBEDDING_CASES), ids=str)
def test_builders_pass_embedding_initializer_and_regularizer(builder):
    model = _build_case(
        builder,
        embeddings_initializer=keras.initializers.Constant(0.25),
        embeddings_regularizer=keras.regularizers.L2(0.5),
    )
    tables = [w for w in model.weights if w.name == "embeddings"]
    assert tables, "no embedding table found"
    size = 0
    for table in tables:
        np.testing.assert_array_equal(_np(table), 0.25)
        size += int(np.prod(table.shape))
    penalty = sum(float(_np(loss)) for loss in model.losses)
    np.testing.assert_allclose(penalty, 0.5 * 0.25**2 * size, rtol=1e-5)


# Weights with their own initializer, outside `kernel_initializer`: the
# LSTM's recurrent kernel (orthogonal) and bias (forget gate at 1), and the
# cross-stitch units (identity).
OWN_INITIALIZER = ("recurrent_kernel", "lstm_cell/bias", "alpha")


@pytest.mark.parametrize("builder", sorted(EMBEDDING_CASES), ids=str)
def test_builders_pass_kernel_initializer_and_regularizer(builder):
    model = _build_case(
        builder,
        kernel_initializer=keras.initializers.Constant(0.5),
        kernel_regularizer=keras.regularizers.L2(1e-3),
    )
    # Every kernel (bottom, experts, gates, towers, attention, LSTM input,
    # transfer, output layers) starts at 0.5 and every bias at 0.
    size = 0
    for w in model.weights:
        name = w.path.split("/")[-1]
        if name == "embeddings" or w.path.endswith(OWN_INITIALIZER):
            continue
        if "bias" in name:
            np.testing.assert_array_equal(_np(w), 0.0, err_msg=w.path)
            continue
        assert "kernel" in name, w.path
        np.testing.assert_array_equal(_np(w), 0.5, err_msg=w.path)
        size += int(np.prod(w.shape))
    assert size > 0
    # Each of them adds its L2 penalty, and nothing else is penalized.
    penalty = sum(float(_np(loss)) for loss in model.losses)
    np.testing.assert_allclose(penalty, 1e-3 * 0.5**2 * size, rtol=1e-5)


def _input_block(model):
    """The `"input_block"` `InputBlock` of `model` or of a nested model."""
    for layer in model.layers:
        if layer.name == "input_block":
            return layer
        if isinstance(layer, keras.Model):
            block = _input_block(layer)
            if block is not None:
                return block
    return None


# Seed builders with the zoo's `interaction` arguments (dupn's and the
# split model's features meet in their own user/item structure instead).
INTERACTION_BUILDERS = [
    "cross_stitch",
    "esm2",
    "pairwise_ranker",
    "soft_sharing",
    "youtube_ranker",
]


@pytest.mark.parametrize("builder", INTERACTION_BUILDERS)
@pytest.mark.parametrize("interaction", ["dot", "cross"])
def test_seed_builders_take_interactions(builder, interaction, tmp_path):
    kwargs = dict(EMBEDDING_CASES[builder])
    tasks = None
    if builder != "pairwise_ranker":
        tasks = kwargs.setdefault("tasks", models.tasks_for(builder, TASKS))
    plain = _input_block(getattr(models, builder)(SPECS, **kwargs))
    model = getattr(models, builder)(SPECS, interaction=interaction, **kwargs)
    block = _input_block(model)
    assert block.interaction == interaction
    if interaction == "dot":
        # Every embedded feature of the block (one embed_dim) interacts.
        embedded = (features.CategoricalFeature, features.SequenceFeature)
        k = sum(isinstance(f, embedded) for f in plain.features)
        assert k >= 3
        assert block.output_dim == plain.output_dim + k * (k - 1) // 2
    else:
        assert block.output_dim == plain.output_dim
        assert len(block.feature_crosses) == 2
    if tasks is not None:
        _train_and_reload(model, tasks, tmp_path)
        return
    path = tmp_path / "ranker.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x, _ = ranking.graded_lists(
        FUNNEL, SPECS, ["conversion", "click"], "user_id", list_size=4
    )
    head = {k: v[:8] for k, v in x.items()}
    np.testing.assert_array_equal(
        _predict(loaded, head)["score"], _predict(model, head)["score"]
    )


def test_seed_builders_refuse_bad_interactions():
    with pytest.raises(ValueError, match="interaction"):
        models.esm2(SPECS, interaction="outer")
    with pytest.raises(ValueError, match="cross_layers"):
        models.cross_stitch(SPECS, TASKS, interaction="dot", cross_layers=2)
