package taint

import (
	"errors"
	"slices"
	"testing"

	"golang.org/x/arch/x86/x86asm"

	"hybridbridge/decision"
	"hybridbridge/emu"
)

func TestLabelString(t *testing.T) {
	for l := Label(0); l < 1<<labelBits; l++ {
		got, err := ParseLabel(l.String())
		if err != nil || got != l {
			t.Errorf("%v: parsed back as %v, %v", l, got, err)
		}
	}
	for _, bad := range []string{"", "X", "S-"} {
		if _, err := ParseLabel(bad); err == nil {
			t.Errorf("ParseLabel(%q) succeeded", bad)
		}
	}
}

// Every x86asm register name resolves to the bytes it names.
func TestRegisterTable(t *testing.T) {
	for _, c := range []struct {
		r              x86asm.Reg
		idx, off, size uint8
	}{
		{x86asm.AL, 0, 0, 1}, {x86asm.AH, 0, 1, 1}, {x86asm.AX, 0, 0, 2}, {x86asm.EAX, 0, 0, 4}, {x86asm.RAX, 0, 0, 8},
		{x86asm.BH, 3, 1, 1}, {x86asm.SPB, 4, 0, 1}, {x86asm.DIB, 7, 0, 1}, {x86asm.R8B, 8, 0, 1},
		{x86asm.R15W, 15, 0, 2}, {x86asm.R12L, 12, 0, 4}, {x86asm.R15, 15, 0, 8}, {x86asm.RSP, 4, 0, 8},
	} {
		if ri := infoOf(c.r); ri != (regInfo{rcGPR, c.idx, c.off, c.size}) {
			t.Errorf("%v: %+v", c.r, ri)
		}
	}
	if ri := infoOf(x86asm.X15); ri.class != rcXMM || ri.idx != 15 || ri.size != 16 {
		t.Errorf("X15: %+v", ri)
	}
	for _, r := range []x86asm.Reg{x86asm.X16, x86asm.Y0, x86asm.F0, x86asm.M3, x86asm.K1} {
		if infoOf(r).class != rcOther {
			t.Errorf("%v should be untracked", r)
		}
	}
	for _, r := range []x86asm.Reg{x86asm.GS, x86asm.CR3, x86asm.DR7} {
		if infoOf(r).class != rcSys {
			t.Errorf("%v should be machine state", r)
		}
	}
}

func TestShadowMemory(t *testing.T) {
	s := newShadowMem([]PhysRange{{0x1000, 0x2800, LabelGVM}, {0x2000, 0x4000, LabelUser}}, LabelSVM)
	for _, c := range []struct {
		p uint64
		l Label
	}{{0xfff, LabelSVM}, {0x1000, LabelGVM}, {0x27ff, LabelGVM}, {0x2800, LabelUser}, {0x3fff, LabelUser}, {0x4000, LabelSVM}} {
		if got := Label(s.load(c.p, 0, 1)); got != c.l {
			t.Errorf("initial label at %#x: %v, want %v", c.p, got, c.l)
		}
	}
	// Uniform pages are shared until written; writes stay on their page.
	if s.get(1) != s.uniformPage(LabelGVM) || s.get(3) != s.uniformPage(LabelUser) || s.get(2).shared {
		t.Error("page sharing is wrong")
	}
	s.store(0x1ffe, 0x5000, 4, bcast(LabelGlobal))
	if got := s.load(0x1ffc, 0x5000, 8); got != bcast(LabelGVM)&mask8(2)|bcast(LabelGlobal)&^mask8(2)&mask8(6)|bcast(LabelSVM)&^mask8(6) {
		t.Errorf("crossing store/load: %#x", got)
	}
	if s.uniformPage(LabelGVM).b[0] != byte(LabelGVM) || s.uniformPage(LabelSVM).b[0] != byte(LabelSVM) {
		t.Error("a write leaked into a shared page")
	}
	s.reset()
	if got := Label(s.load(0x5000, 0, 1)); got != LabelSVM {
		t.Errorf("after reset: %v", got)
	}
}

func TestVMSTPolicy(t *testing.T) {
	globals := func(a *Access) decision.Decision {
		if a.Phys == 1 {
			return decision.Redirect
		}
		return decision.Unknown
	}
	p := VMST{Globals: globals}
	for _, c := range []struct {
		a Access
		d decision.Decision
		r Reason
	}{
		{Access{Seg: x86asm.GS, Addr: LabelGVM}, decision.Local, ReasonPerCPU},
		{Access{Base: x86asm.RSP, Addr: LabelGVM}, decision.Local, ReasonStack},
		{Access{DispGlobal: true, Addr: LabelGVM | LabelGlobal, Phys: 1}, decision.Redirect, ReasonGlobalRedirect},
		{Access{Addr: LabelGVM}, decision.Redirect, ReasonGVMPointer},
		{Access{Addr: LabelGVM | LabelSVM}, decision.Redirect, ReasonMixedPointer},
		{Access{Addr: LabelGlobal | LabelSVM}, decision.Unknown, ReasonGlobalUnknown},
		{Access{Addr: LabelSVM | LabelUser}, decision.Local, ReasonSVMPointer},
		{Access{Addr: LabelUser}, decision.Local, ReasonUserPointer},
		{Access{}, decision.Local, ReasonUnlabelled},
	} {
		if d, r := p.Decide(&c.a); d != c.d || r != c.r {
			t.Errorf("%+v: %v (%v), want %v (%v)", c.a, d, r, c.d, c.r)
		}
	}
	if d, r := (VMST{}).Decide(&Access{DispGlobal: true}); d != decision.Unknown || r != ReasonGlobalUnknown {
		t.Errorf("no classifier: %v %v", d, r)
	}
}

// Code is read through the page tables, also when an instruction
// straddles two 4 KiB pages whose frames are not adjacent.
func TestCodeAcrossRemappedPages(t *testing.T) {
	m := newMachine(t)
	tr := New(testConfig())
	must(t, tr.Attach(m.e))
	// mov rax, [rbx] (48 8b 03) at virtual 0xffffe: the last byte is on
	// the page that maps to remapPhys. Its identity twin holds 0x0b
	// (mov rcx, [rbx]), which a wrong translation would decode.
	copy(m.ram[0xffffe:], []byte{0x48, 0x8b})
	m.ram[remapPhys] = 0x03
	m.ram[remapVirt] = 0x0b
	must(t, m.e.SetReg(emu.RBX, gvmBegin))
	tr.SetRegLabel(x86asm.RBX, LabelGVM)
	must(t, m.e.Start(0xffffe, remapVirt+1, 0))
	tr.Drain()
	if got := tr.RegLabels(x86asm.RAX); !slices.Equal(got, bvec(LabelGVM, 8).labels(8)) {
		t.Errorf("rax %v, want GVM", got)
	}
	if got := tr.RegLabels(x86asm.RCX); !slices.Equal(got, bvec(LabelNone, 8).labels(8)) {
		t.Errorf("rcx %v: the wrong frame was decoded", got)
	}
}

func TestResetAndDetach(t *testing.T) {
	m := newMachine(t)
	tr := New(testConfig())
	must(t, tr.Attach(m.e))
	if err := tr.Attach(m.e); !errors.Is(err, ErrAttached) {
		t.Fatalf("second Attach: %v", err)
	}
	// mov [rdi], rax; mov rbx, rax
	begin, end := m.loadCode(hexCode(t, "48 89 07", "48 89 c3"))
	must(t, m.e.SetReg(emu.RDI, 0x9000))
	tr.SetRegLabel(x86asm.RAX, LabelGVM)
	must(t, m.e.Start(begin, end, 0))
	// Reset processes what is pending first, then forgets it.
	tr.Reset()
	st := tr.Stats()
	if st.Instructions != 2 || st.Accesses != 1 {
		t.Fatalf("Reset did not process the pending events: %+v", st)
	}
	if got := tr.MemLabels(0x9000, 1)[0]; got != LabelSVM {
		t.Errorf("memory after Reset: %v", got)
	}
	if got := tr.RegLabels(x86asm.RBX)[0]; got != LabelNone {
		t.Errorf("rbx after Reset: %v", got)
	}
	if got := tr.RegLabels(x86asm.RSP)[0]; got != LabelSVM {
		t.Errorf("rsp after Reset: %v", got)
	}
	must(t, tr.Detach())
	must(t, m.e.Start(begin, end, 0))
	tr.Drain()
	if tr.Stats().Instructions != 2 {
		t.Error("a detached tracker still saw instructions")
	}
}
