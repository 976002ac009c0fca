import keras
import numpy as np
import pytest

from keras_mtl import features as F
from keras_mtl.layers import InputBlock
from keras_mtl.layers.input_block import make_inputs

SPECS = [
    F.NumericFeature("price", mean=2.0, variance=4.0),
    F.NumericFeature(
        "age",
        minimum=10.0,
        maximum=60.0,
        normalization="minmax",
        missing_indicator=False,
    ),
    F.CategoricalFeature("device", vocabulary=["ios", "android"], embed_dim=4),
    F.CategoricalFeature("slot", vocabulary=[3, 5], embed_dim=4),
    F.CategoricalFeature(
        "item", vocab_size=10, embed_dim=8, shared_embedding="items"
    ),
    F.SequenceFeature(
        "hist", vocab_size=10, embed_dim=8, shared_embedding="items", max_len=3
    ),
    F.CategoricalFeature("query", num_bins=16, embed_dim=4),
]


def raw_batch():
    return {
        "price": np.array([2.0, np.nan, 6.0], "float32"),
        "age": np.array([10.0, 35.0, 60.0], "float32"),
        "device": np.array(["ios", "linux", ""], object),
        "slot": np.array([5, 4, -1], "int64"),
        "item": np.array([1, 11, -1], "int64"),
        "hist": np.array([[1, 2, -1], [-1, -1, -1], [3, 3, 4]], "int64"),
        "query": np.array(["shoes", "hat", ""], object),
    }


def test_one_table_per_embedding_width_and_output_width():
    block = InputBlock(SPECS)
    out = block(raw_batch())
    tables = [w for w in block.weights if "embeddings" in w.path]
    assert sorted(tuple(t.shape) for t in tables) == [
        (12, 8),
        (2 + 2 + 2 + 2 + 16, 4),
    ]
    # 2 (price + indicator) + 1 (age) + 4 + 4 + 8 + 8 + 4
    assert block.output_dim == 31 and tuple(out.shape) == (3, 31)


def test_numeric_fill_indicator_and_normalisation_exact():
    block = InputBlock(SPECS[:2])
    out = keras.ops.convert_to_numpy(block(raw_batch()))
    # Layout: normalised values in spec order, then missing indicators.
    assert out.shape == (3, 3)
    # price: (x - 2) / 2; NaN -> mean -> 0, with its indicator set.
    np.testing.assert_allclose(out[:, 0], [0.0, 0.0, 2.0], atol=1e-6)
    # age: min-max over [10, 60].
    np.testing.assert_allclose(out[:, 1], [0.0, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(out[:, 2], [0.0, 1.0, 0.0], atol=1e-6)


def test_lookup_rows_oov_missing_and_sharing():
    block = InputBlock(SPECS)
    block.build()
    emb = block.embed(raw_batch())
    table8 = keras.ops.convert_to_numpy(block.tables["8"].embeddings)
    # item id 1 -> local row 3; 11 (unseen) -> OOV row 1; -1 -> mask row 0.
    item = keras.ops.convert_to_numpy(emb["item"])
    np.testing.assert_array_equal(item, table8[[3, 1, 0]])
    # The sequence shares the item rows.
    hist, mask = (keras.ops.convert_to_numpy(t) for t in emb["hist"])
    np.testing.assert_array_equal(hist[0, 0], table8[3])
    assert mask.tolist() == [[True, True, False], [False] * 3, [True] * 3]
    # Unseen and missing strings go to rows 1 and 0 of their own section.
    table4 = keras.ops.convert_to_numpy(block.tables["4"].embeddings)
    device = keras.ops.convert_to_numpy(emb["device"])
    off = block.offsets["__device"]
    np.testing.assert_array_equal(device, table4[[off + 2, off + 1, off + 0]])


@pytest.mark.parametrize("pooling", ["mean", "sum", "max"], ids=str)
def test_sequence_pooling_ignores_padding(pooling):
    spec = F.SequenceFeature(
        "hist", vocab_size=4, embed_dim=2, max_len=3, pooling=pooling
    )
    block = InputBlock([spec])
    block.build()
    table = np.arange(12, dtype="float32").reshape(6, 2)
    block.tables["2"].embeddings.assign(table)
    out = keras.ops.convert_to_numpy(
        block({"hist": np.array([[0, 3, -1], [-1, -1, -1]], "int64")})
    )
    rows = table[[2, 5]]  # ids 0 and 3 -> rows 2 and 5; padding excluded
    expected = {"mean": rows.mean(0), "sum": rows.sum(0), "max": rows.max(0)}[
        pooling
    ]
    np.testing.assert_allclose(out[0], expected)
    np.testing.assert_allclose(out[1], [0.0, 0.0])


def test_config_round_trip_and_keras_save_load(tmp_path):
    inputs = make_inputs(SPECS)
    x = InputBlock(SPECS, name="input_block")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    batch = raw_batch()
    before = model.predict(batch, verbose=0)
    block = model.get_layer("input_block")
    clone = InputBlock.from_config(block.get_config())
    assert clone.features == SPECS
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(batch, verbose=0), before)


def test_one_step_fit_and_symbolic_shapes():
    inputs = make_inputs(SPECS)
    assert inputs["hist"].shape == (None, 3) and inputs["price"].shape == (
        None,
    )
    assert (
        inputs["device"].dtype == "string" and inputs["item"].dtype == "int64"
    )
    x = InputBlock(SPECS)(inputs)
    assert tuple(x.shape) == (None, 31)
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    model.compile("sgd", "mse")
    history = model.fit(raw_batch(), np.ones(3), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_mixed_bfloat16_keeps_float32_tables():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        block = InputBlock(SPECS)
        out = block(raw_batch())
        assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
        assert all(w.dtype == "float32" for w in block.weights)
    finally:
        keras.config.set_dtype_policy("float32")


def test_missing_input_is_named():
    block = InputBlock(SPECS)
    batch = raw_batch()
    del batch["hist"]
    with pytest.raises(
        ValueError, match=r"missing input feature\(s\) \['hist'\]"
    ):
        block(batch)


def _same_tables(block, reference):
    """Copies `reference`'s weights into `block` (same tables, same order)."""
    block.build()
    reference.build()
    block.set_weights(reference.get_weights())


def test_dot_interaction_appends_pairwise_dots_exact():
    plain = InputBlock(SPECS)
    crossed = InputBlock(
        SPECS,
        interaction="dot",
        interaction_features=["device", "slot", "query"],
    )
    _same_tables(crossed, plain)
    batch = raw_batch()
    base = keras.ops.convert_to_numpy(plain(batch))
    out = keras.ops.convert_to_numpy(crossed(batch))
    emb = {
        k: keras.ops.convert_to_numpy(v)
        for k, v in plain.embed(batch).items()
        if k in ("device", "slot", "query")
    }
    # keras-rs' lower-triangle order: (1, 0), (2, 0), (2, 1).
    dots = np.stack(
        [
            (emb["slot"] * emb["device"]).sum(-1),
            (emb["query"] * emb["device"]).sum(-1),
            (emb["query"] * emb["slot"]).sum(-1),
        ],
        axis=1,
    )
    assert crossed.output_dim == 31 + 3 and out.shape == (3, 34)
    np.testing.assert_array_equal(out[:, :31], base)
    np.testing.assert_allclose(out[:, 31:], dots, rtol=1e-6, atol=1e-9)
    # The embeddings are not zero, so the dots are a real signal here.
    assert np.abs(dots).max() > 1e-4


def test_dot_interaction_pools_sequences_before_crossing():
    plain = InputBlock(SPECS)
    crossed = InputBlock(
        SPECS, interaction="dot", interaction_features=["item", "hist"]
    )
    _same_tables(crossed, plain)
    batch = raw_batch()
    out = keras.ops.convert_to_numpy(crossed(batch))
    emb = plain.embed(batch)
    item = keras.ops.convert_to_numpy(emb["item"])
    hist = keras.ops.convert_to_numpy(
        InputBlock.pool(emb["hist"][0], emb["hist"][1], "mean")
    )
    np.testing.assert_allclose(
        out[:, -1], (item * hist).sum(-1), rtol=1e-6, atol=1e-9
    )
    # Row 1's history is all padding: pooled to zeros, so its dot is 0.
    assert out[1, -1] == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(interaction="wide"),
            r'None, "dot" or "cross"\. Received: interaction=\'wide\'',
        ),
        (
            dict(interaction_features=["device", "slot"]),
            r'needs `interaction="dot"`',
        ),
        (dict(interaction="dot"), r"one `embed_dim`.*'device': 4.*'item': 8"),
        (
            dict(interaction="dot", interaction_features=["device"]),
            "at least 2",
        ),
        (
            dict(interaction="dot", interaction_features=["device", "price"]),
            r"Numeric: \['price'\]; not among the features: \[\]",
        ),
        (
            dict(interaction="dot", interaction_features=["device", "nope"]),
            r"Numeric: \[\]; not among the features: \['nope'\]",
        ),
        (
            dict(interaction="dot", interaction_features="device"),
            "must be a list",
        ),
        (
            dict(interaction="dot", interaction_features=["slot", "slot"]),
            "twice",
        ),
        (
            dict(interaction="cross", interaction_features=["device", "slot"]),
            r"`interaction_features` needs `interaction=\"dot\"`.*'cross'",
        ),
        (
            dict(cross_layers=3),
            r'`cross_layers` needs `interaction="cross"`.*interaction=None',
        ),
        (
            dict(interaction="dot", cross_projection_dim=4),
            r"`cross_projection_dim` needs `interaction=\"cross\"`",
        ),
        (
            dict(interaction="cross", cross_layers=0),
            r"`cross_layers` must be None or a positive integer.*=0",
        ),
        (
            dict(interaction="cross", cross_projection_dim=True),
            r"`cross_projection_dim` must be None or a positive.*=True",
        ),
    ],
    ids=[
        "kind",
        "features_without_dot",
        "mixed_dims",
        "one",
        "numeric",
        "unknown",
        "string",
        "twice",
        "features_with_cross",
        "cross_layers_without_cross",
        "projection_with_dot",
        "zero_cross_layers",
        "bool_projection",
    ],
)
def test_interaction_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        InputBlock(SPECS, **kwargs)


def _assert_reloads_identically(model, tmp_path):
    """Saved as `.keras`, reloaded in safe mode: the same predictions."""
    batch = raw_batch()
    before = model.predict(batch, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(batch, verbose=0), before)


def test_dot_interaction_config_round_trip_and_save_load(tmp_path):
    inputs = make_inputs(SPECS)
    block = InputBlock(
        SPECS,
        interaction="dot",
        interaction_features=["item", "hist"],
        name="input_block",
    )
    x = block(inputs)
    assert tuple(x.shape) == (None, 32)
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    config = block.get_config()
    assert config["interaction"] == "dot"
    assert config["interaction_features"] == ["item", "hist"]
    assert InputBlock.from_config(config).output_dim == 32
    _assert_reloads_identically(model, tmp_path)


@pytest.mark.backend
def test_dot_interaction_exact_on_every_backend():
    # Integer ids only (no string lookup), so it runs on torch as well.
    specs = [
        F.CategoricalFeature("user", vocab_size=5, embed_dim=3),
        F.CategoricalFeature("item", vocab_size=7, embed_dim=3),
        F.SequenceFeature("hist", vocab_size=7, embed_dim=3, max_len=2),
    ]
    block = InputBlock(specs, interaction="dot")
    batch = {
        "user": np.array([0, 4, -1], "int64"),
        "item": np.array([6, 2, 3], "int64"),
        "hist": np.array([[1, 2], [-1, -1], [5, -1]], "int64"),
    }
    out = keras.ops.convert_to_numpy(block(batch))
    emb = block.embed(batch)
    user = keras.ops.convert_to_numpy(emb["user"])
    item = keras.ops.convert_to_numpy(emb["item"])
    hist = keras.ops.convert_to_numpy(
        InputBlock.pool(emb["hist"][0], emb["hist"][1], "mean")
    )
    assert out.shape == (3, 9 + 3)
    np.testing.assert_allclose(
        out[:, :9], np.concatenate([user, item, hist], 1)
    )
    expected = np.stack(
        [(item * user).sum(-1), (hist * user).sum(-1), (hist * item).sum(-1)],
        axis=1,
    )
    np.testing.assert_allclose(out[:, 9:], expected, rtol=1e-5, atol=1e-9)


def _same_embeddings(block, reference):
    """Gives `block` the embedding tables of `reference` (same features)."""
    block.build()
    reference.build()
    for dim, table in reference.tables.items():
        block.tables[dim].embeddings.assign(table.embeddings)


def _randomize_crosses(block, seed=0):
    """Random kernels and biases in every cross layer (not the initial
    zero biases), so the exact check covers them."""
    rng = np.random.default_rng(seed)
    for cross in block.feature_crosses:
        for w in cross.weights:
            w.assign(0.3 * rng.normal(size=tuple(w.shape)).astype("float32"))


def _cross_reference(x0, block):
    """DCN-v2 in NumPy: x_{l+1} = x0 * (V (U x_l) + b) + x_l."""
    x = x0
    for cross in block.feature_crosses:
        h = x
        if cross.projection_dim is not None:
            h = h @ keras.ops.convert_to_numpy(cross.down_proj_dense.kernel)
        h = h @ keras.ops.convert_to_numpy(cross.dense.kernel)
        h = h + keras.ops.convert_to_numpy(cross.dense.bias)
        x = x0 * h + x
    return x


@pytest.mark.parametrize(
    "cross_layers, cross_projection_dim, shapes",
    [
        (None, None, [(31, 31), (31,)] * 2),
        (3, 5, [(31, 5), (5, 31), (31,)] * 3),
    ],
    ids=["default_full_rank", "three_low_rank"],
)
def test_cross_interaction_exact(cross_layers, cross_projection_dim, shapes):
    plain = InputBlock(SPECS)
    crossed = InputBlock(
        SPECS,
        interaction="cross",
        cross_layers=cross_layers,
        cross_projection_dim=cross_projection_dim,
    )
    _same_embeddings(crossed, plain)
    # Built with the block: every weight exists before the first call.
    assert [
        tuple(w.shape) for c in crossed.feature_crosses for w in c.weights
    ] == shapes
    _randomize_crosses(crossed)
    batch = raw_batch()
    x0 = keras.ops.convert_to_numpy(plain(batch))
    out = keras.ops.convert_to_numpy(crossed(batch))
    # Same width as the plain output: the cross network replaces it.
    assert crossed.output_dim == 31 and out.shape == (3, 31)
    expected = _cross_reference(x0, crossed)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    # The crosses change the vector: a real signal, not the identity.
    assert np.abs(expected - x0).max() > 1e-2


def test_cross_interaction_config_round_trip_and_save_load(tmp_path):
    inputs = make_inputs(SPECS)
    block = InputBlock(
        SPECS,
        interaction="cross",
        cross_layers=1,
        cross_projection_dim=4,
        name="input_block",
    )
    x = block(inputs)
    assert tuple(x.shape) == (None, 31)
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    _randomize_crosses(block)
    config = block.get_config()
    assert (config["interaction"], config["cross_layers"]) == ("cross", 1)
    assert config["cross_projection_dim"] == 4
    revived = InputBlock.from_config(config)
    assert [c.projection_dim for c in revived.feature_crosses] == [4]
    _assert_reloads_identically(model, tmp_path)


@pytest.mark.backend
def test_cross_interaction_exact_on_every_backend():
    # Integer ids and numbers only (no string lookup), so it runs on torch.
    specs = [
        F.NumericFeature("price", mean=2.0, variance=4.0),
        F.CategoricalFeature("user", vocab_size=5, embed_dim=3),
        F.SequenceFeature("hist", vocab_size=7, embed_dim=3, max_len=2),
    ]
    plain = InputBlock(specs)
    crossed = InputBlock(specs, interaction="cross", cross_projection_dim=2)
    _same_embeddings(crossed, plain)
    _randomize_crosses(crossed, seed=3)
    batch = {
        "price": np.array([2.0, np.nan, 6.0], "float32"),
        "user": np.array([0, 4, -1], "int64"),
        "hist": np.array([[1, 2], [-1, -1], [5, -1]], "int64"),
    }
    x0 = keras.ops.convert_to_numpy(plain(batch))
    out = keras.ops.convert_to_numpy(crossed(batch))
    assert out.shape == x0.shape == (3, 2 + 3 + 3)
    np.testing.assert_allclose(
        out, _cross_reference(x0, crossed), rtol=1e-5, atol=1e-5
    )
