package vmm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// VirtView reads guest-virtual memory of one address space: each page is translated through the
// walker's tables and read from its physical memory. Nothing is cached, so reads follow the
// tables as the guest changes them.
type VirtView struct {
	name string
	w    *Walker
}

// NewVirtView names the address space of w for error messages (for example "kernel" or
// "pid 1").
func NewVirtView(name string, w *Walker) *VirtView { return &VirtView{name: name, w: w} }

// Name returns the name given to NewVirtView.
func (v *VirtView) Name() string { return v.name }

// Walker returns the walker the view translates with.
func (v *VirtView) Walker() *Walker { return v.w }

// chunks splits [va, va+n) at page boundaries and calls fn with each piece's physical address,
// its offset from va and its length, until fn reports done. Every reader of the view goes
// through here, so page splitting and fault reporting exist once.
func (v *VirtView) chunks(va uint64, n int, fn func(pa uint64, off, n int) (done bool, err error)) error {
	if n > 0 && va+uint64(n-1) < va {
		return &FaultError{View: v.name, Op: opReadVirt, Addr: va,
			Err: fmt.Errorf("%d bytes wrap around the end of the address space", n)}
	}
	for off := 0; off < n; {
		cur := va + uint64(off)
		m, err := v.w.page(cur)
		if err != nil {
			return &FaultError{View: v.name, Op: opReadVirt, Addr: cur, Err: err}
		}
		k := n - off
		if left := m.Size - (cur - m.VA); uint64(k) > left {
			k = int(left)
		}
		done, err := fn(m.PA+(cur-m.VA), off, k)
		if err != nil {
			return &FaultError{View: v.name, Op: opReadVirt, Addr: cur, Err: err}
		}
		if done {
			return nil
		}
		off += k
	}
	return nil
}

// Read fills buf from va. It fails with a *FaultError naming the first unmapped address if any
// page of the range is not mapped; buf's contents are then unspecified.
func (v *VirtView) Read(va uint64, buf []byte) error {
	return v.chunks(va, len(buf), func(pa uint64, off, n int) (bool, error) {
		return false, v.w.mem.ReadPhys(pa, buf[off:off+n])
	})
}

// ReadUint64 reads a little-endian uint64 at va.
func (v *VirtView) ReadUint64(va uint64) (uint64, error) {
	var b [8]byte
	if err := v.Read(va, b[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// ReadUint32 reads a little-endian uint32 at va.
func (v *VirtView) ReadUint32(va uint64) (uint32, error) {
	var b [4]byte
	if err := v.Read(va, b[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b[:]), nil
}

// ErrNoTerminator: ReadCString found no NUL within its limit.
var ErrNoTerminator = errors.New("no NUL terminator within limit")

// cstringPiece bounds each physical read of ReadCString so that a short string on a huge page
// does not pull in up to max bytes.
const cstringPiece = 256

// ReadCString reads a NUL-terminated string of at most limit bytes (NUL excluded) at va. Bytes
// after the NUL are never read, so a string ending just before an unmapped page is fine. With no
// NUL within limit+1 bytes it returns the first limit bytes and an error wrapping
// ErrNoTerminator.
func (v *VirtView) ReadCString(va uint64, limit int) (string, error) {
	limit = max(limit, 0)
	var out []byte
	var piece [cstringPiece]byte
	found := false
	err := v.chunks(va, limit+1, func(pa uint64, _, n int) (bool, error) {
		for n > 0 {
			k := min(n, len(piece))
			if err := v.w.mem.ReadPhys(pa, piece[:k]); err != nil {
				return false, err
			}
			if i := bytes.IndexByte(piece[:k], 0); i >= 0 {
				out = append(out, piece[:i]...)
				found = true
				return true, nil
			}
			out = append(out, piece[:k]...)
			pa += uint64(k)
			n -= k
		}
		return false, nil
	})
	if err != nil {
		return string(out), err
	}
	if !found {
		return string(out[:limit]), &FaultError{View: v.name, Op: opReadVirt, Addr: va,
			Err: fmt.Errorf("%w of %d bytes", ErrNoTerminator, limit)}
	}
	return string(out), nil
}
