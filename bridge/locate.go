package bridge

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"hybridbridge/kaslr"
	"hybridbridge/svm"
	"hybridbridge/target"
	"hybridbridge/vmm"
)

// kernelPlace is where the guest's kernel is in its RAM, found from the RAM alone: no vCPU
// register and nothing from inside the guest is needed, so it works for dumps, for VMs reached
// without a monitor, and for a vCPU whose CR3 is a user process's (PTI's user copy).
type kernelPlace struct {
	text   uint64 // guest-physical address of _text
	root   uint64 // guest-physical address of init_top_pgt: the kernel's own page-table root
	levels int
	layout kaslr.Layout
}

// physAlign is the kernel's CONFIG_PHYSICAL_ALIGN on x86-64 (Debian's and the default): the
// physical load address, randomised or not, is a multiple of it, so the banner can only be at
// one offset in each 2 MiB of RAM.
const physAlign = 2 << 20

// locateKernel finds the guest kernel's image in its RAM by the SVM kernel's banner at the
// banner's offset from _text, and its page-table root (init_top_pgt) at the same displacement. A
// candidate counts only if its page tables map _text back to it: a copy of the banner elsewhere
// (a file in the page cache) does not. A guest running another build is refused naming both.
func locateKernel(name string, phys vmm.PhysView, snap *svm.Snapshot, syms *vmm.Symbols) (kernelPlace, error) {
	text, banner := snap.Symbols["_text"], snap.Symbols["linux_banner"]
	top, ok := syms.Addr("init_top_pgt")
	if text == 0 || banner < text || !ok || top < text {
		return kernelPlace{}, errors.New("the kernel's symbols lack _text, linux_banner or init_top_pgt")
	}
	want := []byte(snap.Banner + "\n")
	got := make([]byte, len(want))
	var tried []string
	for _, r := range phys.Ranges() {
		first := (r.GuestPhys + physAlign - 1) &^ (physAlign - 1)
		for base := first; base+banner-text+uint64(len(want)) <= r.End(); base += physAlign {
			if err := phys.ReadPhys(base+banner-text, got); err != nil {
				return kernelPlace{}, fmt.Errorf("%s: %w", name, err)
			}
			if !bytes.Equal(got, want) {
				continue
			}
			p := kernelPlace{text: base, root: base + top - text}
			var err error
			if p.levels, err = pagingLevels(name, phys, syms, text, base); err != nil {
				return kernelPlace{}, err
			}
			if p.layout, err = readLayout(name, phys, syms, snap, base); err != nil {
				return kernelPlace{}, err
			}
			w, err := vmm.NewWalker(phys, p.root, p.levels)
			if err != nil {
				return kernelPlace{}, err
			}
			textVA := text - uint64(snap.TextOffset()) + uint64(p.layout.TextOffset)
			if pa, _, _, err := w.Translate(textVA); err != nil || pa != base {
				tried = append(tried, fmt.Sprintf("%#x (its page tables map _text at %#x to %#x, %v)", base, textVA, pa, err))
				continue
			}
			// The direct map must map the image where it is, too.
			if pa, _, _, err := w.Translate(p.layout.PageOffsetBase + base); err != nil || pa != base {
				tried = append(tried, fmt.Sprintf("%#x (its direct map at page_offset_base %#x maps it to %#x, %v)", base, p.layout.PageOffsetBase, pa, err))
				continue
			}
			return p, nil
		}
	}
	if len(tried) > 0 {
		return kernelPlace{}, fmt.Errorf("%w: the SVM kernel's banner is in %s's RAM, but not in a kernel image whose page tables map it: %s",
			ErrKernelMismatch, name, strings.Join(tried, "; "))
	}
	return kernelPlace{}, fmt.Errorf("%w: %s runs %s; the SVM runs %q (name the guest's kernel with --kernel)",
		ErrKernelMismatch, name, guestVersion(phys), snap.Banner)
}

// readLayout reads a kernel's layout from its image at base (kaslr.ReadLayout), with the text
// offset measured from the build's nokaslr _text: the SVM's _text less its own offset.
func readLayout(name string, phys vmm.PhysView, syms *vmm.Symbols, snap *svm.Snapshot, base uint64) (kaslr.Layout, error) {
	l, err := kaslr.ReadLayout(phys, syms, snap.Symbols["_text"]-uint64(snap.TextOffset()), base)
	if err != nil {
		return l, fmt.Errorf("%s: %w", name, err)
	}
	return l, nil
}

// svmLayout is the SVM's own layout, read from its snapshot: nokaslr unless it was built for a
// guest's layout.
func svmLayout(snap *svm.Snapshot) (kaslr.Layout, error) {
	l := kaslr.Layout{TextPhys: snap.Layout.KernelStart, TextOffset: snap.TextOffset()}
	for _, v := range []struct {
		sym string
		to  *uint64
	}{{"page_offset_base", &l.PageOffsetBase}, {"vmalloc_base", &l.VmallocBase}, {"vmemmap_base", &l.VmemmapBase}} {
		b, err := svmBytes(snap, snap.Symbols[v.sym], 8)
		if err != nil {
			return l, fmt.Errorf("SVM %s: %w", v.sym, err)
		}
		*v.to = binary.LittleEndian.Uint64(b)
	}
	return l, nil
}

// LayoutOf is GuestLayout, and whether it is snap's own: if not, inspecting t needs a snapshot
// built in t's layout (svm.BuildOptions.Layout).
func LayoutOf(t target.Target, snap *svm.Snapshot, syms *vmm.Symbols) (l kaslr.Layout, same bool, err error) {
	if l, err = GuestLayout(t, snap, syms); err != nil {
		return l, false, err
	}
	mine, err := svmLayout(snap)
	return l, l == mine, err
}

// GuestLayout finds t's kernel in its RAM and reads the layout its boot chose. Nothing is
// paused: the layout does not change while the kernel runs.
func GuestLayout(t target.Target, snap *svm.Snapshot, syms *vmm.Symbols) (kaslr.Layout, error) {
	p, err := locateKernel(t.Name(), t.Phys(), snap, syms)
	return p.layout, err
}

// pagingLevels reads whether the kernel at base runs with 5-level paging (__pgtable_l5_enabled,
// set at boot when the CPU has LA57 and the kernel allows it). A kernel built without 5-level
// support has no such variable and uses 4.
func pagingLevels(name string, phys vmm.PhysView, syms *vmm.Symbols, text, base uint64) (int, error) {
	va, ok := syms.Addr("__pgtable_l5_enabled")
	if !ok {
		return 4, nil
	}
	var b [4]byte
	if err := phys.ReadPhys(base+va-text, b[:]); err != nil {
		return 0, fmt.Errorf("%s: __pgtable_l5_enabled: %w", name, err)
	}
	if binary.LittleEndian.Uint32(b[:]) != 0 {
		return 5, nil
	}
	return 4, nil
}

// banner matches a kernel banner as linux_banner holds it: the release, the builder in
// parentheses, then the build number ("#1 SMP ..."). A bare "Linux version " can be other text.
var banner = regexp.MustCompile(`Linux version [^\x00\n ]+ \([^\x00\n]*\) #[0-9]+ [^\x00\n]*`)

// guestVersion names the kernel a guest runs, for the mismatch message: the first banner in its
// RAM (its linux_banner, or the boot log's copy of it).
func guestVersion(phys vmm.PhysView) string {
	const chunk = 4 << 20
	buf := make([]byte, chunk)
	for _, r := range phys.Ranges() {
		// Chunks overlap by a banner's length so that none is cut in two.
		for off := uint64(0); off < r.Size; off += chunk - 512 {
			n := min(uint64(len(buf)), r.Size-off)
			if err := phys.ReadPhys(r.GuestPhys+off, buf[:n]); err != nil {
				return fmt.Sprintf("an unreadable kernel (%v)", err)
			}
			if m := banner.Find(buf[:n]); m != nil {
				return fmt.Sprintf("%q", m)
			}
			if n < uint64(len(buf)) {
				break
			}
		}
	}
	return "no Linux kernel that hybridbridge can find"
}

// checkCR3 cross-checks the root found in the image with the vCPUs' own: a vCPU runs either on
// init_top_pgt or on a process's tables, whose kernel half the kernel copies from it. With PTI a
// CR3 sampled in user mode points at the user copy (bit 12 set); the low 12 bits hold PCID or
// cache flags.
func checkCR3(phys vmm.PhysView, p kernelPlace, cpus []target.CPUState) error {
	if len(cpus) == 0 {
		return nil
	}
	kernelHalf := func(root uint64) ([]byte, error) {
		b := make([]byte, 256*8)
		return b, phys.ReadPhys(root+256*8, b)
	}
	want, err := kernelHalf(p.root)
	if err != nil {
		return fmt.Errorf("init_top_pgt: %w", err)
	}
	for i, c := range cpus {
		if c.CR3 == 0 {
			continue // a vCPU that never left real mode (not booted)
		}
		root := c.CR3 & vmm.PTEAddrMask &^ 0x1fff
		if root == p.root {
			continue
		}
		got, err := kernelHalf(root)
		if err != nil {
			return fmt.Errorf("vCPU %d CR3 %#x: %w", i, c.CR3, err)
		}
		for e := 0; e < 256; e++ {
			w, g := binary.LittleEndian.Uint64(want[e*8:]), binary.LittleEndian.Uint64(got[e*8:])
			if w != 0 && w != g {
				return fmt.Errorf("%w: vCPU %d's CR3 %#x does not share the kernel's page tables found in the image at %#x (entry %d: %#x, the image's %#x)",
					ErrKernelMismatch, i, c.CR3, p.root, 256+e, g, w)
			}
		}
	}
	return nil
}

// CheckKernel says whether t runs the SVM's kernel build where the SVM can serve it, without
// pausing it or reading more than a few pages: the banner, the kernel's placement and the vCPUs'
// page-table roots. It is what attaching checks first.
func CheckKernel(ctx context.Context, t target.Target, snap *svm.Snapshot, syms *vmm.Symbols) error {
	_, err := checkKernelPlace(ctx, t, snap, syms)
	return err
}

// KernelView checks t as CheckKernel does and returns its kernel's address space, walked from
// the kernel's own page-table root (init_top_pgt) in its RAM: no vCPU register is needed (a dump,
// a VM without a monitor, a vCPU in user mode on PTI's user tables). Reads are stable only while
// t is paused.
func KernelView(ctx context.Context, t target.Target, snap *svm.Snapshot, syms *vmm.Symbols) (*vmm.VirtView, error) {
	p, err := checkKernelPlace(ctx, t, snap, syms)
	if err != nil {
		return nil, err
	}
	w, err := vmm.NewWalker(t.Phys(), p.root, p.levels)
	if err != nil {
		return nil, fmt.Errorf("%s page tables: %w", t.Name(), err)
	}
	return vmm.NewVirtView(t.Name()+" kernel", w), nil
}

func checkKernelPlace(ctx context.Context, t target.Target, snap *svm.Snapshot, syms *vmm.Symbols) (kernelPlace, error) {
	p, err := locateKernel(t.Name(), t.Phys(), snap, syms)
	if err != nil {
		return p, err
	}
	mine, err := svmLayout(snap)
	if err != nil {
		return p, err
	}
	if p.layout != mine {
		return p, fmt.Errorf("%w: %s has %s; this SVM snapshot has %s (inspect it with a snapshot built in its layout: svm.BuildOptions.Layout, as the commands do)",
			ErrLayoutMismatch, t.Name(), p.layout, mine)
	}
	cpus, err := t.CPUs(ctx)
	if err != nil {
		return p, err
	}
	return p, checkCR3(t.Phys(), p, cpus)
}
