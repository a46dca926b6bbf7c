# The two commands of the README:
#   make demo   set up a virtual environment and run the demo (no ROS, no GPU, no weights)
#   make test   set up the same environment and run the test suite (all but gpu/ros tests)
# and the quick loop while working:
#   make test-fast   the test suite without the slow tests
# DEMO_ARGS are passed to `recon-ros demo` (e.g. DEMO_ARGS="--frames 300"), PYTEST_ARGS to pytest.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: setup demo test test-fast bench clean

setup: $(VENV)/.installed

# torch first, pinned: that spec resolves to the CPU wheel and pulls no CUDA packages.
$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[test]'
	touch $@

# `python -m recon_ros.cli` is the `recon-ros` command (same entry point) run from this checkout
demo: setup
	$(PY) -m recon_ros.cli demo $(DEMO_ARGS)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS) test

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS) test

bench: setup
	$(PY) benchmarks/bench_model.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
