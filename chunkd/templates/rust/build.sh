#!/usr/bin/env bash
# Builds {{NAME}}.wasm (world {{WORLD}}) with cargo for wasm32-wasip2 (rustc links the
# component itself). CARGO: the cargo to use (default: cargo on PATH, else ~/.cargo/bin/cargo);
# CARGO_TARGET_DIR: where cargo builds (default ./target).
set -euo pipefail
cd "$(dirname "$0")"
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$PATH:$HOME/.cargo/bin"
cargo=${CARGO:-cargo}
command -v "$cargo" >/dev/null || { echo "build.sh: cargo not found: install Rust (rustup), or set CARGO" >&2; exit 1; }
if command -v rustup >/dev/null && ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "build.sh: adding the wasm32-wasip2 target (rustup) ..." >&2
  rustup target add wasm32-wasip2 >&2
fi
target=${CARGO_TARGET_DIR:-target}
CARGO_TARGET_DIR=$target "$cargo" build -q --release --target wasm32-wasip2
cp "$target/wasm32-wasip2/release/{{CRATE}}.wasm" {{NAME}}.wasm
echo "built {{NAME}}.wasm"
