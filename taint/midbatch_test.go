package taint

import (
	"fmt"
	"testing"

	"golang.org/x/arch/x86/x86asm"

	"hybridbridge/emu"
)

// A loop of GVM loads and SVM stores, a rep movsb, a 16-byte SSE copy
// and a push/pop: stopping anywhere in it must leave the shadow state a
// single-step run leaves.
var midProgram = []string{
	"48 c7 c1 05000000", // mov rcx, 5
	"48 8b 06",          // loop: mov rax, [rsi]
	"48 01 d8",          // add rax, rbx
	"48 89 07",          // mov [rdi], rax
	"48 83 c6 08",       // add rsi, 8
	"48 83 c7 08",       // add rdi, 8
	"31 db",             // xor ebx, ebx
	"48 ff c9",          // dec rcx
	"75 e8",             // jnz loop
	"b9 15000000",       // mov ecx, 21
	"f3 a4",             // rep movsb
	"f3 0f 6f 06",       // movdqu xmm0, [rsi]
	"f3 0f 7f 07",       // movdqu [rdi], xmm0
	"50",                // push rax
	"5b",                // pop rbx
}

// snapshot is the observable shadow state.
type snapshot struct {
	regs  regFile
	mem   []Label
	accs  string
	insns uint64
	rip   uint64
}

func runMid(t *testing.T, capacity int, count uint64, single bool) snapshot {
	t.Helper()
	m := newMachine(t)
	cfg := testConfig()
	cfg.Capacity = capacity
	tr := New(cfg)
	must(t, tr.Attach(m.e))
	begin, end := m.loadCode(hexCode(t, midProgram...))
	must(t, m.e.SetRegs([]emu.Reg{emu.RSI, emu.RDI}, []uint64{gvmBegin, 0x9000}))
	tr.SetRegLabel(x86asm.RSI, LabelGVM)
	tr.SetRegLabel(x86asm.RDI, LabelSVM)
	tr.SetRegLabel(x86asm.RBX, LabelUser)
	if single {
		for i := uint64(0); i < count; i++ {
			rip, err := m.e.Reg(emu.RIP)
			must(t, err)
			if rip == end {
				break
			}
			if i == 0 {
				rip = begin
			}
			must(t, m.e.Start(rip, end, 1))
			tr.Drain()
		}
	} else {
		must(t, m.e.Start(begin, end, count))
		tr.Drain()
	}
	rip, err := m.e.Reg(emu.RIP)
	must(t, err)
	var accs string
	for _, a := range tr.TakeAccesses() {
		accs += fmt.Sprintf("%#x:%v:%v:%v ", a.Phys, a.Write, a.Decision, a.Data)
	}
	st := tr.Stats()
	if st.Incomplete != 0 || len(st.Mismatched) != 0 || len(st.Unmodelled) != 0 {
		t.Errorf("stats %+v", st)
	}
	return snapshot{tr.regs, tr.MemLabels(0x9000, 0x80), accs, st.Instructions, rip}
}

func TestMidBatchStopMatchesSingleStep(t *testing.T) {
	full := runMid(t, 1<<14, 0, false)
	total := full.insns
	if total < 60 {
		t.Fatalf("program ran %d instructions", total)
	}
	ref := make([]snapshot, total+1)
	for k := uint64(1); k <= total; k++ {
		ref[k] = runMid(t, 1<<14, k, true)
	}
	for _, capacity := range []int{3, 7, 1 << 14} {
		for k := uint64(1); k <= total; k++ {
			got, want := runMid(t, capacity, k, false), ref[k]
			if got.insns != k || want.insns != k || got.rip != want.rip {
				t.Fatalf("capacity %d, count %d: processed %d vs %d instructions, rip %#x vs %#x",
					capacity, k, got.insns, want.insns, got.rip, want.rip)
			}
			if got.regs != want.regs || fmt.Sprint(got.mem) != fmt.Sprint(want.mem) || got.accs != want.accs {
				t.Fatalf("capacity %d, count %d: batch and single-step differ\nregs %v\n  vs %v\nmem %v\n vs %v\naccs %s\n  vs %s",
					capacity, k, got.regs, want.regs, got.mem, want.mem, got.accs, want.accs)
			}
		}
	}
	// The end state itself: the loop copied GVM data (the first turn
	// added rbx's user label), rep movsb and the SSE copy too.
	want := append(bvec(LabelGVM|LabelUser, 8).labels(8), bvec(LabelGVM, 0x20+21+16).labels(0x20+21+16)...)
	if fmt.Sprint(full.mem[:len(want)]) != fmt.Sprint(want) {
		t.Errorf("copied memory labels %v", full.mem)
	}
}
