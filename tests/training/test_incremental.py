"""Incremental daily training: warm start, stable ids, OOV for new values."""

import json

import keras
import numpy as np

import keras_mtl
from keras_mtl import data
from keras_mtl import datasets
from keras_mtl import models
from keras_mtl import training
from keras_mtl.features import OOV_INDEX

TASKS = datasets.funnel_tasks()


def _days(n=1200, seed=1):
    """Two consecutive days of the same users and items."""
    logs = datasets.synthetic_funnel(
        2 * n, seed=seed, num_users=300, num_items=200
    )
    return logs.iloc[:n].copy(), logs.iloc[n:].copy()


def test_day_two_warm_starts_from_day_one(tmp_path):
    day1, day2 = _days()
    # Categories first seen on day 2: a new device and a new category.
    day2.loc[day2.index[:100], "device"] = "smart_tv"
    day2.loc[day2.index[100:200], "item_category"] = "cat_99"
    specs = keras_mtl.infer_features(
        day1, labels=datasets.FUNNEL_LABELS, embed_dim=4
    )
    model = models.mmoe(
        specs, TASKS, num_experts=2, expert_units=[8], tower_units=[8]
    )
    wrapper = training.compile(
        model,
        TASKS,
        weighting="uncertainty",
        learning_rate=0.03,
        metrics={t.name: [] for t in TASKS},
        run_eagerly=True,
    )
    x1, y1, sw1 = data.dataframe_to_arrays(day1, specs, TASKS)
    history1 = wrapper.fit(
        x1, y1, sample_weight=sw1, batch_size=400, epochs=3, verbose=0
    )
    wrapper.save(tmp_path / "day1.keras")
    known = {
        "device": ["ios", "android", "web"],
        "item_category": sorted(day1["item_category"].unique()),
        "item_id": day1["item_id"].value_counts().index[:5].tolist(),
    }
    day1_ids = {
        name: training.category_ids(model, name, values)
        for name, values in known.items()
    }
    for ids in day1_ids.values():
        assert (ids >= 2).all()  # inside the vocabulary, not OOV
    log_vars = wrapper.weighting.log_vars.numpy()

    # Day 2: warm start from the file.
    warm = training.warm_start(
        tmp_path / "day1.keras",
        TASKS,
        learning_rate=0.005,
        metrics={t.name: [] for t in TASKS},
        run_eagerly=True,
    )
    # The strategy and its learned log-variances came back.
    assert isinstance(warm.weighting, training.UncertaintyWeighting)
    np.testing.assert_array_equal(warm.weighting.log_vars.numpy(), log_vars)
    # The features are those of day 1, not re-inferred from day 2.
    assert training.model_features(warm) == specs
    # New categories map to the OOV row, without error.
    np.testing.assert_array_equal(
        training.category_ids(warm, "device", ["smart_tv"]), [OOV_INDEX]
    )
    np.testing.assert_array_equal(
        training.category_ids(warm, "item_category", ["cat_99"]), [OOV_INDEX]
    )
    x2, y2, sw2 = data.dataframe_to_arrays(day2, specs, TASKS)
    history2 = warm.fit(
        x2, y2, sample_weight=sw2, batch_size=400, epochs=1, verbose=0
    )
    # Day 2's loss starts from day 1's level, not from scratch.
    scratch, end_day1 = (
        history1.history["loss"][0],
        history1.history["loss"][-1],
    )
    assert end_day1 < 0.7 * scratch  # day 1 did learn
    day2_loss = history2.history["loss"][0]
    assert day2_loss < end_day1 + 0.15 * (scratch - end_day1)
    preds = warm.model.predict({k: v[:300] for k, v in x2.items()}, verbose=0)
    assert all(np.isfinite(p).all() for p in preds.values())
    # Existing ids never shift, also after day 2's save and reload.
    warm.save(tmp_path / "day2.keras")
    reloaded = keras.saving.load_model(tmp_path / "day2.keras")
    for name, ids in day1_ids.items():
        np.testing.assert_array_equal(
            training.category_ids(reloaded, name, known[name]), ids
        )
    # Re-inferring the vocabulary on day 2 would have moved ids: the reason
    # warm starts keep day 1's features.
    respecs = keras_mtl.infer_features(
        day2, labels=datasets.FUNNEL_LABELS, embed_dim=4
    )
    vocab = {s.name: getattr(s, "vocabulary", None) for s in specs}
    revocab = {s.name: getattr(s, "vocabulary", None) for s in respecs}
    assert revocab["item_category"] != vocab["item_category"]
    sidecar = json.loads((tmp_path / "day2.weighting.json").read_text())
    assert sidecar["weighting"]["name"] == "uncertainty"


def test_warm_start_of_a_plain_runner_model_uses_fixed_weights(tmp_path):
    day1, _ = _days(n=300, seed=3)
    specs = keras_mtl.infer_features(
        day1, labels=datasets.FUNNEL_LABELS, embed_dim=4
    )
    model = models.shared_bottom(specs, TASKS, bottom_units=[8])
    model.save(tmp_path / "model.keras")
    warm = training.warm_start(tmp_path / "model.keras", TASKS, weighting="dwa")
    assert isinstance(warm.weighting, training.DWAWeighting)
    x = {k: v[:8] for k, v in data.features_to_arrays(day1, specs).items()}
    before = model.predict(x, verbose=0)
    after = warm.predict(x, verbose=0)
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-6)


def test_db_mtl_warm_start_keeps_the_step_count_not_the_averages(tmp_path):
    day1, day2 = _days(n=400, seed=4)
    specs = keras_mtl.infer_features(
        day1, labels=datasets.FUNNEL_LABELS, embed_dim=4
    )
    model = models.shared_bottom(specs, TASKS, bottom_units=[8])
    wrapper = training.compile(
        model,
        TASKS,
        weighting={"name": "db_mtl", "shared_scope": "dense"},
        metrics={t.name: [] for t in TASKS},
    )
    x, y, sw = data.dataframe_to_arrays(day1, specs, TASKS)
    wrapper.fit(x, y, sample_weight=sw, batch_size=100, epochs=1, verbose=0)
    assert float(wrapper.weighting.step.numpy()) == 4.0
    assert any(np.abs(a.numpy()).sum() > 0 for a in wrapper.weighting.averages)
    wrapper.save(tmp_path / "day1.keras")
    sidecar = json.loads((tmp_path / "day1.weighting.json").read_text())
    assert sidecar["weighting"]["name"] == "db_mtl"
    assert sidecar["weighting"]["shared_scope"] == "dense"

    warm = training.warm_start(
        tmp_path / "day1.keras", TASKS, metrics={t.name: [] for t in TASKS}
    )
    assert isinstance(warm.weighting, training.DBMTLWeighting)
    assert float(warm.weighting.step.numpy()) == 4.0
    assert all(np.abs(a.numpy()).sum() == 0 for a in warm.weighting.averages)
    x, y, sw = data.dataframe_to_arrays(day2, specs, TASKS)
    history = warm.fit(
        x, y, sample_weight=sw, batch_size=100, epochs=1, verbose=0
    )
    assert np.isfinite(history.history["loss"]).all()
    assert float(warm.weighting.step.numpy()) == 8.0
