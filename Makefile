# Two commands a fresh machine needs: `make demo` and `make test`.
# Both create .venv on first use and reuse it afterwards.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.keras-mtl-installed
# torch for the backend tests: a pinned CPU build, never an unpinned one.
TORCH := torch==2.13.0

.PHONY: demo test test-backends lint format clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m keras_mtl demo

# Two workers: CI machines have 2 cores.
test: $(STAMP)
	$(PY) -m pytest -q -n 2

# Layers, losses and metrics again under the torch backend.
test-backends: $(STAMP)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH)
	KERAS_BACKEND=torch $(PY) -m pytest -q -m backend

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache

# Benchmarks against torch-rechub and DeepCTR, in a venv of their own
# (created once; the stamp says it is complete). See docs/BENCHMARKS.md.
# `make bench SUITE=train` (throughput) or `SUITE=serve` (latency).
BENCH_VENV := .bench-venv
SUITE ?= quality

$(BENCH_VENV)/.bench-installed: bench/requirements.txt setup.py
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -r bench/requirements.txt
	$(BENCH_VENV)/bin/python -m pip install --quiet -e .
	touch $@

.PHONY: bench
bench: $(BENCH_VENV)/.bench-installed
	nice -n 10 $(BENCH_VENV)/bin/python bench/run.py --suite $(SUITE)
