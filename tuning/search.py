"""Runs a KerasTuner search over the keras_mtl model zoo.

    python tuning/search.py --config tuning/configs/funnel.yaml
    python tuning/search.py --config tuning/configs/adult.yaml --max-trials 5

The same code path as `python -m keras_mtl tune --config ...`; see
tuning/README.md for the config format and what the search writes.
"""

import pathlib
import sys

# Run from a checkout without installing: the repository root first.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from keras_mtl.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
