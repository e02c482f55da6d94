package bridge

import (
	"reflect"
	"testing"
	"time"

	"hybridbridge/decision"
	"hybridbridge/inspect"
	"hybridbridge/internal/testenv"
	"hybridbridge/memo"
	"hybridbridge/vmm"
)

// TestKVMFastBridge: Fast-Bridge under KVM (the decided ranges without memory, each access there
// resolved from the memo) gives the views Unicorn's Fast-Bridge gives with the same memo, without
// a fall-back; a forced miss falls back once and the view stays right; the guest is unchanged.
// It runs wherever /dev/kvm opens: a paravirtual KVM is slow, not wrong.
func TestKVMFastBridge(t *testing.T) {
	ctx := need(t)
	k, err := vmm.OpenKVM()
	if err != nil {
		testenv.SkipNoKVM(t, err.Error())
	}
	k.Close()
	mem, before := pauseAndHash(t, ctx)
	defer demo.Resume(ctx)
	m := memo.New(MemoKey(snap))
	run := func(o Options) (*viewSet, []inspect.Process, EngineStats, decision.Counts, time.Duration) {
		s, err := AttachWith(ctx, demo, snap, syms, o)
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := s.Detach(); err != nil {
				t.Fatal(err)
			}
		}()
		start := time.Now()
		v, p, missed := allViews(t, s)
		if missed != nil {
			t.Fatalf("%s mode (KVM %v): %v", o.Mode, o.KVM, missed)
		}
		if o.KVM {
			ex := s.fast.ExitsByReason()
			st := s.fast.Stats()
			t.Logf("KVM: %d calls, %d exits %v, %d intercepted accesses, %d emulated here, %v in KVM_RUN; %d decided pages left mapped (page tables, descriptor tables)",
				st.Syscalls, st.Exits, ex, st.Trapped, st.Emulated, st.KVMTime.Round(time.Millisecond), pages(s))
		}
		return v, p, s.Stats(), s.Accesses(), time.Since(start)
	}
	run(Options{Mode: ModeAuto, Memo: m}) // train
	memoHits := func() (n uint64) {
		for _, e := range m.Entries() {
			n += e.Hits
		}
		return n
	}
	h0 := memoHits()
	uv, up, ust, uacc, ud := run(Options{Mode: ModeAuto, Memo: m})
	h1 := memoHits()
	t.Logf("Unicorn-fast: %v (engine %v), %d fall-backs, %d hits", ud.Round(time.Millisecond), ust.FastTime.Round(time.Millisecond), ust.FallBacks, ust.Hits)
	kv, kp, kst, kacc, kd := run(Options{Mode: ModeAuto, Memo: m, KVM: true})
	h2 := memoHits()
	t.Logf("KVM-fast: %v (engine %v), %d fall-backs, %d hits, %d misses, engine %s", kd.Round(time.Millisecond), kst.FastTime.Round(time.Millisecond), kst.FallBacks, kst.Hits, kst.Misses, kst.Engine)
	for _, e := range kst.Events {
		t.Logf("  fell back: %s/%s %s  %s: %s", e.View, e.Syscall, e.Symbol, e.Disassembly, e.Reason)
	}
	if !reflect.DeepEqual(kv, uv) || !reflect.DeepEqual(kp, up) {
		t.Error("KVM and Unicorn Fast-Bridge views differ")
	}
	// Every decided access is counted once on either executor, whether Unicorn's filter let it
	// through in C or KVM exited for it. Local counts may differ by a few accesses: the SVM's own
	// clock keeps running, and a path that depends on it varies between two runs of one executor
	// too (measured: 235,977 and 235,978 on Unicorn, 235,978 and 235,973 on KVM).
	t.Logf("kernel-global accesses: Unicorn %+v, KVM %+v", uacc, kacc)
	if d := uacc.Local - kacc.Local; uacc.Redirect != kacc.Redirect || uacc.Unknown != kacc.Unknown || d*d*1e6 > uacc.Local*uacc.Local {
		t.Errorf("kernel-global accesses: Unicorn %+v, KVM %+v", uacc, kacc)
	}
	// The memo's per-instruction hits count every decided access too, however it was replayed.
	uh, kh := float64(h1-h0), float64(h2-h1)
	t.Logf("memo hits per instruction, summed: Unicorn %.0f, KVM %.0f (engine hits %d, %d)", uh, kh, ust.Hits, kst.Hits)
	if d := uh - kh; d*d*1e6 > uh*uh || uh < float64(ust.Hits) {
		t.Errorf("memo hits per instruction, summed: Unicorn %.0f, KVM %.0f (engine hits %d, %d)", uh, kh, ust.Hits, kst.Hits)
	}
	if kst.FallBacks != 0 || kst.Engine != EngineKVM {
		t.Errorf("KVM with a trained memo: %d fall-backs, last engine %q", kst.FallBacks, kst.Engine)
	}

	s, err := AttachWith(ctx, demo, snap, syms, Options{Mode: ModeAuto, Memo: m, KVM: true})
	if err != nil {
		t.Fatal(err)
	}
	forcedMiss(t, s, m)
	after, err := vmm.Hash(ctx, mem)
	if err != nil {
		t.Fatal(err)
	}
	if before != after {
		t.Fatalf("guest memory changed: %s -> %s", before, after)
	}
}

// pages counts the pages of spans.
func pages(s *Session) int {
	n := 0
	for _, k := range s.kept {
		n += int((k.End - k.Start) / 4096)
	}
	return n
}
