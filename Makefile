# The README's two commands: `make pipeline` and `make test`. Each sets up what is missing first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.so8t-installed
PROFILE ?= default
ONLY ?=
ARGS ?=

.PHONY: setup system llama_cpp web pipeline smoke lint test lab clean

setup: $(STAMP) system llama_cpp web

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "so8t needs Python 3.11 (set PYTHON=/path/to/python3.11)")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	$(PY) -m ipykernel install --sys-prefix --name so8t --display-name "Python (so8t)" >/dev/null
	@touch $(STAMP)

system:
	@bash scripts/setup_system.sh

llama_cpp: $(STAMP)
	@bash scripts/setup_llama_cpp.sh $(PY)

# MathJax for the HTML reports (npm, pinned in package.json) into node_modules/
web: system
	@bash scripts/setup_web.sh

pipeline: setup
	$(PY) -m so8t_core.pipeline --profile $(PROFILE) $(if $(ONLY),--only $(ONLY)) $(ARGS)

smoke:
	$(MAKE) pipeline PROFILE=smoke

# Lint, format and type checks (the same as .pre-commit-config.yaml); `make test` runs them first.
lint: $(STAMP)
	$(VENV)/bin/ruff check so8t_core tests bench
	$(VENV)/bin/ruff format --check so8t_core tests bench
	$(VENV)/bin/mypy

test: setup lint
	$(PY) -m pytest -q $(ARGS)

lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=.

clean:
	rm -rf artifacts reports
