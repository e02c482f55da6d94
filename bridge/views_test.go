package bridge

import (
	"context"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"hybridbridge/guest"
	"hybridbridge/inspect"
)

// viewFiles are the files the everyday views read, captured inside the guest in one pass for
// ground truth.
var viewFiles = []string{"/proc/modules", "/proc/net/tcp", "/proc/net/tcp6", "/proc/net/udp",
	"/proc/net/udp6", "/proc/net/unix", "/proc/uptime", "/proc/loadavg", "/proc/meminfo",
	"/proc/mounts", "/proc/net/arp", "/proc/net/dev", "/proc/net/if_inet6", "/proc/net/fib_trie",
	"/proc/net/route", "/proc/[0-9]*/comm", "/proc/[0-9]*/stat", "/proc/[0-9]*/environ", "/proc/[0-9]*/fdinfo/*",
	"/proc/sys/kernel/ostype", "/proc/sys/kernel/hostname", "/proc/sys/kernel/osrelease",
	"/proc/sys/kernel/version", "/proc/sys/kernel/arch", "/proc/sys/kernel/domainname"}

// fileReader is what every view reads through: a session, or files captured in the guest.
type fileReader interface {
	inspect.Files
	inspect.Links
}

// viewSet is every view of one moment.
type viewSet struct {
	Modules    []inspect.Module
	Sockets    []inspect.Socket
	Uptime     inspect.Uptime
	LoadAvg    inspect.LoadAvg
	Uname      inspect.Uname
	Meminfo    []inspect.MemField
	Mounts     []inspect.Mount
	Neighbours []inspect.Neighbour
	Interfaces inspect.Interfaces
	Environ    map[int][]string
	OpenFiles  map[int][]inspect.OpenFile
	Comm       map[int]string
	// lateUptime is the guest's /proc/uptime read again at the end of a capture in the guest:
	// the capture takes seconds, and the pause follows it.
	lateUptime inspect.Uptime
}

// readViews computes every view from f; environment and open files for every process but skip.
func readViews(f fileReader, skip int) (*viewSet, error) {
	v := &viewSet{Environ: map[int][]string{}, OpenFiles: map[int][]inspect.OpenFile{}, Comm: map[int]string{}}
	var err error
	step := func(what string, fn func() error) {
		if err == nil {
			if e := fn(); e != nil {
				err = fmt.Errorf("%s: %w", what, e)
			}
		}
	}
	step("lsmod", func() (e error) { v.Modules, e = inspect.ListModules(f); return })
	step("netstat", func() (e error) { v.Sockets, _, e = inspect.ListSockets(f, true); return })
	step("uptime", func() (e error) { v.Uptime, e = inspect.ReadUptime(f); return })
	step("loadavg", func() (e error) { v.LoadAvg, e = inspect.ReadLoadAvg(f); return })
	step("uname", func() (e error) { v.Uname, e = inspect.ReadUname(f); return })
	step("free", func() (e error) { v.Meminfo, e = inspect.ReadMeminfo(f); return })
	step("mounts", func() (e error) { v.Mounts, e = inspect.ReadMounts(f); return })
	step("arp", func() (e error) { v.Neighbours, e = inspect.ListNeighbours(f); return })
	step("ifconfig", func() (e error) { v.Interfaces, e = inspect.ListInterfaces(f); return })
	if err != nil {
		return nil, err
	}
	names, err := f.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		pid, err := strconv.Atoi(n)
		if err != nil || pid == skip {
			continue
		}
		comm, err := f.ReadFile("/proc/" + n + "/comm")
		if err != nil {
			continue // exited
		}
		v.Comm[pid] = strings.TrimSpace(string(comm))
		if v.Environ[pid], err = inspect.ReadEnviron(f, pid); err != nil {
			return nil, fmt.Errorf("env: %w", err)
		}
		files, _, err := inspect.ListOpenFiles(f, f, pid)
		switch {
		case err == nil:
			v.OpenFiles[pid] = files
		case inspect.IsVanished(err):
			// Exited; or, in a capture, a process without descriptors (a kernel thread): the
			// capture holds files, not empty directories.
		default:
			return nil, fmt.Errorf("lsof: %w", err)
		}
	}
	for i := range v.Sockets {
		v.Sockets[i].PIDs = slices.DeleteFunc(v.Sockets[i].PIDs, func(p int) bool { return p == skip })
		if len(v.Sockets[i].PIDs) == 0 {
			v.Sockets[i].PIDs = nil
		}
	}
	return v, nil
}

// viewTruth captures the views' files inside the guest and computes the views from them with
// the same code.
func viewTruth(t *testing.T, ctx context.Context, g *guest.Guest) (*viewSet, []inspect.LogLine, int) {
	t.Helper()
	res := mustExec(t, ctx, g, "capture in the guest", inspect.CaptureLinksCommand(viewFiles, []string{"/proc/[0-9]*/fd/*"}))
	fs, err := inspect.ParseCapture(res.Stdout)
	if err != nil {
		t.Fatal(err)
	}
	v, err := readViews(fs, fs.Self)
	if err != nil {
		t.Fatalf("views of the guest's own files: %v", err)
	}
	res = mustExec(t, ctx, g, "dmesg in the guest", "dmesg -r")
	log, err := inspect.ParseSyslog(res.Stdout)
	if err != nil {
		t.Fatal(err)
	}
	res = mustExec(t, ctx, g, "uptime in the guest", "cat /proc/uptime")
	if _, err := fmt.Sscanf(string(res.Stdout), "%g %g", &v.lateUptime.Seconds, &v.lateUptime.IdleSeconds); err != nil {
		t.Fatalf("uptime in the guest %q: %v", res.Stdout, err)
	}
	return v, log, fs.Self
}

// staticMem are the meminfo fields that do not move with the guest's activity; the others may
// move by what the capture itself used.
var staticMem = map[string]bool{"MemTotal": true, "SwapTotal": true, "SwapFree": true, "VmallocTotal": true,
	"CommitLimit": true, "HugePages_Total": true, "HugePages_Free": true, "Hugepagesize": true,
	"Hugetlb": true, "DirectMap4k": true, "DirectMap2M": true, "DirectMap1G": true, "Percpu": true}

// compareViews checks the view against the guest's own, field by field. What the capture itself
// changes is allowed: the capturing shell (not in truth's per-process maps), the command
// channel's helper, time, and memory the capture used.
func compareViews(t *testing.T, got, want *viewSet, gotLog, wantLog []inspect.LogLine) {
	t.Helper()
	eq := func(name string, g, w any) {
		if !reflect.DeepEqual(g, w) {
			t.Errorf("%s differs:\n view  %+v\n guest %+v", name, g, w)
		}
	}
	eq("lsmod", got.Modules, want.Modules)
	eq("netstat", got.Sockets, want.Sockets)
	eq("uname", got.Uname, want.Uname)
	eq("mounts", got.Mounts, want.Mounts)
	eq("arp", got.Neighbours, want.Neighbours)
	// Interface counters only grow between the capture and the pause (a fresh interface still
	// sends IPv6 router solicitations); everything else is equal.
	gi := got.Interfaces
	gi.Interfaces = slices.Clone(gi.Interfaces)
	for i := range gi.Interfaces {
		if i >= len(want.Interfaces.Interfaces) {
			break
		}
		g, w := &gi.Interfaces[i], want.Interfaces.Interfaces[i]
		if g.TxPackets >= w.TxPackets && g.TxPackets-w.TxPackets <= 4 && g.TxBytes >= w.TxBytes &&
			g.RxPackets >= w.RxPackets && g.RxPackets-w.RxPackets <= 4 && g.RxBytes >= w.RxBytes {
			g.TxPackets, g.TxBytes, g.RxPackets, g.RxBytes = w.TxPackets, w.TxBytes, w.RxPackets, w.RxBytes
		}
	}
	eq("ifconfig", gi, want.Interfaces)
	// The view is the guest's clock at the pause: after the capture read it, and at most the
	// pause's own latency after the capture's last reading.
	if u, w, late := got.Uptime.Seconds, want.Uptime.Seconds, want.lateUptime.Seconds; u < w || u > late+2 {
		t.Errorf("uptime %.2f s, the guest said %.2f s during the capture and %.2f s at its end", u, w, late)
	}
	if u, w, late := got.Uptime.IdleSeconds, want.Uptime.IdleSeconds, want.lateUptime.IdleSeconds; u < w-0.5 || u > late+2 {
		t.Errorf("idle %.2f s, the guest said %.2f s during the capture and %.2f s at its end", u, w, late)
	}
	gl, wl := got.LoadAvg, want.LoadAvg
	if gl.Load1 != wl.Load1 && math.Abs(gl.Load1-wl.Load1) > 0.5 || gl.LastPID < wl.LastPID || gl.Threads < wl.Threads-5 || gl.Threads > wl.Threads {
		t.Errorf("loadavg differs:\n view  %+v\n guest %+v", gl, wl)
	}
	wantMem := map[string]inspect.MemField{}
	for _, m := range want.Meminfo {
		wantMem[m.Name] = m
	}
	var total uint64
	for _, m := range got.Meminfo {
		if m.Name == "MemTotal" {
			total = m.Value
		}
	}
	if len(got.Meminfo) != len(want.Meminfo) {
		t.Errorf("meminfo has %d fields, the guest's %d", len(got.Meminfo), len(want.Meminfo))
	}
	for _, m := range got.Meminfo {
		w, ok := wantMem[m.Name]
		switch {
		case !ok:
			t.Errorf("meminfo field %s is not the guest's", m.Name)
		case staticMem[m.Name] && m != w:
			t.Errorf("meminfo %s = %d, the guest's %d", m.Name, m.Value, w.Value)
		case float64(max(m.Value, w.Value)-min(m.Value, w.Value)) > 0.02*float64(total):
			t.Errorf("meminfo %s = %d, the guest's %d: more than the capture could change", m.Name, m.Value, w.Value)
		}
	}
	for pid, env := range want.Environ {
		eq(fmt.Sprintf("env of %d (%s)", pid, want.Comm[pid]), got.Environ[pid], env)
	}
	for pid, files := range want.OpenFiles {
		if want.Comm[pid] == "hbguest" {
			continue // the command channel's helper opens and closes pipes for the capture
		}
		eq(fmt.Sprintf("lsof of %d (%s)", pid, want.Comm[pid]), got.OpenFiles[pid], files)
	}
	for pid := range got.Comm {
		if _, ok := want.Comm[pid]; !ok {
			t.Errorf("pid %d (%s) is in the view only", pid, got.Comm[pid])
		}
	}
	if len(gotLog) < len(wantLog) {
		t.Errorf("kernel log: %d lines, the guest's %d", len(gotLog), len(wantLog))
	}
	for i := range min(len(gotLog), len(wantLog)) {
		g := gotLog[i]
		g.Seq = 0
		if g != wantLog[i] {
			t.Errorf("kernel log line %d:\n view  %+v\n guest %+v", i, g, wantLog[i])
			break
		}
	}
}

func TestViewsMatchGuest(t *testing.T) {
	ctx := need(t)
	want, wantLog, self := viewTruth(t, ctx, demo)
	s, mem, before := pausedSession(t, ctx)
	start := time.Now()
	got, err := readViews(s, self)
	var gotLog []inspect.LogLine
	if err == nil {
		gotLog, err = inspect.ReadKernelLog(s)
	}
	elapsed := time.Since(start)
	unknown := s.Globals.Unknown()
	closeUnchanged(t, ctx, s, mem, before, err)
	compareViews(t, got, want, gotLog, wantLog)
	mods := map[string]bool{}
	for _, m := range got.Modules {
		mods[m.Name] = true
	}
	for _, m := range guest.DemoModules {
		if !mods[m] {
			t.Errorf("module %s missing from lsmod", m)
		}
	}
	ports := map[string]bool{}
	for _, so := range got.Sockets {
		if len(so.PIDs) > 0 && (so.State == "LISTEN" || so.Proto == "udp") {
			ports[so.Local[strings.LastIndexByte(so.Local, ':')+1:]] = true
		}
	}
	for _, p := range []int{guest.DemoPorts.HTTP, guest.DemoPorts.Echo, guest.DemoPorts.Telnet, guest.DemoPorts.UDP} {
		if !ports[strconv.Itoa(p)] {
			t.Errorf("listener on port %d with its process missing from netstat", p)
		}
	}
	if len(got.Neighbours) == 0 || got.Neighbours[0].IP != guest.DemoNet.Neighbour {
		t.Errorf("arp: %+v, want the demo's static entry %s", got.Neighbours, guest.DemoNet.Neighbour)
	}
	t.Logf("all views in %v (%d processes' environments and open files, %d log lines); unknown globals: %v",
		elapsed.Round(time.Millisecond), len(got.Environ), len(gotLog), unknown)
	if len(unknown) > 0 {
		t.Errorf("globals in neither list were used: %v", unknown)
	}
}

// TestViewsRandomWorkload changes what the views show at random — listeners on random ports,
// connections opened and some closed, a module loaded and another removed, files held open, a
// random environment, an extra address and neighbour — and compares every view with the guest's
// own again.
func TestViewsRandomWorkload(t *testing.T) {
	ctx := need(t)
	r := testRand(t)
	var sc strings.Builder
	sc.WriteString("cd /tmp\n")
	ports := map[int]bool{}
	for len(ports) < 2+r.IntN(4) {
		ports[20000+r.IntN(30000)] = true
	}
	var clients []int
	for p := range ports {
		fmt.Fprintf(&sc, "setsid nc -ll -p %d -e /bin/cat </dev/null >/dev/null 2>&1 &\n", p)
		if r.IntN(2) == 0 {
			clients = append(clients, p)
		}
	}
	sc.WriteString("sleep 0.3\n")
	for _, p := range clients {
		fmt.Fprintf(&sc, "(sleep 3600 </dev/null 2>/dev/null | setsid nc 127.0.0.1 %d >/dev/null 2>&1 &)\n", p)
	}
	udp := 20000 + r.IntN(30000)
	fmt.Fprintf(&sc, "setsid nc -u -l -p %d </dev/null >/dev/null 2>&1 &\n", udp)
	// Files held open, with a random environment.
	for i := 0; i < 1+r.IntN(3); i++ {
		name := "h" + randomWord(r, 6)
		fmt.Fprintf(&sc, "printf '%s' > /tmp/%s.txt\n", randomWord(r, 10+r.IntN(500)), name)
		fmt.Fprintf(&sc, "printf '#!/bin/sh\\nexec 3</tmp/%s.txt 4>>/tmp/%s.log 5</etc/passwd\\nread -n %d x <&3\\nwhile :; do sleep 3600; done\\n' > /tmp/%s; chmod +x /tmp/%s\n",
			name, name, 1+r.IntN(9), name, name)
		fmt.Fprintf(&sc, "env -i HB_%s=%s HB_N=%d setsid /tmp/%s </dev/null >/dev/null 2>&1 &\n", strings.ToUpper(randomWord(r, 4)), randomWord(r, 1+r.IntN(30)), r.IntN(1000), name)
	}
	// Modules: load a spare one, remove a loaded one.
	add := guest.DemoSpareModules[r.IntN(len(guest.DemoSpareModules))]
	// dummy stays: dummy0 carries the demo's addresses.
	keep := slices.DeleteFunc(slices.Clone(guest.DemoModules), func(m string) bool { return m == "dummy" })
	del := keep[r.IntN(len(keep))]
	fmt.Fprintf(&sc, "insmod /lib/modules/%s.ko\nrmmod %s\n", add, del)
	// Another address and neighbour.
	ip := fmt.Sprintf("10.%d.%d.1", 100+r.IntN(100), r.IntN(250))
	fmt.Fprintf(&sc, "ip addr add %s/24 dev dummy0\n", ip)
	fmt.Fprintf(&sc, "arp -s %s 02:00:00:%02x:%02x:%02x\n", strings.TrimSuffix(ip, ".1")+".9", r.IntN(256), r.IntN(256), r.IntN(256))
	// Close some connections (their sockets go to TIME_WAIT or disappear).
	sc.WriteString("sleep 0.5\n")
	if len(clients) > 0 && r.IntN(2) == 0 {
		fmt.Fprintf(&sc, "pkill -f 'nc 127.0.0.1 %d' || true\n", clients[0])
	}
	sc.WriteString("sleep 0.5\n")
	res, err := demo.Exec(ctx, sc.String())
	if err != nil {
		t.Fatalf("randomise the workload: %v", err)
	}
	if res.Status != 0 {
		t.Fatalf("randomise the workload: exit status %d: %s%s", res.Status, res.Stdout, res.Stderr)
	}
	want, wantLog, self := viewTruth(t, ctx, demo)
	s, mem, before := pausedSession(t, ctx)
	got, err := readViews(s, self)
	var gotLog []inspect.LogLine
	if err == nil {
		gotLog, err = inspect.ReadKernelLog(s)
	}
	unknown := s.Globals.Unknown()
	closeUnchanged(t, ctx, s, mem, before, err)
	compareViews(t, got, want, gotLog, wantLog)
	var names []string
	for _, m := range got.Modules {
		names = append(names, m.Name)
	}
	if !slices.Contains(names, add) || slices.Contains(names, del) {
		t.Errorf("lsmod %v after loading %s and removing %s", names, add, del)
	}
	seen := 0
	for _, so := range got.Sockets {
		for p := range ports {
			if strings.HasSuffix(so.Local, ":"+strconv.Itoa(p)) && so.State == "LISTEN" {
				seen++
			}
		}
	}
	if seen != len(ports) {
		t.Errorf("%d of %d random listeners in netstat", seen, len(ports))
	}
	t.Logf("%d sockets, %d modules, %d processes compared; unknown globals: %v", len(got.Sockets), len(got.Modules), len(got.Comm), unknown)
	if len(unknown) > 0 {
		t.Errorf("globals in neither list were used: %v", unknown)
	}
	// The same randomized guest through every engine mode.
	modesAgree(t, ctx)
}

// BenchmarkViews reports, per view on the demo guest, the cold run (a fresh session: nothing
// translated or decoded yet) and warm runs: time, system calls, instructions executed with
// taint, and kernel-image accesses redirected to the guest.
func BenchmarkViews(b *testing.B) {
	if setupErr != nil {
		b.Fatalf("setup: %v", setupErr)
	}
	ctx := context.Background()
	pid := 1
	for _, v := range []struct {
		name string
		run  func(s *Session) error
	}{
		{"ps", func(s *Session) error { _, _, err := inspect.ListProcesses(s); return err }},
		{"lsmod", func(s *Session) error { _, err := inspect.ListModules(s); return err }},
		{"netstat", func(s *Session) error { _, _, err := inspect.ListSockets(s, true); return err }},
		{"uptime", func(s *Session) error { _, err := inspect.ReadUptime(s); return err }},
		{"uname", func(s *Session) error { _, err := inspect.ReadUname(s); return err }},
		{"free", func(s *Session) error { _, err := inspect.ReadMeminfo(s); return err }},
		{"mounts", func(s *Session) error { _, err := inspect.ReadMounts(s); return err }},
		{"lsof", func(s *Session) error { _, _, err := inspect.ListOpenFiles(s, s, pid); return err }},
		{"env", func(s *Session) error { _, err := inspect.ReadEnviron(s, pid); return err }},
		{"dmesg", func(s *Session) error { _, err := inspect.ReadKernelLog(s); return err }},
		{"arp", func(s *Session) error { _, err := inspect.ListNeighbours(s); return err }},
		{"ifconfig", func(s *Session) error { _, err := inspect.ListInterfaces(s); return err }},
	} {
		b.Run(v.name, func(b *testing.B) {
			start := time.Now()
			s, err := Attach(ctx, demo, snap, syms)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close(ctx)
			if err := v.run(s); err != nil {
				b.Fatal(err)
			}
			cold := time.Since(start)
			s.Taint.Drain()
			st0, insns0, red0 := s.Machine.Stats(), s.Taint.Stats().Instructions, s.Counts[1]
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := v.run(s); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			s.Taint.Drain()
			st := s.Machine.Stats()
			n := float64(b.N)
			b.ReportMetric(cold.Seconds()*1e3, "cold-ms")
			b.ReportMetric(float64(st0.Syscalls), "cold-syscalls")
			b.ReportMetric(float64(insns0), "cold-insns")
			b.ReportMetric(float64(red0), "cold-redirected")
			b.ReportMetric(float64(st.Syscalls-st0.Syscalls)/n, "syscalls/op")
			b.ReportMetric(float64(s.Taint.Stats().Instructions-insns0)/n, "insns/op")
			b.ReportMetric(float64(s.Counts[1]-red0)/n, "redirected/op")
		})
	}
}
