package bridge

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"hybridbridge/svm"
	"hybridbridge/target"
	"hybridbridge/vmm"
)

// ErrClockUpdate means the guest stayed paused in the middle of an update of its clock: its
// timekeeper's sequence count is odd, and every reader of the clock (a file's access time, the
// uptime) would wait for a writer that never runs. It is the guest's state, not a fault.
var ErrClockUpdate = errors.New("the guest is paused in the middle of a clock update")

// settleTries bounds PauseSettled: an update takes microseconds of a timer tick, so a pause lands
// in one rarely, and twice in a row far more rarely.
const settleTries = 50

// PauseSettled pauses the target at a moment its clock is not being updated: when a pause lands
// inside the update, the target runs on for a moment and is paused again.
func PauseSettled(ctx context.Context, t target.Target, snap *svm.Snapshot, syms *vmm.Symbols) error {
	p, err := locateKernel(t.Name(), t.Phys(), snap, syms)
	if err != nil {
		return err
	}
	return pauseSettled(ctx, t, syms, p)
}

func pauseSettled(ctx context.Context, t target.Target, syms *vmm.Symbols, p kernelPlace) error {
	for try := 0; ; try++ {
		if err := t.Pause(ctx); err != nil {
			return err
		}
		err := clockSettled(t.Phys(), syms, p)
		if !errors.Is(err, ErrClockUpdate) {
			return err
		}
		if try == settleTries {
			// This pause was ours: give the target back running.
			return errors.Join(err, t.Resume(context.WithoutCancel(ctx)))
		}
		if err := t.Resume(ctx); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
}

// clockSettled checks the paused guest's timekeeper sequence count (tk_core's first word) in its
// kernel image, wherever the image was found.
func clockSettled(phys vmm.PhysView, syms *vmm.Symbols, p kernelPlace) error {
	tk, ok := syms.Addr("tk_core")
	text, ok2 := syms.Addr("_text")
	if !ok || !ok2 || tk < text {
		return errors.New("no tk_core in the kernel's symbols")
	}
	var seq [4]byte
	if err := phys.ReadPhys(p.text+tk-text, seq[:]); err != nil {
		return fmt.Errorf("guest timekeeper: %w", err)
	}
	if n := binary.LittleEndian.Uint32(seq[:]); n%2 == 1 {
		return fmt.Errorf("%w (tk_core sequence %d): resume it and inspect again", ErrClockUpdate, n)
	}
	return nil
}
