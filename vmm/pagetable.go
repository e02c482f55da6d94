package vmm

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Bits of x86-64 paging-structure entries (Intel SDM vol. 3, 4.5).
const (
	PTEPresent  uint64 = 1 << 0
	PTEWrite    uint64 = 1 << 1
	PTEUser     uint64 = 1 << 2
	PTEAccessed uint64 = 1 << 5
	PTEDirty    uint64 = 1 << 6
	// PTEPageSize maps a 1 GiB page in a PDPTE and a 2 MiB page in a PDE. In a PTE the same bit
	// is PAT, so it must not be read as a size there.
	PTEPageSize uint64 = 1 << 7
	PTEGlobal   uint64 = 1 << 8
	PTENoExec   uint64 = 1 << 63
	// PTEAddrMask keeps bits 12..51: the architectural maximum physical address. Bits 52..58
	// are software-available, 59..62 the protection key and 63 NX; none may leak into an
	// address.
	PTEAddrMask uint64 = 0x000f_ffff_ffff_f000
	pteKeyShift        = 59
)

// Paging-mode bits of the control registers (Intel SDM vol. 3, 2.5).
const (
	CR0PG   uint64 = 1 << 31 // paging enabled; without it addresses are physical
	CR4LA57 uint64 = 1 << 12 // 5-level paging
)

// PagingLevels returns the depth of the long-mode tables CR3 points to: 5 when cr4 sets LA57,
// else 4.
func PagingLevels(cr4 uint64) int {
	if cr4&CR4LA57 != 0 {
		return 5
	}
	return 4
}

// Page sizes.
const (
	PageSize4K uint64 = 1 << 12
	PageSize2M uint64 = 1 << 21
	PageSize1G uint64 = 1 << 30
)

// Flags are the permissions of a mapping after combining every level of the walk (the CPU
// grants write or user access only if all levels do, and forbids execution if any level sets
// NX) plus status bits of the leaf entry.
type Flags uint8

const (
	FlagWrite Flags = 1 << iota
	FlagUser
	FlagExec
	FlagGlobal
	FlagAccessed
	FlagDirty
)

// String renders flags like "rwxu-ad": write, exec, user (or s for supervisor), global,
// accessed, dirty.
func (f Flags) String() string {
	var b strings.Builder
	b.WriteByte('r')
	for _, c := range []struct {
		bit     Flags
		on, off byte
	}{{FlagWrite, 'w', '-'}, {FlagExec, 'x', '-'}, {FlagUser, 'u', 's'}, {FlagGlobal, 'g', '-'}, {FlagAccessed, 'a', '-'}, {FlagDirty, 'd', '-'}} {
		if f&c.bit != 0 {
			b.WriteByte(c.on)
		} else {
			b.WriteByte(c.off)
		}
	}
	return b.String()
}

// Mapping is one leaf of the page tables: Size bytes at virtual VA map to physical PA.
type Mapping struct {
	VA, PA, Size uint64
	Flags        Flags
	PKey         uint8  // protection key, bits 59..62 of the leaf
	Entry        uint64 // the raw leaf entry, for copying its bits elsewhere
}

// Walker walks one address space's x86-64 page tables held in guest-physical memory. It caches
// nothing: every call sees the tables as they are in memory now.
type Walker struct {
	mem    PhysView
	root   uint64
	levels int
	// entry reads one table entry; views of this package do it without allocating.
	entry func(addr uint64) (uint64, error)
}

// NewWalker returns a walker for the tables rooted at cr3 with levels 4 (48-bit addresses) or 5
// (LA57, 57-bit). Only CR3 bits 12..51 are used: the low bits hold the PCID (or PWT/PCD), bit 63
// is the no-flush hint of MOV to CR3, and bits 61..62 are LAM controls on newer CPUs.
func NewWalker(mem PhysView, cr3 uint64, levels int) (*Walker, error) {
	if levels != 4 && levels != 5 {
		return nil, fmt.Errorf("page-table walker: %d paging levels (want 4 or 5)", levels)
	}
	w := &Walker{mem: mem, root: cr3 & PTEAddrMask, levels: levels}
	if er, ok := mem.(interface{ readEntry(uint64) (uint64, error) }); ok {
		w.entry = er.readEntry
	} else {
		w.entry = func(addr uint64) (uint64, error) {
			var b [8]byte
			if err := mem.ReadPhys(addr, b[:]); err != nil {
				return 0, err
			}
			return binary.LittleEndian.Uint64(b[:]), nil
		}
	}
	return w, nil
}

// Root returns the physical address of the top-level table.
func (w *Walker) Root() uint64 { return w.root }

// Levels returns 4 or 5.
func (w *Walker) Levels() int { return w.levels }

// Mem returns the physical memory the tables and pages live in.
func (w *Walker) Mem() PhysView { return w.mem }

func (w *Walker) vaBits() uint { return 12 + 9*uint(w.levels) }

// Canonical reports whether va is sign-extended from its top implemented bit (47 or 56).
func (w *Walker) Canonical(va uint64) bool {
	s := 64 - w.vaBits()
	return uint64(int64(va<<s)>>s) == va
}

// canon sign-extends a linear index-space address back to a canonical address.
func (w *Walker) canon(lin uint64) uint64 {
	s := 64 - w.vaBits()
	return uint64(int64(lin<<s) >> s)
}

func levelShift(level int) uint { return 12 + 9*uint(level-1) }

func levelName(level int) string {
	switch level {
	case 1:
		return "PTE"
	case 2:
		return "PDE"
	case 3:
		return "PDPTE"
	case 4:
		return "PML4E"
	case 5:
		return "PML5E"
	}
	return fmt.Sprintf("level-%d entry", level)
}

// visitor is what an operation plugs into the one walk: it sees every leaf and every
// non-present entry inside the window, in address order. Returning an error stops the walk.
type visitor interface {
	leaf(m Mapping) error
	absent(va uint64, level int, entry uint64) error
	// slot sees each entry, present or not, of the walk's floor level, where the walk stops
	// descending; walks to the leaves have no floor and never call it.
	slot(s Slot) error
}

// toLeaves is the floor of a walk that goes down to the leaves.
const toLeaves = 0

// walk visits the window [first, last] of canonical addresses down to level floor (toLeaves for
// every level). Non-canonical ends are clamped to the nearest canonical half, so a window may
// span the hole.
func (w *Walker) walk(first, last uint64, floor int, v visitor) error {
	if !w.Canonical(first) {
		first = ^uint64(0) << (w.vaBits() - 1) // start of the upper half
	}
	if !w.Canonical(last) {
		last = 1<<(w.vaBits()-1) - 1 // end of the lower half
	}
	if first > last {
		return nil
	}
	// In the index space (addresses truncated to vaBits) the two canonical halves are adjacent
	// and ordered like their canonical forms, so the recursion needs no special case.
	mask := uint64(1)<<w.vaBits() - 1
	return w.walkTable(w.root, w.levels, floor, 0, first&mask, last&mask, FlagWrite|FlagUser|FlagExec, v)
}

// walkTable visits entries of the table at phys table (level 1 = PT) covering index-space
// addresses [lo, hi], both inside the span of the table that starts at base.
func (w *Walker) walkTable(table uint64, level, floor int, base, lo, hi uint64, eff Flags, v visitor) error {
	shift := levelShift(level)
	span := uint64(1) << shift
	for i := (lo >> shift) & 511; i <= (hi>>shift)&511; i++ {
		at := table + i*8
		start := base | i<<shift
		e, err := w.entry(at)
		if err != nil {
			return &walkError{va: w.canon(max(start, lo)),
				err: fmt.Errorf("reading %s at phys %#x: %w", levelName(level), at, err)}
		}
		if level == floor {
			if err := v.slot(Slot{VA: w.canon(start), Level: level, Addr: at, Entry: e}); err != nil {
				return err
			}
			continue
		}
		if e&PTEPresent == 0 {
			if err := v.absent(w.canon(max(start, lo)), level, e); err != nil {
				return err
			}
			continue
		}
		f := eff
		if e&PTEWrite == 0 {
			f &^= FlagWrite
		}
		if e&PTEUser == 0 {
			f &^= FlagUser
		}
		if e&PTENoExec != 0 {
			f &^= FlagExec
		}
		isLeaf := level == 1
		if e&PTEPageSize != 0 {
			switch level {
			case 2, 3:
				isLeaf = true
			case 4, 5:
				return &walkError{va: w.canon(max(start, lo)),
					err: fmt.Errorf("%w: PS in %s %#x at phys %#x", ErrReservedBit, levelName(level), e, at)}
			}
		}
		if isLeaf {
			if e&PTEGlobal != 0 {
				f |= FlagGlobal
			}
			if e&PTEAccessed != 0 {
				f |= FlagAccessed
			}
			if e&PTEDirty != 0 {
				f |= FlagDirty
			}
			// For 2 MiB and 1 GiB pages bit 12 is PAT, so the address keeps only the bits
			// above the page offset.
			m := Mapping{VA: w.canon(start), PA: e & PTEAddrMask &^ (span - 1), Size: span,
				Flags: f, PKey: uint8(e >> pteKeyShift & 0xf), Entry: e}
			if err := v.leaf(m); err != nil {
				return err
			}
			continue
		}
		if err := w.walkTable(e&PTEAddrMask, level-1, floor, start, max(lo, start), min(hi, start+span-1), f, v); err != nil {
			return err
		}
	}
	return nil
}

// walkError is a failure of the walk itself, kept apart from errors a visitor returns so that
// each operation can label it.
type walkError struct {
	va  uint64
	err error
}

func (e *walkError) Error() string { return e.err.Error() }
func (e *walkError) Unwrap() error { return e.err }

// walkFault labels a failure of a whole-window walk with the view and the address it reached;
// errors from the caller's visit pass through as they are.
func (w *Walker) walkFault(err error) error {
	if we, ok := err.(*walkError); ok {
		return &FaultError{View: w.mem.Name(), Op: opWalk, Addr: we.va, Err: we.err}
	}
	return err
}

// pointVisitor records where the walk for a single address ended; each operation decides
// which ending it wanted.
type pointVisitor struct {
	m       Mapping // the leaf reached, if any
	s       Slot    // the floor's entry reached, if any
	missing error   // the non-present entry reached, if any
}

func (p *pointVisitor) leaf(m Mapping) error { p.m = m; return nil }
func (p *pointVisitor) slot(s Slot) error    { p.s = s; return nil }

func (p *pointVisitor) absent(_ uint64, level int, entry uint64) error {
	p.missing = &notPresentError{level: level, entry: entry}
	return nil
}

// page returns the leaf mapping va; the error is an unwrapped cause, for callers to put their
// own name and operation on.
func (w *Walker) page(va uint64) (Mapping, error) {
	if !w.Canonical(va) {
		return Mapping{}, ErrNonCanonical
	}
	var p pointVisitor
	if err := w.walk(va, va, toLeaves, &p); err != nil {
		return Mapping{}, err
	}
	if p.m.Size == 0 {
		return Mapping{}, p.missing
	}
	return p.m, nil
}

// Translate returns the physical address of va, the size of the page mapping it and the
// page's effective flags. An unmapped va is a *FaultError wrapping ErrNotPresent.
func (w *Walker) Translate(va uint64) (pa, pageSize uint64, flags Flags, err error) {
	m, err := w.page(va)
	if err != nil {
		return 0, 0, 0, &FaultError{View: w.mem.Name(), Op: opTranslate, Addr: va, Err: err}
	}
	return m.PA + (va - m.VA), m.Size, m.Flags, nil
}

// Lookup is Translate for callers probing addresses that may well be unmapped: an unmapped va
// gives pageSize 0 and no error. Errors remain for non-canonical addresses and unreadable
// tables.
func (w *Walker) Lookup(va uint64) (pa, pageSize uint64, flags Flags, err error) {
	pa, pageSize, flags, err = w.Translate(va)
	if err != nil && isNotPresent(err) {
		return 0, 0, 0, nil
	}
	return pa, pageSize, flags, err
}

func isNotPresent(err error) bool {
	f, ok := err.(*FaultError)
	if !ok {
		return false
	}
	_, ok = f.Err.(*notPresentError)
	return ok
}

// mappingVisitor forwards leaves to a caller's function and skips holes.
type mappingVisitor func(Mapping) error

func (f mappingVisitor) leaf(m Mapping) error             { return f(m) }
func (f mappingVisitor) absent(uint64, int, uint64) error { return nil }
func (f mappingVisitor) slot(Slot) error                  { return nil }

// Mappings calls visit, in address order, for every leaf that overlaps the window [first, last]
// (inclusive, so that the window can reach the top of the address space). Leaves are reported
// whole, not clipped to the window. An error from visit stops the walk and is returned as is;
// failures of the walk itself are *FaultError.
func (w *Walker) Mappings(first, last uint64, visit func(Mapping) error) error {
	return w.walkFault(w.walk(first, last, toLeaves, mappingVisitor(visit)))
}
