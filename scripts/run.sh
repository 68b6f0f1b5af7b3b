#!/usr/bin/env bash
# Sets everything up if needed, then runs talkback with the given arguments.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
exec "${CARGO_TARGET_DIR:-$root/target}/release/talkback" "$@"
