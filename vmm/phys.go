package vmm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"sort"
)

// PhysRange places Size bytes of guest-physical RAM starting at GuestPhys at FileOffset in the
// backing file or slice.
type PhysRange struct {
	GuestPhys, FileOffset, Size uint64
}

// End returns the first guest-physical address after the range.
func (r PhysRange) End() uint64 { return r.GuestPhys + r.Size }

func (r PhysRange) String() string {
	return fmt.Sprintf("[%#x-%#x) @file %#x", r.GuestPhys, r.End(), r.FileOffset)
}

const (
	// pcMaxRAMBelow4G is the default max-ram-below-4g of QEMU's i440fx "pc" machine: the
	// traditional start of the 32-bit PCI hole.
	pcMaxRAMBelow4G = 0xe0000000
	// pcGigabyteSplit is where pc machine types since pc-i440fx-2.0 (gigabyte_align) split RAM
	// once it does not fit below pcMaxRAMBelow4G, so that the part above 4 GiB is 1 GiB aligned.
	pcGigabyteSplit = 0xc0000000
	fourGiB         = 1 << 32
)

// PCRanges returns where QEMU's i440fx "pc" machine (pc_init1 in hw/i386/pc_piix.c, QEMU 7.2,
// default max-ram-below-4g, machine types pc-i440fx-2.0 and newer) puts ramSize bytes of RAM that
// come from one memory backend:
//
//   - ramSize < 3.5 GiB (0xe0000000): all of it at guest-physical 0, file offset 0.
//   - otherwise the low 3 GiB (0xc0000000, not 3.5 GiB: gigabyte_align lowers the split) at 0,
//     and the rest at 4 GiB, taken from file offset 0xc0000000 ("ram-above-4g" is an alias of
//     the backend at offset below_4g_mem_size).
//
// The legacy 640 KiB-1 MiB VGA/BIOS window is ignored: there the file still holds RAM, which is
// what the guest kernel itself never maps for data anyway. The q35 machine splits differently.
func PCRanges(ramSize uint64) []PhysRange {
	return splitAround4G(ramSize, pcMaxRAMBelow4G, pcGigabyteSplit)
}

// splitAround4G lays out ramSize bytes from one backend as QEMU's x86 machines do: below
// splitFrom all at guest-physical 0; from there the first low bytes at 0 and the rest at 4 GiB,
// taken from file offset low.
func splitAround4G(ramSize, splitFrom, low uint64) []PhysRange {
	if ramSize == 0 {
		return nil
	}
	if ramSize < splitFrom {
		return []PhysRange{{GuestPhys: 0, FileOffset: 0, Size: ramSize}}
	}
	return []PhysRange{
		{GuestPhys: 0, FileOffset: 0, Size: low},
		{GuestPhys: fourGiB, FileOffset: low, Size: ramSize - low},
	}
}

// q35SplitAbove is the RAM size from which QEMU's q35 machine splits its RAM around the PCI hole
// (pc_q35_init in hw/i386/pc_q35.c, QEMU 7.2: below it 0xb0000000 bytes fit under the hole and
// MMCONFIG), and q35Low how much stays below 4 GiB then.
const (
	q35SplitAbove = 0xb0000000
	q35Low        = 0x80000000
)

// Q35Ranges is PCRanges for QEMU's q35 machine: below 2.75 GiB all RAM at guest-physical 0;
// otherwise the low 2 GiB there and the rest at 4 GiB, from file offset 2 GiB.
func Q35Ranges(ramSize uint64) []PhysRange { return splitAround4G(ramSize, q35SplitAbove, q35Low) }

// MachineRanges is where QEMU's machine type machine ("pc" or "q35", as a guest's metadata
// records it; "" is pc) puts ramSize bytes of RAM from one backend.
func MachineRanges(machine string, ramSize uint64) ([]PhysRange, error) {
	switch machine {
	case "", "pc":
		return PCRanges(ramSize), nil
	case "q35":
		return Q35Ranges(ramSize), nil
	}
	return nil, fmt.Errorf("machine type %q: RAM layout unknown", machine)
}

// PhysView reads guest-physical memory.
type PhysView interface {
	// Name identifies the view in errors.
	Name() string
	// Ranges returns the RAM ranges sorted by GuestPhys; callers must not modify the slice.
	Ranges() []PhysRange
	// Size returns the total bytes of RAM (the sum of the range sizes).
	Size() uint64
	// ReadPhys fills buf from guest-physical addr. On error the contents of buf are unspecified
	// and the error is a *FaultError naming the first inaccessible address.
	ReadPhys(addr uint64, buf []byte) error
}

// checkRanges validates ranges against a backing of backingSize bytes and returns them sorted by
// guest-physical address, with their total size. A nil or empty ranges means "all of the backing
// at guest-physical 0", the layout of a guest whose RAM sits below the PCI hole.
func checkRanges(ranges []PhysRange, backingSize uint64) ([]PhysRange, uint64, error) {
	if len(ranges) == 0 {
		if backingSize == 0 {
			return nil, 0, errors.New("empty backing and no ranges")
		}
		return []PhysRange{{Size: backingSize}}, backingSize, nil
	}
	rs := append([]PhysRange(nil), ranges...)
	sort.Slice(rs, func(i, j int) bool { return rs[i].GuestPhys < rs[j].GuestPhys })
	var total uint64
	for i, r := range rs {
		switch {
		case r.Size == 0:
			return nil, 0, fmt.Errorf("range %v is empty", r)
		case r.GuestPhys+r.Size < r.GuestPhys || r.FileOffset+r.Size < r.FileOffset:
			return nil, 0, fmt.Errorf("range %v overflows", r)
		case r.FileOffset+r.Size > backingSize:
			return nil, 0, fmt.Errorf("range %v ends beyond the %#x bytes of backing", r, backingSize)
		case i > 0 && r.GuestPhys < rs[i-1].End():
			return nil, 0, fmt.Errorf("ranges %v and %v overlap", rs[i-1], r)
		}
		total += r.Size
	}
	return rs, total, nil
}

// mem is what FileView and BytesView share: sorted guest-physical ranges laid over one byte
// slice, so that the range arithmetic exists once.
type mem struct {
	name   string
	data   []byte // nil once closed
	ranges []PhysRange
	size   uint64
	// mapped says data is a file mapping, whose pages can vanish (SIGBUS) if the file is
	// truncated under us, so accesses go through the fault-catching helpers.
	mapped bool
}

func (m *mem) copyOut(dst, src []byte) error {
	if m.mapped {
		return copyMapped(dst, src)
	}
	copy(dst, src)
	return nil
}

func (m *mem) hashOut(h hash.Hash, src []byte) error {
	if m.mapped {
		return hashMapped(h, src)
	}
	h.Write(src)
	return nil
}

func (m *mem) Name() string        { return m.name }
func (m *mem) Ranges() []PhysRange { return m.ranges }
func (m *mem) Size() uint64        { return m.size }
func (m *mem) fault(addr uint64, err error) error {
	return &FaultError{View: m.name, Op: opReadPhys, Addr: addr, Err: err}
}

// find returns the range holding addr.
func (m *mem) find(addr uint64) (PhysRange, bool) {
	i := sort.Search(len(m.ranges), func(i int) bool { return m.ranges[i].End() > addr })
	if i == len(m.ranges) || m.ranges[i].GuestPhys > addr {
		return PhysRange{}, false
	}
	return m.ranges[i], true
}

func (m *mem) ReadPhys(addr uint64, buf []byte) error {
	if m.data == nil {
		return m.fault(addr, ErrClosed)
	}
	for len(buf) > 0 {
		r, ok := m.find(addr)
		if !ok {
			return m.fault(addr, ErrNotBacked)
		}
		// Guest-adjacent ranges (not produced by PCRanges, but legal) are read piecewise.
		n := uint64(len(buf))
		if avail := r.End() - addr; n > avail {
			n = avail
		}
		off := r.FileOffset + (addr - r.GuestPhys)
		if err := m.copyOut(buf[:n], m.data[off:off+n]); err != nil {
			return m.fault(addr, err)
		}
		buf = buf[n:]
		addr += n
	}
	return nil
}

// readEntry reads one little-endian uint64 without the heap allocation that passing a buffer
// through the PhysView interface would cost; the page-table walker uses it on every level.
func (m *mem) readEntry(addr uint64) (uint64, error) {
	var b [8]byte
	if err := m.ReadPhys(addr, b[:]); err != nil {
		return 0, err
	}
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56, nil
}

// hashChunk bounds how long Hash runs between cancellation checks.
const hashChunk = 16 << 20

func (m *mem) hashInto(ctx context.Context, h hash.Hash) error {
	if m.data == nil {
		return m.fault(0, ErrClosed)
	}
	for _, r := range m.ranges {
		for done := uint64(0); done < r.Size; {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := min(r.Size-done, hashChunk)
			off := r.FileOffset + done
			if err := m.hashOut(h, m.data[off:off+n]); err != nil {
				return m.fault(r.GuestPhys+done, err)
			}
			done += n
		}
	}
	return nil
}

// Hash returns the hex SHA-256 of view's RAM, ranges concatenated in guest-physical order. For a
// FileView over PCRanges this equals sha256sum of the backing file, since PCRanges lays the file
// out in order. Only meaningful while the guest is paused.
func Hash(ctx context.Context, view PhysView) (string, error) {
	h := sha256.New()
	if hv, ok := view.(interface {
		hashInto(context.Context, hash.Hash) error
	}); ok {
		if err := hv.hashInto(ctx, h); err != nil {
			return "", fmt.Errorf("hashing %s: %w", view.Name(), err)
		}
		return hex.EncodeToString(h.Sum(nil)), nil
	}
	buf := make([]byte, 1<<20)
	for _, r := range view.Ranges() {
		for done := uint64(0); done < r.Size; {
			if err := ctx.Err(); err != nil {
				return "", fmt.Errorf("hashing %s: %w", view.Name(), err)
			}
			n := min(r.Size-done, uint64(len(buf)))
			if err := view.ReadPhys(r.GuestPhys+done, buf[:n]); err != nil {
				return "", fmt.Errorf("hashing %s: %w", view.Name(), err)
			}
			h.Write(buf[:n])
			done += n
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// BytesView is guest-physical memory held in a byte slice: synthetic page tables in tests, or a
// snapshot copied out of a guest.
type BytesView struct{ mem }

// NewBytesView lays ranges over data (nil ranges: all of data at guest-physical 0). The view
// reads data in place; the caller may keep writing it, for example to build page tables.
func NewBytesView(name string, data []byte, ranges []PhysRange) (*BytesView, error) {
	rs, size, err := checkRanges(ranges, uint64(len(data)))
	if err != nil {
		return nil, fmt.Errorf("bytes view %s: %w", name, err)
	}
	return &BytesView{mem{name: name, data: data, ranges: rs, size: size}}, nil
}
