# Two commands for a newcomer: `make run` and `make test`. Each sets up
# .venv on first use (and again whenever pyproject.toml changes).
VENV    ?= .venv
PYTHON  ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
             command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
             && { echo $$p; break; }; done)
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.krypton-installed
PYTEST_ARGS ?=

.PHONY: run test lint typecheck unit setup clean tables proto

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 or newer is required" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/krypton dev

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck unit

tables: $(STAMP)
	$(BIN)/python scripts/gen_tables.py

# The uplink's gRPC/protobuf stubs (and their .pyi) from src/krypton/uplink/v1/uplink.proto.
proto: $(STAMP)
	VENV=$(VENV) scripts/gen_proto.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
