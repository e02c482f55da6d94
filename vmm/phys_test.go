package vmm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"testing"
)

func TestPCRanges(t *testing.T) {
	const gib = 1 << 30
	tests := []struct {
		ram  uint64
		want []PhysRange
	}{
		{0, nil},
		{512 << 20, []PhysRange{{0, 0, 512 << 20}}},
		{3 * gib, []PhysRange{{0, 0, 3 * gib}}},
		{0xe0000000 - 1, []PhysRange{{0, 0, 0xe0000000 - 1}}},
		// From 3.5 GiB on, gigabyte_align splits at 3 GiB, not at 3.5 GiB.
		{0xe0000000, []PhysRange{{0, 0, 3 * gib}, {4 * gib, 3 * gib, gib / 2}}},
		{8 * gib, []PhysRange{{0, 0, 3 * gib}, {4 * gib, 3 * gib, 5 * gib}}},
	}
	for _, tc := range tests {
		got := PCRanges(tc.ram)
		if len(got) != len(tc.want) {
			t.Errorf("PCRanges(%#x) = %v, want %v", tc.ram, got, tc.want)
			continue
		}
		var total uint64
		for i := range got {
			total += got[i].Size
			if got[i] != tc.want[i] {
				t.Errorf("PCRanges(%#x) = %v, want %v", tc.ram, got, tc.want)
			}
		}
		if total != tc.ram {
			t.Errorf("PCRanges(%#x) covers %#x bytes", tc.ram, total)
		}
	}
}

// TestQ35Ranges: q35 keeps RAM below 2.75 GiB whole; from there on it splits at 2 GiB, as the
// Debian guest's own /proc/iomem shows for 4 GiB (System RAM up to 0x7ffdbfff, then
// 0x100000000-0x17fffffff; the top of the low part is firmware-reserved, still RAM in the file).
func TestQ35Ranges(t *testing.T) {
	const gib = 1 << 30
	tests := []struct {
		ram  uint64
		want []PhysRange
	}{
		{0, nil},
		{gib, []PhysRange{{0, 0, gib}}},
		{0xb0000000 - 1, []PhysRange{{0, 0, 0xb0000000 - 1}}},
		{0xb0000000, []PhysRange{{0, 0, 2 * gib}, {4 * gib, 2 * gib, 0xb0000000 - 2*gib}}},
		{4 * gib, []PhysRange{{0, 0, 2 * gib}, {4 * gib, 2 * gib, 2 * gib}}},
	}
	for _, tc := range tests {
		if got := Q35Ranges(tc.ram); !slices.Equal(got, tc.want) {
			t.Errorf("Q35Ranges(%#x) = %v, want %v", tc.ram, got, tc.want)
		}
	}
	if _, err := MachineRanges("microvm", gib); err == nil {
		t.Error("MachineRanges accepted an unknown machine type")
	}
	if r, err := MachineRanges("", 4*gib); err != nil || !slices.Equal(r, PCRanges(4*gib)) {
		t.Errorf("MachineRanges(\"\") = %v, %v: not pc's", r, err)
	}
}

// pattern returns n bytes that differ from page to page and within a page, so that a read from
// the wrong offset cannot pass.
func pattern(n int) []byte {
	b := make([]byte, n)
	x := uint64(0x9e3779b97f4a7c15)
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x)
	}
	return b
}

func wantFault(t *testing.T, err error, view string, addr uint64, cause error) {
	t.Helper()
	var fe *FaultError
	if !errors.As(err, &fe) {
		t.Fatalf("error %v is not a *FaultError", err)
	}
	if fe.View != view || fe.Addr != addr || (cause != nil && !errors.Is(err, cause)) {
		t.Fatalf("fault %q: want view %s, address %#x, cause %v", err, view, addr, cause)
	}
}

func TestBytesViewRanges(t *testing.T) {
	data := pattern(0x4000)
	// Guest-adjacent ranges from non-adjacent file offsets, then a hole, then a high range.
	v, err := NewBytesView("ram", data, []PhysRange{
		{GuestPhys: 0x100000, FileOffset: 0x3000, Size: 0x1000},
		{GuestPhys: 0, FileOffset: 0, Size: 0x1000},
		{GuestPhys: 0x1000, FileOffset: 0x2000, Size: 0x1000},
	})
	if err != nil {
		t.Fatal(err)
	}
	if v.Size() != 0x3000 || v.Ranges()[2].GuestPhys != 0x100000 {
		t.Fatalf("Size %#x, Ranges %v", v.Size(), v.Ranges())
	}
	buf := make([]byte, 0x20)
	if err := v.ReadPhys(0xff0, buf); err != nil {
		t.Fatal(err)
	}
	want := append(append([]byte{}, data[0xff0:0x1000]...), data[0x2000:0x2010]...)
	if !bytes.Equal(buf, want) {
		t.Errorf("read across adjacent ranges got %x, want %x", buf, want)
	}
	if err := v.ReadPhys(0x100ff0, buf[:0x10]); err != nil || !bytes.Equal(buf[:0x10], data[0x3ff0:]) {
		t.Errorf("read high range: %v", err)
	}
	wantFault(t, v.ReadPhys(0x1ff0, buf), "ram", 0x2000, ErrNotBacked)
	wantFault(t, v.ReadPhys(0x100ff0, buf), "ram", 0x101000, ErrNotBacked)
	wantFault(t, v.ReadPhys(0x50000, buf), "ram", 0x50000, ErrNotBacked)

	for _, bad := range [][]PhysRange{
		{{GuestPhys: 0, FileOffset: 0x3800, Size: 0x1000}},                                              // beyond data
		{{GuestPhys: 0, FileOffset: 0, Size: 0x2000}, {GuestPhys: 0x1000, FileOffset: 0, Size: 0x1000}}, // overlap
		{{GuestPhys: 0, FileOffset: 0, Size: 0}},                                                        // empty
		{{GuestPhys: ^uint64(0) - 0xfff, FileOffset: 0, Size: 0x1000}},                                  // wraps
	} {
		if _, err := NewBytesView("bad", data, bad); err == nil {
			t.Errorf("NewBytesView accepted %v", bad)
		}
	}
}

// writeTemp writes data to a file in a test directory.
func writeTemp(t testing.TB, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "guest-ram")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// splitRanges imitates PCRanges at a small scale: low RAM, a hole, and the rest of the file
// above the hole.
var splitRanges = []PhysRange{
	{GuestPhys: 0, FileOffset: 0, Size: 0x30000},
	{GuestPhys: 0x100000, FileOffset: 0x30000, Size: 0x10000},
}

func TestFileView(t *testing.T) {
	data := pattern(0x40000)
	path := writeTemp(t, data)
	v, err := OpenFileView(path, splitRanges)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if v.Name() != path || v.Size() != 0x40000 {
		t.Errorf("Name %q Size %#x", v.Name(), v.Size())
	}
	buf := make([]byte, 0x100)
	for _, c := range []struct{ phys, off uint64 }{{0, 0}, {0x2ff00, 0x2ff00}, {0x100000, 0x30000}, {0x10ff00, 0x3ff00}} {
		if err := v.ReadPhys(c.phys, buf); err != nil {
			t.Fatalf("ReadPhys(%#x): %v", c.phys, err)
		}
		if !bytes.Equal(buf, data[c.off:c.off+0x100]) {
			t.Errorf("ReadPhys(%#x) does not match file offset %#x", c.phys, c.off)
		}
	}
	// Reads running into the hole, in the hole, and past the end fail and say where.
	wantFault(t, v.ReadPhys(0x2ff80, buf), path, 0x30000, ErrNotBacked)
	wantFault(t, v.ReadPhys(0x80000, buf), path, 0x80000, ErrNotBacked)
	wantFault(t, v.ReadPhys(0x10ff80, buf), path, 0x110000, ErrNotBacked)

	sum := sha256.Sum256(data)
	got, err := Hash(context.Background(), v)
	if err != nil || got != hex.EncodeToString(sum[:]) {
		t.Errorf("Hash = %s, %v; want sha256 of the file %x", got, err, sum)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	wantFault(t, v.ReadPhys(0, buf), path, 0, ErrClosed)
	if err := v.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestFileViewReadOnly proves that a store into the mapping faults even when the caller's file
// is writable, and that the file is unchanged afterwards.
func TestFileViewReadOnly(t *testing.T) {
	data := pattern(0x10000)
	path := writeTemp(t, data)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewFileView(f, nil)
	f.Close() // the view must not depend on the descriptor
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	faulted := func() (faulted bool) {
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		defer func() { faulted = recover() != nil }()
		v.data[0x1234] ^= 0xff
		return false
	}()
	if !faulted {
		t.Fatal("store into the guest RAM mapping did not fault")
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, data) {
		t.Fatal("file changed")
	}
	buf := make([]byte, 16)
	if err := v.ReadPhys(0x1234, buf); err != nil || !bytes.Equal(buf, data[0x1234:0x1244]) {
		t.Errorf("read after the failed store: %v", err)
	}
}

// TestFileViewTruncated: pages that vanish under the mapping give an error, not SIGBUS.
func TestFileViewTruncated(t *testing.T) {
	path := writeTemp(t, pattern(0x10000))
	v, err := OpenFileView(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if err := os.Truncate(path, 0x1000); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 0x100)
	if err := v.ReadPhys(0, buf); err != nil {
		t.Errorf("read below the new end: %v", err)
	}
	wantFault(t, v.ReadPhys(0x8000, buf), path, 0x8000, nil)
	if _, err := Hash(context.Background(), v); err == nil {
		t.Error("Hash of a truncated mapping succeeded")
	}
}

func TestFileViewErrors(t *testing.T) {
	path := writeTemp(t, pattern(0x2000))
	if _, err := OpenFileView(path, []PhysRange{{Size: 0x3000}}); err == nil {
		t.Error("accepted a range beyond the end of the file")
	}
	if _, err := OpenFileView(filepath.Join(t.TempDir(), "missing"), nil); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if _, err := OpenFileView(t.TempDir(), nil); err == nil {
		t.Error("accepted a directory")
	}
	if _, err := OpenFileView(writeTemp(t, nil), nil); err == nil {
		t.Error("accepted an empty file")
	}
}

// physOnly hides the fast paths of a view, to test the generic code.
type physOnly struct{ PhysView }

func TestHash(t *testing.T) {
	data := pattern(3<<20 + 123)
	v, err := NewBytesView("ram", data, []PhysRange{{0, 0, 2 << 20}, {8 << 20, 2 << 20, 1<<20 + 123}})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	want := hex.EncodeToString(sum[:])
	for _, view := range []PhysView{v, physOnly{v}} {
		if got, err := Hash(context.Background(), view); err != nil || got != want {
			t.Errorf("Hash(%T) = %s, %v; want %s", view, got, err, want)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Hash(ctx, v); !errors.Is(err, context.Canceled) {
		t.Errorf("Hash with a cancelled context: %v", err)
	}
}
