// Package svm is the secure VM: a snapshot of the guest kernel stopped with an agent process at
// system-call entry (built once per kernel under QEMU), and an executor that loads it into Unicorn
// copy-on-write and injects system calls in kernel mode.
package svm

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"hybridbridge/guest"
	"hybridbridge/kaslr"
	"hybridbridge/vmm"
)

const (
	formatName = "hybridbridge-svm-snapshot"
	// FormatVersion changes whenever the snapshot's meaning changes; older snapshots are rebuilt.
	FormatVersion = 15
	metaFile      = "snapshot.json"
	ramFile       = "ram.img"
	relocsFile    = "relocs.bin" // a KASLR layout's relocation tables (kaslr.Relocs.MarshalBinary)
)

// Errors a snapshot load reports. Each is wrapped with the path and details.
var (
	ErrNoSnapshot      = errors.New("no SVM snapshot (build it with: hybridbridge svm build)")
	ErrSnapshotFormat  = errors.New("SVM snapshot has an unknown format or version")
	ErrSnapshotCorrupt = errors.New("SVM snapshot is corrupt")
	ErrKernelMismatch  = errors.New("SVM snapshot was built for another kernel")
)

// Segment is a segment register with its hidden descriptor part, as QEMU reports it.
type Segment struct {
	Selector uint16 `json:"selector"`
	Base     uint64 `json:"base"`
	Limit    uint32 `json:"limit"`
	Flags    uint32 `json:"flags"`
}

// CPU is the complete vCPU state at the capture point.
type CPU struct {
	GPR          map[string]uint64 `json:"gpr"` // rax..r15 by name
	RIP          uint64            `json:"rip"`
	RFLAGS       uint64            `json:"rflags"`
	CS, SS       Segment
	DS, ES       Segment
	FS, GS       Segment
	LDT, TR      Segment
	GDT, IDT     Segment // Base and Limit only
	FSBase       uint64  `json:"fs_base"`
	GSBase       uint64  `json:"gs_base"`
	KernelGSBase uint64  `json:"kernel_gs_base"`
	CR0          uint64  `json:"cr0"`
	CR2          uint64  `json:"cr2"`
	CR3          uint64  `json:"cr3"`
	CR4          uint64  `json:"cr4"`
	EFER         uint64  `json:"efer"`
}

// Layout is the SVM's physical memory plan (README: "The secure VM and the executor"): where a
// served guest's RAM may lie (Guest) is reserved in the SVM except the kernel image, so every
// allocation of the SVM's own lies elsewhere and the guest's RAM can later be overlaid at its own
// physical addresses.
type Layout struct {
	// RAMSize is the SVM's RAM (QEMU's -m), which its pc machine lays out as vmm.PCRanges does;
	// the snapshot's RAM file is laid out by physical address (RAMEnd bytes, the hole sparse).
	RAMSize     uint64     `json:"ram_size"`
	GVMMax      uint64     `json:"gvm_max"`      // largest guest RAM it can serve
	Guest       []PhysSpan `json:"guest"`        // where a served guest's RAM may lie
	KernelStart uint64     `json:"kernel_start"` // physical address of _text
	KernelEnd   uint64     `json:"kernel_end"`   // physical address of _end
	Reserved    []PhysSpan `json:"reserved"`     // memmap= ranges for the guest on the kernel command line
	// Tables is reserved too but never guest RAM: page-table pages the overlay adds where the
	// SVM has no table of its own: its direct map of the guest's RAM above 4 GiB, the guest's
	// per-CPU chunks.
	Tables    PhysSpan   `json:"tables"`
	SystemRAM []PhysSpan `json:"system_ram"` // "System RAM" in the SVM's /proc/iomem
}

// PhysSpan is [Start, End) in physical memory.
type PhysSpan struct {
	Start uint64 `json:"start"`
	End   uint64 `json:"end"`
}

func (s PhysSpan) String() string { return fmt.Sprintf("[%#x, %#x)", s.Start, s.End) }

// spansText renders spans for a message: "[0x0, 0x80000000) and [0x100000000, 0x180000000)".
func spansText(spans []PhysSpan) string {
	var parts []string
	for _, s := range spans {
		parts = append(parts, s.String())
	}
	return strings.Join(parts, " and ")
}

// InSpans reports whether phys lies in one of spans.
func InSpans(spans []PhysSpan, phys uint64) bool {
	for _, s := range spans {
		if phys >= s.Start && phys < s.End {
			return true
		}
	}
	return false
}

// Agent is where the agent process is.
type Agent struct {
	PID    int    `json:"pid"`
	Buffer uint64 `json:"buffer"` // user virtual address of its buffer
	Size   uint64 `json:"size"`
}

// Snapshot is the metadata of a captured SVM; its RAM is the sparse file ram.img beside it.
type Snapshot struct {
	Format   string `json:"format"`
	Version  int    `json:"version"`
	KernelID string `json:"kernel_id"` // hash of vmlinuz
	Release  string `json:"release"`
	Banner   string `json:"banner"` // "Linux version ..." as the SVM printed it booting
	Append   string `json:"append"` // its kernel command line

	Layout Layout `json:"layout"`
	// KASLR is the guest layout the SVM was booted into (BuildOptions.Layout); nil for a
	// nokaslr SVM. Every kernel address recorded here is the SVM's own, so with KASLR it
	// includes KASLR.TextOffset.
	KASLR *kaslr.Layout `json:"kaslr,omitempty"`
	// RelocsCRC32C checks relocs.bin, which a snapshot with a KASLR layout keeps: the places
	// its relocation changed, so that the instruction bytes it runs can be told as linked.
	RelocsCRC32C uint32 `json:"relocs_crc32c,omitempty"`
	// StructPage is sizeof(struct page), from the kernel's BTF; 0 if it has none. An address in
	// the struct-page array then tells which page frame it describes.
	StructPage uint64 `json:"struct_page,omitempty"`
	CPU        CPU    `json:"cpu"`
	Agent      Agent  `json:"agent"`

	// The capture point: do_syscall_64(regs, nr) entered for the agent's marker call.
	PtRegs     uint64   `json:"pt_regs"`     // RDI at entry
	ReturnAddr uint64   `json:"return_addr"` // [RSP] at entry: the call's return into entry_SYSCALL_64
	TSC        uint64   `json:"tsc"`         // the agent's rdtsc just before the call
	TSCKHz     uint64   `json:"tsc_khz"`     // the SVM kernel's TSC rate (its tsc_khz)
	TSCSites   []uint64 `json:"tsc_sites"`   // addresses of RDTSC/RDTSCP instructions in kernel text

	Symbols map[string]uint64 `json:"symbols"` // the kernel addresses the executor needs
	PIDs    []int             `json:"pids"`    // /proc's process list at capture (ground truth)
	// KeptImage are the pages of the kernel image that a kernel frees during boot and its page
	// allocator then hands out (init sections, the gaps between sections, the unused decrypted
	// bss and brk). The SVM's boot was steered to keep them unused (steering), so there they are
	// the guest's alone: the overlay maps the guest's RAM over them.
	KeptImage []PhysSpan `json:"kept_image"`
	// UptimeBeforeCapture is /proc/uptime read inside the SVM just before the capture.
	UptimeBeforeCapture float64 `json:"uptime_before_capture"`

	RAMCRC32C  uint32    `json:"ram_crc32c"` // over the data extents of ram.img
	RAMData    uint64    `json:"ram_data"`   // bytes in those extents
	CreatedAt  time.Time `json:"created_at"`
	BuildTimeS float64   `json:"build_time_s"`

	dir    string
	relocs *kaslr.Relocs // sorted; set with KASLR
}

// Dir is the snapshot's folder.
func (s *Snapshot) Dir() string { return s.dir }

// RAMPath is the snapshot's RAM file.
func (s *Snapshot) RAMPath() string { return filepath.Join(s.dir, ramFile) }

// TextOffset is how far the SVM's kernel image is from the build's nokaslr addresses: 0 unless
// the snapshot adopted a KASLR layout.
func (s *Snapshot) TextOffset() int64 {
	if s.KASLR == nil {
		return 0
	}
	return s.KASLR.TextOffset
}

// LinkAddr is the build's own (nokaslr, link-time) address of the SVM's kernel address va: the
// kernel map moves with the text offset, nothing else does. Addresses kept across boots (the
// memo's) are link addresses, so that every layout of a build shares them.
func (s *Snapshot) LinkAddr(va uint64) uint64 {
	if off := s.TextOffset(); off != 0 && inKernelMap(va) {
		return va - uint64(off)
	}
	return va
}

// SVMAddr is LinkAddr backwards.
func (s *Snapshot) SVMAddr(link uint64) uint64 {
	if off := s.TextOffset(); off != 0 && inKernelMap(link) {
		return link + uint64(off)
	}
	return link
}

// inKernelMap reports whether va lies in __START_KERNEL_map's 1 GiB, which holds only the kernel
// image (the modules follow it).
func inKernelMap(va uint64) bool { return va >= startKernelMap && va-startKernelMap < kernelMapSize }

// LinkBytes turns b, read from the SVM's memory at kernel address va, into the bytes the build
// links there: the relocated places wholly inside b get their linked values back, so the same
// instruction reads the same in every layout. A caller wanting exact bytes for a range reads 8
// more on each side (a place is at most 8 bytes).
func (s *Snapshot) LinkBytes(va uint64, b []byte) {
	if s.relocs == nil || !inKernelMap(va) {
		return
	}
	s.relocs.Undo(s.LinkAddr(va), b, s.TextOffset())
}

// SnapshotDir is where the snapshot for a kernel lives in the cache.
func SnapshotDir(cacheDir, kernelID string) string {
	return filepath.Join(cacheDir, "svm", kernelID)
}

// LayoutSnapshotDir is where the snapshot for a kernel booted into layout l lives in the cache:
// one folder per layout, beside the nokaslr one rather than in it, since replacing a snapshot
// replaces its whole folder.
func LayoutSnapshotDir(cacheDir, kernelID string, l kaslr.Layout) string {
	return filepath.Join(layoutsDir(cacheDir, kernelID), l.Key())
}

// layoutsDir holds the layout snapshots of a kernel build.
func layoutsDir(cacheDir, kernelID string) string {
	return filepath.Join(cacheDir, "svm", kernelID+"-kaslr")
}

// KernelSymbols returns the kernel's symbols as the SVM's own /proc/kallsyms lists them: the
// snapshot build's first boot caches them (guest.SymbolsPath), so no guest is ever asked for its
// symbols. The guest runs the same build, and with the same layout the addresses are the same.
// That boot is nokaslr: a snapshot with a KASLR layout gets them moved by its text offset.
func KernelSymbols(cacheDir string, snap *Snapshot) (*vmm.Symbols, error) {
	path := guest.SymbolsPath(cacheDir, snap.KernelID)
	syms, err := vmm.LoadSymbols(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("the SVM kernel's symbols are missing (%s); rebuild the snapshot: hybridbridge svm build", path)
	}
	if err != nil {
		return nil, fmt.Errorf("the SVM kernel's symbols: %w", err)
	}
	return svmSymbols(syms, snap.TextOffset()), nil
}

// svmSymbols moves a nokaslr symbol table by a KASLR text offset: the symbols of the kernel map
// (__START_KERNEL_map and the 1 GiB after it, KERNEL_IMAGE_SIZE) move, per-CPU offsets and
// absolute values do not.
func svmSymbols(syms *vmm.Symbols, offset int64) *vmm.Symbols {
	if offset == 0 {
		return syms
	}
	return syms.Shifted(startKernelMap, startKernelMap+kernelMapSize, offset)
}

const (
	startKernelMap = 0xffffffff80000000 // __START_KERNEL_map
	kernelMapSize  = 1 << 30            // KERNEL_IMAGE_SIZE with KASLR
)

// Load reads and checks a snapshot: format, version, the kernel it was built for, and the RAM
// file's size and checksum. kernelID "" skips the kernel check.
func Load(dir, kernelID string) (*Snapshot, error) {
	data, err := os.ReadFile(filepath.Join(dir, metaFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNoSnapshot, dir)
	}
	if err != nil {
		return nil, err
	}
	s := &Snapshot{dir: dir}
	if err := json.Unmarshal(data, s); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrSnapshotCorrupt, filepath.Join(dir, metaFile), err)
	}
	if s.Format != formatName || s.Version != FormatVersion {
		return nil, fmt.Errorf("%w: %s is %q version %d, this hybridbridge reads %q version %d (rebuild with: hybridbridge svm build)",
			ErrSnapshotFormat, dir, s.Format, s.Version, formatName, FormatVersion)
	}
	if kernelID != "" && s.KernelID != kernelID {
		return nil, fmt.Errorf("%w: snapshot kernel %s (%s), current kernel %s (rebuild with: hybridbridge svm build)",
			ErrKernelMismatch, s.KernelID, s.Release, kernelID)
	}
	crc, n, size, err := checksumRAM(s.RAMPath())
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSnapshotCorrupt, err)
	}
	if size != s.Layout.RAMEnd() || crc != s.RAMCRC32C || n != s.RAMData {
		return nil, fmt.Errorf("%w: %s: size %d, checksum %08x over %d bytes; recorded %d, %08x over %d (rebuild with: hybridbridge svm build)",
			ErrSnapshotCorrupt, s.RAMPath(), size, crc, n, s.Layout.RAMEnd(), s.RAMCRC32C, s.RAMData)
	}
	for _, name := range requiredSymbols {
		if s.Symbols[name] == 0 {
			return nil, fmt.Errorf("%w: symbol %s missing", ErrSnapshotCorrupt, name)
		}
	}
	if s.KASLR != nil {
		if s.relocs, err = loadRelocs(filepath.Join(dir, relocsFile), s.RelocsCRC32C); err != nil {
			return nil, fmt.Errorf("%w: %v (rebuild with: hybridbridge svm build)", ErrSnapshotCorrupt, err)
		}
	}
	return s, nil
}

// loadRelocs reads a KASLR snapshot's relocation tables and checks them against crc.
func loadRelocs(path string, crc uint32) (*kaslr.Relocs, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if got := crc32.Checksum(data, castagnoli); got != crc {
		return nil, fmt.Errorf("%s: checksum %08x, recorded %08x", path, got, crc)
	}
	r := new(kaslr.Relocs)
	if err := r.UnmarshalBinary(data); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// requiredSymbols are the kernel addresses the executor itself uses. Those a caller names in
// Options are recorded when the build is asked to keep them (BuildOptions.KeepSymbols), and
// checked when a machine opens.
var requiredSymbols = []string{"do_syscall_64", "entry_SYSCALL_64", "_text", "_etext", "_end", "tsc_khz",
	"linux_banner", "page_offset_base", "vmemmap_base", "vmalloc_base", "_sdata", "__init_begin", "__init_end",
	"__start_ro_after_init", "__end_ro_after_init", "__start_rodata", "__end_rodata"}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// checksumRAM computes CRC-32C over the file's data extents only (holes read as zeros and cost
// nothing), so checking a mostly-empty 1.5 GiB RAM file takes milliseconds.
func checksumRAM(path string) (crc uint32, dataBytes, size uint64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, 0, 0, err
	}
	size = uint64(st.Size())
	h := crc32.New(castagnoli)
	buf := make([]byte, 1<<20)
	for off := int64(0); off < st.Size(); {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			break // ENXIO: no data after off
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return 0, 0, 0, fmt.Errorf("seek hole in %s: %w", path, err)
		}
		// Offsets are part of the sum, so moving data to another place changes it.
		var hdr [16]byte
		binary.LittleEndian.PutUint64(hdr[:8], uint64(data))
		binary.LittleEndian.PutUint64(hdr[8:], uint64(hole-data))
		h.Write(hdr[:])
		if _, err := io.CopyBuffer(h, io.NewSectionReader(f, data, hole-data), buf); err != nil {
			return 0, 0, 0, fmt.Errorf("read %s: %w", path, err)
		}
		dataBytes += uint64(hole - data)
		off = hole
	}
	return h.Sum32(), dataBytes, size, nil
}

// save writes the snapshot into dir atomically: everything goes to a temporary folder beside it
// that replaces dir only when complete.
func (s *Snapshot) save(tmpDir, dir string) error {
	crc, n, size, err := checksumRAM(filepath.Join(tmpDir, ramFile))
	if err != nil {
		return err
	}
	if size != s.Layout.RAMEnd() {
		return fmt.Errorf("RAM file is %d bytes, SVM RAM ends at %#x", size, s.Layout.RAMEnd())
	}
	s.RAMCRC32C, s.RAMData = crc, n
	if s.KASLR != nil {
		if s.relocs == nil {
			return errors.New("a KASLR layout without its relocation tables")
		}
		enc, err := s.relocs.MarshalBinary()
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(tmpDir, relocsFile), enc, 0o644); err != nil {
			return err
		}
		s.RelocsCRC32C = crc32.Checksum(enc, castagnoli)
		// As Load would have them: sorted, which LinkBytes needs.
		sorted := new(kaslr.Relocs)
		if err := sorted.UnmarshalBinary(enc); err != nil {
			return err
		}
		s.relocs = sorted
	}
	s.Format, s.Version = formatName, FormatVersion
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmpDir, metaFile), append(data, '\n'), 0o644); err != nil {
		return err
	}
	old := dir + ".old"
	_ = os.RemoveAll(old)
	if _, err := os.Stat(dir); err == nil {
		if err := os.Rename(dir, old); err != nil {
			return err
		}
	}
	if err := os.Rename(tmpDir, dir); err != nil {
		return err
	}
	s.dir = dir
	return os.RemoveAll(old)
}
