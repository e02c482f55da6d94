package libvirtd

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"hybridbridge/guest"
)

// domainPrefix begins the name of every domain StartDemoDomain creates; the rest is the pid of
// the test process, which is how a later run tells a domain whose test died from one in use.
const domainPrefix = "hbtest-"

// qemuLogDir is where the system daemon writes each domain's QEMU log.
const qemuLogDir = "/var/log/libvirt/qemu"

// readyTimeout bounds the wait for a new domain's command channel: the demo image boots and
// starts its workload in about 15 s under TCG, longer on a busy host.
const readyTimeout = 2 * time.Minute

// DemoOptions say what StartDemoDomain boots.
type DemoOptions struct {
	// Kernel and Initrd are the demo image's kernel and initramfs (guest.BuildDemoImage's Kernel
	// and Path). They are copied: libvirt chowns them to its QEMU user while the domain runs.
	Kernel, Initrd string
	// Logf, if set, is told about stale domains destroyed on the way.
	Logf func(format string, args ...any)
}

// Domain is a transient libvirt domain running the demo image, from StartDemoDomain to Destroy.
type Domain struct {
	// Name is the domain's libvirt name, to pass to virsh or target.OpenLibvirt.
	Name string
	// URI is the connection the domain is on.
	URI string
	// Dir holds the domain's kernel, initrd, console log and command channel socket. It is
	// world-traversable, as libvirt's QEMU user must reach them; Destroy removes it.
	Dir string
	// Channel is the unix socket of the demo image's command channel (the second serial port).
	Channel string
	// Console is the file the guest's console (the first serial port) is written to.
	Console string
	// BootTook is how long the domain took from `virsh create` to a command run over Channel.
	BootTook time.Duration

	destroy sync.Once // Destroy acts once
	// destroyErr is the first Destroy's outcome. Written only inside destroy.
	destroyErr error
}

// StartDemoDomain creates a transient domain on d's daemon that boots the demo image (256 MiB, 2
// vCPUs, TCG) and waits until its command channel runs a command, which the demo image does once
// its workload is up. Domains left running by test processes that have since died are destroyed
// first, so a crashed run does not leave a VM running for good. The caller destroys the domain;
// one test process runs one such domain at a time, as the name is derived from its pid.
func StartDemoDomain(ctx context.Context, d *Daemons, o DemoOptions) (*Domain, error) {
	if o.Kernel == "" || o.Initrd == "" {
		return nil, errors.New("libvirt demo domain: no kernel or initrd given")
	}
	if err := DestroyStaleDomains(ctx, d, o.Logf); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "hblibvirt-")
	if err != nil {
		return nil, fmt.Errorf("libvirt demo domain: %w", err)
	}
	dom := &Domain{
		Name:    domainPrefix + strconv.Itoa(os.Getpid()),
		URI:     d.URI,
		Dir:     dir,
		Channel: filepath.Join(dir, "cmd.sock"),
		Console: filepath.Join(dir, "console.log"),
	}
	if err := dom.create(ctx, o); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("libvirt demo domain %s: %w", dom.Name, err)
	}
	return dom, nil
}

// create lays out the domain's files, creates it and waits for its command channel. On failure a
// domain that was created is destroyed again; the folder is the caller's to remove.
func (d *Domain) create(ctx context.Context, o DemoOptions) error {
	// MkdirTemp's 0700 would keep libvirt's QEMU user out.
	if err := os.Chmod(d.Dir, 0o755); err != nil {
		return err
	}
	for _, f := range []struct{ from, to string }{{o.Kernel, "vmlinuz"}, {o.Initrd, "initrd"}} {
		if err := copyFile(f.from, filepath.Join(d.Dir, f.to), 0o644); err != nil {
			return err
		}
	}
	xmlPath := filepath.Join(d.Dir, "domain.xml")
	if err := os.WriteFile(xmlPath, []byte(d.xml()), 0o644); err != nil {
		return err
	}
	start := time.Now()
	if _, err := virsh(ctx, d.URI, "create", xmlPath); err != nil {
		return err
	}
	if err := d.waitReady(ctx); err != nil {
		if derr := d.destroyDomain(); derr != nil {
			err = fmt.Errorf("%w (and destroying it: %v)", err, derr)
		}
		return fmt.Errorf("%w\nconsole tail:\n%s", err, tailFile(d.Console, 15))
	}
	d.BootTook = time.Since(start)
	return nil
}

// xml is the domain's definition: the demo guest laid out as guest.Start lays out its own QEMU
// (console on the first serial port, the command channel on the second), with the demo kernel's
// default arguments but KASLR off (as the plain QEMU VMs of the tests have them), under TCG since
// libvirt would otherwise pick KVM wherever /dev/kvm exists. Every way the guest could end
// destroys the domain, so a panic ends the wait for the channel at once.
//
// There is no <features><acpi/></features>, so libvirt passes -no-acpi: the guest finds no HPET
// and no ACPI PM timer, and under TCG it marks its TSC unstable, so it keeps time with
// refined-jiffies and a periodic tick, never NOHZ. Its idle time (/proc/uptime) then comes from
// the per-CPU kernel_cpustat, not from tick_sched as in the plain QEMU VMs, which have ACPI.
func (d *Domain) xml() string {
	esc := func(s string) string {
		var b strings.Builder
		_ = xml.EscapeText(&b, []byte(s))
		return b.String()
	}
	return `<domain type='qemu'>
  <name>` + esc(d.Name) + `</name>
  <memory unit='MiB'>256</memory>
  <vcpu>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>` + esc(filepath.Join(d.Dir, "vmlinuz")) + `</kernel>
    <initrd>` + esc(filepath.Join(d.Dir, "initrd")) + `</initrd>
    <cmdline>console=ttyS0 nokaslr panic=-1</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='file'>
      <source path='` + esc(d.Console) + `'/>
      <target port='0'/>
    </serial>
    <serial type='unix'>
      <source mode='bind' path='` + esc(d.Channel) + `'/>
      <target port='1'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
`
}

// waitReady polls the command channel until the guest runs a command, and fails early if the
// domain is gone (a transient domain that ends is undefined).
func (d *Domain) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var ch *guest.Channel
	defer func() {
		if ch != nil {
			ch.Close()
		}
	}()
	var last error
	lastCheck := time.Now()
	for {
		if ch == nil {
			ch, last = guest.DialChannel(ctx, d.Channel)
		}
		if ch != nil {
			pctx, pcancel := context.WithTimeout(ctx, 500*time.Millisecond)
			res, err := ch.Exec(pctx, "true")
			pcancel()
			if err == nil && res.Status == 0 {
				return nil
			}
			last = err
		}
		if time.Since(lastCheck) > time.Second {
			lastCheck = time.Now()
			if _, err := virsh(ctx, d.URI, "domstate", d.Name); noDomain(err) {
				return fmt.Errorf("the domain ended while booting (%v); last channel error: %v", err, last)
			}
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return fmt.Errorf("command channel did not answer within %v: %v", readyTimeout, last)
		}
	}
}

// Exec runs a shell command in the guest over the command channel. Like guest.Channel's Exec, a
// command that ran and failed is a Result with its exit status, not an error. The socket takes
// one client at a time, so each Exec dials it anew rather than holding it between commands.
func (d *Domain) Exec(ctx context.Context, command string) (*guest.Result, error) {
	ch, err := guest.DialChannel(ctx, d.Channel)
	if err != nil {
		return nil, fmt.Errorf("libvirt domain %s: command channel: %w", d.Name, err)
	}
	defer ch.Close()
	res, err := ch.Exec(ctx, command)
	if err != nil {
		return nil, fmt.Errorf("libvirt domain %s: %w", d.Name, err)
	}
	return res, nil
}

// Destroy ends the domain (`virsh destroy`, which also undefines a transient domain) and removes
// its folder and its QEMU log. It may be called more than once; later calls return the first
// call's error.
func (d *Domain) Destroy() error {
	d.destroy.Do(func() {
		err := d.destroyDomain()
		if rerr := os.RemoveAll(d.Dir); rerr != nil {
			err = errors.Join(err, fmt.Errorf("libvirt domain %s: %w", d.Name, rerr))
		}
		d.destroyErr = err
	})
	return d.destroyErr
}

// destroyDomain destroys the domain and removes its QEMU log: each run's domain has a name of its
// own, so the logs would pile up.
func (d *Domain) destroyDomain() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return destroyNamed(ctx, d.URI, d.Name)
}

func destroyNamed(ctx context.Context, uri, name string) error {
	var errs []error
	// A domain that ended by itself (on_crash and the like) is gone already: nothing to destroy.
	if _, err := virsh(ctx, uri, "destroy", name); err != nil && !noDomain(err) {
		errs = append(errs, fmt.Errorf("libvirt domain %s: %w", name, err))
	}
	if err := os.Remove(filepath.Join(qemuLogDir, name+".log")); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("libvirt domain %s: %w", name, err))
	}
	return errors.Join(errs...)
}

// DestroyStaleDomains destroys the domains StartDemoDomain created for test processes that have
// since died, telling logf (if not nil) about each, and removes the QEMU logs such processes left
// (a process killed before its cleanup leaves one even once its domain is gone with the daemon).
func DestroyStaleDomains(ctx context.Context, d *Daemons, logf func(format string, args ...any)) error {
	out, err := virsh(ctx, d.URI, "list", "--name")
	if err != nil {
		return fmt.Errorf("libvirt: stale test domains: %w", err)
	}
	var errs []error
	for _, name := range strings.Fields(out) {
		if !stale(name) {
			continue
		}
		if logf != nil {
			logf("destroying libvirt domain %s, left by a test process that is gone", name)
		}
		errs = append(errs, destroyNamed(ctx, d.URI, name))
	}
	logs, _ := filepath.Glob(filepath.Join(qemuLogDir, domainPrefix+"*.log"))
	for _, l := range logs {
		if !stale(strings.TrimSuffix(filepath.Base(l), ".log")) {
			continue
		}
		if err := os.Remove(l); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("libvirt: stale test domain log: %w", err))
		}
	}
	return errors.Join(errs...)
}

// stale reports whether name is a StartDemoDomain domain whose test process is gone.
func stale(name string) bool {
	rest, ok := strings.CutPrefix(name, domainPrefix)
	if !ok {
		return false
	}
	pid, err := strconv.Atoi(rest)
	return err == nil && !processExists(pid)
}

// processExists reports whether pid is a live process.
func processExists(pid int) bool {
	_, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid)))
	return err == nil
}

// virsh runs `virsh -q -c URI ARGS...` and returns its standard output; its error carries virsh's
// own message.
func virsh(ctx context.Context, uri string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "virsh", append([]string{"-q", "-c", uri}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("virsh %s: %v: %s", strings.Join(args, " "), err, oneLine(stderr.String()))
	}
	return string(out), nil
}

// noDomain reports whether err is virsh's complaint about a domain the daemon does not know:
// virsh has no machine-readable error codes, and these are its words for VIR_ERR_NO_DOMAIN.
func noDomain(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "failed to get domain") || strings.Contains(err.Error(), "Domain not found"))
}

func copyFile(from, to string, perm os.FileMode) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return fmt.Errorf("copy %s: %w", from, err)
	}
	if err := dst.Close(); err != nil {
		return err
	}
	// The umask may have narrowed perm.
	return os.Chmod(to, perm)
}

// tailFile returns the last n lines of path, for an error message.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
