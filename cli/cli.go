// Package cli is hybridbridge's command surface: it turns flags into calls on the other packages.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"hybridbridge/bridge"
	"hybridbridge/guest"
	"hybridbridge/vmm"
)

// ExitError carries an exit status that is not a failure of hybridbridge itself (the status of a
// command run inside a guest).
type ExitError struct{ Status int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Status) }

// env is what every command shares: flag values and output streams.
type env struct {
	runDir   string
	cacheDir string
	memoFlag string      // --memo; resolve with memoPath
	mode     bridge.Mode // --mode: the engine mode of the views
	// fastEngine is --fast-engine; probe is the KVM probe, run once when needed.
	fastEngine executor
	probe      *vmm.KVMProbe
	stdout     io.Writer
	stderr     io.Writer
	// detachGuests lets `guest start` leave its guest running after this process exits, as the
	// command line needs; in-process callers (the tests) keep their guests tied to themselves.
	detachGuests bool
}

// assets finds the setup's cache lazily, so commands that need none (help, guest list) work on a
// machine that is not set up.
func (e *env) assets() (*guest.Assets, error) {
	if e.cacheDir == "" {
		dir, err := guest.FindCacheDir()
		if err != nil {
			return nil, err
		}
		e.cacheDir = dir
	}
	return guest.LoadAssets(e.cacheDir)
}

// NewRoot builds the command tree.
func NewRoot(stdout, stderr io.Writer) *cobra.Command {
	return newRoot(&env{stdout: stdout, stderr: stderr, detachGuests: true})
}

// newRoot builds the command tree on e.
func newRoot(e *env) *cobra.Command {
	root := &cobra.Command{
		Use:   "hybridbridge",
		Short: "See what runs inside a Linux VM from outside it, using the guest kernel's own code",
		Long: `hybridbridge shows what runs inside a Linux virtual machine - processes, sockets, kernel
modules - from outside it, with no agent in the guest and no symbol profiles (the HYBRID-BRIDGE
approach, NDSS 2014).

Without a command it opens the console on the built-in demo guest (booting it if needed); without
a terminal it prints what can be read from that guest instead.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return e.runRoot(cmd)
		},
	}
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	root.PersistentFlags().StringVar(&e.runDir, "run-dir", guest.DefaultRunDir(), "folder for running guests' sockets and logs ($HYBRIDBRIDGE_RUN)")
	root.PersistentFlags().Var(modeFlag(&e.mode), "mode", "engine for views: auto (Fast-Bridge, falling back to Slow-Bridge on a memo miss), fast (a miss is an error) or slow (taint throughout)")
	root.PersistentFlags().Var(executorFlag(&e.fastEngine), "fast-engine", "executor of Fast-Bridge: auto (KVM if a probe finds hardware KVM, else Unicorn), unicorn, or kvm (even a slow, paravirtual one: for tests and demos)")
	root.PersistentFlags().StringVar(&e.cacheDir, "cache", "", "folder made by scripts/setup.sh (default: found from the executable or working directory; $HYBRIDBRIDGE_CACHE)")
	root.PersistentFlags().StringVar(&e.memoFlag, "memo", "", "memo file: the decisions views learn, shared by concurrent runs (default: <cache>/memo/<kernel id>.memo; $HYBRIDBRIDGE_MEMO)")
	root.AddCommand(e.guestCommand(), e.svmCommand(), e.psCommand(), e.catCommand(), e.memoCommand())
	root.AddCommand(e.viewCommands()...)
	root.AddCommand(e.consoleCommand(), e.benchCommand(), e.runCommand())
	return root
}

// Main runs the command line and returns the process exit status.
func Main(ctx context.Context, args []string) int {
	root := NewRoot(os.Stdout, os.Stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	var exit *ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit):
		return exit.Status
	default:
		fmt.Fprintf(os.Stderr, "hybridbridge: %s\n", oneLine(err))
		return 1
	}
}

// oneLine is err's message on one line: errors joined from several steps (a view that failed,
// then the detach that followed it) are separated by "; ", so a failure is always one line.
func oneLine(err error) string {
	return strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", "; ")
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// parseSize reads a memory size such as 512M, 1G or 768 (MiB) and returns MiB.
func parseSize(s string) (int, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "IB"), "B")
	mult := 1
	switch {
	case strings.HasSuffix(t, "G"):
		mult, t = 1024, strings.TrimSuffix(t, "G")
	case strings.HasSuffix(t, "M"):
		t = strings.TrimSuffix(t, "M")
	}
	n, err := strconv.Atoi(t)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("bad memory size %q (examples: 512M, 1G)", s)
	}
	return n * mult, nil
}

// progress prints boot progress on one updating line when stderr is a terminal, and a line per
// stage otherwise (logs stay readable).
func progress(w io.Writer) (func(stage string, elapsed time.Duration), func()) {
	tty := false
	if f, ok := w.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	last := ""
	report := func(stage string, elapsed time.Duration) {
		if tty {
			fmt.Fprintf(w, "\r\033[K%s... %.1fs", stage, elapsed.Seconds())
			return
		}
		if stage != last {
			fmt.Fprintf(w, "%s...\n", stage)
			last = stage
		}
	}
	done := func() {
		if tty {
			fmt.Fprint(w, "\r\033[K")
		}
	}
	return report, done
}

// fastOnKVM resolves --fast-engine: whether Fast-Bridge runs under KVM, and why.
func (e *env) fastOnKVM() (bool, string, error) {
	switch e.fastEngine {
	case executorUnicorn:
		return false, "Unicorn (--fast-engine unicorn)", nil
	case executorKVM:
		p := e.kvmProbe()
		if !p.RunsCode {
			return false, "", fmt.Errorf("--fast-engine kvm: KVM does not run here: %s", p.Reason)
		}
		why := "KVM (--fast-engine kvm)"
		if !p.Usable {
			why += "; the probe says it is slow here: " + p.Reason
		}
		return true, why, nil
	default: // executorAuto
		p := e.kvmProbe()
		if p.Usable {
			return true, "KVM (" + p.Reason + ")", nil
		}
		return false, "Unicorn (KVM probe: " + p.Reason + ")", nil
	}
}

// kvmProbe runs the KVM probe once (a few milliseconds) and remembers its answer.
func (e *env) kvmProbe() vmm.KVMProbe {
	if e.probe == nil {
		p := vmm.ProbeKVM(guest.DetectAccel().KVM)
		e.probe = &p
	}
	return *e.probe
}
