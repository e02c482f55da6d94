// Package plainvm starts QEMU from a command line its caller writes, for tests that need a VM
// hybridbridge did not set up: anonymous RAM, no shared memory file, whatever machine, CPU and
// kernel arguments the caller chooses. It only runs the process, finds the sockets the command
// line names, waits for the demo image's command channel and stops QEMU; what the VM looks like is
// the caller's business.
package plainvm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"hybridbridge/guest"
)

// Append is the demo kernel's command line for a VM that stands for one we did not start: the
// kernel's own defaults (KASLR aside, so addresses stay comparable between runs), unlike
// guest.CommonArgs, which tunes the kernel for hybridbridge's emulator. Callers may add "pti=on"
// and the like.
const Append = "console=ttyS0 nokaslr panic=-1"

// Demo is the demo image's kernel and initramfs.
type Demo struct {
	Kernel, Initrd string
}

// DemoImage finds (or builds) the demo image that scripts/setup.sh prepares.
func DemoImage() (Demo, error) {
	cacheDir, err := guest.FindCacheDir()
	if err != nil {
		return Demo{}, err
	}
	assets, err := guest.LoadAssets(cacheDir)
	if err != nil {
		return Demo{}, err
	}
	img, err := guest.BuildDemoImage(assets)
	if err != nil {
		return Demo{}, fmt.Errorf("demo image: %w", err)
	}
	return Demo{Kernel: img.Kernel, Initrd: img.Path}, nil
}

// BootArgs boots the demo image with Append and then extra kernel arguments.
func (d Demo) BootArgs(extra ...string) []string {
	return []string{"-kernel", d.Kernel, "-initrd", d.Initrd, "-append", strings.Join(append([]string{Append}, extra...), " ")}
}

// ChannelArgs is the serial layout the demo image expects: ttyS0, the console, into a file;
// ttyS1, the command channel, on a unix socket QEMU listens on.
func ChannelArgs(console, channel string) []string {
	return []string{
		"-serial", "file:" + console,
		"-chardev", "socket,id=cmd,path=" + channel + ",server=on,wait=off",
		"-serial", "chardev:cmd",
	}
}

// QMPArgs serves QMP on a unix socket.
func QMPArgs(socket string) []string {
	return []string{"-qmp", "unix:" + socket + ",server=on,wait=off"}
}

// Options tune Start.
type Options struct {
	// Binary is the QEMU to run; "" means qemu-system-x86_64 from PATH.
	Binary string
}

// VM is a QEMU process started by Start. It dies with the process that started it.
type VM struct {
	PID  int
	Args []string
	// QMPSocket is the path of the first "-qmp unix:PATH" on the command line; "" if none.
	QMPSocket string
	// ChannelSocket is the unix socket of the chardev behind the second -serial (ttyS1); "" if
	// the command line has none.
	ChannelSocket string
	// Console is the file behind the first -serial (ttyS0); "" if it is not a file.
	Console string
	// Log holds QEMU's own standard output and error.
	Log string

	cmd     *exec.Cmd
	exited  chan struct{} // closed when QEMU has exited and been reaped
	waitErr error         // QEMU's exit; read only after exited is closed
}

// Start runs QEMU with args, its output going to qemu.log in dir, and returns once its QMP socket
// (if the command line has one) accepts connections: then the machine and its RAM exist.
func Start(ctx context.Context, dir string, args []string, o Options) (*VM, error) {
	bin := o.Binary
	if bin == "" {
		bin = "qemu-system-x86_64"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("plain VM: %w", err)
	}
	v := &VM{Args: append([]string(nil), args...), Log: filepath.Join(dir, "qemu.log"), exited: make(chan struct{})}
	v.QMPSocket, v.ChannelSocket, v.Console = sockets(args)
	logFile, err := os.Create(v.Log)
	if err != nil {
		return nil, fmt.Errorf("plain VM: %w", err)
	}
	defer logFile.Close()
	v.cmd = exec.Command(path, args...)
	v.cmd.Stdout, v.cmd.Stderr = logFile, logFile
	// QEMU dies with us, even on SIGKILL, so a crashed test leaves no VM behind.
	v.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	go func() {
		defer close(v.exited)
		// The death signal follows the thread that forked QEMU, not the process; this goroutine
		// keeps that thread to itself until QEMU has exited and returns still locked, so the
		// thread ends only then (as guest.Start does).
		runtime.LockOSThread()
		if err := v.cmd.Start(); err != nil {
			v.waitErr = err
			started <- err
			return
		}
		started <- nil
		v.waitErr = v.cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("plain VM: start %s: %w", bin, err)
	}
	v.PID = v.cmd.Process.Pid
	if v.QMPSocket != "" {
		if err := v.poll(ctx, 30*time.Second, "QMP", func(ctx context.Context) error {
			q, err := guest.DialQMP(ctx, v.QMPSocket)
			if err != nil {
				return err
			}
			return q.Close()
		}); err != nil {
			v.Stop()
			return nil, err
		}
	}
	return v, nil
}

// WaitReady waits until the demo image's command channel runs a command, which it does once the
// guest's workload is up. timeout 0 means 3 minutes.
func (v *VM) WaitReady(ctx context.Context, timeout time.Duration) error {
	if v.ChannelSocket == "" {
		return errors.New("plain VM: no command channel on the command line (second -serial)")
	}
	if timeout == 0 {
		timeout = 3 * time.Minute
	}
	return v.poll(ctx, timeout, "command channel", func(ctx context.Context) error {
		_, err := v.Exec(ctx, "true")
		return err
	})
}

// Exec runs a shell command in the guest over the command channel and fails unless it exits 0.
func (v *VM) Exec(ctx context.Context, command string) (*guest.Result, error) {
	ch, err := guest.DialChannel(ctx, v.ChannelSocket)
	if err != nil {
		return nil, err
	}
	defer ch.Close()
	res, err := ch.Exec(ctx, command)
	if err != nil {
		return nil, err
	}
	if res.Status != 0 {
		return res, fmt.Errorf("%q exited %d: %s", command, res.Status, strings.TrimSpace(string(res.Stderr)))
	}
	return res, nil
}

// poll retries try, each attempt limited to a second, until it succeeds, QEMU exits or timeout
// passes.
func (v *VM) poll(ctx context.Context, timeout time.Duration, what string, try func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		actx, acancel := context.WithTimeout(ctx, time.Second)
		err := try(actx)
		acancel()
		if err == nil {
			return nil
		}
		select {
		case <-v.exited:
			return fmt.Errorf("plain VM pid %d: waiting for %s: QEMU exited (%v)\n%s", v.PID, what, v.waitErr, v.tail())
		case <-ctx.Done():
			return fmt.Errorf("plain VM pid %d: no %s after %v: %v\n%s", v.PID, what, timeout, err, v.tail())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Exited is closed once QEMU has exited.
func (v *VM) Exited() <-chan struct{} { return v.exited }

// Stop ends QEMU: SIGTERM, on which QEMU shuts down as on QMP quit (a signal also reaches a QEMU
// whose monitor another client holds), then SIGKILL if it lingers. A stopped (SIGSTOP) QEMU is
// continued first, or it could not act on the signal. Stop may be called more than once.
func (v *VM) Stop() error {
	select {
	case <-v.exited:
		return nil
	default:
	}
	_ = v.cmd.Process.Signal(syscall.SIGCONT)
	_ = v.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-v.exited:
		return nil
	case <-time.After(5 * time.Second):
	}
	_ = v.cmd.Process.Kill()
	select {
	case <-v.exited:
		return nil
	case <-time.After(5 * time.Second):
		return fmt.Errorf("plain VM: QEMU pid %d does not exit", v.PID)
	}
}

// tail returns the end of the console and QEMU's own output, for errors.
func (v *VM) tail() string {
	var out []string
	if v.Console != "" {
		if data, err := os.ReadFile(v.Console); err == nil {
			lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
			out = append(out, "console tail:\n  "+strings.Join(lines[max(0, len(lines)-15):], "\n  "))
		}
	}
	if data, err := os.ReadFile(v.Log); err == nil && len(data) > 0 {
		out = append(out, "qemu: "+strings.TrimSpace(string(data)))
	}
	return strings.Join(out, "\n")
}

// sockets finds, on a command line written as the helpers above write it, the QMP socket, the
// command channel behind ttyS1 and the console file behind ttyS0.
func sockets(args []string) (qmp, channel, console string) {
	chardevs := map[string]string{} // id → unix socket path
	var serials []string
	for i := 0; i+1 < len(args); i++ {
		opt := strings.TrimLeft(args[i], "-")
		if opt != "qmp" && opt != "chardev" && opt != "serial" {
			continue
		}
		i++
		val := args[i]
		switch opt {
		case "qmp":
			if p, ok := strings.CutPrefix(val, "unix:"); ok && qmp == "" {
				qmp, _, _ = strings.Cut(p, ",")
			}
		case "chardev":
			backend, rest, _ := strings.Cut(val, ",")
			var id, path string
			for _, kv := range strings.Split(rest, ",") {
				k, v, _ := strings.Cut(kv, "=")
				switch k {
				case "id":
					id = v
				case "path":
					path = v
				}
			}
			if backend == "socket" {
				chardevs[id] = path
			}
		case "serial":
			serials = append(serials, val)
		}
	}
	if len(serials) > 0 {
		console, _ = strings.CutPrefix(serials[0], "file:")
		if console == serials[0] {
			console = ""
		}
	}
	if len(serials) > 1 {
		if id, ok := strings.CutPrefix(serials[1], "chardev:"); ok {
			channel = chardevs[id]
		}
	}
	return qmp, channel, console
}
