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

// memLoop loads and stores once per turn: 1 + 4*benchTurns instructions, 2*benchTurns accesses.
var memLoop = func() []byte {
	code := []byte{
		0x48, 0xc7, 0xc1, 0, 0, 0, 0, // mov rcx, benchTurns
		0x48, 0x8b, 0x04, 0x25, 0x00, 0x70, 0x00, 0x00, // mov rax, [0x7000]
		0x48, 0x89, 0x04, 0x25, 0x00, 0x80, 0x00, 0x00, // mov [0x8000], rax
		0x48, 0xff, 0xc9, // dec rcx
		0x75, 0xeb, // jnz (to the load)
	}
	binary.LittleEndian.PutUint32(code[3:], benchTurns)
	return code
}()

// BenchmarkMemoryHooks is the price of memory hooks in Unicorn, per access of a loop that touches
// none of the hooked ranges: once any memory hook exists, every access takes the slow path, and
// every hook's bounds are checked. Fast-Bridge on Unicorn pays this on each of its accesses.
func BenchmarkMemoryHooks(b *testing.B) {
	for _, c := range []struct {
		name  string
		setup func(m *machine) error
	}{
		{"none", func(*machine) error { return nil }},
		{"one-read-hook-elsewhere", func(m *machine) error {
			f, err := m.e.NewMemFilter(16, func(MemAccess, uint64, int, int64) {})
			if err == nil {
				err = f.Hook(HookMemRead, 0x20000, 0x20fff)
			}
			return err
		}},
		{"20-read-hooks-elsewhere", func(m *machine) error {
			f, err := m.e.NewMemFilter(16, func(MemAccess, uint64, int, int64) {})
			for i := uint64(0); i < 20 && err == nil; i++ {
				err = f.Hook(HookMemRead, 0x20000+i*0x2000, 0x20fff+i*0x2000)
			}
			return err
		}},
		{"20-ranges-one-hook-elsewhere", func(m *machine) error {
			f, err := m.e.NewMemFilter(16, func(MemAccess, uint64, int, int64) {})
			var spans [][2]uint64
			for i := uint64(0); i < 20; i++ {
				spans = append(spans, [2]uint64{0x20000 + i*0x2000, 0x20fff + i*0x2000})
			}
			if err == nil {
				err = f.HookSpans(HookMemRead, spans)
			}
			return err
		}},
		{"write-log-over-all-RAM", func(m *machine) error {
			_, err := m.e.NewWriteLog(0, ramSize)
			return err
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			m := newFlat(b)
			must(b, c.setup(m))
			end := m.load(0x1000, memLoop)
			must(b, m.e.Start(0x1000, end, 0))
			b.ResetTimer()
			t0 := time.Now()
			for i := 0; i < b.N; i++ {
				if err := m.e.Start(0x1000, end, 0); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(time.Since(t0).Nanoseconds())/float64(b.N)/(2*benchTurns), "ns/access")
		})
	}
}
