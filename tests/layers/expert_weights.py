"""Weight helpers shared by the MMoE and PLE layer tests."""

import numpy as np
import pytest

# Every normalization a layer of experts and gates can carry, one at a time.
NORMALIZATIONS = pytest.mark.parametrize(
    "expert_normalization, gate_normalization",
    [
        (None, None),
        ("batch", None),
        ("layer", None),
        (None, "batch"),
        (None, "layer"),
    ],
    ids=[
        "plain",
        "batch_norm",
        "layer_norm",
        "gate_batch_norm",
        "gate_layer_norm",
    ],
)


def randomize(weights, seed=1):
    """Assigns distinct random values, so per-expert weights are tested."""
    rng = np.random.default_rng(seed)
    for w in weights:
        w.assign(rng.normal(size=tuple(w.shape)).astype("float32"))


def set_nontrivial_norm_weights(norms, expert_normalization):
    """Moves expert normalization weights off their initial values, so that
    saving and loading them is tested."""
    if expert_normalization == "batch":
        for norm in norms:
            norm.moving_mean.assign(np.full(norm.moving_mean.shape, 0.5))
            norm.moving_variance.assign(np.full(norm.moving_mean.shape, 4.0))
    if expert_normalization == "layer":
        randomize([n.gamma for n in norms] + [n.beta for n in norms])
