# The two commands: `make run` (set up + run the service, embedded mode) and `make test`
# (set up + run the whole suite, embedded and PostgreSQL + Redis).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
UV_VERSION := 0.13.8
UV := $(VENV)/bin/uv
BIN := $(VENV)/bin

.PHONY: run serve test test-fast lint format migrate worker clean help

help:
	@echo "make run     set up .venv, migrate, start the API (embedded mode by default)"
	@echo "make test    set up .venv with dev tools, run the suite embedded and on PostgreSQL + Redis"
	@echo "make test-fast  the suite without the slow tests (real processes, CLI, reliability), both modes"
	@echo "make lint    ruff + mypy + the import contracts (pyproject.toml) + the mode-check grep"
	@echo "make postman run the Postman collection with newman against a fresh throwaway server"
	@echo "make soak    the long reliability runs (GB_SOAK=1), both modes"
	@echo "make vendor-web  fetch the web client's pinned browser code (npm), record it in VERSIONS"
	@echo "make bench   benchmarks (one run, < 20 min): throughput, latency, SSE streams, replies, the TTFT SLO; see bench/README.md"
	@echo "make bench-storm | bench-coldstart | bench-scale  a send storm's bloat; cold start; CPU per message at 10k/10M rows, 10/10,000 queued (~40 min)"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)

$(UV): | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

# Installs exactly what uv.lock pins (and the project itself, editable).
$(VENV)/.run-deps: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --inexact --no-progress --quiet
	@touch $@

$(VENV)/.dev-deps: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --inexact --no-progress --quiet --extra dev
	@touch $@ $(VENV)/.run-deps

run: $(VENV)/.run-deps
	$(BIN)/gemini-backend migrate
	exec $(BIN)/gemini-backend serve --no-migrate

migrate: $(VENV)/.run-deps
	$(BIN)/gemini-backend migrate

worker: $(VENV)/.run-deps
	exec $(BIN)/gemini-backend worker

test: $(VENV)/.dev-deps
	$(BIN)/python scripts/run_tests.py $(PYTEST_ARGS)

# The local loop: everything but the tests marked `slow` (tests/README.md), both modes.
test-fast: $(VENV)/.dev-deps
	GB_TEST_MODE_FREE_ONCE=1 GB_TEST_PROCESSES=2 $(BIN)/python scripts/run_tests.py -m "not slow" $(PYTEST_ARGS)

# The long versions of the reliability suite and the shuffled webhook orders (tests/README.md):
# 100 quota-race trials, 100 shuffles per scenario, 2,000 SSE streams, 1,000-connection floods,
# 200 fuzz examples per operation, 400 tree property examples and 20 concurrent tree trials;
# embedded, then PostgreSQL + Redis.
.PHONY: soak
soak: $(VENV)/.dev-deps
	GB_SOAK=1 $(BIN)/python scripts/run_tests.py --timeout=1800 tests/reliability tests/billing/test_webhook.py tests/chat/test_tree_properties.py $(PYTEST_ARGS)

lint: $(VENV)/.dev-deps
	$(BIN)/ruff check src tests migrations scripts bench
	$(BIN)/ruff format --check src tests migrations scripts bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/python scripts/check_modes.py

format: $(VENV)/.dev-deps
	$(BIN)/ruff format src tests migrations scripts bench
	$(BIN)/ruff check --fix src tests migrations scripts bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# The Postman collection (postman/) run by newman, pinned in postman/package-lock.json and
# installed into postman/node_modules (git-ignored), against a fresh throwaway server.
NEWMAN_STAMP := postman/node_modules/.installed

$(NEWMAN_STAMP): postman/package.json postman/package-lock.json
	npm ci --prefix postman --no-audit --no-fund
	@touch $@

.PHONY: postman
postman: $(VENV)/.run-deps $(NEWMAN_STAMP)
	$(BIN)/python scripts/run_postman.py $(NEWMAN_ARGS)

# Benchmarks (bench/README.md): starts its own processes, PostgreSQL database and Redis prefix,
# removes them at the end. `make bench BENCH_ARGS="--profile"` adds py-spy flame graphs.
.PHONY: bench
bench: $(VENV)/.run-deps
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# A send storm and the HOT updates and dead rows it leaves; a process's time to its first /health;
# PostgreSQL and worker CPU per message at 10k and 10M rows and 10 and 10,000 queued replies,
# with the hot statements' plans (its own throwaway PostgreSQL instance).
.PHONY: bench-storm bench-coldstart bench-scale
bench-storm: $(VENV)/.run-deps
	$(BIN)/python -m bench.storm $(BENCH_ARGS)

bench-coldstart: $(VENV)/.run-deps
	$(BIN)/python -m bench.coldstart $(BENCH_ARGS)

bench-scale: $(VENV)/.run-deps
	$(BIN)/python -m bench.scale $(BENCH_ARGS)

# The web client's third-party browser code (marked, DOMPurify; axe-core for its tests), pinned
# in scripts/vendor_web.py: `vendor-web` fetches it with npm and writes the files and VERSIONS,
# `vendor-web-check` fetches it again and fails unless the committed files are the same.
.PHONY: vendor-web vendor-web-check
vendor-web:
	$(PYTHON) scripts/vendor_web.py

vendor-web-check:
	$(PYTHON) scripts/vendor_web.py --check
