# Two commands for a newcomer: `make run` and `make test`. Each sets up
# .venv on first use (and again whenever pyproject.toml changes): `make run`
# installs only what running needs (`pip install -e .`), `make test` adds the
# test and development tools (`.[test]`).
VENV    ?= .venv
PYTHON  ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
             command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
             && { echo $$p; break; }; done)
BIN     := $(VENV)/bin
RUN_STAMP  := $(VENV)/.krypton-run
TEST_STAMP := $(VENV)/.krypton-test
PYTEST_ARGS ?=

.PHONY: run test lint typecheck unit setup clean tables proto config-docs fuzz fuzz-setup fuzz-corpus

setup: $(TEST_STAMP)

$(RUN_STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 or newer is required" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	@touch $(RUN_STAMP)

$(TEST_STAMP): $(RUN_STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(TEST_STAMP)

run: $(RUN_STAMP)
	$(BIN)/krypton dev

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests scripts fuzz

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

unit: $(TEST_STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck unit

tables: $(TEST_STAMP)
	$(BIN)/python scripts/gen_tables.py

# docs/configuration.md from the configuration schema (src/krypton/config.py).
config-docs: $(TEST_STAMP)
	$(BIN)/python scripts/gen_config_docs.py

# Coverage-guided fuzzing (atheris) of the TTLV decoder, the fast-path scanners
# and the dispatcher: FUZZ_SECONDS per target, starting from the committed
# corpus (fuzz/corpus/<target>, read only); what it finds new goes to
# build/fuzz/corpus/<target>, a crash or hang to build/fuzz/artifacts/<target>/
# (then make it a test in tests/unit/test_fuzz_regressions.py).
# `make fuzz-corpus` rebuilds the seeds and merges them with what the runs
# found into a fresh minimised fuzz/corpus/<target> (libFuzzer -merge=1).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= ttlv fastpath dispatch
FUZZ_FLAGS   ?= -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
FUZZ_BUILD   := build/fuzz

fuzz-setup: $(TEST_STAMP)
	@$(BIN)/python -c 'import atheris' 2>/dev/null || \
		$(BIN)/python -m pip install --quiet -e '.[test,fuzz]'

fuzz: fuzz-setup
	@status=0; for t in $(FUZZ_TARGETS); do \
		mkdir -p $(FUZZ_BUILD)/corpus/$$t $(FUZZ_BUILD)/artifacts/$$t fuzz/corpus/$$t; \
		echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
		$(BIN)/python -m fuzz.fuzz_$$t $(FUZZ_BUILD)/corpus/$$t fuzz/corpus/$$t \
			-max_total_time=$(FUZZ_SECONDS) $(FUZZ_FLAGS) \
			-artifact_prefix=$(FUZZ_BUILD)/artifacts/$$t/ || status=1; \
	done; exit $$status

fuzz-corpus: fuzz-setup
	rm -rf $(FUZZ_BUILD)/seeds && $(BIN)/python -m fuzz.seeds $(FUZZ_BUILD)/seeds
	@for t in $(FUZZ_TARGETS); do \
		rm -rf $(FUZZ_BUILD)/merged/$$t && mkdir -p $(FUZZ_BUILD)/merged/$$t $(FUZZ_BUILD)/corpus/$$t fuzz/corpus/$$t; \
		$(BIN)/python -m fuzz.fuzz_$$t -merge=1 $(FUZZ_BUILD)/merged/$$t fuzz/corpus/$$t \
			$(FUZZ_BUILD)/corpus/$$t $(FUZZ_BUILD)/seeds $(FUZZ_FLAGS) || exit 1; \
		rm -rf fuzz/corpus/$$t && mv $(FUZZ_BUILD)/merged/$$t fuzz/corpus/$$t; \
	done

# The uplink's gRPC/protobuf stubs (and their .pyi) from src/krypton/uplink/v1/uplink.proto.
proto: $(TEST_STAMP)
	VENV=$(VENV) scripts/gen_proto.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
