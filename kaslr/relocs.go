package kaslr

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
)

// kernelImageSize is KERNEL_IMAGE_SIZE with KASLR on x86-64: the kernel map spans 1 GiB from
// __START_KERNEL_map, and the modules follow it. A relocated kernel must stay inside.
const kernelImageSize = 1 << 30

// Relocs are the tables arch/x86/tools/relocs appends to vmlinux.bin. Each entry is the
// link-time virtual address of a place that depends on where the kernel runs, stored as 32 bits
// and sign-extended (the kernel map is the top 2 GiB). Entries are in file order.
type Relocs struct {
	// Rel32 are 32-bit absolute references to the kernel (e.g. `mov $sym, %eax`): add the delta.
	Rel32 []uint64
	// Inv32 are 32-bit PC-relative references from the kernel to per-CPU data, which is linked
	// at 0 and does not move with the text: subtract the delta.
	Inv32 []uint64
	// Rel64 are 64-bit absolute references (pointers in data, `movabs`): add the delta.
	Rel64 []uint64
}

// Len is the number of entries in all three tables.
func (r *Relocs) Len() int { return len(r.Rel32) + len(r.Inv32) + len(r.Rel64) }

// relocTable describes one table for the loops below.
type relocTable struct {
	name    string
	entries []uint64
	width   uint64
	sign    int64 // +1 adds the delta, -1 subtracts it
}

// tables lists the tables in the order handle_relocations applies them.
func (r *Relocs) tables() []relocTable {
	return []relocTable{
		{"32-bit", r.Rel32, 4, 1},
		{"inverse 32-bit", r.Inv32, 4, -1},
		{"64-bit", r.Rel64, 8, 1},
	}
}

// parseRelocs reads the tables from tail, the payload after the ELF. The format, read backwards
// from the end as arch/x86/boot/compressed/misc.c handle_relocations does: 32-bit entries until
// a 0, inverse 32-bit entries until a 0, 64-bit entries until a 0; that last 0 must be tail's
// first word. An empty tail means the build made no tables.
func parseRelocs(tail []byte) (Relocs, error) {
	var r Relocs
	if len(tail) == 0 {
		return r, nil
	}
	if len(tail)%4 != 0 {
		return r, fmt.Errorf("relocation tables: %d bytes after the kernel ELF, not whole 32-bit words", len(tail))
	}
	pos := len(tail)
	next := func(name string) ([]uint64, error) {
		end := pos
		for {
			if pos == 0 {
				return nil, fmt.Errorf("relocation tables: the %s table has no 0 terminator", name)
			}
			pos -= 4
			if binary.LittleEndian.Uint32(tail[pos:]) == 0 {
				break
			}
		}
		entries := make([]uint64, 0, (end-pos)/4-1)
		for p := pos + 4; p < end; p += 4 {
			entries = append(entries, uint64(int64(int32(binary.LittleEndian.Uint32(tail[p:])))))
		}
		return entries, nil
	}
	var err error
	if r.Rel32, err = next("32-bit"); err != nil {
		return Relocs{}, err
	}
	if r.Inv32, err = next("inverse 32-bit"); err != nil {
		return Relocs{}, err
	}
	if r.Rel64, err = next("64-bit"); err != nil {
		return Relocs{}, err
	}
	if pos != 0 {
		return Relocs{}, fmt.Errorf("relocation tables: %d bytes between the kernel ELF and the tables", pos)
	}
	return r, nil
}

// check is handle_relocations' bounds check: every entry must lie in [lo, hi] (hi included, as
// the kernel has it).
func (r *Relocs) check(lo, hi uint64) error {
	for _, t := range r.tables() {
		for i, a := range t.entries {
			if a < lo || a > hi {
				return fmt.Errorf("%s relocation %d at %#x lies outside the kernel [%#x, %#x]", t.name, i, a, lo, hi)
			}
		}
	}
	return nil
}

// Relocate applies the relocation tables to image, the kernel as the decompressor lays it out
// (see Image: offset 0 is _text, wherever it sits physically), for a kernel whose _text runs at
// virtual TextVA + delta. This is handle_relocations with the delta it uses on x86-64, the
// virtual one (virt_addr − LOAD_PHYSICAL_ADDR); the physical load address only decides where
// image lives. Like the kernel, it adds delta to 32-bit and 64-bit places and subtracts it from
// inverse 32-bit ones, modulo their width; unlike the kernel, it applies a delta of 0 too.
// image must hold the kernel as linked (unrelocated): the delta is where it goes from there, and
// one that would take it out of the kernel map is refused. Every entry is checked first: on error
// image is unchanged.
func (b *BzImage) Relocate(image []byte, delta int64) error {
	if b.Relocs.Len() == 0 {
		if delta == 0 {
			return nil
		}
		return errors.New("relocate: the kernel has no relocation tables (built without CONFIG_RANDOMIZE_BASE?)")
	}
	if text := b.TextVA + uint64(delta); text < startKernelMap || text-startKernelMap > kernelImageSize-b.ImageSize() {
		return fmt.Errorf("relocate: delta %#x puts _text at %#x, outside the kernel map [%#x, +%#x)",
			delta, text, uint64(startKernelMap), kernelImageSize)
	}
	tables := b.Relocs.tables()
	for _, t := range tables {
		for i, a := range t.entries {
			if a < b.TextVA || a > b.RelocEnd || a-b.TextVA+t.width > uint64(len(image)) {
				return fmt.Errorf("relocate: %s relocation %d at %#x lies outside the kernel [%#x, %#x] or the %#x-byte image",
					t.name, i, a, b.TextVA, b.RelocEnd, len(image))
			}
		}
	}
	le := binary.LittleEndian
	for _, t := range tables {
		d := uint64(delta * t.sign)
		for _, a := range t.entries {
			p := image[a-b.TextVA:]
			if t.width == 4 {
				le.PutUint32(p, le.Uint32(p)+uint32(d))
			} else {
				le.PutUint64(p, le.Uint64(p)+d)
			}
		}
	}
	return nil
}

// relocsMagic starts MarshalBinary's encoding; the digit is its version.
const relocsMagic = "HBRELOC1"

// MarshalBinary encodes the tables compactly (sorted, delta-coded varints: about 1.5 bytes per
// entry for a kernel's 200,000), for a snapshot that must undo them later (Undo).
func (r *Relocs) MarshalBinary() ([]byte, error) {
	out := []byte(relocsMagic)
	for _, t := range r.tables() {
		s := slices.Clone(t.entries)
		slices.Sort(s)
		out = binary.AppendUvarint(out, uint64(len(s)))
		var prev uint64
		for _, a := range s {
			out = binary.AppendUvarint(out, a-prev)
			prev = a
		}
	}
	return out, nil
}

// UnmarshalBinary decodes MarshalBinary's encoding; the tables come out sorted.
func (r *Relocs) UnmarshalBinary(data []byte) error {
	if !bytes.HasPrefix(data, []byte(relocsMagic)) {
		return errors.New("relocation tables: not an encoding of them (bad magic)")
	}
	b := data[len(relocsMagic):]
	next := func() (uint64, error) {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, errors.New("relocation tables: truncated or bad varint")
		}
		b = b[n:]
		return v, nil
	}
	var tables [3][]uint64
	for i := range tables {
		n, err := next()
		if err != nil {
			return err
		}
		if n > uint64(len(b)) { // every entry takes at least a byte
			return fmt.Errorf("relocation tables: %d entries in %d bytes", n, len(b))
		}
		t := make([]uint64, n)
		var a uint64
		for j := range t {
			d, err := next()
			if err != nil {
				return err
			}
			a += d
			t[j] = a
		}
		tables[i] = t
	}
	if len(b) != 0 {
		return fmt.Errorf("relocation tables: %d trailing bytes", len(b))
	}
	r.Rel32, r.Inv32, r.Rel64 = tables[0], tables[1], tables[2]
	return nil
}

// Undo is Relocate backwards for a window of the running kernel: b holds the bytes at link
// address va of a kernel relocated by delta, and every relocated place wholly inside b gets its
// linked value back. Places cut by the window's edges are left as they are, so a caller wanting
// exact bytes for [va, va+n) reads a few bytes more on each side. The tables must be sorted
// (UnmarshalBinary's are).
func (r *Relocs) Undo(va uint64, b []byte, delta int64) {
	le := binary.LittleEndian
	end := va + uint64(len(b))
	for _, t := range r.tables() {
		d := uint64(delta * t.sign)
		i, _ := slices.BinarySearch(t.entries, va)
		for ; i < len(t.entries) && t.entries[i]+t.width <= end; i++ {
			p := b[t.entries[i]-va:]
			if t.width == 4 {
				le.PutUint32(p, le.Uint32(p)-uint32(d))
			} else {
				le.PutUint64(p, le.Uint64(p)-d)
			}
		}
	}
}
