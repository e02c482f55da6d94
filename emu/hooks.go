package emu

/*
#include "shim.h"
*/
import "C"

import (
	"runtime/debug"
	"sync"
	"sync/atomic"
)

// Hook identifies an installed hook for HookDel.
type Hook uint64

// MemAccess is the kind of memory access reported to a memory hook.
type MemAccess int

// Memory access kinds (Unicorn's uc_mem_type).
const (
	MemRead          MemAccess = C.UC_MEM_READ
	MemWrite         MemAccess = C.UC_MEM_WRITE
	MemFetch         MemAccess = C.UC_MEM_FETCH
	MemReadUnmapped  MemAccess = C.UC_MEM_READ_UNMAPPED
	MemWriteUnmapped MemAccess = C.UC_MEM_WRITE_UNMAPPED
	MemFetchUnmapped MemAccess = C.UC_MEM_FETCH_UNMAPPED
	MemWriteProt     MemAccess = C.UC_MEM_WRITE_PROT
	MemReadProt      MemAccess = C.UC_MEM_READ_PROT
	MemFetchProt     MemAccess = C.UC_MEM_FETCH_PROT
	MemReadAfter     MemAccess = C.UC_MEM_READ_AFTER
)

// MemHookType is a set of memory events a hook subscribes to.
type MemHookType int

// Memory hook event sets. HookMem takes the valid-access ones, HookMemInvalid
// the unmapped/protection ones.
const (
	HookMemRead          MemHookType = C.UC_HOOK_MEM_READ
	HookMemWrite         MemHookType = C.UC_HOOK_MEM_WRITE
	HookMemFetch         MemHookType = C.UC_HOOK_MEM_FETCH
	HookMemReadAfter     MemHookType = C.UC_HOOK_MEM_READ_AFTER
	HookMemReadUnmapped  MemHookType = C.UC_HOOK_MEM_READ_UNMAPPED
	HookMemWriteUnmapped MemHookType = C.UC_HOOK_MEM_WRITE_UNMAPPED
	HookMemFetchUnmapped MemHookType = C.UC_HOOK_MEM_FETCH_UNMAPPED
	HookMemReadProt      MemHookType = C.UC_HOOK_MEM_READ_PROT
	HookMemWriteProt     MemHookType = C.UC_HOOK_MEM_WRITE_PROT
	HookMemFetchProt     MemHookType = C.UC_HOOK_MEM_FETCH_PROT

	HookMemValid    = HookMemRead | HookMemWrite | HookMemFetch
	HookMemUnmapped = HookMemReadUnmapped | HookMemWriteUnmapped | HookMemFetchUnmapped
	HookMemProt     = HookMemReadProt | HookMemWriteProt | HookMemFetchProt
	HookMemAnyFault = HookMemUnmapped | HookMemProt
)

// Ranged hooks fire for addresses in [begin, end]; Unicorn treats begin >
// end as "everywhere", e.g. HookCode(1, 0, fn).
const (
	validMemHooks    = HookMemValid | HookMemReadAfter
	invalidMemHooks  = HookMemAnyFault
	allAddressBegin  = 1
	allAddressEnd    = 0
	hookInsnNone     = 0
	errHookTypeRange = C.UC_ERR_HOOK
)

// Callback types.
type (
	// CodeFunc receives the virtual address and size of an instruction
	// (or, for block hooks, of a translation block).
	CodeFunc func(addr uint64, size uint32)
	// MemFunc receives a guest-physical access; value is the stored value
	// for writes.
	MemFunc func(access MemAccess, addr uint64, size int, value int64)
	// MemFaultFunc handles an unmapped or protection fault at a
	// guest-physical address. Returning true resumes the access, which
	// only works if the hook mapped/unprotected the memory; false stops
	// Start with the matching error.
	MemFaultFunc func(access MemAccess, addr uint64, size int, value int64) bool
	// IntrFunc receives an interrupt or exception vector (14 = #PF).
	IntrFunc func(vector uint32)
	// InFunc returns the value an IN instruction reads from port
	// (size 1, 2 or 4 bytes).
	InFunc func(port uint32, size int) uint32
	// OutFunc receives an OUT instruction's port, size and value.
	OutFunc func(port uint32, size int, value uint32)
	// InsnFunc is called for SYSCALL.
	InsnFunc func()
	// CPUIDFunc is called before CPUID executes; return true after setting
	// RAX/RBX/RCX/RDX yourself to skip the instruction.
	CPUIDFunc func() bool
	// InvalidInsnFunc is called for an undefined opcode (ud2, #UD), with
	// RIP at the instruction. Returning false ends Start with
	// ErrInsnInvalid. Returning true raises #UD as vector 6 to the
	// interrupt hook (ErrException if there is none), which must move RIP
	// past the instruction (as Linux's WARN handling does) or call Stop.
	InvalidInsnFunc func() bool
)

// hookEntry is what a hook id resolves to inside the C→Go trampolines.
type hookEntry struct {
	e   *Engine
	uch C.uc_hook

	code        CodeFunc
	mem         MemFunc
	memFault    MemFaultFunc
	intr        IntrFunc
	in          InFunc
	out         OutFunc
	insn        InsnFunc
	cpuid       CPUIDFunc
	insnInvalid InvalidInsnFunc
	trace       *TraceBuffer
}

// registry maps the integer ids handed to C as user_data back to Go hooks.
// Lookups happen once per hooked instruction, so readers take no lock: the
// map is replaced wholesale (copy-on-write) under mu when hooks change,
// which is rare and happens before emulation.
var registry struct {
	mu   sync.Mutex
	next Hook
	m    atomic.Pointer[map[Hook]*hookEntry]
}

func registerHook(h *hookEntry) Hook {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	registry.next++
	id := registry.next
	old := registry.m.Load()
	m := make(map[Hook]*hookEntry, 1+lenMap(old))
	if old != nil {
		for k, v := range *old {
			m[k] = v
		}
	}
	m[id] = h
	registry.m.Store(&m)
	return id
}

func unregisterHook(id Hook) {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	old := registry.m.Load()
	if old == nil {
		return
	}
	m := make(map[Hook]*hookEntry, len(*old))
	for k, v := range *old {
		if k != id {
			m[k] = v
		}
	}
	registry.m.Store(&m)
}

func lenMap(m *map[Hook]*hookEntry) int {
	if m == nil {
		return 0
	}
	return len(*m)
}

// lookupHook returns the live hook for id, or nil once the hook was deleted
// or a hook of its engine panicked during the current Start (Unicorn may
// still call hooks of the current instruction after uc_emu_stop).
func lookupHook(id uintptr) *hookEntry {
	m := registry.m.Load()
	if m == nil {
		return nil
	}
	h := (*m)[Hook(id)]
	if h == nil || h.e.panicked.Load() {
		return nil
	}
	return h
}

// recoverHook is deferred by every trampoline: a panicking hook becomes a
// stop reason for Start instead of unwinding through C frames (which would
// crash the process).
func (e *Engine) recoverHook() {
	if r := recover(); r != nil {
		e.notePanic(r, debug.Stack())
	}
}

func (e *Engine) notePanic(v any, stack []byte) {
	if e.panicked.CompareAndSwap(false, true) {
		e.panicErr = &HookPanicError{Value: v, Stack: stack}
	}
	if e.uc != nil {
		C.uc_emu_stop(e.uc)
	}
}

// addHook installs h in Unicorn for the given hook type and remembers it.
func (e *Engine) addHook(h *hookEntry, typ C.int, kind C.int, begin, end uint64, insn C.int) (Hook, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return 0, ErrClosed
	}
	h.e = e
	id := registerHook(h)
	rc := C.hb_hook_add(e.uc, &h.uch, typ, kind, C.uintptr_t(id), C.uint64_t(begin), C.uint64_t(end), insn)
	if rc != C.UC_ERR_OK {
		unregisterHook(id)
		return 0, newError("hook_add", rc)
	}
	e.hooks[id] = h
	return id, nil
}

// HookCode calls fn before each instruction whose virtual address is in
// [begin, end] (begin > end: everywhere). A Go call per instruction costs
// roughly 40 ns; see TraceBuffer for bulk tracing.
//
// Install hooks before the first Start where possible: Unicorn decides at
// translation time which hooks a block calls. (Hooks added between Starts
// did fire in this package's tests, but that is not a documented promise.)
func (e *Engine) HookCode(begin, end uint64, fn CodeFunc) (Hook, error) {
	return e.addHook(&hookEntry{code: fn}, C.UC_HOOK_CODE, C.HB_CB_CODE, begin, end, hookInsnNone)
}

// HookBlock calls fn at the start of each translation block whose virtual
// address is in [begin, end]; size is the block's size.
func (e *Engine) HookBlock(begin, end uint64, fn CodeFunc) (Hook, error) {
	return e.addHook(&hookEntry{code: fn}, C.UC_HOOK_BLOCK, C.HB_CB_CODE, begin, end, hookInsnNone)
}

// HookMem calls fn for successful accesses of the given types (a subset of
// HookMemValid|HookMemReadAfter) whose guest-physical address is in
// [begin, end].
func (e *Engine) HookMem(types MemHookType, begin, end uint64, fn MemFunc) (Hook, error) {
	if types == 0 || types&^validMemHooks != 0 {
		return 0, &Error{Op: "hook_add", Code: errHookTypeRange}
	}
	return e.addHook(&hookEntry{mem: fn}, C.int(types), C.HB_CB_MEM, begin, end, hookInsnNone)
}

// HookMemFault calls fn for unmapped or protection faults of the given types
// (a subset of HookMemAnyFault) at guest-physical addresses in [begin, end].
func (e *Engine) HookMemFault(types MemHookType, begin, end uint64, fn MemFaultFunc) (Hook, error) {
	if types == 0 || types&^invalidMemHooks != 0 {
		return 0, &Error{Op: "hook_add", Code: errHookTypeRange}
	}
	return e.addHook(&hookEntry{memFault: fn}, C.int(types), C.HB_CB_MEM_INVALID, begin, end, hookInsnNone)
}

// HookInterrupt calls fn for every interrupt and CPU exception (int n,
// #PF, #GP, #DE, ...). Exceptions do not go through the guest IDT; on
// return a fault is retried at the same RIP unless fn changed the state or
// called Stop. #UD reaches fn only if a HookInvalidInsn hook returns true.
// See the package doc about old_exception and #DF.
func (e *Engine) HookInterrupt(fn IntrFunc) (Hook, error) {
	return e.addHook(&hookEntry{intr: fn}, C.UC_HOOK_INTR, C.HB_CB_INTR, allAddressBegin, allAddressEnd, hookInsnNone)
}

// HookIn handles IN instructions: fn returns the value read.
func (e *Engine) HookIn(fn InFunc) (Hook, error) {
	return e.addHook(&hookEntry{in: fn}, C.UC_HOOK_INSN, C.HB_CB_IN, allAddressBegin, allAddressEnd, C.UC_X86_INS_IN)
}

// HookOut receives OUT instructions.
func (e *Engine) HookOut(fn OutFunc) (Hook, error) {
	return e.addHook(&hookEntry{out: fn}, C.UC_HOOK_INSN, C.HB_CB_OUT, allAddressBegin, allAddressEnd, C.UC_X86_INS_OUT)
}

// HookSyscall is called for SYSCALL instructions instead of the
// architectural transfer through MSR_LSTAR. In fn RIP is the SYSCALL's
// address, and Unicorn adds its length (2) after fn returns: to enter a
// kernel, set RIP to LSTAR-2 (and CS, SS, CPL with SetPrivilege).
func (e *Engine) HookSyscall(fn InsnFunc) (Hook, error) {
	return e.addHook(&hookEntry{insn: fn}, C.UC_HOOK_INSN, C.HB_CB_SYSCALL, allAddressBegin, allAddressEnd, C.UC_X86_INS_SYSCALL)
}

// HookCPUID is called before each CPUID instruction.
func (e *Engine) HookCPUID(fn CPUIDFunc) (Hook, error) {
	return e.addHook(&hookEntry{cpuid: fn}, C.UC_HOOK_INSN, C.HB_CB_CPUID, allAddressBegin, allAddressEnd, C.UC_X86_INS_CPUID)
}

// HookInvalidInsn is called when an undefined opcode is executed (see
// InvalidInsnFunc).
func (e *Engine) HookInvalidInsn(fn InvalidInsnFunc) (Hook, error) {
	return e.addHook(&hookEntry{insnInvalid: fn}, C.UC_HOOK_INSN_INVALID, C.HB_CB_INSN_INVALID, allAddressBegin, allAddressEnd, hookInsnNone)
}

// HookDel removes a hook. Unicorn drops the translated code the hook was
// compiled into.
func (e *Engine) HookDel(h Hook) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	ent, ok := e.hooks[h]
	if !ok {
		return &Error{Op: "hook_del", Code: C.UC_ERR_ARG}
	}
	delete(e.hooks, h)
	unregisterHook(h)
	return check("hook_del", C.uc_hook_del(e.uc, ent.uch))
}
