#!/usr/bin/env bash
# Brings a fresh Debian machine with Rust and Python 3 to the point where
# talkback builds and runs: system packages for building llama.cpp (and pip,
# for the model download), the default model, and a release build. With
# --tests it also installs what the test suite runs: QEMU for the Cortex-M
# replay and Node.js for the wasm32 one. Every step is skipped when already
# done; installing packages needs root or sudo.
set -euo pipefail

# Where this file really is (it may be reached through a link); an exported
# CDPATH would make `cd` print the folder too.
unset CDPATH
root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
cd "$root"

tests=false
case "${1:-}" in
  --tests) tests=true ;;
  "") ;;
  *)
    echo "usage: $0 [--tests]" >&2
    exit 2
    ;;
esac

# Checked before the slow steps, which would otherwise run for nothing.
if ! command -v cargo >/dev/null 2>&1; then
  if [[ -x ${CARGO_HOME:-${HOME:-~}/.cargo}/bin/cargo ]]; then
    echo "setup: cargo is installed but not on PATH; run" \
      "'. \"\$HOME/.cargo/env\"' (or open a new shell) and try again" >&2
  else
    echo "setup: cargo not found; install Rust with rustup (https://rustup.rs)" \
      "and try again" >&2
  fi
  exit 1
fi

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v clang >/dev/null 2>&1 || need+=(clang)
compgen -G "/usr/lib/llvm-*/lib/libclang*.so*" >/dev/null || need+=(libclang-dev)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
if $tests; then
  command -v qemu-system-arm >/dev/null 2>&1 || need+=(qemu-system-arm)
  command -v node >/dev/null 2>&1 || need+=(nodejs)
fi
if ((${#need[@]})); then
  echo "setup: installing ${need[*]}" >&2
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || {
      echo "setup: need root or sudo to install ${need[*]}" >&2
      exit 1
    }
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update -qq
  # Through env: sudo would drop the variable from its environment.
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
if $tests; then
  # The wasm32 check runs WASI without flags, which Node.js does from 20 on.
  node_major=$(node -p 'process.versions.node.split(".")[0]')
  if ((node_major < 20)); then
    echo "setup: the tests need Node.js 20 or later for the wasm32 check, and" \
      "$(command -v node) is $(node --version); install a newer one (nodejs.org)" \
      "and run this again" >&2
    exit 1
  fi
fi

fixtures/fetch-model.sh

if [[ ! -x "${CARGO_TARGET_DIR:-$root/target}/release/talkback" ]]; then
  echo "setup: building talkback (release; this first build compiles llama.cpp," \
    "about five minutes on two cores)" >&2
fi
cargo build --release --locked -p talkback --quiet
