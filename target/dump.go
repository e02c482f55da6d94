// Package target abstracts what hybridbridge inspects: a source of guest-physical RAM, of the
// guest's vCPU state and, for a live VM, of pause and resume.
//
// The kinds: a guest hybridbridge booted (Own), a running QEMU process reached by its QMP socket
// or PID (Process), a libvirt domain (OpenLibvirt, a Process whose monitor is virsh), and a
// memory dump: the ELF core file that QEMU's dump-guest-memory writes (and so `virsh dump
// --memory-only`). A dump is a guest frozen for good, so it has RAM and vCPU state but nothing to
// pause or resume.
package target

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"hybridbridge/vmm"
)

// Reasons OpenDump rejects a file, matched with errors.Is. The wrapping error says more: which
// other format the file seems to be, or which segment is cut short.
var (
	ErrNotELF       = errors.New("not an ELF file")
	ErrMalformed    = errors.New("malformed ELF")
	ErrNotCore      = errors.New("not an ELF core file")
	ErrNotX86_64    = errors.New("not an x86-64 ELF64 file")
	ErrTruncated    = errors.New("file is truncated")
	ErrNoRAM        = errors.New("no PT_LOAD segment with guest RAM")
	ErrNoQEMUNote   = errors.New("no QEMU vCPU note")
	ErrBadQEMUNote  = errors.New("unsupported QEMU vCPU note")
	errNoteOverflow = errors.New("note runs past the end of its segment")
)

// CPUState is one vCPU's state as QEMU recorded it in the dump.
type CPUState struct {
	CR0, CR3, CR4 uint64
	RIP           uint64
	// GSBase is the GS segment base at the time of the dump: the kernel's per-CPU area while the
	// vCPU ran kernel code, the user's value otherwise (then KernelGSBase holds the kernel's).
	GSBase uint64
	// KernelGSBase is the IA32_KERNEL_GS_BASE MSR. QEMU versions before 5.0 did not record it;
	// HasKernelGSBase says whether this dump does.
	KernelGSBase    uint64
	HasKernelGSBase bool
}

// Dump is a QEMU guest memory dump opened for reading. Its memory is a read-only mapping of the
// file, safe for concurrent reads; Close must not race with them.
type Dump struct {
	path string
	phys *vmm.FileView
	cpus []CPUState
}

// Phys returns the dump's guest-physical memory: one range per PT_LOAD segment. QEMU dumps every
// RAM-backed region the guest sees, so besides RAM there are ranges such as the firmware ROM just
// below 4 GiB. Where a segment declares more memory than the file holds (p_memsz > p_filesz, as
// QEMU writes when the dump is limited with begin/length), only the filed part is a range; reads
// of the rest fail with vmm.ErrNotBacked rather than return zeros the guest never had.
func (d *Dump) Phys() vmm.PhysView { return d.phys }

// Path returns the file the dump was opened from.
func (d *Dump) Path() string { return d.path }

// Close unmaps the dump. Reads after Close fail with vmm.ErrClosed.
func (d *Dump) Close() error { return d.phys.Close() }

// OpenDump opens a dump written by QEMU's dump-guest-memory in its default ELF format with
// paging off, the format whose PT_LOAD segments are addressed by guest-physical address.
func OpenDump(path string) (*Dump, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open dump: %w", err)
	}
	// The mapping made below keeps the file's data reachable after the descriptor is gone.
	defer f.Close()
	d, err := openDump(f)
	if err != nil {
		return nil, fmt.Errorf("dump %s: %w", path, err)
	}
	d.path = path
	return d, nil
}

func openDump(f *os.File) (*Dump, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := uint64(fi.Size())
	var magic [64]byte
	n, err := f.ReadAt(magic[:], 0)
	if err != nil && err != io.EOF {
		return nil, err
	}
	if !bytes.HasPrefix(magic[:n], []byte(elf.ELFMAG)) {
		return nil, fmt.Errorf("%w: %s", ErrNotELF, sniff(magic[:n]))
	}
	ef, err := elf.NewFile(f)
	if err != nil {
		// debug/elf reports a header cut short as an EOF from its reads.
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: ELF headers end beyond the %d-byte file", ErrTruncated, size)
		}
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if ef.Type != elf.ET_CORE {
		return nil, fmt.Errorf("%w: type is %v", ErrNotCore, ef.Type)
	}
	if ef.Class != elf.ELFCLASS64 || ef.Machine != elf.EM_X86_64 || ef.Data != elf.ELFDATA2LSB {
		// QEMU writes an ELF32 i386 dump for a guest that was not in long mode and has no RAM
		// above 4 GiB.
		return nil, fmt.Errorf("%w: %v %v %v", ErrNotX86_64, ef.Class, ef.Data, ef.Machine)
	}
	for i, p := range ef.Progs {
		if p.Filesz > size || p.Off > size-p.Filesz {
			return nil, fmt.Errorf("%w: segment %d (%v) needs file bytes [%#x, %#x) of %#x",
				ErrTruncated, i, p.Type, p.Off, p.Off+p.Filesz, size)
		}
	}
	var ranges []vmm.PhysRange
	for i, p := range ef.Progs {
		if p.Type != elf.PT_LOAD {
			continue
		}
		if p.Filesz > p.Memsz {
			return nil, fmt.Errorf("%w: PT_LOAD segment %d files %#x bytes of %#x", ErrMalformed, i, p.Filesz, p.Memsz)
		}
		if p.Filesz == 0 {
			continue // nothing of it is in the file; see Phys
		}
		ranges = append(ranges, vmm.PhysRange{GuestPhys: p.Paddr, FileOffset: p.Off, Size: p.Filesz})
	}
	if len(ranges) == 0 {
		return nil, ErrNoRAM
	}
	cpus, err := qemuCPUs(ef)
	if err != nil {
		return nil, err
	}
	view, err := vmm.NewFileView(f, ranges)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return &Dump{phys: view, cpus: cpus}, nil
}

// sniff names the format a non-ELF file seems to be in, so that a user who passed the wrong kind
// of dump learns which command makes the right one.
func sniff(head []byte) string {
	has := func(s string) bool { return bytes.HasPrefix(head, []byte(s)) }
	switch {
	case len(head) == 0:
		return "the file is empty"
	case has("KDUMP   "):
		return "it looks like a kdump-compressed dump (makedumpfile, or dump-guest-memory with a kdump-* format); " +
			"take the dump in ELF format (virsh dump --memory-only --format elf)"
	case has("makedumpfile"):
		return "it looks like makedumpfile's flattened format; rearrange it with makedumpfile -R, " +
			"or take an ELF dump (virsh dump --memory-only)"
	case has("DISKDUMP"):
		return "it looks like a diskdump file; take an ELF dump (virsh dump --memory-only)"
	case has("LibvirtQemudSave"), has("LibvirtQemudPart"):
		return "it looks like a libvirt save image (virsh save, or virsh dump without --memory-only); " +
			"take the dump with virsh dump --memory-only"
	case has("QEVM"):
		return "it looks like a QEMU migration stream (migrate to file, savevm); take the dump with dump-guest-memory"
	case has("PAGEDU64"), has("PAGEDUMP"):
		return "it looks like a Windows crash dump (dump-guest-memory format win-dmp)"
	}
	return fmt.Sprintf("unrecognised format (starts with %q)", head[:min(len(head), 16)])
}

// Note names and types QEMU's x86 dump code writes (target/i386/arch_dump.c), and the ones that
// tell other ELF core files apart.
const (
	noteQEMU       = "QEMU"
	noteCore       = "CORE"
	noteVMCoreInfo = "VMCOREINFO"
	ntPRStatus     = 1
	ntPRPSInfo     = 3
	ntFile         = 0x46494c45
)

// Layout of QEMUCPUState (version 1): version u32, size u32, rax..r15, rip, rflags (18 u64),
// then cs ds es fs gs ss ldt tr gdt idt as 24-byte segments {selector, limit, flags, pad u32;
// base u64}, then cr[5], then fields QEMU has since appended without changing the version, found
// by the size field.
const (
	qemuStateVersion   = 1
	offRIP             = 8 + 16*8
	segSize            = 24
	offSegs            = 8 + 18*8
	offGSBase          = offSegs + 4*segSize + 16 // gs is the fifth segment; base follows 4 u32
	offCR              = offSegs + 10*segSize
	qemuStateMinSize   = offCR + 5*8
	offKernelGSBase    = qemuStateMinSize
	qemuStateKGSBSSize = offKernelGSBase + 8
)

type note struct {
	name string
	typ  uint32
	desc []byte
}

// qemuCPUs reads the vCPUs from the "QEMU" notes. QEMU writes all NT_PRSTATUS notes first and
// then one QEMU note per vCPU in the same order, so the notes' order is the vCPUs'.
func qemuCPUs(ef *elf.File) ([]CPUState, error) {
	var cpus []CPUState
	var core, prpsinfo, files, vmcoreinfo int
	for i, p := range ef.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		notes, err := readNotes(p.Open())
		if err != nil {
			return nil, fmt.Errorf("%w: PT_NOTE segment %d: %v", ErrMalformed, i, err)
		}
		for _, n := range notes {
			switch {
			case n.name == noteQEMU:
				c, err := parseQEMUState(n.desc)
				if err != nil {
					return nil, fmt.Errorf("vCPU %d: %w", len(cpus), err)
				}
				cpus = append(cpus, c)
			case n.name == noteCore && n.typ == ntPRStatus:
				core++
			case n.name == noteCore && n.typ == ntPRPSInfo:
				prpsinfo++
			case n.name == noteCore && n.typ == ntFile:
				files++
			case n.name == noteVMCoreInfo:
				vmcoreinfo++
			}
		}
	}
	if len(cpus) > 0 {
		return cpus, nil
	}
	switch {
	case prpsinfo > 0 || files > 0:
		return nil, fmt.Errorf("%w: it looks like a process core dump, not a guest memory dump", ErrNoQEMUNote)
	case vmcoreinfo > 0:
		return nil, fmt.Errorf("%w: it looks like a kernel crash dump (/proc/vmcore), which has no vCPU "+
			"control registers; take the dump with QEMU's dump-guest-memory", ErrNoQEMUNote)
	case core > 0:
		return nil, fmt.Errorf("%w: %d NT_PRSTATUS notes but no QEMU CPU state (control registers); "+
			"the dump was not written by QEMU's dump-guest-memory", ErrNoQEMUNote, core)
	}
	return nil, fmt.Errorf("%w: the file has no vCPU notes at all", ErrNoQEMUNote)
}

// readNotes splits a PT_NOTE segment. Fields are 4-byte aligned, as both QEMU and Linux write
// them on x86-64.
func readNotes(r io.Reader) ([]note, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	align := func(n uint64) uint64 { return (n + 3) &^ 3 }
	var out []note
	for len(data) > 0 {
		if len(data) < 12 {
			return nil, errNoteOverflow
		}
		namesz := uint64(binary.LittleEndian.Uint32(data[0:]))
		descsz := uint64(binary.LittleEndian.Uint32(data[4:]))
		typ := binary.LittleEndian.Uint32(data[8:])
		rest := data[12:]
		// The last field's padding may be missing at the end of the segment.
		if namesz > uint64(len(rest)) {
			return nil, errNoteOverflow
		}
		name := string(bytes.TrimRight(rest[:namesz], "\x00"))
		rest = rest[min(align(namesz), uint64(len(rest))):]
		if descsz > uint64(len(rest)) {
			return nil, errNoteOverflow
		}
		desc := rest[:descsz]
		rest = rest[min(align(descsz), uint64(len(rest))):]
		out = append(out, note{name: name, typ: typ, desc: desc})
		data = rest
	}
	return out, nil
}

func parseQEMUState(desc []byte) (CPUState, error) {
	if len(desc) < 8 {
		return CPUState{}, fmt.Errorf("%w: %d bytes", ErrBadQEMUNote, len(desc))
	}
	le := binary.LittleEndian
	version, size := le.Uint32(desc[0:]), uint64(le.Uint32(desc[4:]))
	if version != qemuStateVersion {
		return CPUState{}, fmt.Errorf("%w: QEMUCPUState version %d, want %d", ErrBadQEMUNote, version, qemuStateVersion)
	}
	// size is what the writing QEMU knew of; the note may be padded beyond it.
	if size > uint64(len(desc)) || size < qemuStateMinSize {
		return CPUState{}, fmt.Errorf("%w: QEMUCPUState size %d in a %d-byte note, need at least %d",
			ErrBadQEMUNote, size, len(desc), qemuStateMinSize)
	}
	cr := func(i int) uint64 { return le.Uint64(desc[offCR+8*i:]) }
	c := CPUState{
		CR0:    cr(0),
		CR3:    cr(3),
		CR4:    cr(4),
		RIP:    le.Uint64(desc[offRIP:]),
		GSBase: le.Uint64(desc[offGSBase:]),
	}
	if size >= qemuStateKGSBSSize {
		c.KernelGSBase, c.HasKernelGSBase = le.Uint64(desc[offKernelGSBase:]), true
	}
	return c, nil
}

// WriteDump makes QEMU write the guest's memory to path in the format OpenDump reads
// (dump-guest-memory, paging off, ELF), detached so that the monitor stays free, and waits for
// query-dump to report the end. Pause the guest first for one moment's memory.
func WriteDump(ctx context.Context, m Monitor, path string) error {
	args := map[string]any{"paging": false, "protocol": "file:" + path, "detach": true}
	if _, err := m.Run(ctx, "dump-guest-memory", args); err != nil {
		return fmt.Errorf("dump-guest-memory: %w", err)
	}
	for {
		ret, err := m.Run(ctx, "query-dump", nil)
		if err != nil {
			return fmt.Errorf("query-dump: %w", err)
		}
		var st struct {
			Status           string
			Completed, Total uint64
		}
		if err := json.Unmarshal(ret, &st); err != nil {
			return fmt.Errorf("query-dump: %w", err)
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed":
			return fmt.Errorf("dump-guest-memory failed after %d of %d bytes", st.Completed, st.Total)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("dump-guest-memory: %s after %d of %d bytes: %w", st.Status, st.Completed, st.Total, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
