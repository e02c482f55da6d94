// Package testenv decides what a test does when the machine lacks something it needs (a tool, a
// device, a long run). Outside CI it skips, so a developer without tmux can still run
// the rest. Under CI it fails: a green CI run must mean every test ran, and a skip there would
// hide what was not tested.
package testenv

import (
	"fmt"
	"os"
	"strconv"
	"testing"
)

// CI reports whether the tests run under continuous integration: CI set to a true value, as
// .ci/run and common CI services set it.
func CI() bool {
	on, err := strconv.ParseBool(os.Getenv("CI"))
	return err == nil && on
}

// Skip skips the test for reason; under CI it fails the test with that reason instead.
func Skip(tb testing.TB, reason string) {
	tb.Helper()
	if CI() {
		tb.Fatalf("cannot run: %s (CI=true: a missing prerequisite is a failure, not a skip)", reason)
	}
	tb.Skip(reason)
}

// Skipf is Skip with a formatted reason.
func Skipf(tb testing.TB, format string, args ...any) {
	tb.Helper()
	Skip(tb, fmt.Sprintf(format, args...))
}

// SkipIfShort skips a slow test under -short. CI never passes -short, so there too it goes
// through Skip: a CI run with -short fails rather than quietly leaving the slow tests out.
func SkipIfShort(tb testing.TB, what string) {
	tb.Helper()
	if testing.Short() {
		Skip(tb, what+": not run with -short")
	}
}

// SkipNoKVM skips a test that needs KVM where the machine has none, even under CI: KVM is the one
// thing these machines may lack (some have no /dev/kvm at all, others only a paravirtual one
// without the vmx/svm extensions). It is the only skip CI allows; scripts/test.sh lists every skip
// with its reason at the end of the run, so what was not tested is said out loud.
func SkipNoKVM(tb testing.TB, reason string) {
	tb.Helper()
	tb.Skip("no KVM on this machine: " + reason)
}
