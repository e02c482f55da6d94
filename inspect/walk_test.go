package inspect

import (
	"errors"
	"fmt"
	"io/fs"
	"reflect"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

// faultSource stands for the engine behind Files, Links and Records: it serves captured files
// and fails one chosen call, counted from zero, with an error made for it.
type faultSource struct {
	set     *FileSet
	records [][]byte
	empty   map[string]bool // directories that exist without entries (a kernel thread's fd/)

	failAt   int
	makeErr  func(op, path string) error
	injected error // what the failing call returned
	calls    []string
}

func (f *faultSource) call(op, path string) error {
	f.calls = append(f.calls, op+" "+path)
	if len(f.calls)-1 != f.failAt {
		return nil
	}
	f.injected = f.makeErr(op, path)
	return f.injected
}

func (f *faultSource) ReadDir(path string) ([]string, error) {
	if err := f.call("readdir", path); err != nil {
		return nil, err
	}
	if f.empty[path] {
		return []string{}, nil
	}
	return f.set.ReadDir(path)
}

func (f *faultSource) ReadFile(path string) ([]byte, error) {
	if err := f.call("readfile", path); err != nil {
		return nil, err
	}
	return f.set.ReadFile(path)
}

func (f *faultSource) ReadLink(path string) (string, error) {
	if err := f.call("readlink", path); err != nil {
		return "", err
	}
	return f.set.ReadLink(path)
}

func (f *faultSource) ReadRecords(path string) ([][]byte, error) {
	if err := f.call("readrecords", path); err != nil {
		return nil, err
	}
	if path != "/dev/kmsg" {
		return nil, &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
	}
	return f.records, nil
}

// captured is a guest's files as the fake serves them: init, kthreadd, nc holding a listening
// socket, and the script "a) (b c" with /etc/passwd open, from testdata.
func captured(t *testing.T) *faultSource {
	t.Helper()
	files := map[string][]byte{}
	links := map[string]string{}
	for pid, name := range map[string]string{"1": "1", "2": "2", "105": "nc", "175": "odd"} {
		for _, f := range []string{"stat", "status", "cmdline"} {
			files["/proc/"+pid+"/"+f] = testdata(t, f+"-"+name)
		}
	}
	files["/proc/1/environ"] = testdata(t, "environ-1")
	files["/proc/175/environ"] = testdata(t, "environ-odd")
	for fd, target := range map[string]string{"0": "/dev/null", "1": "/dev/console", "2": "/dev/console", "3": "socket:[10233]"} {
		links["/proc/105/fd/"+fd] = target
	}
	for fd, target := range map[string]string{"0": "/dev/null", "1": "/dev/null", "2": "/dev/null", "3": "/etc/passwd", "10": "/tmp/a) (b c"} {
		links["/proc/175/fd/"+fd] = target
		info := "fdinfo-odd-" + fd
		if fd == "2" {
			info = "fdinfo-odd-1" // the same as fd 1's, both /dev/null for writing
		}
		files["/proc/175/fdinfo/"+fd] = testdata(t, info)
	}
	for path, name := range map[string]string{"/proc/uptime": "uptime", "/proc/loadavg": "loadavg",
		"/proc/meminfo": "meminfo", "/proc/mounts": "mounts", "/proc/modules": "modules",
		"/proc/net/arp": "arp", "/proc/net/dev": "net-dev", "/proc/net/if_inet6": "if_inet6",
		"/proc/net/fib_trie": "fib_trie", "/proc/net/route": "route", "/proc/net/tcp": "tcp",
		"/proc/net/tcp6": "tcp6", "/proc/net/udp": "udp", "/proc/net/udp6": "udp6", "/proc/net/unix": "unix",
		"/proc/stat": "proc-stat"} {
		files[path] = testdata(t, name)
	}
	for i, v := range []string{"Linux\n", "hb-demo\n", "6.1.0-57-amd64\n", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-26)\n", "x86_64\n", "(none)\n"} {
		files["/proc/sys/kernel/"+UnameFiles[i]] = []byte(v)
	}
	var recs [][]byte
	for _, line := range strings.SplitAfter(string(testdata(t, "kmsg")), "\n") {
		if strings.HasPrefix(line, " ") {
			recs[len(recs)-1] = append(recs[len(recs)-1], line...)
		} else if line != "" {
			recs = append(recs, []byte(line))
		}
	}
	return &faultSource{set: &FileSet{Files: files, Links: links}, records: recs,
		empty: map[string]bool{"/proc/1/fd": true, "/proc/2/fd": true}, failAt: -1}
}

// skipRule is, for a call that reports the thing read as gone, the count a view must add and
// how many records fewer it returns.
type skipRule struct {
	call  *regexp.Regexp
	gone  Vanished
	fewer int
}

// skips are what each view of Views may skip, by view name; a view not here may skip nothing.
var skips = map[string][]skipRule{
	ProcessView.Name: {
		{regexp.MustCompile(`^readfile /proc/\d+/(stat|status|cmdline)$`), Vanished{Processes: 1}, 1}},
	SocketView.Name: {
		{regexp.MustCompile(`^readdir /proc/\d+/fd$`), Vanished{Processes: 1}, 0},
		{regexp.MustCompile(`^readlink /proc/\d+/fd/\d+$`), Vanished{Descriptors: 1}, 0}},
	OpenFileView.Name: {
		{regexp.MustCompile(`^readlink /proc/175/fd/\d+$`), Vanished{Descriptors: 1}, 1},
		{regexp.MustCompile(`^readfile /proc/175/fdinfo/\d+$`), Vanished{Descriptors: 1}, 1}},
}

// capturedPID is the process the per-process views read in the captured files.
const capturedPID = 175

// errMemoMiss stands for Fast-Bridge's memo miss: an error of the engine with no errno in it.
var errMemoMiss = errors.New("memo miss")

// faults are the failures injected at each step: vanish says whether it means "gone".
var faults = []struct {
	name    string
	makeErr func(op, path string) error
	vanish  bool
}{
	{"memo miss", func(op, _ string) error { return fmt.Errorf("%w: pid_revalidate+0x2a in %s", errMemoMiss, op) }, false},
	{"EFAULT", func(op, path string) error { return &fs.PathError{Op: op, Path: path, Err: syscall.EFAULT} }, false},
	{"EACCES", func(op, path string) error { return &fs.PathError{Op: op, Path: path, Err: syscall.EACCES} }, false},
	{"ENOENT", func(op, path string) error { return &fs.PathError{Op: op, Path: path, Err: syscall.ENOENT} }, true},
	{"ESRCH", func(op, path string) error { return fmt.Errorf("%s %s: %w", op, path, syscall.ESRCH) }, true},
}

// TestWalkersNeverSwallow fails every call of every view in turn with each fault: only a
// process or descriptor reported gone may be left out, and it is counted; anything else fails
// the view with the injected error, naming what was read, and no records.
func TestWalkersNeverSwallow(t *testing.T) {
	for _, v := range Views {
		f := captured(t)
		base, gone, err := v.Read(f, capturedPID)
		if err != nil || !gone.Zero() {
			t.Fatalf("%s on the captured files: %v (%s)", v.Name, err, gone)
		}
		calls := f.calls
		baseLen := records(base)
		for step, call := range calls {
			_, path, _ := strings.Cut(call, " ")
			for _, fault := range faults {
				f := captured(t)
				f.failAt, f.makeErr = step, fault.makeErr
				got, gone, err := v.Read(f, capturedPID)
				what := fmt.Sprintf("%s, %s at %q", v.Name, fault.name, call)
				if f.injected == nil {
					t.Fatalf("%s: the walker made other calls than on the first run", what)
				}
				var rule *skipRule
				for i, r := range skips[v.Name] {
					if r.call.MatchString(call) {
						rule = &skips[v.Name][i]
					}
				}
				if fault.vanish && rule != nil {
					if err != nil {
						t.Errorf("%s: %v, want it skipped", what, err)
					} else if gone != rule.gone || records(got) != baseLen-rule.fewer {
						t.Errorf("%s: %d records and %+v vanished, want %d and %+v", what, records(got), gone, baseLen-rule.fewer, rule.gone)
					}
					continue
				}
				switch {
				case err == nil:
					t.Errorf("%s: no error, %d records (%s)", what, records(got), gone)
				case !errors.Is(err, f.injected):
					t.Errorf("%s: %v does not wrap the injected error", what, err)
				case !strings.Contains(err.Error(), path):
					t.Errorf("%s: %q does not say what was read", what, err)
				case got != nil:
					t.Errorf("%s: an error and records: %+v", what, got)
				}
			}
		}
		t.Logf("%s: %d calls, each failed %d ways", v.Name, len(calls), len(faults))
	}
}

// records counts a view's records: the length of a list, the interfaces of ifconfig, or 1.
func records(v any) int {
	if ifs, ok := v.(Interfaces); ok {
		return len(ifs.Interfaces)
	}
	if rv := reflect.ValueOf(v); rv.Kind() == reflect.Slice {
		return rv.Len()
	}
	return 1
}

// TestWalkersOnCapturedFiles checks the walkers end to end on the captured files, with values
// read off testdata by hand.
func TestWalkersOnCapturedFiles(t *testing.T) {
	f := captured(t)
	procs, gone, err := ListProcesses(f)
	if err != nil || !gone.Zero() {
		t.Fatalf("ps: %v (%s)", err, gone)
	}
	want := []Process{
		{PID: 1, State: "S", Threads: 1, RSSKiB: 12, StartTicks: 51, CPUTicks: 75, Comm: "init", Cmdline: []string{"init"}, argLen: 11, envLen: 67},
		{PID: 2, State: "S", Threads: 1, StartTicks: 51, CPUTicks: 1, Comm: "kthreadd", Kernel: true},
		{PID: 105, PPID: 1, State: "S", Threads: 1, RSSKiB: 4, StartTicks: 211, Comm: "nc", Cmdline: []string{"nc", "-ll", "-p", "7001", "-e", "/bin/cat"}, argLen: 27, envLen: 106},
		{PID: 175, PPID: 1, State: "S", Threads: 1, RSSKiB: 4, StartTicks: 2053, CPUTicks: 1, Comm: "a) (b c", Cmdline: []string{"/bin/sh", "/tmp/a) (b c"}, argLen: 21, envLen: 85},
	}
	if !reflect.DeepEqual(procs, want) {
		t.Errorf("ps:\n got  %+v\n want %+v", procs, want)
	}
	if got := procs[1].Command(); got != "[kthreadd]" {
		t.Errorf("kthreadd's command %q", got)
	}

	socks, gone, err := ListSockets(f, true)
	if err != nil || !gone.Zero() || len(socks) != 7 {
		t.Fatalf("netstat: %d sockets, %v (%s)", len(socks), err, gone)
	}
	for _, s := range socks {
		if wantPIDs := map[uint64][]int{10233: {105}}[s.Inode]; !reflect.DeepEqual(s.PIDs, wantPIDs) {
			t.Errorf("socket %d held by %v, want %v", s.Inode, s.PIDs, wantPIDs)
		}
	}

	files, gone, err := ListOpenFiles(f, f, 175)
	wantFiles := []OpenFile{{0, "/dev/null", 0, "0100000"}, {1, "/dev/null", 0, "0100001"},
		{2, "/dev/null", 0, "0100001"}, {3, "/etc/passwd", 30, "0100000"}, {10, "/tmp/a) (b c", 54, "02100000"}}
	if err != nil || !gone.Zero() || !reflect.DeepEqual(files, wantFiles) {
		t.Errorf("lsof 175: %+v, %v (%s)", files, err, gone)
	}
	if _, _, err := ListOpenFiles(f, f, 999); !IsVanished(err) {
		t.Errorf("lsof of a process that does not exist: %v", err)
	}

	env, err := ReadEnviron(f, 1)
	if wantEnv := []string{"SHLVL=1", "HOME=/", "TERM=linux", "PATH=/sbin:/usr/sbin:/bin:/usr/bin", "PWD=/"}; err != nil || !reflect.DeepEqual(env, wantEnv) {
		t.Errorf("env 1: %q, %v", env, err)
	}

	// A stat that is not what the kernel prints fails ps, naming the file.
	f.set.Files["/proc/105/stat"] = []byte("105 (nc) S 1\n")
	if procs, _, err := ListProcesses(f); err == nil || !strings.Contains(err.Error(), "/proc/105/stat") || procs != nil {
		t.Errorf("ps with a broken stat: %v, %d processes", err, len(procs))
	}
}

func TestVanished(t *testing.T) {
	for _, c := range []struct {
		v    Vanished
		want string
	}{
		{Vanished{}, ""},
		{Vanished{Processes: 1}, "1 process vanished while read"},
		{Vanished{Processes: 2, Descriptors: 1}, "2 processes and 1 descriptor vanished while read"},
		{Vanished{Descriptors: 3}, "3 descriptors vanished while read"},
	} {
		if got := c.v.String(); got != c.want {
			t.Errorf("%+v: %q, want %q", c.v, got, c.want)
		}
	}
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&fs.PathError{Op: "open", Path: "/proc/9/stat", Err: syscall.ENOENT}, true},
		{fmt.Errorf("read: %w", syscall.ESRCH), true},
		{fmt.Errorf("read: %w", fs.ErrNotExist), true},
		{&fs.PathError{Op: "read", Path: "/proc/9/stat", Err: syscall.EFAULT}, false},
		{fmt.Errorf("%w: in openat", errMemoMiss), false},
		{nil, false},
	} {
		if got := IsVanished(c.err); got != c.want {
			t.Errorf("IsVanished(%v) = %v", c.err, got)
		}
	}
}
