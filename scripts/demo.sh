#!/usr/bin/env bash
# Set up, then run the demo: the local SmolLM2 model behind llama.cpp's OpenAI-compatible
# server, and a demo app wrapped by the middleware. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/llm-middleware demo "$@"
