package svm

import (
	"fmt"

	"hybridbridge/vmm"
)

const (
	// maxGVMMiB is the largest guest the SVM can be built to serve: the SVM's own RAM adds to
	// it, and all of it is a sparse file.
	maxGVMMiB = 8 << 10
	// contiguousGVM is the largest guest served with all of its RAM below the PCI hole (the SVM's
	// 512 MiB of its own on top must stay below it too). Larger guests are split as QEMU's q35
	// machine splits them: 2 GiB at 0, the rest at 4 GiB.
	contiguousGVM = 2560 * mib
	q35Low        = 2 << 30
	pcLow         = 3 << 30 // where the SVM's pc machine splits RAM of 3.5 GiB or more
	svmOwnRAM     = 512 * mib
	// tableSpace is the room for page-table pages the overlay adds (Layout.Tables): one page
	// directory maps 1 GiB, so 16 pages serve 16 GiB of direct map above 4 GiB, or the few
	// directories the guest's per-CPU chunks need where the SVM maps nothing.
	tableSpace = 64 << 10
)

// planLayout plans the SVM's memory for guests of up to gvmMax bytes whose kernel image lies at
// [kstart, kend):
//   - up to contiguousGVM: the guest's RAM lies in [0, gvmMax); the SVM has gvmMax + 512 MiB of
//     RAM and its own lies above gvmMax, the overlay's table pages first;
//   - above: the guest's RAM lies in [0, 2 GiB) and [4 GiB, 2 GiB + gvmMax) (q35's split). The
//     SVM, a pc machine, gets 3 GiB + (gvmMax - 2 GiB) + 512 MiB, which pc puts at [0, 3 GiB) and
//     from 4 GiB: its own memory is [2 GiB, 3 GiB) below the hole, less the overlay's table pages,
//     and the 512 MiB above the guest's.
//
// The SVM keeps the first MiB (firmware, real-mode trampoline) and its kernel image: the reserved
// ranges are the guest's spans without them. The range after the image starts at _end exactly,
// not rounded, so no page is usable by both kernels.
func planLayout(gvmMax, kstart, kend uint64) Layout {
	l := Layout{GVMMax: gvmMax, KernelStart: kstart, KernelEnd: kend}
	if gvmMax <= contiguousGVM {
		l.RAMSize = gvmMax + svmOwnRAM
		l.Guest = []PhysSpan{{0, gvmMax}}
		l.Tables = PhysSpan{gvmMax, gvmMax + tableSpace}
	} else {
		l.RAMSize = pcLow + (gvmMax - q35Low) + svmOwnRAM
		l.Guest = []PhysSpan{{0, q35Low}, {fourGiB, fourGiB + gvmMax - q35Low}}
		l.Tables = PhysSpan{pcLow - tableSpace, pcLow}
	}
	for _, g := range l.Guest {
		start := max(g.Start, 1*mib)
		for _, cut := range []PhysSpan{{kstart, kend}} {
			if cut.Start > start && cut.Start < g.End {
				l.Reserved = append(l.Reserved, PhysSpan{start, cut.Start})
			}
			if cut.End > start && cut.Start < g.End {
				start = cut.End
			}
		}
		if start < g.End {
			l.Reserved = append(l.Reserved, PhysSpan{start, g.End})
		}
	}
	return l
}

// reservedAll are the memmap= ranges: the guest's and the overlay's table pages.
func (l Layout) reservedAll() []PhysSpan {
	return append(append([]PhysSpan{}, l.Reserved...), l.Tables)
}

// RAMRanges are the SVM's RAM ranges by physical address; FileOffset is where QEMU's RAM file
// holds each (the snapshot's own file holds it at its physical address).
func (l Layout) RAMRanges() []vmm.PhysRange { return vmm.PCRanges(l.RAMSize) }

// SnapshotRanges are RAMRanges as the snapshot's RAM file holds them: at their physical addresses.
func (l Layout) SnapshotRanges() []vmm.PhysRange {
	r := l.RAMRanges()
	for i := range r {
		r[i].FileOffset = r[i].GuestPhys
	}
	return r
}

// ramGaps are the spaces between the SVM's RAM ranges (the PCI hole): no memory there.
func (l Layout) ramGaps() []PhysSpan {
	var out []PhysSpan
	r := l.RAMRanges()
	for i := 1; i < len(r); i++ {
		out = append(out, PhysSpan{r[i-1].End(), r[i].GuestPhys})
	}
	return out
}

// RAMEnd is the first physical address above the SVM's RAM: the size of the snapshot's RAM file.
func (l Layout) RAMEnd() uint64 {
	r := l.RAMRanges()
	return r[len(r)-1].End()
}

// Serves reports whether a guest whose RAM lies in ranges fits the plan: all of it in Guest.
func (l Layout) Serves(ranges []vmm.PhysRange) bool {
	for _, r := range ranges {
		fits := false
		for _, g := range l.Guest {
			fits = fits || (r.GuestPhys >= g.Start && r.End() <= g.End)
		}
		if !fits {
			return false
		}
	}
	return true
}

// GVMMaxFor is the largest guest a snapshot must be built for to serve a guest whose RAM lies
// in ranges, rounded up to whole GiB, at least 1 GiB; an error if no plan serves that layout.
func GVMMaxFor(ranges []vmm.PhysRange) (uint64, error) {
	var total uint64
	for _, r := range ranges {
		total += r.Size
	}
	gvm := max((total+(1<<30)-1)&^((1<<30)-1), 1<<30)
	if gvm > maxGVMMiB*mib {
		return 0, fmt.Errorf("the guest has %d MiB of RAM; the SVM serves at most %d GiB", total>>20, maxGVMMiB>>10)
	}
	// A contiguous guest under contiguousGVM may need less than a whole GiB more.
	if end := ranges[len(ranges)-1].End(); len(ranges) == 1 && end <= contiguousGVM {
		gvm = min(gvm, max(end, 1<<30))
	}
	if l := planLayout(gvm, 0, 0); !l.Serves(ranges) {
		return 0, fmt.Errorf("the guest's RAM %v lies where no SVM plan puts guests (below 2.5 GiB, or q35's 2 GiB at 0 and the rest at 4 GiB)", ranges)
	}
	return gvm, nil
}
