package emu

// Unicorn 2.1.1 executes SYSRET and IRET natively, privilege change included (CPL 0 -> 3), but
// never makes the opposite change: its SYSCALL helper calls the HookSyscall hooks and steps over
// the instruction (no STAR/LSTAR transfer), and exceptions stop at HookInterrupt instead of going
// through the IDT. So an executor that emulates the kernel entry must load the kernel's CS and SS
// and lower the CPL itself. QEMU keeps the CPL in hflags (bits 0-1, copied from SS's DPL whenever
// the SS cache is loaded) and the hidden segment caches in CPUX86State; neither is reachable through
// Unicorn's API, so SetPrivilege edits them in the context blob, as ClearException does for
// old_exception. Their offsets are found once per process by diffing contexts around a real
// SYSRETQ in a scratch engine and validated by running a privileged instruction before and after
// an edit; a build where that is not conclusive is refused rather than guessed at.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"syscall"
)

// SegCache is the hidden part of a segment register as QEMU keeps it (SegmentCache): what a
// descriptor load leaves behind, used by the CPU instead of the GDT.
type SegCache struct {
	Selector uint32
	Base     uint64
	Limit    uint32
	Flags    uint32 // Desc* bits: the descriptor's second dword, base and limit bits included
}

// SegCache.Flags bits, at the positions they have in a descriptor's second dword.
const (
	DescA        = 1 << 8
	DescRW       = 1 << 9 // readable for code, writable for data
	DescCS       = 1 << 11
	DescS        = 1 << 12
	DescDPLShift = 13
	DescP        = 1 << 15
	DescL        = 1 << 21
	DescB        = 1 << 22
	DescG        = 1 << 23
)

// SyscallCS and SyscallSS are the caches a long-mode SYSCALL loads (DPL 0, flat). The caller sets
// the selectors: CS = STAR[47:32] &^ 3, SS = CS + 8.
var (
	SyscallCS = SegCache{Limit: 0xffffffff, Flags: DescG | DescP | DescS | DescCS | DescRW | DescA | DescL}
	SyscallSS = SegCache{Limit: 0xffffffff, Flags: DescG | DescB | DescP | DescS | DescRW | DescA}
)

// hflags bits (QEMU's HF_*_MASK) that a CS or SS cache load reads or recomputes in long mode.
const (
	hfCPL    = 3
	hfCS32   = 1 << 4
	hfSS32   = 1 << 5
	hfAddSeg = 1 << 6
	hfLMA    = 1 << 14
	hfCS64   = 1 << 15
)

const segCacheSize = 24 // selector, 4 bytes padding, base, limit, flags

// cplLayout holds blob offsets of hflags and the CS and SS caches.
type cplLayout struct{ hflags, cs, ss int }

var (
	cplOnce sync.Once
	cplOff  cplLayout // immutable after cplOnce
	cplErr  error
)

func cplOffsets() (cplLayout, error) {
	cplOnce.Do(func() { cplOff, cplErr = calibrateCPL() })
	return cplOff, cplErr
}

// SetPrivilege loads the CS and SS caches and makes ss's DPL the CPL, as an entry through SYSCALL
// or an interrupt gate does; pass an SS with Flags 0 for the NULL SS of a 64-bit interrupt to
// CPL 0. The GDT is not read. With clearExc it also resets old_exception (see ClearException) in
// the same context round trip, which is what delivering an exception to the kernel needs.
//
// Only a 64-bit code segment (DescL) in long mode is accepted: elsewhere QEMU's hflags also depend
// on the data segment bases, which this edit does not recompute. SetReg(CS) and SetReg(SS) are no
// substitute: in 64-bit mode they change only the visible selector. RIP, RSP and RFLAGS are left
// to the caller; it works from interrupt and syscall hooks.
func (e *Engine) SetPrivilege(cs, ss SegCache, clearExc bool) error {
	l, err := cplOffsets()
	if err != nil {
		return err
	}
	excOff := -1
	if clearExc {
		if excOff, err = oldExceptionOffset(); err != nil {
			return err
		}
	}
	return e.editContext(func(b []byte) error {
		if err := l.setPrivilege(b, cs, ss); err != nil {
			return err
		}
		if excOff >= 0 {
			binary.LittleEndian.PutUint32(b[excOff:], 0xffffffff)
		}
		return nil
	})
}

// CPL returns the current privilege level, e.g. for an interrupt hook to tell a user-mode fault
// from a kernel one. It costs a context save, about as much as ClearException.
func (e *Engine) CPL() (int, error) {
	l, err := cplOffsets()
	if err != nil {
		return 0, err
	}
	b, err := e.saveState()
	if err != nil {
		return 0, err
	}
	return int(binary.LittleEndian.Uint32(b[l.hflags:]) & hfCPL), nil
}

// setPrivilege does in blob b what QEMU's cpu_x86_load_seg_cache does for CS, then SS, in 64-bit
// mode.
func (l cplLayout) setPrivilege(b []byte, cs, ss SegCache) error {
	h := binary.LittleEndian.Uint32(b[l.hflags:])
	if h&hfLMA == 0 {
		return errors.New("emu: SetPrivilege: CPU is not in long mode")
	}
	if cs.Flags&DescL == 0 {
		return fmt.Errorf("emu: SetPrivilege: code segment %#x is not 64-bit (DescL clear)", cs.Selector)
	}
	putSegCache(b[l.cs:], cs)
	putSegCache(b[l.ss:], ss)
	h = h&^(hfCPL|hfSS32|hfAddSeg) | hfCS32 | hfCS64 | ss.Flags>>DescDPLShift&hfCPL
	if ss.Flags&DescB != 0 {
		h |= hfSS32
	}
	binary.LittleEndian.PutUint32(b[l.hflags:], h)
	return nil
}

func putSegCache(b []byte, s SegCache) {
	binary.LittleEndian.PutUint32(b[0:], s.Selector)
	binary.LittleEndian.PutUint64(b[8:], s.Base)
	binary.LittleEndian.PutUint32(b[16:], s.Limit)
	binary.LittleEndian.PutUint32(b[20:], s.Flags)
}

func segCacheAt(b []byte, at int) SegCache {
	return SegCache{
		Selector: binary.LittleEndian.Uint32(b[at:]),
		Base:     binary.LittleEndian.Uint64(b[at+8:]),
		Limit:    binary.LittleEndian.Uint32(b[at+16:]),
		Flags:    binary.LittleEndian.Uint32(b[at+20:]),
	}
}

// Selectors and caches of the calibration's SYSRETQ. STAR[63:48] = 0x23 makes SYSRETQ load
// CS 0x33 and SS 0x2b, with fixed flat DPL 3 caches (QEMU's helper_sysret).
const (
	calKernelCS = 0x10
	calKernelSS = 0x18
	calSTAR     = 0x0023_0000_0000_0000 | calKernelCS<<32
)

var (
	calUserCS = SegCache{Selector: 0x33, Limit: 0xffffffff, Flags: DescG | DescL | DescP | 3<<DescDPLShift | DescS | DescCS | DescRW | DescA}
	calUserSS = SegCache{Selector: 0x2b, Limit: 0xffffffff, Flags: DescG | DescB | DescP | 3<<DescDPLShift | DescS | DescRW | DescA}
)

// findCPLFields picks the fields a SYSRETQ changed between state blobs b0 and b1: hflags (only
// the CPL bits, 0 -> 3, in 64-bit mode) and the CS and SS caches (kernel selector -> the exact
// cache SYSRETQ loads). It wants exactly one candidate for each.
func findCPLFields(b0, b1 []byte, from int) (cplLayout, error) {
	var hf, cs, ss []int
	for o := from; o+4 <= len(b0) && o+4 <= len(b1); o += 4 {
		x0, x1 := binary.LittleEndian.Uint32(b0[o:]), binary.LittleEndian.Uint32(b1[o:])
		if x0&hfCPL == 0 && x1 == x0|3 && x0&(hfLMA|hfCS64) == hfLMA|hfCS64 {
			hf = append(hf, o)
		}
		if o+segCacheSize > len(b0) || o+segCacheSize > len(b1) {
			continue
		}
		if x0 == calKernelCS && segCacheAt(b1, o) == calUserCS {
			cs = append(cs, o)
		}
		if x0 == calKernelSS && segCacheAt(b1, o) == calUserSS {
			ss = append(ss, o)
		}
	}
	if len(hf) != 1 || len(cs) != 1 || len(ss) != 1 {
		return cplLayout{}, fmt.Errorf("want one candidate each, have hflags %#x, CS cache %#x, SS cache %#x", hf, cs, ss)
	}
	// QEMU's segs[] is ES, CS, SS, ...: two unrelated matches would not be neighbours.
	if ss[0] != cs[0]+segCacheSize {
		return cplLayout{}, fmt.Errorf("CS cache at %#x and SS cache at %#x are not adjacent", cs[0], ss[0])
	}
	return cplLayout{hflags: hf[0], cs: cs[0], ss: ss[0]}, nil
}

// calibrateCPL runs SYSRETQ from CPL 0 in a paged scratch engine, finds the fields it changed, and
// checks that they are the ones the translator acts on: "mov rax, cr3" raises #GP after the
// SYSRETQ and runs once the fields are edited back to the kernel's.
func calibrateCPL() (cplLayout, error) {
	const (
		ramSize          = 2 << 20
		pml4, pdpt, pd   = 0x1000, 0x2000, 0x3000
		gdt              = 0x4000
		kcode, ucode     = 0x10000, 0x11000
		pteP, pteW, pteU = 1, 2, 4
		pagePS           = 1 << 7
	)
	fail := func(format string, args ...any) (cplLayout, error) {
		return cplLayout{}, fmt.Errorf("emu: cannot locate CPL and the CS/SS caches in Unicorn's context (unsupported Unicorn build?): "+format, args...)
	}
	e, err := Open(CPUDefault)
	if err != nil {
		return cplLayout{}, err
	}
	ram, err := syscall.Mmap(-1, 0, ramSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		e.Close()
		return cplLayout{}, fmt.Errorf("emu: calibration memory: %w", err)
	}
	defer syscall.Munmap(ram)
	defer e.Close()
	put := func(at, v uint64) { binary.LittleEndian.PutUint64(ram[at:], v) }
	put(pml4, pdpt|pteP|pteW|pteU)
	put(pdpt, pd|pteP|pteW|pteU)
	put(pd, 0|pteP|pteW|pteU|pagePS) // 0..2 MiB identity, user-accessible
	put(gdt+2*8, 0x00af9b000000ffff) // calKernelCS: 64-bit code, DPL 0
	put(gdt+3*8, 0x00cf93000000ffff) // calKernelSS: data, DPL 0
	sysretq := []byte{0x48, 0x0f, 0x07}
	movCR3 := []byte{0x0f, 0x20, 0xd8} // mov rax, cr3
	copy(ram[kcode:], sysretq)
	copy(ram[ucode:], movCR3)
	var vectors []uint32
	steps := []error{
		e.MapPtr(0, ramSize, ProtAll, ram),
		e.SetDescTable(GDTR, DescTable{Base: gdt, Limit: 4*8 - 1}),
		e.SetReg(CR4, 1<<5),
		e.SetReg(CR3, pml4),
		e.SetMSR(MSREFER, EFERSCE|EFERLME|EFERLMA),
		e.SetReg(CR0, 1<<31|1<<0),
		e.SetReg(CS, calKernelCS),
		e.SetReg(SS, calKernelSS),
		e.SetReg(RSP, 0x8000),
		e.SetMSR(MSRSTAR, calSTAR),
		e.SetReg(RCX, ucode),
		e.SetReg(R11, 0x202),
	}
	if _, err := e.HookInterrupt(func(v uint32) { vectors = append(vectors, v); e.Stop() }); err != nil {
		steps = append(steps, err)
	}
	if err := errors.Join(steps...); err != nil {
		return cplLayout{}, fmt.Errorf("emu: calibration setup: %w", err)
	}
	before, err := e.ContextSave()
	if err != nil {
		return cplLayout{}, err
	}
	defer before.Free()
	if err := e.Start(kcode, ucode, 0); err != nil {
		return cplLayout{}, fmt.Errorf("emu: calibration run: %w", err)
	}
	if rip, err := e.Reg(RIP); err != nil || rip != ucode || len(vectors) != 0 {
		return fail("SYSRETQ ended at rip %#x with vectors %v (%v), want %#x and none", rip, vectors, err, ucode)
	}
	after, err := e.ContextSave()
	if err != nil {
		return cplLayout{}, err
	}
	defer after.Free()
	l, err := findCPLFields(before.Bytes(), after.Bytes(), before.HeaderLen())
	if err != nil {
		return fail("%v", err)
	}

	if err := e.Start(ucode, ucode+uint64(len(movCR3)), 0); err != nil {
		return cplLayout{}, fmt.Errorf("emu: calibration run: %w", err)
	}
	if len(vectors) != 1 || vectors[0] != 13 {
		return fail("mov from CR3 after SYSRETQ gave vectors %v, want [13]", vectors)
	}
	dpl3 := uint32(3 << DescDPLShift)
	kcs := SegCache{Selector: calKernelCS, Limit: 0xffffffff, Flags: calUserCS.Flags &^ dpl3}
	kss := SegCache{Selector: calKernelSS, Limit: 0xffffffff, Flags: calUserSS.Flags &^ dpl3}
	if err := e.editContext(func(b []byte) error { return l.setPrivilege(b, kcs, kss) }); err != nil {
		return cplLayout{}, err
	}
	if err := e.Start(ucode, ucode+uint64(len(movCR3)), 0); err != nil {
		return cplLayout{}, fmt.Errorf("emu: calibration run: %w", err)
	}
	if rax, err := e.Reg(RAX); err != nil || rax != pml4 || len(vectors) != 1 {
		return fail("mov from CR3 after editing CPL to 0 gave rax %#x, vectors %v (%v)", rax, vectors, err)
	}
	return l, nil
}
