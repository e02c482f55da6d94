package emu

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"unsafe"
)

// MemFilter is a memory hook with a C-side set of (instruction, physical address) pairs whose
// accesses never reach Go. A caller that has decided an access needs nothing done adds its pair;
// the same instruction touching the same address again then costs a hash probe in C instead of
// a Go call. Uses RIP as Unicorn reports it inside memory hooks.
type MemFilter struct {
	e   *Engine
	set *C.hb_pcset
	id  Hook
}

// ErrFilterFull means the filter holds as many pairs as it can; further pairs reach Go.
var ErrFilterFull = errors.New("emu: memory filter full")

// NewMemFilter registers fn for accesses the filter does not let through. capacity is rounded up
// to a power of two; the set is freed with the engine. Add ranges with Hook.
func (e *Engine) NewMemFilter(capacity int, fn MemFunc) (*MemFilter, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, ErrClosed
	}
	c := 1
	for c < capacity {
		c <<= 1
	}
	h := &hookEntry{e: e, mem: fn}
	id := registerHook(h)
	set := C.hb_pcset_new(C.uint32_t(c), C.uintptr_t(id))
	if set == nil {
		unregisterHook(id)
		return nil, errors.New("emu: memory filter: out of memory")
	}
	e.hooks[id] = h
	e.filters = append(e.filters, set) // freed by Close, after uc_close
	return &MemFilter{e: e, set: set, id: id}, nil
}

// Hook adds a Unicorn memory hook of the given types (a subset of HookMemValid) over the
// guest-physical range [begin, end], filtered by f.
func (f *MemFilter) Hook(types MemHookType, begin, end uint64) error {
	return f.HookSpans(types, [][2]uint64{{begin, end}})
}

// HookSpans adds Unicorn memory hooks of the given types for the guest-physical ranges
// [begin, end] in spans, filtered by f: one hook per cluster of nearby ranges, which costs every
// access in the engine less than one hook per range, and does not call C for accesses far away.
func (f *MemFilter) HookSpans(types MemHookType, spans [][2]uint64) error {
	return f.e.hookSpans(types, unsafe.Pointer(f.set), spans, func(uch *C.uc_hook, sp *C.hb_spans) C.uc_err {
		return C.hb_mem_filtered_add(f.e.uc, uch, C.int(types), sp)
	})
}

// spanGap is the distance between ranges beyond which they get hooks of their own: an access
// inside a hook's hull but in none of its ranges costs a C call.
const spanGap = 64 << 20

// hookSpans sorts and merges spans, groups them into clusters, copies each into C memory freed
// with the engine, and adds a hook for each.
func (e *Engine) hookSpans(types MemHookType, target unsafe.Pointer, spans [][2]uint64, add func(*C.uc_hook, *C.hb_spans) C.uc_err) error {
	sorted := slices.Clone(spans)
	slices.SortFunc(sorted, func(a, b [2]uint64) int { return cmp.Compare(a[0], b[0]) })
	var clusters [][][2]uint64
	for _, r := range sorted {
		if r[1] < r[0] {
			return fmt.Errorf("emu: hook range [%#x, %#x] is empty", r[0], r[1])
		}
		n := len(clusters)
		if n == 0 {
			clusters = append(clusters, [][2]uint64{r})
			continue
		}
		c := clusters[n-1]
		last := &c[len(c)-1]
		switch {
		case r[0] <= last[1]+1:
			last[1] = max(last[1], r[1])
		case r[0]-last[1] > spanGap || len(c) == C.HB_MAX_SPANS:
			clusters = append(clusters, [][2]uint64{r})
		default:
			clusters[n-1] = append(c, r)
		}
	}
	if len(clusters) == 0 {
		return errors.New("emu: no hook ranges")
	}
	for _, c := range clusters {
		e.mu.Lock()
		if e.closed {
			e.mu.Unlock()
			return ErrClosed
		}
		sp := (*C.hb_spans)(C.calloc(1, C.sizeof_hb_spans))
		if sp == nil {
			e.mu.Unlock()
			return errors.New("emu: hook ranges: out of memory")
		}
		e.budgets = append(e.budgets, unsafe.Pointer(sp)) // freed by Close, after uc_close
		e.mu.Unlock()
		sp.target = target
		sp.n = C.uint32_t(len(c))
		for i, r := range c {
			sp.lo[i], sp.hi[i] = C.uint64_t(r[0]), C.uint64_t(r[1])
		}
		if err := e.addCMemHook(types, func(uch *C.uc_hook) C.uc_err { return add(uch, sp) }); err != nil {
			return err
		}
	}
	return nil
}

// addCMemHook adds a memory hook whose callback and user data are C's own (add calls the shim):
// the type check and the engine's lock are those of every hook.
func (e *Engine) addCMemHook(types MemHookType, add func(*C.uc_hook) C.uc_err) error {
	if types == 0 || types&^validMemHooks != 0 {
		return &Error{Op: "hook_add", Code: errHookTypeRange}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	var uch C.uc_hook
	if rc := add(&uch); rc != C.UC_ERR_OK {
		return newError("hook_add", rc)
	}
	return nil
}

// Add lets accesses by the instruction at pc to physical address addr through in C from now on.
func (f *MemFilter) Add(pc, addr uint64) error {
	if C.hb_pcset_add(f.set, C.uint64_t(pc), C.uint64_t(addr)) != 0 {
		return ErrFilterFull
	}
	return nil
}

// PC is the instruction address of the access being handed to Go (inside the callback; 0 if
// Unicorn could not say): the C side read it already.
func (f *MemFilter) PC() uint64 { return uint64(f.set.last_pc) }

// DrainHits calls fn for each pair in the set with the accesses it let through since the last
// drain, and zeroes those counts: what the pairs decided, counted by whoever decided them.
func (f *MemFilter) DrainHits(fn func(pc, addr, n uint64)) {
	n := int(f.set.cap)
	pcs := unsafe.Slice((*uint64)(unsafe.Pointer(f.set.pc)), n)
	addrs := unsafe.Slice((*uint64)(unsafe.Pointer(f.set.addr)), n)
	hits := unsafe.Slice((*uint64)(unsafe.Pointer(f.set.hits)), n)
	for i, h := range hits {
		if h != 0 && pcs[i] != 0 {
			fn(pcs[i], addrs[i], h)
		}
		hits[i] = 0
	}
}

// Clear empties the set: every access reaches Go again.
func (f *MemFilter) Clear() { C.hb_pcset_clear(f.set) }

// Stats returns how many accesses were let through in C and how many reached Go, and the set's
// size.
func (f *MemFilter) Stats() (skipped, passed uint64, size int) {
	return uint64(f.set.skipped), uint64(f.set.passed), int(f.set.len)
}

// MemGate is a memory hook that calls Go only while open: a caller that needs to see accesses
// only at times (e.g. while a value swapped into memory waits to be restored after the next read)
// pays one load in C per access otherwise.
type MemGate struct {
	e    *Engine
	gate *C.hb_gate
}

// NewMemGate registers fn for accesses while the gate is open. It starts closed; the gate is
// freed with the engine. Add ranges with Hook.
func (e *Engine) NewMemGate(fn MemFunc) (*MemGate, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, ErrClosed
	}
	h := &hookEntry{e: e, mem: fn}
	id := registerHook(h)
	g := (*C.hb_gate)(C.calloc(1, C.sizeof_hb_gate))
	if g == nil {
		unregisterHook(id)
		return nil, errors.New("emu: memory gate: out of memory")
	}
	g.id = C.uintptr_t(id)
	e.hooks[id] = h
	e.budgets = append(e.budgets, unsafe.Pointer(g)) // freed by Close, after uc_close
	return &MemGate{e: e, gate: g}, nil
}

// Hook adds a Unicorn memory hook of the given types over the guest-physical range [begin, end],
// behind the gate.
func (g *MemGate) Hook(types MemHookType, begin, end uint64) error {
	return g.HookSpans(types, [][2]uint64{{begin, end}})
}

// HookSpans adds Unicorn memory hooks of the given types for the guest-physical ranges
// [begin, end] in spans, behind the gate (one per cluster of nearby ranges, as MemFilter.HookSpans).
func (g *MemGate) HookSpans(types MemHookType, spans [][2]uint64) error {
	return g.e.hookSpans(types, unsafe.Pointer(g.gate), spans, func(uch *C.uc_hook, sp *C.hb_spans) C.uc_err {
		return C.hb_mem_gated_add(g.e.uc, uch, C.int(types), sp)
	})
}

// Set opens or closes the gate.
func (g *MemGate) Set(open bool) {
	if open {
		g.gate.open = 1
	} else {
		g.gate.open = 0
	}
}
