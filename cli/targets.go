package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"hybridbridge/bridge"
	"hybridbridge/guest"
	"hybridbridge/svm"
	"hybridbridge/target"
	"hybridbridge/vmm"
)

// openTarget finds the VM a --guest flag names: one of our own guests first, then an attached VM
// (guest attach). It returns the target, which the caller closes, and the guest's kernel build
// ("" for the one setup fetched).
func (e *env) openTarget(ctx context.Context, name string) (target.Target, string, error) {
	g, err := guest.Open(e.runDir, name)
	if err == nil {
		return target.FromGuest(g), g.Meta.Kernel, nil
	}
	if !errors.Is(err, guest.ErrNotRunning) {
		return nil, "", err
	}
	rec, lerr := target.Lookup(e.runDir, name)
	if errors.Is(lerr, target.ErrNotAttached) {
		return nil, "", fmt.Errorf("%w; no VM of that name is attached either (hybridbridge guest list)", err)
	}
	if lerr != nil {
		return nil, "", lerr
	}
	t, err := rec.Open(ctx)
	if err != nil {
		return nil, "", fmt.Errorf("attached VM %s (%s): %w", name, rec.Where(), err)
	}
	return t, rec.Kernel, nil
}

// ownGuest is the guest behind t when hybridbridge started it, and nil for a VM it attached: only
// our own guests have a command channel.
func ownGuest(t target.Target) *guest.Guest {
	if o, ok := t.(*target.Own); ok {
		return o.Guest()
	}
	return nil
}

// kernelAssets are the setup's assets with the guest kernel build kernelPath ("" for the one
// setup fetched).
func (e *env) kernelAssets(kernelPath string) (*guest.Assets, error) {
	a, err := e.assets()
	if err != nil || kernelPath == "" {
		return a, err
	}
	// Its errors name the file as "kernel PATH": clear enough for --kernel.
	return a.ForKernel(kernelPath)
}

// kernelFor returns what inspecting t, a guest of the kernel build kernelPath ("" for the
// setup's), needs: the SVM snapshot of that build in t's layout (built first when missing or too
// small for its RAM) and the build's symbols in that layout. The symbols are the SVM's own
// /proc/kallsyms, which the nokaslr snapshot build's first boot caches: nothing is asked of the
// guest, which may have no command channel. A guest booted with KASLR gets a snapshot of its own
// layout, built once per layout (the nokaslr one comes first: it gives the symbols and finds the
// guest's layout).
func (e *env) kernelFor(ctx context.Context, kernelPath string, t target.Target) (*svm.Snapshot, *vmm.Symbols, error) {
	a, err := e.kernelAssets(kernelPath)
	if err != nil {
		return nil, nil, err
	}
	ram := target.RAMOnly(t.Phys().Ranges())
	snap, err := e.snapshotOf(ctx, a, ram)
	if err != nil {
		return nil, nil, err
	}
	path := guest.SymbolsPath(e.cacheDir, snap.KernelID)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(e.stderr, "building the SVM snapshot for %s again: its kernel's symbols are not cached (%s)\n", a.Release, path)
		if snap, err = e.buildSnapshot(ctx, a, int(snap.Layout.GVMMax/mib), nil); err != nil {
			return nil, nil, err
		}
	}
	syms, err := svm.KernelSymbols(e.cacheDir, snap)
	if err != nil {
		return nil, nil, err
	}
	l, same, err := bridge.LayoutOf(t, snap, syms)
	if err != nil || same {
		return snap, syms, err
	}
	dir := svm.LayoutSnapshotDir(e.cacheDir, snap.KernelID, l)
	lsnap, err := svm.Load(dir, snap.KernelID)
	switch {
	case err == nil && lsnap.Layout.Serves(ram):
	case err == nil, errors.Is(err, svm.ErrNoSnapshot), errors.Is(err, svm.ErrKernelMismatch), errors.Is(err, svm.ErrSnapshotFormat):
		fmt.Fprintf(e.stderr, "building an SVM snapshot in %s's KASLR layout (%s); once per layout\n", t.Name(), l)
		if lsnap, err = e.buildSnapshot(ctx, a, int(snap.Layout.GVMMax/mib), &l); err != nil {
			return nil, nil, err
		}
	default:
		return nil, nil, err
	}
	e.pruneLayouts(lsnap)
	lsyms, err := svm.KernelSymbols(e.cacheDir, lsnap)
	if err != nil {
		return nil, nil, err
	}
	return lsnap, lsyms, nil
}

// pruneLayouts marks snap, a layout snapshot, used and removes the least recently used ones of
// its build beyond svm.KeepLayouts (each about 84 MB; every boot of a KASLR guest makes one). A
// cache that cannot be tidied is said, not fatal: the snapshot itself is fine.
func (e *env) pruneLayouts(snap *svm.Snapshot) {
	err := snap.MarkUsed()
	if err == nil {
		var removed []string
		removed, err = svm.PruneLayouts(e.cacheDir, snap.KernelID, svm.KeepLayouts, snap.Dir())
		if len(removed) > 0 {
			fmt.Fprintf(e.stderr, "removed %d SVM snapshots of older KASLR layouts (the cache keeps the %d last used)\n", len(removed), svm.KeepLayouts)
		}
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "note: %v\n", err)
	}
}

// ramEnd is how large a guest the SVM snapshot must serve for t.

// ramSize is how much RAM t has.
func ramSize(t target.Target) uint64 {
	var n uint64
	for _, r := range t.Phys().Ranges() {
		n += r.Size
	}
	return n
}

// pidOf is the QEMU process behind t, 0 when there is none (a dump) or t cannot tell.
func pidOf(t target.Target) int {
	if g := ownGuest(t); g != nil {
		return g.Meta.PID
	}
	if p, ok := t.(interface{ PID() int }); ok {
		return p.PID()
	}
	return 0
}

// accelOf says how the VM runs, for the console's header: QEMU's accelerator for our own guests,
// how it was reached for the others.
func accelOf(t target.Target) string {
	if g := ownGuest(t); g != nil {
		return g.Meta.Accel
	}
	return "attached via " + string(t.Kind())
}

// pausedTarget runs fn with t paused, and resumes it afterwards if it was running, also when fn
// fails or the user interrupts: an inspection never leaves a VM stopped, and never resumes one
// that was paused before it came.
func pausedTarget(ctx context.Context, t target.Target, fn func() error) error {
	st, err := t.State(ctx)
	if err != nil {
		return err
	}
	if st != target.Running {
		return fn()
	}
	if err := t.Pause(ctx); err != nil {
		return err
	}
	// A signal arriving now is held until the VM runs again.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	err = fn()
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if rerr := t.Resume(rctx); rerr != nil && err == nil {
		err = fmt.Errorf("resume %s: %w", t.Name(), rerr)
	}
	select {
	case s := <-sig:
		if err == nil {
			err = fmt.Errorf("interrupted by %v (%s was resumed)", s, t.Name())
		}
	default:
	}
	return err
}

// attachWays are the flags of guest attach that say how to reach the VM; exactly one is given.
var attachWays = []string{"qmp", "pid", "libvirt", "dump"}

func (e *env) guestAttach() *cobra.Command {
	var rec target.Record
	var asJSON bool
	c := &cobra.Command{
		Use:   "attach NAME (--qmp SOCKET | --pid PID | --libvirt DOMAIN | --dump FILE) [--kernel BZIMAGE]",
		Short: "Name a VM hybridbridge did not start (or a memory dump of one), to inspect it with --guest NAME",
		Long: `Register a VM that runs without hybridbridge - a QEMU process reached by its QMP socket or its
PID, a libvirt domain - or a memory dump of one (QEMU dump-guest-memory, virsh dump
--memory-only), under NAME. Every view, cat, bench and the console then inspect it with
--guest NAME, from outside, as they do the guests hybridbridge starts.

attach opens the VM once: it checks that the VM can be reached and that it runs the kernel
build the SVM runs (found in the VM's RAM by the kernel's banner; a mismatch names both
versions), builds the SVM snapshot for that build if there is none, and records how to reach
the VM again. It neither pauses nor changes the VM. Each later inspection pauses a running VM
for as long as it reads, then resumes it; nothing stays paused between commands, and a VM that
was paused before stays paused. A VM hybridbridge did not start has no command channel: guest
exec refuses it, and guest stop never stops it (guest detach forgets it).

--kernel names the guest's kernel build (its bzImage, e.g. a copy of its /boot/vmlinuz-*): the
SVM boots that same build, one snapshot per build. Default: the kernel setup fetched.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var given []string
			for _, w := range attachWays {
				if cmd.Flags().Changed(w) {
					given = append(given, "--"+w)
				}
			}
			if len(given) != 1 {
				return fmt.Errorf("name exactly one of --qmp, --pid, --libvirt or --dump (given: %s)", orNone(given))
			}
			rec.Name, rec.Kind = args[0], target.Kind(strings.TrimPrefix(given[0], "--"))
			row, err := e.attach(cmd.Context(), rec)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(e.stdout, row)
			}
			how := row.Attached.Where()
			if row.Kind != target.KindPID {
				how += ", " + pidText(row.PID)
			}
			fmt.Fprintf(e.stdout, "attached %s: %s, %d MiB RAM, %s, kernel %s; checked in %.1fs at %s (inspect it with: hybridbridge ps --guest %s)\n",
				row.Name, how, row.RAM>>20, row.State, row.Kernel,
				row.took.Seconds(), row.Attached.AttachedAt.Local().Format(time.TimeOnly), row.Name)
			return nil
		},
	}
	c.Flags().StringVar(&rec.QMP, "qmp", "", "the VM's QMP socket (QEMU's -qmp unix:PATH)")
	c.Flags().IntVar(&rec.PID, "pid", 0, "the VM's QEMU process id (its QMP socket is used if its command line names one)")
	c.Flags().StringVar(&rec.Libvirt, "libvirt", "", "a libvirt domain (reached through virsh)")
	c.Flags().StringVar(&rec.Dump, "dump", "", "a memory dump: QEMU dump-guest-memory or virsh dump --memory-only (ELF)")
	c.Flags().StringVar(&rec.Kernel, "kernel", "", "the guest's kernel build, a bzImage (default: the kernel setup fetched)")
	c.Flags().BoolVar(&asJSON, "json", false, "print the attached VM as guest list --json does")
	return c
}

// orNone lists flags, or says there were none.
func orNone(flags []string) string {
	if len(flags) == 0 {
		return "none"
	}
	return strings.Join(flags, ", ")
}

func pidText(pid int) string {
	if pid == 0 {
		return "no process"
	}
	return fmt.Sprintf("QEMU pid %d", pid)
}

// attach checks that the VM rec names can be reached and runs a kernel the SVM serves, and
// registers it. rec has its name, kind, the way to reach the VM and its kernel.
func (e *env) attach(ctx context.Context, rec target.Record) (*listRow, error) {
	start := time.Now()
	// Paths are kept absolute: later commands may run from another folder.
	for _, p := range []*string{&rec.QMP, &rec.Dump, &rec.Kernel} {
		if *p == "" {
			continue
		}
		abs, err := filepath.Abs(*p)
		if err != nil {
			return nil, err
		}
		*p = abs
	}
	if err := rec.Check(); err != nil {
		return nil, err
	}
	if g, err := guest.Open(e.runDir, rec.Name); err == nil {
		return nil, fmt.Errorf("%q is a guest hybridbridge started (QEMU pid %d); attach the VM under another name", rec.Name, g.Meta.PID)
	}
	if old, err := target.Lookup(e.runDir, rec.Name); err == nil {
		return nil, fmt.Errorf("%q is already attached (%s); detach it first: hybridbridge guest detach %s", rec.Name, old.Where(), rec.Name)
	}
	if rec.Kernel != "" {
		if _, err := e.kernelAssets(rec.Kernel); err != nil {
			return nil, err
		}
	}
	t, err := rec.Open(ctx)
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", rec.Name, err)
	}
	defer t.Close()
	state, err := t.State(ctx)
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", rec.Name, err)
	}
	snap, syms, err := e.kernelFor(ctx, rec.Kernel, t)
	if err != nil {
		return nil, err
	}
	if err := bridge.CheckKernel(ctx, t, snap, syms); err != nil {
		return nil, fmt.Errorf("attach %s: %w", rec.Name, err)
	}
	if rec.Kind != target.KindPID {
		rec.PID = pidOf(t)
	}
	rec.AttachedAt = time.Now().UTC().Truncate(time.Second)
	if err := target.Register(e.runDir, rec); err != nil {
		return nil, err
	}
	return &listRow{Name: rec.Name, Kind: rec.Kind, State: string(state), PID: rec.PID, RAM: ramSize(t),
		Kernel: snap.Release, Attached: &rec, took: time.Since(start)}, nil
}

func (e *env) guestDetach() *cobra.Command {
	return &cobra.Command{
		Use:   "detach NAME",
		Short: "Forget an attached VM (it is never stopped, paused or resumed)",
		Long: `Forget a VM registered with guest attach. Only hybridbridge's record goes: the VM is not
stopped, paused or resumed, and a dump file is left where it is.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if g, err := guest.Open(e.runDir, name); err == nil {
				return fmt.Errorf("%q is a guest hybridbridge started (QEMU pid %d), not an attached VM; stop it with: hybridbridge guest stop %s", name, g.Meta.PID, name)
			}
			rec, err := target.Lookup(e.runDir, name)
			if err != nil {
				return err
			}
			if err := target.Unregister(e.runDir, name); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "detached %s (%s); the VM itself was not touched\n", name, rec.Where())
			return nil
		},
	}
}

// notOurs is the error of a command that needs a VM hybridbridge started (stop, exec) when name
// is an attached VM, and nil when it is not one.
func (e *env) notOurs(name, what string) error {
	rec, err := target.Lookup(e.runDir, name)
	if err != nil {
		return nil
	}
	return fmt.Errorf("%s is a VM hybridbridge did not start (%s): %s", name, rec.Where(), what)
}

// listRow is one VM of guest list: our own guests and the attached VMs.
type listRow struct {
	Name string      `json:"name"`
	Kind target.Kind `json:"kind"`
	// State is running, paused, frozen (a dump), stopped (our own guest's QEMU exited), or gone
	// (an attached VM that cannot be reached any more; Error says why).
	State  string `json:"state"`
	PID    int    `json:"pid,omitempty"`
	RAM    uint64 `json:"ram_bytes,omitempty"`
	Kernel string `json:"kernel,omitempty"` // the build attach checked (attached VMs)
	Error  string `json:"error,omitempty"`
	// Meta is our own guest's; Attached is how an attached VM is reached.
	Meta     *guest.Meta    `json:"meta,omitempty"`
	Attached *target.Record `json:"attached,omitempty"`
	took     time.Duration  // how long attach took
}

// listRows lists our own guests and the attached VMs, each opened to ask its state.
func (e *env) listRows(ctx context.Context) ([]listRow, error) {
	own, err := guest.List(e.runDir)
	if err != nil {
		return nil, err
	}
	rows := []listRow{}
	for _, r := range own {
		row := listRow{Name: r.Name, Kind: target.KindOwn, State: r.State, Meta: r.Meta}
		if r.Meta != nil {
			row.PID, row.RAM = r.Meta.PID, r.Meta.RAMSize
			if g, err := guest.Open(e.runDir, r.Name); err == nil {
				if st, err := g.Status(ctx); err == nil {
					row.State = st
				}
			}
		}
		rows = append(rows, row)
	}
	recs, err := target.Records(e.runDir)
	if err != nil {
		return nil, err
	}
	for i := range recs {
		rows = append(rows, e.attachedRow(ctx, &recs[i]))
	}
	return rows, nil
}

// attachedRow opens an attached VM to ask its state: one that cannot be opened is gone.
func (e *env) attachedRow(ctx context.Context, rec *target.Record) listRow {
	row := listRow{Name: rec.Name, Kind: rec.Kind, PID: rec.PID, Attached: rec}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	t, err := rec.Open(ctx)
	if err == nil {
		var st target.State
		st, err = t.State(ctx)
		row.State, row.RAM = string(st), ramSize(t)
		if pid := pidOf(t); pid != 0 {
			row.PID = pid
		}
		t.Close()
	}
	if err != nil {
		row.State, row.Error = "gone", oneLine(err)
	}
	return row
}

func (e *env) guestList() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "list",
		Short: "List our own guests and the attached VMs, with their kind and state",
		Long: `List the guests hybridbridge started (kind own) and the VMs attached with guest attach (kind qmp,
pid, libvirt or dump), each asked for its state: running, paused, frozen (a dump), stopped (our
own guest whose QEMU exited) or gone (an attached VM that can no longer be reached).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rows, err := e.listRows(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(e.stdout, rows)
			}
			if len(rows) == 0 {
				fmt.Fprintln(e.stdout, "no guests (start one with: hybridbridge guest start; or attach a VM with: hybridbridge guest attach)")
				return nil
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tKIND\tSTATE\tPID\tMEMORY\tACCEL\tUP / ATTACHED\tWHERE")
			for _, r := range rows {
				pid, mem := "-", "-"
				if r.PID != 0 {
					pid = fmt.Sprint(r.PID)
				}
				if r.RAM != 0 {
					mem = fmt.Sprintf("%dM", r.RAM>>20)
				}
				switch {
				case r.Meta != nil:
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t-\n", r.Name, r.Kind, r.State, pid, mem, r.Meta.Accel,
						time.Since(r.Meta.StartedAt).Round(time.Second))
				case r.Attached != nil:
					where := r.Attached.Where()
					if r.Error != "" {
						where += " (" + r.Error + ")"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t-\t%s\t%s\n", r.Name, r.Kind, r.State, pid, mem,
						r.Attached.AttachedAt.Local().Format(time.DateTime), where)
				default:
					fmt.Fprintf(tw, "%s\t%s\t%s\t-\t-\t-\t-\t-\n", r.Name, r.Kind, r.State)
				}
			}
			return tw.Flush()
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return c
}
