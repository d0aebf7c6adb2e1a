# The two entry points of the README: `make demo` and `make test`.
# Both create the virtual environment from this project's own files when it is missing.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.chanstat-installed
RUN_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: demo test lint test-slow benchmarks env clean

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	# torch==2.13.0 is pinned in pyproject.toml; pip takes the local CPU build.
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip check
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/chanstat demo --out $(RUN_DIR) --force

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# lint and format check (ruff) and the type checker (mypy) on the package
lint: $(STAMP)
	$(VENV)/bin/ruff check chanstat tests analyses reports
	$(VENV)/bin/ruff format --check chanstat
	$(VENV)/bin/mypy

test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

benchmarks: $(STAMP)
	$(PY) analyses/benchmarks/attribution_speed.py
	$(PY) analyses/benchmarks/dac_speed.py
	$(PY) analyses/benchmarks/scale.py --quick

clean:
	rm -rf $(VENV) runs .pytest_cache
