package bridge

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"hybridbridge/guest"
	"hybridbridge/svm"
	"hybridbridge/vmm"
)

// ErrClockUpdate means the guest stayed paused in the middle of an update of its clock: its
// timekeeper's sequence count is odd, and every reader of the clock (a file's access time, the
// uptime) would wait for a writer that never runs. It is the guest's state, not a fault.
var ErrClockUpdate = errors.New("the guest is paused in the middle of a clock update")

// settleTries bounds PauseSettled: an update takes microseconds of a timer tick, so a pause lands
// in one rarely, and twice in a row far more rarely.
const settleTries = 50

// PauseSettled pauses the guest at a moment its clock is not being updated: when a pause lands
// inside the update, the guest runs on for a moment and is paused again.
func PauseSettled(ctx context.Context, g *guest.Guest, snap *svm.Snapshot, syms *vmm.Symbols) error {
	for try := 0; ; try++ {
		if err := g.Pause(ctx); err != nil {
			return err
		}
		err := clockSettled(g, snap, syms)
		if !errors.Is(err, ErrClockUpdate) {
			return err
		}
		if try == settleTries {
			// This pause was ours: give the guest back running.
			return errors.Join(err, g.Resume(context.WithoutCancel(ctx)))
		}
		if err := g.Resume(ctx); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
}

// clockSettled checks the paused guest's timekeeper sequence count (tk_core's first word) from its
// RAM. The kernel image is where the snapshot's is (Attach checks it), so the global's physical
// address is the SVM's.
func clockSettled(g *guest.Guest, snap *svm.Snapshot, syms *vmm.Symbols) error {
	tk, ok := syms.Addr("tk_core")
	text := snap.Symbols["_text"]
	if !ok || text == 0 || tk < text {
		return errors.New("no tk_core in the kernel's symbols")
	}
	path, err := g.RAMPath()
	if err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("guest %q RAM: %w", g.Meta.Name, err)
	}
	defer f.Close()
	var seq [4]byte
	if _, err := f.ReadAt(seq[:], int64(snap.Layout.KernelStart+tk-text)); err != nil {
		return fmt.Errorf("guest timekeeper: %w", err)
	}
	if n := binary.LittleEndian.Uint32(seq[:]); n%2 == 1 {
		return fmt.Errorf("%w (tk_core sequence %d): resume it and inspect again", ErrClockUpdate, n)
	}
	return nil
}
