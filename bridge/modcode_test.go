package bridge

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"hybridbridge/svm"
	"hybridbridge/target"
	"hybridbridge/vmm"
)

// TestCodeInImage: only executable module pages whose frames overlap the kernel image's physical
// range outside the pages the SVM kept for the guest are listed.
func TestCodeInImage(t *testing.T) {
	const kstart, kend = 0x13400000, 0x15e00000
	kept := []svm.PhysSpan{{Start: 0x14444000, End: 0x1470f000}, {Start: 0x15811000, End: 0x15830000}}
	maps := []vmm.Mapping{
		{VA: 0xffffffffc0367000, PA: 0x14444000, Size: 4096, Flags: vmm.FlagExec},                     // code in a kept page (freed init)
		{VA: 0xffffffffc0368000, PA: 0x1582f000, Size: 4096, Flags: vmm.FlagExec},                     // the last kept page of the brk
		{VA: 0xffffffffc0369000, PA: 0x15810000, Size: 4096, Flags: vmm.FlagExec},                     // the page below it: the SVM's early page tables
		{VA: 0xffffffffc0364000, PA: 0x13a51000, Size: 4096, Flags: vmm.FlagExec},                     // code in the image: kept
		{VA: 0xffffffffc0365000, PA: 0x13a52000, Size: 4096, Flags: vmm.FlagWrite},                    // data there: decided per access
		{VA: 0xffffffffc0366000, PA: 0x02000000, Size: 4096, Flags: vmm.FlagExec},                     // code in guest RAM
		{VA: 0xffffffffc0400000, PA: 0x15c00000, Size: 2 << 20, Flags: vmm.FlagExec},                  // a 2 MiB leaf reaching in
		{VA: 0xffffffffc0600000, PA: kend, Size: 4096, Flags: vmm.FlagExec | vmm.FlagWrite},           // just past _end
		{VA: 0xffffffffc0601000, PA: kstart - 4096, Size: 4096, Flags: vmm.FlagExec | vmm.FlagGlobal}, // just below _text
	}
	got := codeInImage(maps, kstart, kend, kept)
	want := []codePage{{0xffffffffc0369000, 0x15810000, 4096}, {0xffffffffc0364000, 0x13a51000, 4096}, {0xffffffffc0400000, 0x15c00000, 2 << 20}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("codeInImage = %x, want %x", got, want)
	}
}

// TestModuleCodeGuard: a call that reaches guarded module code stops before running it, with one
// line naming the address, and the machine runs the next call normally. The demo guest's module
// code lies in its RAM, so the guard is put on the page of a real module function a view runs
// (dummy0's statistics, for /proc/net/dev).
func TestModuleCodeGuard(t *testing.T) {
	ctx := need(t)
	res := mustExec(t, ctx, demo, "dummy's statistics", "grep ' dummy_get_stats64' /proc/kallsyms")
	f := strings.Fields(string(res.Stdout))
	if len(f) < 1 {
		t.Fatalf("dummy_get_stats64 not in the guest's kallsyms: %q", res.Stdout)
	}
	fn, err := strconv.ParseUint(f[0], 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	s, err := AttachMode(ctx, demo, snap, syms, ModeSlow, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	if len(s.foreignCode) != 0 {
		t.Fatalf("the demo guest has module code in its image range: %x", s.foreignCode)
	}
	s.foreignCode = []codePage{{va: fn &^ 4095, pa: 0x1234000, size: 4096}}
	if err := s.guardModuleCode(s.Machine); err != nil {
		t.Fatal(err)
	}
	_, err = s.ReadFile("/proc/net/dev")
	want := fmt.Sprintf("the guest's module code at %#x", fn)
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "cannot run in the SVM") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("reading /proc/net/dev through guarded code: %v; want one line with %q", err, want)
	}
	t.Logf("stopped: %v", err)
	if b, err := s.ReadFile("/proc/version"); err != nil || !strings.HasPrefix(string(b), "Linux version") {
		t.Errorf("the next call: %q, %v", b, err)
	}
}

// TestKeptImageIsWhatTheGuestFrees: every page of its image the guest's kernel gave to its page
// allocator (not reserved in its own /proc/kpageflags) is one the SVM kept for it, so the overlay
// shows the guest's bytes there, for code as for data. The guest's module code lying in those
// pages is counted: it runs in the SVM like any other.
func TestKeptImageIsWhatTheGuestFrees(t *testing.T) {
	ctx := need(t)
	l := snap.Layout
	first, last := l.KernelStart>>12, (l.KernelEnd+4095)>>12
	res := mustExec(t, ctx, demo, "the guest's page flags",
		fmt.Sprintf("dd if=/proc/kpageflags bs=8 skip=%d count=%d 2>/dev/null | base64 -w 0", first, last-first))
	flags, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(res.Stdout)))
	if err != nil || uint64(len(flags)) != 8*(last-first) {
		t.Fatalf("the guest's /proc/kpageflags: %d bytes, %v", len(flags), err)
	}
	const kpfReserved = 1 << 32
	freed, outside := 0, 0
	for i := uint64(0); i < last-first; i++ {
		if binary.LittleEndian.Uint64(flags[8*i:])&kpfReserved != 0 {
			continue
		}
		freed++
		if pa := (first + i) << 12; !svm.InSpans(snap.KeptImage, pa) {
			outside++
			if outside <= 5 {
				t.Errorf("the guest freed its image page at %#x, which the SVM did not keep (kept: %v)", pa, snap.KeptImage)
			}
		}
	}
	var kept uint64
	for _, s := range snap.KeptImage {
		kept += (s.End - s.Start) >> 12
	}
	if freed == 0 {
		t.Fatal("the guest freed none of its image: the test proves nothing")
	}
	tg := target.FromGuest(demo)
	p, err := locateKernel(tg.Name(), tg.Phys(), snap, syms)
	if err != nil {
		t.Fatal(err)
	}
	w, err := vmm.NewWalker(tg.Phys(), p.root, p.levels)
	if err != nil {
		t.Fatal(err)
	}
	var maps []vmm.Mapping
	inKept := 0
	if err := w.Mappings(modulesStart, modulesEnd-1, func(m vmm.Mapping) error {
		maps = append(maps, m)
		if m.Flags&vmm.FlagExec != 0 && inOneSpan(snap.KeptImage, m.PA, m.PA+m.Size) {
			inKept++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if foreign := codeInImage(maps, l.KernelStart, l.KernelEnd, snap.KeptImage); len(foreign) > 0 {
		t.Errorf("module code in image pages the SVM did not keep: %x", foreign)
	}
	t.Logf("the guest freed %d pages of its image, the SVM kept %d; %d pages of module code lie in them", freed, kept, inKept)
}
