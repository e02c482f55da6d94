package emu

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"syscall"
)

// QEMU tracks the last exception (CPUX86State.old_exception) to turn a fault during delivery into
// a double fault. Unicorn never delivers exceptions, so the field is never cleared, and the second
// page fault an executor handles would arrive as #DF. ClearException resets it through a context
// round trip. Its place in the context blob is not part of Unicorn's API: it is found once per
// process by making a real page fault in a scratch engine and diffing contexts, then validated by
// checking that a reset second fault arrives as #PF again. A library build where that fails is
// refused with an error rather than guessed at.

var (
	oldExcOnce   sync.Once
	oldExcOffset int // blob offset of old_exception; immutable after oldExcOnce
	oldExcErr    error
)

// ClearException resets QEMU's pending-exception memory so the next fault is delivered as itself.
// Call it after handling each exception. It costs a context save and restore (~0.2 µs).
func (e *Engine) ClearException() error {
	off, err := oldExceptionOffset()
	if err != nil {
		return err
	}
	return e.editContext(func(b []byte) error {
		binary.LittleEndian.PutUint32(b[off:], 0xffffffff)
		return nil
	})
}

func oldExceptionOffset() (int, error) {
	oldExcOnce.Do(func() { oldExcOffset, oldExcErr = calibrateOldException() })
	return oldExcOffset, oldExcErr
}

// saveState saves the CPU state into e.excCtx, kept per engine so that an edit per fault or per
// system call does not allocate C memory, and returns a copy of the blob.
func (e *Engine) saveState() ([]byte, error) {
	if e.excCtx == nil {
		c, err := e.ContextSave()
		if err != nil {
			return nil, err
		}
		e.excCtx = c
	} else if err := e.ContextSaveTo(e.excCtx); err != nil {
		return nil, err
	}
	return e.excCtx.Bytes(), nil
}

// editContext changes CPU state Unicorn has no register for: save, edit the blob, restore. The
// state is left untouched if edit fails.
func (e *Engine) editContext(edit func(b []byte) error) error {
	b, err := e.saveState()
	if err != nil {
		return err
	}
	if err := edit(b); err != nil {
		return err
	}
	if err := e.excCtx.SetBytes(b); err != nil {
		return err
	}
	return e.ContextRestore(e.excCtx)
}

// calibrateOldException runs "mov rax, [unmapped]" twice in a paged scratch engine.
func calibrateOldException() (int, error) {
	const (
		pml4, pdpt, pd = 0x1000, 0x2000, 0x3000
		code           = 0x10000
		ramSize        = 2 << 20
		pteP, pteW     = 1, 2
		pagePS         = 1 << 7
		unmapped       = 0x40000000 // PDPT entry 1: not present
	)
	fail := func(format string, args ...any) (int, error) {
		return 0, fmt.Errorf("emu: cannot locate Unicorn's old_exception field (unsupported Unicorn build?): "+format, args...)
	}
	e, err := Open(CPUDefault)
	if err != nil {
		return 0, err
	}
	ram, err := syscall.Mmap(-1, 0, ramSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		e.Close()
		return 0, fmt.Errorf("emu: calibration memory: %w", err)
	}
	defer syscall.Munmap(ram)
	defer e.Close()
	put := func(at, v uint64) { binary.LittleEndian.PutUint64(ram[at:], v) }
	put(pml4, pdpt|pteP|pteW)
	put(pdpt, pd|pteP|pteW)
	put(pd, 0|pteP|pteW|pagePS) // 0..2 MiB identity
	put(0x4000+2*8, 0x00af9b000000ffff)
	prog := []byte{0x48, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x00, 0x40} // mov rax, [0x40000000]
	copy(ram[code:], prog)
	var vectors []uint32
	steps := []error{
		e.MapPtr(0, ramSize, ProtAll, ram),
		e.SetDescTable(GDTR, DescTable{Base: 0x4000, Limit: 3*8 - 1}),
		e.SetReg(CR4, 1<<5),
		e.SetReg(CR3, pml4),
		e.SetMSR(MSREFER, EFERLME|EFERLMA),
		e.SetReg(CR0, 1<<31|1<<0),
		e.SetReg(CS, 0x10),
		e.SetReg(RSP, 0x8000),
	}
	if _, err := e.HookInterrupt(func(v uint32) { vectors = append(vectors, v); e.Stop() }); err != nil {
		steps = append(steps, err)
	}
	if err := errors.Join(steps...); err != nil {
		return 0, fmt.Errorf("emu: calibration setup: %w", err)
	}
	before, err := e.ContextSave()
	if err != nil {
		return 0, err
	}
	defer before.Free()
	if err := e.Start(code, code+uint64(len(prog)), 0); err != nil {
		return 0, fmt.Errorf("emu: calibration run: %w", err)
	}
	after, err := e.ContextSave()
	if err != nil {
		return 0, err
	}
	defer after.Free()
	b0, b1 := before.Bytes(), after.Bytes()
	var candidates []int
	for o := before.HeaderLen(); o+4 <= len(b0); o += 4 {
		if binary.LittleEndian.Uint32(b0[o:]) == 0xffffffff && binary.LittleEndian.Uint32(b1[o:]) == 14 {
			candidates = append(candidates, o)
		}
	}
	if len(vectors) != 1 || vectors[0] != 14 {
		return fail("first fault gave vectors %v, want [14]", vectors)
	}
	if len(candidates) != 1 {
		return fail("%d candidate fields", len(candidates))
	}
	off := candidates[0]
	binary.LittleEndian.PutUint32(b1[off:], 0xffffffff)
	if err := after.SetBytes(b1); err != nil {
		return 0, err
	}
	if err := e.ContextRestore(after); err != nil {
		return 0, err
	}
	if err := e.SetReg(RIP, code); err != nil {
		return 0, err
	}
	if err := e.Start(code, code+uint64(len(prog)), 0); err != nil {
		return 0, fmt.Errorf("emu: calibration run: %w", err)
	}
	if len(vectors) != 2 || vectors[1] != 14 {
		return fail("second fault after reset gave vectors %v, want [14 14]", vectors)
	}
	return off, nil
}
