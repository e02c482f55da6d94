package svm

import (
	"errors"
	"fmt"
	"time"
)

// ClockSource gives the RDTSCs of one kernel function a counter the caller supplies, e.g. a
// paused guest's: the timekeeper reads time only through its clocksource, so a view then tells
// the guest's time. Every other RDTSC (sched_clock, delays) keeps the SVM's own running counter.
type ClockSource struct {
	// Func names the function, as Options.Symbols does: which sites are its own depends on where
	// each function ends, which only the full symbol table tells.
	Func string
	// TSC is the counter its RDTSCs return.
	TSC func() uint64
}

// tscSite is one RDTSC or RDTSCP instruction of the kernel text.
type tscSite struct {
	addr  uint64
	size  uint64 // 2 (RDTSC) or 3 (RDTSCP)
	aux   bool   // RDTSCP: also loads ECX with TSC_AUX, 0 on the SVM's one CPU
	clock bool   // in Options.Clock's function: returns the caller's counter
	// entry marks the entry of a clock source function without an RDTSC (the HPET's, the ACPI
	// PM timer's): it returns the caller's counter at once, as if it had read its device.
	entry bool
}

// next is where execution resumes after the instruction.
func (s tscSite) next() uint64 { return s.addr + s.size }

// decodeTSC recognises the instruction at the start of insn (at least 3 bytes): its length, and
// whether it is RDTSCP; ok is false for anything else.
func decodeTSC(insn []byte) (n uint64, aux, ok bool) {
	switch {
	case insn[0] == 0x0f && insn[1] == 0x31:
		return 2, false, true
	case insn[0] == 0x0f && insn[1] == 0x01 && insn[2] == 0xf9:
		return 3, true, true
	}
	return 0, false, false
}

// tscSites decodes the RDTSC sites the snapshot lists, in the machine's memory, and marks those
// of Options.Clock's function. A site that is no RDTSC means the snapshot's RAM and its record
// disagree.
func (m *Machine) tscSites() ([]tscSite, error) {
	inClock, err := m.clockSource()
	if err != nil {
		return nil, err
	}
	sites := make([]tscSite, 0, len(m.snap.TSCSites))
	clocked := 0
	insn := make([]byte, 3)
	for _, addr := range m.snap.TSCSites {
		if err := m.virt.Read(addr, insn); err != nil {
			return nil, fmt.Errorf("RDTSC site %#x: %w", addr, err)
		}
		n, aux, ok := decodeTSC(insn)
		if !ok {
			return nil, fmt.Errorf("RDTSC site %#x holds % x: snapshot does not match its kernel text", addr, insn)
		}
		s := tscSite{addr: addr, size: n, aux: aux, clock: inClock(addr)}
		if s.clock {
			clocked++
		}
		sites = append(sites, s)
	}
	if c := m.opts.Clock; c != nil && clocked == 0 {
		// A guest whose clock is not the TSC (an HPET when its TSC was found unstable): the
		// read function is answered at its entry. It reads a device the SVM does not have.
		addr, _ := m.opts.Symbols.Addr(c.Func)
		sites = append(sites, tscSite{addr: addr, size: 1, clock: true, entry: true})
	}
	return sites, nil
}

// clockSource checks Options.Clock and returns whether an address is in its function.
func (m *Machine) clockSource() (func(addr uint64) bool, error) {
	c := m.opts.Clock
	switch {
	case c == nil:
		return func(uint64) bool { return false }, nil
	case c.TSC == nil:
		return nil, fmt.Errorf("clock source %s: no TSC", c.Func)
	case m.opts.Symbols == nil:
		return nil, errors.New("Options.Clock needs Options.Symbols")
	}
	syms := m.opts.Symbols
	if _, ok := syms.Addr(c.Func); !ok {
		return nil, fmt.Errorf("clock source %s: no such symbol in Options.Symbols", c.Func)
	}
	return func(addr uint64) bool {
		fn, _, _ := syms.Lookup(addr)
		return fn == c.Func
	}, nil
}

// svmTSC is the SVM's own counter: the snapshot's TSC plus the time since the machine opened, at
// the captured rate.
func (m *Machine) svmTSC() uint64 {
	return m.snap.TSC + uint64(time.Since(m.tscBase).Nanoseconds())*m.snap.TSCKHz/1e6
}
