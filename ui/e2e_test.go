package ui_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"hybridbridge/internal/testenv"
)

// The end-to-end tests run the real hybridbridge binary: built once per test run into a temporary
// folder, against a demo guest of its own run folder.
var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func buildBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "hbconsole-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "hybridbridge")
		out, err := exec.Command("go", "build", "-o", binPath, "hybridbridge").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	// The package's own memo, empty at the start: the console learns into it, never into the
	// cache's.
	memoDir, err := os.MkdirTemp("", "hbconsole-memo")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := os.Setenv("HYBRIDBRIDGE_MEMO", filepath.Join(memoDir, "console.memo")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.RemoveAll(memoDir)
	os.Exit(code)
}

// TestConsoleWithoutTerminal: piped, the console says which subcommands to use instead.
func TestConsoleWithoutTerminal(t *testing.T) {
	bin := buildBinary(t)
	cmd := exec.Command(bin, "console", "--run-dir", t.TempDir())
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("console without a terminal succeeded:\n%s", out)
	}
	if s := string(out); !strings.Contains(s, "needs a terminal") || !strings.Contains(s, "hybridbridge ps") {
		t.Errorf("message does not point to the subcommands:\n%s", s)
	}
}

// tmuxConsole is one tmux server (a private socket) running the console in one pane.
type tmuxConsole struct {
	t      *testing.T
	socket string
	status string // file the pane's shell writes the console's exit status to
}

func (c *tmuxConsole) tmux(args ...string) (string, error) {
	out, err := exec.Command("tmux", append([]string{"-L", c.socket}, args...)...).CombinedOutput()
	return string(out), err
}

func (c *tmuxConsole) screen() string {
	out, err := c.tmux("capture-pane", "-p", "-t", "hb")
	if err != nil {
		c.t.Fatalf("capture-pane: %v\n%s", err, out)
	}
	return out
}

func (c *tmuxConsole) keys(keys ...string) {
	if out, err := c.tmux(append([]string{"send-keys", "-t", "hb"}, keys...)...); err != nil {
		c.t.Fatalf("send-keys %v: %v\n%s", keys, err, out)
	}
}

// How long the console may take to show something. Each bounds a wait that ends as soon as the
// screen shows it, so they are generous: go test runs other packages, which boot guests of their
// own, at the same time.
const (
	bootWait    = 10 * time.Minute // a guest boot and the first refresh, which may build the SVM snapshot
	refreshWait = 5 * time.Minute  // a refresh, or quitting (which stops the guest)
	keyWait     = time.Minute      // the screen's answer to a key or a resize
)

// waitFor polls the screen until ok accepts it, and returns it; on timeout it fails the test with
// the last screen.
func (c *tmuxConsole) waitFor(what string, timeout time.Duration, ok func(screen string) bool) string {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s := c.screen()
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("after %v the console does not show %s; screen:\n%s", timeout, what, s)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// qemuOf lists the QEMU processes whose command line mentions dir.
func qemuOf(dir string) []int {
	out, _ := exec.Command("pgrep", "-f", "qemu-system.*"+regexp.QuoteMeta(dir)).Output()
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

func contains(subs ...string) func(string) bool {
	return func(s string) bool {
		for _, sub := range subs {
			if !strings.Contains(s, sub) {
				return false
			}
		}
		return true
	}
}

// TestConsoleEndToEndTmux drives `hybridbridge` without arguments in a real terminal (tmux): it
// boots the demo guest, opens the console, and the panes show what the guest runs.
func TestConsoleEndToEndTmux(t *testing.T) {
	testenv.SkipIfShort(t, "boots a guest")
	needTmux(t)
	bin := buildBinary(t)
	runDir := t.TempDir()
	c := startTmux(t, runDir, bin)
	t.Run("processes", func(t *testing.T) {
		c.t = t
		s := c.waitFor("the first refresh", bootWait, contains("Processes", "PID", "init"))
		// The workload's processes are the last of some 70 rows: filter them into view.
		c.keys("/", "hb-", "Enter")
		c.waitFor("the workload's processes", keyWait, contains("hb-parent", "hb-child", "hb-sleeper", `filter "hb-"`))
		// The first refresh runs Fast-Bridge and falls back where the memo has nothing yet.
		for _, want := range []string{"guest demo (running", "engine Unicorn-", "mode auto"} {
			if !strings.Contains(s, want) {
				t.Errorf("header lacks %q:\n%s", want, s)
			}
		}
	})
	t.Run("resize", func(t *testing.T) {
		c.t = t
		if out, err := c.tmux("resize-window", "-t", "hb", "-x", "90", "-y", "25"); err != nil {
			t.Fatalf("resize-window: %v\n%s", err, out)
		}
		// The layout follows the terminal: the help bar is the last of the 25 lines.
		c.waitFor("the help bar on the last line after a resize", keyWait, func(s string) bool {
			lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
			return len(lines) == 25 && strings.Contains(lines[24], "q quit") && strings.HasPrefix(lines[0], "hybridbridge")
		})
	})
	t.Run("network", func(t *testing.T) {
		c.t = t
		c.keys("Tab")
		s := c.waitFor("the Network pane", keyWait, contains("netstat on", "LOCAL"))
		if !strings.Contains(s, ":8080") && !strings.Contains(s, ":7001") {
			t.Errorf("the Network pane shows no listener on 8080 or 7001:\n%s", s)
		}
	})
	t.Run("modules", func(t *testing.T) {
		c.t = t
		c.keys("Tab")
		s := c.waitFor("the Modules pane", keyWait, contains("lsmod", "MODULE"))
		if !regexp.MustCompile(`(?m)^\s*(dummy|tun|veth|loop)\s`).MatchString(s) {
			t.Errorf("the Modules pane shows none of dummy/tun/veth/loop:\n%s", s)
		}
	})
	t.Run("program", func(t *testing.T) {
		c.t = t
		// An unmodified busybox applet, run in the SVM against the guest: the guest's host name.
		c.keys(":")
		c.keys("-l", "uname -n")
		c.keys("Enter")
		c.waitFor("uname's output in the Program pane", refreshWait, contains("$ uname -n", "exit 0", "hb-demo"))
	})
	t.Run("mode", func(t *testing.T) {
		c.t = t
		c.keys("m")
		c.waitFor("mode fast in the header", keyWait, contains("mode fast"))
		// The mode key starts a refresh; let it end (the engine goes idle) before quitting.
		s := c.waitFor("the refresh in fast mode", refreshWait, contains("mode fast", "(idle)"))
		if strings.Contains(s, "(not fast)") {
			t.Log("fast mode asked; the header says another engine ran than Fast-Bridge (a view fell back or failed)")
		}
	})
	t.Run("quit", func(t *testing.T) {
		c.t = t
		c.keys("q")
		s := c.waitFor("the shell after quitting", refreshWait, contains("console-exited"))
		if strings.Contains(s, "hybridbridge  guest") {
			t.Errorf("the console's screen was left behind:\n%s", s)
		}
		data, err := os.ReadFile(c.status)
		if err != nil {
			t.Fatal(err)
		}
		if st := strings.TrimSpace(string(data)); st != "0" {
			t.Errorf("exit status %s\n%s", st, s)
		}
		if left := qemuOf(runDir); len(left) > 0 {
			t.Errorf("QEMU still running after quit: %v", left)
		}
	})
}

// needTmux skips a test that drives the console in a terminal where tmux is missing.
func needTmux(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		testenv.Skip(t, "tmux is not installed (scripts/setup.sh installs it): the console cannot be driven in a terminal")
	}
}

// startTmux starts a private tmux server, as this test's child, with one pane running the
// console binary bin with args, in the run folder runDir; the cleanup kills the server and any
// QEMU of runDir left behind.
func startTmux(t *testing.T, runDir, bin string, args ...string) *tmuxConsole {
	t.Helper()
	start := time.Now()
	c := &tmuxConsole{t: t, socket: fmt.Sprintf("hbconsole-%d-%d", os.Getpid(), time.Now().UnixNano()), status: filepath.Join(runDir, "exit-status")}
	// The tmux server runs in the foreground as this test's child and dies with it, even when the
	// test binary is killed: its panes then get SIGHUP, the console exits, and the demo guest it
	// booted dies with the console. A daemonised server would keep both alive.
	server := exec.Command("tmux", "-L", c.socket, "-D", "-f", "/dev/null")
	server.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := server.Start(); err != nil {
		t.Fatalf("start the tmux server: %v", err)
	}
	serverDone := make(chan error, 1)
	go func() { serverDone <- server.Wait() }()
	for i := 0; ; i++ {
		if _, err := c.tmux("list-sessions"); err == nil {
			break // the server answers (with no sessions yet)
		}
		if i == 100 {
			t.Fatal("the tmux server does not answer")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Cleanup(func() {
		c.tmux("kill-server")
		server.Process.Kill()
		<-serverDone
		// Whatever happened, no guest of this test may survive it.
		left := qemuOf(runDir)
		for _, pid := range left {
			if p, err := os.FindProcess(pid); err == nil {
				p.Kill()
			}
		}
		if len(left) > 0 {
			t.Errorf("QEMU processes left behind (killed now): %v", left)
		}
		t.Logf("end-to-end run took %v", time.Since(start).Round(time.Second))
	})
	env := []string{"HYBRIDBRIDGE_RUN=" + runDir, "HYBRIDBRIDGE_MEMO=" + os.Getenv("HYBRIDBRIDGE_MEMO")}
	if cache := os.Getenv("HYBRIDBRIDGE_CACHE"); cache != "" {
		env = append(env, "HYBRIDBRIDGE_CACHE="+cache)
	}
	// The tmux server has its own environment: pass ours on the command line. The shell keeps the
	// pane open after the console exits, so the screen can be checked for leftovers.
	shell := fmt.Sprintf("env %s %s %s; echo $? > %s; echo console-exited; sleep 120",
		strings.Join(env, " "), bin, strings.Join(args, " "), c.status)
	if out, err := c.tmux("new-session", "-d", "-s", "hb", "-x", "120", "-y", "40", shell); err != nil {
		t.Fatalf("tmux new-session: %v\n%s", err, out)
	}
	return c
}

// TestConsoleOnDebianTmux opens the console on the Debian guest (started nokaslr, so that no
// boot puts its kernel above 4 GiB): the Processes pane shows systemd with user names from the
// guest's /etc/passwd, the Network pane sshd's listener, the Modules pane ext4.
func TestConsoleOnDebianTmux(t *testing.T) {
	testenv.SkipIfShort(t, "boots the Debian guest")
	needTmux(t)
	bin := buildBinary(t)
	runDir := t.TempDir()
	env := append(os.Environ(), "HYBRIDBRIDGE_RUN="+runDir)
	start := exec.Command(bin, "guest", "start", "--image", "debian", "--name", "deb", "--nokaslr")
	start.Env = env
	if out, err := start.CombinedOutput(); err != nil {
		t.Fatalf("guest start: %v\n%s", err, out)
	}
	var once sync.Once
	stopGuest := func() {
		once.Do(func() {
			stop := exec.Command(bin, "guest", "stop", "deb")
			stop.Env = env
			if out, err := stop.CombinedOutput(); err != nil {
				t.Errorf("guest stop: %v\n%s", err, out)
			}
		})
	}
	t.Cleanup(stopGuest)
	c := startTmux(t, runDir, bin, "console", "--guest", "deb", "--refresh", "0")
	// Again after startTmux's cleanup, so it runs before it: the guest is stopped, not found
	// left over.
	t.Cleanup(stopGuest)
	s := c.waitFor("the first refresh", bootWait, contains("Processes", "PID", "/sbin/init"))
	c.keys("/", "analyst", "Enter")
	s = c.waitFor("the analyst's processes", keyWait, contains("busybox httpd", `filter "analyst"`))
	if !regexp.MustCompile(`(?m)^\s*\d+\s+\d+\s+analyst\s`).MatchString(s) {
		t.Errorf("no process shown with the user name analyst:\n%s", s)
	}
	c.keys("Tab")
	s = c.waitFor("the Network pane", keyWait, contains("netstat on", "LOCAL"))
	if !strings.Contains(s, ":22 ") {
		t.Errorf("the Network pane shows no listener on 22:\n%s", s)
	}
	c.keys("Tab")
	c.waitFor("the Modules pane", keyWait, contains("lsmod", "MODULE"))
	c.keys("/", "ext4", "Enter")
	s = c.waitFor("ext4 filtered", keyWait, contains(`filter "ext4"`))
	if !regexp.MustCompile(`(?m)^\s*ext4\s`).MatchString(s) {
		t.Errorf("the Modules pane does not show ext4:\n%s", s)
	}
	c.keys("q")
	c.waitFor("the shell after quitting", refreshWait, contains("console-exited"))
	if data, err := os.ReadFile(c.status); err != nil || strings.TrimSpace(string(data)) != "0" {
		t.Errorf("console exit status %q, %v", data, err)
	}
}
