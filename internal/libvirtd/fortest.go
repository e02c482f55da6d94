package libvirtd

import (
	"context"
	"testing"
	"time"

	"hybridbridge/internal/plainvm"
	"hybridbridge/internal/testenv"
)

// DemoDomainForTest starts the daemons and boots one demo domain for t, both undone when t ends
// (the domain first), and makes the daemons' connection t's default libvirt URI, where
// OpenLibvirt connects as virsh would. A machine where the daemons cannot run skips the test, or
// fails it under CI=true (testenv.Skip).
func DemoDomainForTest(ctx context.Context, t *testing.T) *Domain {
	t.Helper()
	d, err := Start(ctx)
	if err != nil {
		testenv.Skip(t, err.Error())
	}
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Errorf("stop libvirt daemons: %v", err)
		}
	})
	t.Logf("libvirt daemons: started %v, ready in %v", d.Started, d.Took.Round(time.Millisecond))
	t.Setenv("LIBVIRT_DEFAULT_URI", d.URI)
	img, err := plainvm.DemoImage()
	if err != nil {
		t.Fatal(err)
	}
	dom, err := StartDemoDomain(ctx, d, DemoOptions{Kernel: img.Kernel, Initrd: img.Initrd, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	// Registered after the daemons' Stop, so it runs before it.
	t.Cleanup(func() {
		if err := dom.Destroy(); err != nil {
			t.Error(err)
		}
	})
	t.Logf("domain %s booted and answering in %v", dom.Name, dom.BootTook.Round(time.Millisecond))
	return dom
}
