"""Layers and models under `mixed_bfloat16` / `mixed_float16` policies.

The GPU benchmark trains with these policies; the layers must keep float32
weights, compute in the policy's dtype, give outputs close to float32, and
the models must keep float32 probabilities at their heads (that part, which
trains on raw string features through tf.data, is
`tests/test_models_mixed_precision.py`, TensorFlow only).
"""

import keras
import numpy as np
import pytest

from keras_mtl import layers

pytestmark = pytest.mark.backend

POLICIES = ("mixed_bfloat16", "mixed_float16")
# Relative error of one rounding in the compute dtype, with headroom for a
# few layers of accumulation.
TOLERANCE = {"mixed_bfloat16": 5e-2, "mixed_float16": 5e-3}


def _layer_cases():
    return {
        "mlp": (lambda **kw: layers.MLP([16, 8], **kw), (12,)),
        "mmoe": (
            lambda **kw: layers.MMoELayer(4, [16, 8], num_tasks=2, **kw),
            (12,),
        ),
        "ple": (
            lambda **kw: layers.PLELevel(2, 2, 1, [16, 8], is_last=True, **kw),
            (12,),
        ),
    }


def _outputs(layer, x):
    out = layer(x)
    return out if isinstance(out, (list, tuple)) else [out]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("case", sorted(_layer_cases()))
def test_layer_keeps_float32_weights_and_float32_accuracy(policy, case):
    make, shape = _layer_cases()[case]
    x = np.random.default_rng(0).normal(size=(32, *shape)).astype("float32")
    reference = make()
    expected = _outputs(reference, x)
    mixed = make(dtype=policy)
    mixed.build((None, *shape))
    mixed.set_weights(reference.get_weights())
    got = _outputs(mixed, x)
    compute = keras.DTypePolicy(policy).compute_dtype
    assert mixed.weights
    assert all(w.dtype == "float32" for w in mixed.weights)
    for g, e in zip(got, expected):
        assert keras.backend.standardize_dtype(g.dtype) == compute
        g = keras.ops.convert_to_numpy(keras.ops.cast(g, "float32"))
        e = keras.ops.convert_to_numpy(e)
        scale = np.abs(e).max()
        assert np.abs(g - e).max() <= TOLERANCE[policy] * scale


@pytest.mark.parametrize("policy", POLICIES)
def test_esmm_head_and_aitm_under_mixed_policy(policy):
    rng = np.random.default_rng(1)
    logits = [rng.normal(size=(64, 1)).astype("float32") * 4 for _ in range(2)]
    head = layers.ESMMHead(dtype=policy)
    p_ctr, p_cvr, p_ctcvr = head(logits)
    # The probabilities are computed in float32 whatever the policy.
    for p in (p_ctr, p_cvr, p_ctcvr):
        assert keras.backend.standardize_dtype(p.dtype) == "float32"
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(p_ctcvr),
        keras.ops.convert_to_numpy(p_ctr) * keras.ops.convert_to_numpy(p_cvr),
        rtol=1e-6,
    )
    transfer = layers.AITMTransfer(8, dtype=policy)
    previous = rng.normal(size=(16, 8)).astype("float32")
    current = rng.normal(size=(16, 8)).astype("float32")
    reference = layers.AITMTransfer(8)
    expected = keras.ops.convert_to_numpy(reference([previous, current]))
    transfer.build([(None, 8), (None, 8)])
    transfer.set_weights(reference.get_weights())
    got = transfer([previous, current])
    assert all(w.dtype == "float32" for w in transfer.weights)
    got = keras.ops.convert_to_numpy(keras.ops.cast(got, "float32"))
    assert (
        np.abs(got - expected).max()
        <= TOLERANCE[policy] * np.abs(expected).max()
    )
