package cli

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"hybridbridge/guest"
)

// guestRunning fails the test unless the guest runs (nothing left paused by a failed run).
func guestRunning(t *testing.T, after string) {
	t.Helper()
	g, err := guest.Open(runDir, "cli")
	if err != nil {
		t.Fatal(err)
	}
	if st, err := g.Status(context.Background()); err != nil || st != "running" {
		t.Errorf("guest %q after %s (%v)", st, after, err)
	}
}

// TestRunPrintsTheProgramsOutput: run prints what the applet writes, the engine's summary on
// stderr, and exits with the program's status.
func TestRunPrintsTheProgramsOutput(t *testing.T) {
	needGuest(t)
	out, errOut, err := run("run", "--guest", "cli", "--", "uname", "-n")
	if err != nil {
		t.Fatal(err)
	}
	if out != "hb-demo\n" {
		t.Errorf("run -- uname -n printed %q, want the guest's host name", out)
	}
	if !strings.Contains(errOut, "run uname (mode auto)") || !strings.Contains(errOut, "uname: ") {
		t.Errorf("no engine summary on stderr: %q", errOut)
	}
	_, _, err = run("run", "--guest", "cli", "--", "sh", "-c", "exit 3")
	var exit *ExitError
	if !errors.As(err, &exit) || exit.Status != 3 {
		t.Errorf("run -- sh -c 'exit 3': %v, want exit status 3", err)
	}
	guestRunning(t, "run")
}

// TestRunBadInput: each bad program or run is one clear line, and the guest runs afterwards.
func TestRunBadInput(t *testing.T) {
	needGuest(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "p.c")
	if err := os.WriteFile(src, []byte("int main(void) { for (;;) ; }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dynamic, spin := filepath.Join(dir, "dynamic"), filepath.Join(dir, "spin")
	for _, c := range [][]string{{"-o", dynamic, src}, {"-static", "-o", spin, src}} {
		if b, err := exec.Command("gcc", c...).CombinedOutput(); err != nil {
			t.Fatalf("gcc: %v\n%s", err, b)
		}
	}
	// Another architecture: the same program with its ELF machine field changed to AArch64.
	b, err := os.ReadFile(spin)
	if err != nil {
		t.Fatal(err)
	}
	b[18], b[19] = 183, 0
	arm := filepath.Join(dir, "arm")
	if err := os.WriteFile(arm, b, 0o755); err != nil {
		t.Fatal(err)
	}
	text := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(text, []byte("not a program\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--program", dynamic}, "dynamically linked"},
		{[]string{"--program", arm}, "x86-64 programs only"},
		{[]string{"--program", text}, "not an ELF executable"},
		{[]string{"--program", filepath.Join(dir, "missing")}, "no such file"},
		{[]string{"--", "nosuchapplet"}, ""}, // busybox's own answer, as a status
		{[]string{"--", "sleep", "1"}, "nanosleep"},
		{[]string{"--", "sh", "-c", "busybox true; busybox true"}, "clone"},
		{[]string{"--budget", "3000000", "--program", spin}, "budget"},
		{[]string{"--", "df"}, "statfs"},
		{[]string{"--", "/bin/ls"}, "busybox applet"},
		{[]string{}, "nothing to run"},
	} {
		_, _, err := run(append([]string{"run", "--guest", "cli"}, c.args...)...)
		var exit *ExitError
		switch {
		case c.want == "":
			if !errors.As(err, &exit) || exit.Status == 0 {
				t.Errorf("%v: %v, want the program's failing status", c.args, err)
			}
		case err == nil || !strings.Contains(err.Error(), c.want):
			t.Errorf("%v: error %v, want it to mention %q", c.args, err, c.want)
		case strings.Contains(strings.TrimSpace(oneLine(err)), "\n"):
			t.Errorf("%v: error of several lines: %q", c.args, err)
		default:
			t.Logf("%v: %s", c.args, oneLine(err))
		}
		guestRunning(t, strings.Join(c.args, " "))
	}
}
