"""The fast training path: lookups once in the data, XLA for the step.

A keras-mtl model takes raw features so that TF Serving can send it raw
requests; its `InputBlock` maps every categorical value to an embedding row
with `StringLookup` / `IntegerLookup` / `Hashing`. Those hash tables cannot
be compiled by XLA, so a model that contains them trains without
`jit_compile`, and pays the lookups again on every step of every epoch.

`encoded_model(model)` returns a twin of the model that takes the row ids
instead of the raw values and shares every layer (every weight) with it.
`encode_features` computes the row ids of in-memory data once, with the
model's own lookup layers; `keras_mtl.data.from_dataframe(...,
encode_with=model)` does it for you. Training the twin trains the raw
model: save, evaluate and export the raw model as usual.

>>> train_model = keras_mtl.models.encoded_model(model)
>>> keras_mtl.models.compile_model(train_model, tasks, jit_compile=True)
>>> train_model.fit(
...     keras_mtl.data.from_dataframe(df, features, tasks, encode_with=model)
... )
>>> model.predict(raw_features)  # trained: the layers are shared

This is Keras' own advice for preprocessing layers (apply them in the data
pipeline for training, keep them in the model for inference), without two
copies of the weights.
"""

import keras
import numpy as np

from keras_mtl import features as features_lib
from keras_mtl.layers import InputBlock


def _unwrap(model):
    # `keras_mtl.training.MultiTaskModel` wraps the functional model.
    return getattr(model, "model", model)


def input_blocks(model):
    """The `InputBlock`s a model calls on its inputs, checked for encoding.

    Raises:
        ValueError: if the model has no `InputBlock`, or embeds raw features
            inside another layer (DUPN's encoder), or two blocks read one
            feature with different specs.
    """
    model = _unwrap(model)
    if not isinstance(model, keras.Model) or not hasattr(model, "_inputs"):
        raise ValueError(
            "`model` must be a functional keras-mtl model (built by a "
            f"`keras_mtl.models` builder). Received: {type(model).__name__}"
        )
    blocks = [layer for layer in model.layers if isinstance(layer, InputBlock)]
    nested = [
        f"{layer.name} ({type(layer).__name__})"
        for layer in model.layers
        if not isinstance(layer, InputBlock)
        and any(isinstance(sub, InputBlock) for sub in layer._flatten_layers())
    ]
    if nested:
        raise ValueError(
            "The encoded training path needs every `InputBlock` at the top "
            "level of the model; these layers embed raw features inside: "
            f"{nested}. Train this model on raw features."
        )
    if not blocks:
        raise ValueError(
            "The model has no `InputBlock`: it takes no raw categorical "
            "features, so there is nothing to encode."
        )
    seen = {}
    for block in blocks:
        for spec in block.categorical:
            other = seen.setdefault(spec.name, (block, spec))
            if other[1].get_config() != spec.get_config():
                raise ValueError(
                    f"Feature {spec.name!r} is read by InputBlocks "
                    f"{other[0].name!r} and {block.name!r} with different "
                    "specs; the encoded path needs one encoding per feature."
                )
    return blocks


def _categorical_specs(blocks):
    specs = {}
    for block in blocks:
        for spec in block.categorical:
            specs.setdefault(spec.name, (block, spec))
    return specs


def encoded_model(model):
    """A twin of `model` that takes categorical row ids, sharing its layers.

    Every categorical and sequence input of the twin is int32 row ids (as
    `encode_features` computes them) instead of the raw value; numeric
    inputs are unchanged. All layers are the model's own objects, so
    training the twin trains `model`. Without hash tables in the step, the
    twin can be compiled with `jit_compile=True`.

    Args:
        model: a functional keras-mtl model (or its
            `keras_mtl.training.MultiTaskModel` wrapper) whose `InputBlock`s
            are called on its inputs.

    Returns:
        A functional `keras.Model` with the same input names and outputs.

    Raises:
        ValueError: for a model the encoded path cannot express (see
            `input_blocks`).
    """
    model = _unwrap(model)
    specs = _categorical_specs(input_blocks(model))
    inputs = {}
    for name, tensor in model.input.items():
        if name in specs:
            spec = specs[name][1]
            shape = (
                (spec.max_len,)
                if isinstance(spec, features_lib.SequenceFeature)
                else ()
            )
            inputs[name] = keras.Input(shape=shape, dtype="int32", name=name)
        else:
            inputs[name] = keras.Input(
                shape=tensor.shape[1:], dtype=tensor.dtype, name=name
            )

    def call(layer, *args, **kwargs):
        if isinstance(layer, InputBlock):
            kwargs["encoded"] = True
        return layer(*args, **kwargs)

    twin = keras.models.clone_model(
        model,
        input_tensors=inputs,
        clone_function=lambda layer: layer,
        call_function=call,
    )
    twin = keras.Model(inputs, twin.output, name=f"{model.name}_encoded")
    twin._keras_mtl_encoded = True
    return twin


def is_encoded(model):
    """Whether `model` (or the model a wrapper trains) is an encoded twin."""
    return bool(getattr(_unwrap(model), "_keras_mtl_encoded", False))


def _lookup_layers(model):
    return {
        id(sub)
        for block in input_blocks(model)
        for sub in block._flatten_layers(include_self=False)
    }


def force_jit(model):
    """Turns XLA on for a compiled encoded twin (or its wrapper).

    Keras refuses `jit_compile=True` for a model that contains a layer
    without XLA support, and the twin still holds its `InputBlock`s'
    lookup layers, unused (its inputs are already row ids). This checks
    that every *other* layer supports XLA, then sets the flag.
    """
    if keras.backend.backend() != "tensorflow":
        return False
    lookups = _lookup_layers(model)
    blocking = [
        layer.name
        for layer in model._flatten_layers()
        if not layer.supports_jit and id(layer) not in lookups
    ]
    if blocking:
        raise ValueError(
            f"Layers {blocking} do not support XLA; compile with "
            "`jit_compile=False`."
        )
    model._jit_compile = True
    return True


def encode_features(model, x, batch_size=262_144):
    """Row ids of raw in-memory features, with the model's own lookups.

    Args:
        model: the raw-input model (or its wrapper).
        x: dict of raw feature arrays keyed by name (as
            `keras_mtl.data.features_to_arrays` returns).
        batch_size: rows per lookup call (bounds the memory). Defaults to
            `262_144`.

    Returns:
        A new dict: categorical and sequence features as int32 row ids,
        everything else unchanged.
    """
    encode = column_encoder(model, batch_size)
    missing = sorted(set(encode.names) - set(x))
    if missing:
        raise ValueError(
            f"`x` is missing categorical feature(s) {missing}. "
            f"Received keys: {sorted(x)}"
        )
    return {name: encode(name, values) for name, values in x.items()}


def column_encoder(model, batch_size=262_144):
    """A function `(name, raw_values) -> values` applying the model's lookup.

    Categorical and sequence features come back as int32 row ids (computed
    `batch_size` rows at a time), any other feature unchanged. Encoding
    column by column lets `keras_mtl.data.from_dataframe` drop each raw
    string column as soon as its ids exist, instead of holding every raw
    column at once. The set of encoded names is the function's `names`.
    """
    specs = _categorical_specs(input_blocks(model))

    def encode(name, column):
        if name not in specs:
            return column
        block = specs[name][0]
        n = len(column)
        parts = [
            keras.ops.convert_to_numpy(
                block.encode({name: column[i : i + batch_size]}, [name])[name]
            )
            for i in range(0, n, batch_size)
        ]
        if not parts:
            return np.zeros(np.shape(column), "int32")
        return np.concatenate(parts).astype("int32")

    encode.names = tuple(specs)
    return encode


def encode_dataset(model, dataset, num_parallel_calls=None):
    """Maps the features of a `(x, y, sample_weight)` dataset to row ids.

    For data streamed from files (`from_csv`, `from_parquet`,
    `from_tfrecord`), where the ids cannot be computed once up front: the
    lookups run per batch in the tf.data pipeline, in parallel with the
    training step, instead of inside it.

    Args:
        model: the raw-input model (or its wrapper).
        dataset: a `tf.data.Dataset` whose elements are `x` or tuples whose
            first item is `x`, a dict of raw features.
        num_parallel_calls: passed to `Dataset.map`. Defaults to
            `tf.data.AUTOTUNE`.

    Returns:
        The mapped `tf.data.Dataset`.
    """
    import tensorflow as tf

    specs = _categorical_specs(input_blocks(model))

    def encode(x):
        out = dict(x)
        for name, (block, _) in specs.items():
            out[name] = block.encode({name: x[name]}, [name])[name]
        return out

    def fn(*element):
        if len(element) == 1:
            return encode(element[0])
        return (encode(element[0]), *element[1:])

    return dataset.map(
        fn,
        num_parallel_calls=num_parallel_calls or tf.data.AUTOTUNE,
        deterministic=True,
    )
