#!/usr/bin/env bash
# Builds {{NAME}}.wasm (world {{WORLD}}) from app.c: clang --target=wasm32 -nostdlib makes a
# core module, then componentize.mjs (node + jco) makes it a component.
# CC: a clang with the wasm32 target (default clang; wasm-ld from lld must be on PATH).
# NODE_MODULES: the node_modules folder holding @bytecodealliance/jco (default ./node_modules:
# npm install @bytecodealliance/jco).
set -euo pipefail
cd "$(dirname "$0")"
cc=${CC:-clang}
command -v "$cc" >/dev/null || { echo "build.sh: $cc not found: install clang and lld, or set CC" >&2; exit 1; }
command -v node >/dev/null || { echo "build.sh: node not found (it runs jco)" >&2; exit 1; }
"$cc" --target=wasm32 -nostdlib -O3 -fno-builtin -Wl,--no-entry -o {{NAME}}.core.wasm app.c
node componentize.mjs {{NAME}}.core.wasm wit {{WORLD}} {{NAME}}.wasm
rm -f {{NAME}}.core.wasm
echo "built {{NAME}}.wasm"
