"""Tests of keras_mtl.datasets: synthetic generators and public loaders."""

import gzip
import logging
import re
import shutil

import numpy as np
import pandas as pd
import pytest

import keras_mtl
from keras_mtl import datasets
from keras_mtl.task import validate_tasks

# ---------------------------------------------------------------------------
# synthetic_correlated
# ---------------------------------------------------------------------------


def test_correlated_columns_and_determinism():
    df = datasets.synthetic_correlated(500, 0.5, seed=3, dim=7)
    assert list(df.columns) == [f"x_{k}" for k in range(7)] + ["y1", "y2"]
    assert (df.dtypes == "float64").all()
    assert len(df) == 500
    same = datasets.synthetic_correlated(500, 0.5, seed=3, dim=7)
    pd.testing.assert_frame_equal(df, same)
    other = datasets.synthetic_correlated(500, 0.5, seed=4, dim=7)
    assert not np.allclose(df.to_numpy(), other.to_numpy())


def test_correlated_label_correlation_grows_with_p():
    corr = {}
    for p in (0.0, 0.5, 1.0):
        df = datasets.synthetic_correlated(20_000, p, seed=0)
        corr[p] = df["y1"].corr(df["y2"])
    # Measured (seed 0): 0.008, 0.117, 0.992.
    assert corr[1.0] > corr[0.5] + 0.5
    assert corr[0.5] > corr[0.0] + 0.05
    assert corr[1.0] > 0.95
    assert abs(corr[0.0]) < 0.05


@pytest.mark.parametrize(
    "p", [-1.0, -0.3, 0.0, 0.5, 0.9, 1.0], ids=lambda p: f"p={p}"
)
def test_correlated_weight_cosine_is_p(p):
    _, (w1, w2) = datasets.synthetic_correlated(
        10, p, seed=1, scale=2.5, return_weights=True
    )
    assert w1.shape == w2.shape == (100,)
    np.testing.assert_allclose(np.linalg.norm(w1), 2.5, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(w2), 2.5, atol=1e-12)
    cosine = w1 @ w2 / (np.linalg.norm(w1) * np.linalg.norm(w2))
    assert abs(cosine - p) < 1e-12


def test_correlated_exact_labels_without_sines_and_noise():
    df, (w1, w2) = datasets.synthetic_correlated(
        50, 0.3, dim=5, num_sinusoids=0, noise_std=0.0, return_weights=True
    )
    x = df[[f"x_{k}" for k in range(5)]].to_numpy()
    np.testing.assert_allclose(df["y1"], x @ w1, rtol=0, atol=1e-12)
    np.testing.assert_allclose(df["y2"], x @ w2, rtol=0, atol=1e-12)


def test_correlated_noise_std():
    kwargs = dict(n=20_000, correlation=0.2, dim=4, num_sinusoids=0)
    clean = datasets.synthetic_correlated(noise_std=0.0, **kwargs)
    noisy = datasets.synthetic_correlated(noise_std=0.1, **kwargs)
    # x comes first from the same stream, so only the noise differs.
    residual = noisy["y1"] - clean["y1"]
    assert abs(residual.std() - 0.1) < 0.003


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(n=10, correlation=2),
            "`correlation` must be in [-1, 1]. Received: correlation=2",
        ),
        (dict(n=10, correlation=-1.01), "`correlation` must be in [-1, 1]"),
        (dict(n=10, correlation=float("nan")), "Received: correlation=nan"),
        (dict(n=10, correlation=True), "Received: correlation=True"),
        (dict(n=0, correlation=0.5), "`n` must be a positive integer"),
        (dict(n=2.5, correlation=0.5), "Received: n=2.5"),
        (dict(n=10, correlation=0.5, dim=1), "`dim` must be an integer >= 2"),
        (dict(n=10, correlation=0.5, num_sinusoids=-1), "`num_sinusoids`"),
        (dict(n=10, correlation=0.5, scale=0), "`scale` must be"),
        (dict(n=10, correlation=0.5, noise_std=-0.1), "`noise_std` must be"),
    ],
    ids=[
        "correlation_2",
        "correlation_below",
        "correlation_nan",
        "correlation_bool",
        "n_zero",
        "n_float",
        "dim_1",
        "sinusoids_negative",
        "scale_zero",
        "noise_negative",
    ],
)
def test_correlated_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        datasets.synthetic_correlated(**kwargs)


# ---------------------------------------------------------------------------
# synthetic_funnel
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def funnel():
    return datasets.synthetic_funnel(100_000, seed=0, return_propensities=True)


def test_funnel_columns_and_dtypes(funnel):
    df, truth = funnel
    assert dict(df.dtypes.astype(str)) == {
        "user_id": "int64",
        "item_id": "int64",
        "item_category": "str",
        "device": "str",
        "position": "int64",
        "user_age": "float64",
        "item_price": "float64",
        "hist_item_ids": "object",
        "click": "int64",
        "conversion": "int64",
        "like": "float64",
        "watch_time": "float64",
    }
    assert list(truth.columns) == [
        "p_click",
        "p_conversion",
        "p_like",
        "cf_conversion",
    ]
    assert truth.index.equals(df.index)
    assert str(truth["cf_conversion"].dtype) == "int64"
    assert set(datasets.FUNNEL_LABELS) <= set(df.columns)
    assert datasets.FUNNEL_LABELS == [
        "click",
        "conversion",
        "like",
        "watch_time",
    ]


def test_funnel_feature_values(funnel):
    df, _ = funnel
    assert df["user_id"].between(0, 1999).all()
    assert df["item_id"].between(0, 999).all()
    assert df["position"].between(1, 10).all()
    assert set(df["position"]) == set(range(1, 11))
    assert df["item_category"].str.fullmatch(r"cat_\d\d").all()
    assert df["item_category"].nunique() == 20
    # One category per item.
    assert (df.groupby("item_id")["item_category"].nunique() == 1).all()
    shares = df["device"].value_counts(normalize=True)
    assert set(shares.index) == {"ios", "android", "web"}
    assert shares["ios"] > shares["android"] > shares["web"]
    assert shares["web"] < 0.2
    assert 0.015 < df["user_age"].isna().mean() < 0.025
    assert df["user_age"].dropna().between(16, 80).all()
    assert (df["item_price"] > 0).all()
    assert 10 < df["item_price"].median() < 40


def test_funnel_rates(funnel):
    df, truth = funnel
    clicked = df["click"] == 1
    ctr = df["click"].mean()
    cvr = df.loc[clicked, "conversion"].mean()
    # Measured (seed 0, 100k rows): CTR 0.0916, CVR given click 0.201.
    assert 0.05 < ctr < 0.15
    assert 0.10 < cvr < 0.30
    assert set(df["click"]) == {0, 1}
    assert set(df["conversion"]) == {0, 1}
    assert abs(ctr - truth["p_click"].mean()) < 0.005
    assert abs(cvr - truth.loc[clicked, "p_conversion"].mean()) < 0.015


def test_funnel_post_click_labels(funnel):
    df, truth = funnel
    clicked = df["click"] == 1
    assert (df.loc[~clicked, "conversion"] == 0).all()
    np.testing.assert_array_equal(
        df["conversion"], df["click"] * truth["cf_conversion"]
    )
    for column in ("like", "watch_time"):
        np.testing.assert_array_equal(df[column].isna(), ~clicked)
    assert set(df.loc[clicked, "like"]) == {0.0, 1.0}
    assert (df.loc[clicked, "watch_time"] >= 0).all()
    like_rate = df.loc[clicked, "like"].mean()
    assert abs(like_rate - truth.loc[clicked, "p_like"].mean()) < 0.02


def test_funnel_position_and_device_effects(funnel):
    df, _ = funnel
    ctr = df.groupby("position")["click"].mean()
    # Measured: 0.168 at position 1, 0.063 at position 10.
    assert ctr[1] > 2 * ctr[10]
    assert ctr[1] > ctr[5] > ctr[10]
    by_device = df.groupby("device")["click"].mean()
    assert by_device["ios"] > by_device["web"]


def test_funnel_selection_bias(funnel):
    df, truth = funnel
    clicked = df["click"] == 1
    on_clicks = truth.loc[clicked, "p_conversion"].mean()
    overall = truth["p_conversion"].mean()
    # Measured (seeds 0, 1, 2): a gap of 0.050, 0.069, 0.054.
    assert on_clicks - overall > 0.03
    # The counterfactual labels follow the propensities on every row.
    assert abs(truth["cf_conversion"].mean() - overall) < 0.005
    assert truth["p_conversion"].between(0, 1).all()
    # Unclicked impressions would have converted too, just less often.
    unclicked = truth.loc[~clicked, "cf_conversion"].mean()
    assert 0.05 < unclicked < truth.loc[clicked, "cf_conversion"].mean()


def test_funnel_histories(funnel):
    df, _ = funnel
    lengths = df["hist_item_ids"].map(len)
    assert lengths.min() == 0
    assert lengths.max() == 10
    flat = [v for seq in df["hist_item_ids"] for v in seq]
    assert all(isinstance(v, int) for v in flat[:1000])
    flat = np.array(flat)
    assert flat.min() >= 0 and flat.max() < 1000
    assert all(len(set(seq)) == len(seq) for seq in df["hist_item_ids"][:5000])
    # Items from the history are ones the user likes: clicked far more.
    in_history = np.array(
        [
            item in seq
            for item, seq in zip(
                df["item_id"].tolist(), df["hist_item_ids"].tolist()
            )
        ]
    )
    assert in_history.sum() > 100
    # Measured: CTR 0.279 on items in the history, 0.091 elsewhere.
    assert (
        df.loc[in_history, "click"].mean()
        > 2 * df.loc[~in_history, "click"].mean()
    )


def test_funnel_determinism():
    a = datasets.synthetic_funnel(5000, seed=7)
    b = datasets.synthetic_funnel(5000, seed=7)
    pd.testing.assert_frame_equal(a, b)
    c = datasets.synthetic_funnel(5000, seed=8)
    assert not a["item_id"].equals(c["item_id"])
    assert not a["click"].equals(c["click"])


def test_funnel_small_configurations():
    df = datasets.synthetic_funnel(
        2000, num_users=30, num_items=5, num_categories=150, history_len=3
    )
    assert df["hist_item_ids"].map(len).max() <= 3
    assert df["item_id"].between(0, 4).all()
    assert df["item_category"].str.fullmatch(r"cat_\d{3}").all()
    none = datasets.synthetic_funnel(100, history_len=0)
    assert (none["hist_item_ids"].map(len) == 0).all()
    only = datasets.synthetic_funnel(10)
    assert isinstance(only, pd.DataFrame) and len(only) == 10


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n=0), "`n` must be a positive integer. Received: n=0"),
        (dict(num_users=0), "Received: num_users=0"),
        (dict(num_items=-3), "Received: num_items=-3"),
        (dict(num_categories=1.0), "Received: num_categories=1.0"),
        (dict(history_len=-1), "`history_len` must be an integer >= 0"),
        (dict(seed=-1), "`seed` must be an integer >= 0"),
    ],
    ids=["n", "users", "items", "categories", "history", "seed"],
)
def test_funnel_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        datasets.synthetic_funnel(**kwargs)


def test_funnel_tasks():
    tasks = datasets.funnel_tasks()
    assert tasks == [
        keras_mtl.Task("click"),
        keras_mtl.Task("conversion", space="click"),
        keras_mtl.Task("watch_time", "regression", space="click"),
    ]
    with_like = datasets.funnel_tasks(like=True)
    assert [t.name for t in with_like] == [
        "click",
        "conversion",
        "like",
        "watch_time",
    ]
    assert with_like[2] == keras_mtl.Task("like", space="click")
    validate_tasks(with_like)
    assert {t.name for t in with_like} == set(datasets.FUNNEL_LABELS)


# ---------------------------------------------------------------------------
# Adult
# ---------------------------------------------------------------------------

ADULT_RAW = [
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education_num",
    "marital_status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital_gain",
    "capital_loss",
    "hours_per_week",
    "native_country",
    "income",
]


def _adult_independent(path, skiprows):
    raw = pd.read_csv(
        path,
        header=None,
        names=ADULT_RAW,
        skiprows=skiprows,
        skipinitialspace=True,
    )
    income = raw["income"].str.startswith(">50K").mean()
    never = (raw["marital_status"] == "Never-married").mean()
    return len(raw), income, never


def test_load_adult(shared_data):
    train, test = datasets.load_adult(shared_data / "adult")
    assert train.shape == (32_561, 15)
    assert test.shape == (16_281, 15)
    expected = [c for c in ADULT_RAW if c not in ("marital_status", "income")]
    expected += ["income", "never_married"]
    for df in (train, test):
        assert list(df.columns) == expected
        for c in datasets.ADULT_NUMERIC:
            assert df[c].dtype == "float64", c
        for c in datasets.ADULT_CATEGORICAL:
            assert df[c].dtype == "str", c
        for c in datasets.ADULT_LABELS:
            assert df[c].dtype == "int64", c
            assert set(df[c]) == {0, 1}
        assert not (df[datasets.ADULT_CATEGORICAL] == "?").any().any()
    assert sorted(datasets.ADULT_CATEGORICAL + datasets.ADULT_NUMERIC) == (
        sorted(expected[:-2])
    )
    # Published rates: 24.1% income > 50K and 32.8% never married in train.
    assert abs(train["income"].mean() - 0.241) < 0.001
    assert abs(train["never_married"].mean() - 0.328) < 0.001
    assert train["income"].sum() == 7841
    assert train["never_married"].sum() == 10683
    assert test["income"].sum() == 3846
    assert test["never_married"].sum() == 5434
    # `?` is missing; counts as published for the training file.
    missing = train[["workclass", "occupation", "native_country"]].isna()
    assert missing.sum().to_dict() == {
        "workclass": 1836,
        "occupation": 1843,
        "native_country": 583,
    }
    assert train.loc[0, "workclass"] == "State-gov"
    assert train.loc[0, "age"] == 39.0
    # An independent read of the raw files agrees.
    for df, name, skip in (
        (train, "adult.data.gz", 0),
        (test, "adult.test.gz", 1),
    ):
        rows, income, never = _adult_independent(
            shared_data / "adult" / name, skip
        )
        assert len(df) == rows
        assert df["income"].mean() == pytest.approx(income, abs=1e-12)
        assert df["never_married"].mean() == pytest.approx(never, abs=1e-12)
    assert datasets.adult_tasks() == [
        keras_mtl.Task("income"),
        keras_mtl.Task("never_married"),
    ]


def _copy_adult(shared_data, tmp_path):
    for name in ("adult.data.gz", "adult.test.gz"):
        shutil.copy(shared_data / "adult" / name, tmp_path / name)


def test_load_adult_uncompressed_fallback(shared_data, tmp_path):
    for name in ("adult.data", "adult.test"):
        with gzip.open(shared_data / "adult" / f"{name}.gz", "rb") as src:
            (tmp_path / name).write_bytes(src.read())
    train, test = datasets.load_adult(tmp_path)
    assert len(train) == 32_561 and len(test) == 16_281


def test_load_adult_missing_file(shared_data, tmp_path):
    shutil.copy(shared_data / "adult" / "adult.data.gz", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"adult\.test\.gz"):
        datasets.load_adult(tmp_path)
    with pytest.raises(FileNotFoundError, match="existing directory"):
        datasets.load_adult(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="`data_dir` must be a path"):
        datasets.load_adult(123)


def _write_gz(path, lines):
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")


ADULT_ROW = (
    "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, "
    "Not-in-family, White, Male, 2174, 0, 40, United-States, <=50K"
)


@pytest.mark.parametrize(
    "line, message",
    [
        (ADULT_ROW.rsplit(",", 1)[0] + ", maybe", "must be '>50K' or '<=50K'"),
        (ADULT_ROW.rsplit(",", 2)[0], "fewer than 15 fields"),
        (ADULT_ROW.replace("77516", "many"), "column `fnlwgt`"),
        (ADULT_ROW + ", extra", "15 comma-separated fields"),
        (ADULT_ROW.replace("Never-married", "?"), "`never_married` label"),
    ],
    ids=["bad_label", "short_line", "bad_number", "extra_field", "no_marital"],
)
def test_load_adult_malformed(shared_data, tmp_path, line, message):
    _copy_adult(shared_data, tmp_path)
    _write_gz(tmp_path / "adult.data.gz", [ADULT_ROW, line, ADULT_ROW])
    with pytest.raises(ValueError, match=re.escape(message)):
        datasets.load_adult(tmp_path)


# ---------------------------------------------------------------------------
# Census-Income (KDD), on composed files in the published format.
# ---------------------------------------------------------------------------

# Fields of census-income.data, one composed record per entry (42 each).
CENSUS_ROWS = [
    # The first record of census-income.data.
    "73, Not in universe, 0, 0, High school graduate, 0, Not in universe, "
    "Widowed, Not in universe or children, Not in universe, White, "
    "All other, Female, Not in universe, Not in universe, "
    "Not in labor force, 0, 0, 0, Nonfiler, Not in universe, "
    "Not in universe, Other Rel 18+ ever marr not in subfamily, "
    "Other relative of householder, 1700.09, ?, ?, ?, "
    "Not in universe under 1 year old, ?, 0, Not in universe, "
    "United-States, United-States, United-States, "
    "Native- Born in the United States, 0, Not in universe, 2, 0, 95, "
    "- 50000.",
    # Composed: a never-married high earner, hispanic origin "NA".
    "34, Private, 33, 2, Masters degree(MA MS MEng MEd MSW MBA), 1200, "
    "Not in universe, Never married, Finance insurance and real estate, "
    "Executive admin and managerial, White, NA, Male, No, "
    "Not in universe, Full-time schedules, 15024, 0, 250, Single, "
    "Not in universe, Not in universe, Householder, Householder, 2034.5, "
    "Nonmover, Nonmover, Nonmover, Yes, Not in universe, 6, "
    "Not in universe, Canada, United-States, United-States, "
    "Native- Born in the United States, 2, Not in universe, 2, 52, 94, "
    "50000+.",
    # Composed: married, low income, migration known.
    "45, Local government, 43, 10, Bachelors degree(BA AB BS), 0, "
    "Not in universe, Married-civilian spouse present, Education, "
    "Professional specialty, Black, All other, Female, Yes, "
    "Not in universe, Full-time schedules, 0, 1902, 0, "
    "Joint both under 65, South, Georgia, Spouse of householder, "
    "Spouse of householder, 987.25, MSA to MSA, Same county, Same county, "
    "No, Yes, 4, Not in universe, United-States, United-States, "
    "United-States, Native- Born in the United States, 0, No, 1, 52, 95, "
    "- 50000.",
]
CENSUS_TEST_ROWS = [
    # Composed: never married child.
    "12, Not in universe, 0, 0, Children, 0, Not in universe, "
    "Never married, Not in universe or children, Not in universe, "
    "Asian or Pacific Islander, All other, Male, Not in universe, "
    "Not in universe, Children or Armed Forces, 0, 0, 0, Nonfiler, "
    "Not in universe, Not in universe, "
    "Child <18 never marr not in subfamily, Child under 18 never married, "
    "1523.1, ?, ?, ?, Not in universe under 1 year old, ?, 0, "
    "Both parents present, Philippines, Philippines, United-States, "
    "Native- Born in the United States, 0, Not in universe, 0, 0, 95, "
    "- 50000.",
    "51, Self-employed-incorporated, 4, 2, Doctorate degree(PhD EdD), 0, "
    "Not in universe, Divorced, Construction, "
    "Executive admin and managerial, White, All other, Female, No, "
    "Not in universe, Full-time schedules, 99999, 0, 3000, "
    "Head of household, Not in universe, Not in universe, Householder, "
    "Householder, 1200, Nonmover, Nonmover, Nonmover, Yes, "
    "Not in universe, 1, Not in universe, Germany, Germany, Germany, "
    "Foreign born- U S citizen by naturalization, 1, Not in universe, 2, "
    "40, 94, 50000+.",
]


def _write_census(tmp_path, rows=CENSUS_ROWS, test_rows=CENSUS_TEST_ROWS):
    _write_gz(tmp_path / "census-income.data.gz", rows)
    _write_gz(tmp_path / "census-income.test.gz", test_rows)


def test_census_rows_have_published_width():
    assert len(datasets.CENSUS_INCOME_COLUMNS) == 42
    for row in CENSUS_ROWS + CENSUS_TEST_ROWS:
        assert len(row.split(", ")) == 42


def test_load_census_income(tmp_path):
    _write_census(tmp_path)
    train, test = datasets.load_census_income(tmp_path)
    assert len(train) == 3 and len(test) == 2
    expected = [
        c
        for c in datasets.CENSUS_INCOME_COLUMNS
        if c not in ("marital_stat", "income")
    ] + ["income", "never_married"]
    assert list(train.columns) == expected
    assert "instance_weight" not in datasets.CENSUS_INCOME_NUMERIC
    assert "instance_weight" not in datasets.CENSUS_INCOME_CATEGORICAL
    assert len(datasets.CENSUS_INCOME_NUMERIC) == 7
    assert len(datasets.CENSUS_INCOME_CATEGORICAL) == 32
    for c in datasets.CENSUS_INCOME_NUMERIC + ["instance_weight"]:
        assert train[c].dtype == "float64", c
    for c in datasets.CENSUS_INCOME_CATEGORICAL:
        assert train[c].dtype == "str", c
    assert train["income"].tolist() == [0, 1, 0]
    assert train["never_married"].tolist() == [0, 1, 0]
    assert test["income"].tolist() == [0, 1]
    assert test["never_married"].tolist() == [1, 0]
    assert train["instance_weight"].tolist() == [1700.09, 2034.5, 987.25]
    assert train["capital_gains"].tolist() == [0.0, 15024.0, 0.0]
    # Codes stay categorical strings; "NA" is a value, "?" is missing.
    assert train["detailed_industry_recode"].tolist() == ["0", "33", "43"]
    assert train.loc[1, "hispanic_origin"] == "NA"
    assert train["migration_code_change_in_msa"].isna().tolist() == [
        True,
        False,
        False,
    ]
    assert train.loc[0, "year"] == "95"
    assert datasets.census_income_tasks() == datasets.adult_tasks()


def test_load_census_income_errors(tmp_path):
    _write_gz(tmp_path / "census-income.data.gz", CENSUS_ROWS)
    with pytest.raises(FileNotFoundError, match=r"census-income\.test\.gz"):
        datasets.load_census_income(tmp_path)
    bad = CENSUS_ROWS[0].replace("- 50000.", "-50000")
    _write_census(tmp_path, rows=[bad])
    with pytest.raises(ValueError, match="must be '50000\\+' or '- 50000'"):
        datasets.load_census_income(tmp_path)
    # Adult rows are not Census-Income rows.
    _write_census(tmp_path, rows=[ADULT_ROW])
    with pytest.raises(ValueError, match="42 comma-separated fields"):
        datasets.load_census_income(tmp_path)


# ---------------------------------------------------------------------------
# Ali-CCP and AliExpress samples.
# ---------------------------------------------------------------------------

# (file, rows, click rate, purchase or conversion rate), read off the files.
ALI_CCP_SAMPLES = [
    ("ali_ccp_train_sample.csv", 100, 0.07, 0.01),
    ("ali_ccp_val_sample.csv", 50, 0.06, 0.02),
    ("ali_ccp_test_sample.csv", 50, 0.04, 0.02),
]
ALIEXPRESS_SAMPLES = [
    ("aliexpress_train_sample.csv", 100, 0.6, 0.02),
    ("aliexpress_test_sample.csv", 20, 0.5, 0.1),
]


@pytest.mark.parametrize(
    "name, rows, click, purchase", ALI_CCP_SAMPLES, ids=lambda v: str(v)
)
def test_load_ali_ccp_samples(shared_data, name, rows, click, purchase):
    path = shared_data / "samples" / "ali-ccp" / name
    df = datasets.load_ali_ccp(path)
    independent = pd.read_csv(path)
    assert len(df) == len(independent) == rows
    assert list(df.columns) == list(independent.columns)
    assert df["click"].mean() == pytest.approx(independent["click"].mean())
    assert df["purchase"].mean() == pytest.approx(
        independent["purchase"].mean()
    )
    assert df["click"].mean() == pytest.approx(click)
    assert df["purchase"].mean() == pytest.approx(purchase)
    categorical, dense = datasets.ali_ccp_feature_columns(df)
    assert categorical == datasets.ALI_CCP_CATEGORICAL
    assert dense == datasets.ALI_CCP_DENSE
    for c in datasets.ALI_CCP_LABELS + categorical:
        assert df[c].dtype == "int64", c
        np.testing.assert_array_equal(df[c], independent[c])
    for c in dense:
        assert df[c].dtype == "float32", c
        np.testing.assert_allclose(df[c], independent[c], rtol=1e-6)
    assert datasets.ali_ccp_tasks() == [
        keras_mtl.Task("click"),
        keras_mtl.Task("purchase", space="click"),
    ]


@pytest.mark.parametrize(
    "name, rows, click, conversion", ALIEXPRESS_SAMPLES, ids=lambda v: str(v)
)
def test_load_aliexpress_samples(shared_data, name, rows, click, conversion):
    path = shared_data / "samples" / "aliexpress" / name
    df = datasets.load_aliexpress(path)
    independent = pd.read_csv(path)
    assert len(df) == len(independent) == rows
    assert list(df.columns) == list(independent.columns)
    assert df["click"].mean() == pytest.approx(independent["click"].mean())
    assert df["conversion"].mean() == pytest.approx(
        independent["conversion"].mean()
    )
    assert df["click"].mean() == pytest.approx(click)
    assert df["conversion"].mean() == pytest.approx(conversion)
    ints = ["search_id"] + datasets.ALIEXPRESS_CATEGORICAL
    for c in ints + datasets.ALIEXPRESS_LABELS:
        assert df[c].dtype == "int64", c
        np.testing.assert_array_equal(df[c], independent[c])
    for c in datasets.ALIEXPRESS_NUMERIC:
        assert df[c].dtype == "float32", c
        np.testing.assert_allclose(df[c], independent[c], rtol=1e-6)
    assert datasets.aliexpress_tasks() == [
        keras_mtl.Task("click"),
        keras_mtl.Task("conversion", space="click"),
    ]


@pytest.fixture
def ali_ccp_frame(shared_data):
    path = shared_data / "samples" / "ali-ccp" / "ali_ccp_train_sample.csv"
    return pd.read_csv(path)


def test_load_ali_ccp_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Ali-CCP.*nope\.csv"):
        datasets.load_ali_ccp(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match=r"AliExpress.*nope\.csv"):
        datasets.load_aliexpress(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="`path` must be a path"):
        datasets.load_ali_ccp(None)


def test_load_ali_ccp_wrong_columns(ali_ccp_frame, tmp_path):
    path = tmp_path / "ali.csv"
    ali_ccp_frame.drop(columns=["D853"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"Missing columns: \['D853'\]"):
        datasets.load_ali_ccp(path)
    ali_ccp_frame.assign(extra=1).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"unexpected columns: \['extra'\]"):
        datasets.load_ali_ccp(path)
    # An AliExpress file is not an Ali-CCP file.
    aliexpress = path.parent / "aliexpress.csv"
    pd.DataFrame(columns=datasets.ALI_CCP_LABELS).to_csv(aliexpress)
    with pytest.raises(ValueError, match="search_id"):
        datasets.load_aliexpress(aliexpress)
    path.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        datasets.load_ali_ccp(path)


def test_load_ali_ccp_bad_values(ali_ccp_frame, tmp_path):
    path = tmp_path / "ali.csv"
    frame = ali_ccp_frame.astype({"205": object})
    frame.loc[4, "205"] = None
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"column `205`.*\{4: nan\}"):
        datasets.load_ali_ccp(path)
    frame = ali_ccp_frame.astype({"D508": object})
    frame.loc[2, "D508"] = "high"
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"column `D508`.*\{2: 'high'\}"):
        datasets.load_ali_ccp(path)
    frame = ali_ccp_frame.copy()
    frame.loc[7, "click"] = 2
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"label `click`.*must be 0 or 1"):
        datasets.load_ali_ccp(path)


def test_load_ali_ccp_keeps_and_logs_purchase_without_click(
    ali_ccp_frame, tmp_path, caplog
):
    path = tmp_path / "ali.csv"
    frame = ali_ccp_frame.copy()
    no_click = frame.index[frame["click"] == 0][:3]
    frame.loc[no_click, "purchase"] = 1
    frame.to_csv(path, index=False)
    with caplog.at_level(logging.WARNING, logger="keras_mtl.datasets"):
        df = datasets.load_ali_ccp(path)
    assert len(df) == 100
    assert "3 row(s)" in caplog.text and "purchase=1 but click=0" in caplog.text
