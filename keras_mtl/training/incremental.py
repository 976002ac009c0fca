"""Incremental daily training: save today's model, warm-start tomorrow's.

The preprocessing lives inside the model (`keras_mtl.layers.InputBlock`):
vocabularies, hashing bins and normalisation statistics are part of the
saved `.keras` file. Warm-starting from that file therefore keeps every
existing categorical id exactly where it was, and a category first seen
later maps to the OOV row (vocabulary features) or to its hash bucket
(hashed features) without an error. See docs/incremental_training.md.
"""

import json
import os
import pathlib

import keras
import numpy as np
from keras import ops


def _sidecar(filepath):
    path = pathlib.Path(os.fspath(filepath))
    return path.with_name(path.stem + ".weighting.json")


def save_model(model, filepath, overwrite=True, serving_model=None, **kwargs):
    """Saves the serving model, plus the weighting state of a wrapper.

    For a `keras_mtl.training.MultiTaskModel`, writes its plain functional
    `model` to `filepath` (a `.keras` file that loads and predicts with
    plain Keras) and the weighting strategy (config and state: learned
    log-variances, GradNorm weights, DWA loss history) and its inverse
    propensity weighting to `<stem>.weighting.json` beside it, which
    `warm_start` reads back. Any
    other model is saved as is.

    Args:
        model: a `MultiTaskModel` or a `keras.Model`.
        filepath: str or path ending in `.keras`.
        overwrite: bool. Defaults to `True`.
        serving_model: optional model to write instead of the wrapper's
            `model`: the raw-input model when the wrapper trained its
            encoded twin (`keras_mtl.models.encoded_model`, which shares
            its layers). Defaults to `None`.
        **kwargs: passed to `keras.Model.save`.

    Returns:
        The path of the `.keras` file.
    """
    from keras_mtl.training.multitask_model import MultiTaskModel

    filepath = pathlib.Path(os.fspath(filepath))
    if isinstance(model, MultiTaskModel):
        (serving_model or model.model).save(
            filepath, overwrite=overwrite, **kwargs
        )
        strategy = model.weighting
        payload = {
            "weighting": {
                "name": strategy.strategy_name,
                **{
                    k: v
                    for k, v in strategy.get_config().items()
                    if k != "name"
                },
            },
            "state": strategy.get_state(),
            "tasks": [t.get_config() for t in model.tasks],
            "propensity": model.propensity or None,
            "min_propensity": model.min_propensity,
        }
        with open(_sidecar(filepath), "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
    else:
        (serving_model or model).save(filepath, overwrite=overwrite, **kwargs)
    return filepath


def warm_start(
    filepath,
    tasks,
    weighting=None,
    lr_multipliers=None,
    restore_weighting_state=True,
    propensity=None,
    min_propensity=None,
    **compile_kwargs,
):
    """Loads yesterday's model and compiles it to continue on new data.

    The weights, vocabularies, hashing bins and normalisation statistics
    come from `filepath` unchanged, so existing categorical ids never shift
    and new categories fall into the OOV or hash buckets. The optimizer
    starts afresh (its moments are not part of the serving model): prefer
    a smaller learning rate than for training from scratch.

    Args:
        filepath: `.keras` file written by `save_model` (or
            `MultiTaskModel.save`, `keras_mtl` runs' `model.keras`).
        tasks: list of `keras_mtl.Task`.
        weighting: strategy for today. Defaults to the one saved beside the
            model (`<stem>.weighting.json`), else `"fixed"`.
        lr_multipliers: dict or None, as in `keras_mtl.training.compile`.
        restore_weighting_state: bool. Restore the saved strategy state
            (learned log-variances, GradNorm weights, DWA history) when the
            strategy is the saved one. Defaults to `True`.
        propensity: dict or None, as in `keras_mtl.training.compile`.
            Defaults to the saved one (`{}` turns it off).
        min_propensity: float or None. Defaults to the saved one, else
            `0.05`.
        **compile_kwargs: passed to `keras_mtl.models.compile_model`
            (`learning_rate`, `optimizer`, ...).

    Returns:
        A compiled `MultiTaskModel` whose `.model` is the loaded model.

    Example:

    >>> wrapper = keras_mtl.training.warm_start(
    ...     "runs/2024-05-01/model.keras", tasks, learning_rate=3e-4)
    >>> wrapper.fit(today_ds, epochs=1)
    >>> wrapper.save("runs/2024-05-02/model.keras")
    """
    import keras_mtl.layers  # noqa: F401  (registers the layers)
    from keras_mtl.training.multitask_model import DEFAULT_MIN_PROPENSITY
    from keras_mtl.training.multitask_model import compile as compile_mtl

    filepath = pathlib.Path(os.fspath(filepath))
    if not filepath.is_file():
        raise FileNotFoundError(f"No saved model at {filepath}")
    model = keras.saving.load_model(filepath, compile=False, safe_mode=True)
    saved = None
    sidecar = _sidecar(filepath)
    if sidecar.is_file():
        with open(sidecar, encoding="utf-8") as f:
            saved = json.load(f)
    restore = False
    if weighting is None:
        weighting = saved["weighting"] if saved else "fixed"
        restore = saved is not None
    elif saved is not None and isinstance(weighting, (str, dict)):
        name = (
            weighting if isinstance(weighting, str) else weighting.get("name")
        )
        restore = name == saved["weighting"]["name"]
    if propensity is None:
        propensity = (saved or {}).get("propensity")
    if min_propensity is None:
        min_propensity = (saved or {}).get(
            "min_propensity", DEFAULT_MIN_PROPENSITY
        )
    wrapper = compile_mtl(
        model,
        tasks,
        weighting=weighting,
        lr_multipliers=lr_multipliers,
        propensity=propensity or None,
        min_propensity=min_propensity,
        **compile_kwargs,
    )
    if restore and restore_weighting_state:
        wrapper.weighting.set_state(saved["state"])
    return wrapper


def _input_block(model):
    model = getattr(model, "model", model)
    try:
        return model.get_layer("input_block")
    except ValueError:
        raise ValueError(
            "The model has no layer named 'input_block' (the keras_mtl "
            "InputBlock)."
        ) from None


def category_ids(model, feature, values):
    """Embedding-row indices a model gives to raw categorical values.

    Index 0 is the missing value, 1 the OOV bucket and vocabulary entries
    start at 2 (see `keras_mtl.features`); hashed features return their
    bucket. Use it to check that yesterday's and today's models encode a
    category identically.

    Args:
        model: a keras_mtl model (or `MultiTaskModel`).
        feature: str. Name of a categorical or sequence feature.
        values: list or array of raw values.

    Returns:
        A numpy int64 array with one index per value.

    Example:

    >>> keras_mtl.training.category_ids(model, "device", ["ios", "tv"])
    array([2, 1])  # "tv" was never seen: OOV
    """
    block = _input_block(model)
    specs = {f.name: f for f in block.categorical}
    if feature not in specs:
        raise ValueError(
            f"'{feature}' is not a categorical feature of the model. "
            f"Categorical features: {sorted(specs)}"
        )
    spec = specs[feature]
    if spec.dtype == "string":
        values = np.asarray(values, dtype=object).astype(str)
    else:
        values = np.asarray(values).astype("int64")
    lookup = block.lookups[block._group_of[feature]]
    return np.asarray(ops.convert_to_numpy(lookup(values))).astype("int64")


def model_features(model):
    """The feature specs baked into a keras_mtl model's `InputBlock`."""
    return list(_input_block(model).features)
