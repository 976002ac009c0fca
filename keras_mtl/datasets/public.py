"""Loaders for public multi-task datasets in their published formats.

The package never ships these files: each loader takes the directory or
file the user downloaded, checks it against the published format and
returns pandas DataFrames with clean dtypes and 0/1 labels. Nothing is
dropped silently; a file that does not match raises an error naming the
file, the column and what was expected.

- UCI Adult and UCI Census-Income (KDD): income and never-married, the
  two-task pair of the MMoE paper's census experiments.
- Ali-CCP (ESMM paper), in the preprocessed CSV format of torch-rechub:
  click and purchase.
- AliExpress (AITM paper), in the same format: click and conversion.
"""

import logging
import os
import pathlib

import numpy as np
import pandas as pd

from keras_mtl.task import Task

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------
# UCI Adult.
# --------------------------------------------------------------------------
ADULT_URL = "https://archive.ics.uci.edu/dataset/2/adult"
ADULT_COLUMNS = [
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
ADULT_NUMERIC = [
    "age",
    "fnlwgt",
    "education_num",
    "capital_gain",
    "capital_loss",
    "hours_per_week",
]
ADULT_CATEGORICAL = [
    "workclass",
    "education",
    "occupation",
    "relationship",
    "race",
    "sex",
    "native_country",
]
ADULT_LABELS = ["income", "never_married"]

# --------------------------------------------------------------------------
# UCI Census-Income (KDD), attribute list of census-income.names.
# --------------------------------------------------------------------------
CENSUS_INCOME_URL = "https://archive.ics.uci.edu/dataset/117/census+income+kdd"
CENSUS_INCOME_COLUMNS = [
    "age",
    "class_of_worker",
    "detailed_industry_recode",
    "detailed_occupation_recode",
    "education",
    "wage_per_hour",
    "enroll_in_edu_inst_last_wk",
    "marital_stat",
    "major_industry_code",
    "major_occupation_code",
    "race",
    "hispanic_origin",
    "sex",
    "member_of_a_labor_union",
    "reason_for_unemployment",
    "full_or_part_time_employment_stat",
    "capital_gains",
    "capital_losses",
    "dividends_from_stocks",
    "tax_filer_stat",
    "region_of_previous_residence",
    "state_of_previous_residence",
    "detailed_household_and_family_stat",
    "detailed_household_summary_in_household",
    "instance_weight",
    "migration_code_change_in_msa",
    "migration_code_change_in_reg",
    "migration_code_move_within_reg",
    "live_in_this_house_1_year_ago",
    "migration_prev_res_in_sunbelt",
    "num_persons_worked_for_employer",
    "family_members_under_18",
    "country_of_birth_father",
    "country_of_birth_mother",
    "country_of_birth_self",
    "citizenship",
    "own_business_or_self_employed",
    "fill_inc_questionnaire_for_veterans_admin",
    "veterans_benefits",
    "weeks_worked_in_year",
    "year",
    "income",
]
# "continuous" in census-income.names (the instance weight is not a feature).
CENSUS_INCOME_NUMERIC = [
    "age",
    "wage_per_hour",
    "capital_gains",
    "capital_losses",
    "dividends_from_stocks",
    "num_persons_worked_for_employer",
    "weeks_worked_in_year",
]
# "nominal" in census-income.names, the numeric codes included.
CENSUS_INCOME_CATEGORICAL = [
    c
    for c in CENSUS_INCOME_COLUMNS
    if c not in CENSUS_INCOME_NUMERIC
    and c not in ("instance_weight", "marital_stat", "income")
]
CENSUS_INCOME_LABELS = ["income", "never_married"]

# --------------------------------------------------------------------------
# Ali-CCP (ESMM) and AliExpress (AITM), preprocessed CSV of torch-rechub.
# --------------------------------------------------------------------------
ALI_CCP_URL = "https://tianchi.aliyun.com/dataset/408"
ALI_CCP_LABELS = ["click", "purchase"]
ALI_CCP_CATEGORICAL = [
    "101",
    "121",
    "122",
    "124",
    "125",
    "126",
    "127",
    "128",
    "129",
    "205",
    "206",
    "207",
    "210",
    "216",
    "508",
    "509",
    "702",
    "853",
    "301",
    "109_14",
    "110_14",
    "127_14",
    "150_14",
]
ALI_CCP_DENSE = [
    "D109_14",
    "D110_14",
    "D127_14",
    "D150_14",
    "D508",
    "D509",
    "D702",
    "D853",
]

ALIEXPRESS_URL = "https://tianchi.aliyun.com/dataset/74690"
ALIEXPRESS_CATEGORICAL = [f"categorical_{k}" for k in range(1, 17)]
ALIEXPRESS_NUMERIC = [f"numerical_{k}" for k in range(1, 64)]
ALIEXPRESS_LABELS = ["click", "conversion"]
ALIEXPRESS_COLUMNS = (
    ["search_id"] + ALIEXPRESS_CATEGORICAL + ALIEXPRESS_NUMERIC
) + ALIEXPRESS_LABELS


# --------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------
def _as_path(name, value):
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(
            f"`{name}` must be a path (str or os.PathLike). "
            f"Received: {name}={value!r}"
        )
    return pathlib.Path(value)


def _find_file(data_dir, filename, dataset, url):
    """`data_dir / filename`, or its uncompressed twin if only that exists."""
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"{dataset}: `data_dir` must be an existing directory holding "
            f"{filename}. Received: data_dir='{data_dir}'"
        )
    candidates = [data_dir / filename]
    if filename.endswith(".gz"):
        candidates.append(data_dir / filename[: -len(".gz")])
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{dataset}: expected the file {candidates[0]}"
        + (f" (or {candidates[1].name})" if len(candidates) > 1 else "")
        + f" as published at {url}; it is not there."
    )


def _check_file(path, dataset, url):
    if not path.is_file():
        raise FileNotFoundError(
            f"{dataset}: expected a CSV file at {path} (format of {url}, "
            "preprocessed by torch-rechub); it does not exist."
        )
    return path


def _first_bad(series, bad_mask, limit=5):
    rows = np.flatnonzero(bad_mask.to_numpy())[:limit]
    return {int(r): series.iloc[r] for r in rows}


def _read_headerless(path, columns, skiprows, dataset):
    """Reads a comma + space separated UCI file, every field as a string.

    Only `?` and an empty field mean missing (`NA` is a real value in
    Census-Income).
    """
    try:
        df = pd.read_csv(
            path,
            header=None,
            skiprows=skiprows,
            skipinitialspace=True,
            dtype=str,
            na_values=["?", ""],
            keep_default_na=False,
            skip_blank_lines=True,
        )
    except pd.errors.ParserError as e:
        raise ValueError(
            f"{dataset}: {path} does not have {len(columns)} comma-separated "
            f"fields on every line: {e}"
        ) from e
    except pd.errors.EmptyDataError as e:
        raise ValueError(f"{dataset}: {path} holds no rows.") from e
    if df.shape[1] != len(columns):
        raise ValueError(
            f"{dataset}: {path} must have {len(columns)} comma-separated "
            f"fields per line ({', '.join(columns)}); its first line has "
            f"{df.shape[1]}."
        )
    df.columns = columns
    # Short lines are padded with NaN by pandas: the label is missing then.
    short = df[columns[-1]].isna()
    if short.any():
        first = int(np.flatnonzero(short.to_numpy())[0]) + skiprows + 1
        raise ValueError(
            f"{dataset}: {path} has {int(short.sum())} line(s) with fewer "
            f"than {len(columns)} fields or no `{columns[-1]}` value (first "
            f"at line {first}). Rows are never dropped silently; fix the "
            "file."
        )
    return df


def _binary_from_text(df, column, positive, negative, path, dataset):
    """1 / 0 from text labels; a trailing `.` (UCI test files) is ignored."""
    text = df[column].str.rstrip(".")
    pos = text == positive
    neg = text == negative
    bad = ~(pos | neg)
    if bad.any():
        raise ValueError(
            f"{dataset}: column `{column}` of {path} must be '{positive}' or "
            f"'{negative}' (optionally ending in '.'); {int(bad.sum())} "
            f"value(s) are not, e.g. (row: value) "
            f"{_first_bad(df[column], bad)}."
        )
    return pos.astype("int64")


def _census_frame(
    raw, path, dataset, categorical, marital, never, income_values
):
    """Typed features plus `income` and `never_married` labels."""
    if raw[marital].isna().any():
        bad = raw[marital].isna()
        raise ValueError(
            f"{dataset}: column `{marital}` of {path} has {int(bad.sum())} "
            "missing value(s); the `never_married` label needs it (first "
            f"rows: {np.flatnonzero(bad.to_numpy())[:5].tolist()})."
        )
    out = {}
    for column in raw.columns:
        if column in (marital, "income"):
            continue
        if column in categorical:
            out[column] = raw[column].astype("str")
        else:
            values = _to_dense(raw[column], column, path, dataset)
            out[column] = values.astype("float64")
    out["income"] = _binary_from_text(
        raw, "income", *income_values, path, dataset
    )
    out["never_married"] = (raw[marital] == never).astype("int64")
    df = pd.DataFrame(out, index=raw.index)
    logger.info("%s: loaded %d rows from %s", dataset, len(df), path)
    return df


def _check_columns(df, expected, path, dataset):
    columns = [str(c) for c in df.columns]
    missing = [c for c in expected if c not in columns]
    unexpected = [c for c in columns if c not in expected]
    if missing or unexpected:
        raise ValueError(
            f"{dataset}: {path} does not have the expected header. "
            f"Missing columns: {missing}; unexpected columns: {unexpected}. "
            f"Expected (any order): {', '.join(expected)}."
        )


def _to_int64(series, column, path, dataset):
    values = pd.to_numeric(series, errors="coerce")
    bad = values.isna() | (values != np.round(values))
    if bad.any():
        raise ValueError(
            f"{dataset}: column `{column}` of {path} must hold integers "
            f"with no missing value; {int(bad.sum())} value(s) do not, e.g. "
            f"(row: value) {_first_bad(series, bad)}."
        )
    return values.astype("int64")


def _to_dense(series, column, path, dataset):
    values = pd.to_numeric(series, errors="coerce")
    bad = values.isna() & series.notna()
    if bad.any():
        raise ValueError(
            f"{dataset}: column `{column}` of {path} must be numeric; "
            f"{int(bad.sum())} value(s) are not, e.g. (row: value) "
            f"{_first_bad(series, bad)}."
        )
    return values


def _check_binary(df, columns, path, dataset):
    for column in columns:
        bad = ~df[column].isin([0, 1])
        if bad.any():
            raise ValueError(
                f"{dataset}: label `{column}` of {path} must be 0 or 1; "
                f"{int(bad.sum())} value(s) are not, e.g. (row: value) "
                f"{_first_bad(df[column], bad)}."
            )


def _read_csv_with_header(path, dtypes, dataset):
    """Reads a CSV whose header must hold exactly the columns of `dtypes`.

    The fast path parses each column straight into its dtype; when that
    fails the file is read again as text to name the column and the rows
    at fault.
    """
    expected = list(dtypes)
    try:
        header = pd.read_csv(path, nrows=0)
    except pd.errors.EmptyDataError as e:
        raise ValueError(
            f"{dataset}: {path} is empty; expected a header of "
            f"{len(expected)} columns."
        ) from e
    _check_columns(header, expected, path, dataset)
    try:
        return pd.read_csv(
            path, dtype=dtypes, keep_default_na=False, na_values=[""]
        )
    except (ValueError, TypeError, OverflowError) as e:
        reason = e
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.ParserError as e:
        raise ValueError(
            f"{dataset}: {path} is not a well-formed CSV with "
            f"{len(expected)} columns: {e}"
        ) from e
    for column, dtype in dtypes.items():
        text = raw[column].mask(raw[column].str.strip() == "")
        if dtype == "int64":
            _to_int64(text, column, path, dataset)
        else:
            _to_dense(text, column, path, dataset)
    raise ValueError(f"{dataset}: could not read {path}: {reason}")


def _log_spaceless(df, label, space, path, dataset):
    """Logs rows whose post-click label is 1 without a click (kept)."""
    odd = int(((df[label] == 1) & (df[space] == 0)).sum())
    if odd:
        logger.warning(
            "%s: %d row(s) of %s have %s=1 but %s=0; they are kept.",
            dataset,
            odd,
            path,
            label,
            space,
        )


# --------------------------------------------------------------------------
# Loaders.
# --------------------------------------------------------------------------
def load_adult(data_dir):
    """Loads UCI Adult as the two-task income / never-married problem.

    Reads `adult.data.gz` (32,561 rows) and `adult.test.gz` (16,281 rows)
    as published (uncompressed `adult.data` / `adult.test` also work): no
    header, fields separated by `", "`, `?` for a missing value, and in the
    test file a first line `|1x3 Cross validator` and labels ending in `.`.
    The labels are those of the MMoE paper's census experiment: `income`
    (1 if `>50K`) and `never_married` (1 if marital status is
    `Never-married`); marital status and the income text are removed from
    the features so neither task leaks into the other.

    Args:
        data_dir: str or path. Directory holding the two files.

    Returns:
        A tuple `(train_df, test_df)`. Columns: the numeric features
        `ADULT_NUMERIC` (float64) and categorical features
        `ADULT_CATEGORICAL` (str, NaN where missing) in file order, then
        the int64 labels `income` and `never_married`.

    Example:

    >>> train, test = keras_mtl.datasets.load_adult("data/adult")
    >>> tasks = keras_mtl.datasets.adult_tasks()
    >>> features = keras_mtl.infer_features(
    ...     train, labels=keras_mtl.datasets.ADULT_LABELS)

    References:
        - [Becker and Kohavi, 1996. Adult, UCI Machine Learning Repository](
          https://archive.ics.uci.edu/dataset/2/adult)
        - [Ma et al., 2018. Modeling Task Relationships in Multi-task
          Learning with Multi-gate Mixture-of-Experts](
          https://dl.acm.org/doi/10.1145/3219819.3220007)
    """
    data_dir = _as_path("data_dir", data_dir)
    frames = []
    for filename, skiprows in (("adult.data.gz", 0), ("adult.test.gz", 1)):
        path = _find_file(data_dir, filename, "Adult", ADULT_URL)
        raw = _read_headerless(path, ADULT_COLUMNS, skiprows, "Adult")
        frames.append(
            _census_frame(
                raw,
                path,
                "Adult",
                ADULT_CATEGORICAL,
                marital="marital_status",
                never="Never-married",
                income_values=(">50K", "<=50K"),
            )
        )
    return frames[0], frames[1]


def load_census_income(data_dir):
    """Loads UCI Census-Income (KDD) as the MMoE paper's two-task problem.

    Reads `census-income.data.gz` (199,523 rows) and
    `census-income.test.gz` (99,762 rows) as published (uncompressed names
    also work): no header, 42 fields separated by `", "`, `?` for a
    missing value (the string `NA` is a real value of `hispanic_origin`),
    labels `- 50000.` and `50000+.`. Columns are named after the attribute
    list of `census-income.names` (`CENSUS_INCOME_COLUMNS`). As in the
    MMoE paper the tasks are `income` (1 for `50000+.`) and
    `never_married` (1 if marital status is `Never married`), and marital
    status is removed from the features. `instance_weight` (the survey's
    sampling weight) is kept but is not a feature: use it as a sample
    weight or leave it out.

    Args:
        data_dir: str or path. Directory holding the two files.

    Returns:
        A tuple `(train_df, test_df)`. Columns in file order: the features
        `CENSUS_INCOME_NUMERIC` (float64) and `CENSUS_INCOME_CATEGORICAL`
        (str, numeric codes included, NaN where missing), `instance_weight`
        (float64), then the int64 labels `income` and `never_married`.

    Example:

    >>> train, test = keras_mtl.datasets.load_census_income("data/census")
    >>> features = keras_mtl.infer_features(
    ...     train,
    ...     labels=keras_mtl.datasets.CENSUS_INCOME_LABELS,
    ...     exclude=["instance_weight"])

    References:
        - [Census-Income (KDD), UCI Machine Learning Repository](
          https://archive.ics.uci.edu/dataset/117/census+income+kdd)
        - [Ma et al., 2018. Modeling Task Relationships in Multi-task
          Learning with Multi-gate Mixture-of-Experts](
          https://dl.acm.org/doi/10.1145/3219819.3220007)
    """
    data_dir = _as_path("data_dir", data_dir)
    frames = []
    for filename in ("census-income.data.gz", "census-income.test.gz"):
        path = _find_file(
            data_dir, filename, "Census-Income", CENSUS_INCOME_URL
        )
        raw = _read_headerless(path, CENSUS_INCOME_COLUMNS, 0, "Census-Income")
        frames.append(
            _census_frame(
                raw,
                path,
                "Census-Income",
                CENSUS_INCOME_CATEGORICAL,
                marital="marital_stat",
                never="Never married",
                income_values=("50000+", "- 50000"),
            )
        )
    return frames[0], frames[1]


def load_ali_ccp(path):
    """Loads one Ali-CCP CSV (train, validation or test) as preprocessed.

    Ali-CCP is the public click / conversion log of Taobao released with
    the ESMM paper. This reads the CSV produced by torch-rechub's
    preprocessing: header `click,purchase,` then the categorical id
    columns `101 ... 301, 109_14 ... 150_14` (`ALI_CCP_CATEGORICAL`) and the
    dense columns `D109_14 ... D853` (`ALI_CCP_DENSE`). The header must
    hold exactly these columns. A purchase without a click is impossible in
    the funnel; such rows are kept and their count is logged.

    Args:
        path: str or path. The CSV file.

    Returns:
        A DataFrame with the original column names: labels `click` and
        `purchase` (int64 0/1), categorical ids (int64) and dense features
        (float32, NaN where empty).

    Example:

    >>> train = keras_mtl.datasets.load_ali_ccp("data/ali_ccp_train.csv")
    >>> categorical, dense = keras_mtl.datasets.ali_ccp_feature_columns(
    ...     train)
    >>> tasks = keras_mtl.datasets.ali_ccp_tasks()

    References:
        - [Ma et al., 2018. Entire Space Multi-Task Model: An Effective
          Approach for Estimating Post-Click Conversion Rate](
          https://arxiv.org/abs/1804.07931)
        - [Ali-CCP on Tianchi](https://tianchi.aliyun.com/dataset/408)
        - [torch-rechub](https://github.com/datawhalechina/torch-rechub)
    """
    dataset = "Ali-CCP"
    path = _check_file(_as_path("path", path), dataset, ALI_CCP_URL)
    dtypes = dict.fromkeys(ALI_CCP_LABELS + ALI_CCP_CATEGORICAL, "int64")
    dtypes.update(dict.fromkeys(ALI_CCP_DENSE, "float32"))
    df = _read_csv_with_header(path, dtypes, dataset)
    _check_binary(df, ALI_CCP_LABELS, path, dataset)
    _log_spaceless(df, "purchase", "click", path, dataset)
    logger.info("%s: loaded %d rows from %s", dataset, len(df), path)
    return df


def ali_ccp_feature_columns(df):
    """Splits the feature columns of a loaded Ali-CCP frame by kind.

    Dense columns are those whose name starts with `D`; every other column
    except the labels is a categorical id.

    Args:
        df: pandas DataFrame. A frame returned by `load_ali_ccp`.

    Returns:
        A tuple `(categorical, dense)` of column-name lists, in frame order.

    Example:

    >>> df = keras_mtl.datasets.load_ali_ccp("data/ali_ccp_train.csv")
    >>> categorical, dense = keras_mtl.datasets.ali_ccp_feature_columns(df)
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(
            f"`df` must be a pandas DataFrame. Received: {type(df).__name__}"
        )
    missing = [c for c in ALI_CCP_LABELS if c not in df.columns]
    if missing:
        raise ValueError(
            f"`df` is not an Ali-CCP frame: label columns {missing} are "
            f"missing. Columns: {list(df.columns)}"
        )
    features = [str(c) for c in df.columns if c not in ALI_CCP_LABELS]
    dense = [c for c in features if c.startswith("D")]
    categorical = [c for c in features if not c.startswith("D")]
    return categorical, dense


def ali_ccp_tasks():
    """The tasks of Ali-CCP: click, and purchase on clicked impressions.

    Returns:
        `[Task("click"), Task("purchase", space="click")]`.

    Example:

    >>> tasks = keras_mtl.datasets.ali_ccp_tasks()
    """
    return [Task("click"), Task("purchase", space="click")]


def load_aliexpress(path):
    """Loads one AliExpress CSV (one country, train or test) as preprocessed.

    AliExpress is the public search log released with the AITM paper. This
    reads the CSV produced by torch-rechub's preprocessing: `search_id`,
    `categorical_1 ... categorical_16`, `numerical_1 ... numerical_63`,
    `click`, `conversion`. The header must hold exactly these columns. A
    conversion without a click is impossible in the funnel; such rows are
    kept and their count is logged.

    Args:
        path: str or path. The CSV file.

    Returns:
        A DataFrame in file column order: `search_id` and the categorical
        ids (int64), numerical features (float32, NaN where empty) and the
        labels `click` and `conversion` (int64 0/1).

    Example:

    >>> train = keras_mtl.datasets.load_aliexpress("data/AliExpress_NL.csv")
    >>> features = keras_mtl.infer_features(
    ...     train,
    ...     labels=keras_mtl.datasets.ALIEXPRESS_LABELS,
    ...     exclude=["search_id"])

    References:
        - [Xi et al., 2021. Modeling the Sequential Dependence among
          Audience Multi-step Conversions with Multi-task Learning in
          Targeted Display Advertising](https://arxiv.org/abs/2105.08489)
        - [AliExpress on Tianchi](https://tianchi.aliyun.com/dataset/74690)
        - [torch-rechub](https://github.com/datawhalechina/torch-rechub)
    """
    dataset = "AliExpress"
    path = _check_file(_as_path("path", path), dataset, ALIEXPRESS_URL)
    dtypes = dict.fromkeys(ALIEXPRESS_COLUMNS, "int64")
    dtypes.update(dict.fromkeys(ALIEXPRESS_NUMERIC, "float32"))
    df = _read_csv_with_header(path, dtypes, dataset)
    _check_binary(df, ALIEXPRESS_LABELS, path, dataset)
    _log_spaceless(df, "conversion", "click", path, dataset)
    logger.info("%s: loaded %d rows from %s", dataset, len(df), path)
    return df


def aliexpress_tasks():
    """The tasks of AliExpress: click, and conversion on clicked rows.

    Returns:
        `[Task("click"), Task("conversion", space="click")]`.

    Example:

    >>> tasks = keras_mtl.datasets.aliexpress_tasks()
    """
    return [Task("click"), Task("conversion", space="click")]


def adult_tasks():
    """The two tasks of `load_adult`: income and never-married.

    Returns:
        `[Task("income"), Task("never_married")]`.

    Example:

    >>> tasks = keras_mtl.datasets.adult_tasks()
    """
    return [Task("income"), Task("never_married")]


def census_income_tasks():
    """The two tasks of `load_census_income`: income and never-married.

    Returns:
        `[Task("income"), Task("never_married")]`.

    Example:

    >>> tasks = keras_mtl.datasets.census_income_tasks()
    """
    return [Task("income"), Task("never_married")]
