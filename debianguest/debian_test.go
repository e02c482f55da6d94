// Package debianguest_test boots the Debian 12 guest scripts/setup.sh builds once for the package
// and checks it is what analysts' VMs are: systemd and its daemons, sshd, a user, namespaces,
// modules, RAM above 4 GiB on q35. The checks use the guest's own tools through the test channel.
package debianguest_test

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"hybridbridge/guest"
	"hybridbridge/vmm"
)

var (
	deb      *guest.Guest
	setupErr error
)

func TestMain(m *testing.M) {
	code := func() int {
		dir, err := os.MkdirTemp("", "hbdebian-test")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		var img *guest.Image
		cache, err := guest.FindCacheDir()
		var assets *guest.Assets
		if err == nil {
			assets, err = guest.LoadAssets(cache)
		}
		if err == nil {
			img, err = guest.DebianImage(assets)
		}
		if err == nil {
			start := time.Now()
			deb, err = guest.Start(context.Background(), guest.Config{
				Name: "debian", MemMiB: img.MemMiB, Image: img, RunDir: dir, Timeout: 5 * time.Minute,
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
		return m.Run()
	}()
	os.Exit(code)
}

func need(t *testing.T) context.Context {
	t.Helper()
	if setupErr != nil {
		t.Fatalf("the Debian guest did not start: %v", setupErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// sh runs a shell command line in the guest and returns its output; a failure fails the test.
func sh(t *testing.T, ctx context.Context, command string) string {
	t.Helper()
	res, err := deb.Exec(ctx, command)
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
