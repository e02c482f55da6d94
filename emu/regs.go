package emu

/*
#include "shim.h"
*/
import "C"

import "unsafe"

// Reg is a Unicorn x86 register id.
type Reg int32

// General-purpose, instruction-pointer and flags registers.
const (
	RAX    Reg = C.UC_X86_REG_RAX
	RBX    Reg = C.UC_X86_REG_RBX
	RCX    Reg = C.UC_X86_REG_RCX
	RDX    Reg = C.UC_X86_REG_RDX
	RSI    Reg = C.UC_X86_REG_RSI
	RDI    Reg = C.UC_X86_REG_RDI
	RBP    Reg = C.UC_X86_REG_RBP
	RSP    Reg = C.UC_X86_REG_RSP
	R8     Reg = C.UC_X86_REG_R8
	R9     Reg = C.UC_X86_REG_R9
	R10    Reg = C.UC_X86_REG_R10
	R11    Reg = C.UC_X86_REG_R11
	R12    Reg = C.UC_X86_REG_R12
	R13    Reg = C.UC_X86_REG_R13
	R14    Reg = C.UC_X86_REG_R14
	R15    Reg = C.UC_X86_REG_R15
	RIP    Reg = C.UC_X86_REG_RIP
	RFLAGS Reg = C.UC_X86_REG_RFLAGS

	// 32- and 16-bit views, for engines opened in Mode32 or Mode16.
	EAX    Reg = C.UC_X86_REG_EAX
	EBX    Reg = C.UC_X86_REG_EBX
	ECX    Reg = C.UC_X86_REG_ECX
	EDX    Reg = C.UC_X86_REG_EDX
	ESI    Reg = C.UC_X86_REG_ESI
	EDI    Reg = C.UC_X86_REG_EDI
	EBP    Reg = C.UC_X86_REG_EBP
	ESP    Reg = C.UC_X86_REG_ESP
	EIP    Reg = C.UC_X86_REG_EIP
	EFLAGS Reg = C.UC_X86_REG_EFLAGS
	IP     Reg = C.UC_X86_REG_IP
)

// Control registers. Writing CR0, CR3 or CR4 goes through QEMU's update
// functions (mode switches, TLB flush). In Unicorn 2.1.1 writing CR2 also
// overwrites CR3 with the same value: write CR2 first, then CR3.
const (
	CR0 Reg = C.UC_X86_REG_CR0
	CR2 Reg = C.UC_X86_REG_CR2
	CR3 Reg = C.UC_X86_REG_CR3
	CR4 Reg = C.UC_X86_REG_CR4
	CR8 Reg = C.UC_X86_REG_CR8
)

// Segment selectors and the 64-bit segment bases. Writing a selector in
// protected/long mode loads the descriptor from the GDT (set GDTR first).
const (
	CS     Reg = C.UC_X86_REG_CS
	SS     Reg = C.UC_X86_REG_SS
	DS     Reg = C.UC_X86_REG_DS
	ES     Reg = C.UC_X86_REG_ES
	FS     Reg = C.UC_X86_REG_FS
	GS     Reg = C.UC_X86_REG_GS
	FSBase Reg = C.UC_X86_REG_FS_BASE
	GSBase Reg = C.UC_X86_REG_GS_BASE
)

// Descriptor-table registers, accessed with DescTable/SetDescTable.
const (
	GDTR Reg = C.UC_X86_REG_GDTR
	IDTR Reg = C.UC_X86_REG_IDTR
	LDTR Reg = C.UC_X86_REG_LDTR
	TR   Reg = C.UC_X86_REG_TR
)

// Model-specific register numbers for MSR/SetMSR.
const (
	MSREFER         uint32 = 0xc0000080
	MSRSTAR         uint32 = 0xc0000081
	MSRLSTAR        uint32 = 0xc0000082
	MSRCSTAR        uint32 = 0xc0000083
	MSRSyscallMask  uint32 = 0xc0000084
	MSRFSBase       uint32 = 0xc0000100
	MSRGSBase       uint32 = 0xc0000101
	MSRKernelGSBase uint32 = 0xc0000102
	MSRTSCAux       uint32 = 0xc0000103
	MSRPAT          uint32 = 0x00000277
	MSRAPICBase     uint32 = 0x0000001b
)

// EFER bits.
const (
	EFERSCE uint64 = 1 << 0  // syscall enable
	EFERLME uint64 = 1 << 8  // long mode enable
	EFERLMA uint64 = 1 << 10 // long mode active
	EFERNXE uint64 = 1 << 11 // no-execute enable
)

// Reg reads a register of at most 64 bits (GPRs, RIP, RFLAGS, CRn,
// selectors, FS/GS base). Narrower registers are zero-extended.
func (e *Engine) Reg(r Reg) (uint64, error) {
	if err := e.live(); err != nil {
		return 0, err
	}
	var v C.uint64_t
	if err := check("reg_read", C.uc_reg_read(e.uc, C.int(r), unsafe.Pointer(&v))); err != nil {
		return 0, err
	}
	return uint64(v), nil
}

// SetReg writes a register of at most 64 bits; narrower registers take the
// low bits of v.
func (e *Engine) SetReg(r Reg, v uint64) error {
	if err := e.live(); err != nil {
		return err
	}
	cv := C.uint64_t(v)
	return check("reg_write", C.uc_reg_write(e.uc, C.int(r), unsafe.Pointer(&cv)))
}

// Regs reads len(regs) registers into vals (which must be as long) in one
// call.
func (e *Engine) Regs(regs []Reg, vals []uint64) error {
	if err := e.live(); err != nil {
		return err
	}
	if len(vals) < len(regs) {
		return &Error{Op: "reg_read_batch", Code: C.UC_ERR_ARG}
	}
	if len(regs) == 0 {
		return nil
	}
	return check("reg_read_batch", C.hb_reg_read_batch(e.uc,
		(*C.int)(unsafe.Pointer(&regs[0])), (*C.uint64_t)(unsafe.Pointer(&vals[0])), C.int(len(regs))))
}

// SetRegs writes vals[i] to regs[i] in order, in one call.
func (e *Engine) SetRegs(regs []Reg, vals []uint64) error {
	if err := e.live(); err != nil {
		return err
	}
	if len(vals) < len(regs) {
		return &Error{Op: "reg_write_batch", Code: C.UC_ERR_ARG}
	}
	if len(regs) == 0 {
		return nil
	}
	return check("reg_write_batch", C.hb_reg_write_batch(e.uc,
		(*C.int)(unsafe.Pointer(&regs[0])), (*C.uint64_t)(unsafe.Pointer(&vals[0])), C.int(len(regs))))
}

// MSR reads model-specific register id (e.g. MSRKernelGSBase).
func (e *Engine) MSR(id uint32) (uint64, error) {
	if err := e.live(); err != nil {
		return 0, err
	}
	m := C.uc_x86_msr{rid: C.uint32_t(id)}
	if err := check("msr_read", C.uc_reg_read(e.uc, C.UC_X86_REG_MSR, unsafe.Pointer(&m))); err != nil {
		return 0, err
	}
	return uint64(m.value), nil
}

// SetMSR writes model-specific register id.
func (e *Engine) SetMSR(id uint32, v uint64) error {
	if err := e.live(); err != nil {
		return err
	}
	m := C.uc_x86_msr{rid: C.uint32_t(id), value: C.uint64_t(v)}
	return check("msr_write", C.uc_reg_write(e.uc, C.UC_X86_REG_MSR, unsafe.Pointer(&m)))
}

// DescTable is the value of GDTR, IDTR, LDTR or TR. Selector and Flags
// (descriptor attribute bits, as in QEMU's SegmentCache) apply to LDTR and
// TR only.
type DescTable struct {
	Selector uint16
	Base     uint64
	Limit    uint32
	Flags    uint32
}

// DescTable reads GDTR, IDTR, LDTR or TR.
func (e *Engine) DescTable(r Reg) (DescTable, error) {
	if err := e.live(); err != nil {
		return DescTable{}, err
	}
	var m C.uc_x86_mmr
	if err := check("reg_read", C.uc_reg_read(e.uc, C.int(r), unsafe.Pointer(&m))); err != nil {
		return DescTable{}, err
	}
	return DescTable{Selector: uint16(m.selector), Base: uint64(m.base), Limit: uint32(m.limit), Flags: uint32(m.flags)}, nil
}

// SetDescTable writes GDTR, IDTR, LDTR or TR.
func (e *Engine) SetDescTable(r Reg, d DescTable) error {
	if err := e.live(); err != nil {
		return err
	}
	m := C.uc_x86_mmr{
		selector: C.uint16_t(d.Selector),
		base:     C.uint64_t(d.Base),
		limit:    C.uint32_t(d.Limit),
		flags:    C.uint32_t(d.Flags),
	}
	return check("reg_write", C.uc_reg_write(e.uc, C.int(r), unsafe.Pointer(&m)))
}
