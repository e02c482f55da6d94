package memo

import "fmt"

// Each way a memo file can be rejected has its own type, so a caller can
// tell "written by a newer hybridbridge" from "disk corruption" from "the
// rules changed" (errors.As). All are returned wrapped with the file name.

// MagicError: the file does not start with the memo magic.
type MagicError struct {
	Got []byte
}

func (e *MagicError) Error() string {
	return fmt.Sprintf("not a memo file (magic %q, want %q)", e.Got, magic)
}

// SizeError: the file is shorter or longer than its framing says
// (truncated write, trailing garbage). Want is the fixed framing size when
// the file is too short to hold even that.
type SizeError struct {
	Got, Want uint64
}

func (e *SizeError) Error() string {
	if e.Got < e.Want {
		return fmt.Sprintf("memo file truncated: %d bytes, want %d", e.Got, e.Want)
	}
	return fmt.Sprintf("memo file has trailing data: %d bytes, want %d", e.Got, e.Want)
}

// ChecksumError: the CRC-32C does not match the content (corruption).
type ChecksumError struct {
	Stored, Computed uint32
}

func (e *ChecksumError) Error() string {
	return fmt.Sprintf("memo file corrupt: CRC-32C %#08x, computed %#08x", e.Stored, e.Computed)
}

// VersionError: the file's format has a different major version or a newer
// minor version than this build reads.
type VersionError struct {
	Major, Minor uint16
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("unsupported memo format %d.%d (this build reads %d.0 to %d.%d)",
		e.Major, e.Minor, FormatMajor, FormatMajor, FormatMinor)
}

// KeyMismatchError: the memo was trained for another kernel build or rule
// table, so its decisions must not be replayed.
type KeyMismatchError struct {
	Want, Got Key
}

// KernelChanged reports whether the kernel build differs.
func (e *KeyMismatchError) KernelChanged() bool { return e.Want.Kernel != e.Got.Kernel }

// PolicyChanged reports whether the rule table differs.
func (e *KeyMismatchError) PolicyChanged() bool { return e.Want.Policy != e.Got.Policy }

func (e *KeyMismatchError) Error() string {
	var what string
	switch {
	case e.KernelChanged() && e.PolicyChanged():
		what = "kernel build and policy changed"
	case e.KernelChanged():
		what = "kernel build changed"
	default:
		what = "policy changed"
	}
	return fmt.Sprintf("memo is for another key (%s): file has %v, want %v", what, e.Got, e.Want)
}

// FormatError: the checksum matched but the content does not decode. That
// means a writer bug (or a format change without a version bump), not disk
// corruption.
type FormatError struct {
	// Section is "header" or "payload"; Offset is relative to it.
	Section string
	Offset  int
	Reason  string
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("memo %s malformed at offset %d: %s", e.Section, e.Offset, e.Reason)
}
