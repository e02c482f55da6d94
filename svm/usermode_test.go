package svm

import (
	"bytes"
	"crypto/md5"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
			var se *StopError
			return errors.Is(err, ErrBlocked) && errors.As(err, &se) && slices.Contains([]string{"clone", "clone3", "fork", "vfork"}, SyscallName(se.NR))
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

// TestProgramPathsAndGuards: the kernel's copy of a path is what Program.Paths makes of it (the
// program's own string untouched, relative paths joined to the root it starts in); a program
// reaching /proc/self any other way, or making the kernel print, is stopped with the reason.
func TestProgramPathsAndGuards(t *testing.T) {
	m := open(t, Options{Unicorn: &UnicornOptions{UserMode: true}})
	release, err := m.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		t.Fatal(err)
	}
	var asked []string
	swap := func(p string) string {
		asked = append(asked, p)
		if p == "/proc/version" {
			return "/proc/sys/kernel/osrelease"
		}
		if rest, ok := strings.CutPrefix(p, "/proc/self/"); ok {
			return "/proc/1/" + rest // the C library reads its own /proc/self/exe first
		}
		return ""
	}
	for _, path := range []string{"/proc/version", "proc/./version", "//proc/version"} {
		asked = nil
		run, err := m.RunProgram(Program{Path: busybox, Argv: []string{"cat", path}, Paths: swap})
		if err != nil {
			t.Fatalf("cat %s: %v", path, err)
		}
		if string(run.Stdout) != string(release) {
			t.Errorf("cat %s, rewritten to osrelease, printed %q; want %q", path, run.Stdout, release)
		}
		if !slices.Contains(asked, "/proc/version") {
			t.Errorf("cat %s: Paths was asked %q, never the clean absolute path", path, asked)
		}
	}
	_, err = m.RunProgram(Program{Path: busybox, Argv: []string{"cat", "/proc/self/status"}, Paths: func(string) string { return "" }})
	var se *StopError
	if !errors.As(err, &se) || !errors.Is(err, ErrFault) || !strings.Contains(err.Error(), "/proc/self") {
		t.Errorf("cat /proc/self/status, not rewritten: %v, want a stop at the self link", err)
	}
	// Writing to /dev/kmsg makes the kernel print: the run stops at the message, named.
	kmsg := buildStatic(t, `#include <fcntl.h>
#include <unistd.h>
int main(void) {
	int fd = open("/dev/kmsg", O_WRONLY);
	if (fd < 0) return 2;
	write(fd, "hb-program-test\n", 16);
	return 0;
}
`)
	_, err = m.RunProgram(Program{Path: "/tmp/kmsg", Binary: kmsg, Argv: []string{"kmsg"}})
	if !errors.Is(err, ErrFault) || !strings.Contains(err.Error(), "printed a message") {
		t.Errorf("a program writing to /dev/kmsg: %v, want a stop at the kernel's message", err)
	}
	if got, err := m.Syscall(SysGetpid); err != nil || got <= 0 {
		t.Fatalf("after the runs: getpid %d, %v", got, err)
	}
}

// TestProgramBinaryIsCopied: the user's binary is written into the SVM's tmpfs for the run, and
// sees its arguments; the next run finds no trace of it (the machine was reset).
func TestProgramBinaryIsCopied(t *testing.T) {
	m := open(t, Options{Unicorn: &UnicornOptions{UserMode: true}})
	bin := buildStatic(t, `#include <stdio.h>
int main(int argc, char **argv) {
	for (int i = 0; i < argc; i++) printf("%s\n", argv[i]);
	return 7;
}
`)
	if err := CheckStaticX86("echoargs", bin); err != nil {
		t.Fatal(err)
	}
	run, err := m.RunProgram(Program{Path: "/tmp/echoargs", Binary: bin, Argv: []string{"echoargs", "a b", "c"}})
	if err != nil {
		t.Fatal(err)
	}
	if run.Status != 7 || string(run.Stdout) != "echoargs\na b\nc\n" {
		t.Errorf("echoargs: status %d, stdout %q", run.Status, run.Stdout)
	}
	// A file given with the program, larger than the agent's data buffer (written in pieces).
	data := bytes.Repeat([]byte("0123456789abcdef"), 64<<10/16)
	data = append(data, "end\n"...)
	run, err = m.RunProgram(Program{Path: busybox, Argv: []string{"busybox", "md5sum", "/tmp/given"},
		Files: []File{{Path: "/tmp/given", Data: data, Mode: 0o644}}})
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("%x  /tmp/given\n", md5.Sum(data)); run.Status != 0 || string(run.Stdout) != want {
		t.Errorf("md5sum of the given file: status %d, %q, want %q", run.Status, run.Stdout, want)
	}
	if _, err := m.RunProgram(Program{Path: "/tmp/echoargs", Argv: []string{"echoargs"}}); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("the binary outlived its run: %v", err)
	}
}

// buildStatic compiles C source into a static x86-64 executable and returns its bytes.
func buildStatic(t *testing.T, src string) []byte {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "p.c"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "p")
	if b, err := exec.Command("gcc", "-static", "-O2", "-o", out, filepath.Join(dir, "p.c")).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
