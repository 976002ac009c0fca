"""One tiny trained split model and its export, shared by the export tests.

Built once per test process (`exported()` caches it) so test_export.py and
test_serving_client.py pay for one training and one export.
"""

import atexit
import functools
import pathlib
import shutil
import tempfile

import keras
import numpy as np

import keras_mtl
from keras_mtl import data
from keras_mtl import datasets
from keras_mtl import models
from keras_mtl.export import export_for_serving

ROOT = pathlib.Path(__file__).resolve().parents[1]
BATCHING_CONFIG = ROOT / "serving" / "batching.config"
FUNNEL = datasets.synthetic_funnel(1200, seed=1)
SPECS = keras_mtl.infer_features(
    FUNNEL, labels=datasets.FUNNEL_LABELS, embed_dim=4
)
TASKS = datasets.funnel_tasks()
USER_FEATURES = ["user_id", "user_age", "hist_item_ids", "device"]
FUSION = {"click": 1.0, "conversion": 2.0}


def request_rows(n, seed=0):
    """`n` rows of raw features, with unseen and missing values mixed in."""
    rng = np.random.default_rng(seed)
    rows = FUNNEL.iloc[rng.integers(0, len(FUNNEL), n)].reset_index(drop=True)
    rows = rows.drop(columns=datasets.FUNNEL_LABELS)
    k = max(1, n // 5)
    rows.loc[: k - 1, "device"] = "tablet"  # unseen string
    rows.loc[k : 2 * k - 1, "item_category"] = "cat_unseen"
    rows.loc[: k - 1, "user_id"] = 10**9  # unseen id
    rows.loc[k : 2 * k - 1, "user_age"] = np.nan  # missing numeric
    rows.loc[: k - 1, "item_category"] = ""  # missing string
    rows.at[0, "hist_item_ids"] = [10**9, 3, 5]  # unseen ids in a sequence
    return rows


def arrays(rows):
    return data.features_to_arrays(rows, SPECS)


def build_model():
    model = models.split_model(
        SPECS,
        TASKS,
        USER_FEATURES,
        architecture="mmoe",
        user_units=[8],
        num_experts=2,
        expert_units=[8],
        tower_units=[4],
    )
    models.compile_model(model, TASKS, learning_rate=0.02)
    x, y, sw = data.dataframe_to_arrays(FUNNEL, SPECS, TASKS)
    model.fit(x, y, sample_weight=sw, batch_size=300, epochs=1, verbose=0)
    return model


@functools.lru_cache(maxsize=1)
def exported():
    """`(model, version_dir)`: the trained model, exported with everything."""
    keras.utils.set_random_seed(0)
    model = build_model()
    base = pathlib.Path(tempfile.mkdtemp(prefix="keras_mtl_export_test_"))
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    path = export_for_serving(
        model,
        base / "ranker",
        fusion=FUSION,
        split=True,
        example_signatures=True,
        tasks=TASKS,
    )
    return model, path
