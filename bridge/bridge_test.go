package bridge

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"hybridbridge/guest"
	"hybridbridge/inspect"
	"hybridbridge/svm"
	"hybridbridge/target"
	"hybridbridge/vmm"
)

// One demo guest and freshly built SVM snapshots serve the package: the nokaslr one (the
// reference: it finds a guest's layout, and serves the nokaslr VMs) and, when the demo guest
// booted with KASLR, one in its layout, which its tests use.
var (
	demo     *guest.Guest
	snap     *svm.Snapshot // in demo's layout
	syms     *vmm.Symbols
	refSnap  *svm.Snapshot // nokaslr
	refSyms  *vmm.Symbols
	assets   *guest.Assets
	setupErr error
)

func TestMain(m *testing.M) {
	code := func() int {
		runDir, err := os.MkdirTemp("", "hbbridge-test")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(runDir)
		ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
		defer cancel()
		setupErr = func() error {
			cache, err := guest.FindCacheDir()
			if err != nil {
				return err
			}
			if assets, err = guest.LoadAssets(cache); err != nil {
				return err
			}
			img, err := guest.BuildDemoImage(assets)
			if err != nil {
				return err
			}
			if refSnap, err = svm.Build(ctx, assets, svm.BuildOptions{CacheDir: cache, RunDir: runDir, OutDir: runDir + "/snapshot", KeepSymbols: BlockingEntries()}); err != nil {
				return err
			}
			// The SVM's own symbols, as for any target: nothing is asked of the guest.
			if refSyms, err = svm.KernelSymbols(cache, refSnap); err != nil {
				return err
			}
			if demo, err = guest.Start(ctx, guest.Config{Name: "demo", MemMiB: 512, Image: img, RunDir: runDir}); err != nil {
				return err
			}
			tg := target.FromGuest(demo)
			l, same, err := LayoutOf(tg, refSnap, refSyms)
			tg.Close()
			if err != nil || same {
				snap, syms = refSnap, refSyms
				return err
			}
			fmt.Fprintf(os.Stderr, "demo guest: %s\n", l)
			if snap, err = svm.Build(ctx, assets, svm.BuildOptions{CacheDir: cache, RunDir: runDir, OutDir: runDir + "/demo-snapshot", KeepSymbols: BlockingEntries(), Layout: &l}); err != nil {
				return err
			}
			syms, err = svm.KernelSymbols(cache, snap)
			return err
		}()
		if demo != nil {
			defer demo.Stop(context.Background())
		}
		defer plain.stop()
		defer kaslrVM.stop()
		defer kaslrVM2.stop()
		return m.Run()
	}()
	os.Exit(code)
}

func need(t *testing.T) context.Context {
	t.Helper()
	if setupErr != nil {
		t.Fatalf("setup: %v", setupErr)
	}
	// Runs after the test's own cleanups (closing its sessions): a test that stopped (failed)
	// between a pause and its resume must not leave the shared guest paused for the next one.
	t.Cleanup(func() {
		rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer rcancel()
		if resumed, err := demo.ResumeIfPaused(rctx); err != nil {
			t.Errorf("guest after the test: %v", err)
		} else if resumed {
			t.Log("the test left the guest paused; resumed it")
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// groundTruth reads every process's stat, status and cmdline inside the guest in one pass, and
// parses them with the same code as the view.
func groundTruth(t *testing.T, ctx context.Context, g execer) ([]inspect.Process, int) {
	t.Helper()
	res := mustExec(t, ctx, g, "capture in the guest", inspect.CaptureCommand("/proc/[0-9]*/stat", "/proc/[0-9]*/status", "/proc/[0-9]*/cmdline"))
	fs, err := inspect.ParseCapture(res.Stdout)
	if err != nil {
		t.Fatal(err)
	}
	procs, _, err := inspect.ListProcesses(fs)
	if err != nil {
		t.Fatal(err)
	}
	return procs, fs.Self
}

// compareProcesses checks the view against the ground truth field by field. The capturing shell
// exists only in the truth; the command channel's helper changes state, memory and threads between
// the capture and the pause, so only its identity is compared.
func compareProcesses(t *testing.T, view, truth []inspect.Process, self int) {
	t.Helper()
	byPID := map[int]inspect.Process{}
	for _, p := range view {
		if len(p.Missing) != 0 {
			t.Errorf("pid %d: fields not read: %v", p.PID, p.Missing)
		}
		byPID[p.PID] = p
	}
	seen := map[int]bool{}
	for _, want := range truth {
		if want.PID == self {
			continue
		}
		seen[want.PID] = true
		got, ok := byPID[want.PID]
		if !ok {
			t.Errorf("pid %d (%s) is in the guest but not in the view", want.PID, want.Comm)
			continue
		}
		if want.Comm == "hbguest" {
			// It runs each command in goroutines of its own, so its thread count moves too.
			got.State, got.RSSKiB, got.Threads = want.State, want.RSSKiB, want.Threads
		}
		// CPU time only grows, and the capture and the pause are apart by the channel's work.
		if got.CPUTicks >= want.CPUTicks {
			got.CPUTicks = want.CPUTicks
		}
		// A kworker's name ends with the workqueue it last ran ("kworker/0:2-events"), which the
		// channel's own work (tty, pipes) changes between the capture and the pause.
		if w, ok := strings.CutPrefix(want.Comm, "kworker/"); ok {
			if g, ok := strings.CutPrefix(got.Comm, "kworker/"); ok && strings.Split(g, "-")[0] == strings.Split(w, "-")[0] {
				got.Comm = want.Comm
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("pid %d differs:\n view  %+v\n guest %+v", want.PID, got, want)
		}
	}
	for pid, p := range byPID {
		if !seen[pid] {
			t.Errorf("pid %d (%s) is in the view but not in the guest", pid, p.Comm)
		}
	}
}

// pauseAndHash pauses the demo guest and hashes its memory; the view of its RAM closes with the
// test.
func pauseAndHash(t *testing.T, ctx context.Context) (*vmm.FileView, string) {
	t.Helper()
	if err := PauseSettled(ctx, target.FromGuest(demo), snap, syms); err != nil {
		t.Fatal(err)
	}
	mem, err := demo.Memory()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	before, err := vmm.Hash(ctx, mem)
	if err != nil {
		t.Fatal(err)
	}
	return mem, before
}

// closeUnchanged hashes the guest's memory again, closes the session and resumes the guest
// (pauseAndHash paused it, so the session leaves it paused); the test fails if the inspection
// failed (err) or the guest's memory changed.
func closeUnchanged(t *testing.T, ctx context.Context, s *Session, mem *vmm.FileView, before string, err error) {
	t.Helper()
	after, herr := vmm.Hash(ctx, mem)
	if cerr := s.Close(ctx); cerr != nil {
		t.Error(cerr)
	}
	if rerr := demo.Resume(ctx); rerr != nil {
		t.Error(rerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	if herr != nil {
		t.Fatal(herr)
	}
	if before != after {
		t.Fatalf("guest memory changed during inspection: %s -> %s", before, after)
	}
}

// pausedSession pauses the demo guest, hashes its memory and attaches to it: hashing again before
// the session closes (and resumes the guest) proves inspection wrote nothing.
func pausedSession(t *testing.T, ctx context.Context) (*Session, *vmm.FileView, string) {
	t.Helper()
	mem, before := pauseAndHash(t, ctx)
	s, err := Attach(ctx, demo, snap, syms)
	if err != nil {
		t.Fatal(err)
	}
	return s, mem, before
}

func TestProcessViewMatchesGuest(t *testing.T) {
	ctx := need(t)
	truth, self := groundTruth(t, ctx, demo)
	s, mem, before := pausedSession(t, ctx)
	start := time.Now()
	view, gone, err := inspect.ListProcesses(s)
	elapsed := time.Since(start)
	st := s.Machine.Stats()
	closeUnchanged(t, ctx, s, mem, before, err)
	compareProcesses(t, view, truth, self)
	if !gone.Zero() {
		t.Errorf("the guest was paused, yet %s", gone)
	}
	names := map[string]bool{}
	for _, p := range view {
		names[p.Comm] = true
	}
	for _, n := range guest.DemoProcesses {
		if !names[n] {
			t.Errorf("workload process %s missing from the view", n)
		}
	}
	var unknown []string
	for _, u := range s.Globals.Unknown() {
		unknown = append(unknown, fmt.Sprintf("%s×%d", u.Symbol, u.Accesses))
	}
	ts := s.Taint.Stats()
	t.Logf("%d processes in %v: %d syscalls, %d instructions tainted, kernel-image accesses local/redirect/unknown %v, guest bytes swapped in %d; unknown globals: %s",
		len(view), elapsed.Round(time.Millisecond), st.Syscalls, ts.Instructions, s.Counts, st.Swaps, strings.Join(unknown[:min(len(unknown), 20)], " "))
	if s.Counts.Redirect == 0 {
		t.Fatal("no access was redirected: the view shows the SVM, not the guest")
	}
}

func TestKernelMismatchIsRefused(t *testing.T) {
	ctx := need(t)
	other := *snap
	other.Banner = strings.Replace(snap.Banner, "#1 SMP", "#2 SMP", 1)
	_, err := Attach(ctx, demo, &other, syms)
	if err == nil || !strings.Contains(err.Error(), "another kernel build") {
		t.Fatalf("attach with another banner: %v", err)
	}
	// One line that names both builds.
	if msg := err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, snap.Banner) || !strings.Contains(msg, other.Banner) {
		t.Errorf("the refusal does not name both versions on one line: %q", msg)
	}
	if st, err := demo.Status(ctx); err != nil || st != "running" {
		t.Fatalf("guest left %q after a refused attach (%v)", st, err)
	}
}

// testRand is a random source whose seed is logged; HB_SEED=N replays a run.
func testRand(t *testing.T) *rand.Rand {
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("HB_SEED"); v != "" {
		fmt.Sscan(v, &seed)
	}
	t.Logf("seed %d (rerun with HB_SEED=%d)", seed, seed)
	return rand.New(rand.NewPCG(seed, seed>>32))
}

// randomWord returns a lower-case word of n letters.
func randomWord(r *rand.Rand, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + r.IntN(26))
	}
	return string(b)
}

// TestProcessViewRandomWorkload changes the guest's processes at random (new names, command lines,
// a long argv, a non-root owner, processes killed) and compares the view with the guest again.
func TestProcessViewRandomWorkload(t *testing.T) {
	ctx := need(t)
	r := testRand(t)
	var script strings.Builder
	script.WriteString("cd /tmp\n")
	var names []string
	for i := 0; i < 6+r.IntN(4); i++ {
		name := "r" + randomWord(r, 3+r.IntN(10)) // comm keeps 15 characters
		names = append(names, name)
		fmt.Fprintf(&script, "printf '#!/bin/sh\\nwhile :; do sleep 3600; done\\n' > %s; chmod +x %s\n", name, name)
		var args []string
		for j := 0; j < r.IntN(6); j++ {
			args = append(args, randomWord(r, 1+r.IntN(12)))
		}
		owner := ""
		if r.IntN(3) == 0 {
			owner = "su -s /bin/sh analyst -c "
		}
		cmd := fmt.Sprintf("/tmp/%s %s", name, strings.Join(args, " "))
		if owner != "" {
			fmt.Fprintf(&script, "%s'setsid %s </dev/null >/dev/null 2>&1 &'\n", owner, cmd)
		} else {
			fmt.Fprintf(&script, "setsid %s </dev/null >/dev/null 2>&1 &\n", cmd)
		}
	}
	// A long argv: about 40 KiB over many pages.
	long := make([]string, 0, 4000)
	for len(strings.Join(long, " ")) < 40<<10 {
		long = append(long, randomWord(r, 1+r.IntN(20)))
	}
	fmt.Fprintf(&script, "printf '#!/bin/sh\\nwhile :; do sleep 3600; done\\n' > rlong; chmod +x rlong\n")
	fmt.Fprintf(&script, "setsid /tmp/rlong %s </dev/null >/dev/null 2>&1 &\n", strings.Join(long, " "))
	// Kill a few of the new ones (and the sleeps they started get reparented to init).
	script.WriteString("sleep 0.5\n")
	for _, n := range names {
		if r.IntN(3) == 0 {
			fmt.Fprintf(&script, "pkill -9 -x %s\n", n)
		}
	}
	script.WriteString("sleep 0.3\n")
	mustExec(t, ctx, demo, "randomise the workload", script.String())
	truth, self := groundTruth(t, ctx, demo)
	s, err := Attach(ctx, demo, snap, syms)
	if err != nil {
		t.Fatal(err)
	}
	view, _, err := inspect.ListProcesses(s)
	if cerr := s.Close(ctx); cerr != nil {
		t.Error(cerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	compareProcesses(t, view, truth, self)
	var longSeen bool
	for _, p := range view {
		if p.Comm == "rlong" {
			longSeen = len(p.Cmdline) == len(long)+2 // /bin/sh /tmp/rlong args...
		}
	}
	if !longSeen {
		t.Errorf("the long command line (%d arguments) is not in the view whole", len(long)+2)
	}
	t.Logf("%d processes compared, %d new names", len(view), len(names))
}

// TestGuestNeverWritten runs 100 process views with the guest paused throughout: its memory is
// byte-for-byte the same afterwards.
func TestGuestNeverWritten(t *testing.T) {
	need(t)
	// 100 views take about 2 minutes on two cores.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	s, mem, before := pausedSession(t, ctx)
	var first []inspect.Process
	for i := 0; i < 100; i++ {
		view, _, err := inspect.ListProcesses(s)
		if err != nil {
			s.Close(ctx)
			t.Fatalf("view %d: %v", i, err)
		}
		if i == 0 {
			first = view
		} else if !reflect.DeepEqual(view, first) {
			s.Close(ctx)
			t.Fatalf("view %d differs from the first of the same paused guest", i)
		}
	}
	closeUnchanged(t, ctx, s, mem, before, nil)
	t.Logf("100 views of %d processes, guest memory %s unchanged", len(first), before[:16])
}

// BenchmarkProcessView reports, for the demo guest grown to about 100 processes, the cold view
// (a fresh session: code translated and decoded anew) and warm views: time, system calls,
// instructions executed with taint on, redirected accesses and instructions per second.
func BenchmarkProcessView(b *testing.B) {
	if setupErr != nil {
		b.Fatalf("setup: %v", setupErr)
	}
	ctx := context.Background()
	res, err := demo.Exec(ctx, `n=$(ls -d /proc/[0-9]* | wc -l); i=$n; while [ $i -lt 100 ]; do setsid sleep 3600 </dev/null >/dev/null 2>&1 & i=$((i+1)); done; sleep 0.3; ls -d /proc/[0-9]* | wc -l`)
	if err != nil || res.Status != 0 {
		b.Fatalf("grow the workload: %v", err)
	}
	view := func(s *Session) int {
		procs, _, err := inspect.ListProcesses(s)
		if err != nil {
			b.Fatal(err)
		}
		return len(procs)
	}
	start := time.Now()
	s, err := Attach(ctx, demo, snap, syms)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close(ctx)
	n := view(s)
	cold := time.Since(start)
	s.Taint.Drain()
	coldInsns := s.Taint.Stats().Instructions
	st0, counts0 := s.Machine.Stats(), s.Counts
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		view(s)
	}
	b.StopTimer()
	s.Taint.Drain()
	st := s.Machine.Stats()
	insns := float64(s.Taint.Stats().Instructions-coldInsns) / float64(b.N)
	per := b.Elapsed().Seconds() / float64(b.N)
	b.ReportMetric(float64(n), "processes")
	b.ReportMetric(cold.Seconds(), "cold-s")
	b.ReportMetric(float64(st.Syscalls-st0.Syscalls)/float64(b.N), "syscalls/op")
	b.ReportMetric(insns, "insns/op")
	b.ReportMetric(float64(s.Counts.Redirect-counts0.Redirect)/float64(b.N), "redirected/op")
	b.ReportMetric(insns/per/1e6, "M-insns/s")
}

// TestPauseSettled: the word PauseSettled watches is the guest's live clock sequence — even at
// each settled pause, and moving while the guest runs (timer ticks update the clock).
func TestPauseSettled(t *testing.T) {
	ctx := need(t)
	seq := func() uint32 {
		t.Helper()
		if err := PauseSettled(ctx, target.FromGuest(demo), snap, syms); err != nil {
			t.Fatal(err)
		}
		tk, _ := syms.Addr("tk_core")
		mem, err := demo.Memory()
		if err != nil {
			t.Fatal(err)
		}
		defer mem.Close()
		var b [4]byte
		if err := mem.ReadPhys(snap.Layout.KernelStart+tk-snap.Symbols["_text"], b[:]); err != nil {
			t.Fatal(err)
		}
		return binary.LittleEndian.Uint32(b[:])
	}
	first := seq()
	if err := demo.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	// An idle guest does not tick (no clock updates); a busy one does.
	mustExec(t, ctx, demo, "busy loop in the guest", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done")
	second := seq()
	defer demo.Resume(ctx)
	if first%2 != 0 || second%2 != 0 || second == first {
		t.Fatalf("clock sequence %d, then %d after the guest was busy: want even and moving", first, second)
	}
	t.Logf("clock sequence %d -> %d over a busy loop in the guest", first, second)
}

// mustExec runs a command in the guest and fails the test, saying what it was for, unless it ran
// and exited 0.
// execer runs shell commands inside a guest: our own guests and a bare command channel (a VM
// we did not start, whose image still has the in-guest helper for ground truth).
type execer interface {
	Exec(ctx context.Context, command string) (*guest.Result, error)
}

func mustExec(t *testing.T, ctx context.Context, g execer, what, command string) *guest.Result {
	t.Helper()
	res, err := g.Exec(ctx, command)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if res.Status != 0 {
		t.Fatalf("%s: exit status %d: %s%s", what, res.Status, res.Stdout, res.Stderr)
	}
	return res
}
