package taint

import (
	"encoding/binary"
	"errors"
	"fmt"

	"hybridbridge/emu"
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

const (
	cr0PG   = 1 << 31
	cr4LA57 = 1 << 12
	ptePres = 1 << 0
	ptePS   = 1 << 7
	pteAddr = 0x000ffffffffff000
)

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

// walk translates va with 4- or 5-level paging (identity without paging).
func walk(read func(uint64, []byte) error, cr0, cr3, cr4, va uint64) (uint64, error) {
	if cr0&cr0PG == 0 {
		return va, nil
	}
	levels := 4
	if cr4&cr4LA57 != 0 {
		levels = 5
	}
	table := cr3 & pteAddr
	var b [8]byte
	for lvl := levels; lvl >= 1; lvl-- {
		shift := uint(12 + 9*(lvl-1))
		entryAddr := table + (va>>shift&511)*8
		if err := read(entryAddr, b[:]); err != nil {
			return 0, fmt.Errorf("taint: page walk for %#x at level %d (entry %#x): %w", va, lvl, entryAddr, err)
		}
		e := binary.LittleEndian.Uint64(b[:])
		if e&ptePres == 0 {
			return 0, fmt.Errorf("taint: page walk for %#x: not present at level %d", va, lvl)
		}
		if lvl == 1 || (lvl == 2 || lvl == 3) && e&ptePS != 0 {
			off := uint64(1)<<shift - 1
			return e&pteAddr&^off | va&off, nil
		}
		table = e & pteAddr
	}
	return 0, fmt.Errorf("taint: page walk for %#x: no leaf", va)
}
