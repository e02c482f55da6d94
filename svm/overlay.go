package svm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"hybridbridge/vmm"
)

// Overlay places a guest's RAM into the SVM's physical address space at the guest's own physical
// addresses, over the ranges the SVM reserved for it and the pages of its image it keeps unused
// (Snapshot.KeptImage): every pointer the kernel
// follows from guest data then lands in guest memory, natively, and every pointer from SVM data in
// SVM memory. The guest's file is mapped private: the guest is never written, and Reset drops the
// SVM's writes to it like any other.
type Overlay struct {
	file   *os.File
	ranges []vmm.PhysRange // where the guest's RAM lies, and where its file holds it
	spans  []PhysSpan      // page-aligned parts of the reserved ranges inside guest RAM, as mapped
	image  []byte          // private mapping of the guest's copy of the kernel-image range
	guest  []byte          // read-only shared mapping of the guest's RAM: what Reset copies back
	// pte are the direct-map entries written into the SVM's page tables: Reset drops them with
	// every other change, so they are written again.
	pte []pteWrite
	// tables counts the pages of Layout.Tables in use as page directories.
	tables uint64
}

type pteWrite struct{ at, value uint64 }

// ErrGuestTooLarge means the guest has more RAM than the snapshot reserved for guests.
var ErrGuestTooLarge = errors.New("guest RAM larger than the SVM snapshot serves")

// AttachOverlay maps the guest RAM file f, which holds the guest's RAM as ranges says, into the
// machine. The guest must stay paused while the overlay is in use: a private mapping of a shared
// file shows the file's current contents until a page is first written.
func (m *Machine) AttachOverlay(f *os.File, ranges []vmm.PhysRange) error {
	if m.overlay != nil {
		return errors.New("a guest is already overlaid")
	}
	l := m.snap.Layout
	if !l.Serves(ranges) {
		return fmt.Errorf("%w: its RAM lies at %v, the snapshot serves %s (rebuild with: hybridbridge svm build --gvm-max ...)", ErrGuestTooLarge, ranges, spansText(l.Guest))
	}
	ov := &Overlay{file: f, ranges: ranges}
	var fileSize uint64
	for _, r := range ranges {
		fileSize = max(fileSize, r.FileOffset+r.Size)
	}
	guest, err := unix.Mmap(int(f.Fd()), 0, int(fileSize), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map guest RAM: %w", err)
	}
	ov.guest = guest
	// The kept image pages come last: the SVM's kernel maps them already (planDirectMap skips them).
	for _, r := range append(append([]PhysSpan{}, l.Reserved...), m.snap.KeptImage...) {
		for _, g := range ranges {
			start := max(r.Start+4095, g.GuestPhys) &^ 4095 // the page holding _end is the SVM's
			end := min(r.End, g.End()) &^ 4095
			if start >= end {
				continue
			}
			if _, err := unix.MmapPtr(int(f.Fd()), int64(g.FileOffset+start-g.GuestPhys), unsafe.Pointer(&m.ram[start]), uintptr(end-start),
				unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_FIXED); err != nil {
				m.restoreSVM(ov.spans)
				unix.Munmap(guest)
				return fmt.Errorf("overlay guest RAM %#x-%#x: %w", start, end, err)
			}
			ov.spans = append(ov.spans, PhysSpan{start, end})
		}
	}
	imgOff, ok := ov.fileOffset(l.KernelStart)
	if !ok {
		m.restoreSVM(ov.spans)
		unix.Munmap(guest)
		return fmt.Errorf("the kernel image's range %#x is not in the guest's RAM %v", l.KernelStart, ranges)
	}
	// Private: redirected writes (SwapInGuestForWrite) change only this copy, never the guest.
	img, err := unix.Mmap(int(f.Fd()), int64(imgOff), int((l.KernelEnd+4095)&^4095-l.KernelStart), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
	if err != nil {
		m.restoreSVM(ov.spans)
		unix.Munmap(guest)
		return fmt.Errorf("map the guest's kernel-image range: %w", err)
	}
	ov.image = img
	m.overlay = ov
	if err := m.planDirectMap(); err != nil {
		m.DetachOverlay()
		return err
	}
	return m.applyOverlay()
}

// fileOffset is where the guest's file holds physical address phys.
func (ov *Overlay) fileOffset(phys uint64) (uint64, bool) {
	for _, r := range ov.ranges {
		if phys >= r.GuestPhys && phys < r.End() {
			return r.FileOffset + phys - r.GuestPhys, true
		}
	}
	return 0, false
}

// DetachOverlay puts the SVM's own (reserved, unused) memory back and forgets the guest.
func (m *Machine) DetachOverlay() error {
	ov := m.overlay
	if ov == nil {
		return nil
	}
	m.overlay = nil
	err := m.restoreSVM(ov.spans)
	if ov.image != nil {
		err = errors.Join(err, unix.Munmap(ov.image))
	}
	err = errors.Join(err, unix.Munmap(ov.guest))
	return errors.Join(err, m.Reset())
}

// restoreSVM maps the snapshot file back over spans.
func (m *Machine) restoreSVM(spans []PhysSpan) error {
	f, err := os.Open(m.snap.RAMPath())
	if err != nil {
		return err
	}
	defer f.Close()
	var errs []error
	for _, s := range spans {
		_, err := unix.MmapPtr(int(f.Fd()), int64(s.Start), unsafe.Pointer(&m.ram[s.Start]), uintptr(s.End-s.Start),
			unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_FIXED)
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// GuestImage returns the guest's bytes at a physical address inside the kernel-image range (its
// copy of the kernel's globals), or false outside it. The slice aliases the private copy.
func (m *Machine) GuestImage(phys uint64, n int) ([]byte, bool) {
	ov := m.overlay
	if ov == nil {
		return nil, false
	}
	start := m.snap.Layout.KernelStart
	if phys < start || phys+uint64(n) > start+uint64(len(ov.image)) {
		return nil, false
	}
	return ov.image[phys-start : phys-start+uint64(n)], true
}

// directMapBits are the flags of the entries the overlay adds to the direct map, those of the
// kernel's own PAGE_KERNEL: the guest's RAM is data to the SVM's kernel, never code. Accessed and
// dirty are set up front, as Linux does, so the CPU has no reason to write the entries.
const directMapBits = vmm.PTEPresent | vmm.PTEWrite | vmm.PTEAccessed | vmm.PTEDirty | vmm.PTEGlobal | vmm.PTENoExec

// kernelTables walks the SVM's kernel page tables as they are in its RAM now, in the paging mode
// of the snapshot's CPU.
func (m *Machine) kernelTables() (*vmm.Walker, error) {
	w, err := vmm.NewWalker(m.phys, m.snap.CPU.CR3, vmm.PagingLevels(m.snap.CPU.CR4))
	if err != nil {
		return nil, fmt.Errorf("SVM page tables: %w", err)
	}
	return w, nil
}

// planDirectMap computes the direct-map entries that make the overlaid guest RAM reachable at
// page_offset_base + physical address, as the guest's kernel reaches it: the SVM's kernel does not
// map memory it was told is reserved. Entries go into page-table pages the SVM already has
// (2 MiB entries where a page directory slot is empty, 4 KiB entries in existing page tables), so
// no SVM memory is allocated; a range that would need a new table is an error.
func (m *Machine) planDirectMap() error {
	base, err := m.virt.ReadUint64(m.snap.Symbols["page_offset_base"])
	if err != nil {
		return fmt.Errorf("read page_offset_base: %w", err)
	}
	w, err := m.kernelTables()
	if err != nil {
		return err
	}
	ov := m.overlay
	ov.pte, ov.tables = ov.pte[:0], 0
	l := m.snap.Layout
	for _, s := range ov.spans {
		if s.Start >= l.KernelStart && s.End <= (l.KernelEnd+4095)&^4095 {
			continue // kept image pages: in the SVM's direct map like the rest of its image
		}
		for pa := s.Start; pa < s.End; {
			va := base + pa
			// The overlay writes into tables the SVM has, and where it has no page directory
			// (guest RAM above 4 GiB, which the SVM's kernel never mapped) into one of its own.
			pd, err := w.Slot(va, 2)
			if err != nil {
				if pd, err = m.slotFor(w, va, 2); err != nil {
					return fmt.Errorf("direct map of %#x: %w", pa, err)
				}
			}
			pde := pd.Entry
			switch {
			case pde&vmm.PTEPresent == 0 && pa&(vmm.PageSize2M-1) == 0 && pa+vmm.PageSize2M <= s.End:
				ov.pte = append(ov.pte, pteWrite{pd.Addr, pa | directMapBits | vmm.PTEPageSize})
				pa += vmm.PageSize2M
				continue
			case pde&vmm.PTEPresent != 0 && pde&vmm.PTEPageSize == 0:
				pt, err := w.Slot(va, 1)
				if err != nil {
					return fmt.Errorf("direct map of %#x: %w", pa, err)
				}
				if pt.Entry&vmm.PTEPresent != 0 && pt.Entry&vmm.PTEAddrMask != pa {
					return fmt.Errorf("direct map of %#x: the SVM maps it to %#x", pa, pt.Entry&vmm.PTEAddrMask)
				}
				ov.pte = append(ov.pte, pteWrite{pt.Addr, pa | directMapBits})
			case pde&vmm.PTEPresent != 0 && pde&vmm.PTEPageSize != 0:
				if pde&vmm.PTEAddrMask != pa&^(vmm.PageSize2M-1) {
					return fmt.Errorf("direct map of %#x: the SVM maps its 2 MiB page to %#x", pa, pde&vmm.PTEAddrMask)
				}
			default:
				return fmt.Errorf("direct map of %#x: a partial 2 MiB range with no page table in the SVM", pa)
			}
			pa += vmm.PageSize4K
		}
	}
	return nil
}

// tableBits are the flags of a page-table entry pointing to a lower table, the kernel's
// _KERNPG_TABLE.
const tableBits = vmm.PTEPresent | vmm.PTEWrite | vmm.PTEAccessed | vmm.PTEDirty

// slotFor returns va's entry at level, first giving every empty entry above it a table from the
// layout's table pages (reserved in the SVM, never used by it).
func (m *Machine) slotFor(w *vmm.Walker, va uint64, level int) (vmm.Slot, error) {
	for l := w.Levels(); l > level; l-- {
		up, err := w.Slot(va, l)
		if err != nil {
			return vmm.Slot{}, err
		}
		if up.Entry&vmm.PTEPresent == 0 {
			if err := m.addTable(up); err != nil {
				return vmm.Slot{}, fmt.Errorf("%#x: %w", va, err)
			}
			if l == w.Levels() {
				if err := m.shareRootEntry(w, up); err != nil {
					return vmm.Slot{}, fmt.Errorf("%#x: %w", va, err)
				}
			}
			continue
		}
		if up.Entry&vmm.PTEPageSize != 0 {
			return vmm.Slot{}, fmt.Errorf("the SVM maps %#x with a %#x-byte page: %w", va, uint64(1)<<(12+9*(l-1)), vmm.ErrLargePage)
		}
	}
	return w.Slot(va, level)
}

// shareRootEntry copies a root entry addTable just wrote into the SVM's tables (the agent's root,
// the snapshot's CR3) to the same slot of the kernel's own root, init_top_pgt, whose kernel half
// the kernel copies into every new root: a program's exec makes one, and without the entry the
// program's system calls would not reach what is grafted there (the guest's per-CPU chunks as the
// SVM's this_cpu operations reach them, in the hole below vmemmap).
func (m *Machine) shareRootEntry(w *vmm.Walker, up vmm.Slot) error {
	va, err := m.kernelAddr("init_top_pgt")
	if err != nil {
		return fmt.Errorf("a new page-table root entry: %w", err)
	}
	pa, _, _, err := w.Translate(va)
	if err != nil {
		return fmt.Errorf("the kernel's page-table root init_top_pgt (%#x): %w", va, err)
	}
	at := pa + up.Addr%vmm.PageSize4K
	if at == up.Addr {
		return nil // the snapshot was taken on the kernel's own root
	}
	if m.readPhys64(at)&vmm.PTEPresent != 0 {
		return fmt.Errorf("the kernel's page-table root maps %#x where the agent's does not", up.VA)
	}
	wr := pteWrite{at, m.readPhys64(up.Addr)}
	binary.LittleEndian.PutUint64(m.ram[wr.at:], wr.value)
	m.overlay.pte = append(m.overlay.pte, wr)
	return nil
}

// addTable points the empty entry up at a cleared page of the layout's table pages.
func (m *Machine) addTable(up vmm.Slot) error {
	ov, t := m.overlay, m.snap.Layout.Tables
	table := t.Start + ov.tables*vmm.PageSize4K
	if table+vmm.PageSize4K > t.End {
		return fmt.Errorf("no page table to add: the layout's %d table pages are used", (t.End-t.Start)/vmm.PageSize4K)
	}
	ov.tables++
	clear(m.ram[table : table+vmm.PageSize4K])
	w := pteWrite{up.Addr, table | tableBits}
	binary.LittleEndian.PutUint64(m.ram[w.at:], w.value)
	ov.pte = append(ov.pte, w)
	return nil
}

// Graft is a page-table entry of the guest's to copy into the SVM's tables: VA maps Size bytes
// (4 KiB, 2 MiB or 1 GiB) with the guest's raw Entry (physical address and flags), a leaf or,
// above 4 KiB, a pointer to the guest's next-level table.
type Graft struct {
	VA, Size, Entry uint64
}

// GraftStats says what Graft did.
type GraftStats struct {
	Grafted  int // entries written
	Conflict int // slots where the SVM maps something of its own, which it keeps
}

// Graft maps guest-only kernel virtual ranges (e.g. the guest's struct pages in vmemmap, its
// module area, its per-CPU chunks) in the SVM by copying the guest's entries into the SVM's
// page tables; an entry of 2 MiB or more whose directories the SVM lacks gets them from the
// layout's table pages. Where the SVM maps something itself, its entry stays and the conflict is
// counted. Like the direct map, the entries are written again after every Reset.
func (m *Machine) Graft(leaves []Graft) (GraftStats, error) {
	var st GraftStats
	ov := m.overlay
	if ov == nil {
		return st, errors.New("graft without a guest overlay")
	}
	w, err := m.kernelTables()
	if err != nil {
		return st, err
	}
	for _, g := range leaves {
		var level int
		switch g.Size {
		case vmm.PageSize4K:
			level = 1
		case vmm.PageSize2M:
			level = 2
		case vmm.PageSize1G:
			level = 3
		default:
			return st, fmt.Errorf("graft %#x: unsupported page size %#x", g.VA, g.Size)
		}
		var slot vmm.Slot
		if level == 1 {
			// A 4 KiB leaf needs a page table of the SVM's to go into.
			pd, err := w.Slot(g.VA, 2)
			if err != nil {
				return st, fmt.Errorf("graft %#x: %w", g.VA, err)
			}
			if pd.Entry&vmm.PTEPresent == 0 || pd.Entry&vmm.PTEPageSize != 0 {
				st.Conflict++
				continue
			}
			slot, err = w.Slot(g.VA, 1)
			if err != nil {
				return st, fmt.Errorf("graft %#x: %w", g.VA, err)
			}
		} else {
			slot, err = m.slotFor(w, g.VA, level)
			if errors.Is(err, vmm.ErrLargePage) {
				st.Conflict++
				continue
			}
			if err != nil {
				return st, fmt.Errorf("graft %#x: %w", g.VA, err)
			}
		}
		if slot.Entry&vmm.PTEPresent != 0 {
			st.Conflict++
			continue
		}
		ov.pte = append(ov.pte, pteWrite{slot.Addr, g.Entry})
		st.Grafted++
	}
	return st, m.applyOverlay()
}

func (m *Machine) readPhys64(pa uint64) uint64 { return binary.LittleEndian.Uint64(m.ram[pa:]) }

// applyOverlay writes the direct-map entries and makes Unicorn forget cached translations.
func (m *Machine) applyOverlay() error {
	ov := m.overlay
	if ov == nil {
		return nil
	}
	if err := unix.Madvise(ov.image, unix.MADV_DONTNEED); err != nil {
		return fmt.Errorf("reset the guest's image copy: %w", err)
	}
	for _, w := range ov.pte {
		// The entries are part of the state every operation starts from, so they are not marked
		// written: a page Reset keeps holds them still, and one it dropped gets them again here.
		if m.readPhys64(w.at) == w.value {
			continue
		}
		binary.LittleEndian.PutUint64(m.ram[w.at:], w.value)
	}
	return m.loadCPU()
}

// IsGuestRAM reports whether [phys, phys+n) lies in the overlaid guest RAM, where the machine's
// memory holds the guest's bytes.
func (m *Machine) IsGuestRAM(phys, n uint64) bool {
	if m.overlay == nil {
		return false
	}
	for _, s := range m.overlay.spans {
		if phys >= s.Start && phys+n <= s.End {
			return true
		}
	}
	return false
}
