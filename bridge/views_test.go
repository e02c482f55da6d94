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

// viewSet is every view of one moment that the guest's own files are compared with: every view
// of inspect.Views but ps (compared with its own tolerances in bridge_test.go) and dmesg
// (compared with dmesg -r, as a capture of files holds no kernel-log records).
type viewSet struct {
	Records map[string]any         // by view name
	ByPID   map[string]map[int]any // the per-process views, by view name and pid
	Comm    map[int]string
	// lateUptime is the guest's /proc/uptime read again at the end of a capture in the guest:
	// the capture takes seconds, and the pause follows it.
	lateUptime inspect.Uptime
	lateRead   time.Time // when lateUptime was read, on this machine's clock
	// toolsAfter says the guest ran its tools (the oracle's) between this capture and the pause:
	// seconds of ps, netstat and ls more, which raise the load and may start a kworker.
	toolsAfter bool
}

// comparedView reports whether readViews reads v.
func comparedView(v inspect.View) bool {
	return v.Name != inspect.ProcessView.Name && v.Name != inspect.KernelLogView.Name
}

// records are v's records of view, typed.
func records[T any](v *viewSet, view inspect.TypedView[T]) T {
	r, _ := v.Records[view.Name].(T)
	return r
}

// readViews computes every compared view from f; the per-process ones for every process but
// skip.
func readViews(f inspect.Reader, skip int) (*viewSet, error) {
	v := &viewSet{Records: map[string]any{}, ByPID: map[string]map[int]any{}, Comm: map[int]string{}}
	var perPID []inspect.View
	for _, view := range inspect.Views {
		switch {
		case !comparedView(view):
		case view.PID:
			perPID = append(perPID, view)
			v.ByPID[view.Name] = map[int]any{}
		default:
			recs, _, err := view.Read(f, 0)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", view.Name, err)
			}
			v.Records[view.Name] = recs
		}
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
		for _, view := range perPID {
			recs, _, err := view.Read(f, pid)
			switch {
			case err == nil:
				v.ByPID[view.Name][pid] = recs
			case inspect.IsVanished(err):
				// Exited; or, in a capture, a process without descriptors (a kernel thread): the
				// capture holds files, not empty directories.
			default:
				return nil, fmt.Errorf("%s: %w", view.Name, err)
			}
		}
	}
	if socks, ok := v.Records[inspect.SocketView.Name].([]inspect.Socket); ok {
		for i := range socks {
			socks[i].PIDs = slices.DeleteFunc(socks[i].PIDs, func(p int) bool { return p == skip })
			if len(socks[i].PIDs) == 0 {
				socks[i].PIDs = nil
			}
		}
	}
	return v, nil
}

// capture is the files captured in the guest as a view reads them. It has no records: the kernel
// log is compared with dmesg's own output instead.
type capture struct{ *inspect.FileSet }

func (capture) ReadRecords(path string) ([][]byte, error) {
	return nil, fmt.Errorf("read %s: records are not captured", path)
}

// viewTruth captures the views' files inside the guest and computes the views from them with
// the same code.
func viewTruth(t *testing.T, ctx context.Context, g execer) (*viewSet, []inspect.LogLine, int) {
	t.Helper()
	res := mustExec(t, ctx, g, "capture in the guest", inspect.CaptureLinksCommand(viewFiles, []string{"/proc/[0-9]*/fd/*"}))
	fs, err := inspect.ParseCapture(res.Stdout)
	if err != nil {
		t.Fatal(err)
	}
	v, err := readViews(capture{fs}, fs.Self)
	if err != nil {
		t.Fatalf("views of the guest's own files: %v", err)
	}
	res = mustExec(t, ctx, g, "dmesg in the guest", "dmesg -r")
	log, err := inspect.ParseSyslog(res.Stdout)
	if err != nil {
		t.Fatal(err)
	}
	res = mustExec(t, ctx, g, "uptime in the guest", "cat /proc/uptime")
	v.lateRead = time.Now()
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

// compareViews checks every view against the guest's own, field by field: exactly, but for the
// nearViews. What the capture itself changes is allowed: the capturing shell (not in truth's
// per-process maps), the command channel's helper, time, and memory the capture used.
func compareViews(t *testing.T, got, want *viewSet, gotLog, wantLog []inspect.LogLine) {
	t.Helper()
	for _, v := range inspect.Views {
		switch {
		case !comparedView(v):
		case v.PID:
			for pid, w := range want.ByPID[v.Name] {
				if v.Name == inspect.OpenFileView.Name && want.Comm[pid] == "hbguest" {
					continue // the command channel's helper opens and closes pipes for the capture
				}
				if _, listed := got.Comm[pid]; !listed && strings.HasPrefix(want.Comm[pid], "kworker/") {
					// A worker pool reaps idle workers (after five minutes idle): one may end between
					// the capture and the pause. The process list of the pause has it or not, and
					// every view of the pause agrees with that list.
					if _, ok := got.ByPID[v.Name][pid]; ok {
						t.Errorf("%s of %d (%s): in the view but not in its process list", v.Name, pid, want.Comm[pid])
					}
					continue
				}
				equalView(t, fmt.Sprintf("%s of %d (%s)", v.Name, pid, want.Comm[pid]), got.ByPID[v.Name][pid], w)
			}
		case nearViews[v.Name] != nil:
			nearViews[v.Name](t, got, want)
		default:
			equalView(t, v.Name, got.Records[v.Name], want.Records[v.Name])
		}
	}
	for pid := range got.Comm {
		if _, ok := want.Comm[pid]; !ok && !(want.toolsAfter && strings.HasPrefix(got.Comm[pid], "kworker/")) {
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

func equalView(t *testing.T, name string, got, want any) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s differs:\n view  %+v\n guest %+v", name, got, want)
	}
}

// nearViews compare the views that move between the capture in the guest and the pause.
var nearViews = map[string]func(t *testing.T, got, want *viewSet){
	inspect.InterfaceView.Name: compareInterfaces,
	inspect.UptimeView.Name:    compareUptime,
	inspect.MeminfoView.Name:   compareMeminfo,
}

// compareInterfaces: interface counters only grow between the capture and the pause (a fresh
// interface still sends IPv6 router solicitations); everything else is equal.
func compareInterfaces(t *testing.T, got, want *viewSet) {
	t.Helper()
	gi, wi := records(got, inspect.InterfaceView), records(want, inspect.InterfaceView)
	gi.Interfaces = slices.Clone(gi.Interfaces)
	for i := range gi.Interfaces {
		if i >= len(wi.Interfaces) {
			break
		}
		g, w := &gi.Interfaces[i], wi.Interfaces[i]
		if g.TxPackets >= w.TxPackets && g.TxPackets-w.TxPackets <= 4 && g.TxBytes >= w.TxBytes &&
			g.RxPackets >= w.RxPackets && g.RxPackets-w.RxPackets <= 4 && g.RxBytes >= w.RxBytes {
			g.TxPackets, g.TxBytes, g.RxPackets, g.RxBytes = w.TxPackets, w.TxBytes, w.RxPackets, w.RxBytes
		}
	}
	equalView(t, inspect.InterfaceView.Name, gi, wi)
}

// compareUptime: the view is the guest's clock at the pause: after the capture read it, and at
// most the time this machine's clock moved since the capture's last reading (the pause came in
// between; on a loaded machine attaching takes seconds). Idle time grows with each of the guest's
// two vCPUs at most. The load moves a little.
func compareUptime(t *testing.T, got, want *viewSet) {
	t.Helper()
	gu, wu := records(got, inspect.UptimeView), records(want, inspect.UptimeView)
	since := time.Since(want.lateRead).Seconds() + 0.5
	if u, w, late := gu.Uptime.Seconds, wu.Uptime.Seconds, want.lateUptime.Seconds; u < w || u > late+since {
		t.Errorf("uptime %.2f s, the guest said %.2f s during the capture and %.2f s at its end, %.2f s ago", u, w, late, since)
	}
	if u, w, late := gu.Uptime.IdleSeconds, wu.Uptime.IdleSeconds, want.lateUptime.IdleSeconds; u < w-0.5 || u > late+2*since {
		t.Errorf("idle %.2f s, the guest said %.2f s during the capture and %.2f s at its end, %.2f s ago", u, w, late, since)
	}
	gl, wl := gu.LoadAvg, wu.LoadAvg
	// The tools, when they ran in between, add runnable tasks for seconds (Load1 went from 0.55
	// to 1.09 once on a two-CPU guest) and may start kworkers.
	loadSlack, newThreads := 0.5, 0
	if want.toolsAfter {
		loadSlack, newThreads = 1.5, 5
	}
	if gl.Load1 != wl.Load1 && math.Abs(gl.Load1-wl.Load1) > loadSlack || gl.LastPID < wl.LastPID || gl.Threads < wl.Threads-5 || gl.Threads > wl.Threads+newThreads {
		t.Errorf("loadavg differs:\n view  %+v\n guest %+v", gl, wl)
	}
}

// compareMeminfo: the fields of staticMem are equal; the others move by at most what the capture
// could use.
func compareMeminfo(t *testing.T, got, want *viewSet) {
	t.Helper()
	gm, wm := records(got, inspect.MeminfoView), records(want, inspect.MeminfoView)
	wantMem := map[string]inspect.MemField{}
	for _, m := range wm {
		wantMem[m.Name] = m
	}
	var total uint64
	for _, m := range gm {
		if m.Name == "MemTotal" {
			total = m.Value
		}
	}
	if len(gm) != len(wm) {
		t.Errorf("meminfo has %d fields, the guest's %d", len(gm), len(wm))
	}
	for _, m := range gm {
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
}

func TestViewsMatchGuest(t *testing.T) {
	ctx := need(t)
	want, wantLog, self := viewTruth(t, ctx, demo)
	s, mem, before := pausedSession(t, ctx)
	start := time.Now()
	got, err := readViews(s, self)
	var gotLog []inspect.LogLine
	if err == nil {
		gotLog, _, err = inspect.KernelLogView.ReadTyped(s, 0)
	}
	elapsed := time.Since(start)
	unknown := s.Globals.Unknown()
	closeUnchanged(t, ctx, s, mem, before, err)
	compareViews(t, got, want, gotLog, wantLog)
	mods := map[string]bool{}
	for _, m := range records(got, inspect.ModuleView) {
		mods[m.Name] = true
	}
	for _, m := range guest.DemoModules {
		if !mods[m] {
			t.Errorf("module %s missing from lsmod", m)
		}
	}
	ports := map[string]bool{}
	for _, so := range records(got, inspect.SocketView) {
		if len(so.PIDs) > 0 && (so.State == "LISTEN" || so.Proto == "udp") {
			ports[so.Local[strings.LastIndexByte(so.Local, ':')+1:]] = true
		}
	}
	for _, p := range []int{guest.DemoPorts.HTTP, guest.DemoPorts.Echo, guest.DemoPorts.Telnet, guest.DemoPorts.UDP} {
		if !ports[strconv.Itoa(p)] {
			t.Errorf("listener on port %d with its process missing from netstat", p)
		}
	}
	if arp := records(got, inspect.NeighbourView); len(arp) == 0 || arp[0].IP != guest.DemoNet.Neighbour {
		t.Errorf("arp: %+v, want the demo's static entry %s", arp, guest.DemoNet.Neighbour)
	}
	t.Logf("all views in %v (%d processes' environments and open files, %d log lines); unknown globals: %v",
		elapsed.Round(time.Millisecond), len(got.ByPID[inspect.EnvironView.Name]), len(gotLog), unknown)
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
		gotLog, _, err = inspect.KernelLogView.ReadTyped(s, 0)
	}
	unknown := s.Globals.Unknown()
	closeUnchanged(t, ctx, s, mem, before, err)
	compareViews(t, got, want, gotLog, wantLog)
	var names []string
	mods := records(got, inspect.ModuleView)
	for _, m := range mods {
		names = append(names, m.Name)
	}
	if !slices.Contains(names, add) || slices.Contains(names, del) {
		t.Errorf("lsmod %v after loading %s and removing %s", names, add, del)
	}
	seen := 0
	socks := records(got, inspect.SocketView)
	for _, so := range socks {
		for p := range ports {
			if strings.HasSuffix(so.Local, ":"+strconv.Itoa(p)) && so.State == "LISTEN" {
				seen++
			}
		}
	}
	if seen != len(ports) {
		t.Errorf("%d of %d random listeners in netstat", seen, len(ports))
	}
	t.Logf("%d sockets, %d modules, %d processes compared; unknown globals: %v", len(socks), len(mods), len(got.Comm), unknown)
	if len(unknown) > 0 {
		t.Errorf("globals in neither list were used: %v", unknown)
	}
	// The same randomized guest through every engine mode.
	modesAgree(t, ctx)
}

// BenchmarkViews reports, per view of inspect.Views on the demo guest (the per-process ones on
// init), the cold run (a fresh session: nothing
// translated or decoded yet) and warm runs: time, system calls, instructions executed with
// taint, and kernel-image accesses redirected to the guest.
func BenchmarkViews(b *testing.B) {
	if setupErr != nil {
		b.Fatalf("setup: %v", setupErr)
	}
	ctx := context.Background()
	pid := 1
	for _, v := range inspect.Views {
		run := func(s *Session) error { _, _, err := v.Read(s, pid); return err }
		b.Run(v.Name, func(b *testing.B) {
			start := time.Now()
			s, err := Attach(ctx, demo, snap, syms)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close(ctx)
			if err := run(s); err != nil {
				b.Fatal(err)
			}
			cold := time.Since(start)
			s.Taint.Drain()
			st0, insns0, red0 := s.Machine.Stats(), s.Taint.Stats().Instructions, s.Counts.Redirect
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := run(s); err != nil {
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
			b.ReportMetric(float64(s.Counts.Redirect-red0)/n, "redirected/op")
		})
	}
}
