package bridge

import (
	"testing"

	"hybridbridge/vmm"
)

// TestFramelessHelpers: the bit-search helpers that listed functions call are frameless in this
// build (so the function they return to decides), a function with a frame is not, and each way of
// moving RSP disqualifies a function.
func TestFramelessHelpers(t *testing.T) {
	need(t)
	mem, err := vmm.OpenFileView(snap.RAMPath(), snap.Layout.SnapshotRanges())
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	read := func(va uint64, b []byte) error {
		return mem.ReadPhys(va-snap.Symbols["_text"]+snap.Layout.KernelStart, b)
	}
	got, err := framelessHelpers(syms, read)
	if err != nil {
		t.Fatal(err)
	}
	if !got["_find_next_bit"] {
		t.Errorf("_find_next_bit is not frameless here: %v (per-CPU loops in listed functions would read the SVM's CPU masks)", got)
	}
	show, _ := syms.Addr("show_stat")
	code := make([]byte, 64)
	if err := read(show, code); err != nil {
		t.Fatal(err)
	}
	if frameless(code) {
		t.Error("show_stat's first 64 bytes count as frameless")
	}
	for _, c := range []struct {
		name string
		code []byte
		want bool
	}{
		{"mov rax, rsi; ret; int3", []byte{0x48, 0x89, 0xf0, 0xc3, 0xcc}, true},
		{"push rbx", []byte{0x53, 0xc3}, false},
		{"sub rsp, 8", []byte{0x48, 0x83, 0xec, 0x08, 0xc3}, false},
		{"mov rax, [rsp+8]", []byte{0x48, 0x8b, 0x44, 0x24, 0x08, 0xc3}, false},
		{"call rel32", []byte{0xe8, 0, 0, 0, 0, 0xc3}, false},
		{"truncated", []byte{0x48, 0x8b}, false},
		{"lone prefix", []byte{0x48}, false},
	} {
		if frameless(c.code) != c.want {
			t.Errorf("%s: frameless = %v", c.name, !c.want)
		}
	}
}
