package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"hybridbridge/bridge"
	"hybridbridge/guest"
	"hybridbridge/inspect"
	"hybridbridge/target"
	"hybridbridge/vmm"
)

// demo boots the demo guest (or uses a running one named "demo") and prints what hybridbridge
// reads from it from outside: what hybridbridge without arguments prints when there is no terminal
// for the console.
func (e *env) demo(ctx context.Context) error {
	g, err := guest.Open(e.runDir, "demo")
	owned := false
	if errors.Is(err, guest.ErrNotRunning) {
		fmt.Fprintln(e.stderr, "booting the demo guest...")
		g, err = e.startDemo(ctx, "demo", "512M", false, false)
		owned = true
	}
	if err != nil {
		return err
	}
	if owned {
		defer stopOwned(ctx, g)
		fmt.Fprintf(e.stdout, "demo guest ready in %.1fs (QEMU pid %d, %s)\n", g.Meta.ReadyIn, g.Meta.PID, g.Meta.Accel)
	} else {
		fmt.Fprintf(e.stdout, "using the running demo guest (QEMU pid %d)\n", g.Meta.PID)
	}
	if _, err := e.assets(); err != nil {
		return err
	}
	t := target.FromGuest(g)
	defer t.Close()
	snap, syms, err := e.kernelFor(ctx, g.Meta.Kernel, t)
	if err != nil {
		return err
	}
	virt, err := bridge.KernelView(ctx, t, snap, syms)
	if err != nil {
		return err
	}
	inside, err := g.Exec(ctx, "cat /proc/version")
	if err != nil {
		return err
	}
	var banner, hash1, hash2 string
	err = pausedTarget(ctx, t, func() error {
		var err error
		addr, ok := syms.Addr("linux_banner")
		if !ok {
			return fmt.Errorf("no linux_banner in the kernel's symbols")
		}
		if banner, err = virt.ReadCString(addr, 512); err != nil {
			return err
		}
		if hash1, err = vmm.Hash(ctx, t.Phys()); err != nil {
			return err
		}
		hash2, err = vmm.Hash(ctx, t.Phys())
		return err
	})
	if err != nil {
		return err
	}
	same := "equal"
	if strings.TrimSpace(banner) != strings.TrimSpace(string(inside.Stdout)) {
		same = "DIFFERENT"
	}
	fmt.Fprintf(e.stdout, "kernel symbols: %d (the SVM's own kallsyms: the guest runs the same build)\n", syms.Len())
	fmt.Fprintf(e.stdout, "page-table root: init_top_pgt at %#x, found with the kernel in the guest's RAM; %d-level paging\n",
		virt.Walker().Root(), virt.Walker().Levels())
	fmt.Fprintf(e.stdout, "linux_banner read from outside:\n  %s\n", strings.TrimSpace(banner))
	fmt.Fprintf(e.stdout, "/proc/version inside the guest: %s\n", same)
	fmt.Fprintf(e.stdout, "guest memory hash while paused: %s (twice: %v)\n", hash1[:16], hash1 == hash2)
	var procs []inspect.Process
	var gone inspect.Vanished
	run, err := e.inspectGuest(ctx, g.Meta.Name, "ps", func(s *bridge.Session) error {
		var err error
		procs, gone, err = inspect.ListProcesses(s)
		return err
	})
	if err != nil {
		return err
	}
	run.vanished = gone
	fmt.Fprintf(e.stdout, "\nprocesses, computed by the guest's own kernel code in the SVM (mode %s; the engines that ran are in the last line):\n", run.mode)
	if err := printProcesses(e.stdout, procs); err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, run.summary())
	fmt.Fprintln(e.stdout, "\nmore views: hybridbridge netstat, lsmod, uptime, free, mounts, dmesg, ... (see --help); on a terminal, hybridbridge opens the console.")
	return nil
}
