// Package debianguest_test boots the Debian 12 guest scripts/setup.sh builds once for the package
// and checks it is what analysts' VMs are: systemd and its daemons, sshd, a user, namespaces,
// modules, RAM above 4 GiB on q35. The checks use the guest's own tools through the test channel.
package debianguest_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"hybridbridge/bridge"
	"hybridbridge/guest"
	"hybridbridge/inspect"
	"hybridbridge/internal/plainvm"
	"hybridbridge/svm"
	"hybridbridge/target"
	"hybridbridge/vmm"
)

var (
	deb      *guest.Guest
	debImg   *guest.Image
	assets   *guest.Assets
	setupErr error
	// ref4G is the nokaslr SVM snapshot for 4 GiB q35 guests, built by the first test needing it.
	ref4G struct {
		once sync.Once
		dir  string
		snap *svm.Snapshot
		syms *vmm.Symbols
		err  error
	}
)

func TestMain(m *testing.M) {
	code := func() int {
		dir, err := os.MkdirTemp("", "hbdebian-test")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		cache, err := guest.FindCacheDir()
		if err == nil {
			assets, err = guest.LoadAssets(cache)
		}
		if err == nil {
			debImg, err = guest.DebianImage(assets)
		}
		if err == nil {
			start := time.Now()
			deb, err = guest.Start(context.Background(), guest.Config{
				Name: "debian", MemMiB: debImg.MemMiB, Image: debImg, RunDir: dir, Timeout: 5 * time.Minute,
			})
			if err == nil {
				fmt.Fprintf(os.Stderr, "Debian guest ready in %.1fs\n", time.Since(start).Seconds())
			}
		}
		if err != nil {
			// Every test needs the guest; they fail with this reason rather than skip.
			setupErr = err
			return m.Run()
		}
		defer deb.Stop(context.Background())
		defer func() {
			if ref4G.dir != "" {
				os.RemoveAll(ref4G.dir)
			}
			if served.own {
				served.g.Stop(context.Background())
			}
			if served.dir != "" {
				os.RemoveAll(served.dir)
			}
		}()
		return m.Run()
	}()
	os.Exit(code)
}

func need(t *testing.T) context.Context {
	t.Helper()
	return needFor(t, 2*time.Minute)
}

// needFor is need for a test that may take up to d (a context derived from need's would end
// with need's).
func needFor(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	if setupErr != nil {
		t.Fatalf("the Debian guest did not start: %v", setupErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// sh runs a shell command line in the package's guest and returns its output; a failure fails
// the test.
func sh(t *testing.T, ctx context.Context, command string) string {
	t.Helper()
	return shOn(t, ctx, deb, command)
}

// shOn is sh in guest g.
func shOn(t *testing.T, ctx context.Context, g execer, command string) string {
	t.Helper()
	res, err := g.Exec(ctx, command)
	if err != nil {
		t.Fatalf("%s: %v", command, err)
	}
	if res.Status != 0 {
		t.Fatalf("%s: exit status %d: %s%s", command, res.Status, res.Stdout, res.Stderr)
	}
	return string(res.Stdout)
}

// TestMachine: q35, 2 vCPUs, 4 GiB with the part above the PCI hole at 4 GiB, the image's own
// kernel with KASLR on.
func TestMachine(t *testing.T) {
	ctx := need(t)
	if deb.Meta.Machine != "q35" || deb.Meta.CPUs != 2 || deb.Meta.RAMSize != 4<<30 {
		t.Errorf("booted %s, %d vCPUs, %d MiB", deb.Meta.Machine, deb.Meta.CPUs, deb.Meta.RAMSize>>20)
	}
	if n := strings.TrimSpace(sh(t, ctx, "nproc")); n != "2" {
		t.Errorf("nproc: %s", n)
	}
	cmdline := sh(t, ctx, "cat /proc/cmdline")
	if strings.Contains(cmdline, guest.NoKASLR) || !strings.Contains(cmdline, "root=/dev/vda") {
		t.Errorf("kernel command line %q", cmdline)
	}
	// The guest's own view of its RAM: System RAM above 4 GiB, where vmm.Q35Ranges puts it.
	iomem := sh(t, ctx, "cat /proc/iomem")
	ranges := vmm.Q35Ranges(deb.Meta.RAMSize)
	high := ranges[len(ranges)-1]
	want := fmt.Sprintf("%08x-%08x : System RAM", high.GuestPhys, high.End()-1)
	if !strings.Contains(iomem, want) {
		t.Errorf("/proc/iomem has no %q:\n%s", want, iomem)
	}
}

// TestSystemdServer: the daemons of a small server run, sshd listens on 22, the user analyst runs
// long-lived processes, the custom unit is active, dummy is loaded besides what udev loaded.
func TestSystemdServer(t *testing.T) {
	ctx := need(t)
	state := strings.TrimSpace(sh(t, ctx, "systemctl is-system-running || true"))
	if state != "running" {
		t.Errorf("systemctl is-system-running: %s; failed units:\n%s", state, sh(t, ctx, "systemctl --failed --no-legend || true"))
	}
	comms := map[string]bool{}
	for _, c := range strings.Fields(sh(t, ctx, "ps -eo comm=")) {
		comms[c] = true
	}
	for _, want := range []string{"systemd", "systemd-journal", "systemd-udevd", "systemd-logind", "systemd-network", "dbus-daemon", "cron", "sshd", "hbguest"} {
		if !comms[want] {
			t.Errorf("no %s process", want)
		}
	}
	if listen := sh(t, ctx, "ss -Htlnp sport = :22"); !strings.Contains(listen, "sshd") {
		t.Errorf("nothing of sshd's listens on port 22: %q", listen)
	}
	if users := sh(t, ctx, "ps -o user= -u analyst"); strings.Count(users, "analyst") < 3 {
		t.Errorf("analyst runs %d processes, want at least 3", strings.Count(users, "analyst"))
	}
	if active := strings.TrimSpace(sh(t, ctx, "systemctl is-active hb-analyst.service hb-isolated.service")); active != "active\nactive" {
		t.Errorf("the workload's units: %q", active)
	}
	mods := sh(t, ctx, "lsmod")
	for _, m := range []string{"dummy", "virtio_net", "ext4"} {
		if !regexp.MustCompile(`(?m)^` + m + `\s`).MatchString(mods) {
			t.Errorf("module %s not loaded:\n%s", m, mods)
		}
	}
	t.Logf("%s processes, %d modules", strings.TrimSpace(sh(t, ctx, "ps -e --no-headers | wc -l")), strings.Count(mods, "\n")-1)
}

// TestNamespacedProcess: the workload's process in its own PID and network namespaces is PID 1
// there and another PID outside, and its network namespace is not the host's.
func TestNamespacedProcess(t *testing.T) {
	ctx := need(t)
	pid := strings.TrimSpace(sh(t, ctx, "pgrep -f '^/bin/busybox nc -ll -p 9000'"))
	if _, err := strconv.Atoi(pid); err != nil {
		t.Fatalf("the namespaced process: %q", pid)
	}
	nspid := sh(t, ctx, "grep NSpid /proc/"+pid+"/status")
	if f := strings.Fields(nspid); len(f) != 3 || f[1] != pid || f[2] == pid {
		t.Errorf("NSpid of %s: %q, want its PID outside and another inside", pid, nspid)
	}
	own, init := sh(t, ctx, "readlink /proc/"+pid+"/ns/net"), sh(t, ctx, "readlink /proc/1/ns/net")
	if own == init {
		t.Errorf("the namespaced process shares init's network namespace %s", own)
	}
}

// TestViewsOn4GiB: with the SVM planned for q35's 4 GiB (the guest's RAM above 4 GiB overlaid at
// its own addresses, the direct map given page directories of its own there), ps, lsmod and free
// from outside agree with the guest's own tools. A KASLR boot may put the kernel above 4 GiB,
// where the SVM cannot follow it (its decompressor runs below 4 GiB): then that refusal, in one
// line, is checked (servedGuest), and a nokaslr boot of the same image serves the views.
func TestViewsOn4GiB(t *testing.T) {
	ctx := needFor(t, 10*time.Minute) // servedGuest may boot a guest
	g, snap, syms := servedGuest(t, ctx)
	own := target.FromGuest(g)
	defer own.Close()
	checkViews(t, ctx, own, g, snap, syms)
}

// served is the Debian guest the views are checked on, with the snapshot that serves it: the
// package's guest in its KASLR layout, or a nokaslr boot of the image when KASLR put the kernel
// above 4 GiB. Made once, by the first test needing it.
var served struct {
	once sync.Once
	g    *guest.Guest
	own  bool // g was booted for this and is stopped by TestMain
	snap *svm.Snapshot
	syms *vmm.Symbols
	dir  string
	err  error
}

func servedGuest(t *testing.T, ctx context.Context) (*guest.Guest, *svm.Snapshot, *vmm.Symbols) {
	t.Helper()
	ref, syms := snapshot4G(t, ctx)
	served.once.Do(func() {
		served.err = func() error {
			dir, err := os.MkdirTemp("", "hbdebian-served")
			if err != nil {
				return err
			}
			served.dir = dir
			served.g, served.snap, served.syms = deb, ref, syms
			tg := target.FromGuest(deb)
			l, same, err := bridge.LayoutOf(tg, ref, syms)
			tg.Close()
			if err != nil || same {
				return err
			}
			snap, err := svm.Build(ctx, assets, svm.BuildOptions{CacheDir: assets.CacheDir, RunDir: dir, OutDir: filepath.Join(dir, "layout"),
				GVMMaxMiB: 4096, KeepSymbols: bridge.BlockingEntries(), Layout: &l})
			switch {
			case err == nil:
				t.Logf("the guest's layout: %s", l)
				served.snap = snap
				served.syms, err = svm.KernelSymbols(assets.CacheDir, snap)
				return err
			case l.TextPhys >= 1<<32:
				if msg := err.Error(); !strings.Contains(msg, "the SVM cannot take on the layout") || !strings.Contains(msg, "below 4 GiB") || strings.Contains(msg, "\n") {
					return fmt.Errorf("a kernel at physical %#x: %v; want one line saying the SVM cannot take it on below 4 GiB", l.TextPhys, err)
				}
				t.Logf("refused as it must be: %v", err)
				img := *debImg
				img.Append += " " + guest.NoKASLR
				if served.g, err = guest.Start(ctx, guest.Config{Name: "debian-nokaslr", MemMiB: img.MemMiB, Image: &img, RunDir: dir, Timeout: 5 * time.Minute}); err != nil {
					return err
				}
				served.own = true
				return nil
			default:
				return fmt.Errorf("layout %s: %v", l, err)
			}
		}()
	})
	if served.err != nil {
		t.Fatal(served.err)
	}
	return served.g, served.snap, served.syms
}

// execer runs a shell command in a guest: our own guest's channel or a plain VM's.
type execer interface {
	Exec(ctx context.Context, command string) (*guest.Result, error)
}

// checkViews attaches t and checks ps, lsmod and free from outside against the guest's own ps,
// lsmod and free, run through g, and that no global was in neither list.
func checkViews(t *testing.T, ctx context.Context, tg target.Target, g execer, snap *svm.Snapshot, syms *vmm.Symbols) {
	t.Helper()
	before := guestPIDs(t, ctx, g)
	s, err := bridge.AttachTarget(ctx, tg, snap, syms, bridge.Options{Mode: bridge.ModeAuto})
	if err != nil {
		t.Fatal(err)
	}
	procs, _, perr := inspect.ProcessView.ReadTyped(s, 0)
	mods, _, merr := inspect.ModuleView.ReadTyped(s, 0)
	mem, _, ferr := inspect.MeminfoView.ReadTyped(s, 0)
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(perr, merr, ferr); err != nil {
		t.Fatal(err)
	}
	after := guestPIDs(t, ctx, g)
	seen := map[int]bool{}
	for _, p := range procs {
		seen[p.PID] = true
	}
	for pid := range before {
		if after[pid] && !seen[pid] {
			t.Errorf("pid %d, in the guest's ps before and after, is not in the view", pid)
		}
	}
	var names []string
	for _, m := range mods {
		names = append(names, m.Name)
	}
	res, err := g.Exec(ctx, "lsmod | tail -n +2 | cut -d' ' -f1")
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.Fields(string(res.Stdout)); !equalSets(names, want) {
		t.Errorf("lsmod from outside: %v\nthe guest's lsmod: %v", names, want)
	}
	res, err = g.Exec(ctx, "free -k | awk '/^Mem:/ {print $2}'")
	if err != nil {
		t.Fatal(err)
	}
	total := strings.TrimSpace(string(res.Stdout))
	for _, f := range mem {
		if f.Name == "MemTotal" && strconv.FormatUint(f.Value, 10) != total {
			t.Errorf("MemTotal %d kB from outside, the guest's free says %s", f.Value, total)
		}
	}
	if u := s.Globals.Unknown(); len(u) > 0 {
		t.Errorf("globals in neither list: %v", u)
	}
	st := s.Stats()
	t.Logf("%s: %d processes, %d modules; %d Fast-Bridge operations, %d fall-backs", tg.Name(), len(procs), len(mods), st.FastOps, st.FallBacks)
}

// TestPlainQEMUAttach: the same image booted by a plain QEMU command line — q35, 4 GiB of
// anonymous RAM, 2 vCPUs, the image's kernel and initramfs, a disk layer of the test's own — and
// attached by its QMP socket, as an analyst's VM is, gives the same views. nokaslr keeps the
// kernel below 4 GiB, so the views are checked on every run (TestViewsOn4GiB covers KASLR).
func TestPlainQEMUAttach(t *testing.T) {
	ctx := needFor(t, 10*time.Minute) // it boots a VM of its own
	dir := t.TempDir()
	layer := filepath.Join(dir, "disk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", debImg.Disk, "-F", "raw", layer).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	qmp := filepath.Join(dir, "qmp.sock")
	args := append([]string{
		"-machine", "q35", "-accel", "tcg", "-m", "4G", "-smp", "2",
		"-kernel", debImg.Kernel, "-initrd", debImg.Path, "-append", guest.DebianArgs + " " + guest.NoKASLR,
		"-drive", "file=" + layer + ",if=virtio,format=qcow2", "-nic", "user,model=virtio-net-pci",
		"-nodefaults", "-display", "none", "-no-reboot",
	}, append(plainvm.ChannelArgs(filepath.Join(dir, "console.log"), filepath.Join(dir, "cmd.sock")), plainvm.QMPArgs(qmp)...)...)
	vm, err := plainvm.Start(ctx, dir, args, plainvm.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Stop()
	if err := vm.WaitReady(ctx, 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	snap, syms := snapshot4G(t, ctx)
	tg, err := target.OpenQMP(ctx, qmp)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	checkViews(t, ctx, tg, vm, snap, syms)
}

// snapshot4G builds, once for the package, the nokaslr SVM snapshot planned for 4 GiB q35 guests.
func snapshot4G(t *testing.T, ctx context.Context) (*svm.Snapshot, *vmm.Symbols) {
	t.Helper()
	ref4G.once.Do(func() {
		ref4G.err = func() error {
			dir, err := os.MkdirTemp("", "hbdebian-svm")
			if err != nil {
				return err
			}
			ref4G.dir = dir
			if ref4G.snap, err = svm.Build(ctx, assets, svm.BuildOptions{CacheDir: assets.CacheDir, RunDir: dir, OutDir: filepath.Join(dir, "snapshot"),
				GVMMaxMiB: 4096, KeepSymbols: bridge.BlockingEntries()}); err != nil {
				return err
			}
			ref4G.syms, err = svm.KernelSymbols(assets.CacheDir, ref4G.snap)
			return err
		}()
	})
	if ref4G.err != nil {
		t.Fatal(ref4G.err)
	}
	return ref4G.snap, ref4G.syms
}

// guestPIDs lists the guest's processes by its own ps.
func guestPIDs(t *testing.T, ctx context.Context, g execer) map[int]bool {
	t.Helper()
	out := map[int]bool{}
	for _, f := range strings.Fields(shOn(t, ctx, g, "ps -eo pid=")) {
		n, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("ps -eo pid= in the guest printed %q", f)
		}
		out[n] = true
	}
	return out
}

func equalSets(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
