package bridge

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/arch/x86/x86asm"

	"hybridbridge/decision"
	"hybridbridge/emu"
	"hybridbridge/memo"
	"hybridbridge/svm"
)

// Mode chooses the engines a session runs.
type Mode string

const (
	// ModeAuto runs Fast-Bridge and falls back to Slow-Bridge for an operation that meets an
	// instruction the memo cannot decide, learning it.
	ModeAuto Mode = "auto"
	// ModeFast runs Fast-Bridge only: a memo miss fails the operation (ErrMemoMiss).
	ModeFast Mode = "fast"
	// ModeSlow runs Slow-Bridge (taint) for everything.
	ModeSlow Mode = "slow"
)

// ErrMemoMiss is returned in ModeFast when an operation needs a decision the memo does not have.
var ErrMemoMiss = errors.New("memo miss (run with --mode auto or slow to learn it)")

// Engine names, as the console shows them.
const (
	EngineFast  = "Unicorn-fast"
	EngineKVM   = "KVM-fast"
	EngineTaint = "Unicorn-taint"
)

// FastEngine names the engine Fast-Bridge runs on in this session.
func (s *Session) FastEngine() string {
	if s.onKVM {
		return EngineKVM
	}
	return EngineFast
}

// FallBack is one switch from Fast-Bridge to Slow-Bridge: the access the memo could not decide.
type FallBack struct {
	Time        time.Time     `json:"time"`
	View        string        `json:"view"`
	Syscall     string        `json:"syscall"`
	Path        string        `json:"path,omitempty"`
	PC          uint64        `json:"pc"`      // in the SVM
	MemoPC      uint64        `json:"memo_pc"` // the same instruction in the memo (its link address)
	Symbol      string        `json:"symbol"`
	Disassembly string        `json:"disassembly"`
	Region      string        `json:"region"`
	Reason      string        `json:"reason"`
	Latency     time.Duration `json:"latency"` // the operation's Slow-Bridge re-run
}

// EngineStats count a session's work per engine.
type EngineStats struct {
	FastOps, SlowOps int           // file operations completed by each engine
	FallBacks        int           // operations re-run by Slow-Bridge after a miss
	Hits, Misses     uint64        // Fast-Bridge memo lookups
	FastTime         time.Duration // in Fast-Bridge (including aborted runs)
	SlowTime         time.Duration // in Slow-Bridge
	Events           []FallBack
	Engine           string // the engine that ran last
	FastEngine       string // the engine Fast-Bridge runs on (EngineFast or EngineKVM)
	// On KVM: the vCPU's exits to user space, of which accesses to the decided ranges.
	KVMExits, KVMTrapped int
}

// fastRun is the state of the Fast-Bridge operation in progress.
type fastRun struct {
	miss *FallBack // the first access the memo could not decide
}

// Stats returns the session's engine counters.
func (s *Session) Stats() EngineStats {
	s.settleFilter()
	st := s.stats
	if s.filter != nil {
		skipped, _, _ := s.filter.Stats()
		st.Hits += skipped
	}
	st.Events = append([]FallBack(nil), st.Events...)
	st.FastEngine = s.FastEngine()
	if s.onKVM && s.fast != nil {
		ms := s.fast.Stats()
		st.KVMExits, st.KVMTrapped = ms.Exits, ms.Trapped
	}
	return st
}

// settleFilter credits the accesses Unicorn's filter let through in C (local decisions replayed
// for an (instruction, address) pair) to the counts Go keeps for decided accesses: the globals'
// local count, as Slow-Bridge and KVM count every access, and the memo's per-instruction hits.
func (s *Session) settleFilter() {
	if s.filter == nil {
		return
	}
	s.filter.DrainHits(func(pc, addr, n uint64) {
		if _, ok := s.policy.alias(addr); !ok && svm.InSpans(s.policy.data, addr) {
			s.Counts.Local += int(n) // as count does for each
		}
		s.Memo.AddHits(s.snap.LinkAddr(pc), n)
	})
}

// Accesses are Counts, with every access Fast-Bridge decided so far included.
func (s *Session) Accesses() decision.Counts {
	s.settleFilter()
	return s.Counts
}

// Mode is the session's engine mode.
func (s *Session) Mode() Mode { return s.mode }

// do runs one file operation from a clean machine: in Fast-Bridge unless the mode is slow; on a
// memo miss in auto mode, again from a clean Slow-Bridge machine, which learns what was missing.
// Each operation starts from the snapshot, so rolling back is a reset, and the re-run's output
// replaces the aborted run's entirely.
func (s *Session) do(op func(m *svm.Machine) error) error {
	if err := s.ctx.Err(); err != nil {
		return fmt.Errorf("inspection stopped: %w", err)
	}
	if s.mode != ModeSlow {
		start := time.Now()
		err := s.runFast(op)
		s.stats.FastTime += time.Since(start)
		miss := s.run.miss
		var se *svm.StopError
		if miss == nil && errors.Is(err, svm.ErrUnsupported) && errors.As(err, &se) {
			// KVM cannot run an instruction Unicorn can: the operation needs Slow-Bridge, like a miss.
			miss = &FallBack{Time: time.Now(), View: s.View, Syscall: svm.SyscallName(se.NR), PC: se.RIP,
				Symbol: se.Symbol, Disassembly: s.disassemble(s.fast, se.RIP), Reason: err.Error()}
		}
		if miss == nil {
			s.stats.FastOps++
			s.stats.Engine = s.FastEngine()
			return err
		}
		if s.mode == ModeFast {
			return fmt.Errorf("%w: %s in %s (%s)", ErrMemoMiss, miss.Symbol, miss.Syscall, miss.Reason)
		}
		if s.lane {
			return fmt.Errorf("%w: %s in %s (%s)", errLaneMiss, miss.Symbol, miss.Syscall, miss.Reason)
		}
		s.stats.FallBacks++
		start = time.Now()
		err = s.runSlow(op)
		miss.Latency = time.Since(start)
		s.stats.SlowTime += miss.Latency
		s.stats.Events = append(s.stats.Events, *miss)
		return err
	}
	start := time.Now()
	err := s.runSlow(op)
	s.stats.SlowTime += time.Since(start)
	return err
}

func (s *Session) runFast(op func(m *svm.Machine) error) error {
	if err := s.fast.Reset(); err != nil {
		return err
	}
	if v := s.Memo.Version(); v != s.replayed {
		// The memo changed (a fall-back learned, or an entry was removed): decisions replayed
		// from the old one may not hold.
		if s.filter != nil {
			s.settleFilter()
			s.filter.Clear()
		}
		clear(s.replay)
		s.replayed = v
	}
	s.run = fastRun{}
	return op(s.fast)
}

func (s *Session) runSlow(op func(m *svm.Machine) error) error {
	if s.Machine == nil {
		m, err := s.openMachine(true)
		if err != nil {
			return fmt.Errorf("open Slow-Bridge: %w", err)
		}
		s.Machine = m
		if s.Taint, err = s.tracker(s.snap, s.policy); err != nil {
			return err
		}
	} else if err := s.Machine.Reset(); err != nil {
		return err
	}
	s.stats.SlowOps++
	s.stats.Engine = EngineTaint
	s.learnErr = nil
	err := op(s.Machine)
	if s.learnErr != nil {
		err = errors.Join(err, fmt.Errorf("Slow-Bridge could not memoize a decision: %w", s.learnErr))
	}
	return err
}

// hookFast installs Fast-Bridge's only instrumentation: a memory hook bounded to the physical
// ranges whose accesses need a decision (the kernel image's data, the aliased struct
// pages), resolved from the memo by instruction address. Everything else — the guest's heap
// through the overlay, the SVM's own memory — runs natively, without taint.
func (s *Session) hookFast(m *svm.Machine) error {
	s.replay = map[[2]uint64]decision.Decision{}
	if m.OnKVM() {
		return s.interceptFast(m)
	}
	e := m.Engine()
	f, err := e.NewMemFilter(1<<17, func(acc emu.MemAccess, phys uint64, size int, _ int64) {
		s.resolveFast(m, phys, size, acc == emu.MemWrite)
	})
	if err != nil {
		return fmt.Errorf("Fast-Bridge hook: %w", err)
	}
	if err := f.HookSpans(emu.HookMemRead|emu.HookMemWrite, s.policy.decided()); err != nil {
		return fmt.Errorf("Fast-Bridge hook: %w", err)
	}
	s.filter = f
	return nil
}

// resolveFast decides one access from the memo, or aborts the operation as a miss.
func (s *Session) resolveFast(m *svm.Machine, phys uint64, size int, write bool) {
	if s.run.miss != nil {
		return // already stopping
	}
	pc := s.filter.PC()
	if pc == 0 {
		m.Stop("Unicorn gave no instruction address for an access")
		return
	}
	if userPC(pc) {
		// A program's own access (the zero page), the SVM's as Slow-Bridge decides it
		// (decideImage): no memo entry, and let through in C from now on where the filter has room.
		_ = s.filter.Add(pc, phys)
		s.swap(m, phys, size, write, decision.Local)
		return
	}
	key := [2]uint64{pc, phys}
	if d, ok := s.replay[key]; ok {
		s.stats.Hits++
		s.Memo.AddHits(s.snap.LinkAddr(pc), 1)
		s.swap(m, phys, size, write, d)
		return
	}
	syscall := svm.SyscallName(m.CurrentSyscall())
	region := s.region(phys)
	d, reason := s.fastDecision(m, pc, phys, region, syscall)
	if reason != "" {
		s.stats.Misses++
		s.run.miss = &FallBack{Time: time.Now(), View: s.View, Syscall: syscall, PC: pc, MemoPC: s.snap.LinkAddr(pc),
			Symbol: s.Globals.syms.Format(pc), Disassembly: s.disassemble(m, pc), Region: region, Reason: reason}
		m.Stop("memo miss")
		return
	}
	s.stats.Hits++
	// The same instruction at the same address decides the same way until the memo changes
	// (runFast then clears both): a local access is let through in C from now on, a redirected one
	// swapped without asking the memo again.
	if d != decision.Local || s.filter.Add(pc, phys) != nil {
		s.replay[key] = d
	}
	s.swap(m, phys, size, write, d)
}

// guestPointer marks, in a memoized region, an access to a global through a guest-derived pointer
// (decided by provenance, not by the lists).
const guestPointer = " (guest pointer)"

// fastDecision replays the memo for the instruction at pc touching region, or says why it cannot
// (a miss). In the kernel image's data an instruction may touch several globals: its decision
// holds only for globals it was seen with; one seen both redirected and local (a lock helper,
// memcpy) is decided per global: by the lists for globals it reached by constant address, as
// the guest's for globals it reached through guest pointers, and not at all (a miss) for a
// global it reached both ways.
func (s *Session) fastDecision(m *svm.Machine, pc, phys uint64, region, syscall string) (decision.Decision, string) {
	at := s.snap.LinkAddr(pc)
	ent, ok := s.Memo.Lookup(at, s.View, syscall)
	if !ok {
		if ent.PC == at && ent.Decision == decision.Unknown {
			return decision.Invalid, "the global " + region + " is in neither list"
		}
		return decision.Invalid, "instruction not in the memo"
	}
	data := svm.InSpans(s.policy.data, phys)
	if !data && s.policy.guestFrame(phys) {
		return decision.Redirect, "" // as Slow-Bridge decides it, by the frame's owner
	}
	plain, viaGuest := false, false
	if data {
		for _, r := range append([]string{ent.Region}, ent.Regions...) {
			plain = plain || r == region
			viaGuest = viaGuest || r == region+guestPointer
		}
		if !plain && !viaGuest {
			return decision.Invalid, "instruction seen with other globals only, not " + region
		}
	}
	switch ent.Decision {
	case decision.Local, decision.Redirect:
		return ent.Decision, ""
	case decision.Both:
		caller := func() uint64 { return s.callerOf(m) }
		switch {
		case !data:
			return addressDecision(ent, region, s.policy.place(phys))
		case plain && viaGuest:
			// Through a guest pointer the global is the guest's; by constant address, the lists
			// say. Where they say the guest's too, provenance does not matter; nor for a global
			// the function decides (redirectInList: a helper's caller), as for the node mask a
			// guest node's id indexes where the guest's zones are walked.
			d := s.Globals.decide(s.policy.virt(phys), pc, caller)
			if d == decision.Redirect || (d == decision.Local && s.Globals.scoped(s.policy.virt(phys))) {
				return d, ""
			}
			return decision.Invalid, "reached both by constant address and by guest pointer: the decision depends on provenance"
		case viaGuest:
			return decision.Redirect, ""
		}
		if d := s.Globals.decide(s.policy.virt(phys), pc, caller); d != decision.Unknown {
			return d, ""
		}
	}
	return decision.Invalid, fmt.Sprintf("memo says %s", ent.Decision)
}

// addressDecision replays an instruction seen both redirected and local in the aliased struct
// pages from the decisions it got at this very address (the objects at an
// address stay the guest's or the SVM's while the guest is paused).
func addressDecision(ent memo.Entry, class string, place uint64) (decision.Decision, string) {
	var got []decision.Decision
	for _, d := range []decision.Decision{decision.Local, decision.Redirect} {
		want := addressRegion(class, place, d)
		for _, r := range append([]string{ent.Region}, ent.Regions...) {
			if r == want {
				got = append(got, d)
				break
			}
		}
	}
	switch {
	case len(got) == 1:
		return got[0], ""
	case len(got) == 2:
		return decision.Invalid, "the decision depends on the pointer's provenance (memo: both at this address)"
	case ent.RegionsCapped:
		return decision.Invalid, "the decision depends on the pointer's provenance (memo: both; too many addresses to remember)"
	default:
		return decision.Invalid, "the decision depends on the pointer's provenance (memo: both; not seen at this address)"
	}
}

// region names what a physical address of the kernel image holds.
func (s *Session) region(phys uint64) string {
	if _, ok := s.policy.alias(phys); ok {
		return "struct-pages"
	}
	if svm.InSpans(s.policy.data, phys) {
		if name, _, ok := s.Globals.syms.Lookup(s.policy.virt(phys)); ok {
			return name
		}
		return "kernel-data"
	}
	return "kernel-image"
}

// disassemble renders the instruction at pc, for fall-back events.
func (s *Session) disassemble(m *svm.Machine, pc uint64) string {
	b := make([]byte, 15)
	if m.ReadVirt(pc, b) != nil {
		return "?"
	}
	in, err := x86asm.Decode(b, 64)
	if err != nil {
		return "?"
	}
	return x86asm.IntelSyntax(in, pc, nil)
}

// Work is the system calls both engines ran and the instructions executed under taint.
func (s *Session) Work() (syscalls int, tainted uint64, swapped int) {
	machines := []*svm.Machine{s.fast, s.Machine}
	for _, l := range s.lanes {
		machines = append(machines, l.fast)
	}
	for _, m := range machines {
		if m != nil {
			st := m.Stats()
			syscalls += st.Syscalls
			swapped += st.Swaps
		}
	}
	syscalls += s.closedLanes.syscalls
	swapped += s.closedLanes.swaps
	if s.Taint != nil {
		s.Taint.Drain()
		tainted = s.Taint.Stats().Instructions
	}
	return syscalls, tainted, swapped
}

// ReadKernel reads kernel virtual memory as the SVM maps it (e.g. code around a fall-back).
func (s *Session) ReadKernel(va uint64, buf []byte) error {
	m := s.fast
	if m == nil {
		m = s.Machine
	}
	return m.ReadVirt(va, buf)
}
