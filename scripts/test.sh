#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs every check: formatting, vet, the tests against real guests,
# real Unicorn and the real kernel, and the benchmarks (which print numbers, never fail on time).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# Go installed from its release archive lives here and is not always on a non-interactive PATH.
[ -d /usr/local/go/bin ] && PATH="$PATH:/usr/local/go/bin"
"$root/scripts/setup.sh"
cd "$root"

echo "==> gofmt and go vet"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.cache/*'))
if [ -n "$unformatted" ]; then
	echo "not gofmt-formatted:" >&2
	echo "$unformatted" >&2
	exit 1
fi
go vet ./...

echo "==> tests"
go test -count=1 -timeout 60m ./...

echo "==> benchmarks"
go test -count=1 -run '^$' -bench . -benchtime 5x ./guest
go test -count=1 -run '^$' -bench . -benchtime 200x ./svm
go test -count=1 -run '^$' -bench . -benchtime 3x ./bridge
go test -count=1 -run '^$' -bench . -benchtime 1s ./vmm ./emu ./taint
echo "==> hybridbridge bench (Slow-Bridge, Fast-Bridge and fall-back on a ~100-process guest)"
"$root/bin/hybridbridge" bench
