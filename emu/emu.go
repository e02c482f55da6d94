// Package emu is a small cgo binding over the Unicorn 2.1 C API, specialised
// for x86-64 system emulation (paging, control registers, MSRs, descriptor
// tables) as needed to run real kernel code.
//
// The library is linked statically from .cache/unicorn (Debian 13's
// libunicorn-dev 2.1.1); Debian 12's shared 2.0.1 mis-translates 4 KiB pages
// and must not be used, which is why Open refuses anything but 2.1.x.
//
// Facts about Unicorn 2.1.1 that shape this API:
//
//   - Memory hooks, their address ranges, Map*, ReadPhys and WritePhys all use
//     guest-physical addresses. Code and block hooks see virtual RIP.
//   - CPU exceptions are not delivered through the guest IDT. An interrupt
//     hook receives the vector (14 = #PF, read CR2 for the address); without
//     one, Start fails with ErrException. A faulting instruction is retried
//     when the hook returns, so a #PF hook must fix the cause, move RIP, or
//     call Stop.
//   - QEMU's double-fault tracking (CPUX86State.old_exception) is never
//     reset because no exception is delivered: after one hooked #PF the next
//     contributory fault or #PF arrives as vector 8 (#DF) and the one after
//     is a triple fault that silently ends Start (nil error, StopLimit).
//     Reset the field through Context.Bytes/SetBytes between faults; in
//     2.1.1 it is the int32 at blob offset 0x156c (see
//     TestOldExceptionResetViaContextBytes, which finds it by diffing).
//   - SYSRET and IRET change privilege natively, but nothing enters CPL 0:
//     SYSCALL only calls HookSyscall, exceptions stop at HookInterrupt, and
//     writing CS or SS in 64-bit mode changes just the selector. SetPrivilege
//     loads the kernel's CS/SS caches and CPL; CPL reads it.
//   - Hooks are compiled into translated code: a hook added while Start runs
//     (from inside another hook) does not fire until the next Start. Hooks
//     added between Starts did fire in this package's tests; still, install
//     hooks before the first Start.
//   - Start takes an instruction-count limit and no timeout: Unicorn's
//     timeout spawns a watchdog thread per call.
//
// An Engine is not safe for concurrent use, except that Stop may be called
// from any goroutine while Start runs.
package emu

/*
#cgo CFLAGS: -I${SRCDIR}/../.cache/unicorn/include -O2
#cgo LDFLAGS: ${SRCDIR}/../.cache/unicorn/lib/libunicorn.a -lm -lpthread
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"
)

// Version reports the version of the linked Unicorn library.
func Version() (major, minor, patch int) {
	v := uint32(C.uc_version(nil, nil))
	return int(v >> 24 & 0xff), int(v >> 16 & 0xff), int(v >> 8 & 0xff)
}

// Mode is the CPU mode an engine starts in.
type Mode int

// Modes accepted by OpenMode.
const (
	Mode16 Mode = C.UC_MODE_16
	Mode32 Mode = C.UC_MODE_32
	Mode64 Mode = C.UC_MODE_64
)

// CPUModel selects the emulated CPU (its CPUID feature set).
type CPUModel int

// A selection of Unicorn's x86 CPU models.
const (
	CPUQEMU64            CPUModel = C.UC_CPU_X86_QEMU64
	CPUHaswell           CPUModel = C.UC_CPU_X86_HASWELL
	CPUBroadwell         CPUModel = C.UC_CPU_X86_BROADWELL
	CPUSkylakeClient     CPUModel = C.UC_CPU_X86_SKYLAKE_CLIENT
	CPUSkylakeServer     CPUModel = C.UC_CPU_X86_SKYLAKE_SERVER
	CPUCascadelakeServer CPUModel = C.UC_CPU_X86_CASCADELAKE_SERVER
	CPUCooperlake        CPUModel = C.UC_CPU_X86_COOPERLAKE
	CPUIcelakeClient     CPUModel = C.UC_CPU_X86_ICELAKE_CLIENT
	CPUIcelakeServer     CPUModel = C.UC_CPU_X86_ICELAKE_SERVER
	CPUEPYC              CPUModel = C.UC_CPU_X86_EPYC
	CPUEPYCRome          CPUModel = C.UC_CPU_X86_EPYC_ROME

	// CPUDefault is a server model whose CPUID advertises SMAP (stac/clac),
	// CLWB and CLFLUSHOPT, all of which TCG executes. TCG filters AVX and
	// AVX-512 out of CPUID (checked on 2.1.1), so kernels will not use them.
	CPUDefault = CPUSkylakeServer
)

// StopReason says why the last Start returned.
type StopReason int

// Stop reasons reported by Engine.StopReason.
const (
	// StopNone: Start has not run yet.
	StopNone StopReason = iota
	// StopUntil: RIP reached the until address.
	StopUntil
	// StopLimit: the instruction-count limit was reached, the guest
	// halted (hlt), or it triple-faulted; Unicorn does not tell these apart.
	StopLimit
	// StopRequested: Stop was called (from a hook or another goroutine).
	StopRequested
	// StopHookPanic: a Go hook panicked; Start returned *HookPanicError.
	StopHookPanic
	// StopError: uc_emu_start failed; Start returned its *Error.
	StopError
)

var stopNames = [...]string{"none", "until", "limit", "requested", "hook-panic", "error"}

func (r StopReason) String() string {
	if r >= 0 && int(r) < len(stopNames) {
		return stopNames[r]
	}
	return fmt.Sprintf("StopReason(%d)", int(r))
}

// noLimit is a count limit Start never reaches.
const noLimit = ^uint64(0)

// Engine is one Unicorn x86 instance.
type Engine struct {
	uc   *C.uc_engine
	mode Mode

	mu     sync.Mutex // guards hooks, traces, closed against Stop/Close
	closed bool
	hooks  map[Hook]*hookEntry
	traces map[*TraceBuffer]struct{}
	once   sync.Once

	// countHook: a Start has used a count limit, so Unicorn's counting
	// hook is installed (see Start).
	countHook bool

	// excCtx is reused by ClearException, SetPrivilege and CPL to avoid an
	// allocation per fault or system call (see saveState).
	excCtx *Context
	// budgets are C allocations of NewBudget, freed by Close after the engine.
	budgets []unsafe.Pointer
	// filters are the C sets of NewMemFilter, freed by Close after the engine.
	filters []*C.hb_pcset
	// writelogs are the C page sets of NewWriteLog, freed by Close after the engine.
	writelogs []*C.hb_writelog

	stopRequested atomic.Bool
	panicked      atomic.Bool
	panicErr      *HookPanicError // written once per run by the hook goroutine
	stopReason    StopReason
}

// Open creates a 64-bit engine using the given CPU model.
func Open(model CPUModel) (*Engine, error) { return OpenMode(Mode64, model) }

// OpenMode creates an engine in the given mode using the given CPU model.
// It fails with *VersionError unless the linked library is Unicorn 2.1.x.
func OpenMode(mode Mode, model CPUModel) (*Engine, error) {
	if maj, min, pat := Version(); maj != 2 || min != 1 {
		return nil, &VersionError{Major: maj, Minor: min, Patch: pat}
	}
	var uc *C.uc_engine
	if err := check("open", C.uc_open(C.UC_ARCH_X86, C.uc_mode(mode), &uc)); err != nil {
		return nil, err
	}
	// The model can only be chosen before Unicorn lazily initialises the
	// CPU, i.e. before any other call touches the engine.
	if err := check("set cpu model", C.hb_set_cpu_model(uc, C.int(model))); err != nil {
		C.uc_close(uc)
		return nil, err
	}
	return &Engine{
		uc:     uc,
		mode:   mode,
		hooks:  make(map[Hook]*hookEntry),
		traces: make(map[*TraceBuffer]struct{}),
	}, nil
}

// Close releases the engine, its hooks and trace buffers. Memory passed to
// MapPtr is not touched and may be released after Close returns. Close must
// not be called while Start runs. Calling Close more than once is harmless.
func (e *Engine) Close() error {
	var err error
	e.once.Do(func() {
		e.mu.Lock()
		e.closed = true
		hooks, traces := e.hooks, e.traces
		e.hooks, e.traces = nil, nil
		e.mu.Unlock()
		for id := range hooks {
			unregisterHook(id)
		}
		if e.excCtx != nil {
			e.excCtx.Free()
			e.excCtx = nil
		}
		err = check("close", C.uc_close(e.uc))
		e.uc = nil
		for _, f := range e.filters {
			C.hb_pcset_free(f)
		}
		for _, b := range e.budgets {
			C.free(b)
		}
		for _, w := range e.writelogs {
			C.hb_writelog_free(w)
		}
		e.budgets, e.filters, e.writelogs = nil, nil, nil
		for t := range traces {
			t.free()
		}
	})
	return err
}

// ErrClosed is returned by methods of a closed Engine.
var ErrClosed = errors.New("emu: engine closed")

func (e *Engine) live() error {
	if e.uc == nil {
		return ErrClosed
	}
	return nil
}

// Start runs from begin until RIP equals until, count instructions have
// executed (count 0 means no limit), a hook calls Stop, or an error occurs.
// A panic in a Go hook stops emulation and is returned as *HookPanicError;
// the engine stays usable. StopReason tells why Start returned.
//
// A count limit makes Unicorn call a C counting hook before every
// instruction, and once used it stays installed for the engine's life
// (removing it would flush all translated code); see the benchmarks for
// the cost. There is deliberately no timeout: Unicorn starts a watchdog
// thread per call for it. Use a count limit, or Stop from another
// goroutine.
func (e *Engine) Start(begin, until, count uint64) error {
	if err := e.live(); err != nil {
		return err
	}
	e.stopRequested.Store(false)
	e.panicked.Store(false)
	e.panicErr = nil

	// Start with count 0 after one with count > 0 makes Unicorn delete its
	// instruction-counting hook and flush every translated block (measured
	// 10 ms to 1.5 s). An unreachable limit keeps the hook and the cache.
	if count == 0 && e.countHook {
		count = noLimit
	}
	e.countHook = e.countHook || count > 0

	rc := C.uc_emu_start(e.uc, C.uint64_t(begin), C.uint64_t(until), 0, C.size_t(count))

	switch {
	case e.panicked.Load():
		e.stopReason = StopHookPanic
		return e.panicErr
	case rc != C.UC_ERR_OK:
		e.stopReason = StopError
		return newError("emu_start", rc)
	case e.stopRequested.Load():
		e.stopReason = StopRequested
	default:
		e.stopReason = StopLimit
		if pc, err := e.pc(); err == nil && pc == until {
			e.stopReason = StopUntil
		}
	}
	return nil
}

// pc returns the program counter in the form Start's until takes.
func (e *Engine) pc() (uint64, error) {
	switch e.mode {
	case Mode64:
		return e.Reg(RIP)
	case Mode32:
		return e.Reg(EIP)
	}
	var v [2]uint64
	err := e.Regs([]Reg{CS, IP}, v[:])
	return v[0]<<4 + v[1], err
}

// Stop asks a running Start to return. It may be called from a hook or from
// another goroutine; the current instruction's remaining hooks are skipped.
// Unicorn clears its stop flag when a run begins, so a Stop from another
// goroutine that lands before Start is executing guest code is lost: repeat
// it until Start returns.
func (e *Engine) Stop() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	e.stopRequested.Store(true)
	return check("emu_stop", C.uc_emu_stop(e.uc))
}

// FlushCode drops all translated code: Start's until address is compiled into code translated
// for it, so code translated for a run with another end does not stop there.
func (e *Engine) FlushCode() error {
	if err := e.live(); err != nil {
		return err
	}
	return check("flush_tb", C.hb_flush_tb(e.uc))
}

// StopReason reports why the last Start returned.
func (e *Engine) StopReason() StopReason { return e.stopReason }

// FlushTLB drops every cached translation, global pages included: reloading CR3 keeps entries
// with the G bit, which the kernel sets on all its mappings.
func (e *Engine) FlushTLB() error {
	if err := e.live(); err != nil {
		return err
	}
	return check("flush_tlb", C.hb_flush_tlb(e.uc))
}
