package vmm

import (
	"errors"
	"fmt"
)

// Sentinel causes, matched with errors.Is through a *FaultError.
var (
	// ErrNotBacked: a guest-physical address lies in a hole between RAM ranges (PCI hole, beyond
	// the end of RAM). Holes are errors rather than zeros because silently reading zeros would
	// make a wrong CR3 or a corrupt entry look like valid, empty memory.
	ErrNotBacked = errors.New("address not backed by guest RAM")
	// ErrNotPresent: a paging-structure entry on the way to the address has P=0.
	ErrNotPresent = errors.New("page not present")
	// ErrNonCanonical: the virtual address is not sign-extended from bit 47 (or 56 with LA57).
	ErrNonCanonical = errors.New("non-canonical virtual address")
	// ErrReservedBit: an entry sets a bit the CPU would reject (PS in a PML4E or PML5E).
	ErrReservedBit = errors.New("reserved bit set in paging entry")
	// ErrLargePage: a table of some level was asked for, but an entry above it maps the address
	// as a 2 MiB or 1 GiB page, so that table does not exist.
	ErrLargePage = errors.New("mapped by a large page above the requested level")
	// ErrClosed: the view was closed.
	ErrClosed = errors.New("view closed")
)

// FaultError is a failed access to a view. Addr is the first byte that could not be accessed, so
// a read spanning a mapped and an unmapped page names the unmapped one.
type FaultError struct {
	View string // Name() of the view
	Op   string // "read phys", "read virt", "translate", "walk"
	Addr uint64
	Err  error
}

func (e *FaultError) Error() string {
	return fmt.Sprintf("%s: %s %#x: %v", e.View, e.Op, e.Addr, e.Err)
}

func (e *FaultError) Unwrap() error { return e.Err }

const (
	opReadPhys  = "read phys"
	opReadVirt  = "read virt"
	opTranslate = "translate"
	opWalk      = "walk"
)

// notPresentError records at which level the walk stopped, which tells a wrong CR3 (top level)
// apart from an ordinary unmapped page (PTE).
type notPresentError struct {
	level int
	entry uint64
}

func (e *notPresentError) Error() string {
	return fmt.Sprintf("%v (%s %#x)", ErrNotPresent, levelName(e.level), e.entry)
}

func (e *notPresentError) Is(target error) bool { return target == ErrNotPresent }
