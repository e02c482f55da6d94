package taint

import (
	"fmt"
	"strings"
)

// Label is the provenance of one byte of a value: a set of the bits below.
// The empty set (LabelNone) means "no provenance", e.g. an immediate
// constant or a flag-derived value; such a value never decides a
// redirection.
type Label uint8

// Provenance bits. They are combined with |, so one byte can carry several
// (e.g. a GVM pointer plus an SVM offset).
const (
	// LabelSVM: derived from the SVM itself: the stack pointer, gs-relative
	// per-cpu data (the current task), SVM memory, SVM machine state.
	LabelSVM Label = 1 << iota
	// LabelGVM: loaded from guest memory or through a redirected access.
	LabelGVM
	// LabelGlobal: a constant address into the kernel image (RIP-relative,
	// absolute displacement or immediate), i.e. a kernel global variable.
	LabelGlobal
	// LabelUser: the inspecting process's user data (user pointers and
	// buffers).
	LabelUser

	// LabelNone is the empty set.
	LabelNone Label = 0

	labelBits = 4 // labels fit in a nibble; see shadowMem.uniform
)

var labelLetters = [labelBits]byte{'S', 'G', 'K', 'U'}

// String writes a label as its letters: S (SVM), G (GVM), K (constant
// global), U (user); "-" is the empty label. Testdata uses the same form.
func (l Label) String() string {
	if l == LabelNone {
		return "-"
	}
	var b strings.Builder
	for i, c := range labelLetters {
		if l&(1<<i) != 0 {
			b.WriteByte(c)
		}
	}
	if l>>labelBits != 0 {
		fmt.Fprintf(&b, "+%#x", uint8(l>>labelBits<<labelBits))
	}
	return b.String()
}

// ParseLabel reads the form String writes.
func ParseLabel(s string) (Label, error) {
	if s == "-" {
		return LabelNone, nil
	}
	if s == "" {
		return 0, fmt.Errorf("taint: empty label")
	}
	var l Label
	for i := 0; i < len(s); i++ {
		j := strings.IndexByte(string(labelLetters[:]), s[i])
		if j < 0 {
			return 0, fmt.Errorf("taint: label %q: unknown letter %q", s, s[i])
		}
		l |= 1 << j
	}
	return l, nil
}

// Values are handled as byte-label vectors packed into integers, one label
// per byte, low byte first, so that copies, unions and sub-register merges
// are a few word operations instead of loops.

const bytesOnes = 0x0101010101010101

// vec holds the labels of up to 16 bytes: byte i is in lo (i < 8) or hi.
type vec struct{ lo, hi uint64 }

// bcast is the label l on all 8 bytes of a word.
func bcast(l Label) uint64 { return uint64(l) * bytesOnes }

// bvec is the label l on the first n bytes.
func bvec(l Label, n int) vec { return vec{bcast(l), bcast(l)}.trunc(n) }

// mask8 covers the first n (0..8) bytes of a word.
func mask8(n int) uint64 {
	if n <= 0 {
		return 0
	}
	if n >= 8 {
		return ^uint64(0)
	}
	return 1<<(8*uint(n)) - 1
}

// fold64 is the union of the labels of all bytes of a word.
func fold64(x uint64) Label {
	x |= x >> 32
	x |= x >> 16
	x |= x >> 8
	return Label(x)
}

func (v vec) fold() Label        { return fold64(v.lo | v.hi) }
func (v vec) or(w vec) vec       { return vec{v.lo | w.lo, v.hi | w.hi} }
func (v vec) byteAt(i int) Label { return Label(v.word(i) >> (8 * uint(i&7))) }

func (v vec) word(i int) uint64 {
	if i < 8 {
		return v.lo
	}
	return v.hi
}

// trunc keeps the first n bytes.
func (v vec) trunc(n int) vec {
	if n >= 16 {
		return v
	}
	if n > 8 {
		return vec{v.lo, v.hi & mask8(n-8)}
	}
	return vec{v.lo & mask8(n), 0}
}

// shift moves the labels up by off bytes (inserting into a wider value).
func (v vec) shift(off int) vec {
	switch {
	case off == 0:
		return v
	case off >= 16:
		return vec{}
	case off >= 8:
		return vec{0, v.lo << (8 * uint(off-8))}
	}
	s := 8 * uint(off)
	return vec{v.lo << s, v.hi<<s | v.lo>>(64-s)}
}

// unshift moves the labels down by off bytes (extracting a part).
func (v vec) unshift(off int) vec {
	switch {
	case off == 0:
		return v
	case off >= 16:
		return vec{}
	case off >= 8:
		return vec{v.hi >> (8 * uint(off-8)), 0}
	}
	s := 8 * uint(off)
	return vec{v.lo>>s | v.hi<<(64-s), v.hi >> s}
}

// reverse reverses the first n bytes (bswap, movbe).
func (v vec) reverse(n int) vec {
	var r vec
	for i := 0; i < n; i++ {
		r = r.or(vec{uint64(v.byteAt(i)), 0}.shift(n - 1 - i))
	}
	return r
}

// labels expands the first n bytes for callers outside the package.
func (v vec) labels(n int) []Label {
	out := make([]Label, n)
	for i := range out {
		out[i] = v.byteAt(i)
	}
	return out
}
