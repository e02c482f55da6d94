package target

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
	"testing"
	"time"

	"hybridbridge/guest"
	"hybridbridge/internal/libvirtd"
	"hybridbridge/internal/testenv"
	"hybridbridge/vmm"
)

// libvirtDomain is a transient domain booted from the demo image for the libvirt tests.
type libvirtDomain struct {
	name     string
	dir      string // world-traversable: kernel, initrd, console log, command channel socket
	uri      string
	bootTook time.Duration
}

// TestLibvirt boots one libvirt domain (the slow part, ~15 s under TCG) and inspects it through
// OpenLibvirt the way an analyst's domain would be.
func TestLibvirt(t *testing.T) {
	testenv.SkipIfShort(t, "boots a libvirt domain")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	d, err := libvirtd.Start(ctx)
	if err != nil {
		testenv.Skip(t, err.Error())
	}
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Errorf("stop libvirt daemons: %v", err)
		}
	})
	t.Logf("libvirt daemons: started %v, ready in %v", d.Started, d.Took.Round(time.Millisecond))
	// OpenLibvirt connects where virsh would by default; the test's domain is on the system daemon.
	t.Setenv("LIBVIRT_DEFAULT_URI", d.URI)
	reapStaleDomains(ctx, t, d.URI)

	dom := bootDomain(ctx, t, d.URI)
	t.Logf("domain %s booted and answering in %v", dom.name, dom.bootTook.Round(time.Millisecond))

	tg, err := OpenLibvirt(ctx, dom.name)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()

	t.Run("Identity", func(t *testing.T) {
		if got, want := tg.Name(), "libvirt domain "+dom.name; got != want {
			t.Errorf("Name = %q, want %q", got, want)
		}
		if tg.Kind() != KindLibvirt {
			t.Errorf("Kind = %q", tg.Kind())
		}
		b, err := os.ReadFile(filepath.Join("/run/libvirt/qemu", dom.name+".pid"))
		if err != nil {
			t.Fatal(err)
		}
		want, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if tg.PID() != want {
			t.Errorf("PID = %d, libvirt's pidfile says %d", tg.PID(), want)
		}
	})

	t.Run("ByID", func(t *testing.T) {
		// A domain named by id has no pidfile of that name: QEMU's vCPU threads lead to it.
		id := strings.TrimSpace(virshRun(ctx, t, dom.uri, "domid", dom.name))
		byID, err := OpenLibvirt(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		defer byID.Close()
		if byID.PID() != tg.PID() {
			t.Errorf("domain %s: PID %d, by name %d", id, byID.PID(), tg.PID())
		}
	})

	t.Run("Monitor", func(t *testing.T) {
		v, err := newVirsh(dom.name)
		if err != nil {
			t.Fatal(err)
		}
		ret, err := v.Run(ctx, "query-status", nil)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(ret, []byte(`"status":"running"`)) {
			t.Errorf("query-status returned %s", ret)
		}
		_, err = v.Run(ctx, "no-such-command", map[string]any{"x": 1})
		var qe *guest.QMPError
		if !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
			t.Errorf("unknown command: error %v, want a QMP CommandNotFound error", err)
		}
		text, err := v.HMP(ctx, "info status")
		if err != nil {
			t.Fatal(err)
		}
		if text != "VM status: running\r\n" {
			t.Errorf("info status = %q", text)
		}
	})

	t.Run("KernelBanner", func(t *testing.T) {
		// The kernel's text and the log buffer are in the first 64 MiB of a nokaslr boot.
		const limit = 64 << 20
		const banner = "Linux version "
		found := false
		for _, r := range tg.Phys().Ranges() {
			if r.GuestPhys >= limit {
				continue
			}
			buf := make([]byte, min(r.End(), limit)-r.GuestPhys)
			if err := tg.Phys().ReadPhys(r.GuestPhys, buf); err != nil {
				t.Fatal(err)
			}
			if i := bytes.Index(buf, []byte(banner)); i >= 0 {
				line, _, _ := bytes.Cut(buf[i:min(i+200, len(buf))], []byte{'\n'})
				t.Logf("at %#x: %q", r.GuestPhys+uint64(i), line)
				found = true
				break
			}
		}
		if !found {
			t.Errorf("no %q in the first 64 MiB of guest RAM", banner)
		}
	})

	t.Run("PauseResumeRunning", func(t *testing.T) {
		checkPauseResume(ctx, t, tg, dom, "running")
	})

	t.Run("PauseResumeSuspended", func(t *testing.T) {
		virshRun(ctx, t, dom.uri, "suspend", dom.name)
		defer virshRun(ctx, t, dom.uri, "resume", dom.name)
		checkPauseResume(ctx, t, tg, dom, "paused")
	})

	t.Run("RAMEqualsDump", func(t *testing.T) {
		virshRun(ctx, t, dom.uri, "suspend", dom.name)
		defer virshRun(ctx, t, dom.uri, "resume", dom.name)

		start := time.Now()
		ram, err := tg.RAM(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer ram.Close()
		t.Logf("RAM: %d ranges, %.1f MiB copied in %v (measured %v)", len(ram.Ranges), float64(ram.Copied)/(1<<20),
			ram.Took.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
		cpus, err := tg.CPUs(ctx)
		if err != nil {
			t.Fatal(err)
		}

		path := filepath.Join(dom.dir, "dump.elf")
		start = time.Now()
		virshRun(ctx, t, dom.uri, "dump", "--memory-only", "--format", "elf", dom.name, path)
		t.Logf("virsh dump --memory-only: %v", time.Since(start).Round(time.Millisecond))
		if st := domState(ctx, t, dom); st != "paused" {
			t.Errorf("after virsh dump the domain is %s, want paused", st)
		}
		dump, err := OpenDump(path)
		if err != nil {
			t.Fatal(err)
		}
		defer dump.Close()

		view, err := vmm.NewFileView(ram.File, ram.Ranges)
		if err != nil {
			t.Fatal(err)
		}
		defer view.Close()
		if got, want := view.Size(), uint64(256<<20); got != want {
			t.Errorf("RAM ranges cover %#x bytes, want %#x: %v", got, want, ram.Ranges)
		}
		start = time.Now()
		compareRanges(t, ram.Ranges, view, dump.Phys())
		t.Logf("compared RAM with the dump in %v", time.Since(start).Round(time.Millisecond))

		dcpus, _ := dump.CPUs(ctx)
		if len(cpus) != 2 || len(dcpus) != 2 {
			t.Fatalf("vCPUs: %d from the target, %d from the dump; the domain has 2", len(cpus), len(dcpus))
		}
		if cpus[0].CR3 != dcpus[0].CR3 {
			t.Errorf("vCPU 0 CR3 = %#x, the dump says %#x", cpus[0].CR3, dcpus[0].CR3)
		}
	})

	t.Run("NoSuchDomain", func(t *testing.T) {
		name := dom.name + "-nosuch"
		_, err := OpenLibvirt(ctx, name)
		if err == nil {
			t.Fatalf("OpenLibvirt(%q) succeeded", name)
		}
		t.Logf("error: %v", err)
		if !errors.Is(err, ErrNoDomain) {
			t.Errorf("error is not ErrNoDomain: %v", err)
		}
		if msg := err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, name) {
			t.Errorf("want one line naming the domain, got %q", msg)
		}
	})
}

// checkPauseResume pauses and resumes through the target and checks that the domain ends as it
// began: the target's Resume undoes only its own Pause.
func checkPauseResume(ctx context.Context, t *testing.T, tg Target, dom *libvirtDomain, want string) {
	t.Helper()
	if st := domState(ctx, t, dom); st != want {
		t.Fatalf("domain is %s before the test, want %s", st, want)
	}
	if err := tg.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if st := domState(ctx, t, dom); st != "paused" {
		t.Errorf("after Pause the domain is %s", st)
	}
	if st, err := tg.State(ctx); err != nil || st != Paused {
		t.Errorf("State after Pause = %q, %v", st, err)
	}
	if err := tg.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if st := domState(ctx, t, dom); st != want {
		t.Errorf("after Pause and Resume the domain is %s, want %s as before", st, want)
	}
}

// compareRanges checks that every RAM range reads the same from ram and from the dump.
func compareRanges(t *testing.T, ranges []vmm.PhysRange, ram, dump vmm.PhysView) {
	t.Helper()
	const chunk = 4 << 20
	a, b := make([]byte, chunk), make([]byte, chunk)
	for _, r := range ranges {
		for off := uint64(0); off < r.Size; off += chunk {
			n := min(chunk, r.Size-off)
			addr := r.GuestPhys + off
			if err := ram.ReadPhys(addr, a[:n]); err != nil {
				t.Fatal(err)
			}
			if err := dump.ReadPhys(addr, b[:n]); err != nil {
				t.Fatalf("the dump lacks RAM the target has: %v", err)
			}
			if !bytes.Equal(a[:n], b[:n]) {
				i := 0
				for a[i] == b[i] {
					i++
				}
				t.Fatalf("RAM and dump differ at %#x", addr+uint64(i))
			}
		}
	}
}

// bootDomain creates a transient domain running the demo image and waits until its command
// channel answers. The domain is destroyed when the test ends.
func bootDomain(ctx context.Context, t *testing.T, uri string) *libvirtDomain {
	t.Helper()
	if cacheDir == "" {
		t.Fatalf("no cache folder: %v", setupErr)
	}
	assets, err := guest.LoadAssets(cacheDir)
	if err != nil {
		t.Fatal(err)
	}
	img, err := guest.BuildDemoImage(assets)
	if err != nil {
		t.Fatal(err)
	}
	// libvirt runs QEMU as libvirt-qemu and chowns the kernel and initrd to it while the domain
	// runs: they must be copies in a folder that user can reach.
	dir, err := os.MkdirTemp("", "hbtarget-libvirt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct{ from, to string }{{img.Kernel, "vmlinuz"}, {img.Path, "initrd"}} {
		if err := copyFile(f.from, filepath.Join(dir, f.to), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dom := &libvirtDomain{name: fmt.Sprintf("hbtest-%d", os.Getpid()), dir: dir, uri: uri}
	xmlPath := filepath.Join(dir, "domain.xml")
	if err := os.WriteFile(xmlPath, []byte(dom.xml()), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	virshRun(ctx, t, uri, "create", xmlPath)
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if out, err := exec.CommandContext(cctx, "virsh", "-q", "-c", uri, "destroy", dom.name).CombinedOutput(); err != nil {
			t.Errorf("virsh destroy %s: %v: %s", dom.name, err, out)
		}
		// Each run's domain has a name of its own: its log would pile up.
		os.Remove(filepath.Join("/var/log/libvirt/qemu", dom.name+".log"))
	})
	if err := dom.waitReady(ctx); err != nil {
		t.Fatalf("domain %s: %v\nconsole:\n%s", dom.name, err, tailFile(filepath.Join(dir, "console.log"), 15))
	}
	dom.bootTook = time.Since(start)
	return dom
}

// xml is the domain's definition: the demo guest laid out as guest.Start lays out its own QEMU
// (console on the first serial port, the command channel on the second), under TCG since libvirt
// would otherwise pick KVM wherever /dev/kvm exists.
func (d *libvirtDomain) xml() string {
	esc := func(s string) string {
		var b strings.Builder
		_ = xml.EscapeText(&b, []byte(s))
		return b.String()
	}
	return `<domain type='qemu'>
  <name>` + esc(d.name) + `</name>
  <memory unit='MiB'>256</memory>
  <vcpu>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>` + esc(filepath.Join(d.dir, "vmlinuz")) + `</kernel>
    <initrd>` + esc(filepath.Join(d.dir, "initrd")) + `</initrd>
    <cmdline>console=ttyS0 nokaslr panic=-1</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='file'>
      <source path='` + esc(filepath.Join(d.dir, "console.log")) + `'/>
      <target port='0'/>
    </serial>
    <serial type='unix'>
      <source mode='bind' path='` + esc(filepath.Join(d.dir, "cmd.sock")) + `'/>
      <target port='1'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
`
}

// waitReady polls the command channel until the guest runs a command: the demo image answers
// only once its workload is up.
func (d *libvirtDomain) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var ch *guest.Channel
	defer func() {
		if ch != nil {
			ch.Close()
		}
	}()
	var last error
	for {
		if ch == nil {
			ch, last = guest.DialChannel(ctx, filepath.Join(d.dir, "cmd.sock"))
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
		select {
		case <-ctx.Done():
			return fmt.Errorf("command channel did not answer: %v", last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// reapStaleDomains destroys test domains whose test process has died, so that a crashed run does
// not leave a VM running for good.
func reapStaleDomains(ctx context.Context, t *testing.T, uri string) {
	t.Helper()
	out := virshRun(ctx, t, uri, "list", "--name")
	for _, name := range strings.Fields(out) {
		pid, err := strconv.Atoi(strings.TrimPrefix(name, "hbtest-"))
		if err != nil || !strings.HasPrefix(name, "hbtest-") || processExists(pid) {
			continue
		}
		t.Logf("destroying %s, left by a test process that is gone", name)
		virshRun(ctx, t, uri, "destroy", name)
	}
}

func domState(ctx context.Context, t *testing.T, d *libvirtDomain) string {
	t.Helper()
	return strings.TrimSpace(virshRun(ctx, t, d.uri, "domstate", d.name))
}

// virshRun runs virsh and fails the test with its message if it fails.
func virshRun(ctx context.Context, t *testing.T, uri string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, "virsh", append([]string{"-q", "-c", uri}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("virsh %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out)
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

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func TestVirshMessage(t *testing.T) {
	got := virshMessage("error: failed to get domain 'x'\n\nerror: Domain not found\n")
	if want := "failed to get domain 'x'; Domain not found"; got != want {
		t.Errorf("virshMessage = %q, want %q", got, want)
	}
	e := &virshError{sub: "domstate", msg: got}
	if !errors.Is(e, ErrNoDomain) || errors.Is(e, ErrGone) {
		t.Errorf("errors.Is: ErrNoDomain %v, ErrGone %v", errors.Is(e, ErrNoDomain), errors.Is(e, ErrGone))
	}
}

func TestLibvirtURI(t *testing.T) {
	if _, err := exec.LookPath("virsh"); err != nil {
		testenv.Skipf(t, "virsh not found: install %s", LibvirtPackages)
	}
	for uri, ok := range map[string]bool{
		"":                       true,
		"qemu:///system":         true,
		"qemu+unix:///system":    true,
		"qemu:///session":        true,
		"qemu+ssh://host/system": false,
		"xen:///system":          false,
		"test:///default":        false,
	} {
		t.Setenv("LIBVIRT_DEFAULT_URI", uri)
		_, err := newVirsh("dom")
		if (err == nil) != ok {
			t.Errorf("LIBVIRT_DEFAULT_URI=%q: error %v, want ok %v", uri, err, ok)
		}
	}
}
