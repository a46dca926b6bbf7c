# The two commands of the README:
#   make demo   set up a virtual environment and run the demo (no ROS, no GPU, no weights)
#   make test   set up the same environment and run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

# torch first, pinned: that spec resolves to the CPU wheel and pulls no CUDA packages.
$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[test]'
	touch $@

demo: setup
	$(VENV)/bin/recon-ros demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS) test

bench: setup
	$(PY) benchmarks/bench_model.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
