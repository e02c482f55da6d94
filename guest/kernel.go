package guest

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"hybridbridge/vmm"
)

// RAMRanges are where the guest's machine puts its RAM file in guest-physical memory.
func (g *Guest) RAMRanges() ([]vmm.PhysRange, error) {
	r, err := vmm.MachineRanges(g.Meta.Machine, g.Meta.RAMSize)
	if err != nil {
		return nil, fmt.Errorf("guest %q: %w", g.Meta.Name, err)
	}
	return r, nil
}

// Memory maps the guest's RAM read-only. The guest is never written through it. Reads are only
// stable while the guest is paused; the caller closes the view.
func (g *Guest) Memory() (*vmm.FileView, error) {
	path, err := g.RAMPath()
	if err != nil {
		return nil, err
	}
	ranges, err := g.RAMRanges()
	if err != nil {
		return nil, err
	}
	v, err := vmm.OpenFileView(path, ranges)
	if err != nil {
		return nil, fmt.Errorf("guest %q: map RAM: %w", g.Meta.Name, err)
	}
	return v, nil
}

// Symbols returns the guest kernel's symbols, from its /proc/kallsyms (the Debian package has no
// real System.map). Those of a nokaslr boot are the build's own and are cached under
// symbols/<kernel id>.kallsyms, once per build; a KASLR boot's are its layout's, read each time
// and never cached. Only the kernel image's symbols are kept: module addresses depend on what a
// particular boot loaded.
func (g *Guest) Symbols(ctx context.Context, cacheDir string) (*vmm.Symbols, error) {
	path := "" // where to cache them: nowhere for a KASLR boot
	if slices.Contains(strings.Fields(g.Meta.Append), NoKASLR) {
		path = SymbolsPath(cacheDir, g.Meta.KernelID)
		if syms, err := vmm.LoadSymbols(path); err == nil {
			return syms, nil
		}
	}
	// Compressed in the guest: the serial channel carries ~0.5 MB/s.
	res, err := g.Exec(ctx, "gzip -c /proc/kallsyms")
	if err != nil {
		return nil, fmt.Errorf("read kallsyms: %w", err)
	}
	if res.Status != 0 {
		return nil, fmt.Errorf("read kallsyms: exit status %d: %s", res.Status, bytes.TrimSpace(res.Stderr))
	}
	zr, err := gzip.NewReader(bytes.NewReader(res.Stdout))
	if err != nil {
		return nil, fmt.Errorf("read kallsyms: %w", err)
	}
	var kernelOnly bytes.Buffer
	s := bufio.NewScanner(zr)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		if line := s.Text(); !strings.Contains(line, "\t[") {
			kernelOnly.WriteString(line)
			kernelOnly.WriteByte('\n')
		}
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("read kallsyms: %w", err)
	}
	syms, err := vmm.ParseKallsyms(bytes.NewReader(kernelOnly.Bytes()))
	if err != nil {
		return nil, fmt.Errorf("guest %q kallsyms: %w", g.Meta.Name, err)
	}
	if path == "" {
		return syms, nil
	}
	if err := writeFileAtomic(path, kernelOnly.Bytes(), 0o644); err != nil {
		return nil, fmt.Errorf("cache kallsyms: %w", err)
	}
	return syms, nil
}

// SymbolsPath is where a kernel build's symbols are cached: the kernel image's lines of its
// /proc/kallsyms (module lines depend on the boot and are left out).
func SymbolsPath(cacheDir, kernelID string) string {
	return filepath.Join(cacheDir, "symbols", kernelID+".kallsyms")
}

// Kernel is a guest's kernel address space, read from outside through its own page tables.
type Kernel struct {
	Syms *vmm.Symbols
	Virt *vmm.VirtView
	Phys *vmm.FileView
	CPU  CPUState
}

// OpenKernel maps the guest's memory and its kernel address space. The page-table root is the
// guest's own CR3 (from QEMU), never a constant. The caller closes the returned Kernel.
func (g *Guest) OpenKernel(ctx context.Context, cacheDir string) (*Kernel, error) {
	syms, err := g.Symbols(ctx, cacheDir)
	if err != nil {
		return nil, err
	}
	cpu, err := g.CPU(ctx)
	if err != nil {
		return nil, err
	}
	phys, err := g.Memory()
	if err != nil {
		return nil, err
	}
	levels := 4
	if cpu.LA57() {
		levels = 5
	}
	w, err := vmm.NewWalker(phys, cpu.CR3, levels)
	if err != nil {
		phys.Close()
		return nil, fmt.Errorf("guest %q page tables: %w", g.Meta.Name, err)
	}
	return &Kernel{Syms: syms, Virt: vmm.NewVirtView("guest "+g.Meta.Name+" kernel", w), Phys: phys, CPU: cpu}, nil
}

// Close unmaps the guest's memory.
func (k *Kernel) Close() error { return k.Phys.Close() }

// ReadSymbol reads n bytes at a kernel symbol.
func (k *Kernel) ReadSymbol(name string, n int) ([]byte, uint64, error) {
	addr, ok := k.Syms.Addr(name)
	if !ok {
		return nil, 0, fmt.Errorf("symbol %q not found in the guest kernel's kallsyms", name)
	}
	buf := make([]byte, n)
	if err := k.Virt.Read(addr, buf); err != nil {
		return nil, addr, fmt.Errorf("read %s: %w", name, err)
	}
	return buf, addr, nil
}

// ReadSymbolString reads the NUL-terminated string at a kernel symbol (at most limit bytes).
func (k *Kernel) ReadSymbolString(name string, limit int) (string, uint64, error) {
	addr, ok := k.Syms.Addr(name)
	if !ok {
		return "", 0, fmt.Errorf("symbol %q not found in the guest kernel's kallsyms", name)
	}
	s, err := k.Virt.ReadCString(addr, limit)
	if err != nil {
		return "", addr, fmt.Errorf("read %s: %w", name, err)
	}
	return s, addr, nil
}
