package emu

// C→Go trampolines called from shim.c. cgo forbids C definitions in a file
// with //export, so they live here alone. Each resolves the hook id passed
// as user_data and calls the Go callback, turning a panic into a stop.

/*
#include "shim.h"
*/
import "C"

//export hbGoCode
func hbGoCode(id C.uintptr_t, addr C.uint64_t, size C.uint32_t) {
	if h := lookupHook(uintptr(id)); h != nil {
		defer h.e.recoverHook()
		h.code(uint64(addr), uint32(size))
	}
}

//export hbGoMem
func hbGoMem(id C.uintptr_t, typ C.int, addr C.uint64_t, size C.int, value C.int64_t) {
	if h := lookupHook(uintptr(id)); h != nil {
		defer h.e.recoverHook()
		h.mem(MemAccess(typ), uint64(addr), int(size), int64(value))
	}
}

//export hbGoMemInvalid
func hbGoMemInvalid(id C.uintptr_t, typ C.int, addr C.uint64_t, size C.int, value C.int64_t) (handled C.bool) {
	if h := lookupHook(uintptr(id)); h != nil {
		defer h.e.recoverHook()
		return C.bool(h.memFault(MemAccess(typ), uint64(addr), int(size), int64(value)))
	}
	return false
}

//export hbGoIntr
func hbGoIntr(id C.uintptr_t, intno C.uint32_t) {
	if h := lookupHook(uintptr(id)); h != nil {
		defer h.e.recoverHook()
		h.intr(uint32(intno))
	}
}

//export hbGoIn
func hbGoIn(id C.uintptr_t, port C.uint32_t, size C.int) (v C.uint32_t) {
	if h := lookupHook(uintptr(id)); h != nil {
		defer h.e.recoverHook()
		return C.uint32_t(h.in(uint32(port), int(size)))
	}
	return 0
}

//export hbGoOut
func hbGoOut(id C.uintptr_t, port C.uint32_t, size C.int, value C.uint32_t) {
	if h := lookupHook(uintptr(id)); h != nil {
		defer h.e.recoverHook()
		h.out(uint32(port), int(size), uint32(value))
	}
}

//export hbGoSyscall
func hbGoSyscall(id C.uintptr_t) {
	if h := lookupHook(uintptr(id)); h != nil {
		defer h.e.recoverHook()
		h.insn()
	}
}

//export hbGoCPUID
func hbGoCPUID(id C.uintptr_t) (skip C.int) {
	if h := lookupHook(uintptr(id)); h != nil {
		defer h.e.recoverHook()
		if h.cpuid() {
			return 1
		}
	}
	return 0
}

//export hbGoInsnInvalid
func hbGoInsnInvalid(id C.uintptr_t) (handled C.bool) {
	if h := lookupHook(uintptr(id)); h != nil {
		defer h.e.recoverHook()
		return C.bool(h.insnInvalid())
	}
	return false
}

//export hbGoTraceFull
func hbGoTraceFull(id C.uintptr_t) {
	if h := lookupHook(uintptr(id)); h != nil {
		defer h.e.recoverHook()
		h.trace.flushFull()
	}
}
