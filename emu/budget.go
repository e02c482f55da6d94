package emu

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import "unsafe"

// Budget limits how much code a run may execute, counted in C per translated block. Unicorn's own
// instruction-count limit calls a hook before every instruction, which made injected kernel system
// calls 5 times slower (and, with other code hooks installed, up to 50 times). A block only knows
// its size in bytes, so instructions are estimated at 4 bytes each: the budget is approximate,
// and a run stops at the end of the block that crosses it.
//
// The counters live in C memory owned by the engine and freed by Close.
type Budget struct {
	e *Engine
	b *C.hb_budget
}

// NewBudget installs the budget's block hook. Like every hook, install it before the first Start.
func (e *Engine) NewBudget() (*Budget, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, ErrClosed
	}
	b := (*C.hb_budget)(C.calloc(1, C.size_t(unsafe.Sizeof(C.hb_budget{}))))
	if b == nil {
		return nil, &Error{Op: "budget", Code: C.UC_ERR_NOMEM}
	}
	var h C.uc_hook
	if err := check("hook_add", C.hb_budget_add(e.uc, &h, b)); err != nil {
		C.free(unsafe.Pointer(b))
		return nil, err
	}
	e.budgets = append(e.budgets, unsafe.Pointer(b))
	return &Budget{e: e, b: b}, nil
}

// Reset zeroes the counters and sets the limit in estimated instructions (0: none).
func (b *Budget) Reset(limit uint64) {
	b.b.insns, b.b.blocks, b.b.limit, b.b.hit = 0, 0, C.uint64_t(limit), 0
}

// Exceeded reports whether the last run was stopped by the budget.
func (b *Budget) Exceeded() bool { return b.b.hit != 0 }

// Used returns the estimated instructions and the blocks executed since Reset.
func (b *Budget) Used() (insns, blocks uint64) { return uint64(b.b.insns), uint64(b.b.blocks) }
