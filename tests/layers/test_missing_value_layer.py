"""Tests of keras_mtl.layers.MissingValueLayer and InputBlock(learned_fill)."""

import keras
import numpy as np
import pytest

from keras_mtl import features as F
from keras_mtl.layers import InputBlock
from keras_mtl.layers import MissingValueLayer
from keras_mtl.layers.input_block import make_inputs

pytestmark = pytest.mark.backend

NAN = np.nan


@pytest.fixture
def mixed_bfloat16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    yield
    keras.config.set_dtype_policy(previous)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _x():
    return np.array([[1.0, NAN], [NAN, 2.0], [3.0, 4.0]], "float32")


def test_config_round_trip():
    layer = MissingValueLayer(
        indicator=False, fill_initializer="ones", name="fill"
    )
    config = layer.get_config()
    assert MissingValueLayer.from_config(config).get_config() == config
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert isinstance(revived, MissingValueLayer)
    assert revived.get_config() == config


@pytest.mark.parametrize(
    "indicator, width", [(True, 4), (False, 2)], ids=["indicator", "plain"]
)
def test_symbolic_and_eager_call(indicator, width):
    layer = MissingValueLayer(indicator=indicator)
    assert tuple(layer(keras.Input((2,))).shape) == (None, width)
    assert _np(layer(_x())).shape == (3, width)


def test_exact_values():
    out = _np(MissingValueLayer(fill_initializer="ones")(_x()))
    np.testing.assert_array_equal(
        out,
        [[1.0, 1.0, 0.0, 1.0], [1.0, 2.0, 1.0, 0.0], [3.0, 4.0, 0.0, 0.0]],
    )
    layer = MissingValueLayer(indicator=False)
    layer.build((None, 2))
    layer.fill.assign([-5.0, 7.0])
    np.testing.assert_array_equal(
        _np(layer(_x())), [[1.0, 7.0], [-5.0, 2.0], [3.0, 4.0]]
    )


def _bad_zero_fill_data(n=256):
    """y = x where x is observed; missing rows all have y = 3.

    Filling 0 (the mean of the observed x) is a bad fill: the best one is
    3, which a linear model y = x + fill learns exactly.
    """
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 1)).astype("float32")
    missing = rng.random(n) < 0.3
    y = np.where(missing[:, None], 3.0, x).astype("float32")
    x[missing] = np.nan
    return x, y


def test_one_step_fit_moves_only_the_fill():
    x, y = _bad_zero_fill_data(32)
    inputs = keras.Input((1,))
    filled = MissingValueLayer(indicator=False, name="fill")(inputs)
    model = keras.Model(inputs, filled)
    model.compile(keras.optimizers.SGD(0.5), "mse")
    history = model.fit(x, y, batch_size=32, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    # d/dfill of mean((fill - 3)^2 over missing rows) at fill = 0.
    share = np.isnan(x).mean()
    np.testing.assert_allclose(
        _np(model.get_layer("fill").fill), [0.5 * 2 * 3.0 * share], rtol=1e-5
    )


def test_learns_a_fill_away_from_zero_when_zero_is_bad():
    x, y = _bad_zero_fill_data()
    inputs = keras.Input((1,))
    filled = MissingValueLayer(indicator=False, name="fill")(inputs)
    model = keras.Model(inputs, filled)
    model.compile(keras.optimizers.Adam(0.1), "mse")
    model.fit(x, y, batch_size=64, epochs=15, verbose=0)
    fill = float(_np(model.get_layer("fill").fill)[0])
    assert abs(fill - 3.0) < 0.3, fill


def test_input_block_learned_fill_learns_from_the_data():
    spec = F.NumericFeature("age", mean=40.0, variance=100.0)
    inputs = make_inputs([spec])
    block = InputBlock([spec], learned_fill=True, name="input_block")
    x = block(inputs)
    # Starts at the fixed fill (the mean): normalised 0, indicator 1.
    raw = {"age": np.array([NAN, 50.0], "float32")}
    np.testing.assert_allclose(_np(block(raw)), [[0.0, 1.0], [1.0, 0.0]])
    model = keras.Model(inputs, keras.layers.Dense(1, name="out")(x))
    model.get_layer("out").kernel.assign([[1.0], [0.0]])
    model.get_layer("out").trainable = False
    rng = np.random.default_rng(0)
    age = rng.normal(40.0, 10.0, 256).astype("float32")
    target = (age - 40.0) / 10.0
    missing = rng.random(256) < 0.3
    age[missing] = NAN
    target[missing] = -2.0  # missing ages are young users
    model.compile(keras.optimizers.Adam(0.1), "mse")
    model.fit(
        {"age": age}, target[:, None], batch_size=64, epochs=15, verbose=0
    )
    fill = float(_np(block.missing_value.fill)[0])
    assert abs(fill - (-2.0)) < 0.3, fill
    assert block.get_config()["learned_fill"] is True


def test_input_block_learned_fill_starts_at_the_fixed_fill():
    specs = [
        F.NumericFeature("price", mean=1.0, variance=4.0, log1p=True),
        F.NumericFeature(
            "age", minimum=0.0, maximum=10.0, normalization="minmax"
        ),
        F.NumericFeature("n", normalization=None, fill_value=3.0),
    ]
    raw = {
        "price": np.array([NAN, 2.0], "float32"),
        "age": np.array([NAN, 5.0], "float32"),
        "n": np.array([NAN, 1.0], "float32"),
    }
    fixed = _np(InputBlock(specs)(raw))
    learned = _np(InputBlock(specs, learned_fill=True)(raw))
    np.testing.assert_allclose(learned, fixed, rtol=1e-6, atol=1e-6)


def test_mixed_bfloat16(mixed_bfloat16):
    layer = MissingValueLayer(fill_initializer="ones")
    out = layer(_x())
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(layer.fill.dtype) == "float32"
    np.testing.assert_array_equal(
        _np(keras.ops.cast(out, "float32"))[:, :2],
        [[1.0, 1.0], [1.0, 2.0], [3.0, 4.0]],
    )


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"indicator": 1}, "indicator"),
        ({"fill_initializer": "nope"}, "fill_initializer"),
    ],
    ids=["int_indicator", "unknown_initializer"],
)
def test_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`.*Received: {name}="):
        MissingValueLayer(**kwargs)


def test_invalid_learned_fill_and_input_rank():
    spec = F.NumericFeature("age")
    with pytest.raises(
        ValueError, match="`learned_fill`.*Received: learned_fill="
    ):
        InputBlock([spec], learned_fill="yes")
    with pytest.raises(ValueError, match="num_features"):
        MissingValueLayer()(np.zeros((2, 3, 4), "float32"))


def test_keras_save_and_load(tmp_path):
    spec = F.NumericFeature("age", mean=40.0, variance=100.0)
    inputs = make_inputs([spec])
    x = InputBlock([spec], learned_fill=True, name="input_block")(inputs)
    x = MissingValueLayer(fill_initializer="ones", name="fill")(x)
    model = keras.Model(inputs, x)
    model.get_layer("input_block").missing_value.fill.assign([1.5])
    path = tmp_path / "fill.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("fill"), MissingValueLayer)
    raw = {"age": np.array([NAN, 50.0], "float32")}
    expected = model.predict(raw, verbose=0)
    np.testing.assert_array_equal(loaded.predict(raw, verbose=0), expected)
    assert expected[0, 0] == 1.5
