package bridge

import (
	"encoding/binary"
	"fmt"

	"hybridbridge/svm"
	"hybridbridge/vmm"
)

// vmallocSize is the size of the kernel's vmalloc area by paging levels (VMALLOC_SIZE_TB).
func vmallocSize(levels int) (uint64, error) {
	switch levels {
	case 4:
		return 32 << 40, nil
	case 5:
		return 12800 << 40, nil
	}
	return 0, fmt.Errorf("no vmalloc area size for %d-level paging", levels)
}

// percpuGrafts maps the guest's dynamically allocated per-CPU chunks in the SVM. The kernel
// creates them in its vmalloc area, top-down from VMALLOC_END, once the first chunk (in the
// direct map) is full: systemd's mounts, for one, outgrow it. The SVM leaves the top
// svm.PercpuTop of its vmalloc area to them (svm's freePercpuTop); nothing else is allocated
// there, vmalloc and ioremap being bottom-up. A guest per-CPU pointer is reached two ways:
//
//   - per_cpu_ptr with the guest's __per_cpu_offset (summing a guest counter over its CPUs)
//     reaches the guest's own address: the guest's directory entry for the top GiB is copied;
//   - this_cpu operations go through the SVM's GS base, which is the SVM's first chunk where the
//     guest's is the guest's: they reach the guest's address plus the difference of the two
//     first chunks' bases. The guest's page-directory entries are copied there too, so the SVM,
//     which runs as CPU 0, finds the guest's CPU 0 unit (e.g. mntget's count on a guest mount).
//
// Both kernels align the chunks to 2 MiB, so copying directory entries is exact.
func percpuGrafts(w *vmm.Walker, virt *vmm.VirtView, snap *svm.Snapshot, syms *vmm.Symbols) (top svm.Graft, shifted []svm.Graft, err error) {
	firstBase, ok := syms.Addr("pcpu_base_addr")
	if !ok {
		return top, nil, fmt.Errorf("no pcpu_base_addr in the kernel's symbols")
	}
	size, err := vmallocSize(w.Levels())
	if err != nil {
		return top, nil, err
	}
	base, err := virt.ReadUint64(snap.Symbols["vmalloc_base"])
	if err != nil {
		return top, nil, fmt.Errorf("guest vmalloc_base: %w", err)
	}
	from := base + size - svm.PercpuTop
	slot, err := w.Slot(from, 3)
	if err != nil {
		return top, nil, fmt.Errorf("guest per-CPU chunks at %#x: %w", from, err)
	}
	if slot.Entry&vmm.PTEPresent == 0 {
		return top, nil, nil // no chunk beyond the first
	}
	if slot.Entry&vmm.PTEPageSize != 0 {
		return top, nil, fmt.Errorf("guest per-CPU chunks at %#x: a 1 GiB page", from)
	}
	if below, err := w.Slot(from-svm.PercpuTop, 3); err != nil || below.Entry&vmm.PTEPresent != 0 {
		return top, nil, fmt.Errorf("the guest maps memory in the second GiB below the end of its vmalloc area (%#x): per-CPU chunks beyond %d MiB are not supported (%v)",
			from-svm.PercpuTop, svm.PercpuTop>>20, err)
	}
	top = svm.Graft{VA: from, Size: vmm.PageSize1G, Entry: slot.Entry}
	guestFirst, err := virt.ReadUint64(firstBase)
	if err != nil {
		return top, nil, fmt.Errorf("guest pcpu_base_addr: %w", err)
	}
	b, err := svmBytes(snap, firstBase, 8)
	if err != nil {
		return top, nil, fmt.Errorf("SVM pcpu_base_addr: %w", err)
	}
	delta := binary.LittleEndian.Uint64(b) - guestFirst
	if delta%vmm.PageSize2M != 0 {
		return top, nil, fmt.Errorf("the first per-CPU chunks are %#x apart, not a multiple of 2 MiB", delta)
	}
	err = w.Slots(from, from+svm.PercpuTop-1, 2, func(s vmm.Slot) error {
		if s.Entry&vmm.PTEPresent == 0 {
			return nil
		}
		va := s.VA + delta
		if !w.Canonical(va) || (va >= from && va < from+svm.PercpuTop) {
			return fmt.Errorf("guest per-CPU chunk %#x would be copied to %#x", s.VA, va)
		}
		shifted = append(shifted, svm.Graft{VA: va, Size: vmm.PageSize2M, Entry: s.Entry})
		return nil
	})
	if err != nil {
		return top, nil, fmt.Errorf("guest per-CPU chunks: %w", err)
	}
	return top, shifted, nil
}

// graftPercpu copies the per-CPU chunk entries into m, refusing any the SVM maps itself: there
// the guest's pointers would read the SVM's memory.
func (s *Session) graftPercpu(m *svm.Machine) error {
	if s.percpuTop.Entry == 0 {
		return nil
	}
	if err := s.checkGuestTables(m, append([]svm.Graft{s.percpuTop}, s.percpuShifted...)); err != nil {
		return err
	}
	st, err := m.Graft([]svm.Graft{s.percpuTop})
	if err != nil {
		return err
	}
	if st.Conflict != 0 {
		return fmt.Errorf("the SVM maps memory of its own at the top of its vmalloc area (%#x), where the guest's per-CPU chunks are; rebuild the SVM snapshot", s.percpuTop.VA)
	}
	if st, err = m.Graft(s.percpuShifted); err != nil {
		return err
	}
	if st.Conflict != 0 {
		return fmt.Errorf("the SVM maps memory of its own where its per-CPU accesses reach the guest's chunks (%d of %d directory entries, from %#x)",
			st.Conflict, len(s.percpuShifted), s.percpuShifted[0].VA)
	}
	s.PercpuGrafts = len(s.percpuShifted)
	return nil
}
