package vmm

import (
	"encoding/binary"
	"fmt"
)

// Slot is one paging-structure entry as a place in memory: what a caller needs to write an
// entry into existing tables, or to copy one level of them, rather than to translate.
type Slot struct {
	VA    uint64 // canonical start of the span the entry covers
	Level int    // 1 = PTE up to 5 = PML5E
	Addr  uint64 // physical address of the entry
	Entry uint64 // its raw value, present or not
}

func (w *Walker) checkLevel(level int) error {
	if level < 1 || level > w.levels {
		return fmt.Errorf("page-table walker: no level %d in %d-level paging", level, w.levels)
	}
	return nil
}

// Slot returns the entry of the given level that covers va, present or not. When no table of
// that level covers va, because an entry above is not present or maps a large page, it fails
// with a *FaultError wrapping ErrNotPresent or ErrLargePage: the caller wanted a table that
// does not exist.
func (w *Walker) Slot(va uint64, level int) (Slot, error) {
	if err := w.checkLevel(level); err != nil {
		return Slot{}, err
	}
	if !w.Canonical(va) {
		return Slot{}, &FaultError{View: w.mem.Name(), Op: opWalk, Addr: va, Err: ErrNonCanonical}
	}
	var p pointVisitor
	if err := w.walk(va, va, level, &p); err != nil {
		return Slot{}, w.walkFault(err)
	}
	if p.s.Level != 0 {
		return p.s, nil
	}
	missing := p.missing
	if p.m.Size != 0 {
		missing = fmt.Errorf("%w (%#x-byte page at %#x, entry %#x)", ErrLargePage, p.m.Size, p.m.VA, p.m.Entry)
	}
	return Slot{}, &FaultError{View: w.mem.Name(), Op: opWalk, Addr: va, Err: missing}
}

// slotsVisitor forwards the floor level's entries to a caller's function; spans with no table
// at that level have nothing to forward.
type slotsVisitor func(Slot) error

func (f slotsVisitor) slot(s Slot) error                { return f(s) }
func (f slotsVisitor) leaf(Mapping) error               { return nil }
func (f slotsVisitor) absent(uint64, int, uint64) error { return nil }

// Slots calls visit, in address order, for every entry of the given level, present or not, whose
// span overlaps the window [first, last]. Spans an entry above maps as a large page or leaves
// not present have no table at that level and are skipped. An error from visit stops the walk
// and is returned as is; failures of the walk itself are *FaultError.
func (w *Walker) Slots(first, last uint64, level int, visit func(Slot) error) error {
	if err := w.checkLevel(level); err != nil {
		return err
	}
	return w.walkFault(w.walk(first, last, level, slotsVisitor(visit)))
}

// Tables calls visit once for every page-table page reachable from the root, with its level
// (Levels() for the root, 1 for the tables of 4 KiB pages): the pages a CPU reads by itself while
// translating, which an executor must keep mapped. A table the view does not hold (an entry
// pointing outside its RAM, e.g. one grafted from another machine's tables) is not followed; an
// unreadable root is an error.
func (w *Walker) Tables(visit func(table uint64, level int) error) error {
	root := make([]byte, PageSize4K)
	if err := w.mem.ReadPhys(w.root, root); err != nil {
		return fmt.Errorf("page-table root %#x: %w", w.root, err)
	}
	seen := map[uint64]bool{}
	var walk func(table uint64, level int, page []byte) error
	walk = func(table uint64, level int, page []byte) error {
		seen[table] = true
		if err := visit(table, level); err != nil {
			return err
		}
		if level == 1 {
			return nil
		}
		for i := 0; i < len(page); i += 8 {
			e := binary.LittleEndian.Uint64(page[i:])
			// No level above the third has large pages; there the bit is reserved.
			if e&PTEPresent == 0 || (level <= 3 && e&PTEPageSize != 0) {
				continue
			}
			next := e & PTEAddrMask
			if seen[next] {
				continue
			}
			child := make([]byte, PageSize4K)
			if w.mem.ReadPhys(next, child) != nil {
				continue
			}
			if err := walk(next, level-1, child); err != nil {
				return err
			}
		}
		return nil
	}
	return walk(w.root, w.levels, root)
}
