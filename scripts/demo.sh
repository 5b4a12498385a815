#!/usr/bin/env bash
# Set up (if needed) and run the whole local lifecycle offline: build a tiny chat model,
# prepare the shipped chat data, LoRA fine-tune, register in MLflow, serve, invoke,
# evaluate before/after, tear down. Extra arguments go to `amlft run` (e.g. --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/amlft run "$@"
