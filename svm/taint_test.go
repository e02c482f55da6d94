package svm

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/arch/x86/x86asm"

	"hybridbridge/decision"
	"hybridbridge/taint"
)

// tainted opens a machine with the taint tracker attached before its first run. Kernel globals
// have no classifier yet (the Slow-Bridge issue adds the per-global lists), so they are Unknown.
func tainted(t testing.TB, onAccess func(*taint.Access)) (*Machine, *taint.Tracker) {
	t.Helper()
	m := open(t, Options{})
	var user []taint.PhysRange
	for va := snap.Agent.Buffer; va < snap.Agent.Buffer+snap.Agent.Size; va += 4096 {
		pa, err := m.Phys(va)
		if err != nil {
			t.Fatalf("agent buffer page %#x: %v", va, err)
		}
		user = append(user, taint.PhysRange{Begin: pa, End: pa + 4096, Label: taint.LabelUser})
	}
	tr := taint.New(taint.Config{
		Image:    []taint.VirtRange{{Begin: snap.Symbols["_text"], End: snap.Symbols["_end"]}},
		Memory:   user,
		OnAccess: onAccess,
		ReadCode: m.ReadVirt,
	})
	if err := tr.Attach(m.Engine()); err != nil {
		t.Fatal(err)
	}
	return m, tr
}

// workload is a mix of the injected calls the views will make.
func workload(m *Machine) error {
	if _, err := m.Syscall(SysGetpid); err != nil {
		return err
	}
	for _, p := range []string{"/proc/version", "/proc/1/stat", "/proc/1/status", "/proc/modules", "/proc/net/tcp", "/proc/meminfo"} {
		if _, err := m.ReadFile(p); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	_, err := m.ReadDir("/proc")
	return err
}

// On real kernel code, every access satisfies the provenance invariants, and the injected calls
// give the same results with the tracker attached as without.
func TestTaintInvariantsOnRealSyscalls(t *testing.T) {
	kernelStart, kernelEnd := snap.Layout.KernelStart, snap.Layout.KernelEnd
	svmOwn := func(phys uint64) bool {
		return phys >= snap.Layout.GVMMax || phys < 1<<20 || (phys >= kernelStart && phys < kernelEnd)
	}
	var bad []string
	counts := map[string]int{}
	fail := func(a *taint.Access, why string) {
		if len(bad) < 20 {
			bad = append(bad, fmt.Sprintf("%s: %v", why, a))
		}
	}
	m, tr := tainted(t, func(a *taint.Access) {
		switch {
		case a.Seg == x86asm.GS:
			counts["gs"]++
			if a.Decision != decision.Local || !svmOwn(a.Phys) {
				fail(a, "gs-relative access not SVM-local")
			}
		case a.Base == x86asm.RSP:
			counts["stack"]++
			if a.Decision != decision.Local || !svmOwn(a.Phys) {
				fail(a, "stack access not SVM-local")
			}
		case a.Base == x86asm.RIP:
			counts["rip"]++
			if !a.DispGlobal || a.Addr&taint.LabelGlobal == 0 {
				fail(a, "RIP-relative access not constant-global")
			}
			if a.Decision != decision.Unknown || a.Reason != taint.ReasonGlobalUnknown {
				fail(a, "kernel global decided without a classifier")
			}
		case a.Base == x86asm.RBP && a.BaseLabel&taint.LabelSVM != 0:
			counts["frame"]++
			if a.BaseLabel&taint.LabelGVM != 0 || !svmOwn(a.Phys) {
				fail(a, "frame-pointer access not SVM-local")
			}
		}
		// Nothing here comes from a guest: no GVM label may appear anywhere.
		if a.Addr&taint.LabelGVM != 0 || a.Data&taint.LabelGVM != 0 || a.Decision == decision.Redirect {
			fail(a, "GVM provenance without a guest")
		}
		counts["all"]++
	})
	start := time.Now()
	if err := workload(m); err != nil {
		t.Fatal(err)
	}
	tr.Drain()
	elapsed := time.Since(start)
	for _, b := range bad {
		t.Error(b)
	}
	st := tr.Stats()
	if st.Instructions == 0 || counts["gs"] == 0 || counts["stack"] == 0 || counts["rip"] == 0 {
		t.Fatalf("too little seen: %d instructions, accesses %v", st.Instructions, counts)
	}
	if len(st.Mismatched) != 0 {
		t.Errorf("rules that did not fit what Unicorn executed: %v", st.Mismatched)
	}
	var unmodelled []string
	for op, n := range st.Unmodelled {
		unmodelled = append(unmodelled, fmt.Sprintf("%s×%d", op, n))
	}
	sort.Strings(unmodelled)
	t.Logf("%d instructions, %d accesses %v in %v (%.1f M insn/s with taint); unmodelled (reported, handled conservatively): %s",
		st.Instructions, st.Accesses, counts, elapsed.Round(time.Millisecond), float64(st.Instructions)/elapsed.Seconds()/1e6,
		strings.Join(unmodelled, " "))

	// Same answers without the tracker, after the same calls: the views' procfs numbers a pid's
	// inode when a lookup first meets it.
	plain := open(t, Options{})
	if err := workload(plain); err != nil {
		t.Fatal(err)
	}
	want, err := plain.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	got, err := m.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("/proc with taint %v\nwithout %v", got, want)
	}
}

// BenchmarkTaintSyscalls reports instructions per second with taint on, over real injected calls.
func BenchmarkTaintSyscalls(b *testing.B) {
	m, tr := tainted(b, nil)
	if err := workload(m); err != nil { // translate and decode once
		b.Fatal(err)
	}
	tr.Drain()
	before := tr.Stats().Instructions
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := workload(m); err != nil {
			b.Fatal(err)
		}
		tr.Drain()
	}
	b.StopTimer()
	st := tr.Stats()
	n := st.Instructions - before
	b.ReportMetric(float64(n)/b.Elapsed().Seconds()/1e6, "M-insns/s")
	b.ReportMetric(float64(n)/float64(b.N), "insns/op")
	b.ReportMetric(st.InsnPerSec()/1e6, "tracker-M-insns/s")
}
