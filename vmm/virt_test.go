package vmm

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestVirtViewRead(t *testing.T) {
	b := newTables(t, 4<<20, 4)
	// Two consecutive virtual pages backed by physical pages in reverse order, far apart, then
	// an unmapped page.
	const va = kernelText
	b.mapPage(va, 0x300000, PageSize4K, 0)
	b.mapPage(va+0x1000, 0x200000, PageSize4K, 0)
	copy(b.data[0x300000:], pattern(0x1000))
	copy(b.data[0x200000:], pattern(0x2000)[0x1000:])
	want := pattern(0x2000)
	v := NewVirtView("kernel", b.walker(0))

	buf := make([]byte, 0x40)
	if err := v.Read(va+0xfe0, buf); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, want[0xfe0:0x1020]) {
		t.Errorf("read across pages got %x, want %x", buf, want[0xfe0:0x1020])
	}
	all := make([]byte, 0x2000)
	if err := v.Read(va, all); err != nil || !bytes.Equal(all, want) {
		t.Errorf("read of both pages: %v", err)
	}
	x, err := v.ReadUint64(va + 0xffc)
	if wantX := uint64(want[0xffc]) | uint64(want[0xffd])<<8 | uint64(want[0xffe])<<16 | uint64(want[0xfff])<<24 |
		uint64(want[0x1000])<<32 | uint64(want[0x1001])<<40 | uint64(want[0x1002])<<48 | uint64(want[0x1003])<<56; err != nil || x != wantX {
		t.Errorf("ReadUint64 across pages = %#x, %v; want %#x", x, err, wantX)
	}

	// The fault names the view and the first unmapped byte, not the start of the read.
	err = v.Read(va+0x1ff0, buf)
	wantFault(t, err, "kernel", va+0x2000, ErrNotPresent)
	if !strings.Contains(err.Error(), "PTE") {
		t.Errorf("fault %q does not say which level was missing", err)
	}
	wantFault(t, v.Read(0x0000_7fff_ffff_fff0, buf), "kernel", 0x0000_7fff_ffff_fff0, ErrNotPresent)
	wantFault(t, v.Read(0x0000_8000_0000_0000, buf), "kernel", 0x0000_8000_0000_0000, ErrNonCanonical)
	if err := v.Read(^uint64(0)-0x10, buf); err == nil {
		t.Error("read wrapping around the address space succeeded")
	}
	if err := v.Read(0x1234, nil); err != nil {
		t.Errorf("empty read: %v", err)
	}

	// A page whose physical memory is outside RAM faults on the virtual address, wrapping the
	// physical fault.
	b.mapPage(va+0x3000, 0x7000_0000, PageSize4K, 0)
	err = v.Read(va+0x3008, buf[:8])
	wantFault(t, err, "kernel", va+0x3008, ErrNotBacked)
	if !strings.Contains(err.Error(), "0x70000008") {
		t.Errorf("fault %q does not name the physical address", err)
	}
}

func TestVirtViewHugePages(t *testing.T) {
	// 1 GiB page at physical 1 GiB: RAM there comes from a second range of a small backing.
	b := newTables(t, 2<<20, 5)
	b.mapPage(la57Direct, PageSize1G, PageSize1G, PTEWrite)
	b.mapPage(kernelText, 0, PageSize2M, 0)
	data := append(b.data, pattern(0x1000)...)
	view, err := NewBytesView("ram", data, []PhysRange{{0, 0, 2 << 20}, {PageSize1G, 2 << 20, 0x1000}})
	if err != nil {
		t.Fatal(err)
	}
	w, err := NewWalker(view, b.root, 5)
	if err != nil {
		t.Fatal(err)
	}
	v := NewVirtView("la57", w)
	buf := make([]byte, 0x100)
	if err := v.Read(la57Direct+0x80, buf); err != nil || !bytes.Equal(buf, pattern(0x1000)[0x80:0x180]) {
		t.Errorf("read through 1G page: %v", err)
	}
	wantFault(t, v.Read(la57Direct+0xf80, buf), "la57", la57Direct+0xf80, ErrNotBacked)
	wantFault(t, v.Read(kernelText+0x1fffff, buf[:2]), "la57", kernelText+0x200000, ErrNotPresent)
}

func TestReadCString(t *testing.T) {
	b := newTables(t, 2<<20, 4)
	const va = 0x10000
	b.mapPage(va, 0x100000, PageSize4K, 0)
	b.mapPage(va+0x1000, 0x180000, PageSize4K, 0)
	copy(b.data[0x100000:], "swapper/0\x00")
	copy(b.data[0x100800:], strings.Repeat("a", 600)+"\x00")
	copy(b.data[0x100ffc:0x101000], "spli") // continues on the second page
	copy(b.data[0x180000:], "t\x00")
	copy(b.data[0x180ff2:], "last-page-str\x00") // the NUL is the last mapped byte
	v := NewVirtView("kernel", b.walker(0))

	tests := []struct {
		va      uint64
		limit   int
		want    string
		wantErr error
	}{
		{va, 16, "swapper/0", nil},
		{va, 9, "swapper/0", nil},                         // exactly limit bytes
		{va, 8, "swapper/", ErrNoTerminator},              // too long: the first limit bytes
		{va + 0x800, 1000, strings.Repeat("a", 600), nil}, // longer than one internal piece
		{va + 0xffc, 16, "split", nil},                    // across the page boundary
		{va + 0x1ff2, 16, "last-page-str", nil},           // needs no byte past the mapped page
		{va + 0x1fff, 16, "", nil},                        // the NUL alone
	}
	for _, tc := range tests {
		got, err := v.ReadCString(tc.va, tc.limit)
		if got != tc.want || !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
			t.Errorf("ReadCString(%#x, %d) = %q, %v; want %q, %v", tc.va, tc.limit, got, err, tc.want, tc.wantErr)
		}
	}
	copy(b.data[0x180ff0:], "no-terminator-up")
	got, err := v.ReadCString(va+0x1ff0, 64)
	wantFault(t, err, "kernel", va+0x2000, ErrNotPresent)
	if got != "no-terminator-up" {
		t.Errorf("partial string before the fault = %q", got)
	}
	if _, err := v.ReadCString(va+0x1ff0, 15); !errors.Is(err, ErrNoTerminator) {
		t.Errorf("limit reached before the unmapped page: %v", err)
	}
}
