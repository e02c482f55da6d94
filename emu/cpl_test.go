package emu

import (
	"encoding/binary"
	"slices"
	"strings"
	"testing"
)

const (
	userCode = 0x10000 // in the low 2 MiB, which newUserPaged makes user-accessible
	pteU     = 1 << 2
	// SYSRETQ loads CS 0x33 and SS 0x2b (STAR[63:48] + 16 and + 8, RPL 3); SYSCALL would load
	// kernelCS and kernelCS + 8 (= kernelDS).
	testSTAR = 0x0023_0000_0000_0000 | kernelCS<<32
)

// newUserPaged is newPaged with the low 2 MiB user-accessible, so that code at userCode can run
// at CPL 3.
func newUserPaged(t testing.TB) *machine {
	t.Helper()
	m := newPaged(t)
	m.put64(pml4Phys, pdptLow|pteP|pteW|pteU)
	m.put64(pdptLow, pdLow|pteP|pteW|pteU)
	m.put64(pdLow, ptLow|pteP|pteW|pteU)
	for i := uint64(0); i < 512; i++ {
		m.put64(ptLow+i*8, m.get64(ptLow+i*8)|pteU)
	}
	must(t, m.e.SetMSR(MSRSTAR, testSTAR))
	return m
}

func kernelSegs() (cs, ss SegCache) {
	cs, ss = SyscallCS, SyscallSS
	cs.Selector, ss.Selector = kernelCS, kernelDS
	return cs, ss
}

// userSegs are the caches SYSRETQ loads with testSTAR.
func userSegs() (cs, ss SegCache) {
	cs, ss = SyscallCS, SyscallSS
	cs.Selector, ss.Selector = 0x33, 0x2b
	cs.Flags |= 3 << DescDPLShift
	ss.Flags |= 3 << DescDPLShift
	return cs, ss
}

func cpl(t testing.TB, e *Engine) int {
	t.Helper()
	c, err := e.CPL()
	must(t, err)
	return c
}

// hookVectors records every exception and stops the run, leaving RIP at the faulting instruction.
func hookVectors(t testing.TB, e *Engine) *[]uint32 {
	t.Helper()
	var vec []uint32
	_, err := e.HookInterrupt(func(v uint32) { vec = append(vec, v); e.Stop() })
	must(t, err)
	return &vec
}

func TestCPLCalibration(t *testing.T) {
	l, err := cplOffsets()
	must(t, err)
	exc, err := oldExceptionOffset()
	must(t, err)
	m := newFlat(t)
	c, err := m.e.ContextSave()
	must(t, err)
	defer c.Free()
	h := c.HeaderLen()
	t.Logf("blob offsets (CPU state offsets): hflags %#x (%#x), CS cache %#x (%#x), SS cache %#x (%#x), old_exception %#x (%#x); header %#x of %#x bytes",
		l.hflags, l.hflags-h, l.cs, l.cs-h, l.ss, l.ss-h, exc, exc-h, h, len(c.Bytes()))
	if got := cpl(t, m.e); got != 0 {
		t.Fatalf("fresh engine at CPL %d", got)
	}
}

// The calibration's diff must name exactly one field each, and say which when it does not.
func TestCPLCalibrationRefusesAmbiguity(t *testing.T) {
	type field struct {
		at     int
		b0, b1 func(b []byte, at int)
	}
	hf := func(at int) field {
		const long = hfLMA | hfCS64 | hfCS32 | hfSS32
		return field{at,
			func(b []byte, at int) { binary.LittleEndian.PutUint32(b[at:], long) },
			func(b []byte, at int) { binary.LittleEndian.PutUint32(b[at:], long|3) }}
	}
	seg := func(at int, kernel uint32, user SegCache) field {
		return field{at,
			func(b []byte, at int) { binary.LittleEndian.PutUint32(b[at:], kernel) },
			func(b []byte, at int) { putSegCache(b[at:], user) }}
	}
	cs := func(at int) field { return seg(at, calKernelCS, calUserCS) }
	ss := func(at int) field { return seg(at, calKernelSS, calUserSS) }
	for _, tc := range []struct {
		name    string
		fields  []field
		want    cplLayout
		wantErr []string
	}{
		{"unique", []field{hf(0x40), cs(0x80), ss(0x98)}, cplLayout{0x40, 0x80, 0x98}, nil},
		{"two-hflags", []field{hf(0x40), hf(0x100), cs(0x80), ss(0x98)}, cplLayout{}, []string{"hflags [0x40 0x100]"}},
		{"no-cs", []field{hf(0x40), ss(0x98)}, cplLayout{}, []string{"CS cache []"}},
		{"two-ss", []field{hf(0x40), cs(0x80), ss(0x98), ss(0x140)}, cplLayout{}, []string{"SS cache [0x98 0x140]"}},
		{"not-adjacent", []field{hf(0x40), cs(0x80), ss(0x140)}, cplLayout{}, []string{"0x80", "0x140", "not adjacent"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b0, b1 := make([]byte, 0x200), make([]byte, 0x200)
			for _, f := range tc.fields {
				f.b0(b0, f.at)
				f.b1(b1, f.at)
			}
			l, err := findCPLFields(b0, b1, 0)
			if tc.wantErr == nil {
				must(t, err)
				if l != tc.want {
					t.Fatalf("layout %+v, want %+v", l, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted %+v", l)
			}
			for _, s := range tc.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
		})
	}
}

// A privileged instruction raises #GP at CPL 3 and runs at CPL 0, whichever way SetPrivilege last
// went; clearExc keeps the second #GP from turning into #DF.
func TestSetPrivilege(t *testing.T) {
	for _, tc := range []struct {
		name string
		code []byte
	}{
		{"mov-rax-cr3", []byte{0x0f, 0x20, 0xd8}},
		{"mov-cr3-rax", []byte{0x0f, 0x22, 0xd8}},
		{"hlt", []byte{0xf4}}, // at CPL 0 it ends Start (StopLimit) with RIP past it
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newUserPaged(t)
			e := m.e
			vec := hookVectors(t, e)
			end := m.load(userCode, tc.code)
			kcs, kss := kernelSegs()
			ucs, uss := userSegs()
			run := func(wantCPL int, wantVec []uint32, wantRIP uint64) {
				t.Helper()
				if got := cpl(t, e); got != wantCPL {
					t.Fatalf("CPL %d, want %d", got, wantCPL)
				}
				must(t, e.SetReg(RAX, pml4Phys))
				must(t, e.Start(userCode, end, 0))
				if !slices.Equal(*vec, wantVec) {
					t.Fatalf("at CPL %d: vectors %v, want %v", wantCPL, *vec, wantVec)
				}
				if rip := reg(t, e, RIP); rip != wantRIP {
					t.Fatalf("at CPL %d: rip %#x, want %#x", wantCPL, rip, wantRIP)
				}
			}
			run(0, nil, end)
			must(t, e.SetPrivilege(ucs, uss, false))
			if cs, ss := reg(t, e, CS), reg(t, e, SS); cs != 0x33 || ss != 0x2b {
				t.Fatalf("cs %#x ss %#x after SetPrivilege to user", cs, ss)
			}
			run(3, []uint32{13}, userCode)
			must(t, e.SetPrivilege(kcs, kss, true))
			if cs, ss := reg(t, e, CS), reg(t, e, SS); cs != kernelCS || ss != kernelDS {
				t.Fatalf("cs %#x ss %#x after SetPrivilege to kernel", cs, ss)
			}
			run(0, []uint32{13}, end)
			must(t, e.SetPrivilege(ucs, uss, false))
			run(3, []uint32{13, 13}, userCode)
		})
	}
}

// SYSRETQ from CPL 0 is executed by QEMU itself, privilege change included; the calibration relies
// on it.
func TestSysretqToCPL3(t *testing.T) {
	m := newUserPaged(t)
	e := m.e
	vec := hookVectors(t, e)
	m.load(kernelPhys, []byte{0x48, 0x0f, 0x07}) // sysretq
	end := m.load(userCode, []byte{0x0f, 0x20, 0xd8})
	must(t, e.SetReg(RCX, userCode))
	must(t, e.SetReg(R11, 0x202))
	if got := cpl(t, e); got != 0 {
		t.Fatalf("CPL %d before SYSRETQ", got)
	}
	must(t, e.Start(kernelVirt, userCode, 0))
	if got := cpl(t, e); got != 3 {
		t.Fatalf("CPL %d after SYSRETQ, want 3", got)
	}
	if cs, ss, rip := reg(t, e, CS), reg(t, e, SS), reg(t, e, RIP); cs != 0x33 || ss != 0x2b || rip != userCode {
		t.Fatalf("cs %#x ss %#x rip %#x after SYSRETQ", cs, ss, rip)
	}
	must(t, e.Start(userCode, end, 0))
	if len(*vec) != 1 || (*vec)[0] != 13 {
		t.Fatalf("mov from CR3 after SYSRETQ: vectors %v, want [13]", *vec)
	}
}

// The use SetPrivilege exists for: a SYSCALL hook performs the kernel entry Unicorn skips, kernel
// code runs privileged, and its own SYSRETQ returns to user mode.
func TestSetPrivilegeSyscallRoundTrip(t *testing.T) {
	m := newUserPaged(t)
	e := m.e
	vec := hookVectors(t, e)
	m.load(kernelPhys, []byte{
		0x0f, 0x20, 0xd8, // mov rax, cr3
		0x48, 0x0f, 0x07, // sysretq
	})
	must(t, e.SetMSR(MSRLSTAR, kernelVirt))
	end := m.load(userCode, []byte{0x0f, 0x05, 0x90}) // syscall; nop
	hookCPL := -1
	_, err := e.HookSyscall(func() {
		hookCPL = cpl(t, e)
		var r [2]uint64
		must(t, e.Regs([]Reg{RIP, RFLAGS}, r[:]))
		lstar, err := e.MSR(MSRLSTAR)
		must(t, err)
		star, err := e.MSR(MSRSTAR)
		must(t, err)
		cs, ss := SyscallCS, SyscallSS
		cs.Selector = uint32(star>>32) &^ 3
		ss.Selector = cs.Selector + 8
		must(t, e.SetPrivilege(cs, ss, false))
		must(t, e.SetRegs([]Reg{RCX, R11, RIP}, []uint64{r[0] + 2, r[1], lstar - 2}))
	})
	must(t, err)
	ucs, uss := userSegs()
	must(t, e.SetPrivilege(ucs, uss, false))
	must(t, e.Start(userCode, end, 1000))
	if e.StopReason() != StopUntil || len(*vec) != 0 {
		t.Fatalf("stop reason %v, vectors %v", e.StopReason(), *vec)
	}
	if hookCPL != 3 {
		t.Fatalf("CPL %d in the SYSCALL hook, want 3", hookCPL)
	}
	if rax := reg(t, e, RAX); rax != pml4Phys {
		t.Fatalf("rax %#x: the kernel's mov from CR3 did not run at CPL 0", rax)
	}
	if got := cpl(t, e); got != 3 {
		t.Fatalf("CPL %d after the kernel's SYSRETQ, want 3", got)
	}
}

// Writing a selector register in 64-bit mode changes only the selector, which is why SetPrivilege
// exists.
func TestSetRegKeepsCPL(t *testing.T) {
	m := newUserPaged(t)
	e := m.e
	vec := hookVectors(t, e)
	end := m.load(userCode, []byte{0x0f, 0x20, 0xd8})
	ucs, uss := userSegs()
	must(t, e.SetPrivilege(ucs, uss, false))
	must(t, e.SetReg(SS, kernelDS))
	must(t, e.SetReg(CS, kernelCS))
	if got := cpl(t, e); got != 3 {
		t.Fatalf("CPL %d after writing kernel selectors, want 3", got)
	}
	must(t, e.Start(userCode, end, 0))
	if len(*vec) != 1 || (*vec)[0] != 13 {
		t.Fatalf("vectors %v, want [13]", *vec)
	}
}

func TestSetPrivilegeRefuses32BitCS(t *testing.T) {
	m := newUserPaged(t)
	cs, ss := userSegs()
	cs.Flags = cs.Flags&^DescL | DescB // compatibility-mode code
	if err := m.e.SetPrivilege(cs, ss, false); err == nil {
		t.Fatal("SetPrivilege accepted a 32-bit code segment")
	}
	if got := cpl(t, m.e); got != 0 {
		t.Fatalf("CPL %d after a refused SetPrivilege", got)
	}
}
