#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and starts hybridbridge on the built-in demo guest. Arguments are
# passed on: scripts/run.sh guest start, scripts/run.sh --help, ...
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# Go installed from its release archive lives here and is not always on a non-interactive PATH.
[ -d /usr/local/go/bin ] && PATH="$PATH:/usr/local/go/bin"
"$root/scripts/setup.sh" >&2
exec "$root/bin/hybridbridge" "$@"
