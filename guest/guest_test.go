package guest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"hybridbridge/vmm"
)

// One demo guest serves every test of the package: booting is the slow part.
var (
	demo     *Guest
	assets   *Assets
	demoImg  *Image
	runDir   string
	setupErr error
)

func TestMain(m *testing.M) {
	if os.Getenv("HB_CRASH_CHILD") != "" {
		crashChild()
		return
	}
	code := func() int {
		dir, err := os.MkdirTemp("", "hbguest-test")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		runDir = dir
		cache, err := FindCacheDir()
		if err == nil {
			assets, err = LoadAssets(cache)
		}
		if err == nil {
			demoImg, err = BuildDemoImage(assets)
		}
		if err == nil {
			demo, err = Start(context.Background(), Config{Name: "demo", MemMiB: 512, Image: demoImg, RunDir: runDir})
		}
		if err != nil {
			// Every test needs the guest; they fail with this reason rather than skip.
			setupErr = err
			return m.Run()
		}
		defer demo.Stop(context.Background())
		return m.Run()
	}()
	os.Exit(code)
}

func needDemo(t *testing.T) *Guest {
	t.Helper()
	if setupErr != nil {
		t.Fatalf("demo guest did not start: %v", setupErr)
	}
	t.Cleanup(func() { resumeIfPaused(t, demo) })
	return demo
}

// resumeIfPaused gives the next test a running guest even when this one stopped (failed) between
// a pause and its resume.
func resumeIfPaused(t *testing.T, g *Guest) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resumed, err := g.ResumeIfPaused(ctx)
	if err != nil {
		t.Errorf("guest %s after the test: %v", g.Meta.Name, err)
	} else if resumed {
		t.Logf("the test left guest %s paused; resumed it", g.Meta.Name)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestExecOutputAndStatus(t *testing.T) {
	g := needDemo(t)
	ctx := ctxT(t)
	cases := []struct {
		command        string
		stdout, stderr string
		status         int
	}{
		{"echo hello", "hello\n", "", 0},
		{"echo out; echo err >&2; exit 3", "out\n", "err\n", 3},
		{"false", "", "", 1},
		{"kill -9 $$", "", "", 128 + 9},
		{"printf 'a\\tb\\r\\nc\\000d'", "a\tb\r\nc\x00d", "", 0},
		{"no-such-command", "", "/bin/sh: no-such-command: not found\n", 127},
	}
	for _, c := range cases {
		res, err := g.Exec(ctx, c.command)
		if err != nil {
			t.Fatalf("%q: %v", c.command, err)
		}
		if string(res.Stdout) != c.stdout || string(res.Stderr) != c.stderr || res.Status != c.status {
			t.Errorf("%q: got stdout %q stderr %q status %d; want %q %q %d",
				c.command, res.Stdout, res.Stderr, res.Status, c.stdout, c.stderr, c.status)
		}
	}
}

func TestExecLargeOutput(t *testing.T) {
	g := needDemo(t)
	// 1 MiB of known bytes survives the serial line intact.
	res, err := g.Exec(ctxT(t), "seq 1 150000")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(res.Stdout), "\n"), "\n")
	if len(lines) != 150000 || lines[0] != "1" || lines[149999] != "150000" {
		t.Fatalf("got %d lines, first %q last %q", len(lines), lines[0], lines[len(lines)-1])
	}
	for i, l := range lines {
		if l != strconv.Itoa(i+1) {
			t.Fatalf("line %d is %q", i+1, l)
		}
	}
}

func TestProcVersion(t *testing.T) {
	g := needDemo(t)
	res, err := g.Exec(ctxT(t), "cat /proc/version")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(res.Stdout), "Linux version "+assets.Release+" ") {
		t.Fatalf("/proc/version = %q, want the kernel %s", res.Stdout, assets.Release)
	}
}

func TestWorkloadProcesses(t *testing.T) {
	g := needDemo(t)
	res, err := g.Exec(ctxT(t), "cat /proc/[0-9]*/comm")
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]int{}
	for _, c := range strings.Fields(string(res.Stdout)) {
		have[c]++
	}
	for _, name := range DemoProcesses {
		if have[name] == 0 {
			t.Errorf("process %q is not running in the guest (have %v)", name, keys(have))
		}
	}
	if have["hb-child"] != 3 {
		t.Errorf("want 3 hb-child processes, have %d", have["hb-child"])
	}
	// The stopped process and the non-root one.
	res, err = g.Exec(ctxT(t), `for p in /proc/[0-9]*; do echo "$(cat $p/comm) $(awk '/^State/{print $2}' $p/status) $(awk '/^Uid/{print $2}' $p/status)"; done`)
	if err != nil {
		t.Fatal(err)
	}
	var stopped, analyst bool
	for _, l := range strings.Split(string(res.Stdout), "\n") {
		f := strings.Fields(l)
		if len(f) == 3 && f[0] == "hb-stopped" && f[1] == "T" {
			stopped = true
		}
		if len(f) == 3 && f[0] == "sleep" && f[2] == "1000" {
			analyst = true
		}
	}
	if !stopped || !analyst {
		t.Errorf("stopped hb-stopped: %v, sleep as uid 1000: %v\n%s", stopped, analyst, res.Stdout)
	}
}

// procNetPorts parses /proc/net/{tcp,udp}[6] text into "port/state" entries (state in hex).
func procNetPorts(text string) map[string]bool {
	out := map[string]bool{}
	for _, l := range strings.Split(text, "\n")[1:] {
		f := strings.Fields(l)
		if len(f) < 4 {
			continue
		}
		_, portHex, _ := strings.Cut(f[1], ":")
		port, err := strconv.ParseUint(portHex, 16, 16)
		if err != nil {
			continue
		}
		out[fmt.Sprintf("%d/%s", port, f[3])] = true
	}
	return out
}

func TestWorkloadSockets(t *testing.T) {
	g := needDemo(t)
	res, err := g.Exec(ctxT(t), "cat /proc/net/tcp /proc/net/tcp6")
	if err != nil {
		t.Fatal(err)
	}
	tcp := procNetPorts(strings.ReplaceAll(string(res.Stdout), "  sl", "\n  sl"))
	const listen, established = "0A", "01"
	for _, p := range []int{DemoPorts.HTTP, DemoPorts.Echo, DemoPorts.Telnet} {
		if !tcp[fmt.Sprintf("%d/%s", p, listen)] {
			t.Errorf("no TCP listener on %d: %v", p, tcp)
		}
	}
	if !tcp[fmt.Sprintf("%d/%s", DemoPorts.Echo, established)] {
		t.Errorf("no established connection to port %d: %v", DemoPorts.Echo, tcp)
	}
	res, err = g.Exec(ctxT(t), "cat /proc/net/udp")
	if err != nil {
		t.Fatal(err)
	}
	if udp := procNetPorts(string(res.Stdout)); !udp[fmt.Sprintf("%d/07", DemoPorts.UDP)] {
		t.Errorf("no UDP socket on %d: %v", DemoPorts.UDP, udp)
	}
}

func TestWorkloadModules(t *testing.T) {
	g := needDemo(t)
	res, err := g.Exec(ctxT(t), "cat /proc/modules")
	if err != nil {
		t.Fatal(err)
	}
	loaded := map[string]bool{}
	for _, l := range strings.Split(string(res.Stdout), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			loaded[f[0]] = true
		}
	}
	for _, m := range DemoModules {
		if !loaded[m] {
			t.Errorf("module %s not loaded: %s", m, res.Stdout)
		}
	}
}

func TestBannerFromOutside(t *testing.T) {
	g := needDemo(t)
	ctx := ctxT(t)
	k, err := g.OpenKernel(ctx, assets.CacheDir)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	res, err := g.Exec(ctx, "cat /proc/version")
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	banner, addr, err := k.ReadSymbolString("linux_banner", 4096)
	if rerr := g.Resume(ctx); rerr != nil {
		t.Fatal(rerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	if banner != string(res.Stdout) {
		t.Fatalf("linux_banner at %#x read from outside:\n%q\n/proc/version inside:\n%q", addr, banner, res.Stdout)
	}
	// A symbol the guest does not have is an error, not zeros.
	if _, _, err := k.ReadSymbol("no_such_symbol_here", 8); err == nil {
		t.Fatal("reading an unknown symbol succeeded")
	}
}

func TestPausedMemoryIsStill(t *testing.T) {
	g := needDemo(t)
	ctx := ctxT(t)
	mem, err := g.Memory()
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	if err := g.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := g.Status(ctx)
	if err != nil || st != "paused" {
		g.Resume(ctx)
		t.Fatalf("status after pause: %q %v", st, err)
	}
	h1, err1 := vmm.Hash(ctx, mem)
	time.Sleep(300 * time.Millisecond)
	h2, err2 := vmm.Hash(ctx, mem)
	if err := g.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	if h1 != h2 {
		t.Fatalf("guest memory changed while paused: %s then %s", h1, h2)
	}
	// The hash does see a running guest change (its clock ticks), so equality above means something.
	time.Sleep(300 * time.Millisecond)
	h3, err := vmm.Hash(ctx, mem)
	if err != nil {
		t.Fatal(err)
	}
	if h3 == h1 {
		t.Fatal("memory hash did not change while the guest ran")
	}
}

func TestCPUState(t *testing.T) {
	g := needDemo(t)
	cpu, err := g.CPU(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	// Long mode with paging: CR0.PG, CR4.PAE, EFER.LMA.
	if cpu.CR0&(1<<31) == 0 || cpu.CR4&(1<<5) == 0 || cpu.EFER&(1<<10) == 0 || cpu.CR3 == 0 {
		t.Fatalf("not a 64-bit paging state: %+v", cpu)
	}
}

// qemuAlive reports whether pid is a live (not zombie) process.
func qemuAlive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, rest, ok := strings.Cut(string(data), ") ")
	return ok && !strings.HasPrefix(rest, "Z") && !strings.HasPrefix(rest, "X")
}

func waitDead(pid int, d time.Duration) bool {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if !qemuAlive(pid) {
			return true
		}
	}
	return false
}

func TestStopLeavesNothing(t *testing.T) {
	needDemo(t)
	ctx := ctxT(t)
	g, err := Start(ctx, Config{Name: "stopme", MemMiB: 128, Image: demoImg, RunDir: runDir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(g.Meta.RAMFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("RAM file %s still has a name while the guest runs: %v", g.Meta.RAMFile, err)
	}
	if _, err := g.RAMPath(); err != nil {
		t.Errorf("RAM not reachable through QEMU: %v", err)
	}
	other, err := Open(runDir, "stopme")
	if err != nil {
		t.Fatalf("another process would not find the guest: %v", err)
	}
	if _, err := Start(ctx, Config{Name: "stopme", MemMiB: 128, Image: demoImg, RunDir: runDir}); err == nil {
		t.Fatal("a second guest with the same name started")
	}
	if err := other.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if !waitDead(g.Meta.PID, 5*time.Second) {
		t.Errorf("QEMU pid %d still running after stop", g.Meta.PID)
	}
	if _, err := os.Stat(g.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("guest folder left behind: %v", err)
	}
	if _, err := Open(runDir, "stopme"); !errors.Is(err, ErrNotRunning) {
		t.Errorf("stopped guest still opens: %v", err)
	}
	assertNoRAMFiles(t, "stopme")
}

func assertNoRAMFiles(t *testing.T, name string) {
	t.Helper()
	files, _ := filepath.Glob("/dev/shm/" + shmPrefix + name + "-*")
	if len(files) > 0 {
		t.Errorf("shared-memory files left behind: %v", files)
	}
}

// crashChild is the test binary re-run as a child that boots a guest and then waits to be killed.
func crashChild() {
	img := &Image{Path: os.Getenv("HB_CRASH_IMAGE"), Kernel: os.Getenv("HB_CRASH_KERNEL"), Append: CommonArgs + " quiet"}
	g, err := Start(context.Background(), Config{Name: "crash", MemMiB: 128, Image: img, RunDir: os.Getenv("HB_CRASH_RUN")})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Printf("pid %d\n", g.Meta.PID)
	time.Sleep(time.Hour)
}

func TestCrashLeavesNothing(t *testing.T) {
	needDemo(t)
	for _, when := range []string{"after boot", "during boot"} {
		t.Run(strings.ReplaceAll(when, " ", "-"), func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "HB_CRASH_CHILD=1", "HB_CRASH_IMAGE="+demoImg.Path,
				"HB_CRASH_KERNEL="+demoImg.Kernel, "HB_CRASH_RUN="+runDir)
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var pid int
			if when == "after boot" {
				var word string
				if _, err := fmt.Fscan(out, &word, &pid); err != nil || word != "pid" {
					cmd.Process.Kill()
					cmd.Wait()
					t.Fatalf("child did not boot a guest: %q %v", word, err)
				}
			} else {
				// Wait until QEMU exists, then kill the child before the guest is ready.
				for end := time.Now().Add(10 * time.Second); pid == 0 && time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
					pid = findQEMU("crash")
				}
				if pid == 0 {
					cmd.Process.Kill()
					cmd.Wait()
					t.Fatal("child never started QEMU")
				}
			}
			_ = cmd.Process.Signal(syscall.SIGKILL)
			_ = cmd.Wait()
			if !waitDead(pid, 5*time.Second) {
				syscall.Kill(pid, syscall.SIGKILL)
				t.Fatalf("QEMU pid %d outlived its killed parent", pid)
			}
			// A RAM file orphaned during boot is removed by the next start's sweep.
			sweepStaleRAM()
			assertNoRAMFiles(t, "crash")
			os.RemoveAll(guestDir(runDir, "crash"))
		})
	}
}

func findQEMU(name string) int {
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, d := range dirs {
		data, err := os.ReadFile(d)
		if err == nil && strings.Contains(string(data), "hybridbridge-"+name+"\x00") {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(d)))
			return pid
		}
	}
	return 0
}

func TestErrors(t *testing.T) {
	needDemo(t)
	ctx := ctxT(t)
	if _, err := Open(runDir, "nosuch"); !errors.Is(err, ErrNotRunning) {
		t.Errorf("open unknown guest: %v", err)
	}
	if _, err := Start(ctx, Config{Name: "Bad Name", MemMiB: 128, Image: demoImg, RunDir: runDir}); err == nil {
		t.Error("bad name accepted")
	}
	if g, err := Start(ctx, Config{Name: "big", MemMiB: 32 << 10, Image: demoImg, RunDir: runDir}); err == nil {
		g.Stop(ctx)
		t.Error("32 GiB accepted")
	} else if !strings.Contains(err.Error(), "out of range") {
		t.Errorf("32 GiB: %v", err)
	}
	// A kernel that does not boot reports the console tail, quickly.
	broken := *demoImg
	broken.Append = CommonArgs + " init=/nonexistent rdinit=/nonexistent"
	_, err := Start(ctx, Config{Name: "broken", MemMiB: 128, Image: &broken, RunDir: runDir, Timeout: 60 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "console tail") {
		t.Errorf("broken boot: %v", err)
	}
	if pid := findQEMU("broken"); pid != 0 {
		t.Errorf("QEMU pid %d left after failed boot", pid)
	}
	assertNoRAMFiles(t, "broken")
}

func keys(m map[string]int) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// BenchmarkBoot measures QEMU start to the demo workload answering on the command channel, and
// reports the median over b.N boots (run with -benchtime=5x).
func BenchmarkBoot(b *testing.B) {
	if setupErr != nil {
		b.Fatalf("demo guest did not start: %v", setupErr)
	}
	ctx := context.Background()
	var times []float64
	for i := 0; i < b.N; i++ {
		g, err := Start(ctx, Config{Name: "bench", MemMiB: 512, Image: demoImg, RunDir: runDir})
		if err != nil {
			b.Fatal(err)
		}
		times = append(times, g.Meta.ReadyIn)
		if err := g.Stop(ctx); err != nil {
			b.Fatal(err)
		}
	}
	sort.Float64s(times)
	b.ReportMetric(times[len(times)/2], "s/boot-median")
	b.ReportMetric(times[0], "s/boot-min")
	b.ReportMetric(times[len(times)-1], "s/boot-max")
}

func TestPausedGuestIsResumedAfterTest(t *testing.T) {
	g := needDemo(t)
	t.Run("pauses and stops", func(t *testing.T) {
		// What a test that fails between Pause and Resume does.
		needDemo(t)
		if err := g.Pause(ctxT(t)); err != nil {
			t.Fatal(err)
		}
	})
	if st, err := g.Status(ctxT(t)); err != nil || st != "running" {
		t.Fatalf("guest %q after a test left it paused (%v)", st, err)
	}
}

// sleepers is the background work of the tests below: a sleep no workload process uses, so they
// can be counted and killed without touching the workload's own sleeps.
const sleepers = `ps -o pid,args | awk '$2 == "sleep" && $3 == "9000" && NF == 3 {print $1}'`

func killSleepers(t *testing.T, g *Guest) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := g.Exec(ctx, "pids=$("+sleepers+"); [ -z \"$pids\" ] || kill $pids; sleep 1; "+sleepers+" | wc -l")
	if err != nil {
		t.Errorf("kill the background sleeps: %v", err)
		return
	}
	if left := strings.TrimSpace(string(res.Stdout)); res.Status != 0 || left != "0" {
		t.Errorf("background sleeps left after kill: %s (status %d, %s)", left, res.Status, res.Stderr)
	}
}

// TestExecReturnsWhenShellExits: a command that leaves processes behind which hold its output
// open completes when its shell exits, and the channel goes on serving commands.
func TestExecReturnsWhenShellExits(t *testing.T) {
	g := needDemo(t)
	t.Cleanup(func() { killSleepers(t, g) })
	ctx, cancel := context.WithTimeout(ctxT(t), 2*time.Minute)
	defer cancel()
	start := time.Now()
	// More output than a pipe holds, after the background processes have started: all of it
	// arrives although they keep the pipes open.
	res, err := g.Exec(ctx, "for i in $(seq 900); do (sleep 9000 &); done; seq 50000; echo warn >&2; exit 5")
	if err != nil {
		t.Fatalf("command with background processes: %v", err)
	}
	var want strings.Builder
	for i := 1; i <= 50000; i++ {
		fmt.Fprintln(&want, i)
	}
	if string(res.Stdout) != want.String() || string(res.Stderr) != "warn\n" || res.Status != 5 {
		t.Fatalf("got %d bytes of stdout (want %d), stderr %q, status %d", len(res.Stdout), want.Len(), res.Stderr, res.Status)
	}
	t.Logf("900 background processes started in %v", time.Since(start).Round(time.Millisecond))
	ctx, cancel = context.WithTimeout(ctxT(t), 30*time.Second)
	defer cancel()
	res, err = g.Exec(ctx, sleepers+" | wc -l")
	if err != nil {
		t.Fatalf("the next command: %v", err)
	}
	if n := strings.TrimSpace(string(res.Stdout)); n != "900" {
		t.Fatalf("%s background sleeps, want 900 (stderr %q)", n, res.Stderr)
	}
}

// TestExecConcurrent: commands sent together on one connection run at the same time, and each
// gets its own reply. Every command waits until all have started, so commands run one after
// another would never finish.
func TestExecConcurrent(t *testing.T) {
	g := needDemo(t)
	ctx, cancel := context.WithTimeout(ctxT(t), 90*time.Second)
	defer cancel()
	ch, err := DialChannel(ctx, g.ChannelSocket())
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	const n = 6
	dir := fmt.Sprintf("/tmp/hb-concurrent-%d", time.Now().UnixNano())
	results := make([]*Result, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = ch.Exec(ctx, fmt.Sprintf(`mkdir -p %[1]s; touch %[1]s/%[2]d
for try in $(seq 600); do [ $(ls %[1]s | wc -l) -ge %[3]d ] && break; usleep 50000; done
[ $(ls %[1]s | wc -l) -ge %[3]d ] || exit 99
seq %[2]d; echo err-%[2]d >&2; exit %[2]d`, dir, i+1, n))
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Errorf("command %d: %v", i+1, errs[i])
			continue
		}
		r := results[i]
		var want strings.Builder
		for k := 1; k <= i+1; k++ {
			fmt.Fprintln(&want, k)
		}
		if string(r.Stdout) != want.String() || string(r.Stderr) != fmt.Sprintf("err-%d\n", i+1) || r.Status != i+1 {
			t.Errorf("command %d: stdout %q stderr %q status %d", i+1, r.Stdout, r.Stderr, r.Status)
		}
	}
	rmCtx, rmCancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer rmCancel()
	if _, err := ch.Exec(rmCtx, "rm -rf "+dir); err != nil {
		t.Error(err)
	}
}

// BenchmarkExec measures the command channel: a trivial command's round trip (a fresh connection
// each, as Guest.Exec makes), and moving a large output (the guest's compressed kallsyms) through
// it.
func BenchmarkExec(b *testing.B) {
	if setupErr != nil {
		b.Fatalf("demo guest did not start: %v", setupErr)
	}
	ctx := context.Background()
	b.Run("true", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if res, err := demo.Exec(ctx, "true"); err != nil || res.Status != 0 {
				b.Fatalf("true: %v %+v", err, res)
			}
		}
	})
	b.Run("kallsyms.gz", func(b *testing.B) {
		var n int
		for i := 0; i < b.N; i++ {
			res, err := demo.Exec(ctx, "gzip -c /proc/kallsyms")
			if err != nil || res.Status != 0 {
				b.Fatalf("gzip -c /proc/kallsyms: %v", err)
			}
			n = len(res.Stdout)
		}
		b.ReportMetric(float64(n)/1e3, "kB-out")
	})
}
