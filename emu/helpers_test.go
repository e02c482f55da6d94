package emu

import (
	"encoding/binary"
	"syscall"
	"testing"
)

// Physical layout of the paged test machine (4 MiB of mmap'd RAM at 0).
const (
	ramSize    = 4 << 20
	pml4Phys   = 0x1000
	pdptLow    = 0x2000
	pdLow      = 0x3000
	ptLow      = 0x4000
	pdptHigh   = 0x5000
	pdHigh     = 0x6000
	gdtPhys    = 0x8000
	stackTop   = 0x80000
	dataPhys   = 0x37000            // where the remapped 4 KiB page really lives
	remapVirt  = 0x100000           // virtual page the PTE sends to dataPhys
	kernelVirt = 0xffffffff81000000 // __START_KERNEL_map + 16 MiB, like Linux text
	kernelPhys = 0x200000           // 2 MiB page backing kernelVirt
	unmapVirt  = 0x600000           // PD entry 3 is not present
	kernelCS   = 0x10
	kernelDS   = 0x18
)

const (
	pteP  = 1 << 0
	pteW  = 1 << 1
	ptePS = 1 << 7
)

// machine is an engine plus its caller-owned RAM.
type machine struct {
	e   *Engine
	ram []byte
}

// newFlat opens a 64-bit engine without paging (Unicorn's initial flat long
// mode, virtual = physical) with ramSize bytes of mmap'd RAM at 0.
func newFlat(t testing.TB) *machine {
	t.Helper()
	e, err := Open(CPUDefault)
	if err != nil {
		t.Fatal(err)
	}
	ram, err := syscall.Mmap(-1, 0, ramSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		e.Close()
		t.Fatal(err)
	}
	// One cleanup, in this order: the engine must be gone before its RAM.
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Error(err)
		}
		syscall.Munmap(ram)
	})
	if err := e.MapPtr(0, ramSize, ProtAll, ram); err != nil {
		t.Fatal(err)
	}
	return &machine{e: e, ram: ram}
}

func (m *machine) put64(phys uint64, v uint64) {
	binary.LittleEndian.PutUint64(m.ram[phys:], v)
}

func (m *machine) get64(phys uint64) uint64 {
	return binary.LittleEndian.Uint64(m.ram[phys:])
}

// newPaged builds a 4-level page table, a GDT with a 64-bit kernel code
// segment, and switches the CPU to paged long mode at CPL 0:
//
//	virtual 0..2 MiB            -> 4 KiB pages, identity except
//	virtual remapVirt (4 KiB)   -> physical dataPhys
//	virtual 2..4 MiB            -> identity 2 MiB page
//	virtual kernelVirt (2 MiB)  -> physical kernelPhys
func newPaged(t testing.TB) *machine {
	t.Helper()
	m := newFlat(t)
	m.put64(pml4Phys+0*8, pdptLow|pteP|pteW)
	m.put64(pml4Phys+511*8, pdptHigh|pteP|pteW) // (kernelVirt>>39)&511 == 511
	m.put64(pdptLow+0*8, pdLow|pteP|pteW)
	m.put64(pdLow+0*8, ptLow|pteP|pteW)
	m.put64(pdLow+1*8, 0x200000|pteP|pteW|ptePS)
	for i := uint64(0); i < 512; i++ {
		m.put64(ptLow+i*8, i<<12|pteP|pteW)
	}
	m.put64(ptLow+(remapVirt>>12)*8, dataPhys|pteP|pteW)
	m.put64(pdptHigh+510*8, pdHigh|pteP|pteW) // (kernelVirt>>30)&511 == 510
	m.put64(pdHigh+8*8, kernelPhys|pteP|pteW|ptePS)

	m.put64(gdtPhys+2*8, 0x00af9b000000ffff) // 0x10: 64-bit code, DPL 0
	m.put64(gdtPhys+3*8, 0x00cf93000000ffff) // 0x18: data, DPL 0

	e := m.e
	must(t, e.SetDescTable(GDTR, DescTable{Base: gdtPhys, Limit: 4*8 - 1}))
	must(t, e.SetReg(CR4, 1<<5|1<<9|1<<10)) // PAE | OSFXSR | OSXMMEXCPT
	must(t, e.SetReg(CR3, pml4Phys))
	must(t, e.SetMSR(MSREFER, EFERSCE|EFERLME|EFERLMA|EFERNXE))
	must(t, e.SetReg(CR0, 1<<31|1<<16|1<<5|1<<4|1<<1|1<<0)) // PG|WP|NE|ET|MP|PE
	must(t, e.SetReg(CS, kernelCS))
	must(t, e.SetReg(SS, kernelDS))
	must(t, e.SetReg(DS, kernelDS))
	must(t, e.SetReg(ES, kernelDS))
	must(t, e.SetReg(RSP, stackTop))
	return m
}

// load copies code to physical address phys and returns the address just
// past it.
func (m *machine) load(phys uint64, code []byte) uint64 {
	copy(m.ram[phys:], code)
	return phys + uint64(len(code))
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func reg(t testing.TB, e *Engine, r Reg) uint64 {
	t.Helper()
	v, err := e.Reg(r)
	must(t, err)
	return v
}
