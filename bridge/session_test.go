package bridge

import (
	"context"
	"errors"
	"testing"

	"hybridbridge/inspect"
	"hybridbridge/target"
)

// TestCloseResumesOnlyItsOwnPause: a session resumes a guest it paused, and leaves one that was
// already paused (by the user, or to hash its memory) paused.
func TestCloseResumesOnlyItsOwnPause(t *testing.T) {
	ctx := need(t)
	status := func() string {
		t.Helper()
		st, err := demo.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	for _, pausedBefore := range []bool{false, true} {
		if pausedBefore {
			if err := PauseSettled(ctx, target.FromGuest(demo), snap, syms); err != nil {
				t.Fatal(err)
			}
		}
		s, err := Attach(ctx, demo, snap, syms)
		if err != nil {
			t.Fatal(err)
		}
		if st := status(); st != "paused" {
			t.Fatalf("guest %s during the session", st)
		}
		if err := s.Close(ctx); err != nil {
			t.Fatal(err)
		}
		want := "running"
		if pausedBefore {
			want = "paused"
		}
		if st := status(); st != want {
			t.Errorf("guest paused before the session: %v; after Close it is %s, want %s", pausedBefore, st, want)
		}
	}
	if err := demo.Resume(ctx); err != nil {
		t.Fatal(err)
	}
}

// cancelAfter is the session seen through a view that cancels the inspection's context once n file
// operations have completed.
type cancelAfter struct {
	*Session
	n      int
	cancel context.CancelFunc
}

func (c *cancelAfter) ReadFile(path string) ([]byte, error) {
	data, err := c.Session.ReadFile(path)
	c.done()
	return data, err
}

// ReadFiles is one operation too (a process's files read in one batch).
func (c *cancelAfter) ReadFiles(paths []string) ([][]byte, []error, error) {
	data, errs, err := c.Session.ReadFiles(paths)
	c.done()
	return data, errs, err
}

func (c *cancelAfter) done() {
	if c.n--; c.n == 0 {
		c.cancel()
	}
}

// TestCancelStopsWithinOneOperation: once the inspection's context is cancelled, the next file
// operation fails with the context's error and the view returns it: no further operation runs in
// the SVM, so a cancelled console refresh does not keep the guest paused for the rest of a view.
func TestCancelStopsWithinOneOperation(t *testing.T) {
	need(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := Attach(ctx, demo, snap, syms)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	c := &cancelAfter{Session: s, n: 5, cancel: cancel}
	_, _, err = inspect.ListProcesses(c)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("ps with its context cancelled after 5 reads: %v, want the cancellation", err)
	}
	st := s.Stats()
	// One directory listing, then five reads (each a process's files in one batch); the sixth is
	// refused before it runs.
	if ops := st.FastOps + st.SlowOps; ops != 6 {
		t.Errorf("%d file operations ran, want 6 (the /proc listing and the 5 reads before the cancel)", ops)
	}
}
