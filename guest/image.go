package guest

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/cavaliergopher/cpio"
)

// Image is what a guest boots: a kernel, an initramfs and the command line they need, and for a
// distribution's guest its root disk and machine.
type Image struct {
	Path    string // the initramfs (a cpio archive)
	Kernel  string // vmlinuz
	Append  string // kernel command line
	Modules []string
	// Disk, if set, is a raw root disk image. Each boot writes to a copy-on-write layer of its own
	// in the guest's folder; the image itself is never written.
	Disk string
	// Machine is QEMU's machine type: "pc" (also when empty) or "q35".
	Machine string
	// CPUs is the number of vCPUs; 0 means 1.
	CPUs int
	// MemMiB is the RAM the image is meant to boot with when none is asked for; 0 means 512 MiB.
	MemMiB int
}

// CommonArgs are the kernel arguments of every guest hybridbridge boots, demo guests and the secure
// VM alike: no CPU features the Unicorn emulator lacks (xsave, PTI's PCID use).
const CommonArgs = "console=ttyS0 noxsave nopti mitigations=off panic=-1"

// NoKASLR boots a kernel at the build's own addresses. The SVM always boots so (it takes on a
// guest's layout only when a snapshot is built in it: svm.BuildOptions.Layout). Demo guests boot
// with KASLR, as distributions do, unless started with --nokaslr (for debugging: the SVM's first
// snapshot then serves them without a layout build).
const NoKASLR = "nokaslr"

// WithoutArg is a kernel command line with every word equal to arg removed.
func WithoutArg(cmdline, arg string) string {
	var kept []string
	for _, w := range strings.Fields(cmdline) {
		if w != arg {
			kept = append(kept, w)
		}
	}
	return strings.Join(kept, " ")
}

// DemoModules are loaded into the demo guest with insmod. All come from the kernel package and
// have no dependencies (checked when the image is built).
var DemoModules = []string{"dummy", "tun", "veth", "loop"}

// DemoSpareModules are in the demo guest's /lib/modules but not loaded, for tests that load one.
var DemoSpareModules = []string{"ifb", "nlmon"}

// DemoNet is the demo guest's network: dummy0 is up with these addresses and one static
// neighbour entry (the guest has no network card).
var DemoNet = struct {
	IPv4, IPv6, Neighbour, NeighbourMAC string
}{IPv4: "10.77.0.1/24", IPv6: "fd00:77::1/64", Neighbour: "10.77.0.2", NeighbourMAC: "02:00:00:00:77:02"}

// DemoPorts are the demo workload's listening sockets, for tests and the README.
var DemoPorts = struct {
	HTTP, Echo, Telnet, UDP int
}{HTTP: 8080, Echo: 7001, Telnet: 2323, UDP: 5353}

// DemoProcesses are the distinctive names (comm) of the demo workload's processes.
var DemoProcesses = []string{"hb-parent", "hb-child", "hb-sleeper", "hb-stopped", "hb-client", "hb-udpd", "httpd", "telnetd", "syslogd", "hbguest"}

// The demo guest's /init runs before anything is mounted and with no console open: the cpio
// library we use cannot write device nodes, so /dev/console comes from devtmpfs, and busybox init
// (which reaps orphans, as a real init does) takes over with the console as its standard streams.
const demoInit = `#!/bin/busybox sh
/bin/busybox mount -t devtmpfs dev /dev
exec /sbin/init </dev/console >/dev/console 2>&1
`

// sysinit runs to completion before init starts the command channel, so once the channel answers
// the whole workload is up.
const demoInittab = `::sysinit:/etc/hb/rc.sh
::respawn:/sbin/hbguest serve /dev/ttyS1
::shutdown:/bin/umount -a -r
`

var demoRC = `#!/bin/sh
export PATH=/sbin:/usr/sbin:/bin:/usr/bin:/usr/local/bin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
echo 0 > /proc/sys/kernel/kptr_restrict
echo 0 > /proc/sys/kernel/dmesg_restrict
hostname hb-demo
ip link set lo up
for m in $(cat /etc/hb/modules); do
	insmod /lib/modules/$m.ko || echo "hb: insmod $m failed"
done
ip link set dummy0 up
ip addr add ` + DemoNet.IPv4 + ` dev dummy0
ip -6 addr add ` + DemoNet.IPv6 + ` dev dummy0
arp -s ` + DemoNet.Neighbour + ` ` + DemoNet.NeighbourMAC + `
syslogd -O /var/log/messages
httpd -p ` + itoa(DemoPorts.HTTP) + ` -h /www
telnetd -p ` + itoa(DemoPorts.Telnet) + ` -l /bin/false
nc -ll -p ` + itoa(DemoPorts.Echo) + ` -e /bin/cat &
hb-udpd ` + itoa(DemoPorts.UDP) + ` &
hb-parent 3 &
hb-sleeper 3600 &
su -s /bin/sh analyst -c 'hb-sleeper 7200 &'
hb-stopped &
waitfor() {
	for i in $(seq 100); do
		netstat -ltun 2>/dev/null | grep -q "$1" && return 0
		usleep 50000
	done
	echo "hb: $1 never appeared"
}
waitfor ":` + itoa(DemoPorts.Echo) + ` "
hb-client 127.0.0.1 ` + itoa(DemoPorts.Echo) + ` &
waitfor ":` + itoa(DemoPorts.UDP) + ` "
for i in $(seq 100); do netstat -tn | grep -q ESTABLISHED && break; usleep 50000; done
echo "hb: workload ready"
`

// The workload's programs are shell scripts so that each has its own process name: the kernel
// names a process after the file it executes.
var demoScripts = map[string]string{
	"hb-parent": `#!/bin/sh
# A parent with children, for the process tree.
n=${1:-3}
for i in $(seq "$n"); do hb-child "$i" & done
wait
`,
	"hb-child": `#!/bin/sh
# Long sleeps: a process list taken inside the guest stays true until the guest is paused.
while :; do sleep 3600; done
`,
	"hb-sleeper": `#!/bin/sh
while :; do sleep "${1:-3600}"; done
`,
	"hb-stopped": `#!/bin/sh
# Stops itself (state T) until someone sends SIGCONT.
kill -STOP $$
while :; do sleep 60; done
`,
	"hb-client": `#!/bin/sh
# Keeps one loopback TCP connection established: nc's standard input never closes.
while :; do sleep 3600; done | nc "$1" "$2" >/dev/null
`,
}

func itoa(n int) string { return fmt.Sprint(n) }

// BuildDemoImage writes the demo guest's initramfs into the cache (images/demo-<hash>.cpio), or
// reuses it if one with the same inputs exists.
func BuildDemoImage(a *Assets) (*Image, error) {
	b, err := baseImage(a, demoRC)
	if err != nil {
		return nil, err
	}
	b.symlink("usr/sbin/hb-udpd", "/sbin/hbguest")
	b.file("www/index.html", "<h1>hybridbridge demo guest</h1>\n", 0o644)
	for name, text := range demoScripts {
		b.file("usr/local/bin/"+name, text, 0o755)
	}
	mods, err := resolveModules(a.Modules, DemoModules)
	if err != nil {
		return nil, err
	}
	spare, err := resolveModules(a.Modules, DemoSpareModules)
	if err != nil {
		return nil, err
	}
	var order []string
	for _, m := range mods {
		if err := b.hostFile("lib/modules/"+m.name+".ko", m.path, 0o644); err != nil {
			return nil, err
		}
		order = append(order, m.name)
	}
	for _, m := range spare {
		if err := b.hostFile("lib/modules/"+m.name+".ko", m.path, 0o644); err != nil {
			return nil, err
		}
	}
	b.file("etc/hb/modules", strings.Join(order, "\n")+"\n", 0o644)
	path, err := b.write(filepath.Join(a.CacheDir, "images"), "demo")
	if err != nil {
		return nil, err
	}
	return &Image{Path: path, Kernel: a.Kernel, Append: CommonArgs + " quiet", Modules: order}, nil
}

// svmRC prepares the secure VM: nothing runs in it but init, the command channel and (started
// by the snapshot builder) the agent. The banner stays on the console: it is the snapshot's record
// of the kernel that booted.
const svmRC = `#!/bin/sh
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmpfs /tmp
echo 0 > /proc/sys/kernel/kptr_restrict
hostname hb-svm
echo "hb: svm ready"
`

// BuildSVMImage writes the secure VM's initramfs: the base system plus the agent.
func BuildSVMImage(a *Assets) (*Image, error) {
	b, err := baseImage(a, svmRC)
	if err != nil {
		return nil, err
	}
	if err := b.hostFile("sbin/hbagent", a.Agent, 0o755); err != nil {
		return nil, err
	}
	path, err := b.write(filepath.Join(a.CacheDir, "images"), "svm")
	if err != nil {
		return nil, err
	}
	return &Image{Path: path, Kernel: a.Kernel, Append: CommonArgs + " " + NoKASLR}, nil
}

// baseImage is what every guest image has: busybox, init, the command channel's helper.
func baseImage(a *Assets, rc string) (*imageBuilder, error) {
	b := newImageBuilder()
	for _, d := range []string{"bin", "sbin", "usr", "usr/bin", "usr/sbin", "usr/local", "usr/local/bin",
		"proc", "sys", "dev", "tmp", "run", "root", "home", "home/analyst", "etc", "etc/hb", "lib", "lib/modules", "www", "var", "var/log"} {
		b.dir(d)
	}
	if err := b.hostFile("bin/busybox", a.Busybox, 0o755); err != nil {
		return nil, err
	}
	if err := b.hostFile("sbin/hbguest", a.Helper, 0o755); err != nil {
		return nil, err
	}
	b.symlink("sbin/init", "/bin/busybox")
	b.symlink("bin/sh", "/bin/busybox")
	b.file("init", demoInit, 0o755)
	b.file("etc/inittab", demoInittab, 0o644)
	b.file("etc/hb/rc.sh", rc, 0o755)
	b.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nanalyst:x:1000:1000:analyst:/home/analyst:/bin/sh\n", 0o644)
	b.file("etc/group", "root:x:0:\nanalyst:x:1000:\n", 0o644)
	return b, nil
}

type module struct{ name, path string }

// resolveModules finds each module's .ko in the kernel's module tree and puts dependencies (from
// the module's own .modinfo "depends=") before the modules that need them. Debian's package ships
// no modules.dep (depmod runs at install), so the .ko files are the only source.
func resolveModules(tree string, names []string) ([]module, error) {
	paths := map[string]string{}
	// The tree is usually a symlink into the unpacked package; WalkDir does not follow it.
	tree, err := filepath.EvalSymlinks(tree)
	if err != nil {
		return nil, fmt.Errorf("kernel modules: %w", err)
	}
	err = filepath.WalkDir(tree, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			paths[strings.ReplaceAll(strings.TrimSuffix(d.Name(), ".ko"), "-", "_")] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scan kernel modules: %w", err)
	}
	var out []module
	done := map[string]bool{}
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		name = strings.ReplaceAll(name, "-", "_")
		if done[name] {
			return nil
		}
		for _, c := range chain {
			if c == name {
				return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, name), " -> "))
			}
		}
		p, ok := paths[name]
		if !ok {
			return fmt.Errorf("module %q not found in %s", name, tree)
		}
		deps, err := moduleDepends(p)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		done[name] = true
		out = append(out, module{name, p})
		return nil
	}
	for _, n := range names {
		if err := visit(n, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %s has no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("module %s: .modinfo: %w", path, err)
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			if len(v) == 0 {
				return nil, nil
			}
			return strings.Split(string(v), ","), nil
		}
	}
	return nil, nil
}

// imageBuilder collects the entries of an initramfs and writes them sorted, so equal inputs give a
// byte-identical archive and hence the same cache name.
type imageBuilder struct {
	entries map[string]entry
}

type entry struct {
	mode cpio.FileMode
	data []byte
}

func newImageBuilder() *imageBuilder { return &imageBuilder{entries: map[string]entry{}} }

func (b *imageBuilder) dir(name string) {
	b.entries[name] = entry{mode: cpio.TypeDir | 0o755}
}

func (b *imageBuilder) file(name, text string, perm cpio.FileMode) {
	b.entries[name] = entry{mode: cpio.TypeReg | perm, data: []byte(text)}
}

func (b *imageBuilder) symlink(name, target string) {
	b.entries[name] = entry{mode: cpio.TypeSymlink | 0o777, data: []byte(target)}
}

func (b *imageBuilder) hostFile(name, path string, perm cpio.FileMode) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	b.entries[name] = entry{mode: cpio.TypeReg | perm, data: data}
	return nil
}

// write stores the archive as <dir>/<prefix>-<content hash>.cpio unless it already exists.
func (b *imageBuilder) write(dir, prefix string) (string, error) {
	names := make([]string, 0, len(b.entries))
	for n := range b.entries {
		names = append(names, n)
	}
	// Parents sort before their children, as the kernel's unpacker needs.
	sort.Strings(names)
	var buf bytes.Buffer
	w := cpio.NewWriter(&buf)
	for _, n := range names {
		e := b.entries[n]
		hdr := &cpio.Header{Name: n, Mode: e.mode, Size: int64(len(e.data))}
		if e.mode.IsDir() {
			hdr.Size = 0
		}
		if err := w.WriteHeader(hdr); err != nil {
			return "", fmt.Errorf("initramfs %s: %w", n, err)
		}
		if hdr.Size > 0 {
			if _, err := w.Write(e.data); err != nil {
				return "", fmt.Errorf("initramfs %s: %w", n, err)
			}
		}
	}
	if err := w.Close(); err != nil {
		return "", fmt.Errorf("initramfs: %w", err)
	}
	sum := sha256.Sum256(buf.Bytes())
	path := filepath.Join(dir, prefix+"-"+hex.EncodeToString(sum[:])[:16]+".cpio")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := writeFileAtomic(path, buf.Bytes(), 0o644); err != nil {
		return "", fmt.Errorf("write initramfs: %w", err)
	}
	return path, nil
}
