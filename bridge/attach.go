// Package bridge runs the guest's kernel code in the SVM against the guest's memory: it attaches
// a paused guest, overlays its RAM, and decides which kernel globals come from the guest.
package bridge

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"

	"hybridbridge/guest"
	"hybridbridge/memo"
	"hybridbridge/svm"
	"hybridbridge/taint"
	"hybridbridge/vmm"
)

// ErrKernelMismatch means the guest does not run the SVM snapshot's kernel build.
var ErrKernelMismatch = errors.New("the guest runs another kernel build than the SVM")

// Session is one inspection: the guest paused and overlaid into an SVM machine. Close resumes
// the guest.
type Session struct {
	g       *guest.Guest
	Machine *svm.Machine
	ram     *os.File
	Banner  string         // the guest's linux_banner
	Grafts  svm.GraftStats // the guest's vmemmap entries copied into the SVM
	Globals *Globals       // the per-global lists, with the unknown globals seen
	Taint   *taint.Tracker // provenance for the image window
	// Counts are the accesses to kernel globals by decision (taint.Local, Redirect, Unknown),
	// plus guest-derived accesses in the image window under Redirect.
	Counts [3]int
	// OnAccess, if set, sees every memory access the taint engine decided (slow; for debugging
	// a view). a is valid only during the call.
	OnAccess func(a *taint.Access)
	// Memo, if set, learns every decision, keyed by instruction; View names the view running.
	Memo    *memo.Memo
	View    string
	vmemmap uint64  // vmemmap_base (the same in both kernels)
	policy  *policy // decides the kernel image's data and window
	dirty   bool    // an operation ran since the last reset
}

// Attach pauses the guest, checks that it runs the snapshot's kernel, and overlays its RAM into a
// new SVM machine with the taint engine attached (Slow-Bridge). The guest stays paused until
// Close.
func Attach(ctx context.Context, g *guest.Guest, snap *svm.Snapshot, syms *vmm.Symbols) (_ *Session, err error) {
	if g.Meta.RAMSize > snap.Layout.GVMMax {
		return nil, fmt.Errorf("guest %q has %d MiB of RAM; the SVM snapshot serves guests up to %d MiB (rebuild it with: hybridbridge svm build --gvm-max %dM)",
			g.Meta.Name, g.Meta.RAMSize>>20, snap.Layout.GVMMax>>20, g.Meta.RAMSize>>20)
	}
	cpu, err := g.CPU(ctx)
	if err != nil {
		return nil, err
	}
	if err := g.Pause(ctx); err != nil {
		return nil, err
	}
	s := &Session{g: g}
	defer func() {
		if err != nil {
			s.Close(context.WithoutCancel(ctx))
		}
	}()
	path, err := g.RAMPath()
	if err != nil {
		return nil, err
	}
	if s.ram, err = os.Open(path); err != nil {
		return nil, fmt.Errorf("guest %q RAM: %w", g.Meta.Name, err)
	}
	phys, err := vmm.NewFileView(s.ram, vmm.PCRanges(g.Meta.RAMSize))
	if err != nil {
		return nil, err
	}
	defer phys.Close()
	levels := 4
	if cpu.LA57() {
		levels = 5
	}
	w, err := vmm.NewWalker(phys, cpu.CR3, levels)
	if err != nil {
		return nil, err
	}
	if err := s.checkKernel(vmm.NewVirtView("guest "+g.Meta.Name, w), snap); err != nil {
		return nil, err
	}
	s.Globals = NewGlobals(syms)
	opts := svm.Options{Symbols: syms, Window: true, OnReset: s.onReset}
	if s.Machine, err = svm.Open(snap, opts); err != nil {
		return nil, err
	}
	if err := s.Machine.AttachOverlay(s.ram, g.Meta.RAMSize); err != nil {
		return nil, err
	}
	leaves, err := vmemmapGrafts(w, s.vmemmap)
	if err != nil {
		return nil, err
	}
	aliases, err := s.aliases(leaves)
	if err != nil {
		return nil, err
	}
	if s.Grafts, err = s.Machine.Graft(leaves); err != nil {
		return nil, err
	}
	var spans []svm.PhysSpan
	for _, a := range aliases {
		spans = append(spans, svm.PhysSpan{Start: a.svm, End: a.svm + a.size})
	}
	if err := s.Machine.WatchAliases(spans); err != nil {
		return nil, err
	}
	s.policy = newPolicy(snap, s.Globals, aliases)
	if s.Taint, err = s.tracker(snap, s.policy); err != nil {
		return nil, err
	}
	return s, nil
}

// alias is a range of the SVM's physical memory that holds, at the same virtual address, the SVM's
// own version of something the guest has too: the struct pages of memory sections both kernels
// describe (the first 128 MiB, where the guest's RAM and the SVM's kernel image and low memory
// interleave). The SVM's mapping stays; a guest-derived access is given the guest's bytes from
// guest, in the overlaid guest RAM.
type alias struct {
	svm, guest, size uint64
}

// aliases finds, among the guest's vmemmap leaves, those the SVM maps itself.
func (s *Session) aliases(leaves []svm.Graft) ([]alias, error) {
	var out []alias
	for _, l := range leaves {
		first, err := s.Machine.Phys(l.VA)
		if err != nil {
			continue // the SVM has nothing there: grafted
		}
		last, err := s.Machine.Phys(l.VA + l.Size - 1)
		if err != nil || last != first+l.Size-1 {
			return nil, fmt.Errorf("vmemmap %#x: the SVM maps it in pieces; unsupported", l.VA)
		}
		guest := l.Entry & 0x000ffffffffff000 &^ (l.Size - 1)
		if !s.Machine.IsGuestRAM(guest, l.Size) {
			return nil, fmt.Errorf("vmemmap %#x: the guest's struct pages at %#x are not in its overlaid RAM", l.VA, guest)
		}
		out = append(out, alias{svm: first, guest: guest, size: l.Size})
	}
	return out, nil
}

// vmemmapGrafts lists the guest's mappings of its struct pages (the vmemmap region): the SVM's
// kernel reaches a guest page's struct page (e.g. reading another process's memory for
// /proc/<pid>/cmdline) at the same virtual address, and the SVM maps struct pages only for its
// own memory sections. The whole region is walked, so no struct size is assumed.
func vmemmapGrafts(w *vmm.Walker, base uint64) ([]svm.Graft, error) {
	var out []svm.Graft
	err := w.Mappings(base, base+1<<40-1, func(m vmm.Mapping) error {
		out = append(out, svm.Graft{VA: m.VA, Size: m.Size, Entry: m.Entry})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("guest vmemmap: %w", err)
	}
	return out, nil
}

// checkKernel reads the guest's banner and the physical placement of its kernel through the
// guest's own page tables: both must be the SVM's, or the SVM's code and addresses do not fit the
// guest's data.
func (s *Session) checkKernel(virt *vmm.VirtView, snap *svm.Snapshot) error {
	w := virt.Walker()
	banner, err := virt.ReadCString(snap.Symbols["linux_banner"], 1024)
	if err != nil {
		return fmt.Errorf("%w: no kernel banner at the SVM kernel's linux_banner (%v)", ErrKernelMismatch, err)
	}
	s.Banner = strings.TrimSpace(banner)
	if s.Banner != snap.Banner {
		return fmt.Errorf("%w:\n  guest: %q\n  SVM:   %q", ErrKernelMismatch, s.Banner, snap.Banner)
	}
	text, _, _, err := w.Translate(snap.Symbols["_text"])
	if err != nil {
		return fmt.Errorf("guest kernel text: %w", err)
	}
	if text != snap.Layout.KernelStart {
		return fmt.Errorf("%w: the guest's kernel is at physical %#x, the SVM's at %#x (boot guests with nokaslr)", ErrKernelMismatch, text, snap.Layout.KernelStart)
	}
	for _, v := range []string{"page_offset_base", "vmemmap_base", "vmalloc_base"} {
		gv, err1 := virt.ReadUint64(snap.Symbols[v])
		sv, err2 := s.svmValue(snap, v)
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		if gv != sv {
			return fmt.Errorf("%w: %s is %#x in the guest, %#x in the SVM (memory layout randomised?)", ErrKernelMismatch, v, gv, sv)
		}
		if v == "vmemmap_base" {
			s.vmemmap = gv
		}
	}
	return nil
}

// svmValue reads a 64-bit global from the snapshot's RAM file.
func (s *Session) svmValue(snap *svm.Snapshot, name string) (uint64, error) {
	f, err := os.Open(snap.RAMPath())
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var b [8]byte
	if _, err := f.ReadAt(b[:], int64(snap.Symbols[name]-snap.Symbols["_text"]+snap.Layout.KernelStart)); err != nil {
		return 0, fmt.Errorf("SVM %s: %w", name, err)
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// Close releases the machine and resumes the guest.
func (s *Session) Close(ctx context.Context) error {
	var errs []error
	if s.Machine != nil {
		errs = append(errs, s.Machine.Close())
	}
	if s.ram != nil {
		errs = append(errs, s.ram.Close())
	}
	errs = append(errs, s.g.Resume(ctx))
	return errors.Join(errs...)
}

// onReset clears the shadow state: the memory it described is gone.
func (s *Session) onReset() {
	if s.Taint != nil {
		s.Taint.Drain()
		s.Taint.Reset()
	}
}

// procPath maps a view's /proc path to the SVM's fresh procfs instance (svm.ProcRoot).
func procPath(path string) string {
	if path == "/proc" || strings.HasPrefix(path, "/proc/") {
		return svm.ProcRoot + path[len("/proc"):]
	}
	return path
}

// fresh resets the machine before an operation: each file a view reads is its own transaction
// from the clean snapshot. Kernel state the SVM builds up while reading guest data (per-cpu LRU
// batches holding guest pages, lock and reference counts) must not leak into the next read.
func (s *Session) fresh() error {
	if !s.dirty {
		s.dirty = true
		return nil
	}
	return s.Machine.Reset()
}

// ReadDir lists a directory of the guest as its kernel sees it (implements inspect.Files).
func (s *Session) ReadDir(path string) ([]string, error) {
	if err := s.fresh(); err != nil {
		return nil, err
	}
	ents, err := s.Machine.ReadDir(procPath(path))
	if err != nil {
		return nil, err
	}
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.Name
	}
	return names, nil
}

// ReadFile reads a file of the guest as its kernel sees it (implements inspect.Files).
func (s *Session) ReadFile(path string) ([]byte, error) {
	if err := s.fresh(); err != nil {
		return nil, err
	}
	return s.Machine.ReadFile(procPath(path))
}
