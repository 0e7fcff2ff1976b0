#!/usr/bin/env bash
# Builds {{NAME}}.wasm (world {{WORLD}}) from app.py with componentize-py.
# COMPONENTIZE_PY: the componentize-py to use (default: componentize-py on PATH).
set -euo pipefail
cd "$(dirname "$0")"
cpy=${COMPONENTIZE_PY:-$(command -v componentize-py || true)}
if [ -z "$cpy" ]; then
  echo "build.sh: componentize-py not found: pip install componentize-py, or set COMPONENTIZE_PY" >&2
  exit 1
fi
"$cpy" -d wit -w {{WORLD}} componentize app -o {{NAME}}.wasm >/dev/null
echo "built {{NAME}}.wasm"
