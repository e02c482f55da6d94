package taint

import (
	"math/rand/v2"
	"testing"

	"hybridbridge/emu"
)

// The decoder path must accept any bytes: empty, truncated, garbage.
func TestDecodeDoesNotCrash(t *testing.T) {
	c := compiler{image: []VirtRange{{kernelVirt, kernelVirt + 2<<20}}}
	check := func(b []byte) {
		t.Helper()
		in, _ := c.compileBytes(b, kernelVirt)
		if in == nil || in.pc != kernelVirt || int(in.size) != len(b) {
			t.Fatalf("% x: compiled to %+v", b, in)
		}
	}
	check(nil)
	for _, rc := range readRuleCases(t, "testdata/rules.txt") {
		for i := 0; i <= len(rc.code); i++ {
			check(rc.code[:i])
			check(rc.code[i:])
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200000; i++ {
		b := make([]byte, 1+r.IntN(15))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		// Bias towards prefixes and escapes, where decoders go wrong.
		if r.IntN(2) == 0 {
			b[0] = []byte{0x0f, 0x66, 0xf2, 0xf3, 0x48, 0x65, 0xf0, 0xc4}[r.IntN(8)]
		}
		check(b)
	}
}

// Arbitrary event streams (wrong sizes, missing or extra accesses, pages
// crossed, garbage code) must be absorbed and counted, never crash.
func TestProcessDoesNotCrash(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	tr := New(Config{
		Image: []VirtRange{{kernelVirt, kernelVirt + 2<<20}},
		ReadCode: func(va uint64, buf []byte) error {
			for i := range buf {
				buf[i] = byte(r.Uint32())
			}
			return nil
		},
		OnAccess: func(*Access) {},
	})
	addrs := []uint64{0, 0xfff, 0xffd, 0x1000, 0x400000, ^uint64(0), ^uint64(0) - 3}
	var evs []emu.Event
	for i := 0; i < 300000; i++ {
		var ev emu.Event
		switch r.IntN(3) {
		case 0:
			ev = emu.Event{Kind: emu.EventExec, Size: uint8(r.IntN(18)), Addr: kernelVirt + uint64(r.IntN(64))}
		default:
			ev = emu.Event{Kind: emu.EventKind(3 + r.IntN(3)), Size: uint8(r.IntN(20)), Addr: addrs[r.IntN(len(addrs))] + uint64(r.IntN(16))}
		}
		evs = append(evs, ev)
		if len(evs) == 97 {
			tr.Process(evs)
			evs = evs[:0]
			if r.IntN(50) == 0 {
				tr.Current(addrs[r.IntN(len(addrs))], r.IntN(9), r.IntN(2) == 0)
			}
			if r.IntN(500) == 0 {
				tr.Reset()
			}
		}
	}
	tr.Drain()
	st := tr.Stats()
	if st.Instructions == 0 || st.Accesses == 0 || st.UndecodableAddrs == 0 {
		t.Fatalf("stream not processed: %+v", st)
	}
}

func FuzzCompile(f *testing.F) {
	for _, s := range [][]byte{nil, {0x48}, {0xf3, 0xa4}, {0x65, 0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0}, {0xf3, 0x0f, 0x1e, 0xfa}} {
		f.Add(s)
	}
	c := compiler{image: []VirtRange{{kernelVirt, kernelVirt + 2<<20}}}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 15 {
			b = b[:15]
		}
		if in, _ := c.compileBytes(b, kernelVirt); in == nil {
			t.Fatal("nil instruction")
		}
	})
}
