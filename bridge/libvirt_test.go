package bridge

import (
	"context"
	"testing"
	"time"

	"hybridbridge/internal/libvirtd"
	"hybridbridge/internal/testenv"
	"hybridbridge/target"
)

// TestLibvirtDomainMatchesItsTools attaches a libvirt domain booted from the demo image twice —
// while it runs, and while it is suspended through libvirt — and compares every view with the
// guest's own files and tools each time, as TestAttachedVMMatchesItsTools does for a plain QEMU
// VM. libvirt holds the domain's monitor and its own idea of the domain's state, so pausing,
// resuming and the state all go through virsh; a domain that ran comes back running, and one
// that was suspended stays suspended, its memory unchanged.
func TestLibvirtDomainMatchesItsTools(t *testing.T) {
	need(t)
	testenv.SkipIfShort(t, "boots a libvirt domain")
	// Booting under TCG takes about 15 s, each attach and comparison about as long again.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)

	dom := libvirtd.DemoDomainForTest(ctx, t)

	for _, c := range []struct {
		name         string
		pausedBefore bool
	}{{"running", false}, {"suspended", true}} {
		t.Run(c.name, func(t *testing.T) {
			checkAttached(t, ctx, dom, func(ctx context.Context) (target.Target, error) {
				return target.OpenLibvirt(ctx, dom.Name)
			}, c.pausedBefore)
		})
	}
}
