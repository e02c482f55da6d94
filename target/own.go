package target

import (
	"context"
	"fmt"
	"os"
	"sync"

	"hybridbridge/guest"
	"hybridbridge/vmm"
)

// Own is a guest hybridbridge booted itself: its RAM is a shared file the SVM maps directly, so
// nothing is copied per inspection.
type Own struct {
	g *guest.Guest

	once sync.Once
	phys *vmm.FileView
	err  error
}

var _ Target = (*Own)(nil)

// FromGuest makes a target of a guest we booted.
func FromGuest(g *guest.Guest) *Own { return &Own{g: g} }

// Guest returns the guest.
func (o *Own) Guest() *guest.Guest { return o.g }

// Name implements Target.
func (o *Own) Name() string { return fmt.Sprintf("guest %q", o.g.Meta.Name) }

// Kind implements Target.
func (o *Own) Kind() Kind { return KindOwn }

// Phys implements Target: a read-only mapping of the shared RAM file. A guest whose RAM file
// cannot be mapped gives a view whose every read fails with the reason.
func (o *Own) Phys() vmm.PhysView {
	o.once.Do(func() { o.phys, o.err = o.g.Memory() })
	if o.err != nil {
		return failedView{name: o.Name(), err: o.err}
	}
	return o.phys
}

// RAM implements Target: the shared file itself, opened anew (the caller closes it).
func (o *Own) RAM(ctx context.Context) (*RAM, error) {
	path, err := o.g.RAMPath()
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s RAM: %w", o.Name(), err)
	}
	ranges, err := o.g.RAMRanges()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &RAM{File: f, Ranges: ranges}, nil
}

// State implements Target.
func (o *Own) State(ctx context.Context) (State, error) {
	st, err := o.g.Status(ctx)
	if err != nil {
		return "", err
	}
	switch st {
	case "running":
		return Running, nil
	case "paused":
		return Paused, nil
	}
	return "", fmt.Errorf("%s is %s", o.Name(), st)
}

// Pause implements Target.
func (o *Own) Pause(ctx context.Context) error { return o.g.Pause(ctx) }

// Resume implements Target.
func (o *Own) Resume(ctx context.Context) error { return o.g.Resume(ctx) }

// CPUs implements Target: vCPU 0's control registers (from QEMU's monitor).
func (o *Own) CPUs(ctx context.Context) ([]CPUState, error) {
	c, err := o.g.CPU(ctx)
	if err != nil {
		return nil, err
	}
	return []CPUState{{CR0: c.CR0, CR3: c.CR3, CR4: c.CR4}}, nil
}

// Close implements Target: unmaps the RAM view; the guest runs on.
func (o *Own) Close() error {
	if o.phys != nil {
		return o.phys.Close()
	}
	return nil
}

// failedView is a PhysView whose every read fails with why the memory could not be reached.
type failedView struct {
	name string
	err  error
}

func (f failedView) Name() string            { return f.name }
func (f failedView) Ranges() []vmm.PhysRange { return nil }
func (f failedView) Size() uint64            { return 0 }
func (f failedView) ReadPhys(uint64, []byte) error {
	return f.err
}
