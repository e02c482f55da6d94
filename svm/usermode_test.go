package svm

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// busybox is the SVM image's static busybox.
const busybox = "/bin/busybox"

func runBusybox(t *testing.T, m *Machine, budget uint64, args ...string) (*ProgramRun, error) {
	t.Helper()
	run, err := m.RunProgram(Program{Path: busybox, Argv: append([]string{"busybox"}, args...), Envp: []string{"PATH=/bin:/sbin", "HOME=/"}, Budget: budget})
	if run != nil {
		t.Logf("busybox %s: status %d, %d system calls, %d user faults, %v", strings.Join(args, " "), run.Status, run.Syscalls, run.Faults, run.Wall)
	}
	return run, err
}

// TestProgramOutputIsTheKernels: an unmodified busybox run in user mode prints what the kernel's
// files say, read by injected calls on the same machine.
func TestProgramOutputIsTheKernels(t *testing.T) {
	m := open(t, Options{Unicorn: &UnicornOptions{UserMode: true}})
	want, err := m.ReadFile("/proc/version")
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // the machine is reset after a run: the second is the same
		run, err := runBusybox(t, m, 0, "cat", "/proc/version")
		if err != nil {
			t.Fatal(err)
		}
		if run.Status != 0 || string(run.Stdout) != string(want) || len(run.Stderr) != 0 {
			t.Fatalf("cat /proc/version: status %d, stdout %q, stderr %q; want %q", run.Status, run.Stdout, run.Stderr, want)
		}
	}
	release, err := m.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		t.Fatal(err)
	}
	run, err := runBusybox(t, m, 0, "uname", "-r")
	if err != nil {
		t.Fatal(err)
	}
	if string(run.Stdout) != string(release) {
		t.Errorf("uname -r printed %q, /proc/sys/kernel/osrelease is %q", run.Stdout, release)
	}
}

// TestProgramPsListsTheProcesses: busybox ps, which opens and reads a few files per process,
// lists the processes /proc lists.
func TestProgramPsListsTheProcesses(t *testing.T) {
	m := open(t, Options{Unicorn: &UnicornOptions{UserMode: true}})
	ents, err := m.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var want []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name); err == nil {
			want = append(want, pid)
		}
	}
	run, err := runBusybox(t, m, 0, "ps")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(run.Stdout)), "\n")
	if run.Status != 0 || len(lines) < 2 || !strings.Contains(lines[0], "PID") {
		t.Fatalf("ps: status %d, output %q", run.Status, run.Stdout)
	}
	var got []int
	for _, l := range lines[1:] {
		pid, err := strconv.Atoi(strings.Fields(l)[0])
		if err != nil {
			t.Fatalf("ps line %q", l)
		}
		got = append(got, pid)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("ps listed %v; /proc lists %v", got, want)
	}
}

// TestProgramBadRuns: each way a program cannot run ends with its own error, the machine reset
// and usable.
func TestProgramBadRuns(t *testing.T) {
	m := open(t, Options{Unicorn: &UnicornOptions{UserMode: true}})
	pid, err := m.Syscall(SysGetpid)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		run    func() (*ProgramRun, error)
		expect func(error) bool
	}{
		{"missing file", func() (*ProgramRun, error) {
			return m.RunProgram(Program{Path: "/bin/no-such-program", Argv: []string{"x"}})
		}, func(err error) bool { return errors.Is(err, syscall.ENOENT) }},
		{"not a program", func() (*ProgramRun, error) {
			return m.RunProgram(Program{Path: "/etc/passwd", Argv: []string{"x"}})
		}, func(err error) bool { return errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.ENOEXEC) }},
		{"sleeps", func() (*ProgramRun, error) { return runBusybox(t, m, 0, "sleep", "1") }, func(err error) bool {
			var se *StopError
			return errors.Is(err, ErrBlocked) && errors.As(err, &se) && strings.Contains(SyscallName(se.NR), "sleep")
		}},
		{"forks", func() (*ProgramRun, error) { return runBusybox(t, m, 0, "sh", "-c", "busybox true; busybox true") }, func(err error) bool {
			return errors.Is(err, ErrBlocked)
		}},
		{"past its budget", func() (*ProgramRun, error) { return runBusybox(t, m, 2_000_000, "yes") }, func(err error) bool {
			return errors.Is(err, ErrBudget)
		}},
	} {
		_, err := c.run()
		t.Logf("%s: %v", c.name, err)
		if err == nil || !c.expect(err) {
			t.Errorf("%s: %v", c.name, err)
		}
		if got, err := m.Syscall(SysGetpid); err != nil || got != pid {
			t.Fatalf("after %s: getpid %d, %v; want %d", c.name, got, err, pid)
		}
	}
	run, err := runBusybox(t, m, 0, "sh", "-c", "exit 3")
	if err != nil || run.Status != 3 {
		t.Errorf("sh -c 'exit 3': %+v, %v", run, err)
	}
}
