#!/usr/bin/env bash
# Builds {{NAME}}.wasm (world {{WORLD}}) from app.js with componentize-qjs (QuickJS), against
# the world plus `import wasi:cli/stdout` (QuickJS has no console; app.js writes there).
# NODE_MODULES: the node_modules folder holding componentize-qjs and @bytecodealliance/jco
# (whose WASI 0.2.12 WIT is used): default ./node_modules (npm install @bytecodealliance/jco,
# which brings componentize-qjs).
set -euo pipefail
cd "$(dirname "$0")"
nm=${NODE_MODULES:-node_modules}
qjs=$nm/.bin/componentize-qjs
wasi=$nm/@bytecodealliance/jco/lib/wit/builtin/0.2.12
[ -x "$qjs" ] || { echo "build.sh: $qjs not found: npm install @bytecodealliance/jco (it brings componentize-qjs), or set NODE_MODULES" >&2; exit 1; }
[ -d "$wasi" ] || { echo "build.sh: $wasi not found (the WASI WIT jco ships): npm install @bytecodealliance/jco, or set NODE_MODULES" >&2; exit 1; }
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
mkdir -p "$w/deps/chunkd-streams"
cp wit/*.wit "$w/deps/chunkd-streams/"
for p in cli clocks filesystem io random sockets; do cp -r "$wasi/wasi-$p" "$w/deps/"; done
printf 'package local:guest;\nworld {{WORLD}}-stdout {\n  include chunkd:streams/{{WORLD}}@0.1.0;\n  import wasi:cli/stdout@0.2.12;\n}\n' > "$w/guest.wit"
"$qjs" --wit "$w" --world {{WORLD}}-stdout --js app.js --module-root . -o {{NAME}}.wasm >/dev/null
echo "built {{NAME}}.wasm"
