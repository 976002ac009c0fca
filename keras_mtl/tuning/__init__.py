"""KerasTuner searches over the model zoo, with the trade-off across tasks.

- `MultiTaskHyperModel`: a `keras_tuner.HyperModel` over every
  `keras_mtl.models` architecture; searchable architecture, experts,
  units, PLE levels, dropout, learning rate, per-task loss weights and the
  loss-weighting strategy (`keras_mtl.training.compile`). Its objective is
  a weighted mean of per-task validation metrics (`val_weighted_auc`),
  logged by `WeightedTaskMetric`.
- `pareto_front`, `trials_table`, `plot_pareto`: the Pareto front of the
  trials across tasks, as CSV and PNG.
- `run_search(config)`: the resumable search behind `keras-mtl tune` and
  `tuning/search.py`; `format_summary(result)` prints its summary.
"""

from keras_mtl.tuning.hypermodel import DEFAULT_SEARCH_SPACE
from keras_mtl.tuning.hypermodel import METRIC_DIRECTIONS
from keras_mtl.tuning.hypermodel import MultiTaskHyperModel
from keras_mtl.tuning.hypermodel import WeightedTaskMetric
from keras_mtl.tuning.hypermodel import check_search_space
from keras_mtl.tuning.pareto import pareto_front
from keras_mtl.tuning.pareto import plot_pareto
from keras_mtl.tuning.pareto import trials_table
from keras_mtl.tuning.search import ALGORITHMS
from keras_mtl.tuning.search import SearchResult
from keras_mtl.tuning.search import format_summary
from keras_mtl.tuning.search import make_tuner
from keras_mtl.tuning.search import resolve_tuning_config
from keras_mtl.tuning.search import run_search

__all__ = [
    "ALGORITHMS",
    "DEFAULT_SEARCH_SPACE",
    "METRIC_DIRECTIONS",
    "MultiTaskHyperModel",
    "SearchResult",
    "WeightedTaskMetric",
    "check_search_space",
    "format_summary",
    "make_tuner",
    "pareto_front",
    "plot_pareto",
    "resolve_tuning_config",
    "run_search",
    "trials_table",
]
