package emu

/*
#include <string.h>
#include "shim.h"
*/
import "C"

import (
	"errors"
	"unsafe"
)

// Context is a saved CPU state (registers and QEMU's CPUX86State), held in C
// memory. It must be released with Free; there is no finalizer.
type Context struct {
	ctx  *C.uc_context
	size int
}

// ErrContextFreed is returned when a freed Context is used.
var ErrContextFreed = errors.New("emu: context freed")

// ContextSize is uc_context_size: the length of Context.Bytes.
func (e *Engine) ContextSize() (int, error) {
	if err := e.live(); err != nil {
		return 0, err
	}
	return int(C.uc_context_size(e.uc)), nil
}

// ContextSave allocates a Context holding the current CPU state (~2 µs).
func (e *Engine) ContextSave() (*Context, error) {
	if err := e.live(); err != nil {
		return nil, err
	}
	var ctx *C.uc_context
	if err := check("context_alloc", C.uc_context_alloc(e.uc, &ctx)); err != nil {
		return nil, err
	}
	c := &Context{ctx: ctx, size: int(C.uc_context_size(e.uc))}
	if err := e.ContextSaveTo(c); err != nil {
		c.Free()
		return nil, err
	}
	return c, nil
}

// ContextSaveTo overwrites c with the current CPU state without allocating.
func (e *Engine) ContextSaveTo(c *Context) error {
	if err := e.live(); err != nil {
		return err
	}
	if c.ctx == nil {
		return ErrContextFreed
	}
	return check("context_save", C.uc_context_save(e.uc, c.ctx))
}

// ContextRestore loads the CPU state saved in c. Memory is not restored.
func (e *Engine) ContextRestore(c *Context) error {
	if err := e.live(); err != nil {
		return err
	}
	if c.ctx == nil {
		return ErrContextFreed
	}
	return check("context_restore", C.uc_context_restore(e.uc, c.ctx))
}

// Free releases the C memory of c. Calling it again is harmless.
func (c *Context) Free() {
	if c.ctx != nil {
		C.uc_context_free(c.ctx)
		c.ctx = nil
	}
}

// headerSize is the part of the blob that is Unicorn's own bookkeeping
// (struct uc_context up to its data[] member), found from the blob's first
// field, the size of the CPU state that follows it.
func (c *Context) headerSize() int {
	dataSize := *(*C.size_t)(unsafe.Pointer(c.ctx))
	return c.size - int(dataSize)
}

// Bytes returns a copy of the whole context blob, uc_context_size bytes:
// Unicorn's small header followed by the raw CPU state. Offsets are stable
// for one library build, so blobs can be diffed to locate fields.
func (c *Context) Bytes() []byte {
	if c.ctx == nil {
		return nil
	}
	return C.GoBytes(unsafe.Pointer(c.ctx), C.int(c.size))
}

// SetBytes overwrites the CPU state in c with b, which must be a blob of
// the same size as returned by Bytes (possibly edited). The header part of
// b is ignored so Unicorn's bookkeeping stays intact; ContextRestore then
// loads the edited state.
func (c *Context) SetBytes(b []byte) error {
	if c.ctx == nil {
		return ErrContextFreed
	}
	if len(b) != c.size {
		return &Error{Op: "context_set_bytes", Code: C.UC_ERR_ARG}
	}
	h := c.headerSize()
	if h < 0 || h > c.size {
		return &Error{Op: "context_set_bytes", Code: C.UC_ERR_ARG}
	}
	if h == c.size {
		return nil
	}
	dst := unsafe.Add(unsafe.Pointer(c.ctx), h)
	C.memcpy(dst, unsafe.Pointer(&b[h]), C.size_t(c.size-h))
	return nil
}

// HeaderLen is the number of leading bytes of Bytes that belong to Unicorn's
// header rather than the CPU state; SetBytes ignores them.
func (c *Context) HeaderLen() int {
	if c.ctx == nil {
		return 0
	}
	return c.headerSize()
}
