package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"hybridbridge/bridge"
	"hybridbridge/guest"
	"hybridbridge/kaslr"
	"hybridbridge/svm"
	"hybridbridge/target"
	"hybridbridge/vmm"
)

func (e *env) svmCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "svm",
		Short: "Build the secure VM snapshot and run system calls in it",
		Long: `The secure VM (SVM) runs the same kernel as the guests. Its snapshot is taken with an agent
process stopped at system-call entry; hybridbridge loads it into the Unicorn emulator and injects
system calls in kernel mode. The snapshot is built once per kernel build and cached.`,
	}
	c.AddCommand(e.svmBuild(), e.svmCat(), e.svmLs())
	return c
}

func (e *env) svmBuild() *cobra.Command {
	var gvmMax, kernel string
	var asJSON bool
	c := &cobra.Command{
		Use:   "build",
		Short: "Boot the SVM under QEMU and capture its snapshot (replaces a cached one)",
		Long: `Boot the SVM under QEMU and capture its snapshot, replacing the cached one of the same kernel
build. Views build it themselves when it is missing; this command rebuilds it on purpose, for
larger guests (--gvm-max) or for another kernel build (--kernel: the bzImage a VM runs; one
snapshot is cached per build).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			mib, err := parseSize(gvmMax)
			if err != nil {
				return err
			}
			a, err := e.kernelAssets(kernel)
			if err != nil {
				return err
			}
			snap, err := e.buildSnapshot(cmd.Context(), a, mib, nil)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(e.stdout, snap)
			}
			fmt.Fprintf(e.stdout, "SVM snapshot for %s built in %.1fs: %s\n", snap.Release, snap.BuildTimeS, snap.Dir())
			fmt.Fprintf(e.stdout, "  RAM %d MiB (%d MiB used), serves guests up to %d MiB\n",
				snap.Layout.RAMSize>>20, snap.RAMData>>20, snap.Layout.GVMMax>>20)
			fmt.Fprintf(e.stdout, "  agent pid %d, buffer %#x; captured at do_syscall_64 with pt_regs %#x\n",
				snap.Agent.PID, snap.Agent.Buffer, snap.PtRegs)
			return nil
		},
	}
	c.Flags().StringVar(&gvmMax, "gvm-max", "1G", "largest guest memory the snapshot serves (128M to 8G; above 2560M the guest's RAM is split as q35 splits it: 2 GiB at 0, the rest at 4 GiB)")
	c.Flags().StringVar(&kernel, "kernel", "", "the kernel build (a bzImage) to build it for (default: the one setup fetched)")
	c.Flags().BoolVar(&asJSON, "json", false, "print the snapshot's metadata as JSON")
	return c
}

// buildSnapshot builds the SVM snapshot of a's kernel, serving guests up to gvmMaxMiB.
func (e *env) buildSnapshot(ctx context.Context, a *guest.Assets, gvmMaxMiB int, layout *kaslr.Layout) (*svm.Snapshot, error) {
	report, done := progress(e.stderr)
	defer done()
	// The snapshot records the blocking entries so that a machine opened without the kernel's
	// symbol table (machine, below) still stops a call that sleeps.
	return svm.Build(ctx, a, svm.BuildOptions{CacheDir: e.cacheDir, RunDir: e.runDir, GVMMaxMiB: gvmMaxMiB, Progress: report,
		KeepSymbols: bridge.BlockingEntries(), Layout: layout})
}

// defaultGVMMiB is the largest guest a snapshot built on demand serves, unless a bigger one
// needs it.
const defaultGVMMiB = 1024

// snapshot loads the cached snapshot of the setup's kernel (see snapshotOf).
func (e *env) snapshot(ctx context.Context) (*svm.Snapshot, error) {
	a, err := e.assets()
	if err != nil {
		return nil, err
	}
	return e.snapshotOf(ctx, a, nil)
}

// snapshotOf loads the cached snapshot of a's kernel, building it first when there is none, it
// was made for another kernel or format, or it does not serve a guest whose RAM lies in ram (nil:
// any guest). A corrupt snapshot is reported, not silently replaced.
func (e *env) snapshotOf(ctx context.Context, a *guest.Assets, ram []vmm.PhysRange) (*svm.Snapshot, error) {
	id, err := a.KernelID()
	if err != nil {
		return nil, err
	}
	need := defaultGVMMiB
	if ram != nil {
		gvm, err := svm.GVMMaxFor(ram)
		if err != nil {
			return nil, err
		}
		need = max(need, int(gvm/mib))
	}
	snap, err := svm.Load(svm.SnapshotDir(e.cacheDir, id), id)
	switch {
	case err == nil && snap.Layout.Serves(ram):
		return snap, nil
	case err == nil:
		fmt.Fprintf(e.stderr, "building the SVM snapshot for %s again: it serves guests up to %d MiB, this one has RAM up to %d MiB\n",
			a.Release, snap.Layout.GVMMax/mib, target.RAMEnd(ram)/mib)
		return e.buildSnapshot(ctx, a, need, nil)
	case errors.Is(err, svm.ErrNoSnapshot), errors.Is(err, svm.ErrKernelMismatch), errors.Is(err, svm.ErrSnapshotFormat):
		fmt.Fprintf(e.stderr, "building the SVM snapshot for %s (%v)\n", a.Release, firstLine(err))
		return e.buildSnapshot(ctx, a, need, nil)
	default:
		return nil, err
	}
}

const mib = 1 << 20

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// machine loads the snapshot into a new executor.
func (e *env) machine(ctx context.Context) (*svm.Machine, error) {
	snap, err := e.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	return svm.Open(snap, svm.Options{Blocking: bridge.BlockingEntries()})
}

func (e *env) svmCat() *cobra.Command {
	return &cobra.Command{
		Use:   "cat PATH",
		Short: "Print a file of the SVM itself, read by injected openat/read/close",
		Long: `Print a file as the SVM's kernel sees it, read by system calls injected into the snapshot in
the emulator (no redirection to any guest yet: /proc shows the SVM's own processes).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := e.machine(cmd.Context())
			if err != nil {
				return err
			}
			defer m.Close()
			data, err := m.ReadFile(args[0])
			if err != nil {
				return err
			}
			_, err = e.stdout.Write(data)
			return err
		},
	}
}

func (e *env) svmLs() *cobra.Command {
	var asJSON, long bool
	c := &cobra.Command{
		Use:   "ls PATH",
		Short: "List a directory of the SVM itself, read by injected getdents64",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := e.machine(cmd.Context())
			if err != nil {
				return err
			}
			defer m.Close()
			start := time.Now()
			ents, err := m.ReadDir(args[0])
			if err != nil {
				return err
			}
			if asJSON {
				if ents == nil {
					ents = []svm.DirEntry{}
				}
				return writeJSON(e.stdout, ents)
			}
			if !long {
				for _, d := range ents {
					fmt.Fprintln(e.stdout, d.Name)
				}
				return nil
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "INODE\tTYPE\tNAME")
			for _, d := range ents {
				fmt.Fprintf(tw, "%d\t%s\t%s\n", d.Inode, direntType(d.Type), d.Name)
			}
			st := m.Stats()
			fmt.Fprintf(e.stderr, "%d entries, %d system calls, %v\n", len(ents), st.Syscalls, time.Since(start).Round(time.Microsecond))
			return tw.Flush()
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print entries as JSON")
	c.Flags().BoolVarP(&long, "long", "l", false, "show inode and type")
	return c
}

func direntType(t uint8) string {
	switch t {
	case 4:
		return "dir"
	case 8:
		return "file"
	case 10:
		return "link"
	default:
		return fmt.Sprint(t)
	}
}
