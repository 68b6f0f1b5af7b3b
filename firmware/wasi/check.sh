#!/usr/bin/env bash
# Runs the firmware's replay on x86-64 and on wasm32-wasip1 (Node.js's WASI)
# and fails unless both print the same lines. Needs the Rust target
# (`rustup target add wasm32-wasip1`) and Node.js 20 or later.
set -euo pipefail
unset CDPATH
here=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
cd "$here"
# The paths below are this folder's own target, whatever the caller's setting.
export CARGO_TARGET_DIR="$here/target"
fixtures=$(cd ../../fixtures && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# The host target is named because ../.cargo/config.toml defaults to the Cortex-M one.
host=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --locked --quiet --target "$host"
cargo build --release --locked --quiet --target wasm32-wasip1
"target/$host/release/talkback-replay-wasi" "$fixtures" >"$out/x86_64.txt"
timeout 300 node --no-warnings run.mjs \
  target/wasm32-wasip1/release/talkback-replay-wasi.wasm "$fixtures" >"$out/wasm32.txt"

if ! diff -u "$out/x86_64.txt" "$out/wasm32.txt"; then
  echo "check.sh: wasm32-wasip1 differs from x86-64 (diff above)" >&2
  exit 1
fi
grep -q '^done$' "$out/wasm32.txt"
echo "check.sh: wasm32-wasip1 and x86-64 agree on $(grep -c '^token ' "$out/wasm32.txt") draws" \
  "and $(grep -c '^case ' "$out/wasm32.txt") stream cases" >&2
