package target

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"hybridbridge/guest"
	"hybridbridge/internal/plainvm"
	"hybridbridge/internal/testenv"
	"hybridbridge/vmm"
)

// The plain VM: a QEMU started from an ordinary command line (anonymous RAM, QEMU's default CPU,
// the kernel's default arguments), standing for a VM someone else started. TestMain boots it.
var (
	plain    *plainvm.VM
	plainErr error
	// plainCtl is a second QMP socket of the plain VM, for the tests' own control (dumps,
	// resuming after a failure) while a Process holds the first: QEMU serves one client per
	// monitor.
	plainCtl string
)

const plainRAM = 256 << 20

// plainArgs is the plain VM's command line, QMP sockets aside.
func plainArgs(d plainvm.Demo, dir, mem string) []string {
	args := []string{"-machine", "pc", "-m", mem, "-smp", "2", "-accel", "tcg",
		"-nodefaults", "-display", "none", "-no-reboot"}
	args = append(args, d.BootArgs()...)
	return append(args, plainvm.ChannelArgs(filepath.Join(dir, "console.log"), filepath.Join(dir, "cmd.sock"))...)
}

func startPlain(ctx context.Context, runDir string) (*plainvm.VM, error) {
	dir := filepath.Join(runDir, "plain")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	d, err := plainvm.DemoImage()
	if err != nil {
		return nil, err
	}
	plainCtl = filepath.Join(dir, "ctl.sock")
	args := plainArgs(d, dir, "256M")
	args = append(args, plainvm.QMPArgs(filepath.Join(dir, "qmp.sock"))...)
	args = append(args, plainvm.QMPArgs(plainCtl)...)
	vm, err := plainvm.Start(ctx, dir, args, plainvm.Options{})
	if err != nil {
		return nil, err
	}
	if err := vm.WaitReady(ctx, 0); err != nil {
		vm.Stop()
		return nil, err
	}
	return vm, nil
}

// needPlain returns the plain VM, and makes sure a test that ends between a pause and its resume
// leaves it running: SIGCONT for a monitor-less pause, QMP cont for the other.
func needPlain(tb testing.TB) *plainvm.VM {
	tb.Helper()
	if plainErr != nil {
		tb.Fatalf("plain VM did not start: %v", plainErr)
	}
	if plain == nil {
		testenv.Skip(tb, "plain VM not started")
	}
	tb.Cleanup(func() {
		_ = syscall.Kill(plain.PID, syscall.SIGCONT)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := ctlRun(ctx, "cont"); err != nil {
			tb.Errorf("resume plain VM: %v", err)
		}
	})
	return plain
}

// ctlRun runs a QMP command on the plain VM's control socket.
func ctlRun(ctx context.Context, command string) (json.RawMessage, error) {
	q, err := guest.DialQMP(ctx, plainCtl)
	if err != nil {
		return nil, err
	}
	defer q.Close()
	return q.Run(ctx, command, nil)
}

func ctlStatus(t *testing.T, ctx context.Context) string {
	t.Helper()
	ret, err := ctlRun(ctx, "query-status")
	if err != nil {
		t.Fatal(err)
	}
	var st struct{ Status string }
	if err := json.Unmarshal(ret, &st); err != nil {
		t.Fatal(err)
	}
	return st.Status
}

// answers checks that the guest runs: its command channel runs a command.
func answers(t *testing.T, ctx context.Context, vm *plainvm.VM) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if _, err := vm.Exec(ctx, "true"); err != nil {
		t.Fatalf("guest does not answer on its command channel: %v", err)
	}
}

func TestProcessOpenQMPAndPID(t *testing.T) {
	vm := needPlain(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	start := time.Now()
	q, err := OpenQMP(ctx, vm.QMPSocket)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("OpenQMP: %v; %s; ranges %v", time.Since(start).Round(time.Microsecond), q.Name(), q.Phys().Ranges())
	qRanges, qHosts := q.Phys().Ranges(), q.mem.hosts
	if q.PID() != vm.PID || q.Kind() != KindQMP || q.QMPSocket() != vm.QMPSocket {
		t.Errorf("OpenQMP: pid %d kind %s socket %q, want %d %s %q", q.PID(), q.Kind(), q.QMPSocket(), vm.PID, KindQMP, vm.QMPSocket)
	}
	if want := fmt.Sprintf("QEMU pid %d (qmp %s)", vm.PID, vm.QMPSocket); q.Name() != want {
		t.Errorf("name %q, want %q", q.Name(), want)
	}
	// -nodefaults leaves no VGA window: after the firmware, all of pc.ram is one range.
	if want := []vmm.PhysRange{{GuestPhys: 0, FileOffset: 0, Size: plainRAM}}; !reflect.DeepEqual(qRanges, want) {
		t.Errorf("ranges %v, want %v", qRanges, want)
	}
	// QEMU serves one client per monitor: OpenPID needs the socket free.
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}

	start = time.Now()
	p, err := OpenPID(ctx, vm.PID)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	t.Logf("OpenPID: %v; %s", time.Since(start).Round(time.Microsecond), p.Name())
	if p.PID() != vm.PID || p.Kind() != KindPID || p.QMPSocket() != vm.QMPSocket {
		t.Errorf("OpenPID: pid %d kind %s socket %q, want %d %s %q", p.PID(), p.Kind(), p.QMPSocket(), vm.PID, KindPID, vm.QMPSocket)
	}
	if none, why := p.Monitorless(); none {
		t.Errorf("OpenPID found no monitor: %s", why)
	}
	if !reflect.DeepEqual(p.Phys().Ranges(), qRanges) || !reflect.DeepEqual(p.mem.hosts, qHosts) {
		t.Errorf("OpenPID ranges %v at %#x, OpenQMP %v at %#x", p.Phys().Ranges(), p.mem.hosts, qRanges, qHosts)
	}
}

// TestProcessRAMEqualsDump compares the RAM file of the paused plain VM with QEMU's own dump of
// the same moment, and the monitor's vCPU state with the dump's.
func TestProcessRAMEqualsDump(t *testing.T) {
	vm := needPlain(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, err := OpenQMP(ctx, vm.QMPSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if st, err := p.State(ctx); err != nil || st != Running {
		t.Fatalf("state %q, %v; want running", st, err)
	}
	if err := p.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := p.State(ctx); err != nil || st != Paused {
		t.Fatalf("state after Pause %q, %v; want paused", st, err)
	}
	ram, err := p.RAM(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ram.Close()
	t.Logf("RAM: %d MiB copied of %d MiB in %v", ram.Copied>>20, p.Phys().Size()>>20, ram.Took.Round(time.Millisecond))
	if !reflect.DeepEqual(ram.Ranges, []vmm.PhysRange{{Size: plainRAM}}) {
		t.Errorf("RAM ranges %v", ram.Ranges)
	}
	if ram.Copied == 0 || ram.Copied >= plainRAM {
		t.Errorf("copied %d bytes of an idle %d-byte guest: the untouched part should be left out", ram.Copied, plainRAM)
	}
	cpus, err := p.CPUs(ctx)
	if err != nil {
		t.Fatal(err)
	}

	path := filepath.Join(t.TempDir(), "plain.elf")
	if err := dumpQMP(ctx, plainCtl, path); err != nil {
		t.Fatal(err)
	}
	d, err := OpenDump(path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	file, err := vmm.NewFileView(ram.File, ram.Ranges)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	sameBytes(t, "dump", d.Phys(), "RAM file", file)
	// Reading every page maps QEMU's untouched ones (to the zero page), so this comes last.
	sameBytes(t, "Phys", p.Phys(), "RAM file", file)

	if len(cpus) != 2 || len(d.cpus) != 2 {
		t.Fatalf("%d vCPUs from the monitor, %d in the dump; want 2", len(cpus), len(d.cpus))
	}
	for i, c := range cpus {
		dc := d.cpus[i]
		dc.KernelGSBase, dc.HasKernelGSBase = 0, false // HMP does not print it
		if c != dc {
			t.Errorf("vCPU %d: monitor %+v, dump %+v", i, c, dc)
		}
		if c.CR3 == 0 || c.CR4&(1<<5) == 0 {
			t.Errorf("vCPU %d: CR3 %#x CR4 %#x: want a page table and PAE", i, c.CR3, c.CR4)
		}
		t.Logf("vCPU %d: CR0=%#x CR3=%#x CR4=%#x RIP=%#x GS=%#x", i, c.CR0, c.CR3, c.CR4, c.RIP, c.GSBase)
	}

	if err := p.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := p.State(ctx); err != nil || st != Running {
		t.Fatalf("state after Resume %q, %v; want running", st, err)
	}
	answers(t, ctx, vm)
}

// sameBytes checks that a holds b's bytes over all of b's ranges.
func sameBytes(t *testing.T, an string, a vmm.PhysView, bn string, b vmm.PhysView) {
	t.Helper()
	for _, r := range b.Ranges() {
		sameRange(t, an, a, bn, b, r)
	}
}

// sameRange fails the test unless a and b hold the same bytes over r, naming the first address
// that differs. It reads chunk by chunk: the views are hundreds of MiB.
func sameRange(t *testing.T, an string, a vmm.PhysView, bn string, b vmm.PhysView, r vmm.PhysRange) {
	t.Helper()
	const chunk = 4 << 20
	x, y := make([]byte, chunk), make([]byte, chunk)
	for off := uint64(0); off < r.Size; off += chunk {
		n := min(chunk, r.Size-off)
		addr := r.GuestPhys + off
		if err := a.ReadPhys(addr, x[:n]); err != nil {
			t.Fatalf("%s: %v", an, err)
		}
		if err := b.ReadPhys(addr, y[:n]); err != nil {
			t.Fatalf("%s: %v", bn, err)
		}
		if !bytes.Equal(x[:n], y[:n]) {
			i := 0
			for x[i] == y[i] {
				i++
			}
			t.Fatalf("%s and %s differ at guest-physical %#x", an, bn, addr+uint64(i))
		}
	}
}

// TestProcessMonitorless opens the plain VM without its monitor: the layout from its command
// line and mappings, the pause by SIGSTOP.
func TestProcessMonitorless(t *testing.T) {
	vm := needPlain(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	q, err := OpenQMP(ctx, vm.QMPSocket)
	if err != nil {
		t.Fatal(err)
	}
	qRanges, qHosts := q.Phys().Ranges(), q.mem.hosts
	q.Close()

	p, err := NewProcess(ctx, vm.PID, ProcessOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if none, _ := p.Monitorless(); !none || p.Name() != fmt.Sprintf("QEMU pid %d", vm.PID) || p.Kind() != KindPID {
		t.Errorf("monitor-less %v, name %q, kind %s", none, p.Name(), p.Kind())
	}
	if !reflect.DeepEqual(p.Phys().Ranges(), qRanges) || !reflect.DeepEqual(p.mem.hosts, qHosts) {
		t.Errorf("from the mappings: %v at %#x; from the monitor: %v at %#x", p.Phys().Ranges(), p.mem.hosts, qRanges, qHosts)
	}
	if cpus, err := p.CPUs(ctx); cpus != nil || err != nil {
		t.Errorf("CPUs without a monitor: %v, %v; want nil, nil", cpus, err)
	}
	if st, err := p.State(ctx); err != nil || st != Running {
		t.Fatalf("state %q, %v; want running", st, err)
	}

	if err := p.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := p.State(ctx); err != nil || st != Paused {
		t.Fatalf("state after SIGSTOP %q, %v; want paused", st, err)
	}
	h1, err := vmm.Hash(ctx, p.Phys())
	if err != nil {
		t.Fatal(err)
	}
	// Long enough for the guest's timer to have fired many times, had it been running.
	time.Sleep(500 * time.Millisecond)
	h2, err := vmm.Hash(ctx, p.Phys())
	if err != nil {
		t.Fatal(err)
	}
	if h1 != h2 {
		t.Errorf("RAM changed while QEMU was stopped: %s, then %s", h1, h2)
	}
	ram, err := p.RAM(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ram.Close()
	file, err := vmm.NewFileView(ram.File, ram.Ranges)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	if h, err := vmm.Hash(ctx, file); err != nil || h != h1 {
		t.Errorf("RAM file hash %s, %v; Phys %s", h, err, h1)
	}

	if err := p.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := p.State(ctx); err != nil || st != Running {
		t.Fatalf("state after SIGCONT %q, %v; want running", st, err)
	}
	answers(t, ctx, vm)
}

// TestProcessFileBackedGuest opens the demo guest, whose RAM is a shared file under a backend
// of its own (-machine memory-backend=ram): the RAM block is "ram", not pc.ram, and the copy
// must read all of it, populated in QEMU's page tables or not.
func TestProcessFileBackedGuest(t *testing.T) {
	g := needDemo(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := OpenQMP(ctx, g.QMPSocket())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	mem, err := g.Memory()
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	if !reflect.DeepEqual(p.Phys().Ranges(), mem.Ranges()) {
		t.Errorf("ranges %v, the guest's RAM file %v", p.Phys().Ranges(), mem.Ranges())
	}
	if err := p.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	ram, err := p.RAM(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ram.Close()
	t.Logf("file-backed RAM: %d MiB read in %v", ram.Copied>>20, ram.Took.Round(time.Millisecond))
	if ram.Copied != mem.Size() {
		t.Errorf("read %d bytes of a %d-byte shared RAM file", ram.Copied, mem.Size())
	}
	file, err := vmm.NewFileView(ram.File, ram.Ranges)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	sameBytes(t, "guest RAM file", mem, "RAM copy", file)
	if err := p.Resume(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestProcessCloseLeavesVM checks that Close neither pauses nor resumes.
func TestProcessCloseLeavesVM(t *testing.T) {
	vm := needPlain(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := OpenQMP(ctx, vm.QMPSocket)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if st := ctlStatus(t, ctx); st != "paused" {
		t.Errorf("after Pause and Close: %s; want paused", st)
	}
	if _, err := ctlRun(ctx, "cont"); err != nil {
		t.Fatal(err)
	}

	p, err = OpenQMP(ctx, vm.QMPSocket)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if st := ctlStatus(t, ctx); st != "running" {
		t.Errorf("after Close: %s; want running", st)
	}
	answers(t, ctx, vm)
}

// startStill starts a QEMU that never runs its guest (-S): enough for the RAM layout, which
// exists from the start, at the cost of no boot.
func startStill(t *testing.T, ctx context.Context, args ...string) *plainvm.VM {
	t.Helper()
	args = append([]string{"-accel", "tcg", "-nodefaults", "-display", "none", "-S"}, args...)
	vm, err := plainvm.Start(ctx, t.TempDir(), args, plainvm.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Stop() })
	return vm
}

// waitMapped waits until QEMU has set up its RAM: without a QMP socket nothing says when.
func waitMapped(t *testing.T, vm *plainvm.VM, size uint64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := ramMapping(vm.PID, size); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestProcessPIDWithoutQMP(t *testing.T) {
	testenv.SkipIfShort(t, "starts QEMU")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// QEMU's default machine (pc) and RAM size (128 MiB), no monitor.
	vm := startStill(t, ctx)
	waitMapped(t, vm, defaultRAM)
	p, err := OpenPID(ctx, vm.PID)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	none, why := p.Monitorless()
	if !none || why != "no QMP socket on its command line" || p.Name() != fmt.Sprintf("QEMU pid %d (no monitor)", vm.PID) {
		t.Errorf("monitor-less %v (%s), name %q", none, why, p.Name())
	}
	if want := []vmm.PhysRange{{Size: defaultRAM}}; !reflect.DeepEqual(p.Phys().Ranges(), want) {
		t.Errorf("ranges %v, want %v", p.Phys().Ranges(), want)
	}
	ram, err := p.RAM(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ram.Close()
	t.Logf("never-run VM: %d KiB copied in %v", ram.Copied>>10, ram.Took.Round(time.Microsecond))

	// Layouts the command line cannot tell, and RAM that is no anonymous mapping.
	ramFile := filepath.Join(t.TempDir(), "ram")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"q35 above 2 GiB", []string{"-machine", "q35", "-m", "3G"},
			`the RAM layout of machine "q35" with 3072 MiB is unknown without a monitor`},
		{"file-backed RAM", []string{"-machine", "pc,memory-backend=mem", "-m", "size=64M",
			"-object", "memory-backend-file,id=mem,size=64M,share=on,mem-path=" + ramFile},
			"no anonymous mapping of 64 MiB"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			vm := startStill(t, ctx, c.args...)
			// Once QEMU has created its RAM file, the RAM exists: the error is then about
			// where it is, not about a QEMU still starting.
			for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				maps, _ := os.ReadFile(fmt.Sprintf("/proc/%d/maps", vm.PID))
				if !strings.Contains(c.name, "file") || bytes.Contains(maps, []byte(ramFile)) {
					break
				}
			}
			p, err := OpenPID(ctx, vm.PID)
			if err == nil {
				p.Close()
				t.Fatalf("OpenPID succeeded, want %q", c.want)
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), fmt.Sprint(vm.PID)) {
				t.Errorf("error %q, want %q and the pid", err, c.want)
			}
			t.Log(err)
		})
	}
}

func TestProcessGone(t *testing.T) {
	testenv.SkipIfShort(t, "starts QEMU")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	socket := filepath.Join(t.TempDir(), "qmp.sock")
	vm := startStill(t, ctx, append([]string{"-m", "64M"}, plainvm.QMPArgs(socket)...)...)
	p, err := OpenQMP(ctx, socket)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := vm.Stop(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	var fault *vmm.FaultError
	if err := p.Phys().ReadPhys(0x1000, buf); !errors.Is(err, ErrGone) || !errors.As(err, &fault) {
		t.Errorf("ReadPhys: %v; want a *vmm.FaultError wrapping ErrGone", err)
	}
	if _, err := p.RAM(ctx); !errors.Is(err, ErrGone) {
		t.Errorf("RAM: %v; want ErrGone", err)
	}
	if _, err := p.State(ctx); !errors.Is(err, ErrGone) || !strings.Contains(err.Error(), p.Name()) {
		t.Errorf("State: %v; want ErrGone with the name", err)
	}
	if _, err := p.CPUs(ctx); !errors.Is(err, ErrGone) {
		t.Errorf("CPUs: %v; want ErrGone", err)
	}
	err = p.Pause(ctx)
	if !errors.Is(err, ErrGone) {
		t.Errorf("Pause: %v; want ErrGone", err)
	}
	t.Log(err)

	// Monitor-less, the signals and /proc say so.
	vm = startStill(t, ctx, "-m", "64M")
	waitMapped(t, vm, 64<<20)
	p, err = OpenPID(ctx, vm.PID)
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Stop(); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"Pause":  p.Pause(ctx),
		"Resume": p.Resume(ctx),
		"Read":   p.Phys().ReadPhys(0, buf),
	} {
		if !errors.Is(err, ErrGone) {
			t.Errorf("%s: %v; want ErrGone", name, err)
		}
	}
	if _, err := p.State(ctx); !errors.Is(err, ErrGone) {
		t.Errorf("State: %v; want ErrGone", err)
	}
}

func TestProcessBadInput(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()

	// A pid that no longer exists.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	// A socket nobody ever greets on, served by this (non-QEMU) process.
	silent := filepath.Join(dir, "silent.sock")
	l, err := net.Listen("unix", silent)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// A socket file left behind by a process that has gone.
	stale := filepath.Join(dir, "stale.sock")
	sl, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	sl.SetUnlinkOnClose(false)
	sl.Close()
	regular := filepath.Join(dir, "file")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name string
		open func() (*Process, error)
		want string
	}{
		{"own pid", func() (*Process, error) { return OpenPID(ctx, os.Getpid()) },
			fmt.Sprintf("pid %d (", os.Getpid())},
		{"dead pid", func() (*Process, error) { return OpenPID(ctx, dead.Process.Pid) },
			fmt.Sprintf("QEMU pid %d: no such process", dead.Process.Pid)},
		{"pid 0", func() (*Process, error) { return OpenPID(ctx, 0) }, "pid 0: not a process id"},
		{"missing socket", func() (*Process, error) { return OpenQMP(ctx, filepath.Join(dir, "none.sock")) },
			"none.sock: no such file"},
		{"regular file", func() (*Process, error) { return OpenQMP(ctx, regular) }, "file: not a unix socket"},
		{"stale socket", func() (*Process, error) { return OpenQMP(ctx, stale) },
			"stale.sock: connection refused: nothing listens on it"},
		{"socket of another program", func() (*Process, error) { return OpenQMP(ctx, silent) },
			"is not a QEMU process"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := c.open()
			if err == nil {
				p.Close()
				t.Fatalf("opened %s, want an error containing %q", p.Name(), c.want)
			}
			if !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q, want one line containing %q", err, c.want)
			}
			t.Log(err)
		})
	}

	// A QEMU socket that is not QMP: the plain VM's command channel says nothing first.
	t.Run("QEMU socket that is not QMP", func(t *testing.T) {
		vm := needPlain(t)
		gctx, gcancel := context.WithTimeout(ctx, 1500*time.Millisecond)
		defer gcancel()
		p, err := OpenQMP(gctx, vm.ChannelSocket)
		if err == nil {
			p.Close()
			t.Fatal("OpenQMP of the command channel succeeded")
		}
		if want := "no QMP greeting within"; !strings.Contains(err.Error(), want) {
			t.Errorf("error %q, want %q", err, want)
		}
		t.Log(err)
		answers(t, ctx, vm)
	})
}

func TestProcessCommandLine(t *testing.T) {
	cases := []struct {
		name    string
		args    string
		sockets []string
		size    uint64
		machine string
	}{
		{"defaults", "qemu-system-x86_64 -kernel k", nil, 128 << 20, "pc"},
		{"qmp and -m MiB", "qemu-system-x86_64 -m 512 -qmp unix:/run/q.sock,server=on,wait=off", []string{"/run/q.sock"}, 512 << 20, "pc"},
		{"relative qmp", "qemu -qmp unix:q.sock,server,nowait -m 1G -M q35", []string{"/home/vm/q.sock"}, 1 << 30, "q35"},
		{"qmp path= and pretty", "qemu --qmp-pretty unix:path=/a.sock -m size=2G,slots=4,maxmem=8G", []string{"/a.sock"}, 2 << 30, "pc"},
		{"mon chardev", "qemu -chardev socket,id=mon0,path=/m.sock,server=on,wait=off -mon chardev=mon0,mode=control " +
			"-chardev socket,path=/hmp.sock,id=hmp0,server=on -mon chardev=hmp0,mode=readline -machine type=pc-q35-7.2,accel=tcg",
			[]string{"/m.sock"}, 128 << 20, "pc-q35-7.2"},
		{"tcp qmp and machine options", "qemu -qmp tcp:localhost:4444,server -machine accel=tcg -m 1.5G", nil, 1536 << 20, "pc"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := strings.Fields(c.args)
			if got := qmpSockets(args, "/home/vm"); !reflect.DeepEqual(got, c.sockets) {
				t.Errorf("sockets %q, want %q", got, c.sockets)
			}
			size, err := ramSize(args)
			if err != nil || size != c.size {
				t.Errorf("size %d, %v; want %d", size, err, c.size)
			}
			if m, _ := machineType(args); m != c.machine {
				t.Errorf("machine %q, want %q", m, c.machine)
			}
		})
	}
	if _, err := ramSize([]string{"qemu", "-m", "lots"}); err == nil || !strings.Contains(err.Error(), `bad size "lots"`) {
		t.Errorf("-m lots: %v", err)
	}
}

func TestProcessStat(t *testing.T) {
	st, err := parseStat([]byte("4242 (qemu (x) y) T 1 4242 4242 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 9 0 123456 1000 200 ..."))
	if err != nil || st.comm != "qemu (x) y" || st.state != 'T' || st.started != 123456 {
		t.Errorf("%+v, %v", st, err)
	}
	if _, err := parseStat([]byte("4242 qemu")); err == nil {
		t.Error("malformed stat accepted")
	}
}

// BenchmarkProcessRAM copies the RAM of freshly booted, idle, paused plain VMs of 256 and 512 MiB
// two ways: only the pages QEMU populated (RAM, by /proc/PID/pagemap), and every page with the
// all-zero ones skipped (copyRAM over Phys). The pagemap way runs first: reading every page maps
// the untouched ones to the zero page, after which pagemap counts them as present.
func BenchmarkProcessRAM(b *testing.B) {
	d, err := plainvm.DemoImage()
	if err != nil {
		b.Fatal(err)
	}
	for _, mem := range []string{"256M", "512M"} {
		b.Run(mem, func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			dir := b.TempDir()
			socket := filepath.Join(dir, "qmp.sock")
			vm, err := plainvm.Start(ctx, dir, append(plainArgs(d, dir, mem), plainvm.QMPArgs(socket)...), plainvm.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer vm.Stop()
			if err := vm.WaitReady(ctx, 0); err != nil {
				b.Fatal(err)
			}
			p, err := OpenQMP(ctx, socket)
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			if err := p.Pause(ctx); err != nil {
				b.Fatal(err)
			}
			strategies := []struct {
				name string
				copy func() (*RAM, error)
			}{
				{"pagemap", func() (*RAM, error) { return p.RAM(ctx) }},
				{"all-skip-zero", func() (*RAM, error) {
					return copyRAM(ctx, p.Name(), p.Phys().Ranges(), p.Phys().ReadPhys)
				}},
			}
			for _, s := range strategies {
				b.Run(s.name, func(b *testing.B) {
					var copied, stored uint64
					var took, first time.Duration
					n := 0
					for b.Loop() {
						ram, err := s.copy()
						if err != nil {
							b.Fatal(err)
						}
						if n == 0 {
							first = ram.Took
						}
						copied, took = ram.Copied, took+ram.Took
						var st syscall.Stat_t
						if err := syscall.Fstat(int(ram.File.Fd()), &st); err != nil {
							b.Fatal(err)
						}
						stored = uint64(st.Blocks) * 512
						n++
						ram.Close()
					}
					b.ReportMetric(float64(copied)/(1<<20), "MiB-copied")
					b.ReportMetric(float64(took.Microseconds())/1000/float64(n), "ms/copy")
					b.Logf("%s %s: %d MiB read of %d MiB, %d MiB non-zero kept, %.1f ms per copy (%d copies; the first %.1f ms)",
						mem, s.name, copied>>20, p.Phys().Size()>>20, stored>>20,
						float64(took.Microseconds())/1000/float64(n), n, float64(first.Microseconds())/1000)
				})
			}
		})
	}
}
