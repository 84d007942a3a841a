# Two commands on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench soak aws-smoke clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/quickstart.py

lint: $(STAMP)
	$(BIN)/ruff check starburst_executor tests examples bench
	$(BIN)/ruff format --check starburst_executor tests examples bench

typecheck: $(STAMP)
	$(BIN)/mypy

# Most tests wait on workers and S3 rather than compute: a few pytest workers overlap them.
# On an idle 2-core machine the parallel phase took 264 s with 4 and 306 s with 3, using
# about 1.4 and 1.2 cores; 5 gained nothing (293 s). Since the worker template is shared,
# 4 take about 250 s.
TEST_WORKERS ?= 4

# Tests marked `alone` count S3 requests per task: other tests' load stretches their run
# (more idle polls per task), so they run after the parallel phase, one at a time.
test: lint typecheck
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not alone"
	$(BIN)/python -m pytest -m alone

LITHOPS := bench/.venv-lithops/.installed

$(LITHOPS): bench/requirements-lithops.txt
	$(PYTHON) -m venv bench/.venv-lithops
	bench/.venv-lithops/bin/python -m pip install --quiet -r bench/requirements-lithops.txt
	touch $(LITHOPS)

# Lithops lives in its own virtualenv: it is measured, never a dependency.
bench: $(STAMP) $(LITHOPS)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/run.py
	$(BIN)/python bench/latency.py
	cd bench && ../$(BIN)/python latency_bench.py

soak: $(STAMP)
	$(BIN)/python bench/soak.py

# Opt-in, on your own AWS account (costs cents); never part of `make test`.
aws-smoke: $(STAMP)
	$(BIN)/python bench/aws_smoke.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
