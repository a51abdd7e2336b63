#!/usr/bin/env bash
# llama.cpp for notebook 04: the GGUF converter (convert_hf_to_gguf.py, its conversion/ package and the bundled
# gguf-py), taken from the pinned llama-cpp-python source distribution into the git-ignored .cache/llama.cpp/,
# and the llama-cpp-python runtime in the venv. Quick when both are already there.
# Usage: bash scripts/setup_llama_cpp.sh [python]   (default .venv/bin/python; paths are from the repo root)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.3.36
PY=${1:-.venv/bin/python}
CACHE=${SO8T_LLAMA_CPP_DIR:-.cache/llama.cpp}
SRC=llama_cpp_python-$VERSION/vendor/llama.cpp

if [ "$(cat "$CACHE/VERSION" 2>/dev/null)" != "$VERSION" ]; then
  echo "fetching llama.cpp's GGUF converter from llama-cpp-python==$VERSION (source distribution) into $CACHE"
  mkdir -p "$(dirname "$CACHE")"
  tmp=$(mktemp -d "$(dirname "$CACHE")/.llama.cpp.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  "$PY" -m pip download -q --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$tmp/sdist"
  tar xzf "$tmp/sdist/llama_cpp_python-$VERSION.tar.gz" -C "$tmp" \
    "$SRC/convert_hf_to_gguf.py" "$SRC/conversion" "$SRC/gguf-py" "$SRC/LICENSE"
  mv "$tmp/$SRC" "$tmp/out"
  echo "$VERSION" > "$tmp/out/VERSION"
  rm -rf "$CACHE"
  mv "$tmp/out" "$CACHE"  # swapped in whole: an interrupted run leaves no half-extracted cache
fi

if ! "$PY" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
  echo "installing llama-cpp-python==$VERSION (builds llama.cpp from source: several minutes the first time)"
  "$PY" -m pip install "llama-cpp-python==$VERSION"
fi
