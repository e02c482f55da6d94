package emu

/*
#include "shim.h"
*/
import "C"

import "fmt"

// Error is a failed Unicorn call.
type Error struct {
	Op   string // the operation, e.g. "mem_map" or "emu_start"
	Code int    // the uc_err value
}

func (e *Error) Error() string {
	return fmt.Sprintf("unicorn %s: %s", e.Op, C.GoString(C.uc_strerror(C.uc_err(e.Code))))
}

// Is makes errors.Is(err, ErrReadUnmapped) and friends match any *Error with
// the same code, whatever its Op.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Op == "" && t.Code == e.Code
}

// Sentinels for errors.Is; they match an *Error by Code only.
var (
	ErrNoMem          = &Error{Code: C.UC_ERR_NOMEM}
	ErrHandle         = &Error{Code: C.UC_ERR_HANDLE}
	ErrReadUnmapped   = &Error{Code: C.UC_ERR_READ_UNMAPPED}
	ErrWriteUnmapped  = &Error{Code: C.UC_ERR_WRITE_UNMAPPED}
	ErrFetchUnmapped  = &Error{Code: C.UC_ERR_FETCH_UNMAPPED}
	ErrHook           = &Error{Code: C.UC_ERR_HOOK}
	ErrInsnInvalid    = &Error{Code: C.UC_ERR_INSN_INVALID}
	ErrMap            = &Error{Code: C.UC_ERR_MAP}
	ErrWriteProt      = &Error{Code: C.UC_ERR_WRITE_PROT}
	ErrReadProt       = &Error{Code: C.UC_ERR_READ_PROT}
	ErrFetchProt      = &Error{Code: C.UC_ERR_FETCH_PROT}
	ErrArg            = &Error{Code: C.UC_ERR_ARG}
	ErrReadUnaligned  = &Error{Code: C.UC_ERR_READ_UNALIGNED}
	ErrWriteUnaligned = &Error{Code: C.UC_ERR_WRITE_UNALIGNED}
	ErrFetchUnaligned = &Error{Code: C.UC_ERR_FETCH_UNALIGNED}
	ErrResource       = &Error{Code: C.UC_ERR_RESOURCE}
	ErrException      = &Error{Code: C.UC_ERR_EXCEPTION}
)

func newError(op string, rc C.uc_err) error {
	return &Error{Op: op, Code: int(rc)}
}

func check(op string, rc C.uc_err) error {
	if rc == C.UC_ERR_OK {
		return nil
	}
	return newError(op, rc)
}

// VersionError is returned by Open when the linked library is not 2.1.x.
type VersionError struct{ Major, Minor, Patch int }

func (e *VersionError) Error() string {
	return fmt.Sprintf("emu: linked Unicorn is %d.%d.%d, need 2.1.x", e.Major, e.Minor, e.Patch)
}

// HookPanicError is returned by Start when a Go hook panicked. Emulation was
// stopped at the panicking hook; the engine remains usable.
type HookPanicError struct {
	Value any    // the value passed to panic
	Stack []byte // the goroutine stack at the panic
}

func (e *HookPanicError) Error() string {
	return fmt.Sprintf("emu: hook panicked: %v", e.Value)
}

// Unwrap returns Value when it is an error, so errors.Is/As see through.
func (e *HookPanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}
