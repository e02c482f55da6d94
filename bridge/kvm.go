package bridge

import (
	"errors"
	"fmt"
	"time"

	"hybridbridge/decision"
	"hybridbridge/svm"
)

// errMiss stops a KVM call at a memo miss; the session's fastRun holds the details.
var errMiss = errors.New("memo miss")

// interceptFast is hookFast on KVM: the decided ranges get no memory in the VM, so every access
// there exits and is resolved from the memo (trapFast); everything else runs natively. This is
// the Unicorn hook's semantics exactly, with KVM exits for hook calls.
func (s *Session) interceptFast(m *svm.Machine) error {
	var ranges []svm.PhysSpan
	for _, r := range s.policy.decided() {
		ranges = append(ranges, svm.PhysSpan{Start: r[0], End: r[1] + 1})
	}
	kept, err := m.Intercept(ranges, func(t *svm.Trapped) error { return s.trapFast(m, t) })
	if err != nil {
		return fmt.Errorf("Fast-Bridge on KVM: %w", err)
	}
	s.kept = kept
	return nil
}

// trapFast decides one intercepted access from the memo and carries it out, or stops the call as
// a miss.
func (s *Session) trapFast(m *svm.Machine, t *svm.Trapped) error {
	if s.run.miss != nil {
		return errMiss // an operation's clean-up after the miss: it is re-run anyway
	}
	pc, why := t.PC, ""
	if t.Write {
		pc, why = s.writer(t.PCs)
	}
	key := [2]uint64{pc, t.Phys}
	d, ok := s.replay[key]
	if !ok || why != "" {
		syscall := svm.SyscallName(m.CurrentSyscall())
		region := s.region(t.Phys)
		reason := why
		if reason == "" {
			d, reason = s.fastDecision(m, pc, t.Phys, region, syscall)
		}
		if reason != "" {
			s.stats.Misses++
			s.run.miss = &FallBack{Time: time.Now(), View: s.View, Syscall: syscall, PC: pc, MemoPC: s.snap.LinkAddr(pc),
				Symbol: s.Globals.syms.Format(pc), Disassembly: s.disassemble(m, pc), Region: region, Reason: reason}
			return errMiss
		}
		s.replay[key] = d
	} else {
		s.Memo.AddHits(s.snap.LinkAddr(pc), 1) // replayed without a lookup
	}
	s.stats.Hits++
	return s.carryOut(m, t, d)
}

// writer picks, among the instructions that may have made a write (KVM reports writes after the
// instruction), the one the memo knows. Real code has one instruction ending at an address, so at
// most one candidate is code that ran; a memo that knows two cannot tell them apart.
func (s *Session) writer(pcs []uint64) (uint64, string) {
	var known []uint64
	for _, pc := range pcs {
		if _, ok := s.Memo.Peek(s.snap.LinkAddr(pc)); ok {
			known = append(known, pc)
		}
	}
	switch {
	case len(known) == 1:
		return known[0], ""
	case len(known) > 1:
		return known[0], fmt.Sprintf("write by one of %d memoized instructions, which KVM does not tell apart", len(known))
	case len(pcs) > 0:
		return pcs[len(pcs)-1], "instruction not in the memo (a write: the longest instruction that ends where KVM stopped)"
	default:
		return 0, "a write by an instruction that cannot be decoded"
	}
}

// carryOut performs an intercepted access as decided: on the SVM's bytes, or for a redirected
// one on the guest's (its copy of the kernel image, or its struct pages in its overlaid RAM),
// counted as swap counts it.
func (s *Session) carryOut(m *svm.Machine, t *svm.Trapped, d decision.Decision) error {
	s.count(t.Phys, d)
	n := uint64(len(t.Data))
	ram := m.RAM()
	target := ram[t.Phys : t.Phys+n]
	if al, ok := s.policy.alias(t.Phys); ok {
		if d == decision.Redirect {
			g := al.guest + (t.Phys - al.svm)
			target = ram[g : g+n]
		}
	} else if d == decision.Redirect {
		var ok bool
		if target, ok = m.GuestImage(t.Phys, int(n)); !ok {
			return fmt.Errorf("redirected access of %d bytes at %#x outside the guest's image copy", n, t.Phys)
		}
	}
	if t.Write {
		copy(target, t.Data)
	} else {
		copy(t.Data, target)
	}
	return nil
}
