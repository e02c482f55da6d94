package emu

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestVersionAndClose(t *testing.T) {
	maj, min, pat := Version()
	if maj != 2 || min != 1 {
		t.Fatalf("linked Unicorn %d.%d.%d, want 2.1.x", maj, min, pat)
	}
	e, err := Open(CPUDefault)
	if err != nil {
		t.Fatal(err)
	}
	must(t, e.Close())
	must(t, e.Close()) // second Close is a no-op
	if _, err := e.Reg(RAX); !errors.Is(err, ErrClosed) {
		t.Fatalf("Reg after Close: %v, want ErrClosed", err)
	}
	if err := e.Start(0, 0, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Start after Close: %v, want ErrClosed", err)
	}
}

// 32-bit protected mode sanity, with Unicorn-allocated memory (Map).
func TestMode32Sanity(t *testing.T) {
	e, err := OpenMode(Mode32, CPUDefault)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	must(t, e.Map(0x1000, 0x1000, ProtAll))
	code := []byte{
		0xb8, 0x05, 0x00, 0x00, 0x00, // mov eax, 5
		0x83, 0xc0, 0x07, // add eax, 7
		0x89, 0x05, 0x00, 0x18, 0x00, 0x00, // mov [0x1800], eax
	}
	must(t, e.WritePhys(0x1000, code))
	must(t, e.Start(0x1000, 0x1000+uint64(len(code)), 0))
	if got := reg(t, e, EAX); got != 12 {
		t.Fatalf("eax = %d, want 12", got)
	}
	if e.StopReason() != StopUntil {
		t.Fatalf("stop reason %v, want until", e.StopReason())
	}
	buf := make([]byte, 4)
	must(t, e.ReadPhys(0x1800, buf))
	if binary.LittleEndian.Uint32(buf) != 12 {
		t.Fatalf("memory holds %x, want 12", buf)
	}
	regions, err := e.Regions()
	must(t, err)
	if len(regions) != 1 || regions[0] != (Region{0x1000, 0x1fff, ProtAll}) {
		t.Fatalf("regions %+v", regions)
	}
	if err := e.ReadPhys(0x9000, buf); !errors.Is(err, ErrReadUnmapped) {
		t.Fatalf("read of unmapped memory: %v, want ErrReadUnmapped", err)
	}
}

func TestRealModeSanity(t *testing.T) {
	e, err := OpenMode(Mode16, CPUDefault)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	must(t, e.Map(0, 0x1000, ProtAll))
	code := []byte{
		0xb8, 0x34, 0x12, // mov ax, 0x1234
		0x40, // inc ax
	}
	must(t, e.WritePhys(0x100, code))
	must(t, e.Start(0x100, 0x100+uint64(len(code)), 0))
	if ax := reg(t, e, EAX) & 0xffff; ax != 0x1235 || e.StopReason() != StopUntil {
		t.Fatalf("ax = %#x, stop %v", ax, e.StopReason())
	}
}

// Paged long mode at a Linux-like kernel address. The 4 KiB PTE that sends
// remapVirt to a different physical page is what Unicorn 2.0.1 got wrong.
func TestLongModePaging(t *testing.T) {
	m := newPaged(t)
	const want, decoy = 0x1122334455667788, 0xdeadbeefdeadbeef
	m.put64(dataPhys, want)
	m.put64(remapVirt, decoy) // identity-mapped physical twin: must not be read

	var reads []uint64
	_, err := m.e.HookMem(HookMemRead, 0, ramSize-1, func(_ MemAccess, addr uint64, size int, _ int64) {
		reads = append(reads, addr)
	})
	must(t, err)
	var pcs []uint64
	_, err = m.e.HookCode(kernelVirt, kernelVirt+0xfff, func(addr uint64, _ uint32) { pcs = append(pcs, addr) })
	must(t, err)

	code := []byte{
		0x48, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x10, 0x00, // mov rax, [remapVirt]
		0x48, 0x89, 0xc3, // mov rbx, rax
	}
	end := m.load(kernelPhys, code)
	must(t, m.e.Start(kernelVirt, kernelVirt+end-kernelPhys, 0))

	if got := reg(t, m.e, RBX); got != want {
		t.Fatalf("rbx = %#x, want %#x (decoy %#x means the PTE was ignored)", got, want, uint64(decoy))
	}
	var sawData bool
	for _, a := range reads {
		if a == remapVirt {
			t.Errorf("read hook saw %#x: a virtual address or the wrong frame", a)
		}
		sawData = sawData || a == dataPhys
	}
	if !sawData {
		t.Errorf("read hook never saw physical %#x; saw %#x", uint64(dataPhys), reads)
	}
	if len(pcs) != 2 || pcs[0] != kernelVirt || pcs[1] != kernelVirt+8 {
		t.Errorf("code hook saw %#x, want the two virtual kernel addresses", pcs)
	}
	if cs := reg(t, m.e, CS); cs != kernelCS {
		t.Errorf("cs = %#x", cs)
	}
}

func TestPageFault(t *testing.T) {
	m := newPaged(t)
	code := []byte{0x48, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x60, 0x00} // mov rax, [unmapVirt]
	end := kernelVirt + m.load(kernelPhys, code) - kernelPhys

	// Without an interrupt hook the exception ends Start.
	err := m.e.Start(kernelVirt, end, 0)
	if !errors.Is(err, ErrException) {
		t.Fatalf("unhooked #PF: %v, want ErrException", err)
	}

	m2 := newPaged(t)
	m2.load(kernelPhys, code)
	var vec []uint32
	var cr2 uint64
	_, err = m2.e.HookInterrupt(func(v uint32) {
		vec = append(vec, v)
		cr2 = reg(t, m2.e, CR2)
		m2.e.Stop()
	})
	must(t, err)
	must(t, m2.e.Start(kernelVirt, end, 0))
	if len(vec) != 1 || vec[0] != 14 {
		t.Fatalf("vectors %v, want [14]", vec)
	}
	if cr2 != unmapVirt {
		t.Fatalf("cr2 = %#x, want %#x", cr2, uint64(unmapVirt))
	}
	if rip := reg(t, m2.e, RIP); rip != kernelVirt {
		t.Fatalf("rip = %#x, want the faulting instruction", rip)
	}
	if m2.e.StopReason() != StopRequested {
		t.Fatalf("stop reason %v", m2.e.StopReason())
	}
}

func TestRangedHooks(t *testing.T) {
	m := newFlat(t)
	code := []byte{
		0x48, 0xff, 0xc0, // 0x1000 inc rax
		0x48, 0xff, 0xc0, // 0x1003 inc rax
		0x48, 0x89, 0x04, 0x25, 0x00, 0x50, 0x00, 0x00, // 0x1006 mov [0x5000], rax
		0x48, 0x89, 0x04, 0x25, 0x00, 0x60, 0x00, 0x00, // 0x100e mov [0x6000], rax
		0x48, 0x8b, 0x1c, 0x25, 0x08, 0x60, 0x00, 0x00, // 0x1016 mov rbx, [0x6008]
	}
	end := m.load(0x1000, code)
	var pcs []uint64
	_, err := m.e.HookCode(0x1003, 0x1006, func(addr uint64, size uint32) { pcs = append(pcs, addr) })
	must(t, err)
	type acc struct {
		k    MemAccess
		addr uint64
		v    int64
	}
	var accs []acc
	_, err = m.e.HookMem(HookMemRead|HookMemWrite, 0x6000, 0x6fff, func(k MemAccess, addr uint64, size int, v int64) {
		accs = append(accs, acc{k, addr, v})
	})
	must(t, err)
	must(t, m.e.Start(0x1000, end, 0))
	if len(pcs) != 2 || pcs[0] != 0x1003 || pcs[1] != 0x1006 {
		t.Errorf("code hook saw %#x, want [0x1003 0x1006]", pcs)
	}
	want := []acc{{MemWrite, 0x6000, 2}, {MemRead, 0x6008, 0}}
	if len(accs) != 2 || accs[0] != want[0] || accs[1].k != want[1].k || accs[1].addr != want[1].addr {
		t.Errorf("mem hook saw %+v, want %+v", accs, want)
	}
}

func TestHookPanicIsStopReason(t *testing.T) {
	m := newFlat(t)
	code := []byte{
		0x48, 0xff, 0xc0, // inc rax
		0x48, 0xff, 0xc0, // inc rax
		0x48, 0xff, 0xc0, // inc rax
	}
	end := m.load(0x1000, code)
	explode := true
	_, err := m.e.HookCode(0x1003, 0x1003, func(uint64, uint32) {
		if explode {
			panic("boom")
		}
	})
	must(t, err)
	err = m.e.Start(0x1000, end, 0)
	var pe *HookPanicError
	if !errors.As(err, &pe) || pe.Value != "boom" {
		t.Fatalf("Start = %v, want HookPanicError(boom)", err)
	}
	if !strings.Contains(string(pe.Stack), "TestHookPanicIsStopReason") {
		t.Errorf("stack does not show the panicking hook:\n%s", pe.Stack)
	}
	if m.e.StopReason() != StopHookPanic {
		t.Errorf("stop reason %v", m.e.StopReason())
	}
	if rax := reg(t, m.e, RAX); rax != 1 {
		t.Errorf("rax = %d: emulation went past the panicking hook", rax)
	}
	// The engine is still usable.
	explode = false
	must(t, m.e.SetReg(RAX, 0))
	must(t, m.e.Start(0x1000, end, 0))
	if rax := reg(t, m.e, RAX); rax != 3 {
		t.Errorf("second run rax = %d, want 3", rax)
	}
}

func TestCountLimitAndStop(t *testing.T) {
	m := newFlat(t)
	m.load(0x1000, []byte{0xeb, 0xfe}) // jmp $

	done := make(chan error, 1)
	go func() { done <- m.e.Start(0x1000, 0x2000, 1_000_000) }()
	select {
	case err := <-done:
		must(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("count limit did not stop jmp $")
	}
	if m.e.StopReason() != StopLimit || reg(t, m.e, RIP) != 0x1000 {
		t.Fatalf("stop %v rip %#x", m.e.StopReason(), reg(t, m.e, RIP))
	}

	// Stop from another goroutine ends an unlimited run. A Stop that lands
	// before the run begins is lost, hence the retry.
	go func() { done <- m.e.Start(0x1000, 0x2000, 0) }()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(10 * time.Second)
wait:
	for {
		select {
		case err := <-done:
			must(t, err)
			break wait
		case <-tick.C:
			must(t, m.e.Stop())
		case <-deadline:
			t.Fatal("Stop did not end the run") // the engine is leaked on purpose
		}
	}
	if m.e.StopReason() != StopRequested {
		t.Fatalf("stop reason %v", m.e.StopReason())
	}
}

// A run with count 0 first caches the loop's blocks; the later limited run
// must still be counted exactly (10 instructions = 3 loop turns + 1 inc).
func TestCountLimitAfterUnlimitedRun(t *testing.T) {
	m := newFlat(t)
	code := []byte{
		0x48, 0xff, 0xc0, // inc rax
		0x48, 0xff, 0xc9, // dec rcx
		0x75, 0xf8, // jnz -8
	}
	end := m.load(0x1000, code)
	must(t, m.e.SetReg(RCX, 5))
	must(t, m.e.Start(0x1000, end, 0))
	must(t, m.e.SetRegs([]Reg{RAX, RCX}, []uint64{0, 1 << 40}))
	must(t, m.e.Start(0x1000, end, 10))
	if rax := reg(t, m.e, RAX); rax != 4 {
		t.Fatalf("rax = %d after 10 instructions, want 4", rax)
	}
}

func TestContextAndSystemRegisters(t *testing.T) {
	m := newPaged(t)
	e := m.e
	must(t, e.SetReg(RAX, 1))
	c, err := e.ContextSave()
	must(t, err)
	defer c.Free()
	size, err := e.ContextSize()
	must(t, err)
	if len(c.Bytes()) != size || size == 0 {
		t.Fatalf("Bytes is %d long, uc_context_size %d", len(c.Bytes()), size)
	}
	must(t, e.SetReg(RAX, 2))
	must(t, e.ContextRestore(c))
	if reg(t, e, RAX) != 1 {
		t.Fatal("ContextRestore did not restore rax")
	}

	// Locate RBX in the blob by diffing, patch it with SetBytes.
	const marker = 0x4142434445464748
	b1 := c.Bytes()
	must(t, e.SetReg(RBX, marker))
	c2, err := e.ContextSave()
	must(t, err)
	defer c2.Free()
	var mk [8]byte
	binary.LittleEndian.PutUint64(mk[:], marker)
	off := bytes.Index(c2.Bytes(), mk[:])
	if off < c.HeaderLen() || !bytes.Equal(b1[:off], c2.Bytes()[:off]) {
		t.Fatalf("marker at %d, header %d", off, c.HeaderLen())
	}
	binary.LittleEndian.PutUint64(b1[off:], 0x99)
	must(t, c.SetBytes(b1))
	must(t, e.ContextRestore(c))
	if rbx := reg(t, e, RBX); rbx != 0x99 {
		t.Fatalf("rbx = %#x after SetBytes+restore, want 0x99", rbx)
	}
	if err := c.SetBytes(b1[:10]); err == nil {
		t.Fatal("SetBytes accepted a short blob")
	}

	must(t, e.SetMSR(MSRKernelGSBase, 0xffff888012345000))
	if v, err := e.MSR(MSRKernelGSBase); err != nil || v != 0xffff888012345000 {
		t.Fatalf("KERNEL_GS_BASE = %#x, %v", v, err)
	}
	if efer, _ := e.MSR(MSREFER); efer&(EFERLMA|EFERLME|EFERNXE|EFERSCE) != EFERLMA|EFERLME|EFERNXE|EFERSCE {
		t.Fatalf("EFER = %#x", efer)
	}
	must(t, e.SetReg(GSBase, 0xffff888000001000))
	if v, _ := e.MSR(MSRGSBase); v != 0xffff888000001000 {
		t.Fatalf("GS_BASE via MSR = %#x", v)
	}
	idt := DescTable{Base: 0xfffffe0000000000, Limit: 0xfff}
	must(t, e.SetDescTable(IDTR, idt))
	got, err := e.DescTable(IDTR)
	must(t, err)
	if got.Base != idt.Base || got.Limit != idt.Limit {
		t.Fatalf("IDTR = %+v, want %+v", got, idt)
	}
	got, err = e.DescTable(GDTR)
	must(t, err)
	if got.Base != gdtPhys || got.Limit != 31 {
		t.Fatalf("GDTR = %+v", got)
	}
	// 2.1.1 quirk: writing CR2 also sets CR3, hence CR2 first, then CR3.
	must(t, e.SetReg(CR2, 0x1234000))
	if cr3 := reg(t, e, CR3); cr3 != 0x1234000 {
		t.Logf("CR2 write no longer clobbers CR3 (cr3=%#x): the quirk is gone", cr3)
	}
	must(t, e.SetReg(CR3, pml4Phys))
	if cr2 := reg(t, e, CR2); cr2 != 0x1234000 {
		t.Fatalf("cr2 = %#x after CR2-then-CR3 writes", cr2)
	}
	vals := make([]uint64, 3)
	must(t, e.Regs([]Reg{CR3, CS, RSP}, vals))
	if vals[0] != pml4Phys || vals[1] != kernelCS || vals[2] != stackTop {
		t.Fatalf("Regs = %#x", vals)
	}
}

// QEMU remembers the last exception (CPUX86State.old_exception) to detect
// double faults, and Unicorn never clears it because it does not deliver
// through the IDT: the second #PF arrives as #DF (8), the third is a triple
// fault that silently ends Start. Resetting the field in the context blob
// (found by diffing) makes the next fault a plain #PF again.
func TestOldExceptionResetViaContextBytes(t *testing.T) {
	m := newPaged(t)
	var vec []uint32
	_, err := m.e.HookInterrupt(func(v uint32) { vec = append(vec, v); m.e.Stop() })
	must(t, err)
	code := []byte{0x48, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x60, 0x00} // mov rax, [unmapVirt]
	end := kernelVirt + m.load(kernelPhys, code) - kernelPhys

	before, err := m.e.ContextSave()
	must(t, err)
	defer before.Free()
	must(t, m.e.Start(kernelVirt, end, 0))
	after, err := m.e.ContextSave()
	must(t, err)
	defer after.Free()

	b0, b1 := before.Bytes(), after.Bytes()
	off := -1
	for o := before.HeaderLen(); o+4 <= len(b0); o += 4 {
		if binary.LittleEndian.Uint32(b0[o:]) == 0xffffffff && binary.LittleEndian.Uint32(b1[o:]) == 14 {
			off = o
		}
	}
	if off < 0 {
		t.Fatal("no int32 went from -1 to 14")
	}
	t.Logf("old_exception at blob offset %#x (CPU state offset %#x)", off, off-before.HeaderLen())

	must(t, m.e.Start(kernelVirt, end, 0)) // unreset: escalates
	binary.LittleEndian.PutUint32(b1[off:], 0xffffffff)
	must(t, after.SetBytes(b1))
	must(t, m.e.ContextRestore(after))
	must(t, m.e.Start(kernelVirt, end, 0))
	if want := []uint32{14, 8, 14}; len(vec) != 3 || vec[0] != want[0] || vec[1] != want[1] || vec[2] != want[2] {
		t.Fatalf("vectors %v, want %v", vec, want)
	}
}

// Loop with one write and one read per turn:
//
//	1 + 4*turns instructions, turns writes, turns reads.
var traceLoop = []byte{
	0x48, 0xc7, 0xc1, 0x0a, 0x00, 0x00, 0x00, // mov rcx, 10
	0x48, 0x89, 0x07, // mov [rdi], rax
	0x48, 0x8b, 0x1f, // mov rbx, [rdi]
	0x48, 0xff, 0xc9, // dec rcx
	0x75, 0xf5, // jnz -11 (to mov [rdi], rax)
}

func countKinds(evs []Event, into map[EventKind]int) {
	for _, ev := range evs {
		into[ev.Kind]++
	}
}

func TestTraceBuffer(t *testing.T) {
	for _, tc := range []struct {
		name              string
		count             uint64
		exec, write, read int
	}{
		{"complete", 0, 41, 10, 10},
		// 23 instructions: mov rcx + 5 turns + mov [rdi] + mov rbx.
		{"count-limit-mid-batch", 23, 23, 6, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newFlat(t)
			got := map[EventKind]int{}
			flushes := 0
			tb, err := m.e.NewTrace(TraceConfig{
				Capacity: 8,
				Code:     true,
				Mem:      HookMemRead | HookMemWrite,
				MemBegin: 0x9000, MemEnd: 0x9fff,
				OnFull: func(evs []Event) {
					if len(evs) != 8 {
						t.Errorf("OnFull got %d events, want a full buffer", len(evs))
					}
					flushes++
					countKinds(evs, got)
				},
			})
			must(t, err)
			defer tb.Close()
			must(t, m.e.SetRegs([]Reg{RDI, RAX}, []uint64{0x9000, 7}))
			end := m.load(0x1000, traceLoop)
			must(t, m.e.Start(0x1000, end, tc.count))
			left := tb.Len()
			tb.Drain(func(evs []Event) { countKinds(evs, got) })
			total := tc.exec + tc.write + tc.read
			if left != total%8 || flushes != total/8 || tb.Len() != 0 {
				t.Errorf("left %d flushes %d, want %d and %d", left, flushes, total%8, total/8)
			}
			if got[EventExec] != tc.exec || got[EventWrite] != tc.write || got[EventRead] != tc.read {
				t.Errorf("events %v, want exec %d write %d read %d", got, tc.exec, tc.write, tc.read)
			}
		})
	}
}

func TestTraceBufferDropsWithoutOnFull(t *testing.T) {
	m := newFlat(t)
	tb, err := m.e.NewTrace(TraceConfig{Capacity: 16, Code: true, Mem: HookMemWrite})
	must(t, err)
	must(t, m.e.SetReg(RDI, 0x9000))
	end := m.load(0x1000, traceLoop)
	must(t, m.e.Start(0x1000, end, 0))
	var evs []Event
	tb.Drain(func(e []Event) { evs = append(evs, e...) })
	if len(evs) != 16 || tb.Dropped() != 41+10-16 {
		t.Fatalf("kept %d dropped %d", len(evs), tb.Dropped())
	}
	if evs[0] != (Event{Kind: EventExec, Size: 7, Addr: 0x1000}) {
		t.Fatalf("first event %+v", evs[0])
	}
	if evs[2] != (Event{Kind: EventWrite, Size: 8, Addr: 0x9000}) {
		t.Fatalf("write event %+v", evs[2])
	}
	must(t, tb.Close())
	must(t, tb.Close())
}

func TestInOut(t *testing.T) {
	m := newFlat(t)
	code := []byte{
		0xb0, 0x41, // mov al, 0x41
		0xe6, 0x80, // out 0x80, al
		0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
		0x66, 0xed, // in ax, dx
		0x48, 0x89, 0xc3, // mov rbx, rax
	}
	end := m.load(0x1000, code)
	type out struct {
		port uint32
		size int
		v    uint32
	}
	var outs []out
	var ins []out
	_, err := m.e.HookOut(func(port uint32, size int, v uint32) { outs = append(outs, out{port, size, v}) })
	must(t, err)
	_, err = m.e.HookIn(func(port uint32, size int) uint32 { ins = append(ins, out{port, size, 0}); return 0xbeef })
	must(t, err)
	must(t, m.e.Start(0x1000, end, 0))
	if len(outs) != 1 || outs[0] != (out{0x80, 1, 0x41}) {
		t.Errorf("out hook saw %+v", outs)
	}
	if len(ins) != 1 || ins[0] != (out{0x3f8, 2, 0}) {
		t.Errorf("in hook saw %+v", ins)
	}
	if rbx := reg(t, m.e, RBX); rbx&0xffff != 0xbeef {
		t.Errorf("rbx = %#x, want IN result 0xbeef", rbx)
	}
}

// What Unicorn 2.1.1 does with ud2 (#UD):
//   - no hooks: Start fails with ErrInsnInvalid;
//   - an interrupt hook alone is NOT called;
//   - the invalid-instruction hook is called first; returning false gives
//     ErrInsnInvalid; returning true raises #UD as vector 6 to the interrupt
//     hook (ErrException if there is none), with RIP still at the ud2.
func TestInvalidInstruction(t *testing.T) {
	code := []byte{
		0x90,       // nop
		0x0f, 0x0b, // ud2
		0x48, 0xff, 0xc0, // inc rax
	}
	for _, tc := range []struct {
		name              string
		intr, inv, handle bool
		wantErr           error
		wantVec           []uint32
		wantInv           int
	}{
		{"no-hooks", false, false, false, ErrInsnInvalid, nil, 0},
		{"intr-only", true, false, false, ErrInsnInvalid, nil, 0},
		{"invalid-false", true, true, false, ErrInsnInvalid, nil, 1},
		{"invalid-true-no-intr", false, true, true, ErrException, nil, 1},
		{"invalid-true-intr", true, true, true, nil, []uint32{6}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newFlat(t)
			end := m.load(0x1000, code)
			var vec []uint32
			ninv := 0
			if tc.intr {
				_, err := m.e.HookInterrupt(func(v uint32) {
					vec = append(vec, v)
					if rip := reg(t, m.e, RIP); rip != 0x1001 {
						t.Errorf("rip %#x in #UD hook, want the ud2", rip)
					}
					must(t, m.e.SetReg(RIP, 0x1003)) // skip ud2, as a WARN() handler does
				})
				must(t, err)
			}
			if tc.inv {
				_, err := m.e.HookInvalidInsn(func() bool { ninv++; return tc.handle })
				must(t, err)
			}
			err := m.e.Start(0x1000, end, 100)
			if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("Start = %v, want %v", err, tc.wantErr)
			}
			if len(vec) != len(tc.wantVec) || ninv != tc.wantInv {
				t.Fatalf("vectors %v invalid-hook calls %d, want %v %d", vec, ninv, tc.wantVec, tc.wantInv)
			}
			if tc.wantErr == nil && reg(t, m.e, RAX) != 1 {
				t.Fatal("execution did not resume after the skipped ud2")
			}
		})
	}
}

// The default model must let a kernel use SMAP (stac/clac), CLWB and
// CLFLUSHOPT at CPL 0.
func TestCPUModelFeatures(t *testing.T) {
	m := newPaged(t)
	code := []byte{
		0xb8, 0x07, 0x00, 0x00, 0x00, // mov eax, 7
		0x31, 0xc9, // xor ecx, ecx
		0x0f, 0xa2, // cpuid
		0x0f, 0x01, 0xcb, // stac
		0x0f, 0x01, 0xca, // clac
		0x66, 0x0f, 0xae, 0x37, // clwb [rdi]
		0x66, 0x0f, 0xae, 0x3f, // clflushopt [rdi]
	}
	end := kernelVirt + m.load(kernelPhys, code) - kernelPhys
	must(t, m.e.SetReg(RDI, 0x9000))
	must(t, m.e.Start(kernelVirt, end, 0))
	ebx := reg(t, m.e, RBX)
	for bit, name := range map[uint]string{20: "SMAP", 23: "CLFLUSHOPT", 24: "CLWB"} {
		if ebx>>bit&1 == 0 {
			t.Errorf("CPUID.7.0:EBX lacks %s (ebx=%#x)", name, ebx)
		}
	}
}

// A fault hook can map the missing page and let the access proceed.
func TestMemFaultHookMapsOnDemand(t *testing.T) {
	m := newFlat(t)
	code := []byte{0x48, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x50, 0x00} // mov rax, [0x500000]
	end := m.load(0x1000, code)
	var faults []uint64
	_, err := m.e.HookMemFault(HookMemUnmapped, 1, 0, func(k MemAccess, addr uint64, size int, _ int64) bool {
		faults = append(faults, addr)
		if k != MemReadUnmapped || size != 8 {
			t.Errorf("fault kind %d size %d", k, size)
		}
		must(t, m.e.Map(addr&^0xfff, 0x1000, ProtAll))
		must(t, m.e.WritePhys(addr, []byte{0x2a}))
		return true
	})
	must(t, err)
	must(t, m.e.Start(0x1000, end, 0))
	if len(faults) != 1 || faults[0] != 0x500000 || reg(t, m.e, RAX) != 0x2a {
		t.Fatalf("faults %#x rax %#x", faults, reg(t, m.e, RAX))
	}
}

func TestHookDel(t *testing.T) {
	m := newFlat(t)
	end := m.load(0x1000, []byte{0x90, 0x90})
	n := 0
	h, err := m.e.HookCode(1, 0, func(uint64, uint32) { n++ })
	must(t, err)
	must(t, m.e.Start(0x1000, end, 0))
	must(t, m.e.HookDel(h))
	must(t, m.e.Start(0x1000, end, 0))
	if n != 2 {
		t.Fatalf("hook ran %d times, want 2 (only before HookDel)", n)
	}
	if err := m.e.HookDel(h); err == nil {
		t.Fatal("second HookDel succeeded")
	}
}

// Start(count=0) after Start(count>0) would make Unicorn drop its counting
// hook and flush all translated code (1.5 s the first time, measured);
// Start keeps the hook with an unreachable limit instead.
//
// Whether the cache survived is seen, not timed: the code is rewritten in
// RAM behind Unicorn's back (a host write, which Unicorn does not watch), so
// the old bytes' translation runs if the cache was kept and the new bytes
// run if it was flushed. The second case drops the kept hook as Start did
// before, showing the test tells the two apart.
func TestUnlimitedAfterLimitedRunKeepsCache(t *testing.T) {
	for _, keep := range []bool{true, false} {
		m := newFlat(t)
		// The block ending at the run's until address is not reused between runs, so the
		// rewritten instruction sits in a block of its own.
		m.load(0x1000, []byte{0xb8, 1, 0, 0, 0, 0xe9, 0xf6, 0, 0, 0}) // mov eax, 1; jmp 0x1100
		end := m.load(0x1100, []byte{0x90})                           // nop
		must(t, m.e.Start(0x1000, end, 5))
		m.load(0x1000, []byte{0xb8, 2, 0, 0, 0}) // mov eax, 2
		if !keep {
			m.e.countHook = false
		}
		t0 := time.Now()
		must(t, m.e.Start(0x1000, end, 0))
		t.Logf("keep hook %v: unlimited run after a limited one took %v", keep, time.Since(t0))
		if m.e.StopReason() != StopUntil {
			t.Fatalf("keep hook %v: stop reason %v", keep, m.e.StopReason())
		}
		rax := reg(t, m.e, RAX)
		switch {
		case keep && rax != 1:
			t.Fatalf("rax = %d: the rewritten code was translated anew, so the unlimited run flushed the translation cache", rax)
		case !keep && rax != 2:
			t.Fatalf("rax = %d with the counting hook dropped: a flush went unseen, so this test cannot tell a kept cache from a flushed one", rax)
		}
	}
}

// ClearException finds old_exception by itself: after it, a second page fault arrives as #PF, not
// #DF; without it, as #DF.
func TestClearException(t *testing.T) {
	for _, clear := range []bool{true, false} {
		m := newPaged(t)
		var vec []uint32
		_, err := m.e.HookInterrupt(func(v uint32) {
			vec = append(vec, v)
			if clear {
				must(t, m.e.ClearException())
			}
			m.e.Stop()
		})
		must(t, err)
		code := []byte{0x48, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x60, 0x00} // mov rax, [unmapVirt]
		end := kernelVirt + m.load(kernelPhys, code) - kernelPhys
		must(t, m.e.Start(kernelVirt, end, 0))
		must(t, m.e.Start(kernelVirt, end, 0))
		want := []uint32{14, 8}
		if clear {
			want = []uint32{14, 14}
		}
		if len(vec) != 2 || vec[0] != want[0] || vec[1] != want[1] {
			t.Fatalf("clear=%v: vectors %v, want %v", clear, vec, want)
		}
	}
}

// TestMemFilter: a pair added to the filter no longer reaches Go; other instructions or addresses
// still do, and Clear lets everything through again.
func TestMemFilter(t *testing.T) {
	m := newFlat(t)
	// Two loads of the same address from different instructions, then one of another address.
	code := []byte{
		0x48, 0x8b, 0x04, 0x25, 0x00, 0x60, 0x00, 0x00, // mov rax, [0x6000]
		0x48, 0x8b, 0x1c, 0x25, 0x00, 0x60, 0x00, 0x00, // mov rbx, [0x6000]
		0x48, 0x8b, 0x0c, 0x25, 0x08, 0x60, 0x00, 0x00, // mov rcx, [0x6008]
	}
	var seen []uint64
	var f *MemFilter
	f, err := m.e.NewMemFilter(16, func(_ MemAccess, addr uint64, _ int, _ int64) {
		pc, _ := m.e.Reg(RIP)
		if f.PC() != pc {
			t.Errorf("filter says pc %#x, RIP is %#x", f.PC(), pc)
		}
		seen = append(seen, pc<<32|addr)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Hook(HookMemRead, 0x6000, 0x6fff); err != nil {
		t.Fatal(err)
	}
	const base = 0x1000
	end := m.load(base, code)
	run := func() []uint64 {
		seen = nil
		must(t, m.e.Start(base, end, 0))
		return seen
	}
	if got := run(); len(got) != 3 || got[0] != base<<32|0x6000 {
		t.Fatalf("unfiltered: %#x", got)
	}
	if err := f.Add(base, 0x6000); err != nil {
		t.Fatal(err)
	}
	if got := run(); len(got) != 2 || got[0] != (base+8)<<32|0x6000 || got[1] != (base+16)<<32|0x6008 {
		t.Fatalf("filtered: %#x", got)
	}
	if skipped, passed, size := f.Stats(); skipped != 1 || passed != 5 || size != 1 {
		t.Fatalf("stats: skipped %d passed %d size %d", skipped, passed, size)
	}
	run()
	// The pair let its access through twice; drained, the count starts again.
	for want := uint64(2); ; want = 0 {
		var got []uint64
		f.DrainHits(func(pc, addr, n uint64) { got = append(got, pc, addr, n) })
		if (want == 0 && len(got) != 0) || (want != 0 && (len(got) != 3 || got[0] != base || got[1] != 0x6000 || got[2] != want)) {
			t.Fatalf("drained hits %#x, want %d for the pair", got, want)
		}
		if want == 0 {
			break
		}
	}
	f.Clear()
	if got := run(); len(got) != 3 {
		t.Fatalf("after Clear: %#x", got)
	}
}

// TestMemFilterSpans: one hook over several ranges sees the accesses inside them and none
// between them, though the hook's hull covers those.
func TestMemFilterSpans(t *testing.T) {
	m := newFlat(t)
	code := []byte{
		0x48, 0x8b, 0x04, 0x25, 0x00, 0x60, 0x00, 0x00, // mov rax, [0x6000]  in the first range
		0x48, 0x8b, 0x04, 0x25, 0x00, 0x70, 0x00, 0x00, // mov rax, [0x7000]  between the ranges
		0x48, 0x8b, 0x04, 0x25, 0xf8, 0x8f, 0x00, 0x00, // mov rax, [0x8ff8]  last word of the second
		0x48, 0x8b, 0x04, 0x25, 0x00, 0x90, 0x00, 0x00, // mov rax, [0x9000]  just after it
	}
	var seen []uint64
	f, err := m.e.NewMemFilter(16, func(_ MemAccess, addr uint64, _ int, _ int64) { seen = append(seen, addr) })
	if err != nil {
		t.Fatal(err)
	}
	// Given out of order, and the second range in two touching parts.
	if err := f.HookSpans(HookMemRead, [][2]uint64{{0x8800, 0x8fff}, {0x6000, 0x6fff}, {0x8000, 0x87ff}}); err != nil {
		t.Fatal(err)
	}
	end := m.load(0x1000, code)
	must(t, m.e.Start(0x1000, end, 0))
	if want := []uint64{0x6000, 0x8ff8}; !slices.Equal(seen, want) {
		t.Fatalf("seen %#x, want %#x", seen, want)
	}
	if err := f.HookSpans(HookMemRead, [][2]uint64{{0x5000, 0x4000}}); err == nil {
		t.Fatal("an empty range was accepted")
	}
}

// TestWriteLog: the pages executed stores wrote are listed once each, in first-write order,
// including both pages of a store that straddles them; reads are not listed; Mark adds the
// caller's own writes; Drain forgets what it returned.
func TestWriteLog(t *testing.T) {
	m := newFlat(t)
	code := []byte{
		0x48, 0x89, 0x04, 0x25, 0x00, 0x70, 0x00, 0x00, // mov [0x7000], rax
		0x48, 0x89, 0x04, 0x25, 0x08, 0x70, 0x00, 0x00, // mov [0x7008], rax (same page)
		0x48, 0x8b, 0x1c, 0x25, 0x00, 0x90, 0x00, 0x00, // mov rbx, [0x9000] (a read)
		0x48, 0x89, 0x04, 0x25, 0xfc, 0x5f, 0x00, 0x00, // mov [0x5ffc], rax (pages 5 and 6)
	}
	w, err := m.e.NewWriteLog(0, ramSize)
	if err != nil {
		t.Fatal(err)
	}
	const base = 0x1000
	end := m.load(base, code)
	drain := func() []uint64 {
		var got []uint64
		w.Drain(func(p uint64) { got = append(got, p) })
		return got
	}
	drain() // loading the code wrote from Go, unseen
	must(t, m.e.Start(base, end, 0))
	if got, want := drain(), []uint64{0x7000, 0x5000, 0x6000}; !slices.Equal(got, want) {
		t.Fatalf("written pages %#x, want %#x", got, want)
	}
	w.Mark(0xa123, 0x1000)
	if n := w.Len(); n != 2 {
		t.Fatalf("Mark of a page-crossing range listed %d pages, want 2", n)
	}
	if got, want := drain(), []uint64{0xa000, 0xb000}; !slices.Equal(got, want) {
		t.Fatalf("marked pages %#x, want %#x", got, want)
	}
	must(t, m.e.Start(base, end, 0))
	if got := drain(); len(got) != 3 {
		t.Fatalf("after a drain the same stores list %#x again, want 3 pages", got)
	}
	if _, err := m.e.NewWriteLog(0x123, 4096); err == nil {
		t.Fatal("an unaligned range was accepted")
	}
}
