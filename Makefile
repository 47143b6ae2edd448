# wacloud: `make run` runs the embedded gateway with a demo; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench-ingest bench-inbound clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/wacloud demo --data-dir .wacloud-demo --port $${PORT:-8080}

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

bench-ingest: $(STAMP)
	$(BIN)/python bench/ingest.py

bench-inbound: $(STAMP)
	$(BIN)/python bench/inbound.py

clean:
	rm -rf $(VENV) .wacloud-demo
