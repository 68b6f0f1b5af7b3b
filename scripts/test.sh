#!/usr/bin/env bash
# Runs the whole test suite from a fresh machine: set-up (packages, model,
# build), formatting and lints, the bare-metal build of the core, every
# unit, property and end-to-end test (the Cortex-M replay under QEMU
# included), the wasm32 replay under Node.js, and a bounded fuzzing pass.
set -euo pipefail

# Where this file really is (it may be reached through a link); an exported
# CDPATH would make `cd` print the folder too.
unset CDPATH
root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
cd "$root"

step() { printf '\n== %s\n' "$*" >&2; }

step "set-up"
scripts/setup.sh --tests
for component in rustfmt clippy; do
  if ! rustup component list --installed | grep -q "^$component"; then
    rustup component add "$component"
  fi
done
for target in thumbv7em-none-eabihf wasm32-wasip1; do
  if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target"
  fi
done

step "format and lints"
cargo fmt --all --check
cargo clippy --release --locked --workspace --all-targets --quiet -- -D warnings

step "sampler-core builds for a Cortex-M4F with no allocator"
cargo build --release --locked -p sampler-core --target thumbv7em-none-eabihf --quiet

step "tests"
cargo test --release --locked --workspace

step "the golden vectors on wasm32-wasip1 (Node.js's WASI) match x86-64"
firmware/wasi/check.sh

step "fuzzing: each target for ${FUZZ_SECONDS:-30}s, starting from the committed seeds"
fuzz/run.sh "${FUZZ_SECONDS:-30}"
