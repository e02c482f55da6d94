package taint

import (
	"encoding/binary"
	"testing"
	"time"

	"golang.org/x/arch/x86/x86asm"

	"hybridbridge/emu"
)

const benchTurns = 1_000_000

// benchLoop is kernel-like straight-line work: 4 memory accesses (a GVM
// load, an SVM store, a push and a pop) in 10 instructions per turn.
var benchLoop = []string{
	"48 c7 c1 00000000", // mov rcx, benchTurns (patched)
	"48 8b 04 d6",       // loop: mov rax, [rsi+rdx*8]
	"48 01 d8",          // add rax, rbx
	"48 89 04 d7",       // mov [rdi+rdx*8], rax
	"48 ff c2",          // inc rdx
	"48 81 e2 ff010000", // and rdx, 511
	"50",                // push rax
	"5b",                // pop rbx
	"4c 8d 04 18",       // lea r8, [rax+rbx]
	"48 ff c9",          // dec rcx
	"75 e0",             // jnz loop
}

const benchInsns = 1 + 10*benchTurns

type benchMode int

const (
	benchPlain     benchMode = iota // Unicorn alone
	benchTraceOnly                  // the trace filled and drained, events ignored
	benchTaint                      // the tracker
)

func runLoopBench(b *testing.B, mode benchMode) {
	m := newMachine(b)
	var tr *Tracker
	switch mode {
	case benchTraceOnly:
		_, err := m.e.NewTrace(emu.TraceConfig{Capacity: 1 << 14, Code: true, Mem: emu.HookMemRead | emu.HookMemWrite,
			OnFull: func([]emu.Event) {}})
		must(b, err)
	case benchTaint:
		cfg := testConfig()
		cfg.Record = false
		tr = New(cfg)
		must(b, tr.Attach(m.e))
	}
	code := hexCode(b, benchLoop...)
	binary.LittleEndian.PutUint32(code[3:], benchTurns)
	begin, end := m.loadCode(code)
	run := func() {
		must(b, m.e.SetRegs([]emu.Reg{emu.RSI, emu.RDI, emu.RDX}, []uint64{gvmBegin, 0x9000, 0}))
		must(b, m.e.Start(begin, end, 0))
		if tr != nil {
			tr.Drain()
		}
	}
	if tr != nil {
		tr.SetRegLabel(x86asm.RSI, LabelGVM)
		tr.SetRegLabel(x86asm.RDI, LabelSVM)
	}
	run() // translate and decode once, outside the timing
	var busy0 time.Duration
	if tr != nil {
		busy0 = tr.Stats().Busy
	}
	b.ResetTimer()
	t0 := time.Now()
	for i := 0; i < b.N; i++ {
		run()
	}
	el := time.Since(t0)
	b.ReportMetric(float64(b.N)*benchInsns/el.Seconds(), "insn/s")
	if tr != nil {
		st := tr.Stats()
		busy := st.Busy - busy0
		b.ReportMetric(float64(b.N)*benchInsns/busy.Seconds(), "tracker-insn/s")
		b.ReportMetric(100*busy.Seconds()/el.Seconds(), "%tracker")
		if st.Incomplete != 0 || len(st.Unmodelled) != 0 || len(st.Mismatched) != 0 {
			b.Fatalf("stats %+v", st)
		}
	}
}

func BenchmarkLoopPlain(b *testing.B)     { runLoopBench(b, benchPlain) }
func BenchmarkLoopTraceOnly(b *testing.B) { runLoopBench(b, benchTraceOnly) }
func BenchmarkLoopTaint(b *testing.B)     { runLoopBench(b, benchTaint) }
