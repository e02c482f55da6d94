package svm

import (
	"slices"
	"strings"
	"testing"

	"hybridbridge/vmm"
)

// TestPlanLayout: up to 2.5 GiB a guest's RAM is reserved from 0 and the SVM's own lies above it;
// beyond, the guest's RAM is where q35 puts it and the SVM's own in the gap below 3 GiB and above
// the guest's high part, with room for the overlay's page directories. The kernel image and the
// first MiB are never reserved.
func TestPlanLayout(t *testing.T) {
	const gib = 1 << 30
	kstart, kend := uint64(0x1000000), uint64(0x4430000)
	small := planLayout(gib, kstart, kend)
	if small.RAMSize != gib+512*mib || !slices.Equal(small.Guest, []PhysSpan{{0, gib}}) || small.Tables != (PhysSpan{gib, gib + tableSpace}) {
		t.Errorf("1 GiB plan: %+v", small)
	}
	if want := []PhysSpan{{mib, kstart}, {kend, gib}}; !slices.Equal(small.Reserved, want) {
		t.Errorf("1 GiB plan reserves %v, want %v", small.Reserved, want)
	}
	if small.RAMEnd() != small.RAMSize || len(small.ramGaps()) != 0 {
		t.Errorf("1 GiB plan: RAM ends at %#x, gaps %v", small.RAMEnd(), small.ramGaps())
	}

	big := planLayout(4*gib, kstart, kend)
	if want := []PhysSpan{{0, 2 * gib}, {4 * gib, 6 * gib}}; !slices.Equal(big.Guest, want) {
		t.Errorf("4 GiB plan serves %v, want %v", big.Guest, want)
	}
	if want := []PhysSpan{{mib, kstart}, {kend, 2 * gib}, {4 * gib, 6 * gib}}; !slices.Equal(big.Reserved, want) {
		t.Errorf("4 GiB plan reserves %v, want %v", big.Reserved, want)
	}
	// The SVM is a pc machine: 3 GiB below the hole, the rest from 4 GiB.
	ram := big.RAMRanges()
	if len(ram) != 2 || ram[0].End() != 3*gib || ram[1].GuestPhys != 4*gib || ram[1].End() != 6*gib+512*mib {
		t.Errorf("4 GiB plan: SVM RAM %v", ram)
	}
	if big.Tables.Start < 2*gib || big.Tables.End != 3*gib || big.Tables.End <= big.Tables.Start {
		t.Errorf("4 GiB plan: table pages %v", big.Tables)
	}
	if !strings.Contains(big.kernelArgs(), "$0x100000000") || !strings.Contains(big.kernelArgs(), "$0xbfff0000") {
		t.Errorf("4 GiB plan's arguments %q reserve neither the high part nor the table pages", big.kernelArgs())
	}
	if gaps := big.ramGaps(); !slices.Equal(gaps, []PhysSpan{{3 * gib, 4 * gib}}) {
		t.Errorf("4 GiB plan: gaps %v", gaps)
	}
	// A kernel image above 4 GiB is cut out of the high part.
	high := planLayout(4*gib, 5*gib, 5*gib+0x3430000)
	if want := []PhysSpan{{mib, 2 * gib}, {4 * gib, 5 * gib}, {5*gib + 0x3430000, 6 * gib}}; !slices.Equal(high.Reserved, want) {
		t.Errorf("image at 5 GiB: reserves %v, want %v", high.Reserved, want)
	}
}

// TestServesAndGVMMaxFor: which plan serves which guest RAM layout, as QEMU's machines lay them out.
func TestServesAndGVMMaxFor(t *testing.T) {
	const gib = 1 << 30
	for _, tc := range []struct {
		name   string
		ram    []vmm.PhysRange
		gvmMax uint64 // 0: no plan serves it
	}{
		{"pc 512 MiB", vmm.PCRanges(512 * mib), gib},
		{"pc 1.5 GiB", vmm.PCRanges(1536 * mib), 1536 * mib},
		{"pc 2.5 GiB", vmm.PCRanges(2560 * mib), 2560 * mib},
		{"q35 1 GiB", vmm.Q35Ranges(gib), gib},
		{"q35 4 GiB", vmm.Q35Ranges(4 * gib), 4 * gib},
		{"q35 8 GiB", vmm.Q35Ranges(8 * gib), 8 * gib},
		{"q35 16 GiB", vmm.Q35Ranges(16 * gib), 0},
		{"pc 3 GiB", vmm.PCRanges(3 * gib), 0},
		{"pc 4 GiB", vmm.PCRanges(4 * gib), 0},
	} {
		got, err := GVMMaxFor(tc.ram)
		switch {
		case tc.gvmMax == 0 && err == nil:
			t.Errorf("%s: served by a %d MiB plan", tc.name, got>>20)
		case tc.gvmMax != 0 && (err != nil || got != tc.gvmMax):
			t.Errorf("%s: GVMMaxFor = %d MiB, %v; want %d MiB", tc.name, got>>20, err, tc.gvmMax>>20)
		case tc.gvmMax != 0 && !planLayout(got, 16*mib, 80*mib).Serves(tc.ram):
			t.Errorf("%s: the %d MiB plan does not serve it", tc.name, got>>20)
		}
	}
	if planLayout(gib, 16*mib, 80*mib).Serves(vmm.Q35Ranges(4 * gib)) {
		t.Error("a 1 GiB plan serves a 4 GiB guest")
	}
}
