package cli

import (
	"bytes"
	"errors"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"hybridbridge/bridge"
	"hybridbridge/inspect"
)

// A view that cannot read all it lists fails as a whole: no table, no JSON document, one line.
// Fast-Bridge with a memo trained by netstat alone knows how to list /proc (netstat lists it to
// find socket owners) but not how to open a process's stat, so ps gets past the listing and
// misses on the first process; with an empty memo, every view misses on its first file.
func TestFastMissFailsWhole(t *testing.T) {
	needGuest(t)
	trained := filepath.Join(t.TempDir(), "netstat.memo")
	if _, errOut, err := run("netstat", "--guest", "cli", "--memo", trained); err != nil {
		t.Fatalf("netstat to train the memo: %v\n%s", err, errOut)
	}
	empty := filepath.Join(t.TempDir(), "empty.memo")
	for _, c := range []struct {
		memo string
		args []string
		read string // what the error must say was being read
	}{
		{trained, []string{"ps"}, `/proc/\d+/(stat|status|cmdline)`},
		{trained, []string{"ps", "--json"}, `/proc/\d+/(stat|status|cmdline)`},
		{empty, []string{"ps", "--json"}, `list /proc:`},
		{empty, []string{"lsmod"}, `/proc/modules`},
		{empty, []string{"netstat", "--json"}, `/proc/net/tcp`},
		{empty, []string{"lsof", "--pid", "1"}, `/proc/1/fd`},
	} {
		args := append(append([]string{}, c.args...), "--guest", "cli", "--mode", "fast", "--memo", c.memo)
		out, errOut, err := run(args...)
		var exit *ExitError
		switch {
		case err == nil:
			t.Errorf("%v: no error; stdout %d bytes", c.args, len(out))
			continue
		case !errors.Is(err, bridge.ErrMemoMiss):
			t.Errorf("%v: %v, want a memo miss", c.args, err)
		case errors.As(err, &exit):
			t.Errorf("%v: exit status %d, want a failure of hybridbridge", c.args, exit.Status)
		}
		if out != "" || errOut != "" {
			t.Errorf("%v printed besides the error:\nstdout %q\nstderr %q", c.args, out, errOut)
		}
		line := oneLine(err)
		if strings.Contains(line, "\n") || !regexp.MustCompile(c.read).MatchString(line) {
			t.Errorf("%v: %q is not one line saying what was read (%s)", c.args, line, c.read)
		}
		t.Logf("%v: %s", c.args, line)
	}
}

// The engine summary says what a view left out because it vanished; nothing when nothing did.
func TestSummaryTellsVanished(t *testing.T) {
	r := &viewRun{name: "ps", mode: bridge.ModeAuto}
	if s := r.summary(); strings.Contains(s, "vanished") {
		t.Errorf("nothing vanished, yet: %s", s)
	}
	r.vanished = inspect.Vanished{Processes: 2, Descriptors: 1}
	if s := r.summary(); !strings.HasSuffix(s, "; 2 processes and 1 descriptor vanished while read") {
		t.Errorf("summary: %s", s)
	}
}

// A command line the kernel returned cut short is shown as unknown with its reason and the name
// from stat, never as a guess or as a kernel thread's [name].
func TestPsShowsUnknownCommandLine(t *testing.T) {
	var b bytes.Buffer
	err := printProcesses(&b, []inspect.Process{
		{PID: 2, Comm: "kthreadd", State: "S", Threads: 1, Kernel: true},
		{PID: 175, PPID: 1, Comm: "a) (b c", State: "S", Threads: 1, Missing: []string{"cmdline: incomplete: 4096 of 5000 bytes read"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if len(lines) != 3 || !strings.HasSuffix(lines[1], " [kthreadd]") ||
		!strings.HasSuffix(lines[2], ` ?  (comm "a) (b c"; unknown: cmdline: incomplete: 4096 of 5000 bytes read)`) {
		t.Errorf("ps table:\n%s", b.String())
	}
}

func TestOneLine(t *testing.T) {
	err := errors.Join(errors.New("read /proc/1/stat: memo miss"), errors.New("detach: resume failed\n"))
	if got := oneLine(err); got != "read /proc/1/stat: memo miss; detach: resume failed" {
		t.Errorf("%q", got)
	}
}

// A tab or newline in a guest's name must not shift a table's columns or start a row.
func TestTableCellsEscapeControls(t *testing.T) {
	var b bytes.Buffer
	err := printMounts(&b, []inspect.Mount{{Device: "none", Point: "/mnt/tab\tdir", Type: "tmpfs", Options: "rw"},
		{Device: "tmp fs", Point: "/mnt/new\nline", Type: "tmpfs", Options: "rw"}})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if len(lines) != 3 || strings.Join(strings.Fields(lines[1]), " ") != `none /mnt/tab\tdir tmpfs rw` ||
		strings.Join(strings.Fields(lines[2]), " ") != `tmp fs /mnt/new\nline tmpfs rw` {
		t.Errorf("mounts table:\n%s", b.String())
	}
	if got := cell("a\x1bb\x7f"); got != `a\x1bb\x7f` {
		t.Errorf("cell: %q", got)
	}
}
