package cli

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"hybridbridge/guest"
)

func (e *env) guestCommand() *cobra.Command {
	g := &cobra.Command{
		Use:   "guest",
		Short: "Start, list, stop and query guest VMs run under QEMU",
	}
	g.AddCommand(e.guestStart(), e.guestList(), e.guestStop(), e.guestExec(), e.guestRead())
	return g
}

// startDemo boots the demo image with progress on stderr.
func (e *env) startDemo(ctx context.Context, name, mem string, detached bool) (*guest.Guest, error) {
	mib, err := parseSize(mem)
	if err != nil {
		return nil, err
	}
	a, err := e.assets()
	if err != nil {
		return nil, err
	}
	img, err := guest.BuildDemoImage(a)
	if err != nil {
		return nil, fmt.Errorf("build demo image: %w", err)
	}
	report, done := progress(e.stderr)
	defer done()
	return guest.Start(ctx, guest.Config{
		Name: name, MemMiB: mib, Image: img, RunDir: e.runDir, Detached: detached, Progress: report,
	})
}

func (e *env) guestStart() *cobra.Command {
	var name, mem string
	var asJSON bool
	c := &cobra.Command{
		Use:   "start",
		Short: "Boot a demo guest in the background and wait until its workload is up",
		Long: `Boot a guest from the built-in demo image (busybox, named processes, TCP and UDP listeners,
an established loopback connection, kernel modules) under QEMU. The guest keeps running after this
command returns; stop it with 'hybridbridge guest stop NAME'.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			g, err := e.startDemo(cmd.Context(), name, mem, e.detachGuests)
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
	c.Flags().StringVar(&mem, "mem", "512M", "guest memory (64M to 3G)")
	c.Flags().BoolVar(&asJSON, "json", false, "print the guest's metadata as JSON")
	return c
}

func (e *env) guestList() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "list",
		Short: "List guests and whether they run",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rows, err := guest.List(e.runDir)
			if err != nil {
				return err
			}
			if asJSON {
				if rows == nil {
					rows = []guest.GuestStatus{}
				}
				return writeJSON(e.stdout, rows)
			}
			if len(rows) == 0 {
				fmt.Fprintln(e.stdout, "no guests (start one with: hybridbridge guest start)")
				return nil
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tPID\tMEMORY\tACCEL\tUP")
			for _, r := range rows {
				if r.Meta == nil {
					fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\t-\n", r.Name, r.State)
					continue
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%dM\t%s\t%s\n", r.Name, r.State, r.Meta.PID, r.Meta.RAMSize>>20,
					r.Meta.Accel, time.Since(r.Meta.StartedAt).Round(time.Second))
			}
			return tw.Flush()
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return c
}

func (e *env) guestStop() *cobra.Command {
	return &cobra.Command{
		Use:   "stop NAME",
		Short: "Stop a guest (QEMU quits; its memory file and folder are removed)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			g, err := guest.Open(e.runDir, args[0])
			if err != nil {
				return err
			}
			return g.Stop(cmd.Context())
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
write later is not shown. Flags of exec (--timeout) go before --.`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			g, err := guest.Open(e.runDir, args[0])
			if err != nil {
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
		Long: `Read bytes at a kernel symbol of a running guest from outside: the guest is paused, its RAM
is read through its own page tables (CR3 from QEMU), and it is resumed. Symbol addresses come from
the guest's /proc/kallsyms, fetched once per kernel build and cached.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if asString && !cmd.Flags().Changed("len") {
				length = 4096
			}
			if length <= 0 || length > 1<<20 {
				return fmt.Errorf("--len must be 1 to 1048576, not %d", length)
			}
			g, err := guest.Open(e.runDir, args[0])
			if err != nil {
				return err
			}
			if _, err := e.assets(); err != nil {
				return err
			}
			ctx := cmd.Context()
			// Symbols first: fetching them needs the guest running.
			k, err := g.OpenKernel(ctx, e.cacheDir)
			if err != nil {
				return err
			}
			defer k.Close()
			var data []byte
			var text string
			var addr uint64
			err = paused(ctx, g, func() error {
				var err error
				if asString {
					text, addr, err = k.ReadSymbolString(args[1], length)
				} else {
					data, addr, err = k.ReadSymbol(args[1], length)
				}
				return err
			})
			if err != nil {
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

// paused runs fn with the guest paused and resumes it afterwards, also when fn fails or the user
// interrupts: an inspection must never leave the guest stopped.
func paused(ctx context.Context, g *guest.Guest, fn func() error) error {
	if err := g.Pause(ctx); err != nil {
		return err
	}
	// A signal arriving now is held until the guest runs again.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	err := fn()
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if rerr := g.Resume(rctx); rerr != nil && err == nil {
		err = fmt.Errorf("resume guest: %w", rerr)
	}
	select {
	case s := <-sig:
		if err == nil {
			err = fmt.Errorf("interrupted by %v (the guest was resumed)", s)
		}
	default:
	}
	return err
}
