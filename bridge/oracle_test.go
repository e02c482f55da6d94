package bridge

// The views compared with a second oracle that shares no code with them: the guest's own tools
// (busybox ps, netstat, lsmod, uname, free, mount, ls), run inside the guest and read here with
// small parsers of their printed output. The ground truth of bridge_test.go and views_test.go
// parses the guest's /proc files with inspect's own parsers, so a field read from the wrong
// column there passes; here it cannot, because busybox reads those files with its own code.

import (
	"context"
	"fmt"
	"net/netip"
	"path"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"hybridbridge/guest"
	"hybridbridge/inspect"
	"hybridbridge/memo"
)

// oracleViews are the views the tools are compared with, all read from one pause of the guest.
type oracleViews struct {
	Procs   []inspect.Process
	Sockets []inspect.Socket
	Modules []inspect.Module
	Uname   inspect.Uname
	Meminfo []inspect.MemField
	Mounts  []inspect.Mount
	// Vanished is what the walkers skipped as gone while read: nothing should be, in a paused
	// guest, and what was is missing from the views (and caught by the comparisons).
	Vanished string
}

// readOracleViews reads the views the tools are compared with, picked from inspect.Views.
func readOracleViews(s *Session) (*oracleViews, error) {
	v := &oracleViews{}
	var gone inspect.Vanished
	for _, read := range []func() error{
		func() error { return readView(s, inspect.ProcessView, &v.Procs, &gone) },
		func() error { return readView(s, inspect.SocketView, &v.Sockets, &gone) },
		func() error { return readView(s, inspect.ModuleView, &v.Modules, &gone) },
		func() error { return readView(s, inspect.UnameView, &v.Uname, &gone) },
		func() error { return readView(s, inspect.MeminfoView, &v.Meminfo, &gone) },
		func() error { return readView(s, inspect.MountView, &v.Mounts, &gone) },
	} {
		if err := read(); err != nil {
			return nil, err
		}
	}
	v.Vanished = gone.String()
	return v, nil
}

// readView reads view into its field of oracleViews, adding what vanished to gone.
func readView[T any](s *Session, view inspect.TypedView[T], into *T, gone *inspect.Vanished) error {
	recs, g, err := view.ReadTyped(s, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", view.Name, err)
	}
	*into, *gone = recs, gone.Add(g)
	return nil
}

// pausedViews reads the oracle's views from the paused demo guest and checks that reading them
// left the guest's memory as it was.
func pausedViews(t *testing.T) *oracleViews {
	t.Helper()
	ctx := need(t)
	s, mem, before := pausedSession(t, ctx)
	start := time.Now()
	v, err := readOracleViews(s)
	elapsed := time.Since(start)
	closeUnchanged(t, ctx, s, mem, before, err)
	t.Logf("views of %d processes, %d sockets, %d modules, %d mounts in %v", len(v.Procs), len(v.Sockets),
		len(v.Modules), len(v.Mounts), elapsed.Round(time.Millisecond))
	if v.Vanished != "" {
		t.Logf("in the paused guest, %s", v.Vanished)
	}
	return v
}

// toolScript runs the tools in one shell, each output after a "@@ <name>" line. Every tool but
// the shell's builtins is a child of the shell, whose pid comes first: those are the processes
// that exist only for the capture. free runs last, so that what the other tools allocate is
// already in its numbers.
const toolScript = `echo "@@ self $$"
run() { name=$1; shift; echo "@@ $name"; "$@" || echo "@@! $name exited $?"; }
run passwd cat /etc/passwd
run ps ps -o pid,ppid,user,ruser,stat,rss,comm,args
run netstat netstat -tuan
for p in tcp tcp6 udp udp6; do run raw/$p cat /proc/net/$p; done
run fds ls -l /proc/[0-9]*/fd/
run lsmod lsmod
run uname-a uname -a
for o in s n r v m o; do run uname-$o uname -$o; done
run domainname sysctl -n kernel.domainname
run mount mount
run free free
`

// toolOutput is toolScript's output split by tool.
type toolOutput struct {
	self int               // the capturing shell
	out  map[string]string // tool -> what it printed
}

func runTools(t *testing.T) *toolOutput {
	t.Helper()
	return runToolsIn(t, need(t), demo)
}

// runToolsIn runs toolScript in a guest and splits its output by tool.
func runToolsIn(t *testing.T, ctx context.Context, g execer) *toolOutput {
	t.Helper()
	res, err := g.Exec(ctx, toolScript)
	if err != nil {
		t.Fatalf("tools in the guest: %v", err)
	}
	if res.Status != 0 {
		t.Fatalf("tools in the guest: exit status %d: %s", res.Status, res.Stderr)
	}
	to := &toolOutput{out: map[string]string{}}
	var name string
	var b strings.Builder
	flush := func() {
		if name != "" {
			to.out[name] = b.String()
		}
		b.Reset()
	}
	for _, line := range strings.SplitAfter(string(res.Stdout), "\n") {
		rest, ok := strings.CutPrefix(line, "@@")
		switch {
		case !ok:
			b.WriteString(line)
		case strings.HasPrefix(rest, "!"):
			t.Fatalf("in the guest, %s (stderr %s)", strings.TrimSpace(rest[1:]), res.Stderr)
		default:
			flush()
			name = strings.TrimSpace(rest)
			if n, ok := strings.CutPrefix(name, "self "); ok {
				if to.self, err = strconv.Atoi(n); err != nil {
					t.Fatalf("tools in the guest: %q", line)
				}
				name = ""
			}
		}
	}
	flush()
	if to.self == 0 {
		t.Fatalf("tools in the guest printed no self line: %q", res.Stdout)
	}
	return to
}

// lines returns a tool's output lines, empty lines left out.
func (to *toolOutput) lines(tool string) []string {
	return slices.DeleteFunc(strings.Split(to.out[tool], "\n"), func(s string) bool { return strings.TrimSpace(s) == "" })
}

// TestOracleToolsMatchViews runs the guest's own tools, then pauses the guest and compares each
// view with what the tool printed, field by field.
func TestOracleToolsMatchViews(t *testing.T) {
	need(t)
	start := time.Now()
	queueSockets(t)
	to := runTools(t)
	v := pausedViews(t)
	compareWithTools(t, v, to)
	t.Logf("compared with the guest's tools in %v", time.Since(start).Round(time.Millisecond))
}

// TestOracleAtScale is TestOracleToolsMatchViews on the guest grown to about 1,000 processes,
// where ps and netstat spread their processes over parallel Fast-Bridge machines (Session.Each).
// The processes it starts are stopped afterwards.
func TestOracleAtScale(t *testing.T) {
	ctx := need(t)
	const grow = `i=$(ls -d /proc/[0-9]* | wc -l); while [ $i -lt 1000 ]; do setsid sleep 36001 </dev/null >/dev/null 2>&1 & i=$((i+1)); done; sleep 0.5`
	res, err := demo.Exec(ctx, grow)
	if err != nil || res.Status != 0 {
		t.Fatalf("grow the guest: %v %v %s", err, res, res.Stderr)
	}
	t.Cleanup(func() {
		// The guest has no pkill; its init reaps the orphans. Later tests need the guest back to
		// its size.
		const stop = `for p in /proc/[0-9]*; do [ "$(tr '\0' ' ' <$p/cmdline 2>/dev/null)" = "sleep 36001 " ] && kill ${p#/proc/}; done; sleep 0.5; ls -d /proc/[0-9]* | wc -l`
		res, err := demo.Exec(context.Background(), stop)
		if err != nil || res.Status != 0 {
			t.Errorf("stop the sleepers: %v %+v", err, res)
			return
		}
		if n, err := strconv.Atoi(strings.TrimSpace(string(res.Stdout))); err != nil || n > 300 {
			t.Errorf("after stopping the sleepers the guest has %q processes", res.Stdout)
		}
	})
	queueSockets(t)
	to := runTools(t)
	mem, before := pauseAndHash(t, ctx)
	s, err := AttachMode(ctx, demo, snap, syms, ModeAuto, memo.New(MemoKey(snap)))
	if err != nil {
		t.Fatal(err)
	}
	// From an empty memo, the parallel machines' misses are re-run on the session (falling back
	// to Slow-Bridge); then the memo is trained and the same views run without.
	var runs []*oracleViews
	for run := range 2 {
		start := time.Now()
		v, err := readOracleViews(s)
		if err != nil {
			closeUnchanged(t, ctx, s, mem, before, err)
			return
		}
		st := s.Stats()
		t.Logf("auto run %d: %d processes in %v on %d machines, %d fall-backs", run+1, len(v.Procs),
			time.Since(start).Round(time.Millisecond), 1+len(s.lanes), st.FallBacks)
		runs = append(runs, v)
	}
	if runtime.GOMAXPROCS(0) > 1 && len(s.lanes) == 0 {
		t.Error("no parallel Fast-Bridge machine was used with more than one CPU")
	}
	closeUnchanged(t, ctx, s, mem, before, nil)
	for i, v := range runs {
		if len(v.Procs) < 950 {
			t.Fatalf("run %d lists %d processes; the guest was grown to 1000", i+1, len(v.Procs))
		}
		compareWithTools(t, v, to)
	}
}

// compareWithTools compares each view with what the guest's tool printed, field by field, and
// checks that each comparison catches a view changed on purpose.
func compareWithTools(t *testing.T, v *oracleViews, to *toolOutput) {
	t.Helper()
	truth, err := parseTools(to)
	if err != nil {
		t.Fatal(err)
	}
	report := func(name string, diffs []string) {
		t.Run(name, func(t *testing.T) {
			for _, d := range diffs {
				t.Error(d)
			}
		})
	}
	report("ps", comparePS(v.Procs, truth))
	report("netstat", compareNetstat(v.Sockets, truth))
	report("lsmod", compareLsmod(v.Modules, truth))
	report("uname", compareUname(v.Uname, truth))
	freeDiffs, moved := compareFree(v.Meminfo, truth)
	t.Logf("free: view minus guest, KiB: %s", moved)
	report("free", freeDiffs)
	report("mount", compareMount(v.Mounts, truth))
	// Each comparison must see a field swapped or changed in the view: a comparison that cannot
	// fail proves nothing.
	t.Run("mutants", func(t *testing.T) {
		for _, m := range viewMutants(v) {
			if m.compare == nil {
				t.Errorf("%s: the views lack what it changes", m.name)
			} else if diffs := m.compare(truth); len(diffs) == 0 {
				t.Errorf("%s: not caught", m.name)
			}
		}
	})
	t.Logf("%d processes (and the capture's own %d), %d inet sockets, %d modules, %d mounts compared with the guest's tools",
		len(truth.ps)-truth.captured(), truth.captured(), len(truth.netstat), len(truth.lsmod), len(truth.mount))
}

// queuePorts are the ports of queueSockets' listeners.
var queuePorts = struct{ TCP, UDP int }{4441, 4442}

// queueSockets adds, for the test, sockets whose queues are not empty: in the demo workload every
// Recv-Q and Send-Q is 0, so those columns swapped would pass. A TCP listener stopped before it
// accepts has a connection in its backlog (Recv-Q 1), and that connection, which no process holds
// yet, the bytes its client sent; a UDP socket stopped before it reads holds a datagram.
func queueSockets(t *testing.T) {
	t.Helper()
	queueSocketsIn(t, need(t), demo)
}

// queueSocketsIn is queueSockets in any guest of the demo image.
func queueSocketsIn(t *testing.T, ctx context.Context, g execer) {
	t.Helper()
	script := fmt.Sprintf(`setsid nc -l -p %[1]d </dev/null >/dev/null 2>&1 &
l=$!
setsid hb-udpd %[2]d </dev/null >/dev/null 2>&1 &
u=$!
waitfor() { for i in $(seq 100); do netstat -tuan | grep -q "$1" && return 0; usleep 50000; done; echo "no $1"; exit 1; }
waitfor ":%[1]d .*LISTEN"
waitfor ":%[2]d "
kill -STOP $l $u
setsid sh -c "(printf 'bytes for a listener that never accepts'; sleep 3600) | nc 127.0.0.1 %[1]d" </dev/null >/dev/null 2>&1 &
c=$!
nslookup oracle 127.0.0.1:%[2]d >/dev/null 2>&1 &
n=$!
waitfor "^tcp *[1-9][0-9]* .*:%[1]d .*ESTABLISHED"
waitfor "^udp *[1-9][0-9]* .*:%[2]d "
kill $n
wait $n
echo $l $u $c`, queuePorts.TCP, queuePorts.UDP)
	res, err := g.Exec(ctx, script)
	if err != nil {
		t.Fatalf("sockets with queues in the guest: %v", err)
	}
	if res.Status != 0 {
		t.Fatalf("sockets with queues in the guest: exit status %d: %s%s", res.Status, res.Stdout, res.Stderr)
	}
	var l, u, c int
	if _, err := fmt.Sscan(string(res.Stdout), &l, &u, &c); err != nil {
		t.Fatalf("sockets with queues in the guest: %q", res.Stdout)
	}
	t.Cleanup(func() {
		// The stopped ones die when continued; the client's session goes whole. The next test
		// must not see them half gone (running without memory, or zombies until init reaps
		// them), so this waits until no process of their three groups is left. The test's own
		// context may be over (a test stopped by its deadline still cleans up).
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		res, err := g.Exec(ctx, fmt.Sprintf(`kill %[1]d %[2]d; kill -CONT %[1]d %[2]d; kill -- -%[3]d
for i in $(seq 100); do
	ps -o pgid | grep -qE '^ *(%[1]d|%[2]d|%[3]d)$' || exit 0
	usleep 50000
done
echo "still running"; exit 1`, l, u, c))
		if err != nil {
			t.Errorf("remove the sockets with queues: %v", err)
		} else if res.Status != 0 {
			t.Errorf("remove the sockets with queues: exit status %d: %s%s", res.Status, res.Stdout, res.Stderr)
		}
	})
}

// tools is what the guest's tools printed, parsed.
type tools struct {
	self    int
	users   map[string]int // /etc/passwd: name -> uid
	ps      []psRow
	netstat []netRow
	holders map[uint64][]int // socket inode -> pids holding it, from ls -l /proc/*/fd
	lsmod   []lsmodRow
	tainted bool // lsmod's header: the kernel is tainted
	uname   map[string]string
	mount   []inspect.Mount
	free    map[string]uint64 // "Mem:total", "Swap:free", ...
}

// captured counts ps's rows that exist only for the capture: its shell and the shell's children.
func (tt *tools) captured() int {
	n := 0
	for _, r := range tt.ps {
		if r.pid == tt.self || r.ppid == tt.self {
			n++
		}
	}
	return n
}

func parseTools(to *toolOutput) (*tools, error) {
	tt := &tools{self: to.self, users: map[string]int{}, uname: map[string]string{}, free: map[string]uint64{}}
	for _, line := range to.lines("passwd") {
		f := strings.Split(line, ":")
		if len(f) < 4 {
			return nil, fmt.Errorf("/etc/passwd line %q", line)
		}
		uid, err := strconv.Atoi(f[2])
		if err != nil {
			return nil, fmt.Errorf("/etc/passwd line %q", line)
		}
		tt.users[f[0]] = uid
	}
	var err error
	if tt.ps, err = parsePS(to.lines("ps")); err != nil {
		return nil, err
	}
	if tt.netstat, err = parseNetstat(to); err != nil {
		return nil, err
	}
	if tt.holders, err = parseFds(to.lines("fds"), to.self); err != nil {
		return nil, err
	}
	if tt.lsmod, tt.tainted, err = parseLsmod(to.lines("lsmod")); err != nil {
		return nil, err
	}
	for _, k := range []string{"a", "s", "n", "r", "v", "m", "o"} {
		tt.uname[k] = strings.TrimSuffix(to.out["uname-"+k], "\n")
	}
	tt.uname["domainname"] = strings.TrimSuffix(to.out["domainname"], "\n")
	if tt.mount, err = parseMount(to.lines("mount")); err != nil {
		return nil, err
	}
	if tt.free, err = parseFree(to.lines("free")); err != nil {
		return nil, err
	}
	return tt, nil
}

// psRow is one line of busybox ps -o pid,ppid,user,ruser,stat,rss,comm,args.
type psRow struct {
	pid, ppid         int
	user, ruser, stat string
	rss               string // as printed: KiB, scaled to 4 characters ("12m")
	comm, args        string
	cut               bool // the line has psWidth characters: args may be cut short
}

// psWidth is the width busybox ps cuts its lines at when its output is not a terminal (MAX_WIDTH
// in procps/ps.c): a long command line, such as the random workload's, is shown in part.
const psWidth = 2048

// parsePS splits ps's lines. comm and args may hold spaces, so they are cut at the columns of
// the header's two COMMAND titles: every column before them has a fixed width.
func parsePS(lines []string) ([]psRow, error) {
	if len(lines) < 2 {
		return nil, fmt.Errorf("ps printed %d lines", len(lines))
	}
	head := lines[0]
	c1 := strings.Index(head, "COMMAND")
	c2 := c1 + 1 + strings.Index(head[c1+1:], "COMMAND")
	if c1 < 0 || c2 <= c1 || strings.Join(strings.Fields(head[:c1]), " ") != "PID PPID USER RUSER STAT RSS" {
		return nil, fmt.Errorf("ps header %q", head)
	}
	var out []psRow
	for _, line := range lines[1:] {
		f := strings.Fields(line[:min(c1, len(line))])
		if len(f) != 6 || len(line) <= c2 || line[c1-1] != ' ' || line[c2-1] != ' ' {
			return nil, fmt.Errorf("ps line %q", line)
		}
		r := psRow{user: f[2], ruser: f[3], stat: f[4], rss: f[5],
			comm: strings.TrimRight(line[c1:c2], " "), args: line[c2:], cut: len(line) >= psWidth}
		var err1, err2 error
		r.pid, err1 = strconv.Atoi(f[0])
		r.ppid, err2 = strconv.Atoi(f[1])
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("ps line %q", line)
		}
		out = append(out, r)
	}
	return out, nil
}

// busyboxSize4 prints n as busybox's smart_ulltoa4 does for ps's RSS and VSZ columns: up to 9999
// as is, above that scaled by 1024 to three characters and a unit ("12m", "9.2m").
func busyboxSize4(n uint64) string {
	const units = " mgtpezy"
	if n <= 9999 {
		return strconv.FormatUint(n, 10)
	}
	idx := 0
	n *= 10
	for {
		n /= 1024
		idx++
		if n < 10000 {
			break
		}
	}
	u, v := n/10, n%10
	if u >= 10 {
		return fmt.Sprintf("%d%c", u, units[idx])
	}
	return fmt.Sprintf("%d.%d%c", u, v, units[idx])
}

// uidOf maps ps's user column to a uid: busybox prints the passwd name when it has one, the
// number otherwise.
func (tt *tools) uidOf(user string) (int, bool) {
	if uid, ok := tt.users[user]; ok {
		return uid, true
	}
	uid, err := strconv.Atoi(user)
	return uid, err == nil
}

// psArgs undoes busybox's decoration of the args column: when argv[0]'s base name does not start
// with the process's name it prints "{comm} " first (read_cmdline in libbb/procps.c), as for
// every script of the workload ("{hb-child} /bin/sh /usr/local/bin/hb-child 1"). Busybox also
// turns the NULs between arguments into spaces, as Command joins them.
func psArgs(r psRow) (string, error) {
	if rest, ok := strings.CutPrefix(r.args, "{"+r.comm+"} "); ok {
		return rest, nil
	}
	if strings.HasPrefix(r.args, "[") {
		return r.args, nil
	}
	argv0, _, _ := strings.Cut(r.args, " ")
	if !strings.HasPrefix(strings.TrimPrefix(path.Base(argv0), "-"), r.comm) {
		return "", fmt.Errorf("pid %d: args %q neither start with {%s} nor name it", r.pid, r.args, r.comm)
	}
	return r.args, nil
}

// sameKworker: a kworker's name ends with the workqueue it last ran ("kworker/0:2-events"),
// which the capture's own work changes before the pause; the worker itself is the same.
func sameKworker(a, b string) bool {
	a, okA := strings.CutPrefix(strings.Trim(a, "[]"), "kworker/")
	b, okB := strings.CutPrefix(strings.Trim(b, "[]"), "kworker/")
	return okA && okB && strings.Split(a, "-")[0] == strings.Split(b, "-")[0]
}

// busyboxComm is a process name as busybox ps prints it: it keeps names in 16 bytes (COMM_LEN in
// libbb), so 15 characters, while since Linux 5.17 the kernel's /proc/<pid>/stat gives a kernel
// thread's whole name ("rcu_tasks_kthread") and a workqueue worker's ("kworker/0:1H-kblockd").
func busyboxComm(comm string) string {
	return comm[:min(len(comm), 15)]
}

// comparePS compares the process view with ps. The capturing shell and its children (ps itself)
// exist only for ps; the command channel's helper (hbguest) runs the capture, so its state and
// memory change before the pause and only its identity is compared.
func comparePS(view []inspect.Process, tt *tools) []string {
	var diffs []string
	bad := func(format string, args ...any) { diffs = append(diffs, fmt.Sprintf(format, args...)) }
	byPID := map[int]inspect.Process{}
	for _, p := range view {
		byPID[p.PID] = p
		if len(p.Missing) > 0 {
			bad("pid %d (%s): fields not read: %v", p.PID, p.Comm, p.Missing)
		}
	}
	seen := map[int]bool{}
	for _, r := range tt.ps {
		if r.pid == tt.self || r.ppid == tt.self {
			continue
		}
		seen[r.pid] = true
		p, ok := byPID[r.pid]
		if !ok {
			bad("pid %d (%s) is in ps but not in the view", r.pid, r.args)
			continue
		}
		field := func(name string, got, want any) {
			if got != want {
				bad("pid %d (%s): %s: view %v, ps %v", r.pid, r.comm, name, got, want)
			}
		}
		field("PPID", p.PPID, r.ppid)
		// RUSER is the real uid (the Uid line of status); USER is the owner of /proc/<pid>, the
		// effective uid, which no process of the workload has different from its real one.
		// RUSER is the real user's name where /etc/passwd lists the uid (busybox prints the
		// number otherwise), which the view reads from the guest's /etc/passwd too.
		if _, numeric := strconv.Atoi(r.ruser); numeric != nil {
			field("user name (RUSER)", p.User, r.ruser)
		} else if p.User != "" {
			bad("pid %d (%s): user name %q where ps has uid %s", r.pid, r.comm, p.User, r.ruser)
		}
		for _, u := range []struct{ col, name string }{{"RUSER", r.ruser}, {"USER", r.user}} {
			if uid, ok := tt.uidOf(u.name); !ok {
				bad("pid %d: %s %q is neither a user of /etc/passwd nor a number", r.pid, u.col, u.name)
			} else {
				field("UID ("+u.col+" "+u.name+")", p.UID, uid)
			}
		}
		// STAT is the state letter, then W for a process without memory (busybox: vsz 0), < or
		// N for its nice value, which the view does not have.
		// A kernel thread ps saw running may sleep by the pause, or one it saw asleep wake: on a
		// guest of several CPUs one runs beside the capture (rcu_preempt did, both ways). The
		// workload's processes may not.
		asleep := func(s string) bool { return s == "S" || s == "I" }
		ranThen := p.Kernel && (r.stat[:1] == "R" && asleep(p.State) || asleep(r.stat[:1]) && p.State == "R")
		if r.comm != "hbguest" {
			if !ranThen {
				field("state (STAT "+r.stat+")", p.State, r.stat[:1])
			}
			field("RSS", busyboxSize4(uint64(p.RSSKiB)), r.rss)
		}
		if p.State != "Z" {
			field("kernel thread (STAT "+r.stat+")", p.Kernel, strings.Contains(r.stat[1:], "W"))
		}
		comm, command := busyboxComm(p.Comm), p.Command()
		if command == "["+p.Comm+"]" {
			command = "[" + comm + "]"
		}
		if !sameKworker(comm, r.comm) {
			field("comm", comm, r.comm)
		}
		args, err := psArgs(r)
		switch {
		case err != nil:
			bad("%v", err)
		case r.cut:
			if !strings.HasPrefix(command, args) {
				bad("pid %d (%s): command: view %q, ps (cut at %d characters) %q", r.pid, r.comm, command, psWidth, args)
			}
		case !sameKworker(command, args):
			field("command", command, args)
		}
	}
	for _, p := range view {
		if !seen[p.PID] {
			bad("pid %d (%s) is in the view but not in ps", p.PID, p.Command())
		}
	}
	return diffs
}

// netRow is one line of busybox netstat -tuan, with what the socket tables and ls add.
type netRow struct {
	proto         string // tcp, tcp6, udp, udp6: busybox prints tcp or udp, an IPv6 address for the 6 tables
	recvQ, sendQ  uint64
	local, remote netip.AddrPort
	state         string
	// From the kernel's table (cat /proc/net/<proto>), at the line of the same addresses
	// (netstat prints neither): the inode and uid. The pids come from ls -l /proc/*/fd.
	inode uint64
	uid   int
}

// parseNetstat splits netstat's lines and adds each socket's inode and uid: busybox's netstat
// has no -p, so the owning processes are joined by inode, the one field /proc/<pid>/fd shows.
// The inode is looked up in the kernel's table by the addresses netstat printed, encoded as the
// table prints them: no address is decoded here.
func parseNetstat(to *toolOutput) ([]netRow, error) {
	lines := to.lines("netstat")
	if len(lines) < 2 || !strings.HasPrefix(lines[1], "Proto Recv-Q Send-Q Local Address") {
		return nil, fmt.Errorf("netstat printed %q", to.out["netstat"])
	}
	type key struct{ proto, local, remote string }
	raw := map[key][]string{}
	for _, proto := range []string{"tcp", "tcp6", "udp", "udp6"} {
		for _, line := range to.lines("raw/" + proto) {
			f := strings.Fields(line)
			if len(f) < 10 || f[0] == "sl" {
				continue
			}
			k := key{proto, f[1], f[2]}
			if raw[k] != nil {
				return nil, fmt.Errorf("/proc/net/%s: two sockets %s %s", proto, f[1], f[2])
			}
			raw[k] = f
		}
	}
	var out []netRow
	for _, line := range lines[2:] {
		f := strings.Fields(line)
		if len(f) != 5 && len(f) != 6 {
			return nil, fmt.Errorf("netstat line %q", line)
		}
		r := netRow{proto: f[0]}
		var err error
		if r.recvQ, err = strconv.ParseUint(f[1], 10, 64); err != nil {
			return nil, fmt.Errorf("netstat line %q: Recv-Q", line)
		}
		if r.sendQ, err = strconv.ParseUint(f[2], 10, 64); err != nil {
			return nil, fmt.Errorf("netstat line %q: Send-Q", line)
		}
		if r.local, err = netstatAddr(f[3]); err != nil {
			return nil, fmt.Errorf("netstat line %q: %w", line, err)
		}
		if r.remote, err = netstatAddr(f[4]); err != nil {
			return nil, fmt.Errorf("netstat line %q: %w", line, err)
		}
		if len(f) == 6 {
			r.state = f[5]
		}
		if r.local.Addr().Is6() {
			r.proto += "6"
		}
		rf := raw[key{r.proto, kernelHex(r.local), kernelHex(r.remote)}]
		if rf == nil {
			return nil, fmt.Errorf("netstat line %q: no such socket in /proc/net/%s", line, r.proto)
		}
		if r.uid, err = strconv.Atoi(rf[7]); err != nil {
			return nil, fmt.Errorf("/proc/net/%s: uid %q", r.proto, rf[7])
		}
		if r.inode, err = strconv.ParseUint(rf[9], 10, 64); err != nil {
			return nil, fmt.Errorf("/proc/net/%s: inode %q", r.proto, rf[9])
		}
		out = append(out, r)
	}
	return out, nil
}

// netstatAddr reads netstat's "address:port": dotted IPv4 or IPv6 without brackets (":::8080",
// "::ffff:127.0.0.1:7001"), port "*" for none.
func netstatAddr(s string) (netip.AddrPort, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return netip.AddrPort{}, fmt.Errorf("address %q", s)
	}
	addr, err := netip.ParseAddr(s[:i])
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("address %q: %w", s, err)
	}
	var port uint64
	if s[i+1:] != "*" {
		if port, err = strconv.ParseUint(s[i+1:], 10, 16); err != nil {
			return netip.AddrPort{}, fmt.Errorf("port %q", s)
		}
	}
	return netip.AddrPortFrom(addr, uint16(port)), nil
}

// kernelHex prints an address as /proc/net/{tcp,udp}[6] do: the address as 32-bit words in the
// CPU's (little-endian) order, then the port, in hex.
func kernelHex(ap netip.AddrPort) string {
	b := ap.Addr().AsSlice()
	var s strings.Builder
	for w := 0; w < len(b); w += 4 {
		fmt.Fprintf(&s, "%02X%02X%02X%02X", b[w+3], b[w+2], b[w+1], b[w])
	}
	fmt.Fprintf(&s, ":%04X", ap.Port())
	return s.String()
}

// parseFds reads ls -l of every /proc/<pid>/fd/: "/proc/<pid>/fd/:" heads each process, and a
// descriptor's line ends "<fd> -> <target>". The capturing shell's descriptors are left out.
func parseFds(lines []string, self int) (map[uint64][]int, error) {
	out := map[uint64][]int{}
	pid := 0
	for _, line := range lines {
		if dir, ok := strings.CutSuffix(line, "/fd/:"); ok {
			n, err := strconv.Atoi(strings.TrimPrefix(dir, "/proc/"))
			if err != nil {
				return nil, fmt.Errorf("ls line %q", line)
			}
			pid = n
			continue
		}
		if strings.HasPrefix(line, "total ") {
			continue
		}
		_, target, ok := strings.Cut(line, " -> ")
		if !ok || pid == 0 {
			return nil, fmt.Errorf("ls line %q", line)
		}
		num, ok := strings.CutPrefix(target, "socket:[")
		if !ok || pid == self {
			continue
		}
		ino, err := strconv.ParseUint(strings.TrimSuffix(num, "]"), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("ls line %q", line)
		}
		if !slices.Contains(out[ino], pid) {
			out[ino] = append(out[ino], pid)
		}
	}
	for _, pids := range out {
		slices.Sort(pids)
	}
	return out, nil
}

// compareNetstat compares the inet sockets of the view with netstat, in order (both follow the
// kernel's tables: tcp, tcp6, udp, udp6). Unix sockets are not compared: busybox's netstat -x
// stops at the first line of this kernel's /proc/net/unix, whose pointer column reads
// "(____ptrval____)" until the kernel's random generator is ready, which its scanf cannot read.
func compareNetstat(view []inspect.Socket, tt *tools) []string {
	var diffs []string
	bad := func(format string, args ...any) { diffs = append(diffs, fmt.Sprintf(format, args...)) }
	inet := slices.DeleteFunc(slices.Clone(view), func(s inspect.Socket) bool { return s.Proto == "unix" })
	if len(inet) != len(tt.netstat) {
		bad("%d inet sockets in the view, %d in netstat", len(inet), len(tt.netstat))
	}
	for i := range min(len(inet), len(tt.netstat)) {
		s, r := inet[i], tt.netstat[i]
		local, err1 := netip.ParseAddrPort(s.Local)
		remote, err2 := netip.ParseAddrPort(s.Remote)
		if err1 != nil || err2 != nil {
			bad("socket %d: view addresses %q %q", i, s.Local, s.Remote)
		}
		got := netFields{s.Proto, local, remote, s.State, s.RxQueue, s.TxQueue, s.Inode, s.UID, s.PIDs}
		want := netFields{r.proto, r.local, r.remote, r.state, r.recvQ, r.sendQ, r.inode, r.uid, tt.holders[r.inode]}
		if !reflect.DeepEqual(got, want) {
			bad("socket %d differs:\n view    %+v\n netstat %+v", i, got, want)
		}
	}
	return diffs
}

// netFields are a socket's compared fields; PIDs nil when no process holds it, as in the view.
type netFields struct {
	Proto         string
	Local, Remote netip.AddrPort
	State         string
	RecvQ, SendQ  uint64
	Inode         uint64
	UID           int
	PIDs          []int
}

// lsmodRow is one line of busybox lsmod: "name size used-count users", the users' list without
// /proc/modules' final comma and "-" for none printed as nothing.
type lsmodRow struct {
	name  string
	size  uint64
	refs  int
	users []string
}

func parseLsmod(lines []string) ([]lsmodRow, bool, error) {
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "Module") {
		return nil, false, fmt.Errorf("lsmod printed %q", lines)
	}
	tainted := !strings.Contains(lines[0], "Not tainted")
	out := []lsmodRow{}
	for _, line := range lines[1:] {
		f := strings.Fields(line)
		if len(f) != 3 && len(f) != 4 {
			return nil, false, fmt.Errorf("lsmod line %q", line)
		}
		r := lsmodRow{name: f[0], users: []string{}}
		var err error
		if r.size, err = strconv.ParseUint(f[1], 10, 64); err != nil {
			return nil, false, fmt.Errorf("lsmod line %q", line)
		}
		if r.refs, err = strconv.Atoi(f[2]); err != nil {
			return nil, false, fmt.Errorf("lsmod line %q", line)
		}
		if len(f) == 4 {
			r.users = strings.Split(f[3], ",")
		}
		out = append(out, r)
	}
	return out, tainted, nil
}

// compareLsmod compares the modules with lsmod, in order. lsmod prints neither the state nor the
// address; its header says whether the kernel is tainted, which a module's own taint flags imply.
func compareLsmod(view []inspect.Module, tt *tools) []string {
	var diffs []string
	got := make([]lsmodRow, len(view))
	for i, m := range view {
		got[i] = lsmodRow{m.Name, m.Size, m.Refs, m.Users}
		if m.Taint != "" && !tt.tainted {
			diffs = append(diffs, fmt.Sprintf("module %s has taint %q, lsmod says the kernel is not tainted", m.Name, m.Taint))
		}
	}
	if !reflect.DeepEqual(got, tt.lsmod) {
		diffs = append(diffs, fmt.Sprintf("lsmod differs:\n view  %+v\n lsmod %+v", got, tt.lsmod))
	}
	return diffs
}

// compareUname compares uname's fields one by one, and uname -a whole: busybox prints the five
// kernel fields, then its own build's operating system name (-o), not the kernel's. The NIS
// domain name, which uname does not print, comes from sysctl.
func compareUname(view inspect.Uname, tt *tools) []string {
	var diffs []string
	for _, f := range []struct{ name, got string }{
		{"s", view.Sysname}, {"n", view.Nodename}, {"r", view.Release}, {"v", view.Version},
		{"m", view.Machine}, {"domainname", view.Domainname},
	} {
		if f.got != tt.uname[f.name] {
			diffs = append(diffs, fmt.Sprintf("uname -%s: view %q, guest %q", f.name, f.got, tt.uname[f.name]))
		}
	}
	all := strings.Join([]string{view.Sysname, view.Nodename, view.Release, view.Version, view.Machine, tt.uname["o"]}, " ")
	if all != tt.uname["a"] {
		diffs = append(diffs, fmt.Sprintf("uname -a: view %q, guest %q", all, tt.uname["a"]))
	}
	return diffs
}

// parseMount reads busybox mount's "device on point type type (options)" lines.
func parseMount(lines []string) ([]inspect.Mount, error) {
	var out []inspect.Mount
	for _, line := range lines {
		rest, opts, ok1 := strings.Cut(strings.TrimSuffix(line, ")"), " (")
		dev, rest, ok2 := strings.Cut(rest, " on ")
		point, typ, ok3 := strings.Cut(rest, " type ")
		if !ok1 || !ok2 || !ok3 || !strings.HasSuffix(line, ")") {
			return nil, fmt.Errorf("mount line %q", line)
		}
		out = append(out, inspect.Mount{Device: dev, Point: point, Type: typ, Options: opts})
	}
	return out, nil
}

func compareMount(view []inspect.Mount, tt *tools) []string {
	if !reflect.DeepEqual(view, tt.mount) {
		return []string{fmt.Sprintf("mounts differ:\n view  %+v\n mount %+v", view, tt.mount)}
	}
	return nil
}

// parseFree reads busybox free's "Mem:" and "Swap:" lines (KiB) by the header's titles.
func parseFree(lines []string) (map[string]uint64, error) {
	if len(lines) != 3 {
		return nil, fmt.Errorf("free printed %q", lines)
	}
	head := strings.Fields(lines[0])
	out := map[string]uint64{}
	for _, line := range lines[1:] {
		f := strings.Fields(line)
		if len(f) < 2 || len(f) > len(head)+1 {
			return nil, fmt.Errorf("free line %q", line)
		}
		for i, v := range f[1:] {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("free line %q", line)
			}
			out[f[0]+head[i]] = n
		}
	}
	return out, nil
}

// freeSlackKiB is how far the memory counters may move between free and the pause: the capture
// exits, the command channel replies, per-CPU page lists are drained (a two-CPU guest's moved
// 1,028 KiB once).
const freeSlackKiB = 2048

// compareFree compares the columns of busybox free that are meminfo fields (free.c: sysinfo(2)
// for total, free, shared, buffers and swap, which the kernel fills from the counters meminfo
// prints; /proc/meminfo for Cached, SReclaimable and MemAvailable): total is MemTotal, free
// MemFree, shared Shmem, buff/cache Buffers+Cached+SReclaimable, available MemAvailable; swap
// total and free are SwapTotal and SwapFree. "used" is free's own arithmetic and is not
// compared. Totals are exact; the others move with the capture's own activity, by at most
// freeSlackKiB. available is MemFree less the zones' reserves, plus the page cache and the
// reclaimable slab above the zones' low watermarks (si_mem_available): it moves as free does, and
// by at most what buff/cache moved besides, so a fixed offset (a reserve or a watermark that is
// not the guest's) fails even within the slack. It also says how far each column moved.
func compareFree(view []inspect.MemField, tt *tools) (diffs []string, moved string) {
	mem := map[string]uint64{}
	for _, m := range view {
		mem[m.Name] = m.Value
	}
	var deltas []string
	delta := map[string]int64{}
	for _, c := range []struct {
		col   string
		got   uint64
		names []string
		exact bool
	}{
		{"Mem:total", 0, []string{"MemTotal"}, true},
		{"Mem:free", 0, []string{"MemFree"}, false},
		{"Mem:shared", 0, []string{"Shmem"}, false},
		{"Mem:buff/cache", 0, []string{"Buffers", "Cached", "SReclaimable"}, false},
		{"Mem:available", 0, []string{"MemAvailable"}, false},
		{"Swap:total", 0, []string{"SwapTotal"}, true},
		{"Swap:free", 0, []string{"SwapFree"}, true},
	} {
		want, ok := tt.free[c.col]
		if !ok {
			diffs = append(diffs, fmt.Sprintf("free printed no %s", c.col))
			continue
		}
		for _, n := range c.names {
			v, ok := mem[n]
			if !ok {
				diffs = append(diffs, fmt.Sprintf("meminfo view has no %s", n))
			}
			c.got += v
		}
		d := int64(c.got) - int64(want)
		delta[c.col] = d
		deltas = append(deltas, fmt.Sprintf("%s %+d", c.col, d))
		if c.exact && d != 0 || max(d, -d) > freeSlackKiB {
			diffs = append(diffs, fmt.Sprintf("free %s: view %d KiB (%s), guest %d KiB", c.col, c.got, strings.Join(c.names, "+"), want))
		}
	}
	abs := func(d int64) int64 { return max(d, -d) }
	if d := delta["Mem:available"] - delta["Mem:free"]; abs(d) > abs(delta["Mem:buff/cache"]) {
		diffs = append(diffs, fmt.Sprintf("free available moved %+d KiB more than free did, buff/cache only %+d: MemAvailable is not the guest's",
			d, delta["Mem:buff/cache"]))
	}
	return diffs, strings.Join(deltas, ", ")
}

// viewMutant is the view with one field swapped or changed, and the comparison that must see it;
// compare is nil when the views lack what the mutant changes.
type viewMutant struct {
	name    string
	compare func(*tools) []string
}

// addMutant adds a mutant of one view: change edits a copy of base (deepened by deep) and says
// whether it found what to change.
func addMutant[T any](ms *[]viewMutant, name string, base []T, deep func(*T), change func([]T) bool, compare func([]T, *tools) []string) {
	c := slices.Clone(base)
	for i := range c {
		deep(&c[i])
	}
	m := viewMutant{name: name}
	if change(c) {
		m.compare = func(tt *tools) []string { return compare(c, tt) }
	}
	*ms = append(*ms, m)
}

// viewMutants change each compared field of the demo guest's views in turn; the comparisons,
// run on each, must all report something.
func viewMutants(v *oracleViews) []viewMutant {
	var ms []viewMutant
	procs := func(name string, change func(ps []inspect.Process) bool) {
		addMutant(&ms, name, v.Procs, func(p *inspect.Process) { p.Cmdline = slices.Clone(p.Cmdline) }, change, comparePS)
	}
	find := func(ps []inspect.Process, comm string) *inspect.Process {
		i := slices.IndexFunc(ps, func(p inspect.Process) bool { return p.Comm == comm })
		if i < 0 {
			return nil
		}
		return &ps[i]
	}
	procs("ps: PID and PPID of hb-parent swapped", func(ps []inspect.Process) bool {
		p := find(ps, "hb-parent")
		if p != nil {
			p.PID, p.PPID = p.PPID, p.PID
		}
		return p != nil
	})
	procs("ps: UID and PPID of a non-root process swapped", func(ps []inspect.Process) bool {
		i := slices.IndexFunc(ps, func(p inspect.Process) bool { return p.UID != 0 && p.UID != p.PPID })
		if i >= 0 {
			ps[i].UID, ps[i].PPID = ps[i].PPID, ps[i].UID
		}
		return i >= 0
	})
	procs("ps: states of hb-stopped and hb-parent swapped", func(ps []inspect.Process) bool {
		a, b := find(ps, "hb-stopped"), find(ps, "hb-parent")
		if a == nil || b == nil || a.State == b.State {
			return false
		}
		a.State, b.State = b.State, a.State
		return true
	})
	procs("ps: command lines of syslogd and httpd swapped", func(ps []inspect.Process) bool {
		a, b := find(ps, "syslogd"), find(ps, "httpd")
		if a == nil || b == nil {
			return false
		}
		a.Cmdline, b.Cmdline = b.Cmdline, a.Cmdline
		return true
	})
	procs("ps: comm of telnetd changed", func(ps []inspect.Process) bool {
		p := find(ps, "telnetd")
		if p != nil {
			p.Comm = "telnet"
		}
		return p != nil
	})
	procs("ps: RSS and thread count of syslogd swapped", func(ps []inspect.Process) bool {
		p := find(ps, "syslogd")
		if p == nil || p.RSSKiB == p.Threads {
			return false
		}
		p.RSSKiB, p.Threads = p.Threads, p.RSSKiB
		return true
	})
	procs("ps: kthreadd not a kernel thread", func(ps []inspect.Process) bool {
		p := find(ps, "kthreadd")
		if p != nil {
			p.Kernel = false
		}
		return p != nil
	})
	ms = append(ms, viewMutant{"ps: the last process left out", func(tt *tools) []string {
		return comparePS(v.Procs[:len(v.Procs)-1], tt)
	}})

	socks := func(name string, change func(ss []inspect.Socket) bool) {
		addMutant(&ms, name, v.Sockets, func(s *inspect.Socket) { s.PIDs = slices.Clone(s.PIDs) }, change, compareNetstat)
	}
	// first finds the first inet socket that satisfies ok.
	first := func(ss []inspect.Socket, ok func(s inspect.Socket) bool) *inspect.Socket {
		i := slices.IndexFunc(ss, func(s inspect.Socket) bool { return s.Proto != "unix" && ok(s) })
		if i < 0 {
			return nil
		}
		return &ss[i]
	}
	established := func(s inspect.Socket) bool { return s.State == "ESTABLISHED" }
	listening := func(s inspect.Socket) bool { return s.State == "LISTEN" }
	socks("netstat: local and remote of a connection swapped", func(ss []inspect.Socket) bool {
		s := first(ss, established)
		if s != nil {
			s.Local, s.Remote = s.Remote, s.Local
		}
		return s != nil
	})
	socks("netstat: Recv-Q and Send-Q swapped", func(ss []inspect.Socket) bool {
		s := first(ss, func(s inspect.Socket) bool { return s.RxQueue != s.TxQueue })
		if s != nil {
			s.RxQueue, s.TxQueue = s.TxQueue, s.RxQueue
		}
		return s != nil
	})
	socks("netstat: state of a listener changed", func(ss []inspect.Socket) bool {
		s := first(ss, listening)
		if s != nil {
			s.State = "CLOSE"
		}
		return s != nil
	})
	socks("netstat: protocol of a connection changed", func(ss []inspect.Socket) bool {
		s := first(ss, established)
		if s != nil {
			s.Proto = map[string]string{"tcp": "tcp6", "tcp6": "tcp"}[s.Proto]
		}
		return s != nil
	})
	socks("netstat: owners of two sockets swapped", func(ss []inspect.Socket) bool {
		a := first(ss, func(s inspect.Socket) bool { return len(s.PIDs) > 0 })
		b := first(ss, func(s inspect.Socket) bool { return len(s.PIDs) > 0 && a != nil && !slices.Equal(s.PIDs, a.PIDs) })
		if a == nil || b == nil {
			return false
		}
		a.PIDs, b.PIDs = b.PIDs, a.PIDs
		return true
	})
	socks("netstat: inode and uid of a socket swapped", func(ss []inspect.Socket) bool {
		s := first(ss, func(s inspect.Socket) bool { return s.Inode != uint64(s.UID) })
		if s != nil {
			s.Inode, s.UID = uint64(s.UID), int(s.Inode)
		}
		return s != nil
	})

	mods := func(name string, change func(m []inspect.Module) bool) {
		addMutant(&ms, name, v.Modules, func(m *inspect.Module) { m.Users = slices.Clone(m.Users) }, change, compareLsmod)
	}
	mods("lsmod: size and use count swapped", func(m []inspect.Module) bool {
		if len(m) > 0 {
			m[0].Size, m[0].Refs = uint64(m[0].Refs), int(m[0].Size)
		}
		return len(m) > 0
	})
	mods("lsmod: a user added", func(m []inspect.Module) bool {
		if len(m) > 1 {
			m[0].Users = append(m[0].Users, m[1].Name)
		}
		return len(m) > 1
	})
	mods("lsmod: two modules swapped", func(m []inspect.Module) bool {
		if len(m) > 1 {
			m[0], m[1] = m[1], m[0]
		}
		return len(m) > 1
	})

	uname := func(name string, change func(u *inspect.Uname)) {
		u := v.Uname
		change(&u)
		ms = append(ms, viewMutant{name, func(tt *tools) []string { return compareUname(u, tt) }})
	}
	uname("uname: release and version swapped", func(u *inspect.Uname) { u.Release, u.Version = u.Version, u.Release })
	uname("uname: node and domain name swapped", func(u *inspect.Uname) { u.Nodename, u.Domainname = u.Domainname, u.Nodename })
	uname("uname: machine changed", func(u *inspect.Uname) { u.Machine = "i686" })

	// Two meminfo values swapped, when they differ by more than the counters may move.
	mem := func(a, b string) {
		addMutant(&ms, "free: "+a+" and "+b+" swapped", v.Meminfo, func(*inspect.MemField) {}, func(m []inspect.MemField) bool {
			ia := slices.IndexFunc(m, func(f inspect.MemField) bool { return f.Name == a })
			ib := slices.IndexFunc(m, func(f inspect.MemField) bool { return f.Name == b })
			if ia < 0 || ib < 0 || max(m[ia].Value, m[ib].Value)-min(m[ia].Value, m[ib].Value) <= freeSlackKiB {
				return false
			}
			m[ia].Value, m[ib].Value = m[ib].Value, m[ia].Value
			return true
		}, func(m []inspect.MemField, tt *tools) []string { d, _ := compareFree(m, tt); return d })
	}
	addMutant(&ms, "free: MemAvailable 256 KiB off, within the slack", v.Meminfo, func(*inspect.MemField) {}, func(m []inspect.MemField) bool {
		i := slices.IndexFunc(m, func(f inspect.MemField) bool { return f.Name == "MemAvailable" })
		if i >= 0 {
			m[i].Value -= 256
		}
		return i >= 0
	}, func(m []inspect.MemField, tt *tools) []string { d, _ := compareFree(m, tt); return d })
	mem("MemTotal", "MemFree")
	mem("MemFree", "Cached")
	mem("MemAvailable", "Shmem")
	mem("SwapTotal", "MemTotal")

	mounts := func(name string, change func(m []inspect.Mount) bool) {
		addMutant(&ms, name, v.Mounts, func(*inspect.Mount) {}, change, compareMount)
	}
	mounts("mount: device and point swapped", func(m []inspect.Mount) bool {
		i := slices.IndexFunc(m, func(m inspect.Mount) bool { return m.Device != m.Point })
		if i >= 0 {
			m[i].Device, m[i].Point = m[i].Point, m[i].Device
		}
		return i >= 0
	})
	mounts("mount: options of two mounts swapped", func(m []inspect.Mount) bool {
		i := slices.IndexFunc(m, func(o inspect.Mount) bool { return len(m) > 0 && o.Options != m[0].Options })
		if i >= 0 {
			m[0].Options, m[i].Options = m[i].Options, m[0].Options
		}
		return i >= 0
	})
	mounts("mount: type changed", func(m []inspect.Mount) bool {
		i := slices.IndexFunc(m, func(m inspect.Mount) bool { return m.Type == "tmpfs" })
		if i >= 0 {
			m[i].Type = "ramfs"
		}
		return i >= 0
	})
	return ms
}

// TestKnownWorkloadFacts checks what guest/image.go's workload is known to be, on the views
// alone: no capture in the guest is involved.
func TestKnownWorkloadFacts(t *testing.T) {
	v := pausedViews(t)
	byPID := map[int]inspect.Process{}
	byComm := map[string][]inspect.Process{}
	for _, p := range v.Procs {
		byPID[p.PID] = p
		byComm[p.Comm] = append(byComm[p.Comm], p)
	}
	lastArg := func(p inspect.Process) string {
		if len(p.Cmdline) == 0 {
			return ""
		}
		return p.Cmdline[len(p.Cmdline)-1]
	}
	one := func(comm string) (inspect.Process, bool) {
		ps := byComm[comm]
		if len(ps) != 1 {
			t.Errorf("%d processes named %s, want 1", len(ps), comm)
			return inspect.Process{}, false
		}
		return ps[0], true
	}

	// hb-stopped sends itself SIGSTOP.
	if p, ok := one("hb-stopped"); ok && p.State != "T" {
		t.Errorf("hb-stopped (pid %d) is in state %q, want T (stopped)", p.PID, p.State)
	}

	// hb-sleeper 3600 runs as root, hb-sleeper 7200 as analyst (uid 1000, su), and so does the
	// sleep it runs.
	sleepers := map[string]inspect.Process{}
	for _, p := range byComm["hb-sleeper"] {
		sleepers[lastArg(p)] = p
	}
	if len(sleepers) != 2 || sleepers["3600"].PID == 0 || sleepers["7200"].PID == 0 {
		t.Errorf("hb-sleepers %v, want one of 3600 s and one of 7200 s", byComm["hb-sleeper"])
	} else {
		if p := sleepers["7200"]; p.UID != 1000 {
			t.Errorf("hb-sleeper 7200 (pid %d) runs as uid %d, want 1000 (analyst)", p.PID, p.UID)
		}
		if p := sleepers["3600"]; p.UID != 0 {
			t.Errorf("hb-sleeper 3600 (pid %d) runs as uid %d, want 0", p.PID, p.UID)
		}
		var found bool
		for _, p := range byComm["sleep"] {
			if p.PPID == sleepers["7200"].PID {
				found = true
				if p.UID != 1000 || p.Command() != "sleep 7200" {
					t.Errorf("the 7200-s sleeper's child: uid %d, %q; want 1000, sleep 7200", p.UID, p.Command())
				}
			}
		}
		if !found {
			t.Error("the 7200-s sleeper has no sleep child")
		}
	}

	// hb-parent 3 starts hb-child 1, 2 and 3.
	if parent, ok := one("hb-parent"); ok {
		if lastArg(parent) != "3" {
			t.Errorf("hb-parent's command %q, want its argument 3", parent.Command())
		}
		var args []string
		for _, c := range byComm["hb-child"] {
			args = append(args, lastArg(c))
			if c.PPID != parent.PID {
				t.Errorf("hb-child %d's parent is %d (%s), want hb-parent %d", c.PID, c.PPID, byPID[c.PPID].Comm, parent.PID)
			}
		}
		slices.Sort(args)
		if !slices.Equal(args, []string{"1", "2", "3"}) {
			t.Errorf("hb-child arguments %v, want 1 2 3", args)
		}
	}

	// The listeners: each port in LISTEN (tcp) or unconnected (udp), held by the process started
	// with that port on its command line, and by no other.
	listeners := []struct {
		proto, comm string
		port        int
	}{
		{"tcp", "httpd", guest.DemoPorts.HTTP}, {"tcp", "telnetd", guest.DemoPorts.Telnet},
		{"tcp", "nc", guest.DemoPorts.Echo}, {"udp", "hb-udpd", guest.DemoPorts.UDP},
	}
	for _, l := range listeners {
		var found []inspect.Socket
		for _, s := range v.Sockets {
			ap, err := netip.ParseAddrPort(s.Local)
			if err == nil && strings.TrimSuffix(s.Proto, "6") == l.proto && int(ap.Port()) == l.port &&
				(l.proto == "udp" || s.State == "LISTEN") {
				found = append(found, s)
			}
		}
		if len(found) != 1 {
			t.Errorf("%s port %d: %d listening sockets %+v, want 1", l.proto, l.port, len(found), found)
			continue
		}
		s := found[0]
		if l.proto == "udp" && s.State != "" {
			t.Errorf("udp port %d is %q, want unconnected", l.port, s.State)
		}
		if len(s.PIDs) != 1 {
			t.Errorf("%s port %d is held by %v, want one %s", l.proto, l.port, s.PIDs, l.comm)
			continue
		}
		p := byPID[s.PIDs[0]]
		if p.Comm != l.comm || !slices.Contains(p.Cmdline, strconv.Itoa(l.port)) {
			t.Errorf("%s port %d is held by pid %d %q, want %s started with the port", l.proto, l.port, p.PID, p.Command(), l.comm)
		}
	}

	// hb-client keeps one loopback connection to the echo port: its nc on one end, and on the
	// other the cat the echo listener's nc runs for it.
	// An IPv6 socket shows an IPv4 peer as ::ffff:a.b.c.d.
	unmapped := func(s string) netip.AddrPort {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			t.Errorf("socket address %q: %v", s, err)
		}
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	echo := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(guest.DemoPorts.Echo))
	var client, server *inspect.Socket
	for i, s := range v.Sockets {
		if s.State != "ESTABLISHED" || !strings.HasPrefix(s.Proto, "tcp") {
			continue
		}
		switch {
		case unmapped(s.Remote) == echo:
			client = &v.Sockets[i]
		case unmapped(s.Local) == echo:
			server = &v.Sockets[i]
		}
	}
	owner := func(s *inspect.Socket) inspect.Process {
		if len(s.PIDs) != 1 {
			return inspect.Process{}
		}
		return byPID[s.PIDs[0]]
	}
	if client == nil || server == nil || unmapped(client.Local) != unmapped(server.Remote) {
		t.Errorf("hb-client's connection: client end %+v, server end %+v", client, server)
	} else {
		c, sv := owner(client), owner(server)
		if c.Comm != "nc" || byPID[c.PPID].Comm != "hb-client" {
			t.Errorf("the client end is held by %v (%q, parent %q), want hb-client's nc", client.PIDs, c.Command(), byPID[c.PPID].Comm)
		}
		if sv.Comm != "cat" || byPID[sv.PPID].Comm != "nc" || !slices.Contains(byPID[sv.PPID].Cmdline, strconv.Itoa(guest.DemoPorts.Echo)) {
			t.Errorf("the server end is held by %v (%q, parent %q), want the echo listener's cat", server.PIDs, sv.Command(), byPID[sv.PPID].Command())
		}
	}

	// syslogd receives on /dev/log.
	var devLog bool
	for _, s := range v.Sockets {
		if s.Proto == "unix" && s.Local == "/dev/log" {
			devLog = true
			if len(s.PIDs) != 1 || byPID[s.PIDs[0]].Comm != "syslogd" || s.Type != "DGRAM" {
				t.Errorf("/dev/log: %+v, want a datagram socket of syslogd", s)
			}
		}
	}
	if !devLog {
		t.Error("no unix socket /dev/log")
	}

	// The demo's modules are loaded and live.
	mods := map[string]inspect.Module{}
	for _, m := range v.Modules {
		mods[m.Name] = m
	}
	for _, name := range guest.DemoModules {
		if m, ok := mods[name]; !ok {
			t.Errorf("module %s is not listed", name)
		} else if m.State != "Live" {
			t.Errorf("module %s is %q, want Live", name, m.State)
		}
	}
}
