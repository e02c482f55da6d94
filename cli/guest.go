package cli

import (
	"context"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"hybridbridge/bridge"
	"hybridbridge/guest"
	"hybridbridge/target"
	"hybridbridge/vmm"
)

func (e *env) guestCommand() *cobra.Command {
	g := &cobra.Command{
		Use:   "guest",
		Short: "Start, attach, list, stop and query guest VMs run under QEMU",
		Long: `Guests are the VMs hybridbridge inspects: its own (guest start boots one from the demo image,
with a command channel into it) and VMs it did not start, registered with guest attach (a QEMU
process, a libvirt domain or a memory dump). Every view takes either kind with --guest NAME.`,
	}
	g.AddCommand(e.guestStart(), e.guestAttach(), e.guestList(), e.guestDetach(), e.guestStop(), e.guestResume(), e.guestExec(), e.guestRead())
	return g
}

// startDemo boots the demo image with progress on stderr, with KASLR unless nokaslr.
func (e *env) startDemo(ctx context.Context, name, mem string, detached, nokaslr bool) (*guest.Guest, error) {
	return e.startGuest(ctx, name, "demo", mem, detached, nokaslr)
}

// guestImages are the images guest start boots.
var guestImages = []string{"demo", "debian"}

// startGuest boots one of guestImages with progress on stderr, with KASLR unless nokaslr; mem ""
// is the image's own size.
func (e *env) startGuest(ctx context.Context, name, image, mem string, detached, nokaslr bool) (*guest.Guest, error) {
	a, err := e.assets()
	if err != nil {
		return nil, err
	}
	var img *guest.Image
	switch image {
	case "demo":
		if img, err = guest.BuildDemoImage(a); err != nil {
			return nil, fmt.Errorf("build demo image: %w", err)
		}
	case "debian":
		if img, err = guest.DebianImage(a); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown image %q: use %s", image, strings.Join(guestImages, " or "))
	}
	// What the SVM serves: a pc guest below the PCI hole (from 3.5 GiB pc splits RAM at 3 GiB),
	// a q35 one split as q35 splits it, up to 8 GiB.
	mib, lo, hi := 512, 64, 2560
	if img.MemMiB != 0 {
		mib, lo, hi = img.MemMiB, 512, 8<<10
	}
	if mem != "" {
		if mib, err = parseSize(mem); err != nil {
			return nil, err
		}
	}
	if mib < lo || mib > hi {
		return nil, fmt.Errorf("guest memory %d MiB out of range for the %s image: %d MiB to %d MiB", mib, image, lo, hi)
	}
	if nokaslr {
		img.Append += " " + guest.NoKASLR
	}
	report, done := progress(e.stderr)
	defer done()
	return guest.Start(ctx, guest.Config{
		Name: name, MemMiB: mib, Image: img, RunDir: e.runDir, Detached: detached, Progress: report,
	})
}

func (e *env) guestStart() *cobra.Command {
	var name, mem, image string
	var asJSON, nokaslr bool
	c := &cobra.Command{
		Use:   "start",
		Short: "Boot a demo or Debian guest in the background and wait until its workload is up",
		Long: `Boot a guest under QEMU and wait until its workload is up. The guest keeps running after this
command returns; stop it with 'hybridbridge guest stop NAME'.

--image demo (the default) is the built-in demo image: busybox on an initramfs, named processes,
TCP and UDP listeners, an established loopback connection, kernel modules; 512 MiB, one vCPU.
--image debian is the Debian 12 guest scripts/setup.sh builds: systemd, sshd, cron, a user analyst,
a process in its own namespaces, on an ext4 root disk (each boot writes to a layer of its own), q35
with 2 vCPUs and 4 GiB, booted with the image's own kernel and initramfs.

It boots with KASLR, as distributions do: the first view of each boot builds an SVM snapshot in
its layout (about 20 s, with progress; later views load it). --nokaslr runs the kernel at its own
addresses instead, which the SVM's first snapshot serves directly (for debugging).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if rec, err := target.Lookup(e.runDir, name); err == nil {
				return fmt.Errorf("%q names an attached VM (%s); choose another name", name, rec.Where())
			}
			g, err := e.startGuest(cmd.Context(), name, image, mem, e.detachGuests, nokaslr)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(e.stdout, g.Meta)
			}
			fmt.Fprintf(e.stdout, "guest %s running (QEMU pid %d, %s, %d MiB), ready in %.1fs\n",
				g.Meta.Name, g.Meta.PID, g.Meta.Accel, g.Meta.RAMSize>>20, g.Meta.ReadyIn)
			return nil
		},
	}
	c.Flags().StringVar(&name, "name", "demo", "guest name")
	c.Flags().StringVar(&mem, "mem", "", "guest memory (default: the image's; demo 64M to 2560M, debian 512M to 8G)")
	c.Flags().StringVar(&image, "image", "demo", "what to boot: "+strings.Join(guestImages, " or "))
	c.Flags().BoolVar(&asJSON, "json", false, "print the guest's metadata as JSON")
	c.Flags().BoolVar(&nokaslr, "nokaslr", false, "boot without KASLR, at the kernel's own addresses (for debugging)")
	return c
}

func (e *env) guestStop() *cobra.Command {
	return &cobra.Command{
		Use:   "stop NAME",
		Short: "Stop a guest hybridbridge started (QEMU quits; its memory file and folder are removed)",
		Long: `Stop a guest that guest start booted: QEMU quits, and its memory file and folder are removed.
A VM registered with guest attach is never stopped by hybridbridge: detach it instead.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			g, err := guest.Open(e.runDir, args[0])
			if err != nil {
				if nerr := e.notOurs(args[0], "detach it with: hybridbridge guest detach "+args[0]+" (the VM keeps running)"); nerr != nil {
					return nerr
				}
				return err
			}
			return g.Stop(cmd.Context())
		},
	}
}

func (e *env) guestResume() *cobra.Command {
	return &cobra.Command{
		Use:   "resume NAME",
		Short: "Resume a guest hybridbridge started that is left paused (an inspection killed midway)",
		Long: `Resume a guest that guest start booted and that is paused: an inspection pauses a running guest
and resumes it when it ends, but one killed midway (kill -9, a crash) leaves it paused. A guest
already running is left as it is. A VM registered with guest attach is never resumed by
hybridbridge: its owner paused it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			g, err := guest.Open(e.runDir, args[0])
			if err != nil {
				if nerr := e.notOurs(args[0], "hybridbridge never resumes an attached VM: resume it where it was paused"); nerr != nil {
					return nerr
				}
				return err
			}
			resumed, err := g.ResumeIfPaused(cmd.Context())
			if err != nil {
				return err
			}
			if !resumed {
				fmt.Fprintf(e.stderr, "guest %s was not paused\n", args[0])
			}
			return nil
		},
	}
}

func (e *env) guestExec() *cobra.Command {
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "exec NAME -- 'COMMAND LINE' | PROGRAM [ARG...]",
		Short: "Run a command inside a guest; print its output and exit with its status",
		Long: `Run a command inside the guest over its command channel (a second serial port) and print its
standard output and error. hybridbridge exits with the command's exit status.

One word after -- is a shell command line, run by the guest's /bin/sh -c as it is:
  hybridbridge guest exec demo -- 'ps | grep httpd; exit 3'
Several words are a program and its arguments, passed on unchanged (each word is quoted for the
guest's shell, so spaces, quotes and $ in them mean nothing to it):
  hybridbridge guest exec demo -- sh -c 'exit 7'     exits with status 7

The command's reply comes when its shell exits: output that processes it leaves in the background
write later is not shown. Flags of exec (--timeout) go before --. Only guests hybridbridge started
have a command channel: an attached VM is refused.`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			g, err := guest.Open(e.runDir, args[0])
			if err != nil {
				if nerr := e.notOurs(args[0], "hybridbridge has no command channel into it; read it from outside with the views (hybridbridge ps --guest "+args[0]+", ...)"); nerr != nil {
					return nerr
				}
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			res, err := g.Exec(ctx, shellCommand(args[1:]))
			if err != nil {
				return err
			}
			e.stdout.Write(res.Stdout)
			e.stderr.Write(res.Stderr)
			if res.Status != 0 {
				return &ExitError{Status: res.Status}
			}
			return nil
		},
	}
	c.Flags().DurationVar(&timeout, "timeout", time.Minute, "give up waiting after this long")
	return c
}

// shellCommand is the command line for the guest's /bin/sh -c: one word is one already, several
// are an argument vector that must reach the program as it is.
func shellCommand(words []string) string {
	if len(words) == 1 {
		return words[0]
	}
	quoted := make([]string, len(words))
	for i, w := range words {
		quoted[i] = shellQuote(w)
	}
	return strings.Join(quoted, " ")
}

// shellQuote quotes s for a POSIX shell. Every word is quoted, even a plain one: unquoted, a
// first word such as "if" or "A=b" would be shell syntax rather than a program's name.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func (e *env) guestRead() *cobra.Command {
	var length int
	var asString, asJSON bool
	c := &cobra.Command{
		Use:   "read NAME SYMBOL",
		Short: "Read guest kernel memory at a symbol, from outside the guest",
		Long: `Read bytes at a kernel symbol of a guest from outside: a running guest is paused, its RAM is read
through its kernel's page tables, and it is resumed (one paused before stays paused; a dump is
read as it is). The page-table root is the kernel's own (init_top_pgt, found with the kernel in
the guest's RAM by its banner) and the symbols are the SVM's /proc/kallsyms, which runs the same
build: nothing is asked of the guest.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if asString && !cmd.Flags().Changed("len") {
				length = 4096
			}
			if length <= 0 || length > 1<<20 {
				return fmt.Errorf("--len must be 1 to 1048576, not %d", length)
			}
			if _, err := e.assets(); err != nil {
				return err
			}
			ctx := cmd.Context()
			var data []byte
			var text string
			var addr uint64
			read := func(syms *vmm.Symbols, virt *vmm.VirtView) error {
				var ok bool
				if addr, ok = syms.Addr(args[1]); !ok {
					return fmt.Errorf("symbol %q not found in the guest kernel's kallsyms", args[1])
				}
				var err error
				if asString {
					text, err = virt.ReadCString(addr, length)
				} else {
					data = make([]byte, length)
					err = virt.Read(addr, data)
				}
				if err != nil {
					return fmt.Errorf("read %s: %w", args[1], err)
				}
				return nil
			}
			if err := e.withKernelView(ctx, args[0], read); err != nil {
				return err
			}
			switch {
			case asJSON && asString:
				return writeJSON(e.stdout, map[string]any{"symbol": args[1], "address": fmt.Sprintf("%#x", addr), "string": text})
			case asJSON:
				return writeJSON(e.stdout, map[string]any{"symbol": args[1], "address": fmt.Sprintf("%#x", addr), "hex": hex.EncodeToString(data)})
			case asString:
				fmt.Fprint(e.stdout, text)
				if !strings.HasSuffix(text, "\n") {
					fmt.Fprintln(e.stdout)
				}
			default:
				fmt.Fprint(e.stdout, hex.Dump(data))
			}
			return nil
		},
	}
	c.Flags().IntVar(&length, "len", 64, "bytes to read (with --string: the most to read, default 4096)")
	c.Flags().BoolVar(&asString, "string", false, "read a NUL-terminated string")
	c.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return c
}

// withKernelView runs fn on the named guest's kernel address space and symbols, with the guest
// paused if it runs (see pausedTarget).
func (e *env) withKernelView(ctx context.Context, name string, fn func(*vmm.Symbols, *vmm.VirtView) error) error {
	t, kernel, err := e.openTarget(ctx, name)
	if err != nil {
		return err
	}
	defer t.Close()
	snap, syms, err := e.kernelFor(ctx, kernel, t)
	if err != nil {
		return err
	}
	virt, err := bridge.KernelView(ctx, t, snap, syms)
	if err != nil {
		return err
	}
	return pausedTarget(ctx, t, func() error { return fn(syms, virt) })
}
