package bridge

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"hybridbridge/vmm"
)

// TestCodeInImage: only executable module pages whose frames overlap the kernel image's physical
// range are kept.
func TestCodeInImage(t *testing.T) {
	const kstart, kend = 0x13400000, 0x15e00000
	maps := []vmm.Mapping{
		{VA: 0xffffffffc0364000, PA: 0x13a51000, Size: 4096, Flags: vmm.FlagExec},                     // code in the image: kept
		{VA: 0xffffffffc0365000, PA: 0x13a52000, Size: 4096, Flags: vmm.FlagWrite},                    // data there: decided per access
		{VA: 0xffffffffc0366000, PA: 0x02000000, Size: 4096, Flags: vmm.FlagExec},                     // code in guest RAM
		{VA: 0xffffffffc0400000, PA: 0x15c00000, Size: 2 << 20, Flags: vmm.FlagExec},                  // a 2 MiB leaf reaching in
		{VA: 0xffffffffc0600000, PA: kend, Size: 4096, Flags: vmm.FlagExec | vmm.FlagWrite},           // just past _end
		{VA: 0xffffffffc0601000, PA: kstart - 4096, Size: 4096, Flags: vmm.FlagExec | vmm.FlagGlobal}, // just below _text
	}
	got := codeInImage(maps, kstart, kend)
	want := []codePage{{0xffffffffc0364000, 0x13a51000, 4096}, {0xffffffffc0400000, 0x15c00000, 2 << 20}}
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
