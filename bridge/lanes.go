package bridge

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"hybridbridge/decision"
	"hybridbridge/inspect"
)

// minLaneItems is the fewest items (processes) for which Each opens more machines. A new machine
// translates the kernel's code again (about 80 ms), and each of its Unicorn engines holds about
// 30 MB more: measured on 2 CPUs, a 68-process ps took as long with a second machine as without,
// and 2.11 s instead of 2.41 s at 998 processes.
const minLaneItems = 200

// maxLanes bounds the Fast-Bridge machines of a session; each holds its own translated code.
const maxLanes = 8

// errLaneMiss stops an operation of a lane (an extra Fast-Bridge machine) at a memo miss: the
// fall-back and its learning are the session's alone (one Slow-Bridge machine, one taint
// engine), so the session re-runs the item once the lanes are done.
var errLaneMiss = errors.New("memo miss on a parallel machine")

// Each implements inspect.Parallel: it spreads fn over the session's Fast-Bridge machine, read
// through self (the Files the view was given: the session or a wrapper of it), and extra ones,
// one per CPU Go may use (each item's operations start from a reset machine, so they are
// independent). Items a lane could not decide are run again through self, in order, after the
// others: there a miss falls back to Slow-Bridge as in any operation. Fast-Bridge's time counts
// the section's wall time, not the sum over machines.
func (s *Session) Each(n int, self inspect.Files, fn func(i int, f inspect.Files) error) error {
	lanes, err := s.lanesFor(n)
	if err != nil {
		return err
	}
	if len(lanes) == 0 {
		for i := range n {
			if err := fn(i, self); err != nil {
				return err
			}
		}
		return nil
	}
	start, fast0, slow0 := time.Now(), s.stats.FastTime, s.stats.SlowTime
	errs := make([]error, n)
	var next atomic.Int64
	work := func(f inspect.Files) {
		for {
			i := int(next.Add(1) - 1)
			if i >= n {
				return
			}
			if errs[i] = fn(i, f); errs[i] != nil && !errors.Is(errs[i], errLaneMiss) {
				next.Store(int64(n)) // a failure ends the view: stop handing out items
			}
		}
	}
	var wg sync.WaitGroup
	for _, l := range lanes {
		l.View = s.View
		wg.Go(func() { work(l) })
	}
	work(self)
	wg.Wait()
	s.stats.FastTime = fast0 + time.Since(start) - (s.stats.SlowTime - slow0)
	for _, l := range lanes {
		s.absorb(l)
	}
	for i, err := range errs {
		if errors.Is(err, errLaneMiss) {
			err = fn(i, self)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// lanesFor returns the extra machines for n items, opening them the first time: none for few
// items, in slow mode, on KVM (its exits, not the CPU, bound it there) or with one CPU.
func (s *Session) lanesFor(n int) ([]*Session, error) {
	want := min(runtime.GOMAXPROCS(0), maxLanes) - 1
	if n < minLaneItems || s.mode == ModeSlow || s.onKVM || s.fast == nil || want < 1 {
		return nil, nil
	}
	for len(s.lanes) < want {
		l := &Session{t: s.t, ctx: s.ctx, ram: s.ram, Globals: s.Globals, Memo: s.Memo, View: s.View,
			vmemmap: s.vmemmap, snap: s.snap, leaves: s.leaves, mods: s.mods, percpuTop: s.percpuTop,
			percpuShifted: s.percpuShifted, foreignCode: s.foreignCode, mode: s.mode, policy: s.policy,
			GuestTSC: s.GuestTSC, clockRead: s.clockRead, lane: true}
		m, err := l.openMachine(false)
		if err != nil {
			return nil, fmt.Errorf("open a parallel Fast-Bridge machine: %w", err)
		}
		l.fast = m
		if err := l.hookFast(m); err != nil {
			m.Close()
			return nil, err
		}
		s.lanes = append(s.lanes, l)
	}
	return s.lanes, nil
}

// absorb moves a lane's counts into the session's: operations, memo hits and misses, the
// accesses decided, with those its filter let through in C.
func (s *Session) absorb(l *Session) {
	l.settleFilter()
	skipped, _, _ := l.filter.Stats()
	s.stats.Hits += l.stats.Hits + skipped - l.absorbedSkipped
	l.absorbedSkipped = skipped
	s.stats.Misses += l.stats.Misses
	s.stats.FastOps += l.stats.FastOps
	s.Counts.Local += l.Counts.Local
	s.Counts.Redirect += l.Counts.Redirect
	s.Counts.Both += l.Counts.Both
	s.Counts.Unknown += l.Counts.Unknown
	l.stats, l.Counts = EngineStats{}, decision.Counts{}
}

// FastMachines is how many Fast-Bridge machines the session has opened so far: its own and the
// parallel ones (none in slow mode).
func (s *Session) FastMachines() int {
	if s.fast == nil {
		return 0
	}
	return 1 + len(s.lanes)
}

// closeLanes closes the extra machines (Detach); the RAM they overlay is the session's.
func (s *Session) closeLanes() error {
	var errs []error
	for _, l := range s.lanes {
		s.absorb(l)
		st := l.fast.Stats()
		s.closedLanes.syscalls += st.Syscalls
		s.closedLanes.swaps += st.Swaps
		errs = append(errs, l.fast.Close())
	}
	s.lanes = nil
	return errors.Join(errs...)
}
