package debianguest_test

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"hybridbridge/bridge"
	"hybridbridge/svm"
	"hybridbridge/target"
)

// TestProgramsOnDebian: busybox run unmodified in the SVM against the Debian guest prints what
// the guest's own busybox prints. ps names its daemons' users and groups (systemd's, D-Bus's, the
// analyst's) by the guest's /etc/passwd and /etc/group, which the SVM's image does not have.
func TestProgramsOnDebian(t *testing.T) {
	ctx := needFor(t, 10*time.Minute) // servedGuest may boot a guest
	g, snap, syms := servedGuest(t, ctx)
	run := func(command string) string {
		t.Helper()
		return shOn(t, ctx, g, command)
	}
	ps := []string{"ps", "-o", "pid,user,group,comm"}
	// psRows are ps's lines by pid; the tool's own line (and its shell's) are left out by their pids.
	psRows := func(out string, skip ...string) map[string]string {
		rows := map[string]string{}
		for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n")[1:] {
			if f := strings.Fields(l); len(f) > 0 && !slices.Contains(skip, f[0]) {
				rows[f[0]] = l
			}
		}
		return rows
	}
	guestPS := func() map[string]string {
		self, out, _ := strings.Cut(run("echo $$; exec busybox "+strings.Join(ps, " ")), "\n")
		return psRows(out, strings.TrimSpace(self))
	}
	others := [][]string{{"lsmod"}, {"uname", "-a"}, {"cat", "/proc/version"}}
	want := make([]string, len(others))
	for i, a := range others {
		want[i] = run("busybox " + strings.Join(a, " "))
	}
	before := guestPS()

	tg := target.FromGuest(g)
	defer tg.Close()
	s, err := bridge.AttachTarget(ctx, tg, snap, syms, bridge.Options{Mode: bridge.ModeAuto})
	if err != nil {
		t.Fatal(err)
	}
	runs := make([]*bridge.ProgramRun, 1+len(others))
	for i, a := range append([][]string{ps}, others...) {
		start := time.Now()
		r, err := s.RunProgram(svm.Program{Path: "/bin/busybox", Argv: append([]string{"busybox"}, a...)}, a[0])
		if err != nil {
			s.Close(ctx)
			t.Fatalf("%s: %v", a, err)
		}
		if r.Status != 0 || len(r.Unserved) > 0 {
			t.Errorf("%s: exit status %d (%s), guest files not in memory %v", a, r.Status, r.Stderr, r.Unserved)
		}
		t.Logf("%s: %d system calls in %v", strings.Join(a, " "), r.Syscalls, time.Since(start).Round(time.Millisecond))
		runs[i] = r
	}
	unknown := s.Globals.Unknown()
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if len(unknown) > 0 {
		t.Errorf("globals in neither list: %v", unknown)
	}
	after := guestPS()

	got := psRows(string(runs[0].Stdout))
	compared, named := 0, map[string]bool{}
	for pid, row := range before {
		if after[pid] != row {
			continue // started, ended or renamed while the SVM ran
		}
		compared++
		if got[pid] != row {
			t.Errorf("pid %s: the guest's busybox ps %q, in the SVM %q", pid, row, got[pid])
		}
		named[strings.Fields(row)[1]] = true
	}
	// The daemons' users only the guest's /etc/passwd names (busybox ps cuts names to 8
	// characters: messagebus, systemd-timesync or -resolve).
	for _, u := range []string{"messageb", "systemd-", "analyst"} {
		if !named[u] {
			t.Errorf("no process of %s in the guest's ps: %v", u, named)
		}
	}
	if compared < 50 {
		t.Errorf("only %d processes were the same in the guest's ps before and after", compared)
	}
	for i, a := range others {
		if string(runs[i+1].Stdout) != want[i] {
			t.Errorf("%s in the SVM:\n%s\nthe guest's:\n%s", a, runs[i+1].Stdout, want[i])
		}
	}
	t.Logf("%d processes compared; users %v", compared, named)
}

// TestProgramWithoutTheGuestsGroupFile: where the guest's /etc/group is not in its page cache
// (dropped here with dd's nocache), a program finds none rather than the SVM image's: ps shows
// every group as a number, names users still by the guest's /etc/passwd, and the run says which
// file it could not give. The disk is never read.
func TestProgramWithoutTheGuestsGroupFile(t *testing.T) {
	ctx := needFor(t, 10*time.Minute) // servedGuest may boot a guest
	g, snap, syms := servedGuest(t, ctx)
	tg := target.FromGuest(g)
	defer tg.Close()
	// Later tests find the file in memory again.
	t.Cleanup(func() { shOn(t, context.WithoutCancel(ctx), g, "cat /etc/group >/dev/null") })
	// A daemon may read the file again between the drop and the pause: tried a few times.
	for try := 1; ; try++ {
		shOn(t, ctx, g, "sync && dd if=/etc/group iflag=nocache count=0 status=none") // drops it from the page cache
		s, err := bridge.AttachTarget(ctx, tg, snap, syms, bridge.Options{Mode: bridge.ModeAuto})
		if err != nil {
			t.Fatal(err)
		}
		r, err := s.RunProgram(svm.Program{Path: "/bin/busybox", Argv: []string{"busybox", "ps", "-o", "pid,user,group,comm"}}, "ps")
		if cerr := s.Close(ctx); cerr != nil {
			t.Fatal(cerr)
		}
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(r.Unserved, []string{"/etc/group"}) {
			if try < 5 {
				t.Logf("try %d: the guest's files not in memory: %v", try, r.Unserved)
				continue
			}
			t.Fatalf("after %d drops, the files not in memory: %v, want [/etc/group]", try, r.Unserved)
		}
		users := map[string]bool{}
		for _, l := range strings.Split(strings.TrimSpace(string(r.Stdout)), "\n")[1:] {
			f := strings.Fields(l)
			if len(f) < 4 {
				t.Fatalf("ps line %q", l)
			}
			if _, err := strconv.Atoi(f[2]); err != nil {
				t.Errorf("group %q named without the guest's /etc/group: %q", f[2], l)
			}
			users[f[1]] = true
		}
		if !users["analyst"] || !users["messageb"] {
			t.Errorf("users named by the guest's /etc/passwd: %v", users)
		}
		t.Logf("try %d: %d processes, every group a number", try, strings.Count(string(r.Stdout), "\n")-1)
		return
	}
}
