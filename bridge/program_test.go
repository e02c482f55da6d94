package bridge

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"hybridbridge/memo"
	"hybridbridge/svm"
)

// programCase is a busybox applet run both inside the guest and, unmodified, in the SVM.
type programCase struct {
	args []string
	// selfField is the field of a line that holds a pid, for lines about the running tool itself
	// (only the guest's run has one: in the SVM the tool is not among the guest's processes);
	// -1 when the output has none.
	selfField int
	// near, if set, compares a line the two runs may print with small differences (the guest's
	// memory use moves between its own run and the pause).
	near func(guest, svm string) bool
}

var programCases = []programCase{
	{args: []string{"ps"}, selfField: 0, near: sameKworkerLine},
	{args: []string{"ps", "-o", "pid,user,comm,args"}, selfField: 0, near: sameKworkerLine},
	{args: []string{"netstat", "-an"}, selfField: -1},
	{args: []string{"lsmod"}, selfField: -1},
	{args: []string{"free"}, selfField: -1, near: nearFree},
	{args: []string{"uname", "-a"}, selfField: -1},
	{args: []string{"hostname"}, selfField: -1},
	{args: []string{"cat", "/proc/version", "/proc/net/tcp", "/proc/net/udp", "/proc/modules"}, selfField: -1},
	{args: []string{"ls", "/proc"}, selfField: 0},
	{args: []string{"ls", "/proc/net", "/proc/self/"}, selfField: -1},
	{args: []string{"find", "/proc/1", "/proc/sys/kernel"}, selfField: -1},
	{args: []string{"mount"}, selfField: -1},
	{args: []string{"ip", "addr"}, selfField: -1},
	{args: []string{"ip", "link"}, selfField: -1},
	{args: []string{"ip", "route"}, selfField: -1},
	{args: []string{"id"}, selfField: -1},
}

// sameKworkerLine accepts ps lines that differ only in the workqueue a kworker last ran, which
// its name ends with and the command channel's own work changes between the guest's run and
// the pause.
func sameKworkerLine(guest, svm string) bool {
	g, s := strings.Fields(guest), strings.Fields(svm)
	if len(g) != len(s) {
		return false
	}
	for i := range g {
		if g[i] != s[i] && !sameKworker(strings.Trim(g[i], "[]"), strings.Trim(s[i], "[]")) {
			return false
		}
	}
	return true
}

// nearFree accepts free's lines when every number is within 1 MiB of the guest's.
func nearFree(guest, svm string) bool {
	g, s := strings.Fields(guest), strings.Fields(svm)
	if len(g) != len(s) {
		return false
	}
	for i := range g {
		a, errA := strconv.ParseInt(g[i], 10, 64)
		b, errB := strconv.ParseInt(s[i], 10, 64)
		if errA != nil || errB != nil {
			if g[i] != s[i] {
				return false
			}
			continue
		}
		if a-b > 1024 || b-a > 1024 {
			return false
		}
	}
	return true
}

// inGuest runs argv with busybox inside the guest and returns its output, without the lines about
// the tool's own process, and its error output.
func (c programCase) inGuest(t *testing.T, ctx context.Context, g execer) (string, string) {
	t.Helper()
	// The shell execs the tool: the pid it prints first is the tool's.
	res, err := g.Exec(ctx, "echo $$; exec busybox "+strings.Join(c.args, " "))
	if err != nil {
		t.Fatalf("%s in the guest: %v", c.args, err)
	}
	if res.Status != 0 {
		t.Fatalf("%s in the guest: exit status %d: %s", c.args, res.Status, res.Stderr)
	}
	self, out, _ := strings.Cut(string(res.Stdout), "\n")
	return dropSelf(out, c.selfField, strings.TrimSpace(self)), string(res.Stderr)
}

// dropSelf removes the lines whose field holds the pid self.
func dropSelf(out string, field int, self string) string {
	if field < 0 {
		return out
	}
	var kept []string
	for _, l := range strings.SplitAfter(out, "\n") {
		if f := strings.Fields(l); len(f) > field && f[field] == self {
			continue
		}
		kept = append(kept, l)
	}
	return strings.Join(kept, "")
}

// sameOutput says how the SVM's output differs from the guest's, or "".
func sameOutput(guestOut, svmOut string, near func(string, string) bool) string {
	if guestOut == svmOut {
		return ""
	}
	g, s := strings.Split(guestOut, "\n"), strings.Split(svmOut, "\n")
	if len(g) == len(s) && near != nil {
		ok := true
		for i := range g {
			ok = ok && (g[i] == s[i] || near(g[i], s[i]))
		}
		if ok {
			return ""
		}
	}
	for i := range max(len(g), len(s)) {
		var a, b string
		if i < len(g) {
			a = g[i]
		}
		if i < len(s) {
			b = s[i]
		}
		if a != b && (near == nil || !near(a, b)) {
			return fmt.Sprintf("line %d:\n guest %q\n svm   %q\n(%d lines in the guest, %d in the SVM)", i+1, a, b, len(g), len(s))
		}
	}
	return "?"
}

// TestProgramsMatchTheGuestsTools: busybox applets run unmodified in the SVM print what the same
// applets print inside the guest, apart from the lines about the guest's tool itself, in every
// engine mode: Slow-Bridge learning the memo, then auto and fast replaying it. The guest's memory
// is hashed around each mode's session.
func TestProgramsMatchTheGuestsTools(t *testing.T) {
	ctx := need(t)
	settled(t, ctx, demo)
	want, wantErr := make([]string, len(programCases)), make([]string, len(programCases))
	for i, c := range programCases {
		want[i], wantErr[i] = c.inGuest(t, ctx, demo)
	}
	mem := memo.New(MemoKey(snap))
	// runMode runs the cases which in one session of mode, checking each against the guest's,
	// and returns those that missed the memo (fast mode).
	runMode := func(mode Mode, which []int) (missed []int) {
		pmem, before := pauseAndHash(t, ctx)
		s, err := AttachMode(ctx, demo, snap, syms, mode, mem)
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range which {
			c := programCases[i]
			run, err := s.RunProgram(svm.Program{Path: "/bin/busybox", Argv: c.args, Envp: []string{"PATH=/bin:/sbin"}}, ProgramName(c.args))
			if mode == ModeFast && errors.Is(err, ErrMemoMiss) {
				t.Logf("%s: %s: %v", mode, c.args, err)
				missed = append(missed, i)
				continue
			}
			if err != nil {
				t.Errorf("%s: %s: %v", mode, c.args, err)
				continue
			}
			// The demo's busybox netstat cannot parse /proc/net/unix's unhashed pointers: both say so.
			if run.Status != 0 || string(run.Stderr) != wantErr[i] {
				t.Errorf("%s: %s: status %d, stderr %q; the guest's stderr %q", mode, c.args, run.Status, run.Stderr, wantErr[i])
			}
			if d := sameOutput(want[i], string(run.Stdout), c.near); d != "" {
				t.Errorf("%s: %s differs from the guest's, %s", mode, c.args, d)
			}
			t.Logf("%s: %s: %d lines, %d system calls, %d user page faults, %v", mode, strings.Join(c.args, " "),
				strings.Count(string(run.Stdout), "\n"), run.Syscalls, run.Faults, run.Wall.Round(100_000))
		}
		st := s.Stats()
		t.Logf("%s: Fast-Bridge %d runs in %v (%d hits, %d misses), Slow-Bridge %d runs (%d fall-backs) in %v",
			mode, st.FastOps, st.FastTime, st.Hits, st.Misses, st.SlowOps, st.FallBacks, st.SlowTime)
		for _, ev := range st.Events {
			t.Logf("%s: fall-back in %s at %s (%s): %s", mode, ev.View, ev.Symbol, ev.Syscall, ev.Reason)
		}
		if u := s.Globals.Unknown(); len(u) > 0 {
			t.Errorf("%s: globals in neither list met by the programs: %v", mode, u)
		}
		closeUnchanged(t, ctx, s, pmem, before, nil)
		return missed
	}
	all := make([]int, len(programCases))
	for i := range all {
		all[i] = i
	}
	runMode(ModeSlow, all)
	// Auto may still fall back: the SVM's own memory management for the program reads the
	// guest's clock (jiffies), so a later run can take a path the training run did not.
	runMode(ModeAuto, all)
	if missed := runMode(ModeFast, all); len(missed) > 0 {
		// Such a path makes fast mode miss once; after auto learned it, fast must run.
		runMode(ModeAuto, missed)
		if again := runMode(ModeFast, missed); len(again) > 0 {
			t.Errorf("fast: %d programs missed the memo again after auto learned: %v", len(again), again)
		}
	}
}

// settled waits until the guest's processes stop changing (an earlier test's workload may still
// be exiting): the guest's tools and the SVM's runs are seconds apart.
func settled(t *testing.T, ctx context.Context, g execer) {
	t.Helper()
	const polls = 3 // unchanged listings in a row, a second apart
	last, same := "", 0
	deadline := time.Now().Add(2 * time.Minute)
	for same < polls {
		if time.Now().After(deadline) {
			t.Fatalf("the guest's processes kept changing for 2 minutes")
		}
		// The listing's own shell is the only pid that changes each time: left out.
		res := mustExec(t, ctx, g, "list the guest's processes", `cd /proc && for p in [0-9]*; do [ "$p" = "$$" ] || echo "$p"; done`)
		if cur := string(res.Stdout); cur == last {
			same++
		} else {
			last, same = cur, 1
		}
		time.Sleep(time.Second)
	}
}

// lsComm is the user's own program of TestUserProgramMatchesTheGuest: it lists every process's
// name from /proc with the C library's directory and stdio functions.
const lsComm = `#include <ctype.h>
#include <dirent.h>
#include <stdio.h>
#include <unistd.h>

int main(void) {
	DIR *d = opendir("/proc");
	if (!d) { perror("/proc"); return 2; }
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!isdigit((unsigned char)e->d_name[0])) continue;
		char path[300], comm[64];
		snprintf(path, sizeof path, "/proc/%s/comm", e->d_name);
		FILE *f = fopen(path, "r");
		if (!f) continue;
		if (fgets(comm, sizeof comm, f)) printf("%s %s", e->d_name, comm);
		fclose(f);
	}
	closedir(d);
	return 0;
}
`

// buildStatic compiles C source into a static x86-64 executable.
func buildStatic(t *testing.T, name, src string, flags ...string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, name+".c"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, name)
	args := append([]string{"-O2", "-Wall", "-o", out, filepath.Join(dir, name+".c")}, flags...)
	if b, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
		t.Fatalf("gcc %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return out
}

// copyIntoGuest writes data to path inside the guest through the command channel, in base64
// chunks, and makes it executable.
func copyIntoGuest(t *testing.T, ctx context.Context, g execer, path string, data []byte) {
	t.Helper()
	enc := base64.StdEncoding.EncodeToString(data)
	mustExec(t, ctx, g, "truncate "+path, ": > "+path+".b64")
	const chunk = 48 << 10
	for len(enc) > 0 {
		n := min(chunk, len(enc))
		mustExec(t, ctx, g, "copy "+path, "echo "+enc[:n]+" >> "+path+".b64")
		enc = enc[n:]
	}
	mustExec(t, ctx, g, "decode "+path, "busybox base64 -d "+path+".b64 > "+path+" && rm "+path+".b64 && chmod 755 "+path)
}

// TestUserProgramMatchesTheGuest: the user's own static C program, copied into the SVM for the
// run, prints what it prints inside the guest (apart from its own process there).
func TestUserProgramMatchesTheGuest(t *testing.T) {
	ctx := need(t)
	bin := buildStatic(t, "lscomm", lsComm, "-static")
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := svm.CheckStaticX86(bin, data); err != nil {
		t.Fatal(err)
	}
	copyIntoGuest(t, ctx, demo, "/tmp/lscomm", data)
	settled(t, ctx, demo)
	res := mustExec(t, ctx, demo, "lscomm in the guest", "echo $$; exec /tmp/lscomm")
	self, want, _ := strings.Cut(string(res.Stdout), "\n")
	want = dropSelf(want, 0, strings.TrimSpace(self))
	if !strings.Contains(want, "1 init\n") || !strings.Contains(want, "hb-sleeper") {
		t.Fatalf("lscomm in the guest printed %q", want)
	}
	// One memo: auto replays what Slow-Bridge learned, the program's own reads of the zero page
	// (its untouched C library data) among them, which are no kernel instruction's.
	mem := memo.New(MemoKey(snap))
	for _, mode := range []Mode{ModeSlow, ModeAuto} {
		pmem, before := pauseAndHash(t, ctx)
		s, err := AttachMode(ctx, demo, snap, syms, mode, mem)
		if err != nil {
			t.Fatal(err)
		}
		run, err := s.RunProgram(svm.Program{Path: "/tmp/lscomm", Binary: data, Argv: []string{"lscomm"}}, "lscomm")
		if err == nil {
			// A kworker's name ends with the workqueue it last ran, which the command channel's
			// work changes between the guest's run and the pause.
			if d := sameOutput(want, string(run.Stdout), sameKworkerLine); d != "" || run.Status != 0 {
				t.Errorf("%s: lscomm (status %d) differs from the guest's, %s", mode, run.Status, d)
			}
			t.Logf("%s: lscomm: %d lines, %d system calls, %d user page faults, %v", mode, strings.Count(want, "\n"), run.Syscalls, run.Faults, run.Wall.Round(100_000))
		}
		if u := s.Globals.Unknown(); len(u) > 0 {
			t.Errorf("%s: globals in neither list met by the program and its copy into the SVM: %v", mode, u)
		}
		st := s.Stats()
		for _, ev := range st.Events {
			t.Logf("%s: fall-back at %s (%s) touching %s: %s", mode, ev.Symbol, ev.Syscall, ev.Region, ev.Reason)
		}
		closeUnchanged(t, ctx, s, pmem, before, err)
	}
}

// TestProgramNamesTheGuestsUsers: a program names users and groups by the guest's /etc/passwd
// and /etc/group, not the SVM image's: a user and group only the guest has (added here), owning a
// process, show by name in ps, stat and find as they do in the guest.
func TestProgramNamesTheGuestsUsers(t *testing.T) {
	ctx := need(t)
	const user, uid = "hbnamed", "4321"
	mustExec(t, ctx, demo, "add a user to the guest", fmt.Sprintf(
		`echo '%[1]s:x:%[2]s:%[2]s::/:/bin/sh' >> /etc/passwd && echo '%[1]s:x:%[2]s:' >> /etc/group && `+
			`su -s /bin/sh %[1]s -c 'setsid sleep 3600 </dev/null >/dev/null 2>&1 &'`, user, uid))
	// The guest's busybox has no pgrep: its processes are found by their real uid.
	ofUser := `for p in /proc/[0-9]*; do grep -qs "^Uid:	` + uid + `	" $p/status && echo ${p#/proc/}; done; true`
	t.Cleanup(func() {
		mustExec(t, ctx, demo, "remove the user", fmt.Sprintf(`kill $(%s); sed -i '/^%s:/d' /etc/passwd /etc/group`, ofUser, user))
	})
	res := mustExec(t, ctx, demo, "the user's sleeper", ofUser)
	pid := strings.TrimSpace(string(res.Stdout))
	if _, err := strconv.Atoi(pid); err != nil {
		t.Fatalf("the processes of uid %s: %q", uid, pid)
	}
	settled(t, ctx, demo)
	cases := []programCase{
		{args: []string{"ps", "-o", "pid,user,group,comm"}, selfField: 0},
		{args: []string{"stat", "-c", "%U:%G:%u:%g:%n", "/proc/" + pid}, selfField: -1},
		{args: []string{"find", "/proc/" + pid, "-maxdepth", "0", "-user", user, "-group", user}, selfField: -1},
	}
	want := make([]string, len(cases))
	for i, c := range cases {
		// find prints the path only where both names are known.
		if want[i], _ = c.inGuest(t, ctx, demo); !strings.Contains(want[i], user) && want[i] != "/proc/"+pid+"\n" {
			t.Fatalf("%s in the guest: %q", c.args, want[i])
		}
	}
	pmem, before := pauseAndHash(t, ctx)
	s, err := AttachMode(ctx, demo, snap, syms, ModeAuto, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range cases {
		run, err := s.RunProgram(svm.Program{Path: "/bin/busybox", Argv: append([]string{"busybox"}, c.args...)}, c.args[0])
		if err != nil {
			t.Errorf("%s: %v", c.args, err)
			continue
		}
		if d := sameOutput(want[i], string(run.Stdout), sameKworkerLine); d != "" || run.Status != 0 || len(run.Unserved) > 0 {
			t.Errorf("%s (status %d, stderr %q, unserved %v) differs from the guest's, %s", c.args, run.Status, run.Stderr, run.Unserved, d)
		}
	}
	if u := s.Globals.Unknown(); len(u) > 0 {
		t.Errorf("globals in neither list met by the programs: %v", u)
	}
	closeUnchanged(t, ctx, s, pmem, before, nil)
}
