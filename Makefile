# wacloud: `make run` runs the embedded gateway with a demo; `make test` runs every test.
# Libraries are installed at the versions in constraints.txt (those the suite passed with);
# `make lock` refreshes that file from the newest versions pyproject.toml allows.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := constraints.txt

.PHONY: run test lint lock bench-ingest bench-inbound clean sam aws-build

# aws-sam-cli pins its own boto3 and click, so it lives in a virtualenv of its own; the tests
# run `sam validate` on deploy/aws/template.yaml from there. Where it cannot be installed (no
# package index), `make test` goes on and those tests skip, saying why (they fail under
# WACLOUD_REQUIRE_SERVICES=1).
SAM_VENV := .venv-sam
SAM_STAMP := $(SAM_VENV)/.installed
SAM_REQUIREMENTS := deploy/aws/sam-requirements.txt
# The Lambda functions' code and dependencies, for `sam deploy` (deploy/aws/README.md).
AWS_BUILD := deploy/aws/build
LAMBDA_PYTHON := 3.12
# Lambda's python3.12 runs on Amazon Linux 2023 (glibc 2.34): manylinux_2_28 wheels and older.
LAMBDA_PLATFORMS := --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/wacloud demo --data-dir .wacloud-demo --port $${PORT:-8080}

test: $(STAMP) sam
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadscope $(PYTEST_ARGS)
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

$(SAM_STAMP): $(SAM_REQUIREMENTS)
	rm -rf $(SAM_VENV)
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet -r $(SAM_REQUIREMENTS)
	touch $(SAM_STAMP)

sam:
	@$(MAKE) --no-print-directory $(SAM_STAMP) || { rm -rf $(SAM_VENV); \
	  echo "warning: aws-sam-cli could not be installed in $(SAM_VENV): the sam validate tests will skip"; }

aws-build: $(STAMP)
	rm -rf $(AWS_BUILD)
	$(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir $(AWS_BUILD)/wheels .
	$(BIN)/python -m pip install --quiet --target $(AWS_BUILD)/code -c $(CONSTRAINTS) \
	  $(LAMBDA_PLATFORMS) --implementation cp --python-version $(LAMBDA_PYTHON) \
	  --only-binary=:all: "$$(ls $(AWS_BUILD)/wheels/wacloud-*.whl)[aws]" \
	  'psycopg[binary]' pymysql
	rm -rf $(AWS_BUILD)/wheels
	@echo "$(AWS_BUILD)/code is ready: sam deploy --template-file deploy/aws/template.yaml --guided"

clean:
	rm -rf $(VENV) $(SAM_VENV) $(AWS_BUILD) .wacloud-demo
