// Package libvirtd gives tests a running system libvirt daemon (qemu:///system): the one already
// running, or virtlogd and libvirtd started here and stopped again when the last user is done.
//
// The daemons are started the way the packages' systemd units would, but without systemd, which
// test machines and containers often lack: `virtlogd -d` and `libvirtd -d` as root. Each writes
// its pidfile in /run, and that pidfile is how they are stopped: only a daemon whose pid is the
// one recorded when it was started here is ever signalled.
//
// Several test processes (go test runs packages in parallel) may use the daemons at once. Each
// holds a shared lock on a file in /run while it uses them. Starting and stopping happen under
// an exclusive lock on a second file; whoever starts a daemon records its pid in a marker file,
// and whoever ends the last use (nobody else holds the shared lock) stops the daemons the marker
// names, if they are still the ones running. A test process that died without stopping them is
// cleaned up after by the next one that ends.
//
// StartDemoDomain boots the demo image as a transient domain on those daemons, for tests that
// inspect a VM the way an analyst's libvirt domain would be inspected.
package libvirtd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// URI is the connection the daemons serve.
const URI = "qemu:///system"

// Packages are the Debian packages that provide the daemons and virsh (scripts/setup.sh installs
// them).
const Packages = "libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu"

// The daemons' files, as the Debian packages configure them for root.
const (
	runDir     = "/run"
	usersPath  = runDir + "/hybridbridge-libvirtd.users"
	lockPath   = runDir + "/hybridbridge-libvirtd.lock"
	markerPath = runDir + "/hybridbridge-libvirtd.started"
)

// daemon is one of the two programs, in the order they must start.
type daemon struct {
	name    string // the program, also its process name
	pidfile string
	// log receives the daemon's errors. A daemon that fails after forking says only "check
	// /var/log/messages", which a machine without syslog does not have; the reason is here.
	log string
}

var daemons = [...]daemon{
	// libvirtd hands every domain's console and log to virtlogd; without it domains fail to start.
	{"virtlogd", runDir + "/virtlogd.pid", runDir + "/hybridbridge-virtlogd.log"},
	{"libvirtd", runDir + "/libvirtd.pid", runDir + "/hybridbridge-libvirtd.log"},
}

// startTimeout bounds the wait for libvirtd to answer: it probes QEMU's capabilities on its first
// start (a few seconds under TCG).
const startTimeout = 60 * time.Second

// Daemons is a use of the system libvirt daemons, from Start to Stop.
type Daemons struct {
	// URI is the connection to pass to virsh (-c) or to set as LIBVIRT_DEFAULT_URI.
	URI string
	// Started says whether this call started the daemons (false: they were running already).
	Started bool
	// Took is how long Start took, including any wait for the daemons to answer.
	Took time.Duration

	users *os.File // holds the shared lock on usersPath until Stop; nil after Stop
}

// Start makes sure virtlogd and libvirtd run and libvirtd serves qemu:///system, starting what is
// missing. Its error says exactly why the daemons cannot run: not root, a program missing (with the
// packages to install), or the daemon's own complaint.
func Start(ctx context.Context) (*Daemons, error) {
	start := time.Now()
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("libvirtd: the system daemon must run as root (uid is %d)", os.Geteuid())
	}
	for _, prog := range []string{"virsh", "virtlogd", "libvirtd"} {
		if _, err := exec.LookPath(prog); err != nil {
			return nil, fmt.Errorf("libvirtd: %s not found: install Debian's %s (scripts/setup.sh does)", prog, Packages)
		}
	}
	lock, err := lockFile(ctx, lockPath, syscall.LOCK_EX)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	users, err := lockFile(ctx, usersPath, syscall.LOCK_SH)
	if err != nil {
		return nil, err
	}
	d := &Daemons{URI: URI, users: users}
	if err := d.ensure(ctx); err != nil {
		// Leave nothing half-started behind, unless another user relies on it.
		if stopErr := d.stop(); stopErr != nil {
			err = fmt.Errorf("%w (and cleaning up: %v)", err, stopErr)
		}
		return nil, err
	}
	d.Took = time.Since(start)
	return d, nil
}

// lockFile opens path (creating it) and locks it, waiting as long as ctx allows.
func lockFile(ctx context.Context, path string, how int) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("libvirtd: lock file: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("libvirtd: lock %s: %w", path, err)
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			f.Close()
			return nil, fmt.Errorf("libvirtd: lock %s: %w", path, err)
		}
	}
}

// ensure starts the daemons that are not running and waits until libvirtd answers.
// Precondition: the exclusive lock is held.
func (d *Daemons) ensure(ctx context.Context) error {
	marked, err := readMarker()
	if err != nil {
		return err
	}
	// A daemon keeps its record only while it is the one running; one that was running before any
	// Start is recorded as 0 and never stopped.
	record := make([]int, len(daemons))
	for i, dm := range daemons {
		pid, ok := running(dm)
		if !ok {
			if pid, err = startDaemon(ctx, dm); err != nil {
				return err
			}
			d.Started = true
		} else if i >= len(marked) || marked[i] != pid {
			pid = 0
		}
		record[i] = pid
		// Written at once, so that a failure further on still stops this daemon.
		if err := writeMarker(record); err != nil {
			return err
		}
	}
	return waitAnswer(ctx)
}

// startDaemon runs `NAME -d` and waits for its pidfile to name a live process.
func startDaemon(ctx context.Context, dm daemon) (int, error) {
	if err := os.WriteFile(dm.log, nil, 0o600); err != nil {
		return 0, fmt.Errorf("libvirtd: %w", err)
	}
	cmd := exec.CommandContext(ctx, dm.name, "-d")
	// Level 4: errors only, so the file stays small however long the daemon runs.
	cmd.Env = append(os.Environ(), "LIBVIRT_LOG_OUTPUTS=4:file:"+dm.log)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("libvirtd: %s -d: %v: %s%s", dm.name, err, oneLine(stderr.String()), logErrors(dm))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if pid, ok := running(dm); ok {
			return pid, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("libvirtd: %s -d exited 0 but no %s process appeared in %s: %s%s",
				dm.name, dm.name, dm.pidfile, oneLine(stderr.String()), logErrors(dm))
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return 0, fmt.Errorf("libvirtd: waiting for %s: %w", dm.name, err)
		}
	}
}

// waitAnswer waits until libvirtd serves the QEMU driver. The last complaint of virsh is the
// error: it names what is missing (the QEMU driver package, the socket).
func waitAnswer(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	var last string
	for {
		out, err := exec.CommandContext(ctx, "virsh", "-c", URI, "version").CombinedOutput()
		if err == nil && strings.Contains(string(out), "Running hypervisor: QEMU") {
			return nil
		}
		last = oneLine(string(out))
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return fmt.Errorf("libvirtd: does not serve %s after %s: %s%s", URI, startTimeout, last, logErrors(daemons[1]))
		}
	}
}

// Stop ends this use of the daemons. If no other process is using them, it stops the daemons
// a Start started (their pidfiles still name the pids recorded then): SIGTERM, and SIGKILL if one
// has not exited 10 seconds later. Daemons that were running before any Start stay running.
func (d *Daemons) Stop() error {
	if d == nil || d.users == nil {
		return nil
	}
	lock, err := lockFile(context.Background(), lockPath, syscall.LOCK_EX)
	if err != nil {
		d.users.Close()
		d.users = nil
		return err
	}
	defer lock.Close()
	return d.stop()
}

// stop releases this use and, if it was the last, stops the recorded daemons, libvirtd first.
// Precondition: the exclusive lock is held.
func (d *Daemons) stop() error {
	defer func() {
		d.users.Close()
		d.users = nil
	}()
	// Converting to an exclusive lock fails while another user holds its shared one: the daemons
	// are theirs to stop later.
	if err := syscall.Flock(int(d.users.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil
		}
		return fmt.Errorf("libvirtd: lock %s: %w", usersPath, err)
	}
	pids, err := readMarker()
	if err != nil || pids == nil {
		return err
	}
	var errs []error
	for i := len(daemons) - 1; i >= 0; i-- {
		if i >= len(pids) || pids[i] == 0 {
			continue
		}
		dm := daemons[i]
		if pid, ok := running(dm); !ok || pid != pids[i] {
			// Gone already, or replaced by a daemon started elsewhere: not ours.
			continue
		}
		if err := terminate(dm, pids[i]); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := os.Remove(dm.log); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("libvirtd: %w", err))
		}
	}
	if err := os.Remove(markerPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("libvirtd: %w", err))
	}
	return errors.Join(errs...)
}

// terminate signals pid to exit and waits for it.
func terminate(dm daemon, pid int) error {
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		return fmt.Errorf("libvirtd: stop %s (pid %d): %w", dm.name, pid, err)
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if !alive(pid, dm.name) {
				return nil
			}
			time.Sleep(20 * time.Millisecond)
		}
		if sig == syscall.SIGTERM {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	return fmt.Errorf("libvirtd: %s (pid %d) did not exit after SIGKILL", dm.name, pid)
}

// running returns the pid in dm's pidfile if that process is alive and is dm.
func running(dm daemon) (int, bool) {
	b, err := os.ReadFile(dm.pidfile)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, alive(pid, dm.name)
}

// alive reports whether pid is a live (not zombie) process called name: a stale pidfile may name a
// pid the kernel has since given to another program.
func alive(pid int, name string) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// "PID (COMM) STATE ..."; COMM may hold spaces and parentheses, so split at the last ')'.
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open || end+2 >= len(s) {
		return false
	}
	return s[open+1:end] == name && s[end+2] != 'Z'
}

func writeMarker(pids []int) error {
	var b strings.Builder
	for _, p := range pids {
		fmt.Fprintln(&b, p)
	}
	if err := os.WriteFile(markerPath, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("libvirtd: record started daemons: %w", err)
	}
	return nil
}

// readMarker returns the pids a Start recorded, daemon by daemon; nil when no Start started any.
func readMarker() ([]int, error) {
	b, err := os.ReadFile(markerPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("libvirtd: %w", err)
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		p, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("libvirtd: %s: bad pid %q", markerPath, f)
		}
		pids = append(pids, p)
	}
	return pids, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// logErrors returns the error messages in dm's log, for an error message: "" if there are none.
func logErrors(dm daemon) string {
	b, err := os.ReadFile(dm.log)
	if err != nil {
		return ""
	}
	var msgs []string
	for _, l := range strings.Split(string(b), "\n") {
		// "DATE TIME: TID: error : FUNCTION:LINE : MESSAGE"
		if _, msg, ok := strings.Cut(l, ": error : "); ok {
			if _, m, ok := strings.Cut(msg, " : "); ok {
				msg = m
			}
			msgs = append(msgs, strings.TrimSpace(msg))
		}
	}
	if len(msgs) == 0 {
		return ""
	}
	// The last few are the ones that ended the start.
	return " (" + dm.name + " logged: " + strings.Join(msgs[max(0, len(msgs)-3):], "; ") + ")"
}

// oneLine joins virsh's and the daemons' message lines, dropping their "error: " prefixes.
func oneLine(s string) string {
	var parts []string
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "error: "))
		if l != "" {
			parts = append(parts, l)
		}
	}
	if len(parts) == 0 {
		return "(no message)"
	}
	return strings.Join(parts, "; ")
}
