package taint

import (
	"errors"
	"fmt"

	"hybridbridge/emu"
	"hybridbridge/vmm"
)

// errNoCode: neither Config.ReadCode nor an engine to read code from.
var errNoCode = errors.New("taint: no way to read code (not attached, no Config.ReadCode)")

// readCode fills buf with the instruction bytes at virtual address va.
func (t *Tracker) readCode(va uint64, buf []byte) error {
	if t.cfg.ReadCode != nil {
		return t.cfg.ReadCode(va, buf)
	}
	if t.e == nil {
		return errNoCode
	}
	// An instruction may straddle two pages with unrelated frames.
	for len(buf) > 0 {
		n := min(len(buf), int(pageSize-va&pageMask))
		pa, err := t.translate(va)
		if err != nil {
			return err
		}
		if err := t.e.ReadPhys(pa, buf[:n]); err != nil {
			return fmt.Errorf("taint: read code at %#x (phys %#x): %w", va, pa, err)
		}
		buf, va = buf[n:], va+uint64(n)
	}
	return nil
}

// translate maps a virtual address to a physical one through the guest's
// page tables (CR3), caching per page. Kernel text mappings do not change
// while a syscall runs; FlushCode forgets the cache.
func (t *Tracker) translate(va uint64) (uint64, error) {
	vpage := va &^ pageMask
	if pa, ok := t.xlat[vpage]; ok {
		return pa | va&pageMask, nil
	}
	var cr [3]uint64
	if err := t.e.Regs([]emu.Reg{emu.CR0, emu.CR3, emu.CR4}, cr[:]); err != nil {
		return 0, fmt.Errorf("taint: read control registers: %w", err)
	}
	pa, err := walk(t.e.ReadPhys, cr[0], cr[1], cr[2], va)
	if err != nil {
		return 0, err
	}
	t.xlat[vpage] = pa &^ pageMask
	return pa, nil
}

// walk translates va through the tables at cr3 as the CPU would under cr0 and cr4: identity
// without paging, 4 or 5 levels with it. read reaches the memory the tables are in.
func walk(read func(uint64, []byte) error, cr0, cr3, cr4, va uint64) (uint64, error) {
	if cr0&vmm.CR0PG == 0 {
		return va, nil
	}
	w, err := vmm.NewWalker(vmm.NewFuncView("engine", read), cr3, vmm.PagingLevels(cr4))
	if err != nil {
		return 0, fmt.Errorf("taint: page walk for %#x: %w", va, err)
	}
	pa, _, _, err := w.Translate(va)
	if err != nil {
		return 0, fmt.Errorf("taint: page walk: %w", err)
	}
	return pa, nil
}
