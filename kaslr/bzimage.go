// Package kaslr lets the secure VM take on a KASLR'd guest's layout. It reads the guest's own
// bzImage: the kernel ELF inside its compressed payload and the relocation tables the build
// appends to it, which the decompressor applies when KASLR moves the kernel.
package kaslr

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"

	"hybridbridge/guest"
)

// Offsets in the bzImage's first sector and setup header (the kernel's
// Documentation/arch/x86/boot.rst).
const (
	offSetupSects      = 0x1f1
	offHeaderMagic     = 0x202
	offProtocol        = 0x206
	offKernelAlignment = 0x230
	offRelocatable     = 0x234
	offXLoadFlags      = 0x236
	offPayloadOffset   = 0x248
	offPayloadLength   = 0x24c
	offPrefAddress     = 0x258
	offInitSize        = 0x260
	headerEnd          = 0x264

	// Payload_offset and payload_length exist from boot protocol 2.08.
	minProtocol = 0x208
	sectorSize  = 512

	// startKernelMap is __START_KERNEL_map: the kernel's virtual addresses are its physical link
	// addresses plus this.
	startKernelMap = 0xffffffff80000000

	// maxPayload bounds what a payload may claim to decompress to; x86-64 kernel images are
	// limited to 1 GiB (KERNEL_IMAGE_SIZE).
	maxPayload = 1 << 30
)

// SetupHeader holds the fields of the bzImage's setup header that locate and place the kernel.
type SetupHeader struct {
	// SetupSects is the number of 512-byte setup sectors after the boot sector (a stored 0
	// means 4).
	SetupSects int
	// Protocol is the boot protocol version, e.g. 0x20f for 2.15.
	Protocol uint16
	// KernelAlignment is the physical alignment the kernel needs when it is relocated.
	KernelAlignment uint32
	// Relocatable reports relocatable_kernel: the kernel may run at another physical address.
	Relocatable bool
	// XLoadFlags holds the XLF_* capability bits (bit 0: 64-bit entry at 0x200).
	XLoadFlags uint16
	// PayloadOffset is the compressed payload's offset from the protected-mode code's start.
	PayloadOffset uint32
	// PayloadLength is the payload's length, including the 4-byte decompressed size at its end.
	PayloadLength uint32
	// PrefAddress is the physical address the kernel prefers to run at (LOAD_PHYSICAL_ADDR).
	PrefAddress uint64
	// InitSize is the memory the kernel needs from its load address until it has set itself up.
	InitSize uint32
}

// ProtectedModeOffset is where the protected-mode code (what loaders put at 0x100000) starts in
// the file.
func (h *SetupHeader) ProtectedModeOffset() int { return (h.SetupSects + 1) * sectorSize }

// BzImage is a bzImage with its payload decompressed: the kernel ELF (vmlinux.bin, stripped of
// symbols) and its relocation tables.
type BzImage struct {
	// Path is the file it was read from.
	Path string
	// Header is the setup header.
	Header SetupHeader
	// Version is the setup header's kernel_version string; Release is its first word.
	Version, Release string
	// VMLinux holds the ELF file's bytes, without the relocation tables that followed it.
	VMLinux []byte
	// ELF parses VMLinux.
	ELF *elf.File
	// Loads are ELF's PT_LOAD program headers in file order.
	Loads []*elf.Prog
	// TextVA is the link-time virtual address of _text, the lowest PT_LOAD's; LoadPhys is its
	// physical link address (LOAD_PHYSICAL_ADDR). Image offset 0 is _text.
	TextVA, LoadPhys uint64
	// RelocEnd is the end of the range relocations may touch, as a link-time virtual address:
	// __bss_start (the .bss section) when the ELF has section headers, otherwise the image's end.
	RelocEnd uint64
	// Relocs are the relocation tables; all empty for a kernel built without them (not
	// relocatable, or 64-bit without CONFIG_RANDOMIZE_BASE).
	Relocs Relocs
}

// compressions name a payload's compression by its magic bytes (the kernel's
// lib/decompress.c compressed_formats).
var compressions = []struct {
	name  string
	magic []byte
}{
	{"XZ", xzMagic},
	{"gzip", []byte{0x1f, 0x8b}},
	{"bzip2", []byte{'B', 'Z', 'h'}},
	{"LZMA", []byte{0x5d, 0x00, 0x00}},
	{"LZO", []byte{0x89, 'L', 'Z', 'O'}},
	{"LZ4", []byte{0x02, 0x21, 0x4c, 0x18}},
	{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd}},
}

// CompressionError means the payload is compressed with something other than XZ.
type CompressionError struct {
	// Compression names it ("gzip", "zstd", …); "" when the magic is unknown.
	Compression string
	// Magic is the payload's first bytes.
	Magic []byte
}

func (e *CompressionError) Error() string {
	name := e.Compression
	if name == "" {
		name = "an unknown compression"
	}
	return fmt.Sprintf("payload compressed with %s; only XZ is supported (it starts % x)", name, e.Magic)
}

// OpenBzImage reads the bzImage at path, decompresses its payload and separates the kernel ELF
// from the relocation tables. Errors wrap guest.ErrNotBzImage when the file is not a bzImage
// and are a *CompressionError when its payload is not XZ.
func OpenBzImage(path string) (*BzImage, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("bzImage: %w", err)
	}
	b, err := parseBzImage(data)
	if err != nil {
		return nil, fmt.Errorf("bzImage %s: %w", path, err)
	}
	b.Path = path
	return b, nil
}

// parseBzImage does OpenBzImage's work on the file's bytes.
func parseBzImage(data []byte) (*BzImage, error) {
	version, err := guest.BzImageVersion(data)
	if err != nil {
		return nil, err
	}
	b := &BzImage{Version: version, Release: strings.Fields(version)[0]}
	h := &b.Header
	h.Protocol = binary.LittleEndian.Uint16(data[offProtocol:])
	if h.Protocol < minProtocol {
		return nil, fmt.Errorf("%w: boot protocol %d.%02d is older than 2.08 and does not locate its payload",
			guest.ErrNotBzImage, h.Protocol>>8, h.Protocol&0xff)
	}
	if len(data) < headerEnd {
		return nil, fmt.Errorf("%w: %d bytes, too short for a 2.08 setup header", guest.ErrNotBzImage, len(data))
	}
	le := binary.LittleEndian
	h.SetupSects = int(data[offSetupSects])
	if h.SetupSects == 0 {
		h.SetupSects = 4
	}
	h.KernelAlignment = le.Uint32(data[offKernelAlignment:])
	h.Relocatable = data[offRelocatable] != 0
	h.XLoadFlags = le.Uint16(data[offXLoadFlags:])
	h.PayloadOffset = le.Uint32(data[offPayloadOffset:])
	h.PayloadLength = le.Uint32(data[offPayloadLength:])
	h.PrefAddress = le.Uint64(data[offPrefAddress:])
	h.InitSize = le.Uint32(data[offInitSize:])

	start := uint64(h.ProtectedModeOffset()) + uint64(h.PayloadOffset)
	end := start + uint64(h.PayloadLength)
	if h.PayloadLength < 4 || end > uint64(len(data)) {
		return nil, fmt.Errorf("payload [%#x, %#x) does not fit in the file's %d bytes (truncated?)", start, end, len(data))
	}
	payload := data[start:end]
	var name string
	for _, c := range compressions {
		if bytes.HasPrefix(payload, c.magic) {
			name = c.name
			break
		}
	}
	if name != "XZ" {
		return nil, &CompressionError{Compression: name, Magic: bytes.Clone(payload[:min(len(payload), 6)])}
	}
	// The build appends the decompressed size (arch/x86/boot/compressed/Makefile, size_append).
	want := le.Uint32(payload[len(payload)-4:])
	blob, err := decodeXZ(payload[:len(payload)-4])
	if err != nil {
		return nil, fmt.Errorf("payload: %w", err)
	}
	if uint64(len(blob)) != uint64(want) {
		return nil, fmt.Errorf("payload: decompressed to %d bytes, the bzImage says %d", len(blob), want)
	}
	if err := b.parseVMLinux(blob); err != nil {
		return nil, fmt.Errorf("payload: %w", err)
	}
	if b.LoadPhys != h.PrefAddress {
		return nil, fmt.Errorf("kernel ELF is linked at physical %#x, the setup header prefers %#x", b.LoadPhys, h.PrefAddress)
	}
	return b, nil
}

// parseVMLinux splits the decompressed payload into the ELF and the relocation tables after it:
// the ELF's own headers say where it ends, and the tables must fill the rest exactly.
func (b *BzImage) parseVMLinux(blob []byte) error {
	f, err := elf.NewFile(bytes.NewReader(blob))
	if err != nil {
		return fmt.Errorf("kernel ELF: %w", err)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		return fmt.Errorf("kernel ELF is %v %v %v, not an x86-64 executable", f.Class, f.Machine, f.Type)
	}
	elfEnd := elfExtent(f, blob)
	if elfEnd > uint64(len(blob)) {
		return fmt.Errorf("kernel ELF reaches %#x, past the payload's %#x bytes", elfEnd, len(blob))
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD {
			continue
		}
		b.Loads = append(b.Loads, p)
		// The per-CPU segment is linked at virtual 0; _text is the lowest kernel-map one.
		if p.Vaddr >= startKernelMap && (b.TextVA == 0 || p.Vaddr < b.TextVA) {
			b.TextVA, b.LoadPhys = p.Vaddr, p.Paddr
		}
	}
	if b.TextVA == 0 {
		return errors.New("kernel ELF has no PT_LOAD in the kernel map")
	}
	if b.TextVA-b.LoadPhys != startKernelMap {
		return fmt.Errorf("kernel ELF maps _text %#x to physical %#x, not at __START_KERNEL_map %#x", b.TextVA, b.LoadPhys, uint64(startKernelMap))
	}
	var imageEnd uint64
	for _, p := range b.Loads {
		if p.Paddr < b.LoadPhys || p.Paddr-b.LoadPhys > maxPayload || p.Memsz > maxPayload || p.Filesz > p.Memsz {
			return fmt.Errorf("PT_LOAD at physical %#x (%#x of %#x bytes in the file) does not fit above _text's %#x",
				p.Paddr, p.Filesz, p.Memsz, b.LoadPhys)
		}
		imageEnd = max(imageEnd, p.Paddr-b.LoadPhys+p.Memsz)
	}
	if imageEnd > maxPayload {
		return fmt.Errorf("kernel ELF spans %#x bytes, more than %#x", imageEnd, maxPayload)
	}
	b.RelocEnd = b.TextVA + imageEnd
	if bss := f.Section(".bss"); bss != nil && bss.Addr > b.TextVA && bss.Addr < b.RelocEnd {
		b.RelocEnd = bss.Addr
	}
	b.VMLinux, b.ELF = blob[:elfEnd:elfEnd], f
	if b.Relocs, err = parseRelocs(blob[elfEnd:]); err != nil {
		return err
	}
	return b.Relocs.check(b.TextVA, b.RelocEnd)
}

// elfExtent is the end of the last byte the ELF's headers account for: the program and section
// header tables and the contents of segments and sections. debug/elf keeps neither e_phoff nor
// e_shoff, so the tables' places are read from the raw header (ELF64 layout).
func elfExtent(f *elf.File, raw []byte) uint64 {
	le := binary.LittleEndian
	end := max(le.Uint64(raw[0x20:])+uint64(le.Uint16(raw[0x36:]))*uint64(le.Uint16(raw[0x38:])),
		le.Uint64(raw[0x28:])+uint64(le.Uint16(raw[0x3a:]))*uint64(le.Uint16(raw[0x3c:])))
	for _, p := range f.Progs {
		end = max(end, p.Off+p.Filesz)
	}
	for _, s := range f.Sections {
		if s.Type != elf.SHT_NOBITS {
			end = max(end, s.Offset+s.FileSize)
		}
	}
	return end
}

// ImageSize is the size of the kernel as loaded: from _text to the end of the highest PT_LOAD in
// memory (_end, or .init.scratch's end where the build has one).
func (b *BzImage) ImageSize() uint64 {
	var end uint64
	for _, p := range b.Loads {
		end = max(end, p.Paddr-b.LoadPhys+p.Memsz)
	}
	return end
}

// Image lays the kernel out as the decompressor does (arch/x86/boot/compressed/misc.c
// parse_elf): each PT_LOAD's file bytes at its physical link address minus LOAD_PHYSICAL_ADDR,
// so offset 0 is _text. The rest (.bss and the like, which the decompressor leaves as it finds
// them) is zero.
func (b *BzImage) Image() []byte {
	img := make([]byte, b.ImageSize())
	for _, p := range b.Loads {
		off := p.Paddr - b.LoadPhys
		copy(img[off:off+p.Filesz], b.VMLinux[p.Off:p.Off+p.Filesz])
	}
	return img
}
