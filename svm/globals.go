package svm

import (
	"fmt"

	"hybridbridge/emu"
)

// GlobalDecision says whose copy of a kernel global an access uses.
type GlobalDecision uint8

const (
	// GlobalLocal: the SVM's own copy (its kernel machinery: allocators, locks, caches).
	GlobalLocal GlobalDecision = iota
	// GlobalRedirect: the guest's copy (a root of guest state, e.g. init_pid_ns).
	GlobalRedirect
	// GlobalUnknown: in neither list. Executed on the SVM's copy, and always counted and reported:
	// a wrong guess here gives a plausible, wrong view.
	GlobalUnknown
)

func (d GlobalDecision) String() string {
	switch d {
	case GlobalLocal:
		return "local"
	case GlobalRedirect:
		return "redirect"
	default:
		return "unknown"
	}
}

// GlobalAccess is one access to the kernel image's data (.data, .bss, ro-after-init).
type GlobalAccess struct {
	PC    uint64 // the instruction
	Phys  uint64 // physical address (the same in the SVM and the guest)
	Virt  uint64 // kernel-image virtual address
	Size  int
	Write bool
}

// Classifier decides accesses to kernel globals (DESIGN §3.3: redirect and keep-local lists).
type Classifier func(GlobalAccess) GlobalDecision

// dataRanges are the physical ranges of the kernel image holding globals whose contents differ
// between VMs. Text and rodata are identical in both; the init sections are freed after boot and
// reused as ordinary memory, so they are left out.
func (m *Machine) dataRanges() [][2]uint64 {
	s := m.snap.Symbols
	phys := func(va uint64) uint64 { return va - s["_text"] + m.snap.Layout.KernelStart }
	return [][2]uint64{
		{phys(s["__start_ro_after_init"]), phys(s["__end_ro_after_init"])},
		{phys(s["_sdata"]), phys(s["__init_begin"])},
		{phys(s["__init_end"]), m.snap.Layout.KernelEnd},
	}
}

// hookGlobals installs the data-side trap on the kernel image's globals. A redirected read gets
// the guest's bytes swapped into place before the load and the SVM's bytes back right after it
// (UC_HOOK_MEM_READ runs before the load, UC_HOOK_MEM_READ_AFTER after). A redirected write would
// change the guest's state, which inspection never does: it stops the call.
func (m *Machine) hookGlobals() error {
	for _, r := range m.dataRanges() {
		if r[1] <= r[0] {
			return fmt.Errorf("snapshot has an empty kernel data range %#x-%#x", r[0], r[1])
		}
		if _, err := m.eng.HookMem(emu.HookMemRead|emu.HookMemWrite, r[0], r[1]-1, m.onGlobal); err != nil {
			return err
		}
		if _, err := m.eng.HookMem(emu.HookMemReadAfter, r[0], r[1]-1, m.afterGlobal); err != nil {
			return err
		}
	}
	return nil
}

// swapped is a redirected read in flight: the SVM's bytes to put back.
type swapped struct {
	phys uint64
	svm  [16]byte
	n    int
}

func (m *Machine) onGlobal(acc emu.MemAccess, phys uint64, size int, value int64) {
	pc, _ := m.eng.Reg(emu.RIP)
	a := GlobalAccess{PC: pc, Phys: phys, Virt: phys - m.snap.Layout.KernelStart + m.snap.Symbols["_text"], Size: size, Write: acc == emu.MemWrite}
	d := GlobalUnknown
	if m.opts.Globals != nil {
		d = m.opts.Globals(a)
	}
	m.stats.Globals[d]++
	if m.opts.OnGlobal != nil {
		m.opts.OnGlobal(a, d)
	}
	if d != GlobalRedirect || m.overlay == nil {
		return
	}
	if a.Write {
		m.stopWith(ErrFault, fmt.Sprintf("write of %d bytes to the guest's global at %#x: inspection must not change the guest", size, a.Virt))
		return
	}
	guest, ok := m.GuestImage(phys, size)
	if !ok || size > 16 {
		m.stopWith(ErrFault, fmt.Sprintf("redirected read of %d bytes at %#x outside the guest's image copy", size, phys))
		return
	}
	s := swapped{phys: phys, n: size}
	copy(s.svm[:], m.ram[phys:phys+uint64(size)])
	copy(m.ram[phys:], guest)
	m.swaps = append(m.swaps, s)
}

func (m *Machine) afterGlobal(_ emu.MemAccess, phys uint64, size int, _ int64) {
	for i := len(m.swaps) - 1; i >= 0; i-- {
		if s := m.swaps[i]; s.phys == phys {
			copy(m.ram[phys:], s.svm[:s.n])
			m.swaps = append(m.swaps[:i], m.swaps[i+1:]...)
			return
		}
	}
}
