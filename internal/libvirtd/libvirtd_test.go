package libvirtd

import (
	"context"
	"encoding/xml"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"hybridbridge/internal/testenv"
)

// TestStartStop starts the daemons twice over (as two test processes would) and checks that they
// serve qemu:///system, that ending the first use leaves them to the second, and that ending the
// last stops what was started and nothing else.
func TestStartStop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	first, err := Start(ctx)
	if err != nil {
		testenv.Skip(t, err.Error())
	}
	t.Cleanup(func() { first.Stop() })
	t.Logf("first use: started %v in %v", first.Started, first.Took.Round(time.Millisecond))
	second, err := Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { second.Stop() })
	if second.Started {
		t.Error("second use started the daemons again")
	}
	pids := map[string]int{}
	for _, dm := range daemons {
		pid, ok := running(dm)
		if !ok {
			t.Fatalf("%s is not running after Start", dm.name)
		}
		pids[dm.name] = pid
	}
	if err := first.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := first.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	out, err := exec.CommandContext(ctx, "virsh", "-c", second.URI, "list", "--all").CombinedOutput()
	if err != nil {
		t.Fatalf("daemons gone while still in use: virsh list: %v: %s", err, out)
	}
	if err := second.Stop(); err != nil {
		t.Fatal(err)
	}
	if !first.Started {
		for _, dm := range daemons {
			if pid, ok := running(dm); !ok || pid != pids[dm.name] {
				t.Errorf("%s (pid %d) was running before the test and was stopped", dm.name, pids[dm.name])
			}
		}
		return
	}
	if otherUsers(t) {
		t.Log("another process uses the daemons: they stay up for it")
		return
	}
	for _, dm := range daemons {
		if _, ok := running(dm); ok {
			t.Errorf("%s still runs after the last Stop", dm.name)
		}
	}
}

// otherUsers reports whether a process other than this test holds the users' lock.
func otherUsers(t *testing.T) bool {
	f, err := os.Open(usersPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	return err != nil
}

func TestAlive(t *testing.T) {
	self := os.Getpid()
	b, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	comm := strings.TrimSpace(string(b))
	if !alive(self, comm) {
		t.Errorf("alive(%d, %q) = false for this process", self, comm)
	}
	if alive(self, comm+"x") {
		t.Errorf("alive under another name")
	}
	if alive(1<<22+1, comm) {
		t.Errorf("alive for a pid above pid_max")
	}
}

func TestOneLine(t *testing.T) {
	got := oneLine("error: failed to connect to the hypervisor\nerror: Failed to connect socket to '/run/libvirt/libvirt-sock': No such file or directory\n")
	want := "failed to connect to the hypervisor; Failed to connect socket to '/run/libvirt/libvirt-sock': No such file or directory"
	if got != want {
		t.Errorf("oneLine = %q, want %q", got, want)
	}
}

func TestLogErrors(t *testing.T) {
	dm := daemon{name: "libvirtd", log: t.TempDir() + "/log"}
	if got := logErrors(dm); got != "" {
		t.Errorf("no log: %q", got)
	}
	// As libvirtd 9.0 wrote it when another libvirtd held the pidfile.
	log := `2026-12-06 10:28:07.229+0000: 11147: info : libvirt version: 9.0.0, package: 9.0.0-4+deb12u2 (Debian)
2026-12-06 10:28:07.229+0000: 11147: info : hostname: vm
2026-12-06 10:28:07.229+0000: 11147: error : virPidFileAcquirePath:401 : Failed to acquire pid file '/run/libvirtd.pid': Resource temporarily unavailable
`
	if err := os.WriteFile(dm.log, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	want := " (libvirtd logged: Failed to acquire pid file '/run/libvirtd.pid': Resource temporarily unavailable)"
	if got := logErrors(dm); got != want {
		t.Errorf("logErrors = %q, want %q", got, want)
	}
}

// TestDemoDomainXML checks the definition libvirt is given: what the tests rely on (TCG, 256 MiB,
// 2 vCPUs, KASLR off, the serial layout the demo image expects) and that paths are escaped.
func TestDemoDomainXML(t *testing.T) {
	d := &Domain{Name: "hbtest-1", Dir: "/tmp/a&b", Channel: "/tmp/a&b/cmd.sock", Console: "/tmp/a&b/console.log"}
	var def struct {
		Type   string `xml:"type,attr"`
		Name   string `xml:"name"`
		Memory struct {
			Unit  string `xml:"unit,attr"`
			Value int    `xml:",chardata"`
		} `xml:"memory"`
		VCPU int `xml:"vcpu"`
		OS   struct {
			Kernel  string `xml:"kernel"`
			Initrd  string `xml:"initrd"`
			Cmdline string `xml:"cmdline"`
		} `xml:"os"`
		Serials []struct {
			Type   string `xml:"type,attr"`
			Source struct {
				Path string `xml:"path,attr"`
			} `xml:"source"`
			Target struct {
				Port int `xml:"port,attr"`
			} `xml:"target"`
		} `xml:"devices>serial"`
	}
	if err := xml.Unmarshal([]byte(d.xml()), &def); err != nil {
		t.Fatal(err)
	}
	if def.Type != "qemu" || def.Name != d.Name || def.Memory.Unit != "MiB" || def.Memory.Value != 256 || def.VCPU != 2 {
		t.Errorf("domain %+v", def)
	}
	if def.OS.Cmdline != "console=ttyS0 nokaslr panic=-1" || def.OS.Kernel != d.Dir+"/vmlinuz" || def.OS.Initrd != d.Dir+"/initrd" {
		t.Errorf("os %+v", def.OS)
	}
	if len(def.Serials) != 2 || def.Serials[0].Source.Path != d.Console || def.Serials[0].Target.Port != 0 ||
		def.Serials[1].Type != "unix" || def.Serials[1].Source.Path != d.Channel || def.Serials[1].Target.Port != 1 {
		t.Errorf("serial ports %+v", def.Serials)
	}
}

func TestStale(t *testing.T) {
	for name, want := range map[string]bool{
		domainPrefix + strconv.Itoa(os.Getpid()): false,
		domainPrefix + strconv.Itoa(1<<22+1):     true, // above pid_max: no such process
		domainPrefix + "x":                       false,
		"hbother-" + strconv.Itoa(1<<22+1):       false,
	} {
		if got := stale(name); got != want {
			t.Errorf("stale(%q) = %v, want %v", name, got, want)
		}
	}
}
