package emu

/*
#include "shim.h"
*/
import "C"

import "unsafe"

// Prot is a set of guest memory permissions.
type Prot uint32

// Permissions for Map, MapPtr and Protect.
const (
	ProtNone  Prot = C.UC_PROT_NONE
	ProtRead  Prot = C.UC_PROT_READ
	ProtWrite Prot = C.UC_PROT_WRITE
	ProtExec  Prot = C.UC_PROT_EXEC
	ProtAll   Prot = C.UC_PROT_ALL
)

// Region is one mapped guest-physical range; End is inclusive.
type Region struct {
	Begin, End uint64
	Perms      Prot
}

// Map maps size bytes of Unicorn-allocated, zeroed memory at guest-physical
// addr. addr and size must be 4 KiB aligned.
func (e *Engine) Map(addr, size uint64, perms Prot) error {
	if err := e.live(); err != nil {
		return err
	}
	return check("mem_map", C.uc_mem_map(e.uc, C.uint64_t(addr), C.size_t(size), C.uint32_t(perms)))
}

// MapPtr maps caller-owned memory at guest-physical addr; the guest then
// reads and writes mem directly. len(mem) must be at least size.
//
// Unicorn keeps the pointer, so mem must not be Go-heap memory (the garbage
// collector could move or free it): use memory from syscall.Mmap or C. The
// caller must keep it mapped until Unmap of the whole range or Close.
func (e *Engine) MapPtr(addr, size uint64, perms Prot, mem []byte) error {
	if err := e.live(); err != nil {
		return err
	}
	if uint64(len(mem)) < size || size == 0 {
		return &Error{Op: "mem_map_ptr", Code: C.UC_ERR_ARG}
	}
	// C keeps this pointer past the call, which cgo allows only because mem
	// is, by contract, not Go memory.
	p := unsafe.Pointer(unsafe.SliceData(mem))
	return check("mem_map_ptr", C.uc_mem_map_ptr(e.uc, C.uint64_t(addr), C.size_t(size), C.uint32_t(perms), p))
}

// Unmap removes the guest-physical range [addr, addr+size).
func (e *Engine) Unmap(addr, size uint64) error {
	if err := e.live(); err != nil {
		return err
	}
	return check("mem_unmap", C.uc_mem_unmap(e.uc, C.uint64_t(addr), C.size_t(size)))
}

// Protect changes the permissions of the guest-physical range
// [addr, addr+size). These are Unicorn's own checks, separate from the
// guest's page-table permissions.
func (e *Engine) Protect(addr, size uint64, perms Prot) error {
	if err := e.live(); err != nil {
		return err
	}
	return check("mem_protect", C.uc_mem_protect(e.uc, C.uint64_t(addr), C.size_t(size), C.uint32_t(perms)))
}

// ReadPhys fills buf from guest-physical memory at addr.
func (e *Engine) ReadPhys(addr uint64, buf []byte) error {
	if err := e.live(); err != nil {
		return err
	}
	if len(buf) == 0 {
		return nil
	}
	return check("mem_read", C.uc_mem_read(e.uc, C.uint64_t(addr), unsafe.Pointer(&buf[0]), C.size_t(len(buf))))
}

// WritePhys copies data to guest-physical memory at addr. Unicorn
// invalidates translated code covering the written range.
func (e *Engine) WritePhys(addr uint64, data []byte) error {
	if err := e.live(); err != nil {
		return err
	}
	if len(data) == 0 {
		return nil
	}
	return check("mem_write", C.uc_mem_write(e.uc, C.uint64_t(addr), unsafe.Pointer(&data[0]), C.size_t(len(data))))
}

// Regions lists the mapped guest-physical regions in address order.
func (e *Engine) Regions() ([]Region, error) {
	if err := e.live(); err != nil {
		return nil, err
	}
	var regs *C.uc_mem_region
	var n C.uint32_t
	if err := check("mem_regions", C.uc_mem_regions(e.uc, &regs, &n)); err != nil {
		return nil, err
	}
	if regs == nil {
		return nil, nil
	}
	defer C.uc_free(unsafe.Pointer(regs))
	out := make([]Region, n)
	for i, r := range unsafe.Slice(regs, n) {
		out[i] = Region{Begin: uint64(r.begin), End: uint64(r.end), Perms: Prot(r.perms)}
	}
	return out, nil
}
