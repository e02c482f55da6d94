package taint

import (
	"slices"
	"testing"

	"golang.org/x/arch/x86/x86asm"

	"hybridbridge/decision"
	"hybridbridge/emu"
)

// countingPolicy counts how often the policy is asked.
type countingPolicy struct {
	Policy
	n int
}

func (p *countingPolicy) Decide(a *Access) (decision.Decision, Reason) {
	p.n++
	return p.Policy.Decide(a)
}

// Accesses to kernel-image data decided synchronously, from inside the
// memory hook, must see exact labels (computed by earlier instructions of
// the same, undrained batch) and agree with what the batch records.
var syncProgram = []string{
	"48 8b 1a",          // mov rbx, [rdx]            GVM memory holds a pointer to a global
	"48 8b 03",          // mov rax, [rbx]            GVM-labelled pointer into image data: redirect
	"48 8b 0d f30f1000", // mov rcx, [rip+0x100ff3]   dataVirt+0x1000: keep local
	"48 89 05 0c001000", // mov [rip+0x10000c], rax   dataVirt+0x20: redirect
	"48 8b 35 e22f1000", // mov rsi, [rip+0x102fe2]   dataVirt+0x2ffd: crosses a page, unknown
	"49 8b 39",          // mov rdi, [r9]             SVM memory, outside the sync range
}

func TestSyncDecisions(t *testing.T) {
	for _, early := range []bool{false, true} {
		name := "hook-after-attach"
		if early {
			name = "hook-before-attach"
		}
		t.Run(name, func(t *testing.T) {
			m := newMachine(t)
			cfg := testConfig()
			pol := &countingPolicy{Policy: cfg.Policy}
			cfg.Policy = pol
			tr := New(cfg)
			type seen struct {
				a   Access
				rbx []Label
			}
			var synced []seen
			onSync := func(a *Access) {
				synced = append(synced, seen{*a, tr.RegLabels(x86asm.RBX)})
			}
			const lo, hi = dataPhys, dataPhys + 4*pageSize - 1
			if early {
				// A bridge hook installed before the trace: Current must
				// take the access as the next one of the instruction.
				_, err := m.e.HookMem(emu.HookMemRead|emu.HookMemWrite, lo, hi, func(k emu.MemAccess, addr uint64, size int, _ int64) {
					a, err := tr.Current(addr, size, k == emu.MemWrite)
					must(t, err)
					onSync(&a)
				})
				must(t, err)
			} else {
				cfg.Sync = &SyncConfig{Begin: lo, End: hi, Func: onSync}
				tr = New(cfg)
			}
			must(t, tr.Attach(m.e))
			begin, end := m.loadCode(hexCode(t, syncProgram...))
			m.put64(gvmBegin, dataVirt+0x10)
			must(t, m.e.SetRegs([]emu.Reg{emu.RDX, emu.R9}, []uint64{gvmBegin, 0x9000}))
			tr.SetRegLabel(x86asm.RDX, LabelGVM)
			tr.SetRegLabel(x86asm.R9, LabelSVM)

			must(t, m.e.Start(begin, end, 0))
			tr.Drain()
			accs := tr.TakeAccesses()

			// The crossing read reaches the hook three times (whole, then
			// QEMU's two aligned halves), always as the same access.
			wantPhys := []uint64{dataPhys + 0x10, dataPhys + pageSize, dataPhys + 0x20,
				dataPhys + 0x2ffd, dataPhys + 0x2ffd, dataPhys + 0x2ffd}
			wantDec := []decision.Decision{decision.Redirect, decision.Local, decision.Redirect, decision.Unknown, decision.Unknown, decision.Unknown}
			if len(synced) != len(wantPhys) {
				t.Fatalf("%d synchronous decisions, want %d", len(synced), len(wantPhys))
			}
			for i, s := range synced {
				if s.a.Phys != wantPhys[i] || s.a.Decision != wantDec[i] {
					t.Errorf("sync %d: %v, want phys %#x %v", i, &s.a, wantPhys[i], wantDec[i])
				}
			}
			// Exact state: rbx's GVM label was produced by the previous
			// instruction, still in the undrained trace buffer.
			if !slices.Equal(synced[0].rbx, bvec(LabelGVM, 8).labels(8)) || synced[0].a.Reason != ReasonGVMPointer {
				t.Errorf("first synchronous access saw rbx %v, reason %v", synced[0].rbx, synced[0].a.Reason)
			}
			if len(accs) != 6 || pol.n != 6 {
				t.Fatalf("batch recorded %d accesses, policy asked %d times; want 6 and 6\n%s", len(accs), pol.n, accessList(accs))
			}
			for _, a := range accs {
				if a.Phys < lo || a.Phys > hi {
					continue
				}
				i := slices.IndexFunc(synced, func(s seen) bool { return s.a.Phys == a.Phys && s.a.Write == a.Write })
				if i < 0 || synced[i].a.Decision != a.Decision || synced[i].a.Reason != a.Reason {
					t.Errorf("batch %v has no matching synchronous decision", &a)
				}
			}
			if got := tr.RegLabels(x86asm.RAX); !slices.Equal(got, bvec(LabelGVM, 8).labels(8)) {
				t.Errorf("rax %v, want GVM (redirected load)", got)
			}
		})
	}
}

// Current outside any instruction is an error, not a guess.
func TestCurrentWithoutInstruction(t *testing.T) {
	tr := New(Config{})
	if _, err := tr.Current(0x1000, 8, false); err == nil {
		t.Fatal("Current with no traced instruction succeeded")
	}
}
