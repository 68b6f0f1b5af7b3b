#!/usr/bin/env bash
# Runs the whole test suite from a fresh machine: set-up (packages, model,
# build), formatting and lints, the bare-metal build of the core, every
# unit, property and end-to-end test, and a bounded fuzzing pass.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

step() { printf '\n== %s\n' "$*" >&2; }

step "set-up"
scripts/setup.sh
if ! rustup target list --installed | grep -qx thumbv7em-none-eabihf; then
  rustup target add thumbv7em-none-eabihf
fi

step "format and lints"
cargo fmt --all --check
cargo clippy --release --locked --workspace --all-targets --quiet -- -D warnings

step "sampler-core builds for a Cortex-M4F with no allocator"
cargo build --release --locked -p sampler-core --target thumbv7em-none-eabihf --quiet

step "tests"
cargo test --release --locked --workspace

step "fuzzing: each target for ${FUZZ_SECONDS:-30}s, starting from the committed seeds"
fuzz/run.sh "${FUZZ_SECONDS:-30}"
