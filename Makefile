# slmkit: every target runs the idempotent set-up first (prints "cached" for each done step).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# two pytest workers, whole test files each (module-scoped servers and runs stay shared): the
# suite waits on child processes (servers, CLI imports) much of the time, so 2 cores fit 2 workers
TEST_WORKERS ?= 2

.PHONY: setup demo test test-fast bench lint docs-cli

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit $$?; done

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts
	$(VENV)/bin/mypy

docs-cli: setup
	$(PY) scripts/gen_cli_docs.py > docs/cli.md
