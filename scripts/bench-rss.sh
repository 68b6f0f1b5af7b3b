#!/usr/bin/env bash
# Peak memory (RSS) of a short and a long generation with the same context,
# to show that memory does not grow with the number of tokens generated.
#
#   scripts/bench-rss.sh [SHORT] [LONG]      (defaults: 200 and 2000 tokens)
#
# Both runs use one context size (4096 tokens, or more when LONG needs it),
# so llama.cpp's KV cache is the same size in both; what could still grow is
# talkback's own per-token state (the token list, the text kept for chat
# history). Prints one line per run and the difference. Needs the release
# binary (cargo build --release -p talkback), the model
# (fixtures/fetch-model.sh) and GNU time (/usr/bin/time, Debian package
# `time`). A benchmark, not a test: it takes about a minute and asserts
# nothing beyond each run generating exactly the tokens asked for.
set -euo pipefail

# Where this file really is (it may be reached through a link); an exported
# CDPATH would make `cd` print the folder too.
unset CDPATH
root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
bin="${CARGO_TARGET_DIR:-$root/target}/release/talkback"
short="${1:-200}"
long="${2:-2000}"

for n in "$short" "$long"; do
    if ! [[ "$n" =~ ^[1-9][0-9]*$ ]]; then
        echo "usage: $0 [SHORT] [LONG] (token counts, whole numbers >= 1)" >&2
        exit 2
    fi
done
if [ ! -x "$bin" ]; then
    echo "bench-rss.sh: $bin is missing: cargo build --release -p talkback" >&2
    exit 1
fi
if [ ! -x /usr/bin/time ]; then
    echo "bench-rss.sh: needs GNU time at /usr/bin/time (apt-get install time)" >&2
    exit 1
fi

ctx=4096
if [ $((long + 64)) -gt "$ctx" ]; then
    ctx=$((long + 64))
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Prints the peak RSS in KiB of one generation of $1 tokens.
peak_kib() {
    local n="$1"
    /usr/bin/time -f %M -o "$work/rss" \
        "$bin" complete "Once upon a time" -n "$n" --ignore-eos --seed 1 \
        -c "$ctx" --format json >"$work/out.json"
    if ! grep -q "\"generated_tokens\":$n[,}]" "$work/out.json"; then
        echo "bench-rss.sh: the $n-token run did not generate $n tokens" >&2
        exit 1
    fi
    tail -n 1 "$work/rss"
}

a=$(peak_kib "$short")
b=$(peak_kib "$long")
echo "rss_complete_n${short}_ctx${ctx}: ${a} KiB peak"
echo "rss_complete_n${long}_ctx${ctx}: ${b} KiB peak"
echo "growth: $((b - a)) KiB over $((long - short)) more tokens"
