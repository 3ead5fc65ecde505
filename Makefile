# The two commands: `make run` (set up + run the service, embedded mode) and `make test`
# (set up + run the whole suite, embedded and PostgreSQL + Redis).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
UV_VERSION := 0.13.8
UV := $(VENV)/bin/uv
BIN := $(VENV)/bin

.PHONY: run serve test lint format migrate worker clean help

help:
	@echo "make run     set up .venv, migrate, start the API (embedded mode by default)"
	@echo "make test    set up .venv with dev tools, run the suite embedded and on PostgreSQL + Redis"
	@echo "make lint    ruff + mypy"

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

lint: $(VENV)/.dev-deps
	$(BIN)/ruff check src tests migrations scripts
	$(BIN)/ruff format --check src tests migrations scripts
	$(BIN)/mypy

format: $(VENV)/.dev-deps
	$(BIN)/ruff format src tests migrations scripts
	$(BIN)/ruff check --fix src tests migrations scripts

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
