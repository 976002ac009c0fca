"""`python -m keras_mtl`: see `keras_mtl.cli`."""

import sys

from keras_mtl.cli import main

if __name__ == "__main__":
    sys.exit(main())
