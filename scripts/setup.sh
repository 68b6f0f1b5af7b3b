#!/usr/bin/env bash
# Brings a fresh Debian machine with Rust and Python to the point where
# talkback builds and runs: system packages for building llama.cpp, the
# default model, and a release build. Every step is skipped when already done.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v clang >/dev/null 2>&1 || need+=(clang)
compgen -G "/usr/lib/llvm-*/lib/libclang*.so*" >/dev/null || need+=(libclang-dev)
command -v qemu-system-arm >/dev/null 2>&1 || need+=(qemu-system-arm)
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
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
fi

fixtures/fetch-model.sh

echo "setup: building talkback (release; the first build compiles llama.cpp)" >&2
cargo build --release --locked -p talkback --quiet
