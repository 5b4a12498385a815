#!/usr/bin/env bash
# Set up (if needed) and run the whole offline test suite plus lint (ruff) and types (mypy). Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests scripts
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
