package svm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"hybridbridge/kaslr"
)

// A layout a KASLR boot of the setup's kernel chose (as bridge.GuestLayout found it).
var realLayout = kaslr.Layout{TextPhys: 0x9200000, TextOffset: 0x2200000,
	PageOffsetBase: 0xffff8e69c0000000, VmallocBase: 0xffffd3c440000000, VmemmapBase: 0xfffffc7700000000}

// TestLayoutRefusedBeforeBooting: a layout the SVM cannot take on fails in one line naming the
// value, before anything boots.
func TestLayoutRefusedBeforeBooting(t *testing.T) {
	if buildErr != nil {
		t.Fatalf("SVM snapshot build failed: %v", buildErr)
	}
	bad := []struct {
		change func(*kaslr.Layout)
		want   string
	}{
		{func(l *kaslr.Layout) { l.TextPhys += 1 << 20 }, "physical address 0x9300000 of _text: not a multiple of the kernel's alignment 0x200000"},
		{func(l *kaslr.Layout) { l.TextPhys = 8 << 20 }, "at or above 0x1000000"},
		{func(l *kaslr.Layout) { l.TextPhys = 1<<30 - 2<<20 }, "lies outside the guest RAM the SVM serves ([0x0, 0x40000000), guests up to 1024 MiB)"},
		{func(l *kaslr.Layout) { l.TextOffset += 1 << 20 }, "text offset +0x2300000: not a multiple"},
		{func(l *kaslr.Layout) { l.TextOffset = 1 << 30 }, "text offset +0x40000000 puts _text at 0xffffffffc1000000"},
		{func(l *kaslr.Layout) { l.TextOffset = -2 << 20 }, "text offset -0x200000 puts _text at 0xffffffff80e00000"},
		{func(l *kaslr.Layout) { l.PageOffsetBase += 2 << 20 }, "page_offset_base 0xffff8e69c0200000: not a 1 GiB aligned address"},
		{func(l *kaslr.Layout) { l.VmemmapBase = 0x7fff00000000 }, "vmemmap_base 0x7fff00000000"},
	}
	bz, err := kaslr.OpenBzImage(assets.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	plan := planLayout(1024*mib, 0, 0)
	if err := checkLayoutFits(bz, realLayout, plan); err != nil {
		t.Fatalf("a real guest's layout refused: %v", err)
	}
	for _, c := range bad {
		l := realLayout
		c.change(&l)
		err := checkLayoutFits(bz, l, plan)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("layout %s: %v; want one line with %q", l, err, c.want)
		}
	}

	// Build refuses it before booting: no guest folder appears in its run folder.
	runDir := t.TempDir()
	l := realLayout
	l.TextOffset++
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = Build(ctx, assets, BuildOptions{CacheDir: assets.CacheDir, RunDir: runDir, OutDir: filepath.Join(runDir, "snapshot"), Layout: &l})
	if err == nil || !strings.HasPrefix(err.Error(), "the SVM cannot take on the layout (") || strings.Contains(err.Error(), "\n") {
		t.Errorf("Build with layout %s: %v", l, err)
	}
	t.Logf("refused: %v", err)
	if _, err := os.Stat(filepath.Join(runDir, "guests")); !os.IsNotExist(err) {
		t.Errorf("Build started a guest before refusing the layout (%v)", err)
	}
}

func TestWithoutNokaslr(t *testing.T) {
	for in, want := range map[string]string{
		"console=ttyS0 nokaslr noxsave nokaslr": "console=ttyS0 noxsave",
		"nokaslr":                               "",
		"quiet  nokaslrx":                       "quiet nokaslrx",
	} {
		if got := withoutNokaslr(in); got != want {
			t.Errorf("withoutNokaslr(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestLayoutSnapshotDirs: each layout has its own folder, outside the nokaslr snapshot's (which
// a rebuild replaces whole).
func TestLayoutSnapshotDirs(t *testing.T) {
	base := SnapshotDir("/c", "k")
	a := LayoutSnapshotDir("/c", "k", realLayout)
	other := realLayout
	other.VmallocBase += 1 << 30
	b := LayoutSnapshotDir("/c", "k", other)
	if a == b || strings.HasPrefix(a, base+string(filepath.Separator)) || a == base {
		t.Errorf("snapshot folders: nokaslr %s, layouts %s and %s", base, a, b)
	}
	if a != LayoutSnapshotDir("/c", "k", realLayout) {
		t.Error("the same layout gets another folder")
	}
}

// TestMoveInitrd: an initrd in the decompression buffer moves below it with its bytes, and
// boot_params follows; one clear of it stays; one with no room below is an error.
func TestMoveInitrd(t *testing.T) {
	const bp, lo, hi, end = 0x1000, 0x80000, 0xc0000, 0x20000
	setup := func(rd, size uint32) []byte {
		ram := make([]byte, 0x100000)
		binary.LittleEndian.PutUint32(ram[bp+bpRamdiskImage:], rd)
		binary.LittleEndian.PutUint32(ram[bp+bpRamdiskSize:], size)
		for i := range size {
			ram[rd+i] = byte(i*7 + 1)
		}
		return ram
	}
	ram := setup(0xc0000, 0x3000)
	if from, to, err := moveInitrd(ram, bp, lo, hi, end); err != nil || from != to {
		t.Errorf("initrd above the buffer: moved %#x -> %#x, %v", from, to, err)
	}
	ram = setup(0xbf000, 0x3000)
	want := bytes.Clone(ram[0xbf000:0xc2000])
	from, to, err := moveInitrd(ram, bp, lo, hi, end)
	if err != nil || from != 0xbf000 || to != 0x7d000 {
		t.Fatalf("initrd across the buffer's end: moved %#x -> %#x, %v", from, to, err)
	}
	if !bytes.Equal(ram[to:to+0x3000], want) || binary.LittleEndian.Uint32(ram[bp+bpRamdiskImage:]) != uint32(to) {
		t.Error("moved initrd: bytes or ramdisk_image wrong")
	}
	ram = setup(0x90000, 0x70000)
	if _, _, err := moveInitrd(ram, bp, lo, hi, end); err == nil {
		t.Error("an initrd with no room below the buffer was moved")
	}
}

// TestLayoutSnapshotRelocs: a snapshot with a KASLR layout saves the kernel's relocation tables
// beside it and loads them back; a snapshot whose tables are missing or damaged is corrupt. Its
// addresses and bytes go back to the build's: LinkAddr moves the kernel map only, and LinkBytes
// gives a relocated window of the image its linked bytes.
func TestLayoutSnapshotRelocs(t *testing.T) {
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	bz, err := kaslr.OpenBzImage(assets.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	// The nokaslr snapshot's metadata and RAM, saved as if it had realLayout.
	tmp := filepath.Join(t.TempDir(), "tmp")
	must(t, os.Mkdir(tmp, 0o755))
	must(t, copySparse(snap.RAMPath(), filepath.Join(tmp, ramFile), snap.Layout.SnapshotRanges()))
	s := *snap
	l := realLayout
	s.KASLR, s.relocs = &l, &bz.Relocs
	dir := filepath.Join(t.TempDir(), "layout")
	must(t, s.save(tmp, dir))
	got, err := Load(dir, snap.KernelID)
	if err != nil {
		t.Fatal(err)
	}
	if got.relocs == nil || got.relocs.Len() != bz.Relocs.Len() {
		t.Fatalf("loaded %v relocation entries, the kernel has %d", got.relocs, bz.Relocs.Len())
	}

	text := bz.TextVA + uint64(l.TextOffset)
	for va, want := range map[uint64]uint64{
		text: bz.TextVA, text + 0x1234: bz.TextVA + 0x1234,
		0xffffffffc0001000: 0xffffffffc0001000, // the module area
		0xffff888000001000: 0xffff888000001000, // the direct map
	} {
		if a := got.LinkAddr(va); a != want || got.SVMAddr(a) != va {
			t.Errorf("LinkAddr(%#x) = %#x, SVMAddr of it %#x; want %#x", va, a, got.SVMAddr(a), want)
		}
	}
	orig := bz.Image()
	img := bytes.Clone(orig)
	must(t, bz.Relocate(img, l.TextOffset))
	const off, n = 0x10000, 0x4000
	w := bytes.Clone(img[off-8 : off+n+8])
	got.LinkBytes(text+off-8, w)
	if !bytes.Equal(w[8:8+n], orig[off:off+n]) {
		t.Error("LinkBytes did not give a relocated window the linked bytes")
	}
	if bytes.Equal(img[off:off+n], orig[off:off+n]) {
		t.Error("the window holds no relocated place: the test proves nothing")
	}

	relocs := filepath.Join(dir, relocsFile)
	data, err := os.ReadFile(relocs)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 1
	must(t, os.WriteFile(relocs, data, 0o644))
	if _, err := Load(dir, snap.KernelID); !errors.Is(err, ErrSnapshotCorrupt) || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("damaged relocs.bin: %v", err)
	}
	must(t, os.Remove(relocs))
	if _, err := Load(dir, snap.KernelID); !errors.Is(err, ErrSnapshotCorrupt) {
		t.Errorf("missing relocs.bin: %v", err)
	}
}

// TestPruneLayouts: beyond the most recently used, layout snapshots go, the oldest first; the one
// in use and builds in progress stay; a folder without metadata counts as the oldest.
func TestPruneLayouts(t *testing.T) {
	cache := t.TempDir()
	var dirs []string
	base := time.Now().Add(-time.Hour)
	for i := range 5 {
		l := realLayout
		l.VmallocBase += uint64(i) << 30
		d := LayoutSnapshotDir(cache, "k", l)
		must(t, os.MkdirAll(d, 0o755))
		if i != 2 { // 2 is an interrupted build: no metadata
			must(t, os.WriteFile(filepath.Join(d, metaFile), nil, 0o644))
			s := &Snapshot{dir: d}
			must(t, s.MarkUsed())
			at := base.Add(time.Duration(i) * time.Minute)
			must(t, os.Chtimes(filepath.Join(d, metaFile), at, at))
		}
		dirs = append(dirs, d)
	}
	building := filepath.Join(filepath.Dir(dirs[0]), ".build-123")
	must(t, os.Mkdir(building, 0o755))
	// Keep 3, dirs[0] (the oldest) in use: dirs[4] and dirs[3] stay with it.
	removed, err := PruneLayouts(cache, "k", 3, dirs[0])
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(removed)
	want := []string{dirs[1], dirs[2]}
	slices.Sort(want)
	if !slices.Equal(removed, want) {
		t.Errorf("removed %v, want %v", removed, want)
	}
	for _, d := range []string{dirs[0], dirs[3], dirs[4], building} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s: %v", d, err)
		}
	}
	if removed, err := PruneLayouts(cache, "k", 3, dirs[0]); err != nil || len(removed) != 0 {
		t.Errorf("second prune: %v, %v", removed, err)
	}
	if removed, err := PruneLayouts(cache, "other", 1, ""); err != nil || removed != nil {
		t.Errorf("a build with no layouts: %v, %v", removed, err)
	}
}
