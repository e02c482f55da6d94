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
# -v so that every skip's reason is in the log; the log is printed whole when a test fails, and
# otherwise shortened to the packages' results and the list of what was not tested.
log="$root/.cache/test.log"
set +e
go test -count=1 -timeout 60m -v ./... >"$log" 2>&1
status=$?
set -e
if [ "$status" -ne 0 ]; then
	cat "$log"
	echo "tests failed (exit $status); the whole log is $log" >&2
	exit "$status"
fi
grep -E '^(ok|FAIL|PASS)[[:space:]]' "$log" || true
if grep -q -- '--- SKIP' "$log"; then
	echo "==> NOT TESTED on this machine (skipped, with the reason each gave):"
	grep -B1 -- '--- SKIP' "$log" | grep -v '^--$'
fi

echo "==> benchmarks"
go test -count=1 -run '^$' -bench . -benchtime 5x ./guest
go test -count=1 -run '^$' -bench . -benchtime 200x ./svm
go test -count=1 -run '^$' -bench . -benchtime 3x ./bridge
go test -count=1 -run '^$' -bench . -benchtime 1s ./vmm ./emu ./taint
echo "==> hybridbridge bench (Slow-Bridge, Fast-Bridge and fall-back on a ~100-process guest; memory over refreshes; scale to 1,000 processes)"
"$root/bin/hybridbridge" bench --refreshes 100
