# wacloud: `make run` runs the embedded gateway with a demo; `make test` runs every test.
# Libraries are installed at the versions in constraints.txt (those the suite passed with);
# `make lock` refreshes that file from the newest versions pyproject.toml allows.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := constraints.txt

.PHONY: run test lint lock bench-ingest bench-inbound clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/wacloud demo --data-dir .wacloud-demo --port $${PORT:-8080}

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup $(PYTEST_ARGS)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

bench-ingest: $(STAMP)
	$(BIN)/python bench/ingest.py

bench-inbound: $(STAMP)
	$(BIN)/python bench/inbound.py

# A fresh venv gets the newest versions pyproject.toml allows; its `pip freeze` (wacloud itself
# left out) becomes constraints.txt. Run `make test` after it: the stamp sees the new file.
lock:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed")'
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install --quiet --upgrade pip; \
	"$$tmp/venv/bin/python" -m pip install --quiet -e '.[dev]'; \
	{ echo "# The versions the test suite passed with; \`make\` installs exactly these."; \
	  echo "# Refreshed by \`make lock\` (newest versions pyproject.toml allows), then \`make test\`."; \
	  echo "# Python $$("$$tmp/venv/bin/python" -c 'import platform; print(platform.python_version())')"; \
	  "$$tmp/venv/bin/python" -m pip freeze --exclude wacloud; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	@echo "$(CONSTRAINTS) refreshed: run make test, then commit it"

clean:
	rm -rf $(VENV) .wacloud-demo
