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
	"hybridbridge/svm"
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
	Banner  string // the guest's linux_banner
}

// Attach pauses the guest, checks that it runs the snapshot's kernel, and overlays its RAM into a
// new SVM machine. The guest stays paused until Close.
func Attach(ctx context.Context, g *guest.Guest, snap *svm.Snapshot, opts svm.Options) (_ *Session, err error) {
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
	if err := s.checkKernel(cpu, snap); err != nil {
		return nil, err
	}
	if s.Machine, err = svm.Open(snap, opts); err != nil {
		return nil, err
	}
	if err := s.Machine.AttachOverlay(s.ram, g.Meta.RAMSize); err != nil {
		return nil, err
	}
	return s, nil
}

// checkKernel reads the guest's banner and the physical placement of its kernel through the
// guest's own page tables: both must be the SVM's, or the SVM's code and addresses do not fit the
// guest's data.
func (s *Session) checkKernel(cpu guest.CPUState, snap *svm.Snapshot) error {
	phys, err := vmm.NewFileView(s.ram, vmm.PCRanges(s.g.Meta.RAMSize))
	if err != nil {
		return err
	}
	defer phys.Close()
	levels := 4
	if cpu.LA57() {
		levels = 5
	}
	w, err := vmm.NewWalker(phys, cpu.CR3, levels)
	if err != nil {
		return err
	}
	virt := vmm.NewVirtView("guest "+s.g.Meta.Name, w)
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
