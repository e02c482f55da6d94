package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"hybridbridge/decision"
	"hybridbridge/guest"
	"hybridbridge/inspect"
	"hybridbridge/memo"
)

// The tests drive the real command tree against one real guest started by `guest start`. They run
// it in-process (see run), where guests never outlive the test binary.
var (
	runDir   string
	startErr error
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(helperRunDir); dir != "" {
		// The child of TestGuestStartDiesWithTests: no shared guest of its own.
		runDir = dir
		os.Exit(m.Run())
	}
	code := func() int {
		dir, err := os.MkdirTemp("", "hbcli-test")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		runDir = dir
		// The package's own memo: views run by the tests never touch the cache's.
		if err := os.Setenv("HYBRIDBRIDGE_MEMO", filepath.Join(dir, "memo", "cli.memo")); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		_, _, startErr = run("guest", "start", "--name", "cli", "--mem", "256M")
		if startErr == nil {
			// The guest booted with KASLR: its first command builds the SVM snapshot in its
			// layout, saying so on stderr. Done here, so that no test's output depends on being
			// first.
			_, _, startErr = run("guest", "read", "cli", "linux_banner", "--string")
		}
		defer func() {
			if g, err := guest.Open(runDir, "cli"); err == nil {
				g.Stop(context.Background())
			}
		}()
		return m.Run()
	}()
	os.Exit(code)
}

// run executes one command line and returns its stdout, stderr and error. Its command tree does not
// detach the guests `guest start` boots: they die with the test binary, even when it is killed.
func run(args ...string) (string, string, error) {
	var out, errOut bytes.Buffer
	root := newRoot(&env{stdout: &out, stderr: &errOut})
	root.SetArgs(append([]string{"--run-dir", runDir}, args...))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

func needGuest(t *testing.T) {
	t.Helper()
	if startErr != nil {
		t.Fatalf("guest start failed: %v", startErr)
	}
	t.Cleanup(func() { resumeIfPaused(t) })
}

// resumeIfPaused gives the next test a running guest even when this one stopped (failed) between
// a pause and its resume.
func resumeIfPaused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	g, err := guest.Open(runDir, "cli")
	if err != nil {
		t.Errorf("after the test: %v", err)
		return
	}
	if resumed, err := g.ResumeIfPaused(ctx); err != nil {
		t.Errorf("guest after the test: %v", err)
	} else if resumed {
		t.Log("the test left the guest paused; resumed it")
	}
}

func TestGuestList(t *testing.T) {
	needGuest(t)
	out, _, err := run("guest", "list", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var rows []guest.GuestStatus
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("list --json: %v\n%s", err, out)
	}
	if len(rows) != 1 || rows[0].Name != "cli" || rows[0].State != "running" || rows[0].Meta == nil || rows[0].Meta.RAMSize != 256<<20 {
		t.Fatalf("list: %s", out)
	}
	out, _, err = run("guest", "list")
	if err != nil || !strings.Contains(out, "cli") || !strings.Contains(out, "running") {
		t.Fatalf("list table: %q %v", out, err)
	}
}

func TestGuestExec(t *testing.T) {
	needGuest(t)
	// One word is a shell command line.
	out, errOut, err := run("guest", "exec", "cli", "--", "echo hi; echo oops >&2; exit 4")
	var exit *ExitError
	if !errors.As(err, &exit) || exit.Status != 4 {
		t.Fatalf("exit status: %v", err)
	}
	if out != "hi\n" || errOut != "oops\n" {
		t.Fatalf("stdout %q stderr %q", out, errOut)
	}
	if _, _, err := run("guest", "exec", "cli", "--", "true"); err != nil {
		t.Fatalf("true: %v", err)
	}
}

// TestGuestExecArgv: several words are a program and its arguments, which reach it unchanged.
func TestGuestExecArgv(t *testing.T) {
	needGuest(t)
	_, _, err := run("guest", "exec", "cli", "--", "sh", "-c", "exit 7")
	var exit *ExitError
	if !errors.As(err, &exit) || exit.Status != 7 {
		t.Fatalf("sh -c 'exit 7': %v", err)
	}
	words := []string{"a b", "it's", `"q"`, "$HOME", "*", "", "x;y", `back\slash`, "new\nline"}
	out, errOut, err := run(append([]string{"guest", "exec", "cli", "--", "printf", `[%s]\n`}, words...)...)
	if err != nil {
		t.Fatalf("printf: %v %s", err, errOut)
	}
	var want strings.Builder
	for _, w := range words {
		fmt.Fprintf(&want, "[%s]\n", w)
	}
	if out != want.String() {
		t.Fatalf("printf of %q printed %q", words, out)
	}
	// A first word that is shell syntax unquoted is still a program's name: there is none.
	if _, _, err := run("guest", "exec", "cli", "--", "if", "true"); !errors.As(err, &exit) || exit.Status != 127 {
		t.Fatalf(`"if true": %v; want status 127 of a program named "if" not found`, err)
	}
}

func TestGuestReadBanner(t *testing.T) {
	needGuest(t)
	version, _, err := run("guest", "exec", "cli", "--", "cat", "/proc/version")
	if err != nil {
		t.Fatal(err)
	}
	banner, _, err := run("guest", "read", "cli", "linux_banner", "--string")
	if err != nil {
		t.Fatal(err)
	}
	if banner != version || !strings.HasPrefix(banner, "Linux version ") {
		t.Fatalf("read from outside %q, inside %q", banner, version)
	}
	out, _, err := run("guest", "read", "cli", "linux_banner", "--len", "13", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var j struct{ Symbol, Address, Hex string }
	if err := json.Unmarshal([]byte(out), &j); err != nil || j.Hex != fmt.Sprintf("%x", "Linux version") {
		t.Fatalf("read --json: %s %v", out, err)
	}
	// The guest boots with KASLR: the banner is somewhere in the kernel map's 1 GiB.
	if addr, err := strconv.ParseUint(strings.TrimPrefix(j.Address, "0x"), 16, 64); err != nil || addr < 0xffffffff80000000 || addr >= 0xffffffffc0000000 {
		t.Fatalf("read --json: address %s outside the kernel map (%v)", j.Address, err)
	}
	// The guest is running again afterwards.
	g, err := guest.Open(runDir, "cli")
	if err != nil {
		t.Fatal(err)
	}
	if st, err := g.Status(context.Background()); err != nil || st != "running" {
		t.Fatalf("guest left %q after read: %v", st, err)
	}
}

func TestErrorsAreOneClearLine(t *testing.T) {
	needGuest(t)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"guest", "exec", "nosuch", "--", "true"}, "not running"},
		{[]string{"guest", "read", "cli", "no_such_symbol"}, `symbol "no_such_symbol" not found`},
		{[]string{"guest", "read", "cli", "linux_banner", "--len", "0"}, "--len"},
		{[]string{"guest", "start", "--name", "x", "--mem", "lots"}, "bad memory size"},
		{[]string{"guest", "start", "--name", "x", "--mem", "8G"}, "out of range"},
		{[]string{"guest", "start", "--name", "x", "--image", "debian", "--mem", "16G"}, "out of range"},
		{[]string{"guest", "start", "--name", "x", "--image", "windows"}, "unknown image"},
		{[]string{"guest", "start", "--name", "cli"}, "already running"},
		{[]string{"guest", "stop", "nosuch"}, "not running"},
	}
	for _, c := range cases {
		_, _, err := run(c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want it to mention %q", c.args, err, c.want)
		}
	}
}

func TestDemoCommand(t *testing.T) {
	needGuest(t)
	out, _, err := run()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"demo guest ready", "/proc/version inside the guest: equal", "(twice: true)"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	// The demo guest it booted is gone again.
	if _, err := guest.Open(runDir, "demo"); !errors.Is(err, guest.ErrNotRunning) {
		t.Errorf("demo guest still there: %v", err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int{"512M": 512, "1G": 1024, "768": 768, "2GiB": 2048, "256MB": 256} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-1M", "1T", "M"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
}

func TestSvmCatAndLs(t *testing.T) {
	out, _, err := run("svm", "cat", "/proc/version")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "Linux version ") {
		t.Fatalf("svm cat /proc/version: %q", out)
	}
	out, _, err = run("svm", "ls", "/proc", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var ents []struct {
		Name string
		Type uint8
	}
	if err := json.Unmarshal([]byte(out), &ents); err != nil {
		t.Fatalf("svm ls --json: %v\n%s", err, out)
	}
	names := map[string]bool{}
	for _, e := range ents {
		names[e.Name] = true
	}
	if !names["1"] || !names["self"] || !names["version"] {
		t.Fatalf("svm ls /proc: %s", out)
	}
	if _, _, err := run("svm", "cat", "/no/such/file"); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("svm cat of a missing file: %v", err)
	}
}

func TestPsAndMemo(t *testing.T) {
	needGuest(t)
	// Learning is checked from an empty memo of the test's own.
	memoFile := filepath.Join(t.TempDir(), "ps.memo")
	if _, _, err := run("memo", "stats", "--memo", memoFile); err == nil || !strings.Contains(err.Error(), "no memo yet") {
		t.Fatalf("memo stats of a new memo file: %v", err)
	}
	out, errOut, err := run("ps", "--guest", "cli", "--json", "--memo", memoFile)
	if err != nil {
		t.Fatal(err)
	}
	var procs []struct {
		PID     int
		Comm    string
		Cmdline []string
		Missing []string
	}
	if err := json.Unmarshal([]byte(out), &procs); err != nil {
		t.Fatalf("ps --json: %v\n%s", err, out)
	}
	comms := map[string]bool{}
	for _, p := range procs {
		comms[p.Comm] = true
		if len(p.Missing) > 0 {
			t.Errorf("pid %d: missing %v", p.PID, p.Missing)
		}
	}
	for _, c := range guest.DemoProcesses {
		if !comms[c] {
			t.Errorf("ps lacks %s", c)
		}
	}
	if !strings.Contains(errOut, "ps (mode auto): ") || !strings.Contains(errOut, "redirected") {
		t.Errorf("no engine summary on stderr: %q", errOut)
	}
	// The guest runs again, and the memo learned the view's decisions.
	g, err := guest.Open(runDir, "cli")
	if err != nil {
		t.Fatal(err)
	}
	if st, err := g.Status(context.Background()); err != nil || st != "running" {
		t.Fatalf("guest %q after ps (%v)", st, err)
	}
	out, _, err = run("memo", "stats", "--json", "--memo", memoFile)
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Entries   int
		Decisions struct{ Redirect int }
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.Entries == 0 || st.Decisions.Redirect == 0 {
		t.Fatalf("memo stats: %s %v", out, err)
	}
	out, _, err = run("memo", "show", "--decision", "redirect", "--limit", "0", "--memo", memoFile)
	if err != nil || !strings.Contains(out, "init_pid_ns") {
		t.Fatalf("memo show: %q %v", out, err)
	}
	if _, _, err := run("ps", "--guest", "nosuch"); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Fatalf("ps of a missing guest: %v", err)
	}
}

// The memo is on disk: a new program run finds what the last one learned, and a corrupt memo
// file is reported and rebuilt, never half-read.
func TestMemoSurvivesRestartAndCorruption(t *testing.T) {
	needGuest(t)
	// A memo of the test's own, named by --memo on every command (run is shadowed): the file it
	// corrupts is no one else's.
	path := filepath.Join(t.TempDir(), "restart.memo")
	run := func(args ...string) (string, string, error) { return run(append(args, "--memo", path)...) }
	if _, _, err := run("ps", "--guest", "cli"); err != nil {
		t.Fatal(err)
	}
	// Every run builds a new command tree: nothing but the file carries the memo over.
	out, _, err := run("memo", "stats", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st struct{ Entries int }
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.Entries == 0 {
		t.Fatalf("memo after a restart: %s %v", out, err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := run("memo", "stats"); err == nil {
		t.Fatal("memo stats read a corrupt memo")
	}
	_, errOut, err := run("ps", "--guest", "cli")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errOut, "memo rebuilt") {
		t.Fatalf("a corrupt memo was not reported: %q", errOut)
	}
	if _, _, err := run("memo", "stats"); err != nil {
		t.Fatalf("memo not rebuilt: %v", err)
	}
}

// TestMemoFlag: --memo names the memo file, over $HYBRIDBRIDGE_MEMO; the memo commands use that
// file, memo clear removes it and no other, and --help tells both.
func TestMemoFlag(t *testing.T) {
	dir := t.TempDir()
	flagPath, envPath := filepath.Join(dir, "flag.memo"), filepath.Join(dir, "env.memo")
	t.Setenv("HYBRIDBRIDGE_MEMO", envPath)
	if _, _, err := run("memo", "stats"); err == nil || !strings.Contains(err.Error(), envPath) {
		t.Errorf("memo stats with $HYBRIDBRIDGE_MEMO: %v", err)
	}
	if _, _, err := run("memo", "stats", "--memo", flagPath); err == nil || !strings.Contains(err.Error(), flagPath) {
		t.Errorf("memo stats with --memo: %v", err)
	}
	for i, p := range []string{flagPath, envPath} {
		m := memo.New(memo.Key{Kernel: "k", Policy: "p"})
		for pc := range uint64(i + 1) {
			if _, err := m.Learn(0x1000+pc, memo.Observation{Decision: decision.Redirect, Region: "init_pid_ns", View: "ps", Syscall: "read"}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := m.Save(p); err != nil {
			t.Fatal(err)
		}
	}
	var st struct{ Entries int }
	out, _, err := run("memo", "stats", "--json", "--memo", flagPath)
	if err != nil || json.Unmarshal([]byte(out), &st) != nil || st.Entries != 1 {
		t.Errorf("memo stats --memo: %s %v", out, err)
	}
	out, _, err = run("memo", "clear", "--memo", flagPath)
	if err != nil || !strings.Contains(out, flagPath) {
		t.Errorf("memo clear --memo: %q %v", out, err)
	}
	if _, err := os.Stat(flagPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("memo clear left %s: %v", flagPath, err)
	}
	out, _, err = run("memo", "stats", "--json")
	if err != nil || json.Unmarshal([]byte(out), &st) != nil || st.Entries != 2 {
		t.Errorf("memo clear --memo changed the memo of $HYBRIDBRIDGE_MEMO: %s %v", out, err)
	}
	out, _, err = run("--help")
	if err != nil || !strings.Contains(out, "--memo") || !strings.Contains(out, "$HYBRIDBRIDGE_MEMO") {
		t.Errorf("--help does not tell --memo:\n%s", out)
	}
}

// TestBench runs the benchmark command briefly on the test guest: every number is there, and
// training converges (the second snapshot falls back no more than the first). The scale table
// has one small count here (the default 100,1000 takes minutes; scripts/test.sh runs it).
func TestBench(t *testing.T) {
	needGuest(t)
	out, errOut, err := run("bench", "--guest", "cli", "--json", "--snapshots", "2", "--processes", "70", "--scale", "90")
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, errOut)
	}
	var rep benchReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("bench --json: %v\n%s", err, out)
	}
	if len(rep.Views) != 3 || len(rep.Snapshots) != 2 || rep.Processes < 70 {
		t.Fatalf("bench report: %+v", rep)
	}
	for _, v := range rep.Views {
		if v.Slow.Engine <= 0 || v.WarmFast.Engine <= 0 || v.ColdAuto.FallBacks == 0 || v.HitRate == nil || *v.HitRate < 0.999 {
			t.Errorf("%s: %+v", v.View, v)
		}
		// The warm run replays what the cold run learned: instructions, not only accesses.
		if v.InsnHitRate == nil || v.WarmFast.InsnHits == 0 || *v.InsnHitRate < 0.99 {
			t.Errorf("%s: per-instruction hit rate %v (%d hit, %d missed)", v.View, v.InsnHitRate, v.WarmFast.InsnHits, v.WarmFast.InsnMisses)
		}
		t.Logf("%s: slow %v, cold auto %v (%d fall-backs), warm fast %v, %.1fx", v.View, v.Slow.Engine, v.ColdAuto.Engine, v.ColdAuto.FallBacks, v.WarmFast.Engine, v.Ratio)
		// Where KVM runs code, the executor the probe did not pick runs too, trained, without a
		// fall-back; KVM's exits include every intercepted access.
		if rep.KVM.RunsCode {
			o := v.WarmOther
			if o == nil || o.FallBacks != 0 || o.Engine <= 0 {
				t.Errorf("%s on %q: %+v", v.View, rep.Other, o)
				continue
			}
			kvm := o
			if rep.KVM.Usable {
				kvm = &v.WarmFast
			}
			if kvm.Trapped == 0 || kvm.Exits < kvm.Trapped {
				t.Errorf("%s on KVM: %d exits, %d intercepted accesses", v.View, kvm.Exits, kvm.Trapped)
			}
			t.Logf("%s on %s: %v, %d exits", v.View, rep.Other, o.Engine, kvm.Exits)
		}
	}
	if s := rep.Snapshots; s[1].FallBacks > s[0].FallBacks {
		t.Errorf("training did not converge: %+v", s)
	}
	// ps, its unmodified program and netstat, each warm and beside the guest's own tool; the two
	// ps rows with their Slow-Bridge run.
	wantRows := []string{"ps", "run " + strings.Join(benchProgram, " "), "netstat"}
	if len(rep.Scale) != len(wantRows) {
		t.Fatalf("scale table: %+v", rep.Scale)
	}
	for i, r := range rep.Scale {
		slowOK := (r.Slow != nil && r.Slow.Engine > 0 && r.Slow.Tainted > 0) == (i < 2)
		if r.View != wantRows[i] || r.Processes < 80 || r.Warm.Engine <= 0 || r.ToolMS <= 0 || r.EngineRatio <= 0 || !slowOK {
			t.Errorf("scale row %d: %+v (slow %+v)", i, r, r.Slow)
		}
		t.Logf("scale %s at %d: warm %v, tool %.0f ms", r.View, r.Processes, r.Warm.Engine, r.ToolMS)
	}
}

// A bad value is refused while the flags are parsed: the view never starts, so nothing is printed.
func TestBadFastEngine(t *testing.T) {
	out, errOut, err := run("lsmod", "--fast-engine", "quantum")
	want := `invalid argument "quantum" for "--fast-engine" flag: must be auto, unicorn or kvm`
	if err == nil || !strings.Contains(err.Error(), want) || out+errOut != "" {
		t.Fatalf("lsmod --fast-engine quantum: %v (printed %q)", err, out+errOut)
	}
}

func TestBadMode(t *testing.T) {
	out, errOut, err := run("lsmod", "--mode", "quick")
	want := `invalid argument "quick" for "--mode" flag: must be auto, fast or slow`
	if err == nil || !strings.Contains(err.Error(), want) || out+errOut != "" {
		t.Fatalf("lsmod --mode quick: %v (printed %q)", err, out+errOut)
	}
}

// helperRunDir, set in its environment, makes the test binary the child of
// TestGuestStartDiesWithTests; its value is the child's run folder.
const helperRunDir = "HB_TEST_HELPER_RUN_DIR"

// TestHelperStartsGuest is the child of TestGuestStartDiesWithTests: it boots a guest the way
// the tests do, prints QEMU's pid and waits to be killed.
func TestHelperStartsGuest(t *testing.T) {
	if os.Getenv(helperRunDir) == "" {
		return // only the child process of TestGuestStartDiesWithTests does the work
	}
	if _, errOut, err := run("guest", "start", "--name", "orphan", "--mem", "128M"); err != nil {
		t.Fatalf("guest start: %v\n%s", err, errOut)
	}
	g, err := guest.Open(runDir, "orphan")
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("qemu-pid %d\n", g.Meta.PID)
	time.Sleep(time.Hour)
}

// qemuRuns reports whether pid is a live (not zombie) QEMU of the named guest.
func qemuRuns(pid int, name string) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmdline), "hybridbridge-"+name+"\x00") {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, state, ok := strings.Cut(string(stat), ") ")
	return ok && !strings.HasPrefix(state, "Z") && !strings.HasPrefix(state, "X")
}

// TestGuestStartDiesWithTests: a guest the tests boot with `guest start` dies with the test
// binary, even when the binary is killed: an interrupted test run leaves no QEMU behind.
func TestGuestStartDiesWithTests(t *testing.T) {
	dir := t.TempDir()
	child := exec.Command(os.Args[0], "-test.run=^TestHelperStartsGuest$", "-test.timeout=10m")
	child.Env = append(os.Environ(), helperRunDir+"="+dir)
	var childErr bytes.Buffer
	child.Stderr = &childErr
	stdout, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	// A child that never boots its guest is killed, which ends the scan below.
	watchdog := time.AfterFunc(4*time.Minute, func() { child.Process.Kill() })
	defer watchdog.Stop()
	pid := 0
	var childOut strings.Builder
	for sc := bufio.NewScanner(stdout); pid == 0 && sc.Scan(); {
		fmt.Fprintln(&childOut, sc.Text())
		fmt.Sscanf(sc.Text(), "qemu-pid %d", &pid)
	}
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill the child: %v", err)
	}
	child.Wait()
	if pid == 0 {
		t.Fatalf("the child booted no guest:\n%s%s", childOut.String(), childErr.String())
	}
	for end := time.Now().Add(15 * time.Second); qemuRuns(pid, "orphan"); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(end) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("QEMU pid %d outlived the killed test binary that started it (killed now)", pid)
		}
	}
}

// TestGuestStartNoKASLR: guest start boots the demo guest with KASLR (the package's guest) and
// with --nokaslr without. The nokaslr guest's first command builds no snapshot in a layout, the
// kernel is elsewhere in the two, and ps from outside lists every process the nokaslr guest
// lists before and after.
func TestGuestStartNoKASLR(t *testing.T) {
	needGuest(t)
	const name = "cli-nokaslr"
	if _, errOut, err := run("guest", "start", "--name", name, "--mem", "256M", "--nokaslr"); err != nil {
		t.Fatalf("guest start --nokaslr: %v\n%s", err, errOut)
	}
	defer run("guest", "stop", name)
	g, err := guest.Open(runDir, name)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(g.Meta.Append, guest.NoKASLR) {
		t.Fatalf("booted with %q", g.Meta.Append)
	}
	if def, err := guest.Open(runDir, "cli"); err != nil {
		t.Fatal(err)
	} else if strings.Contains(def.Meta.Append, guest.NoKASLR) {
		t.Fatalf("guest start booted without KASLR: %q", def.Meta.Append)
	}
	addr := func(guestName string) string {
		out, errOut, err := run("guest", "read", guestName, "linux_banner", "--len", "13", "--json")
		if err != nil {
			t.Fatalf("guest read %s: %v\n%s", guestName, err, errOut)
		}
		var j struct{ Address string }
		if err := json.Unmarshal([]byte(out), &j); err != nil {
			t.Fatal(err)
		}
		if guestName == name && strings.Contains(errOut, "KASLR layout") {
			t.Errorf("the nokaslr guest's first command built a snapshot in a layout: %q", errOut)
		}
		return j.Address
	}
	if fixed, moved := addr(name), addr("cli"); moved == fixed {
		t.Errorf("linux_banner at %s in both the KASLR and the nokaslr guest", moved)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pids := func() map[int]bool {
		res, err := g.Exec(ctx, "cd /proc && echo [0-9]*")
		if err != nil {
			t.Fatal(err)
		}
		out := map[int]bool{}
		for _, f := range strings.Fields(string(res.Stdout)) {
			if n, err := strconv.Atoi(f); err == nil {
				out[n] = true
			}
		}
		return out
	}
	before := pids()
	out, errOut, err := run("ps", "--guest", name, "--json")
	if err != nil {
		t.Fatalf("ps: %v\n%s", err, errOut)
	}
	after := pids()
	var procs []inspect.Process
	if err := json.Unmarshal([]byte(out), &procs); err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range procs {
		seen[p.PID] = true
	}
	for pid := range before {
		if after[pid] && !seen[pid] {
			t.Errorf("pid %d, in the guest before and after, is not in the view", pid)
		}
	}
	if len(procs) < 40 || !seen[1] {
		t.Errorf("ps listed %d processes (pid 1: %v)", len(procs), seen[1])
	}
	t.Logf("nokaslr guest: %d processes; %s", len(procs), lastLine(errOut))
}
