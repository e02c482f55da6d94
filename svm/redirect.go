package svm

import (
	"errors"
	"fmt"

	"hybridbridge/emu"
)

// DataRanges are the physical ranges of the kernel image holding globals whose contents differ
// between VMs: ro-after-init, data and bss, without the pages the guest's kernel reuses
// (KeptImage). Text and rodata are identical in both.
func (s *Snapshot) DataRanges() []PhysSpan {
	sections := []PhysSpan{
		{s.imagePhys("__start_ro_after_init"), s.imagePhys("__end_ro_after_init")},
		{s.imagePhys("_sdata"), s.Layout.KernelEnd},
	}
	var out []PhysSpan
	for _, sec := range sections {
		start := sec.Start
		for _, w := range s.KeptImage {
			if w.End <= start || w.Start >= sec.End {
				continue
			}
			if w.Start > start {
				out = append(out, PhysSpan{start, w.Start})
			}
			start = max(start, w.End)
		}
		if start < sec.End {
			out = append(out, PhysSpan{start, sec.End})
		}
	}
	return out
}

func (s *Snapshot) imagePhys(sym string) uint64 {
	return s.Symbols[sym] - s.Symbols["_text"] + s.Layout.KernelStart
}

// hookSwaps installs the after-read hooks that put the SVM's bytes back after a read the taint
// engine redirected (SwapInGuest) in the kernel image's data: UC_HOOK_MEM_READ runs before the
// load, UC_HOOK_MEM_READ_AFTER after it.
func (m *Machine) hookSwaps(e *emu.Engine) error {
	// Behind a gate: most reads there need nothing undone, and a Go call for each would cost more
	// than the rest of a Fast-Bridge run.
	g, err := e.NewMemGate(m.afterSwap)
	if err != nil {
		return err
	}
	m.gate = g
	return g.HookSpans(emu.HookMemReadAfter, spans(m.snap.DataRanges()))
}

// spans are the non-empty ranges as inclusive hook bounds.
func spans(ranges []PhysSpan) [][2]uint64 {
	var out [][2]uint64
	for _, r := range ranges {
		if r.End > r.Start {
			out = append(out, [2]uint64{r.Start, r.End - 1})
		}
	}
	return out
}

// pending opens the after-read gate while a swapped-in value or a redirected write waits.
func (m *Machine) pending() {
	if m.gate != nil {
		m.gate.Set(len(m.swaps)+len(m.writes) > 0)
	}
}

// SwapInGuest makes the read about to happen at phys (from a memory hook running before it) see
// the guest's bytes: the kernel-image range holds the SVM's own data, the guest's copy is in the
// overlaid guest file. The SVM's bytes return right after the read.
func (m *Machine) SwapInGuest(phys uint64, size int) error {
	if err := m.swapIn(phys, size); err != nil {
		return err
	}
	m.stats.Swaps++
	return nil
}

func (m *Machine) swapIn(phys uint64, size int) error {
	guest, ok := m.GuestImage(phys, size)
	if !ok {
		return fmt.Errorf("redirected access of %d bytes at %#x outside the guest's image copy", size, phys)
	}
	return m.swapFrom(phys, guest)
}

// swapFrom puts guest (the guest's bytes for the location) in place at phys, remembering the SVM's.
func (m *Machine) swapFrom(phys uint64, guest []byte) error {
	if len(guest) > 16 {
		return fmt.Errorf("redirected access of %d bytes at %#x: at most 16 are handled", len(guest), phys)
	}
	s := swapped{phys: phys, n: len(guest), guest: guest}
	copy(s.svm[:], m.ram[phys:phys+uint64(len(guest))])
	m.wrote(phys, uint64(len(guest)))
	copy(m.ram[phys:], guest)
	m.swaps = append(m.swaps, s)
	m.pending()
	return nil
}

// SwapInAlias is SwapInGuest for a location whose guest bytes live elsewhere than the guest's
// image copy (e.g. the guest's struct pages, at another physical address than the SVM's own for
// the same virtual address): guest is the guest's copy of the size bytes at phys, and receives a
// redirected write.
func (m *Machine) SwapInAlias(phys uint64, guest []byte, write bool) error {
	if err := m.swapFrom(phys, guest); err != nil {
		return err
	}
	m.stats.Swaps++
	if write {
		m.writes = append(m.writes, m.swaps[len(m.swaps)-1])
		m.swaps = m.swaps[:len(m.swaps)-1]
	}
	return nil
}

// swapped is a redirected access in flight: the SVM's bytes to put back, and for a write, where
// the guest's copy of the result goes.
type swapped struct {
	phys  uint64
	svm   [16]byte
	n     int
	guest []byte
}

// SwapInGuestForWrite makes the write about to happen at phys (from a memory hook running before
// it) land on the guest's copy: the guest's bytes go in place, the write happens, and FlushWrites
// (run by the next hooked access, and when the call ends) moves the result to the guest's private
// copy and puts the SVM's bytes back. Every access to the range is hooked, so none can see the
// location in between; the guest itself is never written.
func (m *Machine) SwapInGuestForWrite(phys uint64, size int) error {
	guest, ok := m.GuestImage(phys, size)
	if !ok {
		return fmt.Errorf("redirected write of %d bytes at %#x outside the guest's image copy", size, phys)
	}
	return m.SwapInAlias(phys, guest, true)
}

// FlushWrites completes the redirected writes made since the last flush.
func (m *Machine) FlushWrites() {
	for _, w := range m.writes {
		m.wroteSlice(w.guest) // the guest's copy may be overlaid RAM (struct-page aliases)
		copy(w.guest, m.ram[w.phys:w.phys+uint64(w.n)])
		m.wrote(w.phys, uint64(w.n))
		copy(m.ram[w.phys:], w.svm[:w.n])
	}
	m.writes = m.writes[:0]
	m.pending()
}

func (m *Machine) afterSwap(_ emu.MemAccess, phys uint64, size int, _ int64) {
	m.FlushWrites()
	for i := len(m.swaps) - 1; i >= 0; i-- {
		if s := m.swaps[i]; s.phys == phys {
			m.wrote(phys, uint64(s.n))
			copy(m.ram[phys:], s.svm[:s.n])
			m.swaps = append(m.swaps[:i], m.swaps[i+1:]...)
			m.pending()
			return
		}
	}
}

// WatchAliases installs the after-read hooks that undo SwapInAlias on the given ranges. Call it
// before the first system call.
func (m *Machine) WatchAliases(ranges []PhysSpan) error {
	if m.gate == nil {
		return errors.New("WatchAliases needs UnicornOptions.Swaps")
	}
	if len(ranges) == 0 {
		return nil
	}
	return m.gate.HookSpans(emu.HookMemReadAfter, spans(ranges))
}
