package vmm

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestSlot(t *testing.T) {
	for _, levels := range []int{4, 5} {
		t.Run(fmt.Sprintf("%d-level", levels), func(t *testing.T) {
			b := newTables(t, 2<<20, levels)
			b.mapPage(kernelText+0x3000, 0x5000, PageSize4K, PTEWrite)
			b.mapPage(kernelText+PageSize2M, 0x200000, PageSize2M, 0)
			b.mapPage(0x40000000, 0x80000000, PageSize1G, 0)
			w := b.walker(0)
			for level := 1; level <= levels; level++ {
				s, err := w.Slot(kernelText+0x3abc, level)
				if err != nil {
					t.Fatalf("Slot(level %d): %v", level, err)
				}
				span := uint64(1) << levelShift(level)
				want := Slot{VA: w.canon((kernelText + 0x3abc) &^ (span - 1)), Level: level,
					Addr: b.slot(kernelText+0x3abc, level), Entry: b.get(b.slot(kernelText+0x3abc, level))}
				if s != want {
					t.Errorf("Slot(level %d) = %+v, want %+v", level, s, want)
				}
			}
			// An empty slot in an existing table is still a slot: the place to write a new entry.
			s, err := w.Slot(kernelText+2*PageSize2M, 2)
			if err != nil || s.Entry != 0 || s.Addr != b.slot(kernelText, 2)+2*8 {
				t.Errorf("Slot(empty PDE) = %+v, %v; want the unused entry next to the 2M page", s, err)
			}
			b.set(s.Addr, 0x400000|PTEPresent|PTEPageSize)
			if pa, _, _, err := w.Translate(kernelText + 2*PageSize2M + 5); err != nil || pa != 0x400005 {
				t.Errorf("after writing the slot, Translate = %#x, %v; want 0x400005", pa, err)
			}
			if s, err := w.Slot(kernelText+0x4000, 1); err != nil || s.Entry != 0 {
				t.Errorf("Slot(empty PTE) = %+v, %v", s, err)
			}

			for _, tc := range []struct {
				name    string
				va      uint64
				level   int
				wantErr error
				errText string
			}{
				{"PTE under a 2M page", kernelText + PageSize2M, 1, ErrLargePage, "0x200000"},
				{"PDE under a 1G page", 0x40001000, 2, ErrLargePage, "0x40000000"},
				{"no page table", kernelText + 3*PageSize2M, 1, ErrNotPresent, "PDE"},
				{"no page directory", 0x80000000, 2, ErrNotPresent, "PDPTE"},
				{"non-canonical", 1 << (12 + 9*levels - 1), 2, ErrNonCanonical, ""},
			} {
				s, err := w.Slot(tc.va, tc.level)
				var fe *FaultError
				if !errors.Is(err, tc.wantErr) || !errors.As(err, &fe) || fe.Addr != tc.va || fe.View != "test-ram" {
					t.Errorf("%s: Slot(%#x, %d) = %+v, %v; want a fault at the address wrapping %v", tc.name, tc.va, tc.level, s, err, tc.wantErr)
					continue
				}
				if !strings.Contains(err.Error(), tc.errText) {
					t.Errorf("%s: error %q does not mention %q", tc.name, err, tc.errText)
				}
			}
			for _, level := range []int{0, levels + 1} {
				if _, err := w.Slot(kernelText, level); err == nil {
					t.Errorf("Slot(level %d) succeeded", level)
				}
			}
		})
	}
}

func TestSlotBadTable(t *testing.T) {
	b := newTables(t, 2<<20, 4)
	b.set(b.slot(kernelText, 3), 0x7000_0000|PTEPresent) // PD outside RAM
	w := b.walker(0)
	if _, err := w.Slot(kernelText, 2); !errors.Is(err, ErrNotBacked) {
		t.Errorf("Slot through a table outside RAM: %v, want ErrNotBacked", err)
	}
	// The PDPTE itself is readable: asking for it does not touch the table it points to.
	if s, err := w.Slot(kernelText, 3); err != nil || s.Entry != 0x7000_0000|PTEPresent {
		t.Errorf("Slot(PDPTE) = %+v, %v", s, err)
	}
}

func TestSlots(t *testing.T) {
	for _, levels := range []int{4, 5} {
		b := newTables(t, 2<<20, levels)
		b.mapPage(kernelText, 0x1000000, PageSize2M, PTEGlobal)
		b.mapPage(kernelText+2*PageSize2M+0x1000, 0x6000, PageSize4K, 0)
		b.mapPage(0x40000000, 0x80000000, PageSize1G, 0) // no PD below it
		w := b.walker(0)
		pd := b.slot(kernelText, 2)

		var got []Slot
		collect := func(s Slot) error { got = append(got, s); return nil }
		if err := w.Slots(kernelText+1, kernelText+3*PageSize2M, 2, collect); err != nil {
			t.Fatal(err)
		}
		want := []Slot{
			{VA: kernelText, Level: 2, Addr: pd, Entry: 0x1000000 | PTEGlobal | PTEPageSize | PTEPresent},
			{VA: kernelText + PageSize2M, Level: 2, Addr: pd + 8},
			{VA: kernelText + 2*PageSize2M, Level: 2, Addr: pd + 16, Entry: b.get(pd + 16)},
			{VA: kernelText + 3*PageSize2M, Level: 2, Addr: pd + 24},
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%d-level PDEs = %+v, want %+v", levels, got, want)
		}

		// The 1 GiB page and the absent PDPTEs around it have no page directory to list.
		got = nil
		if err := w.Slots(0, 0x40000000+2*PageSize1G-1, 2, collect); err != nil || len(got) != 0 {
			t.Errorf("%d-level PDEs under a 1G page = %+v, %v; want none", levels, got, err)
		}

		// The whole address space has exactly one PT, holding one entry per 4 KiB.
		got = nil
		if err := w.Slots(0, ^uint64(0), 1, collect); err != nil || len(got) != 512 || got[1].Entry != 0x6000|PTEPresent {
			t.Errorf("%d-level PTEs: %d of them, %v; want 512 with the mapped one second", levels, len(got), err)
		}

		stop := errors.New("stop")
		n := 0
		if err := w.Slots(0, ^uint64(0), levels, func(Slot) error { n++; return stop }); err != stop || n != 1 {
			t.Errorf("%d-level visitor error: got %v after %d calls, want stop after 1", levels, err, n)
		}
		if err := w.Slots(0, ^uint64(0), 0, collect); err == nil {
			t.Errorf("%d-level Slots at level 0 succeeded", levels)
		}
	}
}

func TestSlotsBadTable(t *testing.T) {
	b := newTables(t, 2<<20, 4)
	b.set(b.slot(kernelText, 3), 0x7000_0000|PTEPresent) // PD outside RAM
	err := b.walker(0).Slots(0, ^uint64(0), 1, func(Slot) error { return nil })
	var fe *FaultError
	if !errors.As(err, &fe) || fe.Op != opWalk || !errors.Is(err, ErrNotBacked) || fe.Addr != kernelText&^(PageSize1G-1) {
		t.Errorf("got %v, want a walk fault at %#x wrapping ErrNotBacked", err, uint64(kernelText&^(PageSize1G-1)))
	}
}

func TestFuncView(t *testing.T) {
	b := newTables(t, 2<<20, 5)
	b.mapPage(la57Direct, 0x30000, PageSize4K, PTEWrite)
	failing := errors.New("outside the emulator's memory")
	read := func(addr uint64, buf []byte) error {
		if addr+uint64(len(buf)) > uint64(len(b.data)) {
			return failing
		}
		copy(buf, b.data[addr:])
		return nil
	}
	w, err := NewWalker(NewFuncView("engine", read), b.root, 5)
	if err != nil {
		t.Fatal(err)
	}
	if pa, size, _, err := w.Translate(la57Direct + 0x10); err != nil || pa != 0x30010 || size != PageSize4K {
		t.Errorf("Translate = %#x, %#x, %v; want 0x30010, 4K", pa, size, err)
	}
	b.set(b.slot(la57Direct, 2), 0x7000_0000|PTEPresent)
	_, _, _, err = w.Translate(la57Direct)
	var fe *FaultError
	if !errors.Is(err, failing) || !errors.As(err, &fe) || fe.View != "engine" || !strings.Contains(err.Error(), "PTE") {
		t.Errorf("Translate through an unreadable table: %v; want an engine fault naming the PTE and wrapping read's error", err)
	}
}

func TestPagingLevels(t *testing.T) {
	if PagingLevels(0x6f0) != 4 || PagingLevels(0x6f0|CR4LA57) != 5 {
		t.Errorf("PagingLevels: %d without LA57, %d with", PagingLevels(0x6f0), PagingLevels(0x6f0|CR4LA57))
	}
}

// Tables visits every table page once with its level, does not descend through large pages or
// into tables outside the view, and fails on an unreadable root.
func TestTables(t *testing.T) {
	for _, levels := range []int{4, 5} {
		b := newTables(t, 4<<20, levels)
		b.mapPage(kernelText, 0x200000, PageSize4K, PTEWrite)
		b.mapPage(kernelText+PageSize2M, 0x200000, PageSize2M, PTEWrite)
		b.mapPage(0x40000000, 0, PageSize1G, PTEWrite)
		// A second directory entry pointing at an existing page table: one table, seen once.
		pt := b.get(b.slot(kernelText, 2)) & PTEAddrMask
		b.set(b.slot(kernelText+2*PageSize2M, 2), pt|PTEPresent|PTEWrite)
		// A directory entry pointing outside the view: not followed.
		b.set(b.slot(kernelText+3*PageSize2M, 2), 0x7ff000000|PTEPresent|PTEWrite)
		made := int((b.next - 0x1000) / 0x1000) // every table the builder allocated
		got := map[uint64]int{}
		err := b.walker(0).Tables(func(table uint64, level int) error {
			if _, dup := got[table]; dup {
				t.Errorf("%d levels: table %#x visited twice", levels, table)
			}
			got[table] = level
			return nil
		})
		if err != nil {
			t.Fatalf("%d levels: %v", levels, err)
		}
		if len(got) != made {
			t.Errorf("%d levels: visited %d tables %v, the builder made %d", levels, len(got), got, made)
		}
		if got[b.root] != levels || got[pt] != 1 {
			t.Errorf("%d levels: root at level %d, page table at level %d", levels, got[b.root], got[pt])
		}
		stop := errors.New("stop")
		if err := b.walker(0).Tables(func(uint64, int) error { return stop }); !errors.Is(err, stop) {
			t.Errorf("%d levels: the visitor's error: %v", levels, err)
		}
		b.root = 0x7ff000000
		if err := b.walker(0).Tables(func(uint64, int) error { return nil }); err == nil {
			t.Errorf("%d levels: an unreadable root walked", levels)
		}
	}
}
