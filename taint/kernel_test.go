package taint

import (
	"fmt"
	"slices"
	"testing"

	"golang.org/x/arch/x86/x86asm"

	"hybridbridge/decision"
	"hybridbridge/emu"
)

// A kernel-like function: it takes the current task from per-cpu data,
// follows a field, reads a redirected global (init_pid_ns-like) and
// follows the GVM pointer found there, spills to the stack, reads a
// keep-local global (names_cachep-like) and an unknown one, and copies
// the GVM value to a user buffer (copy_to_user-like).
var kernelFunc = []string{
	"55",                      // push rbp
	"48 89 e5",                // mov rbp, rsp
	"53",                      // push rbx
	"65 48 8b 04 25 10000000", // mov rax, gs:[0x10]          current task
	"48 8b 58 20",             // mov rbx, [rax+0x20]           task field
	"48 8b 0d e7ff0f00",       // mov rcx, [rip+0xfffe7]        global at dataVirt: redirected
	"48 8b 51 08",             // mov rdx, [rcx+0x8]            follow the GVM pointer
	"48 89 55 f0",             // mov [rbp-0x10], rdx           spill
	"48 8b 35 d80f1000",       // mov rsi, [rip+0x100fd8]       global at dataVirt+0x1000: keep local
	"4c 8b 05 d11f1000",       // mov r8, [rip+0x101fd1]        global at dataVirt+0x2000: unknown
	"48 8b 45 f0",             // mov rax, [rbp-0x10]           reload the spill
	"48 89 07",                // mov [rdi], rax                to the user buffer
	"5b",                      // pop rbx
	"5d",                      // pop rbp
}

const (
	taskPhys = 0xa000   // the current task (SVM memory)
	userPhys = 0xb000   // the inspecting process's buffer
	pidNS    = 0x400100 // what the GVM's global points to
)

func TestKernelLikeFunction(t *testing.T) {
	m := newMachine(t)
	cfg := testConfig()
	cfg.Memory = append(cfg.Memory, PhysRange{userPhys, userPhys + pageSize, LabelUser})
	cfg.Regs = map[x86asm.Reg]Label{x86asm.RSP: LabelSVM, x86asm.RDI: LabelUser}
	tr := New(cfg)
	must(t, tr.Attach(m.e))
	begin, end := m.loadCode(hexCode(t, kernelFunc...))
	m.put64(percpuPhys+0x10, taskPhys)
	m.put64(dataPhys, pidNS)
	m.put64(pidNS+8, 0x1234)
	must(t, m.e.SetReg(emu.RDI, userPhys))
	must(t, m.e.SetRegs([]emu.Reg{emu.RBX, emu.RBP}, []uint64{0x77, 0x66}))
	tr.SetRegLabel(x86asm.RBX, LabelUser) // whatever the caller had
	tr.SetRegLabel(x86asm.RBP, LabelUser)

	must(t, m.e.Start(begin, end, 0))
	tr.Drain()
	accs := tr.TakeAccesses()

	type want struct {
		write bool
		phys  uint64
		d     decision.Decision
		r     Reason
		data  Label
	}
	exp := []want{
		{true, stackTop - 8, decision.Local, ReasonStack, LabelUser},            // push rbp
		{true, stackTop - 16, decision.Local, ReasonStack, LabelUser},           // push rbx
		{false, percpuPhys + 0x10, decision.Local, ReasonPerCPU, LabelSVM},      // current task
		{false, taskPhys + 0x20, decision.Local, ReasonSVMPointer, LabelSVM},    // task field
		{false, dataPhys, decision.Redirect, ReasonGlobalRedirect, LabelGVM},    // redirected global
		{false, pidNS + 8, decision.Redirect, ReasonGVMPointer, LabelGVM},       // GVM pointer followed
		{true, stackTop - 8 - 0x10, decision.Local, ReasonSVMPointer, LabelGVM}, // spill via rbp (SVM)
		{false, dataPhys + pageSize, decision.Local, ReasonGlobalLocal, LabelSVM},
		{false, dataPhys + 2*pageSize, decision.Unknown, ReasonGlobalUnknown, LabelSVM},
		{false, stackTop - 8 - 0x10, decision.Local, ReasonSVMPointer, LabelGVM}, // reload
		{true, userPhys, decision.Local, ReasonUserPointer, LabelGVM},            // copy to user
		{false, stackTop - 16, decision.Local, ReasonStack, LabelUser},           // pop rbx
		{false, stackTop - 8, decision.Local, ReasonStack, LabelUser},            // pop rbp
	}
	if len(accs) != len(exp) {
		t.Fatalf("%d accesses, want %d:\n%s", len(accs), len(exp), accessList(accs))
	}
	for i, w := range exp {
		a := accs[i]
		got := want{a.Write, a.Phys, a.Decision, a.Reason, a.Data}
		if got != w {
			t.Errorf("access %d: %+v, want %+v\n\t%v", i, got, w, &a)
		}
	}
	// Virtual addresses follow from RIP-relative operands alone.
	for i, va := range map[int]uint64{4: dataVirt, 7: dataVirt + pageSize, 8: dataVirt + 2*pageSize} {
		if !accs[i].VirtKnown || accs[i].Virt != va {
			t.Errorf("access %d: virt %#x (known %v), want %#x", i, accs[i].Virt, accs[i].VirtKnown, va)
		}
	}
	for r, l := range map[x86asm.Reg]Label{
		x86asm.RAX: LabelGVM, x86asm.RCX: LabelGVM, x86asm.RDX: LabelGVM, x86asm.RSI: LabelSVM,
		x86asm.R8: LabelSVM, x86asm.RBX: LabelUser, x86asm.RBP: LabelUser, x86asm.RSP: LabelSVM,
	} {
		if got := tr.RegLabels(r); fmt.Sprint(got) != fmt.Sprint(bvec(l, 8).labels(8)) {
			t.Errorf("%v = %v, want %v", r, got, l)
		}
	}
	if got := tr.MemLabels(userPhys, 8); !slices.Equal(got, bvec(LabelGVM, 8).labels(8)) {
		t.Errorf("user buffer labels %v, want GVM", got)
	}
	checkInvariants(t, accs)
	st := tr.Stats()
	if st.Instructions != uint64(len(kernelFunc)) || st.Accesses != uint64(len(exp)) ||
		st.Decided(decision.Redirect) != 2 || st.Decided(decision.Unknown) != 1 || st.Reasons[ReasonGlobalUnknown] != 1 {
		t.Errorf("stats %+v", st)
	}
}

// checkInvariants holds for every access under the VMST policy.
func checkInvariants(t *testing.T, accs []Access) {
	t.Helper()
	for i := range accs {
		a := &accs[i]
		switch {
		case a.Reason == ReasonStack && a.Base != x86asm.RSP:
			t.Errorf("stack decision without RSP base: %v", a)
		case a.Reason == ReasonPerCPU && a.Seg != x86asm.GS:
			t.Errorf("per-cpu decision without gs: %v", a)
		case a.Decision == decision.Redirect && a.Addr&(LabelGVM|LabelGlobal) == 0:
			t.Errorf("redirected without GVM or global provenance: %v", a)
		case a.Decision == decision.Redirect && !a.Write && a.Data != LabelGVM:
			t.Errorf("redirected read yields %v, not GVM data: %v", a.Data, a)
		case a.Addr&LabelGVM != 0 && a.Decision != decision.Redirect && a.Reason != ReasonStack && !a.DispGlobal:
			t.Errorf("GVM pointer kept local: %v", a)
		}
	}
}
