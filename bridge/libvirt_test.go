package bridge

import (
	"context"
	"testing"
	"time"

	"hybridbridge/internal/libvirtd"
	"hybridbridge/internal/plainvm"
	"hybridbridge/internal/testenv"
	"hybridbridge/target"
	"hybridbridge/vmm"
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

	d, err := libvirtd.Start(ctx)
	if err != nil {
		testenv.Skip(t, err.Error())
	}
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Errorf("stop libvirt daemons: %v", err)
		}
	})
	t.Logf("libvirt daemons: started %v, ready in %v", d.Started, d.Took.Round(time.Millisecond))
	// OpenLibvirt connects where virsh would by default; the domain is on the system daemon.
	t.Setenv("LIBVIRT_DEFAULT_URI", d.URI)
	img, err := plainvm.DemoImage()
	if err != nil {
		t.Fatal(err)
	}
	dom, err := libvirtd.StartDemoDomain(ctx, d, libvirtd.DemoOptions{Kernel: img.Kernel, Initrd: img.Initrd, Logf: t.Logf})
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

	for _, c := range []struct {
		name         string
		pausedBefore bool
	}{{"running", false}, {"suspended", true}} {
		t.Run(c.name, func(t *testing.T) {
			queueSocketsIn(t, ctx, dom)
			// The files' capture first, the tools right before the pause (as the demo's oracle
			// test has them): they are held to the moment more tightly.
			want, wantLog, self := viewTruth(t, ctx, dom)
			tools := runToolsIn(t, ctx, dom)
			want.toolsAfter = true
			tg, err := target.OpenLibvirt(ctx, dom.Name)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tg.Close() })
			var before string
			if c.pausedBefore {
				if err := PauseSettled(ctx, tg, snap, syms); err != nil {
					t.Fatal(err)
				}
				// Before the workload's cleanups, which need the domain running, if the test stops.
				t.Cleanup(func() { tg.Resume(context.WithoutCancel(ctx)) })
				if before, err = vmm.Hash(ctx, tg.Phys()); err != nil {
					t.Fatal(err)
				}
			}
			start := time.Now()
			got, s, err := readAttached(ctx, tg, self, Options{Mode: ModeSlow})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: attached and read every view in %v; RAM copied %d MiB in %v", tg.Name(),
				time.Since(start).Round(time.Millisecond), s.RAMCopied>>20, s.RAMTook.Round(time.Millisecond))
			st, err := tg.State(ctx)
			switch {
			case err != nil:
				t.Fatal(err)
			case c.pausedBefore && st != target.Paused:
				t.Errorf("a domain suspended before attach is %s after", st)
			case !c.pausedBefore && st != target.Running:
				t.Errorf("a running domain is %s after the session", st)
			}
			if c.pausedBefore {
				after, err := vmm.Hash(ctx, tg.Phys())
				if err != nil {
					t.Fatal(err)
				}
				if after != before {
					t.Errorf("the domain's memory changed during inspection: %s -> %s", before, after)
				}
				if err := tg.Resume(ctx); err != nil {
					t.Fatal(err)
				}
			}
			compareViews(t, got.views, want, got.log, wantLog)
			compareWithTools(t, got.oracle, tools)
			mustExec(t, ctx, dom, "run a command after detach", "true")
		})
	}
}
