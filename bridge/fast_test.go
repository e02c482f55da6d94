package bridge

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"hybridbridge/inspect"
	"hybridbridge/memo"
	"hybridbridge/svm"
	"hybridbridge/target"
	"hybridbridge/vmm"
)

// allViews runs every view readViews reads, and ps, once on s. In fast mode a view that meets a
// memo miss fails with ErrMemoMiss; it is reported in missed.
func allViews(t *testing.T, s *Session) (v *viewSet, procs []inspect.Process, missed error) {
	t.Helper()
	s.View = "views"
	v, err := readViews(s, -1)
	if errors.Is(err, ErrMemoMiss) {
		return nil, nil, err
	}
	if err != nil {
		t.Fatalf("views (%s mode): %v", s.Mode(), err)
	}
	s.View = inspect.ProcessView.Name
	procs, _, err = inspect.ProcessView.ReadTyped(s, 0)
	if errors.Is(err, ErrMemoMiss) {
		return nil, nil, err
	}
	if err != nil {
		t.Fatalf("ps (%s mode): %v", s.Mode(), err)
	}
	return v, procs, nil
}

// TestFastSlowAutoAgree: from an empty memo, auto falls back and learns; a second auto run
// replays with a hit rate of at least 99.9 % and fewer fall-backs; auto, fast (where the memo
// decides everything) and slow give identical views; a forced miss falls back exactly once and
// the view stays right; the guest's memory is unchanged.
func TestFastSlowAutoAgree(t *testing.T) {
	ctx := need(t)
	mem, before := pauseAndHash(t, ctx)
	m := memo.New(MemoKey(snap))
	attach := func(mode Mode) *Session {
		s, err := AttachMode(ctx, demo, snap, syms, mode, m)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// The guest stays paused between the runs, so every run sees the same guest.
	done := func(s *Session) {
		if err := s.Detach(); err != nil {
			t.Fatal(err)
		}
	}
	run := func(mode Mode) (*viewSet, []inspect.Process, error, EngineStats, time.Duration) {
		s := attach(mode)
		defer done(s)
		start := time.Now()
		v, p, missed := allViews(t, s)
		return v, p, missed, s.Stats(), time.Since(start)
	}
	autoV, autoP, _, st1, d1 := run(ModeAuto)
	t.Logf("auto from an empty memo: %v, %d fall-backs, %d fast operations, hits %d misses %d, engine time fast %v slow %v",
		d1.Round(time.Millisecond), st1.FallBacks, st1.FastOps, st1.Hits, st1.Misses, st1.FastTime.Round(time.Millisecond), st1.SlowTime.Round(time.Millisecond))
	if st1.FallBacks == 0 {
		t.Error("auto from an empty memo did not fall back")
	}
	_, _, _, st2, d2 := run(ModeAuto)
	rate := float64(st2.Hits) / float64(st2.Hits+st2.Misses)
	t.Logf("auto again: %v, %d fall-backs, hits %d misses %d (%.4f%%), engine time fast %v slow %v",
		d2.Round(time.Millisecond), st2.FallBacks, st2.Hits, st2.Misses, 100*rate, st2.FastTime.Round(time.Millisecond), st2.SlowTime.Round(time.Millisecond))
	for _, e := range st2.Events {
		t.Logf("  still falls back: %s/%s %s  %s: %s", e.View, e.Syscall, e.Symbol, e.Disassembly, e.Reason)
	}
	if rate < 0.999 || st2.FallBacks != 0 {
		t.Errorf("second auto run: %d fall-backs (first: %d), hit rate %.4f", st2.FallBacks, st1.FallBacks, rate)
	}
	slowV, slowP, _, _, d4 := run(ModeSlow)
	t.Logf("slow: %v", d4.Round(time.Millisecond))
	if !reflect.DeepEqual(autoV, slowV) || !reflect.DeepEqual(autoP, slowP) {
		t.Error("auto and slow views differ")
	}
	fastV, fastP, missed, st3, d3 := run(ModeFast)
	if missed != nil {
		t.Errorf("fast mode with the trained memo met a miss: %v", missed)
	} else {
		t.Logf("fast: %v (engine %v)", d3.Round(time.Millisecond), st3.FastTime.Round(time.Millisecond))
		if !reflect.DeepEqual(fastV, slowV) || !reflect.DeepEqual(fastP, slowP) {
			t.Error("fast and slow views differ")
		}
	}
	forcedMiss(t, attach(ModeAuto), m)
	after, err := vmm.Hash(ctx, mem)
	if err != nil {
		t.Fatal(err)
	}
	demo.Resume(ctx)
	if before != after {
		t.Fatalf("guest memory changed: %s -> %s", before, after)
	}
}

// BenchmarkFastProcessView is the ps view on Fast-Bridge with a trained memo: engine time per
// view, memo hits per view.
func BenchmarkFastProcessView(b *testing.B) {
	if setupErr != nil {
		b.Fatalf("setup: %v", setupErr)
	}
	ctx := context.Background()
	m := memo.New(MemoKey(snap))
	s, err := AttachMode(ctx, demo, snap, syms, ModeAuto, m)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close(ctx)
	s.View = "ps"
	for range 2 { // train
		if _, _, err := inspect.ListProcesses(s); err != nil {
			b.Fatal(err)
		}
	}
	st0 := s.Stats()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, _, err := inspect.ListProcesses(s); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	st := s.Stats()
	n := float64(b.N)
	b.ReportMetric(float64(st.FastTime-st0.FastTime)/n/1e6, "fast-ms/op")
	b.ReportMetric(float64(st.Hits-st0.Hits)/n, "hits/op")
	b.ReportMetric(float64(st.FallBacks-st0.FallBacks)/n, "fallbacks/op")
	skipped, passed, size := s.filter.Stats()
	b.Logf("filter: %d accesses decided in C, %d in Go, %d pairs", skipped, passed, size)
}

// modesAgree runs every view on the paused demo guest in auto mode from an empty memo, in auto
// mode again, in fast mode and in slow mode: all four give the same views, the first auto run
// falls back and the second does not. The guest's memory is unchanged.
func modesAgree(t *testing.T, ctx context.Context) {
	t.Helper()
	mem, before := pauseAndHash(t, ctx)
	defer demo.Resume(ctx)
	m := memo.New(MemoKey(snap))
	type result struct {
		v     *viewSet
		p     []inspect.Process
		stats EngineStats
	}
	var res []result
	for _, mode := range []Mode{ModeAuto, ModeAuto, ModeFast, ModeSlow} {
		s, err := AttachMode(ctx, demo, snap, syms, mode, m)
		if err != nil {
			t.Fatal(err)
		}
		v, p, missed := allViews(t, s)
		st := s.Stats()
		if err := s.Detach(); err != nil {
			t.Fatal(err)
		}
		if missed != nil {
			t.Fatalf("%s mode: %v", mode, missed)
		}
		res = append(res, result{v, p, st})
	}
	slow := res[3]
	for i, name := range []string{"auto (empty memo)", "auto (trained)", "fast"} {
		if !reflect.DeepEqual(res[i].v, slow.v) || !reflect.DeepEqual(res[i].p, slow.p) {
			t.Errorf("%s views differ from slow", name)
		}
	}
	if res[0].stats.FallBacks == 0 {
		t.Error("auto from an empty memo did not fall back")
	}
	if st := res[1].stats; st.FallBacks != 0 {
		t.Errorf("trained auto run fell back %d times: %+v", st.FallBacks, st.Events)
	}
	t.Logf("modes agree: auto from an empty memo fell back %d times; trained auto %d hits, %d misses", res[0].stats.FallBacks, res[1].stats.Hits, res[1].stats.Misses)
	after, err := vmm.Hash(ctx, mem)
	if err != nil {
		t.Fatal(err)
	}
	if before != after {
		t.Fatalf("guest memory changed: %s -> %s", before, after)
	}
}

// forcedMiss forgets the memoized instruction that reads the module list head and runs lsmod on
// s, trained: exactly one fall-back, touching the module list, and the same modules as before.
// Both machines then reset to exactly the snapshot and the guest. It detaches s.
func forcedMiss(t *testing.T, s *Session, m *memo.Memo) {
	t.Helper()
	s.View = "lsmod"
	want, err := inspect.ListModules(s)
	if err != nil || s.Stats().FallBacks != 0 {
		t.Fatalf("lsmod with a trained memo (%s): %v, %d fall-backs", s.FastEngine(), err, s.Stats().FallBacks)
	}
	forgot := 0
	for _, e := range m.Entries() {
		if e.Region == "modules" {
			m.Delete(e.PC)
			forgot++
			break
		}
	}
	if forgot == 0 {
		t.Fatal("no memoized instruction reads the module list")
	}
	got, err := inspect.ListModules(s)
	st := s.Stats()
	// Both machines ran (the miss opened Slow-Bridge's): a reset puts back every page of each,
	// the overlaid guest's included, or one operation could see what another left (on KVM no
	// hook sees the writes: Linux's record of written pages does).
	for _, sm := range []*svm.Machine{s.fast, s.Machine} {
		if rerr := sm.Reset(); rerr != nil {
			t.Fatal(rerr)
		}
		if pages := sm.Unrestored(); len(pages) > 0 {
			t.Errorf("%d pages differ from the snapshot and the guest after Reset (KVM %v), first %#x", len(pages), sm.OnKVM(), pages[0])
		}
	}
	if derr := s.Detach(); derr != nil {
		t.Fatal(derr)
	}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("lsmod after a forced miss (%s): %v\n got  %+v\n want %+v", s.FastEngine(), err, got, want)
	}
	if st.FallBacks != 1 || len(st.Events) != 1 || st.Events[0].Region != "modules" {
		t.Errorf("forced miss (%s): %d fall-backs, events %+v", s.FastEngine(), st.FallBacks, st.Events)
	} else {
		e := st.Events[0]
		t.Logf("forced miss (%s): %s %s %q (%s), fall-back latency %v", s.FastEngine(), e.Syscall, e.Symbol, e.Disassembly, e.Reason, e.Latency.Round(time.Microsecond))
	}
}

// BenchmarkParallelSessions is the model of Fast-Bridge spread over machines: the ps view on
// 1 and on 2 Fast-Bridge sessions at once (each its own machine, one memo), the guest paused
// throughout. It reports the views per second together, and each view's time.
func BenchmarkParallelSessions(b *testing.B) {
	if setupErr != nil {
		b.Fatalf("setup: %v", setupErr)
	}
	ctx := context.Background()
	if err := PauseSettled(ctx, target.FromGuest(demo), snap, syms); err != nil {
		b.Fatal(err)
	}
	defer demo.Resume(ctx)
	m := memo.New(MemoKey(snap))
	var sessions []*Session
	for range 2 {
		s, err := AttachMode(ctx, demo, snap, syms, ModeAuto, m)
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close(ctx)
		s.View = "ps"
		for range 2 { // train, and translate this machine's code
			if _, _, err := inspect.ListProcesses(s); err != nil {
				b.Fatal(err)
			}
		}
		sessions = append(sessions, s)
	}
	for _, p := range []int{1, 2} {
		b.Run(fmt.Sprintf("machines=%d", p), func(b *testing.B) {
			var wg sync.WaitGroup
			errs := make([]error, p)
			start := time.Now()
			for w := range p {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := w; i < b.N; i += p {
						if _, _, err := inspect.ListProcesses(sessions[w]); err != nil {
							errs[w] = err
							return
						}
					}
				}()
			}
			wg.Wait()
			took := time.Since(start)
			if err := errors.Join(errs...); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/took.Seconds(), "views/s")
			b.ReportMetric(float64(took.Milliseconds())*float64(p)/float64(b.N), "ms/view")
		})
	}
}
