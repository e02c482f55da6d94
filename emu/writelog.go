package emu

/*
#include "shim.h"
*/
import "C"

import (
	"errors"
	"unsafe"
)

// WriteLog records which pages of a physical range were written, by a C memory-write hook: the
// executed code's stores, one cheap call each, with no Go call. Writes that do not go through
// executed instructions (the caller's own, or the MMU's accessed and dirty bits) are not seen;
// the caller adds its own with Mark.
type WriteLog struct {
	e   *Engine
	log *C.hb_writelog
}

// NewWriteLog watches writes to [begin, begin+size); begin and size are page-aligned. The log is
// freed with the engine.
func (e *Engine) NewWriteLog(begin, size uint64) (*WriteLog, error) {
	if begin%4096 != 0 || size%4096 != 0 || size == 0 {
		return nil, errors.New("emu: write log: range not page-aligned")
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil, ErrClosed
	}
	w := C.hb_writelog_new(C.uint64_t(begin), C.uint64_t(size/4096))
	if w == nil {
		e.mu.Unlock()
		return nil, errors.New("emu: write log: out of memory")
	}
	e.writelogs = append(e.writelogs, w) // freed by Close, after uc_close
	e.mu.Unlock()
	err := e.addCMemHook(HookMemWrite, func(uch *C.uc_hook) C.uc_err {
		return C.hb_writelog_add(e.uc, uch, w, C.uint64_t(begin), C.uint64_t(begin+size-1))
	})
	if err != nil {
		return nil, err
	}
	return &WriteLog{e: e, log: w}, nil
}

// Mark records a write the hook cannot see.
func (w *WriteLog) Mark(addr, size uint64) {
	C.hb_writelog_mark(w.log, C.uint64_t(addr), C.uint64_t(size))
}

// Len is the number of pages written since the last Drain.
func (w *WriteLog) Len() int { return int(w.log.len) }

// Drain calls fn with the physical address of each page written since the last Drain, in first
// write order, and forgets them.
func (w *WriteLog) Drain(fn func(page uint64)) {
	n := int(w.log.len)
	if n == 0 {
		return
	}
	list := unsafe.Slice((*uint64)(unsafe.Pointer(w.log.list)), n)
	seen := unsafe.Slice((*byte)(unsafe.Pointer(w.log.seen)), int(w.log.pages))
	base := uint64(w.log.base)
	for _, p := range list {
		seen[p] = 0
		fn(base + p*4096)
	}
	w.log.len = 0
}
