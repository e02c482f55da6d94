package taint

import (
	"encoding/binary"
	"syscall"
	"testing"

	"hybridbridge/emu"
	"hybridbridge/vmm"
)

// Physical layout of the paged test machine: 8 MiB of mmap'd RAM at 0.
// Virtual memory mirrors a kernel's: low identity pages stand in for the
// direct map, a 2 MiB "kernel image" at kernelVirt holds code and globals.
const (
	ramSize    = 8 << 20
	pml4Phys   = 0x1000
	pdptLow    = 0x2000
	pdLow      = 0x3000
	ptLow      = 0x4000
	pdptHigh   = 0x5000
	pdHigh     = 0x6000
	gdtPhys    = 0x8000
	percpuPhys = 0x20000            // gs base (identity-mapped)
	stackTop   = 0x80000            // initial RSP
	remapVirt  = 0x100000           // virtual page the PTE sends to remapPhys
	remapPhys  = 0x37000            // where it really lives
	gvmBegin   = 0x400000           // [gvmBegin, gvmEnd) stands in for the GVM overlay
	gvmEnd     = 0x600000           //
	kernelVirt = 0xffffffff81000000 // like Linux text
	kernelPhys = 0x200000           // 2 MiB page backing kernelVirt
	dataVirt   = kernelVirt + 0x100000
	dataPhys   = kernelPhys + 0x100000
	kernelCS   = 0x10
	kernelDS   = 0x18
)

const (
	pteP  = vmm.PTEPresent
	pteW  = vmm.PTEWrite
	ptePS = vmm.PTEPageSize
)

type machine struct {
	e   *emu.Engine
	ram []byte
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func (m *machine) put64(phys, v uint64) { binary.LittleEndian.PutUint64(m.ram[phys:], v) }
func (m *machine) get64(phys uint64) uint64 {
	return binary.LittleEndian.Uint64(m.ram[phys:])
}

// newMachine opens an engine in paged long mode at CPL 0:
//
//	virtual 0..2 MiB           -> 4 KiB pages, identity except remapVirt -> remapPhys
//	virtual 2..8 MiB           -> identity 2 MiB pages
//	virtual kernelVirt (2 MiB) -> physical kernelPhys
func newMachine(t testing.TB) *machine {
	t.Helper()
	e, err := emu.Open(emu.CPUDefault)
	must(t, err)
	ram, err := syscall.Mmap(-1, 0, ramSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		e.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Error(err)
		}
		syscall.Munmap(ram)
	})
	must(t, e.MapPtr(0, ramSize, emu.ProtAll, ram))
	m := &machine{e: e, ram: ram}
	m.put64(pml4Phys+0*8, pdptLow|pteP|pteW)
	m.put64(pml4Phys+511*8, pdptHigh|pteP|pteW)
	m.put64(pdptLow+0*8, pdLow|pteP|pteW)
	m.put64(pdLow+0*8, ptLow|pteP|pteW)
	for i := uint64(1); i < ramSize>>21; i++ {
		m.put64(pdLow+i*8, i<<21|pteP|pteW|ptePS)
	}
	for i := uint64(0); i < 512; i++ {
		m.put64(ptLow+i*8, i<<12|pteP|pteW)
	}
	m.put64(ptLow+(remapVirt>>12)*8, remapPhys|pteP|pteW)
	m.put64(pdptHigh+510*8, pdHigh|pteP|pteW)
	m.put64(pdHigh+8*8, kernelPhys|pteP|pteW|ptePS)
	m.put64(gdtPhys+2*8, 0x00af9b000000ffff)
	m.put64(gdtPhys+3*8, 0x00cf93000000ffff)

	must(t, e.SetDescTable(emu.GDTR, emu.DescTable{Base: gdtPhys, Limit: 4*8 - 1}))
	must(t, e.SetReg(emu.CR4, 1<<5|1<<9|1<<10)) // PAE | OSFXSR | OSXMMEXCPT
	must(t, e.SetReg(emu.CR3, pml4Phys))
	must(t, e.SetMSR(emu.MSREFER, emu.EFERSCE|emu.EFERLME|emu.EFERLMA|emu.EFERNXE))
	must(t, e.SetReg(emu.CR0, 1<<31|1<<16|1<<5|1<<4|1<<1|1<<0))
	must(t, e.SetReg(emu.CS, kernelCS))
	must(t, e.SetReg(emu.SS, kernelDS))
	must(t, e.SetReg(emu.DS, kernelDS))
	must(t, e.SetReg(emu.ES, kernelDS))
	must(t, e.SetReg(emu.RSP, stackTop))
	must(t, e.SetReg(emu.GSBase, percpuPhys))
	return m
}

// loadCode places code at the start of the kernel image and returns the
// virtual addresses of its first byte and of the byte after it.
func (m *machine) loadCode(code []byte) (begin, end uint64) {
	copy(m.ram[kernelPhys:], code)
	return kernelVirt, kernelVirt + uint64(len(code))
}
