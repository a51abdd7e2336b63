#!/usr/bin/env bash
# The Python side: .venv/ with the pinned packages of pyproject.toml (the package itself editable) and the Jupyter
# kernel `so8t` inside the venv. llama-cpp-python (built from source) is not here: scripts/setup_llama_cpp.sh.
# Usage: bash scripts/setup_venv.sh PYTHON VENV
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=$1
VENV=$2
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "so8t needs Python 3.11 (set PYTHON=/path/to/python3.11)")'
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e .
"$VENV/bin/python" -m ipykernel install --sys-prefix --name so8t --display-name "Python (so8t)" >/dev/null
