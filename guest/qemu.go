package guest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrNotRunning means the named guest has no live QEMU process.
var ErrNotRunning = errors.New("guest is not running")

// ErrQEMUMissing means qemu-system-x86_64 is not installed.
var ErrQEMUMissing = errors.New("qemu-system-x86_64 not found: run scripts/setup.sh (it installs Debian's qemu-system-x86)")

const qemuBinary = "qemu-system-x86_64"

// shmPrefix names every RAM file hybridbridge creates, so stale ones can be found.
const shmPrefix = "hybridbridge-"

var validName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)

// Config says how to start a guest.
type Config struct {
	Name     string
	MemMiB   int
	Image    *Image
	RunDir   string        // where guests keep sockets and logs (see DefaultRunDir)
	Detached bool          // keep running after this process exits (guest start); otherwise QEMU dies with us
	Timeout  time.Duration // boot deadline; 0 means 3 minutes
	// ExtraArgs are appended to QEMU's command line (e.g. a gdbstub for building snapshots).
	ExtraArgs []string
	// Progress, if set, is called as the boot advances and about once a second while waiting.
	Progress func(stage string, elapsed time.Duration)
	// Started, if set, runs once QEMU answers on QMP, before the boot is waited for, within the
	// boot deadline. With -S in ExtraArgs the VM has not run yet: a caller with a gdbstub can
	// steer its boot, then resume it. An error ends the start.
	Started func(ctx context.Context, g *Guest) error
}

// Meta is what a running guest records about itself in its folder, so other hybridbridge
// processes can find it.
type Meta struct {
	Name      string    `json:"name"`
	PID       int       `json:"pid"`               // QEMU's
	RAMFile   string    `json:"ram_file"`          // the shared memory file; unlinked once QEMU holds it
	RAMSize   uint64    `json:"ram_size"`          // bytes
	Kernel    string    `json:"kernel"`            // vmlinuz path
	KernelID  string    `json:"kernel_id"`         // hash of vmlinuz
	Image     string    `json:"image"`             // initramfs path
	Disk      string    `json:"disk,omitempty"`    // root disk image (its copy-on-write layer is in the guest's folder)
	Machine   string    `json:"machine,omitempty"` // QEMU machine type: pc when empty
	CPUs      int       `json:"cpus,omitempty"`
	Append    string    `json:"append"`     // kernel command line
	Accel     string    `json:"accel"`      // kvm or tcg
	Detached  bool      `json:"detached"`   // started by `guest start`
	StartedAt time.Time `json:"started_at"` // when QEMU was started
	ReadyIn   float64   `json:"ready_in"`   // seconds from start to the command channel answering
}

// Guest is a QEMU process running a guest, started by this process or found in the run folder.
type Guest struct {
	Meta Meta
	Dir  string

	cmd     *exec.Cmd     // nil when the guest was started by another process
	exited  chan struct{} // closed when cmd exits; nil when cmd is nil
	waitErr error         // cmd's exit; read only after exited is closed
}

// DefaultRunDir is $HYBRIDBRIDGE_RUN, else /run/hybridbridge for root, else a per-user folder.
func DefaultRunDir() string {
	if d := os.Getenv("HYBRIDBRIDGE_RUN"); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/run/hybridbridge"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "hybridbridge")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("hybridbridge-%d", os.Getuid()))
}

func guestDir(runDir, name string) string { return filepath.Join(runDir, "guests", name) }

func (g *Guest) path(name string) string { return filepath.Join(g.Dir, name) }

// QMPSocket, ChannelSocket and ConsoleLog are the guest's files.
func (g *Guest) QMPSocket() string     { return g.path("qmp.sock") }
func (g *Guest) ChannelSocket() string { return g.path("cmd.sock") }
func (g *Guest) ConsoleLog() string    { return g.path("console.log") }

// DiskLayer is the copy-on-write layer over the image's root disk that the guest writes to.
func (g *Guest) DiskLayer() string { return g.path("disk.qcow2") }

// Start boots a guest and waits until its command channel answers, which the demo image does only
// once its whole workload is up.
func Start(ctx context.Context, cfg Config) (*Guest, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	qemu, err := exec.LookPath(qemuBinary)
	if err != nil {
		return nil, ErrQEMUMissing
	}
	dir, err := prepareGuestDir(cfg.RunDir, cfg.Name)
	if err != nil {
		return nil, err
	}
	g := &Guest{Dir: dir}
	if g.Meta, err = newMeta(cfg); err != nil {
		return nil, err
	}
	if cfg.Image.Disk != "" {
		if err := makeDiskLayer(cfg.Image.Disk, g.DiskLayer()); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	if err := g.startQEMU(qemu, g.qemuArgs(cfg), cfg.Detached); err != nil {
		return nil, err
	}
	if err := g.writeMeta(); err != nil {
		g.kill()
		return nil, err
	}
	if err := g.waitReady(ctx, cfg, g.Meta.StartedAt); err != nil {
		g.kill()
		return nil, err
	}
	g.Meta.ReadyIn = time.Since(g.Meta.StartedAt).Seconds()
	if err := g.writeMeta(); err != nil {
		g.kill()
		return nil, err
	}
	if cfg.Detached {
		// The guest outlives us; nothing of ours waits for it any more.
		_ = g.cmd.Process.Release()
	}
	return g, nil
}

// check rejects a config no guest can be started from.
func (cfg Config) check() error {
	if !validName.MatchString(cfg.Name) {
		return fmt.Errorf("invalid guest name %q: use 1-32 lower-case letters, digits, - or _", cfg.Name)
	}
	if cfg.Image == nil {
		return errors.New("no guest image")
	}
	if cfg.Image.Machine != "" && cfg.Image.Machine != "pc" && cfg.Image.Machine != "q35" {
		return fmt.Errorf("machine type %q: use pc or q35", cfg.Image.Machine)
	}
	if cfg.MemMiB < 64 || cfg.MemMiB > 16<<10 {
		return fmt.Errorf("guest memory %d MiB out of range: 64 MiB to 16 GiB", cfg.MemMiB)
	}
	if cfg.Image.CPUs < 0 || cfg.Image.CPUs > 8 {
		return fmt.Errorf("%d vCPUs out of range: 1 to 8", cfg.Image.CPUs)
	}
	return nil
}

// prepareGuestDir makes an empty folder for guest name in runDir, refusing if that guest is
// running.
func prepareGuestDir(runDir, name string) (string, error) {
	sweepStaleRAM()
	dir := guestDir(runDir, name)
	if old, err := Open(runDir, name); err == nil {
		return "", fmt.Errorf("guest %q is already running (QEMU pid %d)", name, old.Meta.PID)
	}
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("clear stale guest folder: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("guest folder: %w", err)
	}
	return dir, nil
}

// newMeta describes the guest cfg asks for, as far as is known before QEMU runs.
func newMeta(cfg Config) (Meta, error) {
	accel := "tcg"
	if DetectAccel().KVM {
		accel = "kvm"
	}
	id, err := fileHash(cfg.Image.Kernel)
	if err != nil {
		return Meta{}, fmt.Errorf("guest kernel: %w", err)
	}
	return Meta{
		Name:     cfg.Name,
		RAMFile:  fmt.Sprintf("/dev/shm/%s%s-%d.ram", shmPrefix, cfg.Name, os.Getpid()),
		RAMSize:  uint64(cfg.MemMiB) << 20,
		Kernel:   cfg.Image.Kernel,
		KernelID: id,
		Image:    cfg.Image.Path,
		Disk:     cfg.Image.Disk,
		Machine:  cfg.Image.Machine,
		CPUs:     cfg.Image.CPUs,
		Append:   cfg.Image.Append,
		Accel:    accel,
		Detached: cfg.Detached,
	}, nil
}

// qemuArgs is QEMU's command line for g. Its RAM is a shared file so that other processes can
// map the guest's memory; its name lets alive recognise the process.
func (g *Guest) qemuArgs(cfg Config) []string {
	machine := cfg.Image.Machine
	if machine == "" {
		machine = "pc"
	}
	args := []string{
		"-name", "hybridbridge-" + cfg.Name,
		"-machine", machine + ",memory-backend=ram",
		"-cpu", "qemu64",
		"-m", fmt.Sprintf("%dM", cfg.MemMiB),
		"-object", fmt.Sprintf("memory-backend-file,id=ram,size=%dM,mem-path=%s,share=on", cfg.MemMiB, g.Meta.RAMFile),
		"-kernel", cfg.Image.Kernel,
		"-initrd", cfg.Image.Path,
		"-append", cfg.Image.Append,
		"-nodefaults", "-display", "none", "-no-reboot",
		"-serial", "file:" + g.ConsoleLog(),
		"-chardev", "socket,id=cmd,path=" + g.ChannelSocket() + ",server=on,wait=off",
		"-serial", "chardev:cmd",
		"-qmp", "unix:" + g.QMPSocket() + ",server=on,wait=off",
	}
	if cfg.Image.CPUs > 1 {
		args = append(args, "-smp", strconv.Itoa(cfg.Image.CPUs))
	}
	if cfg.Image.Disk != "" {
		// A network card too: a distribution configures it (DHCP from QEMU's user network).
		args = append(args, "-drive", "file="+g.DiskLayer()+",if=virtio,format=qcow2",
			"-nic", "user,model=virtio-net-pci")
	}
	args = append(args, cfg.ExtraArgs...)
	return append(args, "-accel", g.Meta.Accel)
}

// startQEMU runs qemu with args, its output going to qemu.log in the guest's folder, and records
// its pid and start time. A detached QEMU gets a session of its own; otherwise it dies with us.
func (g *Guest) startQEMU(qemu string, args []string, detached bool) error {
	logFile, err := os.Create(g.path("qemu.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(qemu, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if detached {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	} else {
		// QEMU dies with us, even on SIGKILL.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	}
	start := time.Now()
	g.cmd = cmd
	g.exited = make(chan struct{})
	started := make(chan error, 1)
	go func() {
		defer close(g.exited)
		if !detached {
			// The death signal comes when the thread that forked QEMU ends, not the process,
			// and Go ends a thread when a goroutine locked to it returns: any goroutine that
			// later ran locked on the forking thread could take QEMU down with it. This
			// goroutine keeps the thread to itself until QEMU has exited; it returns still
			// locked, so the thread ends only then.
			runtime.LockOSThread()
		}
		if err := cmd.Start(); err != nil {
			g.waitErr = err
			started <- err
			return
		}
		started <- nil
		g.waitErr = cmd.Wait()
	}()
	if err := <-started; err != nil {
		os.RemoveAll(g.Dir)
		return fmt.Errorf("start QEMU: %w", err)
	}
	g.Meta.PID = cmd.Process.Pid
	g.Meta.StartedAt = start
	return nil
}

func (g *Guest) writeMeta() error {
	data, err := json.MarshalIndent(g.Meta, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(g.path("meta.json"), append(data, '\n'), 0o600)
}

// waitReady waits for QMP, unlinks the RAM file once QEMU holds it, then waits for the command
// channel to answer.
func (g *Guest) waitReady(ctx context.Context, cfg Config, start time.Time) error {
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = 3 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	progress := func(stage string) {
		if cfg.Progress != nil {
			cfg.Progress(stage, time.Since(start))
		}
	}
	fail := func(stage string, err error) error {
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("no answer after %s", timeout)
		}
		return fmt.Errorf("guest %q did not become ready (%s): %w\n%s", g.Meta.Name, stage, err, g.tail())
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	lastReport := time.Time{}
	poll := func(stage string, try func() error) error {
		for {
			err := try()
			if err == nil {
				return nil
			}
			select {
			case <-g.exited:
				return fail(stage, fmt.Errorf("QEMU exited: %v", g.waitErr))
			case <-ctx.Done():
				return fail(stage, ctx.Err())
			case <-tick.C:
			}
			if time.Since(lastReport) >= time.Second {
				progress(stage)
				lastReport = time.Now()
			}
		}
	}
	progress("starting QEMU")
	err := poll("starting QEMU", func() error {
		qctx, qcancel := context.WithTimeout(ctx, 2*time.Second)
		defer qcancel()
		q, err := DialQMP(qctx, g.QMPSocket())
		if err != nil {
			return err
		}
		defer q.Close()
		_, err = q.Run(qctx, "query-status", nil)
		return err
	})
	if err != nil {
		return err
	}
	// QMP answers only after the machine, and so its RAM, exists: QEMU holds the file open now,
	// and removing its name means it disappears with QEMU however QEMU ends.
	if err := os.Remove(g.Meta.RAMFile); err != nil {
		return fail("unlinking RAM file", err)
	}
	if cfg.Started != nil {
		if err := cfg.Started(ctx, g); err != nil {
			return fail("steering the boot", err)
		}
	}
	progress("booting")
	var ch *Channel
	defer func() {
		if ch != nil {
			ch.Close()
		}
	}()
	return poll("booting and starting the workload", func() error {
		if ch == nil {
			c, err := DialChannel(ctx, g.ChannelSocket())
			if err != nil {
				return err
			}
			ch = c
		}
		pctx, pcancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer pcancel()
		res, err := ch.Exec(pctx, "echo ready")
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(res.Stdout)) != "ready" {
			return fmt.Errorf("unexpected readiness answer %q", res.Stdout)
		}
		return nil
	})
}

// tail returns the end of the guest's console, for error messages.
func (g *Guest) tail() string {
	data, err := os.ReadFile(g.ConsoleLog())
	if err != nil {
		return "(no console output)"
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	out := "console tail:\n  " + strings.Join(lines, "\n  ")
	if q, err := os.ReadFile(g.path("qemu.log")); err == nil && len(q) > 0 {
		out += "\nqemu: " + strings.TrimSpace(string(q))
	}
	return out
}

// Open finds a running guest by name in runDir.
func Open(runDir, name string) (*Guest, error) {
	if !validName.MatchString(name) {
		return nil, fmt.Errorf("invalid guest name %q", name)
	}
	g := &Guest{Dir: guestDir(runDir, name)}
	data, err := os.ReadFile(g.path("meta.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("guest %q: %w (start it with: hybridbridge guest start --name %s)", name, ErrNotRunning, name)
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(data, &g.Meta); err != nil {
		return nil, fmt.Errorf("guest %q: corrupt %s: %w", name, g.path("meta.json"), err)
	}
	if !g.alive() {
		return nil, fmt.Errorf("guest %q: %w (QEMU pid %d is gone)", name, ErrNotRunning, g.Meta.PID)
	}
	return g, nil
}

// List returns every guest with a folder in runDir, running or not.
func List(runDir string) ([]GuestStatus, error) {
	entries, err := os.ReadDir(filepath.Join(runDir, "guests"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []GuestStatus
	for _, e := range entries {
		g, err := Open(runDir, e.Name())
		if err != nil {
			out = append(out, GuestStatus{Name: e.Name(), State: "stopped"})
			continue
		}
		out = append(out, GuestStatus{Name: e.Name(), State: "running", Meta: &g.Meta})
	}
	return out, nil
}

// GuestStatus is one row of List.
type GuestStatus struct {
	Name  string `json:"name"`
	State string `json:"state"`
	Meta  *Meta  `json:"meta,omitempty"`
}

// alive reports whether the recorded QEMU process still exists and is ours: a recycled pid running
// something else does not count.
func (g *Guest) alive() bool {
	if g.exited != nil {
		select {
		case <-g.exited:
			return false
		default:
			return true
		}
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", g.Meta.PID))
	if err != nil {
		return false
	}
	return strings.Contains(string(cmdline), "hybridbridge-"+g.Meta.Name+"\x00")
}

// Stop shuts the guest down: QMP quit, then SIGKILL if QEMU lingers; then its folder goes.
func (g *Guest) Stop(ctx context.Context) error {
	if g.alive() {
		qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		if q, err := DialQMP(qctx, g.QMPSocket()); err == nil {
			_, _ = q.Run(qctx, "quit", nil)
			q.Close()
		}
		cancel()
		if !g.waitGone(5 * time.Second) {
			_ = syscall.Kill(g.Meta.PID, syscall.SIGKILL)
			if !g.waitGone(5 * time.Second) {
				return fmt.Errorf("guest %q: QEMU pid %d does not exit", g.Meta.Name, g.Meta.PID)
			}
		}
	}
	_ = os.Remove(g.Meta.RAMFile)
	return os.RemoveAll(g.Dir)
}

func (g *Guest) kill() {
	if g.cmd != nil {
		_ = g.cmd.Process.Kill()
		<-g.exited
	}
	_ = os.Remove(g.Meta.RAMFile)
	_ = os.RemoveAll(g.Dir)
}

func (g *Guest) waitGone(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if !g.alive() {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// RAMPath returns a path that opens the guest's RAM file: its name is gone (see waitReady), but
// QEMU still holds it open, so it is reachable through QEMU's file descriptors.
func (g *Guest) RAMPath() (string, error) {
	fdDir := fmt.Sprintf("/proc/%d/fd", g.Meta.PID)
	entries, err := os.ReadDir(fdDir)
	if err != nil {
		return "", fmt.Errorf("guest %q: list QEMU's files: %w", g.Meta.Name, err)
	}
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join(fdDir, e.Name()))
		if err != nil {
			continue
		}
		if target == g.Meta.RAMFile || target == g.Meta.RAMFile+" (deleted)" {
			return filepath.Join(fdDir, e.Name()), nil
		}
	}
	return "", fmt.Errorf("guest %q: QEMU pid %d holds no RAM file %s", g.Meta.Name, g.Meta.PID, g.Meta.RAMFile)
}

// sweepStaleRAM removes RAM files whose creator died before unlinking them (it was killed during
// a boot). A live QEMU keeps its memory: removing a name does not free an open file.
func sweepStaleRAM() {
	files, _ := filepath.Glob("/dev/shm/" + shmPrefix + "*.ram")
	for _, f := range files {
		base := strings.TrimSuffix(filepath.Base(f), ".ram")
		i := strings.LastIndexByte(base, '-')
		if i < 0 {
			continue
		}
		pid, err := strconv.Atoi(base[i+1:])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.Remove(f)
		}
	}
}

// makeDiskLayer creates a qcow2 layer at layer over the raw disk image, so that the image stays
// as built.
func makeDiskLayer(image, layer string) error {
	abs, err := filepath.Abs(image)
	if err != nil {
		return err
	}
	if _, err := os.Stat(abs); err != nil {
		return fmt.Errorf("root disk: %w", err)
	}
	out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", abs, "-F", "raw", layer).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-img create (from Debian's qemu-utils, installed by scripts/setup.sh): %v: %s", err, bytes.TrimSpace(out))
	}
	return nil
}
