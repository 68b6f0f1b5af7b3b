#!/usr/bin/env bash
# Runs every fuzz target for a bounded time: fuzz/run.sh SECONDS (default 60).
#
# Works on the stable toolchain: libFuzzer's instrumentation needs unstable
# compiler flags, which RUSTC_BOOTSTRAP=1 lets stable rustc accept. Installs
# cargo-fuzz from crates.io when it is missing.
#
# New inputs go to fuzz/work/TARGET (ignored by git); the committed seeds in
# fuzz/corpus/TARGET are read, never written. A crash stops the script with a
# non-zero status and leaves the input under fuzz/artifacts/TARGET/.
set -euo pipefail

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
    echo "usage: $0 SECONDS (a positive whole number)" >&2
    exit 2
fi

unset CDPATH
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: cargo-fuzz not found, installing it" >&2
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

cargo fuzz build
# Listed first: a failure inside `for ... in $(...)` would go unnoticed.
targets=$(cargo fuzz list)
if [[ -z $targets ]]; then
    echo "run.sh: cargo fuzz list named no targets" >&2
    exit 1
fi
for target in $targets; do
    mkdir -p "work/$target" "corpus/$target"
    echo "run.sh: fuzzing $target for ${seconds}s" >&2
    if ! cargo fuzz run "$target" "work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
        echo "run.sh: $target failed; reproduce with:" >&2
        echo "  RUSTC_BOOTSTRAP=1 cargo fuzz run $target fuzz/artifacts/$target/<file>" >&2
        exit 1
    fi
done
echo "run.sh: all targets ran ${seconds}s without a failure" >&2
