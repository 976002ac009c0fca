"""Builders of the systems in the seed papers: ESM2, DUPN, YouTube, ...

Like the core zoo (`keras_mtl.models.zoo`), every builder takes feature
specs and tasks and returns a functional `keras.Model` with one named raw
input per feature and a dict of outputs keyed by task name:

- `esm2`: post-click behaviour decomposition (Wen et al., SIGIR 2020);
- `dupn`: a shared user representation from a behaviour sequence, split
  into a `"user_tower"` and an `"item_scorer"` sub-model (Ni et al., KDD
  2018);
- `youtube_ranker`: MMoE plus a shallow position-bias tower that is left
  out at serving time (Zhao et al., RecSys 2019), with
  `youtube_serving_model`;
- `cross_stitch`: per-task towers mixed by cross-stitch units (Misra et
  al., CVPR 2016);
- `soft_sharing`: per-task towers tied by an L2 penalty on their weight
  differences (Duong et al., ACL 2015);
- `pairwise_ranker`: one score per item trained with a pairwise loss on
  lists of graded items (see `keras_mtl.ranking`).
"""

import keras

from keras_mtl import features as features_lib
from keras_mtl.layers import MLP
from keras_mtl.layers import CrossStitch
from keras_mtl.layers import DUPNEncoder
from keras_mtl.layers import ESM2Head
from keras_mtl.layers import InputBlock
from keras_mtl.layers import MMoELayer
from keras_mtl.layers import ShallowTower
from keras_mtl.layers import SoftSharingTowers
from keras_mtl.layers.esm2_head import ESM2_PROBABILITIES
from keras_mtl.layers.input_block import make_inputs
from keras_mtl.models.zoo import _check_common
from keras_mtl.models.zoo import _check_units
from keras_mtl.models.zoo import _dense_args
from keras_mtl.models.zoo import _input_block_args
from keras_mtl.models.zoo import _inputs_and_embedding
from keras_mtl.models.zoo import _output_dense
from keras_mtl.models.zoo import task_head
from keras_mtl.models.zoo import tower
from keras_mtl.task import Task

_ACTIVATIONS = {"binary": "sigmoid", "regression": "linear"}


def _named_specs(features, names, arg):
    """The specs named by `names`, in spec order, refusing unknown names."""
    if isinstance(names, str):
        names = [names]
    names = list(names)
    known = {f.name for f in features}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"`{arg}` names unknown feature(s) {unknown}. "
            f"Features: {sorted(known)}"
        )
    return [f for f in features if f.name in names]


def _towers_to_heads(hidden, tasks, tower_units, activation, dropout, dense):
    """`{task: head(tower(h))}` for one hidden tensor per task."""
    outputs = {}
    for task, h in zip(tasks, hidden):
        layer = tower(task, tower_units, activation, dropout, dense=dense)
        head = task_head(task, dense=dense)
        outputs[task.name] = head(layer(h) if layer else h)
    return outputs


# ---------------------------------------------------------------------------
# ESM2.
# ---------------------------------------------------------------------------


def esm2_tasks(
    click_label="click", action_label="cart", purchase_label="conversion"
):
    """The tasks of `esm2`.

    Trained over every impression (no `space`), as ESM2 prescribes:

    - `ctr` on the click label;
    - `ctavr` on the "click and DAction" label `action_label`: 1 where the
      user clicked and then took the deterministic action (add to cart,
      wish list), 0 everywhere else, unclicked impressions included;
    - `ctcvr` on the purchase label (0 without a click).

    Monitored with loss weight 0 on clicked rows (`space="ctr"`): `avr`
    (`p(DAction | click)`) and `cvr` (`p(purchase | click)`), so their
    metrics are the usual post-click ones while their towers learn only
    through the entire-space products.

    Args:
        click_label: str. Click column. Defaults to `"click"`.
        action_label: str. Click-and-DAction column. Defaults to `"cart"`;
            `synthetic_funnel` has none, derive one (see `esm2`).
        purchase_label: str. Purchase column. Defaults to `"conversion"`.

    Returns:
        A list of `keras_mtl.Task`.
    """
    return [
        Task("ctr", label=click_label),
        Task("ctavr", label=action_label),
        Task("ctcvr", label=purchase_label),
        Task("avr", label=action_label, space="ctr", weight=0.0),
        Task("cvr", label=purchase_label, space="ctr", weight=0.0),
    ]


def esm2(
    features,
    tasks=None,
    tower_units=(128, 64),
    activation="relu",
    dropout=0.0,
    kernel_initializer="glorot_uniform",
    kernel_regularizer=None,
    embeddings_initializer="uniform",
    embeddings_regularizer=None,
    interaction=None,
    interaction_features=None,
    cross_layers=None,
    cross_projection_dim=None,
    name="esm2",
):
    """Elaborated Entire Space Supervised Multi-task Model (ESM2).

    Extends ESMM's impression -> click -> purchase path with the post-click
    actions: impression -> click -> {DAction (cart / wish) | OAction} ->
    purchase. Four towers over shared embeddings predict `ctr`, `avr =
    p(DAction | click)`, `cvr_daction = p(purchase | DAction)` and
    `cvr_oaction = p(purchase | OAction)`; `ESM2Head` composes

        ctavr = ctr * avr
        cvr   = avr * cvr_daction + (1 - avr) * cvr_oaction
        ctcvr = ctr * cvr

    and the model is trained with log-losses on `ctr`, `ctavr` and `ctcvr`
    over every impression (`esm2_tasks`), so all four conditionals are
    learned on the entire space. The model has one output per task, each
    task named after one of the seven probabilities
    (`keras_mtl.layers.esm2_head.ESM2_PROBABILITIES`; Keras needs a label
    for every output, so extra outputs are extra tasks, e.g. with weight
    0); the `"esm2_head"` layer computes all seven. `cvr` is the one to
    rank purchases by among clicked items, `ctcvr` among impressions.

    Labels: the click-and-DAction column (`action_label` of `esm2_tasks`)
    must be 0 without a click. `synthetic_funnel` has no cart label; the
    tests derive one (a random subset of clicks, enriched in purchases).

    Args:
        features: list of feature specs.
        tasks: tasks named after ESM2 outputs; must include binary `ctr`,
            `ctavr` and `ctcvr` without `space`. Defaults to
            `esm2_tasks()`.
        tower_units: list of int. Hidden layers of each of the four
            towers (may be empty). Defaults to `(128, 64)`.
        activation, dropout, kernel_initializer, kernel_regularizer,
            embeddings_initializer, embeddings_regularizer, interaction,
            interaction_features, cross_layers, cross_projection_dim: as in
            `shared_bottom`.
        name: str. Model name.

    Returns:
        A functional `keras.Model` with a dict of outputs keyed by task
        (by default `ctr`, `ctavr`, `ctcvr`, `avr`, `cvr`).

    Example:

    >>> df["cart"] = ...  # click-and-add-to-cart label, 0 without click
    >>> tasks = keras_mtl.models.esm2_tasks(action_label="cart")
    >>> model = keras_mtl.models.esm2(specs, tasks)
    >>> keras_mtl.models.compile_model(model, tasks)

    References:
        Wen et al., "Entire Space Multi-Task Modeling via Post-Click
        Behavior Decomposition for Conversion Rate Prediction", SIGIR 2020.
        https://arxiv.org/abs/1910.07099
    """
    # Layers.
    tasks = esm2_tasks() if tasks is None else tasks
    features, tasks, tower_units = _check_common(
        features, tasks, tower_units, dropout
    )
    dense = _dense_args(kernel_initializer, kernel_regularizer)
    names = {t.name for t in tasks}
    unknown = sorted(names - set(ESM2_PROBABILITIES))
    if unknown or not {"ctr", "ctavr", "ctcvr"} <= names:
        raise ValueError(
            "`esm2` tasks must include 'ctr', 'ctavr' and 'ctcvr' and be "
            f"named after its outputs {list(ESM2_PROBABILITIES)} (see "
            f"`esm2_tasks`). Received: {sorted(names)}"
        )
    if any(t.kind != "binary" for t in tasks):
        raise ValueError(
            "`esm2` tasks are all binary. Received: "
            f"{[(t.name, t.kind) for t in tasks]}"
        )
    spaced = [
        t.name for t in tasks if t.space and t.name in ("ctr", "ctavr", "ctcvr")
    ]
    if spaced:
        raise ValueError(
            f"ESM2 trains {spaced} on the entire impression space; remove "
            "their `space` (the action and purchase labels are 0 without a "
            "click)."
        )
    branches = ("ctr", "avr", "cvr_daction", "cvr_oaction")
    towers = {
        b: MLP(
            tower_units,
            activation=activation,
            dropout=dropout,
            name=f"tower_{b}",
            **dense,
        )
        if tower_units
        else None
        for b in branches
    }
    logits = {b: _output_dense(1, None, f"{b}_logit", dense) for b in branches}
    head = ESM2Head(dtype="float32", name="esm2_head")
    # Functional graph.
    inputs, x = _inputs_and_embedding(features, locals())
    branch_logits = [
        logits[b](towers[b](x) if towers[b] else x) for b in branches
    ]
    probabilities = head(branch_logits)
    outputs = {
        t.name: keras.layers.Identity(dtype="float32", name=t.name)(
            probabilities[t.name]
        )
        for t in tasks
    }
    return keras.Model(inputs, outputs, name=name)


# ---------------------------------------------------------------------------
# DUPN.
# ---------------------------------------------------------------------------


def _sequence_name(features, sequence_feature):
    if sequence_feature is not None:
        return sequence_feature
    sequences = [
        f.name for f in features if isinstance(f, features_lib.SequenceFeature)
    ]
    if len(sequences) != 1:
        raise ValueError(
            "`dupn` needs `sequence_feature` when the features do not hold "
            f"exactly one sequence feature. Sequence features: {sequences}"
        )
    return sequences[0]


def dupn(
    features,
    tasks,
    user_features=None,
    sequence_feature=None,
    lstm_units=32,
    attention_units=32,
    representation_units=(64,),
    tower_units=(32,),
    activation="relu",
    dropout=0.0,
    kernel_initializer="glorot_uniform",
    kernel_regularizer=None,
    embeddings_initializer="uniform",
    embeddings_regularizer=None,
    name="dupn",
):
    """Deep User Perception Network: a user representation shared by tasks.

    The user side (`DUPNEncoder`): the behaviour sequence is embedded, read
    by an LSTM and pooled by attention over its non-padding positions; the
    attention query is the user/request context (the other user features:
    profile, device, query ...). An MLP turns `[context, pooled]` into the
    user representation, shared by every task tower. The item side embeds
    the item features, and each task tower reads `[user representation,
    item]`.

    Serving contract (relied on by the export): the model is built from
    two nested functional models,

    - `"user_tower"`: inputs the raw user features (including the
      behaviour sequence), output the `(batch, d)` user representation,
      `d = representation_units[-1]`;
    - `"item_scorer"`: inputs the raw item features plus
      `"user_representation"` of shape `(d,)`, outputs a dict by task;

    and the full model is
    `item_scorer({**item_inputs, "user_representation": user_tower(
    user_inputs)})` (each output passed through an `Identity` named after
    its task). So the user vector can be computed once per request and
    scored against many items.

    The attention is conditioned on the user context, not on the candidate
    item: item-conditioned attention (DIN-style) would make the user vector
    depend on each candidate and break the user/item split above. DUPN's
    own attention context (search query and user profile) is request-side
    too. The behaviour sequence has its own embedding table (it cannot
    share the item id table across the two sub-models).

    Args:
        features: list of feature specs.
        tasks: list of `keras_mtl.Task`.
        user_features: list of str. Names of the user-side features (the
            sequence feature is added if missing). Defaults to the sequence
            feature plus every feature whose name starts with `"user"`.
            Every other feature is item-side.
        sequence_feature: str. The behaviour `SequenceFeature`. Defaults to
            the only sequence feature of `features`.
        lstm_units: int. LSTM width. Defaults to `32`.
        attention_units: int. Attention hidden width. Defaults to `32`.
        representation_units: list of int. MLP from the encoder output to
            the user representation; empty to use the encoder output as is.
            Defaults to `(64,)`.
        tower_units: list of int. Hidden layers of each task tower (may be
            empty). Defaults to `(32,)`.
        activation, dropout, kernel_initializer, kernel_regularizer,
            embeddings_initializer, embeddings_regularizer: as in
            `shared_bottom`.
        name: str. Model name.

    Returns:
        A functional `keras.Model` with a dict of outputs keyed by task and
        nested models `"user_tower"` and `"item_scorer"`.

    Example:

    >>> model = keras_mtl.models.dupn(
    ...     specs, tasks, user_features=["user_id", "device", "user_age"],
    ...     sequence_feature="hist_item_ids")
    >>> user_tower = model.get_layer("user_tower")

    References:
        Ni et al., "Perceive Your Users in Depth: Learning Universal User
        Representations from Multiple E-commerce Tasks", KDD 2018.
        https://arxiv.org/abs/1805.10727
    """
    # Layers.
    features, tasks, tower_units = _check_common(
        features, tasks, tower_units, dropout
    )
    dense = _dense_args(kernel_initializer, kernel_regularizer)
    representation_units = _check_units(
        "representation_units", representation_units, allow_empty=True
    )
    sequence_feature = _sequence_name(features, sequence_feature)
    if user_features is None:
        user_features = [f.name for f in features if f.name.startswith("user")]
    user_names = {sequence_feature, *user_features}
    user_specs = _named_specs(features, user_names, "user_features")
    item_specs = [f for f in features if f.name not in user_names]
    encoder = DUPNEncoder(
        user_specs,
        sequence_feature,
        lstm_units=lstm_units,
        attention_units=attention_units,
        embeddings_initializer=embeddings_initializer,
        **dense,
        embeddings_regularizer=embeddings_regularizer,
        name="dupn_encoder",
    )
    representation = (
        MLP(
            representation_units,
            activation=activation,
            dropout=dropout,
            name="representation",
            **dense,
        )
        if representation_units
        else None
    )
    dim = (
        representation_units[-1] if representation_units else encoder.output_dim
    )
    # Functional graph: the user tower.
    user_inputs = make_inputs(user_specs)
    user_vector = encoder(user_inputs)
    if representation is not None:
        user_vector = representation(user_vector)
    user_tower = keras.Model(user_inputs, user_vector, name="user_tower")
    # Functional graph: the item scorer.
    item_inputs = make_inputs(item_specs) if item_specs else {}
    user_input = keras.Input((dim,), name="user_representation")
    h = user_input
    if item_specs:
        item_vector = InputBlock(
            item_specs,
            embeddings_initializer=embeddings_initializer,
            embeddings_regularizer=embeddings_regularizer,
            name="item_block",
        )(item_inputs)
        h = keras.layers.Concatenate(name="user_item")(
            [user_input, item_vector]
        )
    scores = _towers_to_heads(
        [h] * len(tasks), tasks, tower_units, activation, dropout, dense
    )
    item_scorer = keras.Model(
        {**item_inputs, "user_representation": user_input},
        scores,
        name="item_scorer",
    )
    # Functional graph: the full model.
    inputs = make_inputs(features)
    scores = item_scorer(
        {
            **{f.name: inputs[f.name] for f in item_specs},
            "user_representation": user_tower(
                {f.name: inputs[f.name] for f in user_specs}
            ),
        }
    )
    outputs = {
        t.name: keras.layers.Identity(dtype="float32", name=t.name)(
            scores[t.name]
        )
        for t in tasks
    }
    return keras.Model(inputs, outputs, name=name)


# ---------------------------------------------------------------------------
# YouTube multi-task ranking.
# ---------------------------------------------------------------------------


def youtube_ranker(
    features,
    tasks,
    position_features=("position",),
    bias_features=("device",),
    bias_tasks=None,
    num_experts=4,
    expert_units=(64,),
    tower_units=(32,),
    bias_units=(),
    bias_dropout=0.1,
    activation="relu",
    dropout=0.0,
    kernel_initializer="glorot_uniform",
    kernel_regularizer=None,
    embeddings_initializer="uniform",
    embeddings_regularizer=None,
    interaction=None,
    interaction_features=None,
    cross_layers=None,
    cross_projection_dim=None,
    name="youtube_ranker",
):
    """YouTube's multitask ranker: MMoE plus a shallow position-bias tower.

    The main model is an MMoE over every feature except the position
    features, with a tower and a head per task: typically engagement tasks
    (click: binary, watch time: regression) and satisfaction tasks (like:
    binary, rating: regression). A `ShallowTower` over the position
    features and `bias_features` (e.g. device) gives one bias logit per
    task in `bias_tasks`, added to that task's main logit while training;
    with `bias_dropout`, an example's bias is dropped (set to 0) at that
    rate, the paper's 10% position dropout.

    Serving: the position input is *absent* and the shallow tower is left
    out, i.e. the bias logit is 0 and the prediction is the main model's
    alone (`youtube_serving_model`). This is preferred to feeding a
    "neutral" position: any position value, missing included, has a
    learned, non-zero bias, and the device part of the bias is also
    selection bias that the ranking should not use. Bias dropout trains the
    main model on examples where the bias is absent, as at serving.

    The main model is the nested functional model `"main_model"`: inputs
    the non-position features, outputs a dict of logits (binary, multiclass)
    or values (regression) by task.

    Args:
        features: list of feature specs.
        tasks: list of `keras_mtl.Task` (binary, regression or
            multiclass).
        position_features: list of str. Features seen only by the shallow
            tower and absent at serving. Defaults to `("position",)`.
        bias_features: list of str. Other features the shallow tower reads
            (they stay in the main model too). Defaults to `("device",)`.
        bias_tasks: list of str. Tasks whose logit gets a bias (binary or
            regression). Defaults to every binary task.
        num_experts: int. MMoE experts. Defaults to `4`.
        expert_units: list of int. Hidden layers of each expert. Defaults
            to `(64,)`.
        tower_units: list of int. Hidden layers of each task tower (may be
            empty). Defaults to `(32,)`.
        bias_units: list of int. Hidden layers of the shallow tower (empty:
            linear). Defaults to `()`.
        bias_dropout: float in `[0, 1)`. Rate of dropping an example's bias
            while training. Defaults to `0.1`.
        activation, dropout, kernel_initializer, kernel_regularizer,
            embeddings_initializer, embeddings_regularizer, interaction,
            interaction_features, cross_layers, cross_projection_dim: as in
            `shared_bottom`.
            Only the main model's features interact (its `InputBlock`),
            not the bias tower's.
        name: str. Model name.

    Returns:
        A functional `keras.Model` (the training model) with a dict of
        outputs keyed by task, a nested `"main_model"` and a
        `"shallow_tower"` layer.

    Example:

    >>> model = keras_mtl.models.youtube_ranker(specs, tasks)
    >>> keras_mtl.models.compile_model(model, tasks)
    >>> model.fit(...)
    >>> serving = keras_mtl.models.youtube_serving_model(model)

    References:
        Zhao et al., "Recommending What Video to Watch Next: A Multitask
        Ranking System", RecSys 2019.
        https://dl.acm.org/doi/10.1145/3298689.3346997
    """
    # Layers.
    features, tasks, tower_units = _check_common(
        features, tasks, tower_units, dropout
    )
    dense = _dense_args(kernel_initializer, kernel_regularizer)
    expert_units = _check_units("expert_units", expert_units)
    bias_units = _check_units("bias_units", bias_units, allow_empty=True)
    position_specs = _named_specs(
        features, position_features, "position_features"
    )
    if not position_specs:
        raise ValueError(
            "`youtube_ranker` needs at least one position feature. "
            f"Received: position_features={position_features!r}"
        )
    bias_specs = _named_specs(features, bias_features, "bias_features")
    position_names = {f.name for f in position_specs}
    main_specs = [f for f in features if f.name not in position_names]
    if not main_specs:
        raise ValueError(
            "Every feature is a position feature; the main model needs at "
            f"least one. Received: position_features={position_features!r}"
        )
    tower_specs = [
        f for f in features if f in position_specs or f in bias_specs
    ]
    if bias_tasks is None:
        bias_tasks = [t.name for t in tasks if t.kind == "binary"]
    by_name = {t.name: t for t in tasks}
    bad = [
        n
        for n in bias_tasks
        if n not in by_name or by_name[n].kind == "multiclass"
    ]
    if bad or not bias_tasks:
        raise ValueError(
            "`bias_tasks` must name one or more binary or regression tasks. "
            f"Received: bias_tasks={bias_tasks!r}; tasks: "
            f"{[(t.name, t.kind) for t in tasks]}"
        )
    experts = MMoELayer(
        num_experts=num_experts,
        expert_units=list(expert_units),
        num_tasks=len(tasks),
        expert_activation=activation,
        expert_dropout=dropout,
        name="mmoe",
        **dense,
    )
    shallow = ShallowTower(
        num_outputs=len(bias_tasks),
        units=bias_units,
        activation=activation,
        drop_rate=bias_dropout,
        name="shallow_tower",
        **dense,
    )
    # Functional graph: the main model (all that is served).
    main_inputs = make_inputs(main_specs)
    x = InputBlock(
        main_specs, name="input_block", **_input_block_args(locals())
    )(main_inputs)
    main_logits = {}
    for task, h in zip(tasks, experts(x)):
        layer = tower(task, tower_units, activation, dropout, dense=dense)
        logit = _output_dense(
            task.output_dim, None, f"logit_{task.name}", dense
        )
        main_logits[task.name] = logit(layer(h) if layer else h)
    main_model = keras.Model(main_inputs, main_logits, name="main_model")
    # Functional graph: the training model.
    inputs = make_inputs(features)
    logits = main_model({f.name: inputs[f.name] for f in main_specs})
    bias_input = InputBlock(
        tower_specs,
        embeddings_initializer=embeddings_initializer,
        embeddings_regularizer=embeddings_regularizer,
        name="bias_input_block",
    )({f.name: inputs[f.name] for f in tower_specs})
    bias = shallow(bias_input)
    outputs = {}
    for task in tasks:
        z = logits[task.name]
        if task.name in bias_tasks:
            i = list(bias_tasks).index(task.name)
            z = keras.layers.Add(dtype="float32", name=f"biased_{task.name}")(
                [z, bias[:, i : i + 1]]
            )
        outputs[task.name] = keras.layers.Activation(
            _ACTIVATIONS.get(task.kind, "softmax"),
            dtype="float32",
            name=task.name,
        )(z)
    return keras.Model(inputs, outputs, name=name)


def youtube_serving_model(model, name="youtube_serving"):
    """The serving model of a `youtube_ranker`: main model, no bias tower.

    Takes only the main model's raw features (no position) and returns
    each task's activation of its main logit, i.e. the training model's
    prediction with a zero bias logit. It shares its weights with `model`.

    Args:
        model: a model built by `youtube_ranker` (or loaded from one).
        name: str. Model name. Defaults to `"youtube_serving"`.

    Returns:
        A functional `keras.Model` with a dict of outputs keyed by task.
    """
    try:
        main = model.get_layer("main_model")
    except ValueError:
        raise ValueError(
            "`model` has no 'main_model' layer; pass a model built by "
            f"`youtube_ranker`. Received: model={model.name!r}"
        ) from None
    inputs = {
        t.name: keras.Input(t.shape[1:], dtype=t.dtype, name=t.name)
        for t in main.inputs
    }
    logits = main(inputs)
    outputs = {
        task: keras.layers.Activation(
            model.get_layer(task).activation, dtype="float32", name=task
        )(z)
        for task, z in logits.items()
    }
    return keras.Model(inputs, outputs, name=name)


# ---------------------------------------------------------------------------
# Cross-stitch and soft parameter sharing.
# ---------------------------------------------------------------------------


def _check_multi_task(builder, tasks):
    if len(tasks) < 2:
        raise ValueError(
            f"`{builder}` shares between two or more tasks. Received: "
            f"{[t.name for t in tasks]}"
        )


def cross_stitch(
    features,
    tasks,
    tower_units=(64, 32),
    activation="relu",
    dropout=0.0,
    kernel_initializer="glorot_uniform",
    kernel_regularizer=None,
    embeddings_initializer="uniform",
    embeddings_regularizer=None,
    interaction=None,
    interaction_features=None,
    cross_layers=None,
    cross_projection_dim=None,
    name="cross_stitch",
):
    """Cross-stitch network: per-task towers mixed after every level.

    Each task has its own tower over the shared embeddings. After every
    tower level a `CrossStitch` unit (named `"cross_stitch_<level>"`)
    replaces each task's activation by a learned linear combination of
    all tasks' activations at that level. The units start at the identity,
    so the network starts as independent towers (the
    `shared_embedding_towers` model) and learns how much to share.

    Args:
        features: list of feature specs.
        tasks: list of at least two `keras_mtl.Task`.
        tower_units: list of int. Width of each level of every tower.
            Defaults to `(64, 32)`.
        activation, dropout, kernel_initializer, kernel_regularizer,
            embeddings_initializer, embeddings_regularizer, interaction,
            interaction_features, cross_layers, cross_projection_dim: as in
            `shared_bottom`.
        name: str. Model name.

    Returns:
        A functional `keras.Model` with a dict of outputs keyed by task.
        Level `l` of task `t` is the `MLP` named `"tower_<t>_<l>"`.

    Example:

    >>> model = keras_mtl.models.cross_stitch(specs, tasks, [32, 16])

    References:
        Misra et al., "Cross-stitch Networks for Multi-task Learning",
        CVPR 2016. https://arxiv.org/abs/1604.03539
    """
    # Layers.
    features, tasks, tower_units = _check_common(
        features, tasks, tower_units, dropout
    )
    dense = _dense_args(kernel_initializer, kernel_regularizer)
    _check_multi_task("cross_stitch", tasks)
    tower_units = _check_units("tower_units", tower_units)
    levels = [
        [
            MLP(
                [units],
                activation=activation,
                dropout=dropout,
                name=f"tower_{t.name}_{level}",
                **dense,
            )
            for t in tasks
        ]
        for level, units in enumerate(tower_units)
    ]
    stitches = [
        CrossStitch(name=f"cross_stitch_{level}")
        for level in range(len(tower_units))
    ]
    heads = [task_head(t, dense=dense) for t in tasks]
    # Functional graph.
    inputs, x = _inputs_and_embedding(features, locals())
    hidden = [x] * len(tasks)
    for layers, stitch in zip(levels, stitches):
        hidden = stitch([layer(h) for layer, h in zip(layers, hidden)])
    outputs = {t.name: head(h) for t, head, h in zip(tasks, heads, hidden)}
    return keras.Model(inputs, outputs, name=name)


def soft_sharing(
    features,
    tasks,
    tower_units=(64, 32),
    penalty=1e-3,
    activation="relu",
    dropout=0.0,
    kernel_initializer="glorot_uniform",
    kernel_regularizer=None,
    embeddings_initializer="uniform",
    embeddings_regularizer=None,
    interaction=None,
    interaction_features=None,
    cross_layers=None,
    cross_projection_dim=None,
    name="soft_sharing",
):
    """Soft parameter sharing: per-task towers with an L2 tie.

    Every task has its own tower of the same shape over the shared
    embeddings (`SoftSharingTowers`, named `"soft_sharing_towers"`); while
    training, `penalty * sum_{i<j} ||W_i - W_j||^2` over corresponding
    kernels and biases is added to the loss, pulling the towers together.
    `penalty=0` gives independent towers.

    Args:
        features: list of feature specs.
        tasks: list of at least two `keras_mtl.Task`.
        tower_units: list of int. Width of each tower level. Defaults to
            `(64, 32)`.
        penalty: float `>= 0`. Weight of the L2 difference penalty.
            Defaults to `1e-3`.
        activation, dropout, kernel_initializer, kernel_regularizer,
            embeddings_initializer, embeddings_regularizer, interaction,
            interaction_features, cross_layers, cross_projection_dim: as in
            `shared_bottom`.
        name: str. Model name.

    Returns:
        A functional `keras.Model` with a dict of outputs keyed by task.

    Example:

    >>> model = keras_mtl.models.soft_sharing(specs, tasks, penalty=1e-2)

    References:
        Duong et al., "Low Resource Dependency Parsing: Cross-lingual
        Parameter Sharing in a Neural Network Parser", ACL 2015.
        https://aclanthology.org/P15-2139/
    """
    # Layers.
    features, tasks, tower_units = _check_common(
        features, tasks, tower_units, dropout
    )
    dense = _dense_args(kernel_initializer, kernel_regularizer)
    _check_multi_task("soft_sharing", tasks)
    tower_units = _check_units("tower_units", tower_units)
    towers = SoftSharingTowers(
        tower_units,
        num_tasks=len(tasks),
        penalty=penalty,
        activation=activation,
        dropout=dropout,
        name="soft_sharing_towers",
        **dense,
    )
    heads = [task_head(t, dense=dense) for t in tasks]
    # Functional graph.
    inputs, x = _inputs_and_embedding(features, locals())
    hidden = towers(x)
    outputs = {t.name: head(h) for t, head, h in zip(tasks, heads, hidden)}
    return keras.Model(inputs, outputs, name=name)


# ---------------------------------------------------------------------------
# Pairwise learning to rank.
# ---------------------------------------------------------------------------


def pairwise_ranker(
    features,
    list_size=10,
    tower_units=(64, 32),
    activation="relu",
    dropout=0.0,
    kernel_initializer="glorot_uniform",
    kernel_regularizer=None,
    embeddings_initializer="uniform",
    embeddings_regularizer=None,
    interaction=None,
    interaction_features=None,
    cross_layers=None,
    cross_projection_dim=None,
    name="pairwise_ranker",
):
    """One ranking score per item, trained on lists with a pairwise loss.

    A pointwise scorer (the nested model `"scorer"`: raw features of one
    item -> `{"score": (batch, 1)}`, a linear score) is applied to every
    item of a list. The training model takes each feature as
    `(batch, list_size)` (sequences `(batch, list_size, max_len)`), as
    `keras_mtl.ranking.graded_lists` makes them, and returns
    `{"score": (batch, list_size)}` for a listwise/pairwise loss such as
    `keras_mtl.ranking.pairwise_logistic_loss()` (keras-rs'
    `PairwiseLogisticLoss`), with grades from the funnel labels as targets.
    Serve `model.get_layer("scorer")`: it scores single items. Feed the
    lists through `tf.data` (`keras_mtl.data.arrays_to_dataset`): Keras'
    NumPy adapter refuses 2-D string arrays.

    Args:
        features: list of feature specs.
        list_size: int. Items per list. Defaults to `10`.
        tower_units: list of int. Hidden layers of the scorer. Defaults to
            `(64, 32)`.
        activation, dropout, kernel_initializer, kernel_regularizer,
            embeddings_initializer, embeddings_regularizer, interaction,
            interaction_features, cross_layers, cross_projection_dim: as in
            `shared_bottom`.
            The features of one item interact, in the scorer.
        name: str. Model name.

    Returns:
        The list-shaped training `keras.Model` with output `"score"`.

    Example:

    >>> x, y = keras_mtl.ranking.graded_lists(
    ...     df, specs, ["conversion", "click"], "user_id", list_size=8)
    >>> model = keras_mtl.models.pairwise_ranker(specs, list_size=8)
    >>> model.compile(
    ...     "adam", loss=keras_mtl.ranking.pairwise_logistic_loss())
    >>> model.fit(keras_mtl.data.arrays_to_dataset((x, y), 64), epochs=5)
    >>> scorer = model.get_layer("scorer")

    References:
        Burges et al., "Learning to Rank using Gradient Descent", ICML
        2005. https://doi.org/10.1145/1102351.1102363
    """
    # Layers.
    features = features_lib.validate_features(features)
    tower_units = _check_units("tower_units", tower_units)
    if (
        isinstance(list_size, bool)
        or not isinstance(list_size, int)
        or list_size < 2
    ):
        raise ValueError(
            "`list_size` must be an integer >= 2. "
            f"Received: list_size={list_size!r}"
        )
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(
            f"`dropout` must be in [0, 1). Received: dropout={dropout!r}"
        )
    dense = _dense_args(kernel_initializer, kernel_regularizer)
    hidden = MLP(
        tower_units,
        activation=activation,
        dropout=dropout,
        name="hidden",
        **dense,
    )
    score = _output_dense(1, None, "score", dense)
    # Functional graph: the pointwise scorer.
    item_inputs, x = _inputs_and_embedding(features, locals())
    scorer = keras.Model(
        item_inputs, {"score": score(hidden(x))}, name="scorer"
    )
    # Functional graph: lists of items, flattened through the scorer.
    inputs, flat = {}, {}
    for spec in features:
        tail = (
            (spec.max_len,)
            if isinstance(spec, features_lib.SequenceFeature)
            else ()
        )
        inputs[spec.name] = keras.Input(
            (list_size, *tail), dtype=spec.dtype, name=spec.name
        )
        flat[spec.name] = keras.ops.reshape(inputs[spec.name], (-1, *tail))
    scores = keras.ops.reshape(scorer(flat)["score"], (-1, list_size))
    outputs = {
        "score": keras.layers.Identity(dtype="float32", name="score")(scores)
    }
    return keras.Model(inputs, outputs, name=name)
