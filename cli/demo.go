package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"hybridbridge/bridge"
	"hybridbridge/guest"
	"hybridbridge/inspect"
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
		g, err = e.startDemo(ctx, "demo", "512M", false)
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
	k, err := g.OpenKernel(ctx, e.cacheDir)
	if err != nil {
		return err
	}
	defer k.Close()
	inside, err := g.Exec(ctx, "cat /proc/version")
	if err != nil {
		return err
	}
	var banner, hash1, hash2 string
	var cr3 uint64
	err = paused(ctx, g, func() error {
		var err error
		if banner, _, err = k.ReadSymbolString("linux_banner", 512); err != nil {
			return err
		}
		cpu, err := g.CPU(ctx)
		if err != nil {
			return err
		}
		cr3 = cpu.CR3
		if hash1, err = vmm.Hash(ctx, k.Phys); err != nil {
			return err
		}
		hash2, err = vmm.Hash(ctx, k.Phys)
		return err
	})
	if err != nil {
		return err
	}
	same := "equal"
	if strings.TrimSpace(banner) != strings.TrimSpace(string(inside.Stdout)) {
		same = "DIFFERENT"
	}
	fmt.Fprintf(e.stdout, "kernel symbols: %d (from the guest's kallsyms, cached per kernel build)\n", k.Syms.Len())
	fmt.Fprintf(e.stdout, "page-table root (CR3 from QEMU): %#x, %d-level paging\n", cr3, k.Virt.Walker().Levels())
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
