package target

import (
	"bytes"
	"context"
	"errors"
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

// TestLibvirt boots one libvirt domain (the slow part, ~15 s under TCG) and inspects it through
// OpenLibvirt the way an analyst's domain would be.
func TestLibvirt(t *testing.T) {
	testenv.SkipIfShort(t, "boots a libvirt domain")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	dom := libvirtd.DemoDomainForTest(ctx, t)

	tg, err := OpenLibvirt(ctx, dom.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()

	t.Run("Identity", func(t *testing.T) {
		if got, want := tg.Name(), "libvirt domain "+dom.Name; got != want {
			t.Errorf("Name = %q, want %q", got, want)
		}
		if tg.Kind() != KindLibvirt {
			t.Errorf("Kind = %q", tg.Kind())
		}
		b, err := os.ReadFile(filepath.Join("/run/libvirt/qemu", dom.Name+".pid"))
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
		id := strings.TrimSpace(virshRun(ctx, t, dom.URI, "domid", dom.Name))
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
		v, err := newVirsh(dom.Name)
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
		virshRun(ctx, t, dom.URI, "suspend", dom.Name)
		defer virshRun(ctx, t, dom.URI, "resume", dom.Name)
		checkPauseResume(ctx, t, tg, dom, "paused")
	})

	t.Run("RAMEqualsDump", func(t *testing.T) {
		virshRun(ctx, t, dom.URI, "suspend", dom.Name)
		defer virshRun(ctx, t, dom.URI, "resume", dom.Name)

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

		path := filepath.Join(dom.Dir, "dump.elf")
		start = time.Now()
		virshRun(ctx, t, dom.URI, "dump", "--memory-only", "--format", "elf", dom.Name, path)
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
		sameBytes(t, "dump", dump.Phys(), "RAM file", view)
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
		name := dom.Name + "-nosuch"
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
func checkPauseResume(ctx context.Context, t *testing.T, tg Target, dom *libvirtd.Domain, want string) {
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

func domState(ctx context.Context, t *testing.T, d *libvirtd.Domain) string {
	t.Helper()
	return strings.TrimSpace(virshRun(ctx, t, d.URI, "domstate", d.Name))
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
