package emu

import (
	"encoding/binary"
	"testing"
	"time"
)

const benchTurns = 1_000_000

// benchLoop is 1 + 3*benchTurns instructions:
var benchLoop = func() []byte {
	code := []byte{
		0x48, 0xc7, 0xc1, 0, 0, 0, 0, // mov rcx, benchTurns
		0x48, 0xff, 0xc0, // inc rax
		0x48, 0xff, 0xc9, // dec rcx
		0x75, 0xf8, // jnz -8 (to inc rax)
	}
	binary.LittleEndian.PutUint32(code[3:], benchTurns)
	return code
}()

const benchInsns = 1 + 3*benchTurns

func runBench(b *testing.B, m *machine, count uint64) {
	end := m.load(0x1000, benchLoop)
	must(b, m.e.Start(0x1000, end, count)) // translate once, outside the timing
	b.ResetTimer()
	t0 := time.Now()
	for i := 0; i < b.N; i++ {
		if err := m.e.Start(0x1000, end, count); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)*benchInsns/time.Since(t0).Seconds(), "insn/s")
}

func BenchmarkLoopNoHooks(b *testing.B) {
	runBench(b, newFlat(b), 0)
}

// The cost of Unicorn's per-instruction counting hook.
func BenchmarkLoopCountLimit(b *testing.B) {
	runBench(b, newFlat(b), 1<<62)
}

func BenchmarkLoopGoCodeHook(b *testing.B) {
	m := newFlat(b)
	n := 0
	_, err := m.e.HookCode(1, 0, func(uint64, uint32) { n++ })
	must(b, err)
	runBench(b, m, 0)
}

func BenchmarkLoopBatchedTrace(b *testing.B) {
	m := newFlat(b)
	n := 0
	_, err := m.e.NewTrace(TraceConfig{
		Capacity: 1 << 14,
		Code:     true,
		OnFull:   func(evs []Event) { n += len(evs) },
	})
	must(b, err)
	runBench(b, m, 0)
}

func BenchmarkContextSaveRestore(b *testing.B) {
	m := newPaged(b)
	c, err := m.e.ContextSave()
	must(b, err)
	defer c.Free()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := m.e.ContextSaveTo(c); err != nil {
			b.Fatal(err)
		}
		if err := m.e.ContextRestore(c); err != nil {
			b.Fatal(err)
		}
	}
}
