package emu

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import "unsafe"

// EventKind says what an Event records.
type EventKind uint8

// Event kinds.
const (
	EventExec  EventKind = 1 // an instruction at virtual Addr, Size bytes, is about to run
	EventBlock EventKind = 2 // a translation block at virtual Addr of Value bytes starts
	EventRead  EventKind = 3 // a read of Size bytes at guest-physical Addr
	EventWrite EventKind = 4 // a write of Size bytes of Value at guest-physical Addr
	EventFetch EventKind = 5 // an instruction fetch at guest-physical Addr
)

// Event is one record of a TraceBuffer. Its layout matches the C struct the
// tracing hooks fill, so batches are handed to Go without copying.
type Event struct {
	Kind  EventKind
	Size  uint8
	_     [6]byte
	Addr  uint64
	Value uint64
}

// The C hooks write hb_event and Go reads Event through the same memory;
// these fail to compile if the two layouts ever differ.
var (
	_ [unsafe.Sizeof(Event{}) - unsafe.Sizeof(C.hb_event{})]byte
	_ [unsafe.Sizeof(C.hb_event{}) - unsafe.Sizeof(Event{})]byte
	_ [unsafe.Offsetof(Event{}.Addr) - unsafe.Offsetof(C.hb_event{}.addr)]byte
	_ [unsafe.Offsetof(C.hb_event{}.addr) - unsafe.Offsetof(Event{}.Addr)]byte
	_ [unsafe.Offsetof(Event{}.Value) - unsafe.Offsetof(C.hb_event{}.value)]byte
	_ [unsafe.Offsetof(C.hb_event{}.value) - unsafe.Offsetof(Event{}.Value)]byte
)

// TraceConfig selects what a TraceBuffer records.
type TraceConfig struct {
	// Capacity is the buffer size in events (default 4096).
	Capacity int

	// Code records an EventExec per instruction, Block an EventBlock per
	// translation block, for virtual addresses in [CodeBegin, CodeEnd].
	Code, Block        bool
	CodeBegin, CodeEnd uint64

	// Mem selects memory accesses to record (a subset of HookMemValid) at
	// guest-physical addresses in [MemBegin, MemEnd].
	Mem              MemHookType
	MemBegin, MemEnd uint64

	// OnFull, if set, receives the full buffer from inside emulation; the
	// slice aliases C memory, is valid only during the call, and is reused
	// afterwards. If nil, events that do not fit are dropped and counted
	// (Dropped).
	OnFull func(events []Event)
}

// TraceBuffer records code and memory events in C memory without calling
// into Go per event (roughly 2x faster than a Go code hook). Go is entered
// only when the buffer fills (OnFull) or when Drain is called after Start
// returns. Like hooks, create it before the first Start.
//
// Events record what Unicorn's hooks saw: when Start stops on a count
// limit, the events of exactly the executed instructions are in the
// buffer, waiting for Drain.
type TraceBuffer struct {
	e      *Engine
	t      *C.hb_trace
	id     Hook
	uchs   []C.uc_hook
	onFull func([]Event)
}

// NewTrace installs a TraceBuffer's hooks. Zero begin and end in a range
// mean everywhere.
func (e *Engine) NewTrace(cfg TraceConfig) (*TraceBuffer, error) {
	if cfg.Mem&^HookMemValid != 0 {
		return nil, &Error{Op: "trace", Code: C.UC_ERR_HOOK}
	}
	if cfg.Capacity <= 0 {
		cfg.Capacity = 4096
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, ErrClosed
	}

	t := (*C.hb_trace)(C.calloc(1, C.size_t(unsafe.Sizeof(C.hb_trace{}))))
	ev := (*C.hb_event)(C.calloc(C.size_t(cfg.Capacity), C.size_t(unsafe.Sizeof(C.hb_event{}))))
	if t == nil || ev == nil {
		C.free(unsafe.Pointer(t))
		C.free(unsafe.Pointer(ev))
		return nil, &Error{Op: "trace", Code: C.UC_ERR_NOMEM}
	}
	t.ev = ev
	t.cap = C.uint32_t(cfg.Capacity)
	tb := &TraceBuffer{e: e, t: t, onFull: cfg.OnFull}
	if cfg.OnFull != nil {
		tb.id = registerHook(&hookEntry{e: e, trace: tb})
		t.id = C.uintptr_t(tb.id)
		t.flush = 1
	}

	add := func(typ C.int, begin, end uint64) error {
		if begin == 0 && end == 0 {
			begin, end = allAddressBegin, allAddressEnd
		}
		var h C.uc_hook
		if err := check("hook_add", C.hb_trace_add(e.uc, &h, typ, t, C.uint64_t(begin), C.uint64_t(end))); err != nil {
			return err
		}
		tb.uchs = append(tb.uchs, h)
		return nil
	}
	var err error
	if cfg.Code {
		err = add(C.UC_HOOK_CODE, cfg.CodeBegin, cfg.CodeEnd)
	}
	if err == nil && cfg.Block {
		err = add(C.UC_HOOK_BLOCK, cfg.CodeBegin, cfg.CodeEnd)
	}
	if err == nil && cfg.Mem != 0 {
		err = add(C.int(cfg.Mem), cfg.MemBegin, cfg.MemEnd)
	}
	if err != nil {
		tb.unhook()
		tb.free()
		return nil, err
	}
	e.traces[tb] = struct{}{}
	return tb, nil
}

func (tb *TraceBuffer) events() []Event {
	return unsafe.Slice((*Event)(unsafe.Pointer(tb.t.ev)), int(tb.t.len))
}

// flushFull runs inside emulation when the C side filled the buffer; the C
// side empties it when this returns.
func (tb *TraceBuffer) flushFull() { tb.onFull(tb.events()) }

// Len is the number of events waiting in the buffer.
func (tb *TraceBuffer) Len() int {
	if tb.t == nil {
		return 0
	}
	return int(tb.t.len)
}

// Dropped counts events lost because the buffer was full and OnFull unset.
func (tb *TraceBuffer) Dropped() uint64 {
	if tb.t == nil {
		return 0
	}
	return uint64(tb.t.dropped)
}

// Drain passes the buffered events to fn (if any) and empties the buffer.
// The slice aliases C memory and is valid only during fn. Call it after
// Start returns, never concurrently with Start.
func (tb *TraceBuffer) Drain(fn func(events []Event)) {
	if tb.t == nil || tb.t.len == 0 {
		return
	}
	fn(tb.events())
	tb.t.len = 0
}

// Close removes the buffer's hooks and frees it. Not while Start runs.
func (tb *TraceBuffer) Close() error {
	e := tb.e
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.traces[tb]; !ok {
		return nil // already closed, or freed by Engine.Close
	}
	delete(e.traces, tb)
	err := tb.unhook()
	tb.free()
	return err
}

func (tb *TraceBuffer) unhook() error {
	var err error
	for _, h := range tb.uchs {
		if e := check("hook_del", C.uc_hook_del(tb.e.uc, h)); e != nil && err == nil {
			err = e
		}
	}
	tb.uchs = nil
	return err
}

// free releases the C memory; the hooks must be gone (or the engine closed).
func (tb *TraceBuffer) free() {
	if tb.id != 0 {
		unregisterHook(tb.id)
		tb.id = 0
	}
	if tb.t != nil {
		C.free(unsafe.Pointer(tb.t.ev))
		C.free(unsafe.Pointer(tb.t))
		tb.t = nil
	}
}
