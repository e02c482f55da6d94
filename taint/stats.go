package taint

import (
	"time"

	"golang.org/x/arch/x86/x86asm"

	"hybridbridge/decision"
)

// numDecisions sizes the arrays indexed by decision: Unknown is the last one.
const numDecisions = decision.Unknown + 1

// counters are the Tracker's running statistics.
type counters struct {
	insns, accesses uint64
	byDecision      [numDecisions]uint64
	byReason        [NumReasons]uint64
	incomplete      uint64
	mismatched      map[x86asm.Op]uint64
	undecodable     uint64 // distinct addresses
	unmodelledInsns uint64 // distinct addresses
	batches         uint64
	busy            time.Duration
}

// Stats is a snapshot of a Tracker's statistics since New (Reset keeps
// them).
type Stats struct {
	Instructions uint64 // instructions processed
	Accesses     uint64 // memory accesses decided
	// Decisions and Reasons count accesses, indexed by Decision and Reason.
	Decisions [numDecisions]uint64
	Reasons   [NumReasons]uint64
	// Unmodelled counts executions per mnemonic of instructions without a
	// rule (handled conservatively); "(undecodable)" counts executions of
	// bytes that could not be decoded.
	Unmodelled map[string]uint64
	// UnmodelledAddrs and UndecodableAddrs count distinct addresses.
	UnmodelledAddrs, UndecodableAddrs uint64
	// Incomplete counts instructions with fewer accesses than their rule
	// expects: faulting instructions that Unicorn re-executes. Rep string
	// iterations with rCX = 0 are not counted.
	Incomplete uint64
	// Mismatched counts, per mnemonic, executions whose accesses did not
	// fit the rule (handled conservatively); non-zero means a rule is
	// wrong.
	Mismatched map[string]uint64
	Batches    uint64        // event batches processed
	Busy       time.Duration // time spent processing events
}

// InsnPerSec is the tracker's own throughput: instructions per second of
// processing time (emulation time excluded).
func (s Stats) InsnPerSec() float64 {
	if s.Busy <= 0 {
		return 0
	}
	return float64(s.Instructions) / s.Busy.Seconds()
}

// Decided returns the number of accesses with decision d.
func (s Stats) Decided(d decision.Decision) uint64 {
	if int(d) < len(s.Decisions) {
		return s.Decisions[d]
	}
	return 0
}

// Stats returns the statistics. It does not drain: call Drain first for
// figures that include the last batch.
func (t *Tracker) Stats() Stats {
	s := Stats{
		Instructions:     t.st.insns,
		Accesses:         t.st.accesses,
		Decisions:        t.st.byDecision,
		Reasons:          t.st.byReason,
		Unmodelled:       make(map[string]uint64),
		UnmodelledAddrs:  t.st.unmodelledInsns,
		UndecodableAddrs: t.st.undecodable,
		Incomplete:       t.st.incomplete,
		Mismatched:       make(map[string]uint64),
		Batches:          t.st.batches,
		Busy:             t.st.busy,
	}
	for _, in := range t.special {
		if in.execs == 0 {
			continue
		}
		name := in.op.String()
		if in.undecodable {
			name = "(undecodable)"
		}
		s.Unmodelled[name] += in.execs
	}
	for op, n := range t.st.mismatched {
		s.Mismatched[op.String()] += n
	}
	return s
}
