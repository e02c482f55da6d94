package kaslr

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"

	"hybridbridge/vmm"
)

// Layout is what KASLR chose when a kernel booted: where its image is, physically and
// virtually, and the bases of its direct map, vmalloc area and struct pages
// (CONFIG_RANDOMIZE_MEMORY). Pointers in a guest's memory mean the same in the SVM only where
// both have the same layout.
type Layout struct {
	TextPhys uint64 `json:"text_phys"` // physical address of _text
	// TextOffset is the virtual _text minus the build's own (nokaslr) _text: the delta the
	// relocation tables are applied with.
	TextOffset     int64  `json:"text_offset"`
	PageOffsetBase uint64 `json:"page_offset_base"`
	VmallocBase    uint64 `json:"vmalloc_base"`
	VmemmapBase    uint64 `json:"vmemmap_base"`
}

func (l Layout) String() string {
	return fmt.Sprintf("kernel at physical %#x, text offset %+#x, page_offset_base %#x, vmalloc_base %#x, vmemmap_base %#x",
		l.TextPhys, l.TextOffset, l.PageOffsetBase, l.VmallocBase, l.VmemmapBase)
}

// Key names the layout in file names: the same five values give the same key, and any other
// layout a different one (to the odds of a 64-bit hash collision).
func (l Layout) Key() string {
	var b [40]byte
	binary.LittleEndian.PutUint64(b[0:], l.TextPhys)
	binary.LittleEndian.PutUint64(b[8:], uint64(l.TextOffset))
	binary.LittleEndian.PutUint64(b[16:], l.PageOffsetBase)
	binary.LittleEndian.PutUint64(b[24:], l.VmallocBase)
	binary.LittleEndian.PutUint64(b[32:], l.VmemmapBase)
	sum := sha256.Sum256(b[:])
	return hex.EncodeToString(sum[:8])
}

// pudSize is the alignment kernel_randomize_memory (arch/x86/mm/kaslr.c) gives each base: it
// rounds up to PUD_SIZE and adds entropy masked with PUD_MASK.
const pudSize = 1 << 30

// kernelHalf is the lowest address of the kernel half of the address space with 5-level
// paging, which is lower than 4-level's: the bases are in it with either.
const kernelHalf = 0xff00000000000000

// Check says whether b's kernel can run with layout l, as its own decompressor and
// kernel_randomize_memory could have chosen it: the image at a physical address aligned to the
// kernel's alignment and not below the one it is linked at; the virtual _text moved by a
// multiple of that alignment and kept, with the whole image, inside the kernel map (1 GiB,
// KERNEL_IMAGE_SIZE); the three bases 1 GiB aligned in the kernel half. The error names the
// first value that fails.
func (l Layout) Check(b *BzImage) error {
	align := uint64(b.Header.KernelAlignment)
	if align == 0 {
		return errors.New("the bzImage's setup header gives no kernel alignment")
	}
	if l.TextPhys%align != 0 || l.TextPhys < b.LoadPhys {
		return fmt.Errorf("physical address %#x of _text: not a multiple of the kernel's alignment %#x at or above %#x", l.TextPhys, align, b.LoadPhys)
	}
	if uint64(l.TextOffset)%align != 0 {
		return fmt.Errorf("text offset %+#x: not a multiple of the kernel's alignment %#x", l.TextOffset, align)
	}
	// The decompressor picks the virtual address at or above LOAD_PHYSICAL_ADDR within
	// KERNEL_IMAGE_SIZE (find_random_virt_addr): below it the image would overlap the map's
	// start, above it the modules.
	text := b.TextVA + uint64(l.TextOffset)
	if text < startKernelMap+b.LoadPhys || text-startKernelMap > kernelImageSize-b.ImageSize() {
		return fmt.Errorf("text offset %+#x puts _text at %#x: the %#x-byte image must lie within [%#x, %#x)",
			l.TextOffset, text, b.ImageSize(), startKernelMap+b.LoadPhys, uint64(startKernelMap+kernelImageSize))
	}
	for _, v := range []struct {
		name string
		base uint64
	}{{"page_offset_base", l.PageOffsetBase}, {"vmalloc_base", l.VmallocBase}, {"vmemmap_base", l.VmemmapBase}} {
		if v.base < kernelHalf || v.base >= startKernelMap || v.base%pudSize != 0 {
			return fmt.Errorf("%s %#x: not a 1 GiB aligned address in the kernel half below %#x", v.name, v.base, uint64(startKernelMap))
		}
	}
	return nil
}

// ReadLayout reads the layout of a running kernel from its image at physical base in mem. syms
// is the kernel build's symbol table at any one text offset: only addresses relative to its
// _text matter, since the image's data is where the build puts it relative to _text whatever
// KASLR chose. refText is the build's own (nokaslr) _text, which TextOffset is measured from.
//
// phys_base is the physical address the image's virtual mapping starts at (__pa of an image
// address is va - __START_KERNEL_map + phys_base), so the virtual _text is base - phys_base +
// __START_KERNEL_map; the three bases are read from their variables.
func ReadLayout(mem vmm.PhysView, syms *vmm.Symbols, refText, base uint64) (Layout, error) {
	text, ok := syms.Addr("_text")
	if !ok {
		return Layout{}, errors.New("the kernel's symbols lack _text")
	}
	read := func(sym string) (uint64, error) {
		va, ok := syms.Addr(sym)
		if !ok || va < text {
			return 0, fmt.Errorf("the kernel's symbols lack %s", sym)
		}
		var b [8]byte
		if err := mem.ReadPhys(base+va-text, b[:]); err != nil {
			return 0, fmt.Errorf("%s: %w", sym, err)
		}
		return binary.LittleEndian.Uint64(b[:]), nil
	}
	l := Layout{TextPhys: base}
	pb, err := read("phys_base")
	if err != nil {
		return l, err
	}
	l.TextOffset = int64(base-pb+startKernelMap) - int64(refText)
	for _, v := range []struct {
		sym string
		to  *uint64
	}{{"page_offset_base", &l.PageOffsetBase}, {"vmalloc_base", &l.VmallocBase}, {"vmemmap_base", &l.VmemmapBase}} {
		if *v.to, err = read(v.sym); err != nil {
			return l, err
		}
	}
	return l, nil
}
