"""Built-in synthetic datasets and loaders for public ranking data."""

from keras_mtl.datasets.public import ADULT_CATEGORICAL
from keras_mtl.datasets.public import ADULT_LABELS
from keras_mtl.datasets.public import ADULT_NUMERIC
from keras_mtl.datasets.public import ALI_CCP_CATEGORICAL
from keras_mtl.datasets.public import ALI_CCP_DENSE
from keras_mtl.datasets.public import ALI_CCP_LABELS
from keras_mtl.datasets.public import ALIEXPRESS_CATEGORICAL
from keras_mtl.datasets.public import ALIEXPRESS_LABELS
from keras_mtl.datasets.public import ALIEXPRESS_NUMERIC
from keras_mtl.datasets.public import CENSUS_INCOME_CATEGORICAL
from keras_mtl.datasets.public import CENSUS_INCOME_COLUMNS
from keras_mtl.datasets.public import CENSUS_INCOME_LABELS
from keras_mtl.datasets.public import CENSUS_INCOME_NUMERIC
from keras_mtl.datasets.public import adult_tasks
from keras_mtl.datasets.public import ali_ccp_feature_columns
from keras_mtl.datasets.public import ali_ccp_tasks
from keras_mtl.datasets.public import aliexpress_tasks
from keras_mtl.datasets.public import census_income_tasks
from keras_mtl.datasets.public import load_adult
from keras_mtl.datasets.public import load_ali_ccp
from keras_mtl.datasets.public import load_aliexpress
from keras_mtl.datasets.public import load_census_income
from keras_mtl.datasets.synthetic import FUNNEL_LABELS
from keras_mtl.datasets.synthetic import funnel_tasks
from keras_mtl.datasets.synthetic import synthetic_correlated
from keras_mtl.datasets.synthetic import synthetic_funnel

__all__ = [
    "ADULT_CATEGORICAL",
    "ADULT_LABELS",
    "ADULT_NUMERIC",
    "ALIEXPRESS_CATEGORICAL",
    "ALIEXPRESS_LABELS",
    "ALIEXPRESS_NUMERIC",
    "ALI_CCP_CATEGORICAL",
    "ALI_CCP_DENSE",
    "ALI_CCP_LABELS",
    "CENSUS_INCOME_CATEGORICAL",
    "CENSUS_INCOME_COLUMNS",
    "CENSUS_INCOME_LABELS",
    "CENSUS_INCOME_NUMERIC",
    "FUNNEL_LABELS",
    "adult_tasks",
    "ali_ccp_feature_columns",
    "ali_ccp_tasks",
    "aliexpress_tasks",
    "census_income_tasks",
    "funnel_tasks",
    "load_adult",
    "load_ali_ccp",
    "load_aliexpress",
    "load_census_income",
    "synthetic_correlated",
    "synthetic_funnel",
]
