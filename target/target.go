package target

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"hybridbridge/vmm"
)

// Kind names how a target is reached.
type Kind string

const (
	KindOwn     Kind = "own"     // a guest hybridbridge booted (guest.Start)
	KindQMP     Kind = "qmp"     // a QEMU process reached through its QMP socket
	KindPID     Kind = "pid"     // a QEMU process reached by PID (its QMP socket if it has one)
	KindLibvirt Kind = "libvirt" // a libvirt domain, through virsh
	KindDump    Kind = "dump"    // a dump-guest-memory ELF file
)

// State is a target's run state as far as inspection cares.
type State string

const (
	Running State = "running"
	Paused  State = "paused"
	// Frozen is a target that never runs: a dump.
	Frozen State = "frozen"
)

// ErrGone means the VM behind a target has exited (or its monitor went away) while in use.
var ErrGone = errors.New("the VM is gone")

// Target is a guest as the bridge needs it: its RAM, a consistent pause, and its vCPUs.
//
// Reads of a running target are racy; the bridge pauses it first (Pause), and Resume undoes only
// that pause: a target that was paused (or frozen) when inspection came stays as it was.
type Target interface {
	// Name is the target's name in messages ("guest demo", "QEMU pid 1234", "dump vm.elf").
	Name() string
	Kind() Kind
	// Phys reads guest-physical memory where it is now, without copying the whole of it.
	Phys() vmm.PhysView
	// RAM returns the guest's RAM as a file whose offsets are guest-physical addresses, for the
	// SVM to map copy-on-write. It stays valid (and unchanged while the target is paused) until
	// the caller closes it.
	RAM(ctx context.Context) (*RAM, error)
	State(ctx context.Context) (State, error)
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	// CPUs returns the vCPUs' control registers, vCPU 0 first; nil when the target cannot tell
	// (a QEMU process reached without a monitor).
	CPUs(ctx context.Context) ([]CPUState, error)
	// Close releases what the target holds (monitor connections, mappings). It never stops,
	// pauses or resumes the VM.
	Close() error
}

// RAM is a guest's RAM laid out by guest-physical address: offset A of File is guest-physical A.
type RAM struct {
	File *os.File
	// Ranges are the guest-physical RAM ranges (FileOffset == GuestPhys).
	Ranges []vmm.PhysRange
	// Copied is how many bytes were read from the VM to make File: 0 where the file is the VM's
	// own RAM (a guest we booted on a shared memory backend).
	Copied uint64
	// Took is how long making the file took.
	Took time.Duration
}

// End returns the first guest-physical address after the guest's RAM (RAMEnd).
func (r *RAM) End() uint64 { return RAMEnd(r.Ranges) }

// ioHole is where the 32-bit PCI hole starts on QEMU's pc machine (q35's starts lower): from there
// to 4 GiB there is no RAM, only firmware and device memory, which dumps include (pc.bios at
// 0xfffc0000).
const ioHole = 0xe0000000

// RAMEnd is the first guest-physical address after the RAM among ranges: how large a guest the
// SVM must serve. Ranges inside the 32-bit I/O hole are not RAM and are left out.
func RAMEnd(ranges []vmm.PhysRange) uint64 {
	var end uint64
	for _, r := range ranges {
		if !inIOHole(r) {
			end = max(end, r.End())
		}
	}
	return end
}

// RAMOnly is ranges without those inside the 32-bit I/O hole: the guest's RAM, which the SVM
// must serve.
func RAMOnly(ranges []vmm.PhysRange) []vmm.PhysRange {
	var out []vmm.PhysRange
	for _, r := range ranges {
		if !inIOHole(r) {
			out = append(out, r)
		}
	}
	return out
}

func inIOHole(r vmm.PhysRange) bool { return r.GuestPhys >= ioHole && r.End() <= 1<<32 }

// Close closes the file.
func (r *RAM) Close() error {
	if r == nil || r.File == nil {
		return nil
	}
	return r.File.Close()
}

// Ensure the kinds implement Target.
var _ Target = (*Dump)(nil)

// Name implements Target.
func (d *Dump) Name() string { return "dump " + d.path }

// Kind implements Target.
func (d *Dump) Kind() Kind { return KindDump }

// State implements Target: a dump never runs.
func (d *Dump) State(context.Context) (State, error) { return Frozen, nil }

// Pause implements Target (nothing to pause).
func (d *Dump) Pause(context.Context) error { return nil }

// Resume implements Target (nothing to resume).
func (d *Dump) Resume(context.Context) error { return nil }

// CPUs implements Target: the vCPUs in the order QEMU wrote them (vCPU 0 first). Callers must
// not modify the slice.
func (d *Dump) CPUs(context.Context) ([]CPUState, error) { return d.cpus, nil }

// RAM implements Target. The dump's segments are not page-aligned in the file, so they cannot be
// mapped where the SVM needs them: the RAM is copied once into an anonymous memory file, leaving
// out all-zero pages (they cost nothing there).
func (d *Dump) RAM(ctx context.Context) (*RAM, error) {
	return copyRAM(ctx, "dump "+d.path, d.phys.Ranges(), func(pa uint64, buf []byte) error {
		return d.phys.ReadPhys(pa, buf)
	})
}

// copyRAM builds a RAM file from ranges read by read, in chunks; all-zero pages are left as holes,
// and ranges in the I/O hole (firmware) are left out.
func copyRAM(ctx context.Context, name string, ranges []vmm.PhysRange, read func(pa uint64, buf []byte) error) (*RAM, error) {
	start := time.Now()
	f, err := memFile(name)
	if err != nil {
		return nil, err
	}
	out := &RAM{File: f}
	buf := make([]byte, copyChunk)
	for _, r := range ranges {
		if inIOHole(r) {
			continue // firmware, not RAM (see RAMEnd)
		}
		if err := ctx.Err(); err != nil {
			f.Close()
			return nil, err
		}
		out.Ranges = append(out.Ranges, vmm.PhysRange{GuestPhys: r.GuestPhys, FileOffset: r.GuestPhys, Size: r.Size})
		for off := uint64(0); off < r.Size; off += copyChunk {
			n := min(copyChunk, r.Size-off)
			pa := r.GuestPhys + off
			if err := read(pa, buf[:n]); err != nil {
				f.Close()
				return nil, fmt.Errorf("%s: read RAM at %#x: %w", name, pa, err)
			}
			out.Copied += n
			if err := writeNonZero(f, buf[:n], pa); err != nil {
				f.Close()
				return nil, fmt.Errorf("%s: copy RAM: %w", name, err)
			}
		}
	}
	if err := f.Truncate(int64(out.End())); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: size RAM file: %w", name, err)
	}
	out.Took = time.Since(start)
	return out, nil
}
