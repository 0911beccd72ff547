# computemesh: `make demo` runs a local mesh doing real work; `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TOOLS := .tools
ANVIL_PACKAGE := @foundry-rs/anvil@1.7.1

.PHONY: setup demo test lint typecheck unit integration bench clean

$(STAMP): pyproject.toml
	@command -v bwrap >/dev/null 2>&1 || scripts/install-system-deps
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,zk]'
	npm install --prefix $(TOOLS) --no-save --no-audit --no-fund --ignore-scripts --loglevel=error $(ANVIL_PACKAGE)
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/cmesh demo --nodes 3 --jobs 10

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -m "not integration" -q

integration: $(STAMP)
	$(BIN)/pytest -m integration -q

test: $(STAMP) lint typecheck
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/e2e.py --quick

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
