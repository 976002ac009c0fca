"""Split (user tower + item scorer) models: one user, many items per request.

A ranking request scores many candidate items for one user. When the user
side of the model is separable, the user features go through a *user tower*
once per request and the *item scorer* takes that vector plus each item's
features. `keras_mtl.export.export_for_serving(..., split=True)` then adds the
`user_embedding` and `score_items` signatures (DUPN-style serving).

Contract of a separable model (every builder that wants split serving
follows it):

- the model holds two nested functional models as layers, named
  `"user_tower"` (inputs: the user raw features; output: a `(batch, d)`
  user vector) and `"item_scorer"` (inputs: the item raw features plus a
  `(batch, d)` float32 input named `"user_representation"`; outputs: a dict
  keyed by task name);
- the whole model is `item_scorer({**item_inputs, "user_representation":
  user_tower(user_inputs)})`.
"""

import keras

from keras_mtl import features as features_lib
from keras_mtl.layers import MLP
from keras_mtl.layers import InputBlock
from keras_mtl.layers.input_block import make_inputs
from keras_mtl.models import zoo

USER_TOWER = "user_tower"
ITEM_SCORER = "item_scorer"
USER_REPRESENTATION = "user_representation"


def _user_feature_names(features, user_features):
    names = [f.name for f in features]
    if isinstance(user_features, (str, bytes)) or not isinstance(
        user_features, (list, tuple)
    ):
        raise ValueError(
            "`user_features` must be a list of feature names (or specs). "
            f"Received: user_features={user_features!r}"
        )
    chosen = [
        f if isinstance(f, str) else getattr(f, "name", f)
        for f in user_features
    ]
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise ValueError(
            f"`user_features` names unknown feature(s) {unknown}. "
            f"Features: {names}"
        )
    if len(set(chosen)) != len(chosen) or not chosen:
        raise ValueError(
            "`user_features` must name at least one feature, each once. "
            f"Received: user_features={chosen}"
        )
    if len(chosen) == len(names):
        raise ValueError(
            "`user_features` names every feature; the item scorer needs at "
            f"least one item feature. Received: user_features={chosen}"
        )
    return set(chosen)


def split_model(
    features,
    tasks,
    user_features,
    architecture="mmoe",
    user_units=(64,),
    **builder_kwargs,
):
    """A zoo architecture split into a user tower and an item scorer.

    The user tower is an `InputBlock` over the user features and an `MLP`
    (`user_units`); its last width is the user vector size `d`. The item
    scorer embeds the item features with its own `InputBlock`, concatenates
    the user vector, and puts the chosen zoo architecture (sharing block and
    task towers) on top. The returned model takes every raw feature and
    predicts every task, like any zoo model, and follows the split contract
    of this module, so `export_for_serving(model, ..., split=True)` can
    serve the user side once per request.

    Args:
        features: list of feature specs.
        tasks: list of `keras_mtl.Task`.
        user_features: list of str. Names of the user-side features; every
            other feature is an item feature.
        architecture: str. Zoo builder of the item scorer (see
            `keras_mtl.models.BUILDERS`). Defaults to `"mmoe"`.
        user_units: list of int. Hidden layers of the user tower. Defaults
            to `(64,)`.
        **builder_kwargs: arguments of the architecture's builder. `name`
            names the whole model (defaults to `"split_<architecture>"`);
            `activation`, `kernel_initializer`, `kernel_regularizer`,
            `embeddings_initializer` and `embeddings_regularizer` also apply
            to the user tower.

    Returns:
        A functional `keras.Model` with a dict of outputs keyed by task,
        holding the nested models `"user_tower"` and `"item_scorer"`.

    Example:

    >>> model = keras_mtl.models.split_model(
    ...     specs, tasks, user_features=["user_id", "user_age"],
    ...     architecture="mmoe", num_experts=4)
    """
    # Layers.
    features = features_lib.validate_features(features)
    if architecture not in zoo.BUILDERS:
        raise ValueError(
            f"Unknown `architecture`. Received: architecture={architecture!r}"
            f"; known: {sorted(zoo.BUILDERS)}"
        )
    builder_kwargs = dict(builder_kwargs)
    name = builder_kwargs.pop("name", f"split_{architecture}")
    zoo.check_builder_args(architecture, builder_kwargs)
    user_units = zoo._check_units("user_units", user_units)
    if any(f.name == USER_REPRESENTATION for f in features):
        raise ValueError(
            f"No feature may be named '{USER_REPRESENTATION}': the item "
            "scorer's user-vector input has that name."
        )
    user_names = _user_feature_names(features, user_features)
    user_specs = [f for f in features if f.name in user_names]
    item_specs = [f for f in features if f.name not in user_names]
    embeddings = {
        "embeddings_initializer": builder_kwargs.get(
            "embeddings_initializer", "uniform"
        ),
        "embeddings_regularizer": builder_kwargs.get("embeddings_regularizer"),
    }
    user_block = InputBlock(user_specs, name="user_input_block", **embeddings)
    user_mlp = MLP(
        user_units,
        activation=builder_kwargs.get("activation", "relu"),
        name="user_mlp",
        **zoo._dense_args(
            builder_kwargs.get("kernel_initializer", "glorot_uniform"),
            builder_kwargs.get("kernel_regularizer"),
        ),
    )
    item_block = InputBlock(item_specs, name="item_input_block", **embeddings)

    # Functional graph: user tower.
    user_inputs = make_inputs(user_specs)
    user_tower = keras.Model(
        user_inputs, user_mlp(user_block(user_inputs)), name=USER_TOWER
    )
    # Item scorer: item embeddings + user vector -> zoo architecture.
    item_inputs = make_inputs(item_specs)
    user_vector = keras.Input(
        shape=(user_units[-1],), dtype="float32", name=USER_REPRESENTATION
    )
    x = keras.layers.Concatenate(name="item_and_user")(
        [item_block(item_inputs), user_vector]
    )
    with zoo.precomputed_input(
        {**item_inputs, USER_REPRESENTATION: user_vector}, x
    ):
        item_scorer = zoo.build(
            architecture, item_specs, tasks, name=ITEM_SCORER, **builder_kwargs
        )
    # Whole model.
    inputs = make_inputs(features)
    user_vec = user_tower({f.name: inputs[f.name] for f in user_specs})
    outputs = item_scorer(
        {
            **{f.name: inputs[f.name] for f in item_specs},
            USER_REPRESENTATION: user_vec,
        }
    )
    outputs = {
        task: keras.layers.Identity(dtype="float32", name=task)(value)
        for task, value in outputs.items()
    }
    # Config: plain functional; the nested models carry their own graphs.
    return keras.Model(inputs, outputs, name=name)
