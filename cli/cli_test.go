package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"hybridbridge/guest"
)

// The tests drive the real command tree against one real guest started by `guest start`.
var (
	runDir   string
	startErr error
)

func TestMain(m *testing.M) {
	code := func() int {
		dir, err := os.MkdirTemp("", "hbcli-test")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		runDir = dir
		_, _, startErr = run("guest", "start", "--name", "cli", "--mem", "256M")
		defer func() {
			if g, err := guest.Open(runDir, "cli"); err == nil {
				g.Stop(context.Background())
			}
		}()
		return m.Run()
	}()
	os.Exit(code)
}

// run executes one command line and returns its stdout, stderr and error.
func run(args ...string) (string, string, error) {
	var out, errOut bytes.Buffer
	root := NewRoot(&out, &errOut)
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
	out, errOut, err := run("guest", "exec", "cli", "--", "echo", "hi;", "echo", "oops", ">&2;", "exit", "4")
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
	if err := json.Unmarshal([]byte(out), &j); err != nil || j.Hex != fmt.Sprintf("%x", "Linux version") || !strings.HasPrefix(j.Address, "0xffffffff8") {
		t.Fatalf("read --json: %s %v", out, err)
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
	out, errOut, err := run("ps", "--guest", "cli", "--json")
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
	out, _, err = run("memo", "stats", "--json")
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
	out, _, err = run("memo", "show", "--decision", "redirect", "--limit", "0")
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
	cache, err := guest.FindCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	a, err := guest.LoadAssets(cache)
	if err != nil {
		t.Fatal(err)
	}
	id, err := a.KernelID()
	if err != nil {
		t.Fatal(err)
	}
	path := cache + "/memo/" + id + ".memo"
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

// TestBench runs the benchmark command briefly on the test guest: every number is there, and
// training converges (the second snapshot falls back no more than the first).
func TestBench(t *testing.T) {
	needGuest(t)
	out, errOut, err := run("bench", "--guest", "cli", "--json", "--snapshots", "2", "--processes", "70")
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
		if v.Slow.Engine <= 0 || v.WarmFast.Engine <= 0 || v.ColdAuto.FallBacks == 0 || v.HitRate < 0.999 {
			t.Errorf("%s: %+v", v.View, v)
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
}

func TestBadFastEngine(t *testing.T) {
	_, _, err := run("lsmod", "--fast-engine", "quantum")
	if err == nil || !strings.Contains(err.Error(), `unknown --fast-engine "quantum"`) {
		t.Fatalf("lsmod --fast-engine quantum: %v", err)
	}
}

func TestBadMode(t *testing.T) {
	_, _, err := run("lsmod", "--mode", "quick")
	if err == nil || !strings.Contains(err.Error(), `unknown --mode "quick"`) {
		t.Fatalf("lsmod --mode quick: %v", err)
	}
}
