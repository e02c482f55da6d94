package svm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"hybridbridge/emu"
	"hybridbridge/guest"
)

// blocking are the entries where the bridge stops a call that sleeps (bridge.BlockingEntries).
var blocking = []string{"__switch_to_asm", "default_idle"}

// One snapshot, built from a real SVM boot, serves the package.
var (
	snap     *Snapshot
	assets   *guest.Assets
	buildErr error
)

func TestMain(m *testing.M) {
	code := func() int {
		runDir, err := os.MkdirTemp("", "hbsvm-test")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(runDir)
		cache, err := guest.FindCacheDir()
		if err == nil {
			assets, err = guest.LoadAssets(cache)
		}
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			start := time.Now()
			// A private folder: other test packages may use the cached snapshot meanwhile.
			snap, err = Build(ctx, assets, BuildOptions{CacheDir: cache, RunDir: runDir, OutDir: runDir + "/snapshot", KeepSymbols: blocking})
			fmt.Printf("svm: snapshot built in %.1fs\n", time.Since(start).Seconds())
		}
		buildErr = err
		return m.Run()
	}()
	os.Exit(code)
}

// open loads the snapshot as the bridge does, with a call that sleeps stopped at the blocking
// entries unless opts names others.
func open(t testing.TB, opts Options) *Machine {
	t.Helper()
	if buildErr != nil {
		t.Fatalf("SVM snapshot build failed: %v", buildErr)
	}
	if opts.Blocking == nil {
		opts.Blocking = blocking
	}
	m, err := Open(snap, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestGetpidIsTheAgent(t *testing.T) {
	m := open(t, Options{})
	pid, err := m.Syscall(SysGetpid)
	if err != nil {
		t.Fatal(err)
	}
	if int(pid) != snap.Agent.PID {
		t.Fatalf("getpid = %d, the agent is %d", pid, snap.Agent.PID)
	}
	// getppid is the marker call itself: the agent's parent is the shell that started it.
	if ppid, err := m.Syscall(SysGetppid); err != nil || ppid <= 0 || int(ppid) == snap.Agent.PID {
		t.Fatalf("getppid = %d, %v", ppid, err)
	}
}

func TestProcVersionIsTheBootBanner(t *testing.T) {
	m := open(t, Options{})
	data, err := m.ReadFile("/proc/version")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(data)); got != snap.Banner {
		t.Fatalf("/proc/version = %q\nboot banner  = %q", got, snap.Banner)
	}
	if !strings.Contains(snap.Banner, assets.Release) {
		t.Fatalf("banner %q is not the kernel %s", snap.Banner, assets.Release)
	}
}

func TestLsProcMatchesCapture(t *testing.T) {
	m := open(t, Options{})
	ents, err := m.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	names := map[string]bool{}
	for _, e := range ents {
		names[e.Name] = true
		if pid, err := strconv.Atoi(e.Name); err == nil {
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	want := slices.Clone(snap.PIDs)
	slices.Sort(want)
	if !slices.Equal(pids, want) {
		t.Fatalf("injected /proc listing %v\ncaptured in the SVM      %v", pids, want)
	}
	for _, n := range []string{"self", "version", "modules", "net"} {
		if !names[n] {
			t.Errorf("/proc lacks %q", n)
		}
	}
}

func TestProcStatParses(t *testing.T) {
	m := open(t, Options{})
	data, err := m.ReadFile("/proc/1/stat")
	if err != nil {
		t.Fatal(err)
	}
	// pid (comm) state ppid ...: 52 fields on 6.1.
	s := string(data)
	open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || close < open {
		t.Fatalf("no comm in %q", s)
	}
	fields := strings.Fields(s[close+1:])
	if strings.TrimSpace(s[:open]) != "1" || s[open+1:close] != "init" || len(fields) != 50 || fields[1] != "0" {
		t.Fatalf("/proc/1/stat = %q (%d fields after comm)", s, len(fields))
	}
}

func TestPreadRepeatedIsStable(t *testing.T) {
	m := open(t, Options{})
	fd, err := m.Open("/proc/1/stat", oRDONLY)
	if err != nil {
		t.Fatal(err)
	}
	first, err := m.Pread(fd, 4096, 0)
	if err != nil || len(first) == 0 {
		t.Fatalf("pread: %q %v", first, err)
	}
	for i := 0; i < 2000; i++ {
		got, err := m.Pread(fd, 4096, 0)
		if err != nil {
			t.Fatalf("pread %d: %v", i, err)
		}
		if !bytes.Equal(got, first) {
			t.Fatalf("pread %d = %q, first was %q", i, got, first)
		}
	}
}

func TestBlockingCallsStopAndReset(t *testing.T) {
	m := open(t, Options{})
	err := sleepOneSecond(t, m)
	var se *StopError
	if !errors.Is(err, ErrBlocked) || !errors.As(err, &se) {
		t.Fatalf("nanosleep: %v, want ErrBlocked", err)
	}
	t.Logf("nanosleep: %v", err)
	if pid, err := m.Syscall(SysGetpid); err != nil || int(pid) != snap.Agent.PID {
		t.Fatalf("getpid after a blocked call: %d, %v", pid, err)
	}

	// read() of an empty pipe.
	va := snap.Agent.Buffer + 8192
	if ret, err := m.Syscall(SysPipe2, va, 0); err != nil || ret != 0 {
		t.Fatalf("pipe2: %d %v", ret, err)
	}
	fds := make([]byte, 8)
	if err := m.ReadVirt(va, fds); err != nil {
		t.Fatal(err)
	}
	readEnd := binary.LittleEndian.Uint32(fds)
	if _, err := m.Syscall(SysRead, uint64(readEnd), va+64, 16); !errors.Is(err, ErrBlocked) {
		t.Fatalf("read of an empty pipe: %v, want ErrBlocked", err)
	}
	if data, err := m.ReadFile("/proc/version"); err != nil || !strings.HasPrefix(string(data), "Linux version") {
		t.Fatalf("after a blocked read: %q %v", data, err)
	}
	if st := m.Stats(); st.Blocked != 2 || st.Resets != 2 {
		t.Fatalf("stats %+v, want 2 blocked and 2 resets", st)
	}
}

// TestBudgetOverrun: the budget counts instructions, so the stop is checked by counts; how long
// it took depends on the host and is only logged.
func TestBudgetOverrun(t *testing.T) {
	m := open(t, Options{Unicorn: &UnicornOptions{Budget: 2000}})
	start := time.Now()
	_, err := m.ReadFile("/proc/1/stat")
	if !errors.Is(err, ErrBudget) {
		t.Fatalf("2000-instruction budget: %v, want ErrBudget", err)
	}
	t.Logf("budget stop after %v", time.Since(start))
	if st := m.Stats(); st.OverBudget != 1 || st.Resets != 1 {
		t.Fatalf("stats %+v, want 1 over budget and 1 reset", st)
	}
	// A trivial call fits the same budget after the automatic reset.
	if pid, err := m.Syscall(SysGetpid); err != nil || int(pid) != snap.Agent.PID {
		t.Fatalf("getpid after overrun: %d %v", pid, err)
	}
}

func TestHookPanicIsAnError(t *testing.T) {
	m := open(t, Options{})
	entry := snap.Symbols["do_syscall_64"]
	h, err := m.Engine().HookCode(entry, entry, func(uint64, uint32) { panic("boom") })
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Syscall(SysGetpid)
	var hp *emu.HookPanicError
	if !errors.Is(err, ErrFault) || !errors.As(err, &hp) && !strings.Contains(err.Error(), "boom") {
		t.Fatalf("panicking hook: %v", err)
	}
	if err := m.Engine().HookDel(h); err != nil {
		t.Fatal(err)
	}
	if pid, err := m.Syscall(SysGetpid); err != nil || int(pid) != snap.Agent.PID {
		t.Fatalf("getpid after the panic: %d %v", pid, err)
	}
}

func TestNotAllowed(t *testing.T) {
	m := open(t, Options{})
	for _, nr := range []int{59 /* execve */, 62 /* kill */, 44 /* sendto */, 87 /* unlink */, 169 /* reboot */} {
		if _, err := m.Syscall(nr); !errors.Is(err, ErrNotAllowed) {
			t.Errorf("syscall %d: %v, want ErrNotAllowed", nr, err)
		}
	}
}

func TestResetDropsChanges(t *testing.T) {
	m := open(t, Options{})
	fd1, err := m.Open("/proc/version", oRDONLY)
	if err != nil {
		t.Fatal(err)
	}
	fd2, err := m.Open("/proc/version", oRDONLY)
	if err != nil || fd2 == fd1 {
		t.Fatalf("second open: %d %v (first %d)", fd2, err, fd1)
	}
	if err := m.Reset(); err != nil {
		t.Fatal(err)
	}
	fd3, err := m.Open("/proc/version", oRDONLY)
	if err != nil || fd3 != fd1 {
		t.Fatalf("open after reset: %d %v, want the first descriptor %d again", fd3, err, fd1)
	}
}

// uptime is the SVM's clock as a reader of /proc/uptime sees it, in seconds.
func uptime(t *testing.T, m *Machine) float64 {
	t.Helper()
	data, err := m.ReadFile("/proc/uptime")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(data))
	if len(f) != 2 {
		t.Fatalf("/proc/uptime %q", data)
	}
	up, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		t.Fatal(err)
	}
	return up
}

func TestClockContinuesTheGuests(t *testing.T) {
	// The virtual clock advances with the host's time since the machine opened, so the bounds
	// below are host time measured around the reads, never a guess at how long a read takes.
	opened := time.Now()
	m := open(t, Options{})
	read := func() float64 { return uptime(t, m) }
	first := time.Now()
	u1 := read()
	const pause = 500 * time.Millisecond
	time.Sleep(pause)
	u2 := read()
	last := time.Now()
	sinceOpen, across := last.Sub(opened), last.Sub(first)
	t.Logf("uptime %.2f -> %.2f; the SVM said %.2f before the capture; host: %v since open, %v across both reads",
		u1, u2, snap.UptimeBeforeCapture, sinceOpen.Round(time.Millisecond), across.Round(time.Millisecond))
	// It continues from the SVM's own clock at the capture, neither from zero nor from the host's
	// uptime. The slack covers the SVM's time between its uptime read and the capture, spent
	// while the snapshot was built.
	if u1 < snap.UptimeBeforeCapture || u1 > snap.UptimeBeforeCapture+sinceOpen.Seconds()+60 {
		t.Fatalf("first uptime %.2f; the SVM said %.2f before the capture, opened %v ago", u1, snap.UptimeBeforeCapture, sinceOpen)
	}
	// It runs at the host's pace: at least the pause, at most the host time across both reads
	// (give or take /proc/uptime's 10 ms steps).
	if d := u2 - u1; d < pause.Seconds()-0.02 || d > across.Seconds()+0.02 {
		t.Fatalf("uptime advanced %.2f s over a %v pause within %v of host time", d, pause, across)
	}
	if m.Stats().TSCReads == 0 {
		t.Fatal("no RDTSC went through the virtual TSC")
	}
	t.Logf("uptime %.2f -> %.2f; %d TSC reads, %d RDTSC sites hooked", u1, u2, m.Stats().TSCReads, m.exec.(*unicornExec).tscHooks)
}

func TestUname(t *testing.T) {
	m := open(t, Options{})
	va := snap.Agent.Buffer + 8192
	if ret, err := m.Syscall(SysUname, va); err != nil || ret != 0 {
		t.Fatalf("uname: %d %v", ret, err)
	}
	buf := make([]byte, 6*65)
	if err := m.ReadVirt(va, buf); err != nil {
		t.Fatal(err)
	}
	field := func(i int) string { return string(bytes.TrimRight(buf[i*65:(i+1)*65], "\x00")) }
	if field(0) != "Linux" || field(1) != "hb-svm" || field(2) != assets.Release || field(4) != "x86_64" {
		t.Fatalf("uname: %q %q %q %q", field(0), field(1), field(2), field(4))
	}
}

func TestSnapshotErrors(t *testing.T) {
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	if _, err := Load(snap.Dir(), "0123456789abcdef"); !errors.Is(err, ErrKernelMismatch) {
		t.Errorf("other kernel: %v", err)
	}
	if _, err := Load(t.TempDir(), ""); !errors.Is(err, ErrNoSnapshot) {
		t.Errorf("empty folder: %v", err)
	}
	// A copy with one flipped byte in RAM, and one with a damaged metadata file.
	dir := t.TempDir()
	meta, err := os.ReadFile(snap.Dir() + "/" + metaFile)
	if err != nil {
		t.Fatal(err)
	}
	must(t, os.WriteFile(dir+"/"+metaFile, meta, 0o644))
	must(t, copySparse(snap.RAMPath(), dir+"/"+ramFile, snap.Layout.SnapshotRanges()))
	f, err := os.OpenFile(dir+"/"+ramFile, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	_, err1 := f.ReadAt(b, int64(snap.Layout.KernelStart))
	b[0] ^= 0xff
	_, err2 := f.WriteAt(b, int64(snap.Layout.KernelStart))
	must(t, errors.Join(err1, err2, f.Close()))
	if _, err := Load(dir, snap.KernelID); !errors.Is(err, ErrSnapshotCorrupt) {
		t.Errorf("flipped RAM byte: %v", err)
	}
	must(t, os.WriteFile(dir+"/"+metaFile, meta[:len(meta)/2], 0o644))
	if _, err := Load(dir, snap.KernelID); !errors.Is(err, ErrSnapshotCorrupt) {
		t.Errorf("truncated metadata: %v", err)
	}
	must(t, os.WriteFile(dir+"/"+metaFile, bytes.Replace(meta, fmt.Appendf(nil, `"version": %d`, FormatVersion), []byte(`"version": 99`), 1), 0o644))
	if _, err := Load(dir, snap.KernelID); !errors.Is(err, ErrSnapshotFormat) {
		t.Errorf("future version: %v", err)
	}
}

func TestSnapshotFileIsNeverWritten(t *testing.T) {
	m := open(t, Options{})
	before, _, _, err := checksumRAM(snap.RAMPath())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		if _, err := m.ReadDir("/proc"); err != nil {
			t.Fatal(err)
		}
	}
	must(t, m.Reset())
	after, _, _, err := checksumRAM(snap.RAMPath())
	if err != nil {
		t.Fatal(err)
	}
	if before != after || after != snap.RAMCRC32C {
		t.Fatalf("snapshot RAM changed: %08x -> %08x", before, after)
	}
}

func TestLayoutReservesGuestRange(t *testing.T) {
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	l := snap.Layout
	if l.KernelStart < 1<<20 || l.KernelEnd <= l.KernelStart || l.KernelEnd >= l.GVMMax || l.RAMSize != l.GVMMax+512<<20 {
		t.Fatalf("layout %+v", l)
	}
	// All of the SVM's own RAM is below 1 MiB, in its kernel image, or above the guest range.
	for _, r := range l.SystemRAM {
		ok := r.End <= 1<<20 || (r.Start >= l.KernelStart&^0xfff && r.End <= (l.KernelEnd+0xfff)&^0xfff) || r.Start >= l.GVMMax
		if !ok {
			t.Errorf("SVM System RAM %#x-%#x inside the guest range", r.Start, r.End)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestResetRestoresEveryPage: after system calls that change kernel memory, Reset puts every RAM
// page back to the snapshot's bytes — on a machine with memory hooks, which lists the pages its
// code wrote, and on a plain one, which asks the kernel which pages were written (or drops all).
func TestResetRestoresEveryPage(t *testing.T) {
	for _, opts := range []UnicornOptions{{}, {Swaps: true}} {
		t.Run(fmt.Sprintf("swaps=%v", opts.Swaps), func(t *testing.T) {
			m := open(t, Options{Unicorn: &opts})
			for range 2 { // the second round resets pages the first one already made private
				if _, err := m.ReadDir("/proc"); err != nil {
					t.Fatal(err)
				}
				if _, err := m.ReadFile("/proc/self/status"); err != nil {
					t.Fatal(err)
				}
				if n := len(m.Unrestored()); n < 10 {
					t.Fatalf("only %d pages changed by the calls: the check below would prove nothing", n)
				}
				if err := m.Reset(); err != nil {
					t.Fatal(err)
				}
				if pages := m.Unrestored(); len(pages) > 0 {
					t.Fatalf("%d pages differ from the snapshot after Reset, first %#x", len(pages), pages[0])
				}
			}
			t.Logf("resets put back %d pages (0: the whole mapping was dropped)", m.Stats().ResetPages)
		})
	}
}

// TestResetRestoresRedirectedWrites: a redirected write whose guest copy lies in RAM (the guest's
// struct pages, overlaid) is undone by Reset like the SVM's own writes: a guest lock an aborted
// operation took must not be held in the next.
func TestResetRestoresRedirectedWrites(t *testing.T) {
	m := open(t, Options{Unicorn: &UnicornOptions{Swaps: true}})
	const at, copyAt = 0x300000, 0x400000 // two RAM pages: the location and its "guest copy"
	if err := m.SwapInAlias(at, m.ram[copyAt:copyAt+8], true); err != nil {
		t.Fatal(err)
	}
	// The write the hooked instruction makes (its hook marks the page).
	m.wrote(at, 8)
	binary.LittleEndian.PutUint64(m.ram[at:], 0x1122334455667788)
	m.FlushWrites()
	if got := binary.LittleEndian.Uint64(m.ram[copyAt:]); got != 0x1122334455667788 {
		t.Fatalf("the guest copy holds %#x after the write-back", got)
	}
	if err := m.Reset(); err != nil {
		t.Fatal(err)
	}
	if pages := m.Unrestored(); len(pages) > 0 {
		t.Fatalf("pages %#x differ from the snapshot after Reset", pages)
	}
}

// sleepOneSecond injects nanosleep({1, 0}), the timespec in the agent's buffer: a call that blocks.
func sleepOneSecond(t *testing.T, m *Machine) error {
	t.Helper()
	ts := make([]byte, 16)
	binary.LittleEndian.PutUint64(ts, 1)
	va := snap.Agent.Buffer + 8192
	if err := m.WriteVirt(va, ts); err != nil {
		t.Fatal(err)
	}
	_, err := m.Syscall(SysNanosleep, va, 0)
	return err
}
