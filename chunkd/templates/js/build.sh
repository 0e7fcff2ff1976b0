#!/usr/bin/env bash
# Builds {{NAME}}.wasm (world {{WORLD}}) from app.js with componentize-js.
# COMPONENTIZE_JS: the componentize-js to use (default: componentize-js on PATH, else
# node_modules/.bin/componentize-js here: npm install @bytecodealliance/componentize-js).
set -euo pipefail
cd "$(dirname "$0")"
cjs=${COMPONENTIZE_JS:-$(command -v componentize-js || true)}
[ -n "$cjs" ] || { [ -x node_modules/.bin/componentize-js ] && cjs=node_modules/.bin/componentize-js; } || true
if [ -z "$cjs" ]; then
  echo "build.sh: componentize-js not found: npm install @bytecodealliance/componentize-js, or set COMPONENTIZE_JS" >&2
  exit 1
fi
# no wasi:http and no fetch-event: chunkd links WASI p2 without them
"$cjs" app.js --wit wit --world-name {{WORLD}} --disable http fetch-event -o {{NAME}}.wasm >/dev/null
echo "built {{NAME}}.wasm"
