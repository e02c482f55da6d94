package svm

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"hybridbridge/guest"
	"hybridbridge/guest/gdbstub"
	"hybridbridge/kaslr"
	"hybridbridge/vmm"
)

// Offsets in struct boot_params (arch/x86/include/uapi/asm/bootparam.h; the setup header starts
// at 0x1f1) that the layout boot reads or patches.
const (
	bpExtCmdLinePtr = 0x0c8
	bpHeaderMagic   = 0x202 // "HdrS"
	bpLoadFlags     = 0x211
	bpRamdiskImage  = 0x218
	bpRamdiskSize   = 0x21c
	bpCmdLinePtr    = 0x228
	bpCmdlineSize   = 0x238
	bpInitSize      = 0x260
	bpEnd           = 0x264

	// kaslrFlag is KASLR_FLAG in loadflags: the decompressor sets it when it randomised, and
	// the kernel's kaslr_enabled() (so kernel_randomize_memory) reads nothing else.
	kaslrFlag = 1 << 1

	// protectedModeEntry is where QEMU's loader puts the bzImage's protected-mode code and
	// where its setup code jumps (code32_start): the compressed kernel's startup_32.
	protectedModeEntry = 0x100000

	fourGiB = 1 << 32
)

// layoutBoot steers the SVM's boot into a KASLR layout. The kernel boots with
// nokaslr, so its decompressor neither randomises nor relocates anything; at three stops under
// the gdbstub this does what KASLR would have done, with the layout's values for the random
// ones. Until the kernel's own page tables are up, memory is read and written through the RAM
// file.
type layoutBoot struct {
	bz     *kaslr.BzImage
	layout kaslr.Layout
	ref    *vmm.Symbols       // the build's nokaslr symbols: breakpoints are these plus the offset
	report func(stage string) // Build's progress
}

// checkLayoutFits refuses, before anything boots, a layout the SVM cannot take on: one its
// kernel could not have chosen itself (kaslr.Layout.Check), or one whose decompression buffer
// [TextPhys, TextPhys+init_size) does not fit in the SVM's RAM below 4 GiB (startup_32 runs in
// 32-bit mode), or whose image does not end below the largest guest, where the reserved ranges
// resume.
func checkLayoutFits(bz *kaslr.BzImage, l kaslr.Layout, plan Layout) error {
	if err := l.Check(bz); err != nil {
		return err
	}
	p := l.TextPhys
	low := plan.RAMRanges()[0]
	if end := p + uint64(bz.Header.InitSize); end > low.End() || end > fourGiB {
		return fmt.Errorf("the kernel needs [%#x, %#x) to decompress (init_size %#x), beyond the SVM's RAM below 4 GiB (%d MiB)",
			p, end, bz.Header.InitSize, low.End()>>20)
	}
	end := p + bz.ImageSize()
	for _, g := range plan.Guest {
		if p >= g.Start && end <= g.End {
			return nil
		}
	}
	return fmt.Errorf("the kernel image [%#x, %#x) lies outside the guest RAM the SVM serves (%s, guests up to %d MiB)", p, end, spansText(plan.Guest), plan.GVMMax>>20)
}

// openLayoutBoot reads the kernel's bzImage for its relocations and checks that the SVM can take
// on layout l, before anything boots.
func openLayoutBoot(kernel string, l kaslr.Layout, gvmMax uint64, report func(string)) (*layoutBoot, error) {
	bz, err := kaslr.OpenBzImage(kernel)
	if err != nil {
		return nil, err
	}
	if err := checkLayoutFits(bz, l, planLayout(gvmMax, l.TextPhys, l.TextPhys+bz.ImageSize())); err != nil {
		return nil, fmt.Errorf("the SVM cannot take on the layout (%s): %w", l, err)
	}
	return &layoutBoot{bz: bz, layout: l, report: report}, nil
}

// place checks the probe boot against the bzImage (a nokaslr kernel at its link addresses) and
// moves the image's physical range [kstart, kend) to where the layout puts it.
func (b *layoutBoot) place(ref *vmm.Symbols, kstart, kend uint64) (uint64, uint64, error) {
	text, _ := ref.Addr("_text")
	if text != b.bz.TextVA || kstart != b.bz.LoadPhys {
		return 0, 0, fmt.Errorf("the probe boot ran _text at %#x, physical %#x; the bzImage links it at %#x, %#x (was it nokaslr?)",
			text, kstart, b.bz.TextVA, b.bz.LoadPhys)
	}
	b.ref = ref
	return b.layout.TextPhys, b.layout.TextPhys + kend - kstart, nil
}

// check reads the booted SVM's layout from its memory as the bridge reads a guest's, and
// compares it with the one it was to take on.
func (b *layoutBoot) check(g *guest.Guest, svmSyms *vmm.Symbols) error {
	mem, err := g.Memory()
	if err != nil {
		return err
	}
	defer mem.Close()
	got, err := kaslr.ReadLayout(mem, svmSyms, b.bz.TextVA, b.layout.TextPhys)
	if err != nil {
		return fmt.Errorf("the SVM's layout: %w", err)
	}
	if got != b.layout {
		return fmt.Errorf("the SVM booted into %s, not %s", got, b.layout)
	}
	return nil
}

// enter stops at the protected-mode entry and at the kernel's 64-bit entry to place and
// relocate the kernel. Until the kernel's own page tables are up, memory is written through the
// RAM file.
func (b *layoutBoot) enter(ctx context.Context, c *gdbstub.Client, g *guest.Guest) error {
	path, err := g.RAMPath()
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open SVM RAM: %w", err)
	}
	ram, err := unix.Mmap(int(f.Fd()), 0, int(g.Meta.RAMSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	f.Close()
	if err != nil {
		return fmt.Errorf("map SVM RAM: %w", err)
	}
	defer unix.Munmap(ram)
	b.report(fmt.Sprintf("placing the kernel at physical %#x", b.layout.TextPhys))
	if err := b.placeImage(ctx, c, ram); err != nil {
		return fmt.Errorf("at the protected-mode entry: %w", err)
	}
	b.report(fmt.Sprintf("relocating the kernel by %+#x", b.layout.TextOffset))
	if err := b.relocate(ctx, c, ram); err != nil {
		return fmt.Errorf("at the kernel's entry: %w", err)
	}
	return nil
}

// runTo runs the VM to a breakpoint at addr, then removes it.
func runTo(ctx context.Context, c *gdbstub.Client, addr uint64, what string) (map[string]uint64, error) {
	if err := c.SetBreakpoint(ctx, addr); err != nil {
		return nil, err
	}
	if _, err := c.Continue(ctx); err != nil {
		return nil, fmt.Errorf("run to %s at %#x: %w", what, addr, err)
	}
	regs, err := c.ReadRegisters(ctx)
	if err != nil {
		return nil, err
	}
	if regs["rip"] != addr {
		return nil, fmt.Errorf("run to %s at %#x: stopped at %#x", what, addr, regs["rip"])
	}
	return regs, c.ClearBreakpoint(ctx, addr)
}

// placeImage stops at the protected-mode entry and moves the code QEMU loaded there to the
// layout's physical address, where it continues. With CONFIG_RELOCATABLE the decompressor
// puts the kernel at its own load address rounded up to kernel_alignment, so the kernel
// lands at TextPhys. It also moves the initrd below TextPhys if it lies in the decompression
// buffer, which the decompressor does not check (a KASLR'd one picks a place clear of it).
func (b *layoutBoot) placeImage(ctx context.Context, c *gdbstub.Client, ram []byte) error {
	regs, err := runTo(ctx, c, protectedModeEntry, "startup_32")
	if err != nil {
		return err
	}
	le := binary.LittleEndian
	bp := regs["rsi"] & 0xffffffff
	if bp+bpEnd > uint64(len(ram)) || string(ram[bp+bpHeaderMagic:][:4]) != "HdrS" {
		return fmt.Errorf("ESI %#x does not point at boot_params (no \"HdrS\" at +%#x)", bp, bpHeaderMagic)
	}
	initSize := uint64(le.Uint32(ram[bp+bpInitSize:]))
	if initSize != uint64(b.bz.Header.InitSize) {
		return fmt.Errorf("boot_params init_size %#x, the bzImage's %#x: QEMU booted another kernel", initSize, b.bz.Header.InitSize)
	}
	file, err := os.ReadFile(b.bz.Path)
	if err != nil {
		return err
	}
	pm := file[b.bz.Header.ProtectedModeOffset():]
	if protectedModeEntry+uint64(len(pm)) > uint64(len(ram)) || !bytes.Equal(ram[protectedModeEntry:][:len(pm)], pm) {
		return fmt.Errorf("the code at %#x is not %s's protected-mode code", protectedModeEntry, b.bz.Path)
	}
	p := b.layout.TextPhys
	if p+initSize > uint64(len(ram)) {
		return fmt.Errorf("[%#x, %#x) to decompress into exceeds the SVM's RAM", p, p+initSize)
	}
	pmEnd := protectedModeEntry + uint64(len(pm))
	if from, to, err := moveInitrd(ram, bp, p, p+initSize, pmEnd); err != nil {
		return err
	} else if from != to {
		b.report(fmt.Sprintf("moved the initrd from %#x to %#x, out of the kernel's way", from, to))
	}
	// Nothing has run at p yet, so no translated code can be stale.
	copy(ram[p:], pm)
	if err := c.WriteRegister(ctx, "rip", p); err != nil {
		return err
	}
	// The decompressed kernel's entry is at p too: step off it before that breakpoint is set.
	if _, err := c.StepInstruction(ctx); err != nil {
		return fmt.Errorf("step at %#x: %w", p, err)
	}
	return nil
}

// relocate stops at the decompressed kernel's 64-bit entry and does what the decompressor's
// handle_relocations would have done for the layout's text offset; then it tells the kernel
// KASLR is on (KASLR_FLAG), and drops nokaslr from the command line the kernel is about to
// copy, so that the kernel proper sees the guest's.
func (b *layoutBoot) relocate(ctx context.Context, c *gdbstub.Client, ram []byte) error {
	p := b.layout.TextPhys
	entry := p + b.bz.ELF.Entry - b.bz.LoadPhys
	regs, err := runTo(ctx, c, entry, "startup_64")
	if err != nil {
		return err
	}
	size := b.bz.ImageSize()
	if p+size > uint64(len(ram)) {
		return fmt.Errorf("the image [%#x, %#x) exceeds the SVM's RAM", p, p+size)
	}
	image := ram[p : p+size]
	for _, s := range b.bz.Loads {
		if s.Paddr == b.bz.LoadPhys {
			n := min(s.Filesz, 4096)
			if !bytes.Equal(image[:n], b.bz.VMLinux[s.Off:s.Off+n]) {
				return fmt.Errorf("the kernel was not decompressed to %#x", p)
			}
		}
	}
	// Written through the RAM file, which QEMU's check for self-modifying code does not see:
	// safe because the decompressor's own stores dropped whatever QEMU had translated from
	// these pages, and nothing has run from them since (the breakpoint stops before
	// translating).
	if err := b.bz.Relocate(image, b.layout.TextOffset); err != nil {
		return err
	}
	le := binary.LittleEndian
	bp := regs["rsi"]
	if bp+bpEnd > uint64(len(ram)) || string(ram[bp+bpHeaderMagic:][:4]) != "HdrS" {
		return fmt.Errorf("RSI %#x does not point at boot_params", bp)
	}
	ram[bp+bpLoadFlags] |= kaslrFlag
	cmd := uint64(le.Uint32(ram[bp+bpCmdLinePtr:])) | uint64(le.Uint32(ram[bp+bpExtCmdLinePtr:]))<<32
	// cmdline_size leaves out the terminating NUL.
	room := uint64(le.Uint32(ram[bp+bpCmdlineSize:])) + 1
	if cmd == 0 || cmd+room > uint64(len(ram)) {
		return fmt.Errorf("command line at %#x (%d bytes) is not in RAM", cmd, room)
	}
	line := ram[cmd : cmd+room]
	n := bytes.IndexByte(line, 0)
	if n < 0 {
		return fmt.Errorf("command line at %#x is not terminated within %d bytes", cmd, room)
	}
	kept := withoutNokaslr(string(line[:n]))
	clear(line[copy(line, kept):n])
	return nil
}

// moveInitrd moves the initrd that boot_params at bp describes out of [lo, hi), where the
// decompressor is about to write, to just below lo (above end, the loaded code's end), and
// patches ramdisk_image. It returns where the initrd was and is.
func moveInitrd(ram []byte, bp, lo, hi, end uint64) (from, to uint64, err error) {
	le := binary.LittleEndian
	rd, size := uint64(le.Uint32(ram[bp+bpRamdiskImage:])), uint64(le.Uint32(ram[bp+bpRamdiskSize:]))
	if size == 0 || rd >= hi || rd+size <= lo {
		return rd, rd, nil
	}
	to = (lo - size) &^ 4095
	if lo < size || to < (end+4095)&^4095 {
		return rd, rd, fmt.Errorf("the initrd [%#x, %#x) lies in [%#x, %#x) and there is no room for it below", rd, rd+size, lo, hi)
	}
	copy(ram[to:to+size], ram[rd:rd+size])
	le.PutUint32(ram[bp+bpRamdiskImage:], uint32(to))
	return rd, to, nil
}

// withoutNokaslr is a kernel command line with its nokaslr arguments removed.
func withoutNokaslr(cmdline string) string { return guest.WithoutArg(cmdline, guest.NoKASLR) }

// svmModuleLoadOffset is where the SVM's own allocations in the module area begin: above any
// guest's modules (KASLR puts the first at most 4 MiB in; a guest rarely holds more than a few
// tens of MiB of modules) and well inside the area's 1 GiB.
const svmModuleLoadOffset = 256 << 20

// stopForBases adds the stops that let kernel_randomize_memory run (it chooses and stores the
// three bases, and nothing later reads what else it computed) and then put the layout's bases in
// its variables.
func (b *layoutBoot) stopForBases(ctx context.Context, st *stops) error {
	krm, err := b.addr("kernel_randomize_memory")
	if err != nil {
		return err
	}
	return st.add(ctx, krm, "kernel_randomize_memory", true, func(ctx context.Context, regs map[string]uint64) error {
		return st.atReturn(ctx, regs, "kernel_randomize_memory", func(ctx context.Context, _ map[string]uint64) error {
			b.report("setting the direct-map, vmalloc and vmemmap bases")
			return b.setBases(ctx, st.c)
		})
	})
}

func (b *layoutBoot) addr(name string) (uint64, error) {
	a, ok := b.ref.Addr(name)
	if !ok {
		return 0, fmt.Errorf("symbol %s missing", name)
	}
	return a + uint64(b.layout.TextOffset), nil
}

// setBases puts the layout's bases in kernel_randomize_memory's variables, and the SVM's
// module_load_offset.
func (b *layoutBoot) setBases(ctx context.Context, c *gdbstub.Client) error {
	for _, v := range []struct {
		sym  string
		want uint64
	}{{"page_offset_base", b.layout.PageOffsetBase}, {"vmalloc_base", b.layout.VmallocBase}, {"vmemmap_base", b.layout.VmemmapBase},
		// With KASLR the module area is used from a random offset of up to 4 MiB, chosen at the
		// first module_alloc: the guest's modules are there, and the SVM's own allocations in
		// the area (it loads no modules, but allocates there at boot) would take the same 2 MiB
		// directory slots, which the bridge grafts whole. Set before any allocation, the SVM's
		// start far above the guest's.
		{"module_load_offset", svmModuleLoadOffset}} {
		va, err := b.addr(v.sym)
		if err != nil {
			return err
		}
		var buf [8]byte
		binary.LittleEndian.PutUint64(buf[:], v.want)
		if err := writeChecked(ctx, c, va, buf[:]); err != nil {
			return fmt.Errorf("set %s: %w", v.sym, err)
		}
	}
	return nil
}
