package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"hybridbridge/guest"
	"hybridbridge/inspect"
	"hybridbridge/internal/plainvm"
	"hybridbridge/target"
	"hybridbridge/ui"
)

// dumpGuest writes the guest's memory to path with dump-guest-memory. The guest should be
// paused so that the dump is one moment's memory.
func dumpGuest(ctx context.Context, g *guest.Guest, path string) error {
	q, err := g.Monitor(ctx)
	if err != nil {
		return err
	}
	defer q.Close()
	return target.WriteDump(ctx, q, path)
}

// The test guest's dump, in the run folder TestMain removes, and what the views read from the
// guest itself at the moment it shows: shared by the tests that need a dump.
var frozen struct {
	once sync.Once
	path string
	ps   string // ps --json of the live guest, paused at the dump's moment
	ls   string // lsmod --json of it
	err  error
}

// needDump dumps the test guest once, paused, and reads ps and lsmod from the live guest in the
// same pause: the dump's ground truth.
func needDump(t *testing.T) string {
	t.Helper()
	needGuest(t)
	frozen.once.Do(func() {
		frozen.path = filepath.Join(runDir, "cli.dump")
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		g, err := guest.Open(runDir, "cli")
		if err != nil {
			frozen.err = err
			return
		}
		if frozen.err = g.Pause(ctx); frozen.err != nil {
			return
		}
		defer g.Resume(context.WithoutCancel(ctx))
		if frozen.err = dumpGuest(ctx, g, frozen.path); frozen.err != nil {
			return
		}
		// The views leave a guest that was paused paused: these read the dump's moment.
		if frozen.ps, _, frozen.err = run("ps", "--guest", "cli", "--json"); frozen.err != nil {
			return
		}
		frozen.ls, _, frozen.err = run("lsmod", "--guest", "cli", "--json")
		if st, err := g.Status(ctx); frozen.err == nil && (err != nil || st != "paused") {
			frozen.err = fmt.Errorf("the views did not leave the paused guest paused: %q %v", st, err)
		}
	})
	if frozen.err != nil {
		t.Fatalf("dump of the test guest: %v", frozen.err)
	}
	return frozen.path
}

// detachAtEnd detaches name when the test ends, whatever happened.
func detachAtEnd(t *testing.T, name string) {
	t.Cleanup(func() { target.Unregister(runDir, name) })
}

// listed returns guest list --json.
func listed(t *testing.T) []listRow {
	t.Helper()
	out, errOut, err := run("guest", "list", "--json")
	if err != nil {
		t.Fatalf("guest list: %v\n%s", err, errOut)
	}
	var rows []listRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("guest list --json: %v\n%s", err, out)
	}
	return rows
}

func rowOf(rows []listRow, name string) *listRow {
	for i := range rows {
		if rows[i].Name == name {
			return &rows[i]
		}
	}
	return nil
}

// A dump of the test guest, attached, reads as the guest itself did at the dump's moment: ps and
// lsmod from the dump equal ps and lsmod of the live guest paused at that moment (the inspecting
// ps runs in the SVM, not in the guest, so nothing differs). The list shows it as a frozen dump;
// detach forgets it and leaves the file.
func TestAttachDump(t *testing.T) {
	path := needDump(t)
	detachAtEnd(t, "cli-dump")
	start := time.Now()
	out, errOut, err := run("guest", "attach", "cli-dump", "--dump", path)
	if err != nil {
		t.Fatalf("attach: %v\n%s", err, errOut)
	}
	t.Logf("attach in %v: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
	if !strings.HasPrefix(out, "attached cli-dump: dump "+path+", no process, 256 MiB RAM, frozen, kernel ") || strings.Count(out, "\n") != 1 {
		t.Errorf("attach printed %q", out)
	}

	start = time.Now()
	psDump, errOut, err := run("ps", "--guest", "cli-dump", "--json")
	if err != nil {
		t.Fatalf("ps of the dump: %v\n%s", err, errOut)
	}
	t.Logf("ps of the dump in %v: %s", time.Since(start).Round(time.Millisecond), lastLine(errOut))
	if !strings.Contains(errOut, "guest RAM copied for the SVM first") {
		t.Errorf("the summary does not tell the RAM copy: %s", errOut)
	}
	var live, dumped []inspect.Process
	if err := json.Unmarshal([]byte(frozen.ps), &live); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(psDump), &dumped); err != nil {
		t.Fatal(err)
	}
	if len(live) < len(guest.DemoProcesses) || !reflect.DeepEqual(live, dumped) {
		t.Errorf("ps of the dump differs from ps of the paused guest:\n%s", diffProcesses(live, dumped))
	}
	lsDump, errOut, err := run("lsmod", "--guest", "cli-dump", "--json")
	if err != nil {
		t.Fatalf("lsmod of the dump: %v\n%s", err, errOut)
	}
	if !jsonEqual(t, frozen.ls, lsDump) {
		t.Errorf("lsmod of the dump:\n%s\nof the paused guest:\n%s", lsDump, frozen.ls)
	}

	// guest read of the dump: the kernel's own banner, as the guest's read of it.
	banner, errOut, err := run("guest", "read", "cli-dump", "linux_banner", "--string")
	if err != nil {
		t.Fatalf("read of the dump: %v\n%s", err, errOut)
	}
	want, _, err := run("guest", "read", "cli", "linux_banner", "--string")
	if err != nil || banner != want || !strings.HasPrefix(banner, "Linux version ") {
		t.Errorf("read of the dump %q, of the guest %q (%v)", banner, want, err)
	}

	// The console's refresh reads the dump as the views do, and says what it is.
	e := &env{runDir: runDir, stdout: io.Discard, stderr: io.Discard}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tg, kernel, err := e.openTarget(ctx, "cli-dump")
	if err != nil {
		t.Fatal(err)
	}
	src, err := e.newConsoleSource(ctx, "cli-dump", tg, kernel)
	tg.Close()
	if err != nil {
		t.Fatal(err)
	}
	if info := src.Info(); info.Guest != "cli-dump" || info.Accel != "attached via dump" {
		t.Errorf("console info: %+v", info)
	}
	f, err := src.Refresh(ctx, ui.ModeAuto, func(ui.Progress) {})
	if err != nil {
		t.Fatalf("console refresh: %v", err)
	}
	// Compared as ps --json prints them: JSON leaves no difference between an empty list and none.
	framed, err := json.Marshal(f.Processes)
	if err != nil {
		t.Fatal(err)
	}
	if f.GuestState != "frozen" || !jsonEqual(t, string(framed), frozen.ps) || len(f.Modules) == 0 {
		t.Errorf("console frame of the dump: state %q, %d processes (want %d), %d modules", f.GuestState, len(f.Processes), len(live), len(f.Modules))
	}

	// The benchmark measures the dump as it is.
	out, errOut, err = run("bench", "--guest", "cli-dump", "--json", "--snapshots", "2")
	if err != nil {
		t.Fatalf("bench of the dump: %v\n%s", err, errOut)
	}
	var rep benchReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("bench --json: %v\n%s", err, out)
	}
	if rep.Guest != "cli-dump" || rep.Processes != len(live) || len(rep.Views) != 3 || len(rep.Snapshots) != 2 ||
		rep.Snapshots[1].Processes != len(live) || rep.Snapshots[1].FallBacks != 0 || !strings.Contains(errOut, "measured as it is") {
		t.Errorf("bench of the dump: %+v\n%s", rep, errOut)
	}
	for _, v := range rep.Views {
		t.Logf("bench of the dump, %s: slow %v, warm %v (whole %v, RAM copy included)", v.View, v.Slow.Engine, v.WarmFast.Engine, v.WarmFast.Whole)
	}

	rows := listed(t)
	if r := rowOf(rows, "cli-dump"); r == nil || r.Kind != target.KindDump || r.State != "frozen" || r.RAM>>20 != 256 || r.Attached == nil || r.Attached.Dump != path {
		t.Errorf("guest list: %+v", r)
	}
	if r := rowOf(rows, "cli"); r == nil || r.Kind != target.KindOwn || r.State != "running" {
		t.Errorf("guest list, own guest: %+v", r)
	}
	out, _, err = run("guest", "list")
	if err != nil || !regexpMatch(`(?m)^cli-dump\s+dump\s+frozen\s+-\s+256M\s`, out) {
		t.Errorf("guest list table: %v\n%s", err, out)
	}

	out, _, err = run("guest", "detach", "cli-dump")
	if err != nil || !strings.Contains(out, "detached cli-dump") {
		t.Fatalf("detach: %q %v", out, err)
	}
	if rowOf(listed(t), "cli-dump") != nil {
		t.Error("detached, yet listed")
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("detach removed the dump: %v", err)
	}
	if _, _, err := run("ps", "--guest", "cli-dump"); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Errorf("ps of a detached dump: %v", err)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func jsonEqual(t *testing.T, a, b string) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal([]byte(a), &x); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(b), &y); err != nil {
		t.Fatal(err)
	}
	return reflect.DeepEqual(x, y)
}

// diffProcesses lists the processes that differ between two ps runs, by PID.
func diffProcesses(a, b []inspect.Process) string {
	byPID := func(ps []inspect.Process) map[int]inspect.Process {
		m := map[int]inspect.Process{}
		for _, p := range ps {
			m[p.PID] = p
		}
		return m
	}
	ma, mb := byPID(a), byPID(b)
	var out []string
	for pid, p := range ma {
		if q, ok := mb[pid]; !ok {
			out = append(out, fmt.Sprintf("only in the first: %+v", p))
		} else if !reflect.DeepEqual(p, q) {
			out = append(out, fmt.Sprintf("pid %d:\n  %+v\n  %+v", pid, p, q))
		}
	}
	for pid, q := range mb {
		if _, ok := ma[pid]; !ok {
			out = append(out, fmt.Sprintf("only in the second: %+v", q))
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// --kernel names the guest's build: a copy of the setup's kernel elsewhere is the same build (its
// snapshot is keyed by content), and the record keeps the path for later commands.
func TestAttachWithKernel(t *testing.T) {
	path := needDump(t)
	detachAtEnd(t, "cli-kernel")
	cache, err := guest.FindCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(cache, "kernel", "vmlinuz"))
	if err != nil {
		t.Fatal(err)
	}
	bz := filepath.Join(t.TempDir(), "bzImage")
	if err := os.WriteFile(bz, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errOut, err := run("guest", "attach", "cli-kernel", "--dump", path, "--kernel", bz); err != nil {
		t.Fatalf("attach --kernel: %v\n%s", err, errOut)
	}
	if r := rowOf(listed(t), "cli-kernel"); r == nil || r.Attached == nil || r.Attached.Kernel != bz {
		t.Errorf("guest list: %+v", r)
	}
	out, errOut, err := run("uname", "--guest", "cli-kernel", "--json")
	if err != nil {
		t.Fatalf("uname: %v\n%s", err, errOut)
	}
	var u inspect.Uname
	rel, err := guest.KernelRelease(bz)
	if err != nil || json.Unmarshal([]byte(out), &u) != nil || u.Release != rel {
		t.Errorf("uname of the dump: %s; the bzImage names %q (%v)", out, rel, err)
	}
}

// Bad input is refused with one line naming the problem, and leaves the test guest running.
func TestAttachRefusals(t *testing.T) {
	path := needDump(t)
	detachAtEnd(t, "cli-held")
	if _, errOut, err := run("guest", "attach", "cli-held", "--dump", path); err != nil {
		t.Fatalf("attach: %v\n%s", err, errOut)
	}
	dir := t.TempDir()
	text := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(text, []byte("not a dump\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dead := filepath.Join(dir, "dead.sock")
	if err := deadSocket(dead); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"guest", "attach", "x"}, "name exactly one of --qmp, --pid, --libvirt or --dump (given: none)"},
		{[]string{"guest", "attach", "x", "--qmp", dead, "--dump", path}, "name exactly one of --qmp, --pid, --libvirt or --dump (given: --qmp, --dump)"},
		{[]string{"guest", "attach", "x", "--dump", text}, "not an ELF file"},
		{[]string{"guest", "attach", "x", "--dump", missing}, "no such file"},
		{[]string{"guest", "attach", "x", "--qmp", dead}, "connection refused: nothing listens on it"},
		{[]string{"guest", "attach", "x", "--qmp", missing}, "no such file"},
		{[]string{"guest", "attach", "x", "--pid", "0"}, "bad PID 0"},
		{[]string{"guest", "attach", "x", "--pid", strconv.Itoa(os.Getpid())}, "is not a QEMU process"},
		{[]string{"guest", "attach", "x", "--dump", path, "--kernel", missing}, "kernel " + missing + ": no such file or directory"},
		{[]string{"guest", "attach", "x", "--dump", path, "--kernel", text}, "kernel " + text + ": not a Linux bzImage"},
		{[]string{"guest", "attach", "Bad", "--dump", path}, `bad name "Bad"`},
		{[]string{"guest", "attach", "cli", "--dump", path}, `"cli" is a guest hybridbridge started`},
		{[]string{"guest", "attach", "cli-held", "--dump", path}, `"cli-held" is already attached (dump ` + path + `); detach it first`},
		{[]string{"guest", "start", "--name", "cli-held"}, `"cli-held" names an attached VM`},
		{[]string{"guest", "stop", "cli-held"}, "cli-held is a VM hybridbridge did not start (dump " + path + "): detach it with: hybridbridge guest detach cli-held"},
		{[]string{"guest", "exec", "cli-held", "--", "true"}, "cli-held is a VM hybridbridge did not start (dump " + path + "): hybridbridge has no command channel into it"},
		{[]string{"guest", "detach", "cli"}, `"cli" is a guest hybridbridge started`},
		{[]string{"guest", "detach", "nosuch"}, `no attached VM of that name: "nosuch"`},
		{[]string{"ps", "--guest", "nosuch"}, `guest "nosuch": guest is not running`},
		{[]string{"cat", "/proc/uptime", "--guest", "nosuch"}, "no VM of that name is attached either"},
		{[]string{"bench", "--guest", "nosuch"}, "no VM of that name is attached either"},
		{[]string{"guest", "read", "nosuch", "linux_banner"}, "no VM of that name is attached either"},
		{[]string{"svm", "build", "--kernel", text}, "kernel " + text + ": not a Linux bzImage"},
	} {
		out, _, err := run(c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(oneLine(err), "\n") {
			t.Errorf("%v: error %v (printed %q); want one line with %q", c.args, err, out, c.want)
		} else {
			t.Logf("%v: %s", c.args, oneLine(err))
		}
	}
	// Nothing was registered by the refusals, and the guest runs.
	for _, r := range listed(t) {
		if r.Name == "x" || r.Name == "Bad" {
			t.Errorf("a refused attach registered %+v", r)
		}
	}
	if r := rowOf(listed(t), "cli"); r == nil || r.State != "running" {
		t.Errorf("the test guest after the refusals: %+v", r)
	}
}

// deadSocket leaves a unix socket file nothing listens on: what a VM that exited leaves.
func deadSocket(path string) error {
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return err
	}
	// Closing the listener would remove the file; the file must stay.
	l.SetUnlinkOnClose(false)
	return l.Close()
}

// A plain QEMU VM hybridbridge did not start (anonymous RAM, the kernel's own defaults, PTI on),
// attached by its QMP socket and by its PID: ps and lsmod read from outside equal what the VM's
// own /proc says over its command channel, each command leaves it running, and it keeps running
// after detach.
func TestAttachPlainVM(t *testing.T) {
	needGuest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	start := time.Now()
	vm, qmp := startVM(ctx, t, func(d plainvm.Demo) []string { return d.BootArgs("pti=on") })
	t.Logf("plain VM pid %d ready in %v", vm.PID, time.Since(start).Round(time.Second))

	for _, c := range []struct {
		name string
		how  []string
		kind target.Kind
	}{
		{"plain-qmp", []string{"--qmp", qmp}, target.KindQMP},
		{"plain-pid", []string{"--pid", strconv.Itoa(vm.PID)}, target.KindPID},
	} {
		t.Run(string(c.kind), func(t *testing.T) {
			detachAtEnd(t, c.name)
			out, errOut, err := run(append([]string{"guest", "attach", c.name}, c.how...)...)
			if err != nil {
				t.Fatalf("attach: %v\n%s", err, errOut)
			}
			t.Log(strings.TrimSpace(out))
			if !strings.Contains(out, fmt.Sprintf("pid %d", vm.PID)) || !strings.Contains(out, "256 MiB RAM, running") {
				t.Errorf("attach printed %q", out)
			}
			stillRunning(t, ctx, qmp, "attach")
			r := rowOf(listed(t), c.name)
			if r == nil || r.Kind != c.kind || r.State != "running" || r.PID != vm.PID {
				t.Errorf("guest list: %+v", r)
			}
			stillRunning(t, ctx, qmp, "guest list")

			before := guestProcesses(t, ctx, vm)
			out, errOut, err = run("ps", "--guest", c.name, "--json")
			if err != nil {
				t.Fatalf("ps: %v\n%s", err, errOut)
			}
			t.Log(lastLine(errOut))
			after := guestProcesses(t, ctx, vm)
			stillRunning(t, ctx, qmp, "ps")
			var procs []inspect.Process
			if err := json.Unmarshal([]byte(out), &procs); err != nil {
				t.Fatal(err)
			}
			compareProcesses(t, procs, before, after)

			out, errOut, err = run("lsmod", "--guest", c.name, "--json")
			if err != nil {
				t.Fatalf("lsmod: %v\n%s", err, errOut)
			}
			stillRunning(t, ctx, qmp, "lsmod")
			var mods []inspect.Module
			if err := json.Unmarshal([]byte(out), &mods); err != nil {
				t.Fatal(err)
			}
			compareModules(t, mods, vm, ctx)

			banner, errOut, err := run("guest", "read", c.name, "linux_banner", "--string")
			if err != nil {
				t.Fatalf("guest read: %v\n%s", err, errOut)
			}
			stillRunning(t, ctx, qmp, "guest read")
			if res, err := vm.Exec(ctx, "cat /proc/version"); err != nil || string(res.Stdout) != banner {
				t.Errorf("linux_banner from outside %q, /proc/version inside %q (%v)", banner, res.Stdout, err)
			}

			if _, _, err := run("guest", "stop", c.name); err == nil || !strings.Contains(err.Error(), "did not start") {
				t.Errorf("guest stop of an attached VM: %v", err)
			}
			if out, _, err := run("guest", "detach", c.name); err != nil || !strings.Contains(out, "not touched") {
				t.Errorf("detach: %q %v", out, err)
			}
			stillRunning(t, ctx, qmp, "detach")
			if _, err := vm.Exec(ctx, "true"); err != nil {
				t.Errorf("the VM after detach: %v", err)
			}
		})
	}

	// A VM that exits after attach is listed as gone, and inspecting it fails in one line.
	detachAtEnd(t, "plain-gone")
	if _, errOut, err := run("guest", "attach", "plain-gone", "--qmp", qmp); err != nil {
		t.Fatalf("attach: %v\n%s", err, errOut)
	}
	if err := vm.Stop(); err != nil {
		t.Fatal(err)
	}
	if r := rowOf(listed(t), "plain-gone"); r == nil || r.State != "gone" || r.Error == "" {
		t.Errorf("guest list after the VM exited: %+v", r)
	} else {
		t.Logf("gone: %s", r.Error)
	}
	if _, _, err := run("ps", "--guest", "plain-gone"); err == nil || strings.Contains(oneLine(err), "\n") {
		t.Errorf("ps of a VM that exited: %v", err)
	} else {
		t.Logf("ps of a VM that exited: %s", oneLine(err))
	}
	if out, _, err := run("guest", "detach", "plain-gone"); err != nil || !strings.Contains(out, "detached plain-gone") {
		t.Errorf("detach of a VM that exited: %q %v", out, err)
	}
}

// stillRunning fails the test unless the VM behind the QMP socket runs (after what).
func stillRunning(t *testing.T, ctx context.Context, qmp, what string) {
	t.Helper()
	tg, err := target.OpenQMP(ctx, qmp)
	if err != nil {
		t.Fatalf("after %s: %v", what, err)
	}
	defer tg.Close()
	if st, err := tg.State(ctx); err != nil || st != target.Running {
		t.Errorf("after %s the VM is %q (%v)", what, st, err)
		if st == target.Paused {
			tg.Resume(ctx)
		}
	}
}

// guestProc is a process as the guest's own /proc shows it.
type guestProc struct {
	comm string
	args []string
}

// guestProcesses lists the VM's processes from inside, over its command channel.
func guestProcesses(t *testing.T, ctx context.Context, vm *plainvm.VM) map[int]guestProc {
	t.Helper()
	res, err := vm.Exec(ctx, `for d in /proc/[0-9]*; do printf '%s\t%s\t' "${d#/proc/}" "$(cat $d/comm)"; tr '\0' '\1' < $d/cmdline; echo; done 2>/dev/null`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]guestProc{}
	for _, line := range strings.Split(strings.TrimSpace(string(res.Stdout)), "\n") {
		f := strings.SplitN(line, "\t", 3)
		if len(f) != 3 {
			continue // a process that exited while listed
		}
		pid, err := strconv.Atoi(f[0])
		if err != nil {
			t.Fatalf("guest /proc listing: %q", line)
		}
		// ps splits the command line at NULs and drops the empty words at its end (busybox init
		// pads its own).
		var args []string
		if a := strings.TrimRight(f[2], "\x01"); a != "" {
			args = strings.Split(a, "\x01")
		}
		out[pid] = guestProc{comm: f[1], args: args}
	}
	return out
}

// compareProcesses checks ps from outside against the guest's own listings taken just before and
// after: every process in both (the ones that lived throughout) is there with its name and
// arguments, and every process ps shows was in one of them (the listing shell's own helpers come
// and go).
func compareProcesses(t *testing.T, procs []inspect.Process, before, after map[int]guestProc) {
	t.Helper()
	seen := map[int]inspect.Process{}
	for _, p := range procs {
		seen[p.PID] = p
	}
	stable := 0
	for pid, b := range before {
		a, ok := after[pid]
		if !ok || a.comm != b.comm || !reflect.DeepEqual(a.args, b.args) {
			continue
		}
		stable++
		p, ok := seen[pid]
		switch {
		case !ok:
			t.Errorf("pid %d (%s) lived throughout, yet ps from outside lacks it", pid, b.comm)
		case workerName(p.Comm) != workerName(b.comm) || !reflect.DeepEqual(nonNil(p.Cmdline), nonNil(b.args)):
			t.Errorf("pid %d: outside %q %q, inside %q %q", pid, p.Comm, p.Cmdline, b.comm, b.args)
		}
	}
	for pid, p := range seen {
		_, inB := before[pid]
		_, inA := after[pid]
		// The command channel's shells and their commands, and kernel workers, come and go.
		transient := strings.HasPrefix(p.Comm, "kworker/") || p.Comm == "sh" || p.Comm == "hbguest" || p.Comm == "cat" || p.Comm == "tr"
		if !inB && !inA && !transient {
			t.Errorf("ps from outside shows pid %d (%s), which the guest never listed", pid, p.Comm)
		}
	}
	comms := map[string]bool{}
	for _, p := range procs {
		comms[p.Comm] = true
	}
	for _, c := range guest.DemoProcesses {
		if !comms[c] {
			t.Errorf("ps from outside lacks %s", c)
		}
	}
	if stable < 50 {
		t.Errorf("only %d processes lived throughout the comparison", stable)
	}
	t.Logf("%d processes from outside, %d compared with the guest's own /proc", len(procs), stable)
}

// workerName is a process name without the work queue a kernel worker names after its latest
// work (kworker/1:0-events becomes kworker/1:0-mm_percpu_wq as it runs other work).
func workerName(comm string) string {
	if strings.HasPrefix(comm, "kworker/") {
		comm, _, _ = strings.Cut(comm, "-")
	}
	return comm
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// compareModules checks lsmod from outside against the VM's own /proc/modules.
func compareModules(t *testing.T, mods []inspect.Module, vm *plainvm.VM, ctx context.Context) {
	t.Helper()
	res, err := vm.Exec(ctx, "cat /proc/modules")
	if err != nil {
		t.Fatal(err)
	}
	inside := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(res.Stdout)), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 {
			inside[f[0]] = f[1] + " " + f[2]
		}
	}
	if len(mods) != len(inside) || len(mods) == 0 {
		t.Errorf("lsmod from outside: %d modules, inside %d", len(mods), len(inside))
	}
	for _, m := range mods {
		if got := fmt.Sprintf("%d %d", m.Size, m.Refs); inside[m.Name] != got {
			t.Errorf("module %s: outside %q, inside %q", m.Name, got, inside[m.Name])
		}
	}
}

func regexpMatch(re, s string) bool { return regexp.MustCompile(re).MatchString(s) }

// The help of the commands for attached VMs says what they do to the VM: attach and the views
// leave nothing paused, detach and stop never stop an attached VM, exec refuses it.
func TestAttachHelp(t *testing.T) {
	for _, c := range []struct {
		cmd  []string
		want []string
	}{
		{[]string{"guest", "attach"}, []string{"opens the VM once", "nothing stays paused between commands", "neither pauses nor changes the VM", "guest stop never stops it", "--kernel"}},
		{[]string{"guest", "detach"}, []string{"not\nstopped, paused or resumed"}},
		{[]string{"guest", "stop"}, []string{"never stopped by hybridbridge: detach it instead"}},
		{[]string{"guest", "exec"}, []string{"an attached VM is refused"}},
		{[]string{"guest", "list"}, []string{"frozen (a dump)", "gone"}},
		{[]string{"ps"}, []string{"Nothing\nstays paused between commands", "guest attach"}},
		{[]string{"cat"}, []string{"Nothing\nstays paused between commands"}},
		{[]string{"bench"}, []string{"An attached VM (guest attach) is measured as it is"}},
		{[]string{"console"}, []string{"guest attach", "nothing stays paused between\nrefreshes"}},
	} {
		out, _, err := run(append(c.cmd, "--help")...)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("%v --help lacks %q:\n%s", c.cmd, w, out)
			}
		}
	}
}

// TestAttachKASLRVM attaches a VM booted with the kernel's defaults, KASLR included: the first
// command builds an SVM snapshot in the VM's layout (said on stderr), and ps, lsmod and guest
// read then equal what the VM's own /proc says.
func TestAttachKASLRVM(t *testing.T) {
	needGuest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	// The kernel's defaults, KASLR included.
	vm, qmp := startVM(ctx, t, func(d plainvm.Demo) []string {
		return []string{"-kernel", d.Kernel, "-initrd", d.Initrd, "-append", "console=ttyS0 panic=-1"}
	})
	const name = "kaslr-qmp"
	detachAtEnd(t, name)
	start := time.Now()
	out, errOut, err := run("guest", "attach", name, "--qmp", qmp)
	if err != nil {
		t.Fatalf("attach: %v\n%s", err, errOut)
	}
	t.Logf("attach in %v: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
	if !strings.Contains(errOut, "KASLR layout") {
		t.Errorf("attach did not say it builds a snapshot in the VM's layout: %q", errOut)
	}
	stillRunning(t, ctx, qmp, "attach")

	before := guestProcesses(t, ctx, vm)
	out, errOut, err = run("ps", "--guest", name, "--json")
	if err != nil {
		t.Fatalf("ps: %v\n%s", err, errOut)
	}
	t.Log(lastLine(errOut))
	if strings.Contains(errOut, "building") {
		t.Errorf("ps built a snapshot again: %q", errOut)
	}
	after := guestProcesses(t, ctx, vm)
	var procs []inspect.Process
	if err := json.Unmarshal([]byte(out), &procs); err != nil {
		t.Fatal(err)
	}
	compareProcesses(t, procs, before, after)

	out, errOut, err = run("lsmod", "--guest", name, "--json")
	if err != nil {
		t.Fatalf("lsmod: %v\n%s", err, errOut)
	}
	var mods []inspect.Module
	if err := json.Unmarshal([]byte(out), &mods); err != nil {
		t.Fatal(err)
	}
	compareModules(t, mods, vm, ctx)

	banner, errOut, err := run("guest", "read", name, "linux_banner", "--string")
	if err != nil {
		t.Fatalf("guest read: %v\n%s", err, errOut)
	}
	if res, err := vm.Exec(ctx, "cat /proc/version"); err != nil || string(res.Stdout) != banner {
		t.Errorf("linux_banner from outside %q, /proc/version inside %q (%v)", banner, res.Stdout, err)
	}
	stillRunning(t, ctx, qmp, "the views")
}

// startVM starts a VM from a plain QEMU command line (pc, 256M, two vCPUs, QEMU's default CPU,
// anonymous RAM, QMP) booting the demo image with boot's kernel arguments, and waits for its
// workload; it is stopped when the test ends. It returns the VM and its QMP socket.
func startVM(ctx context.Context, t *testing.T, boot func(plainvm.Demo) []string) (*plainvm.VM, string) {
	t.Helper()
	d, err := plainvm.DemoImage()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "hbcli-vm") // unix socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	qmp := filepath.Join(dir, "qmp.sock")
	args := []string{"-machine", "pc", "-accel", "tcg", "-m", "256M", "-smp", "2",
		"-nodefaults", "-display", "none", "-no-reboot"}
	args = append(args, boot(d)...)
	args = append(args, plainvm.ChannelArgs(filepath.Join(dir, "console.log"), filepath.Join(dir, "cmd.sock"))...)
	args = append(args, plainvm.QMPArgs(qmp)...)
	vm, err := plainvm.Start(ctx, dir, args, plainvm.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Stop() })
	if err := vm.WaitReady(ctx, 0); err != nil {
		t.Fatal(err)
	}
	return vm, qmp
}
