#!/usr/bin/env bash
# Sets everything up if needed, then runs talkback with the given arguments.
set -euo pipefail
# Where this file really is (it may be reached through a link); an exported
# CDPATH would make `cd` print the folder too.
unset CDPATH
root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
"$root/scripts/setup.sh"
# Through cargo, which knows where it put the binary whatever the caller's
# target-folder settings, and then replaces itself with it.
exec cargo run --manifest-path "$root/Cargo.toml" --release --locked -p talkback \
  --quiet -- "$@"
