package ui

import (
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"charm.land/bubbles/v2/cursor"
	"charm.land/bubbles/v2/spinner"
	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/x/ansi"

	"hybridbridge/decision"
	"hybridbridge/inspect"
)

var update = flag.Bool("update", false, "rewrite the golden files")

const testWidth, testHeight = 100, 24

// fakeSource returns frames made by the test; it records what the console asked for.
type fakeSource struct {
	mu       sync.Mutex
	frame    func(mode Mode) *Frame // may panic, like a buggy view
	err      error
	progress []Progress // reported during each refresh
	modes    []Mode
	clears   int
	// program answers RunProgram; runs records each argv asked, runModes its mode.
	program  func(mode Mode, argv []string) (*ProgramResult, error)
	runs     [][]string
	runModes []Mode
}

func (f *fakeSource) Info() Info { return Info{Guest: "demo", Kernel: "6.1.0-test", Accel: "tcg"} }

func (f *fakeSource) Refresh(_ context.Context, mode Mode, progress func(Progress)) (*Frame, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.modes = append(f.modes, mode)
	for _, p := range f.progress {
		progress(p)
	}
	if f.err != nil {
		return nil, f.err
	}
	return f.frame(mode), nil
}

func (f *fakeSource) RunProgram(_ context.Context, mode Mode, argv []string) (*ProgramResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.runs = append(f.runs, argv)
	f.runModes = append(f.runModes, mode)
	if f.program == nil {
		return &ProgramResult{Argv: argv, Mode: mode, Engine: "Unicorn-fast"}, nil
	}
	return f.program(mode, argv)
}

func (f *fakeSource) ClearMemo(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clears++
	return nil
}

var t0 = time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)

// demoFrame is shaped like what the demo guest returns; only the UI logic is under test.
func demoFrame(mode Mode) *Frame {
	return &Frame{
		Time: t0, Took: 1500 * time.Millisecond, Mode: mode, Engine: "Unicorn-taint", GuestState: "running",
		Kernel: "6.1.0-test",
		Processes: []inspect.Process{
			{PID: 1, Comm: "init", Cmdline: []string{"init"}, State: "S", User: "root", Threads: 1, RSSKiB: 12, StartTicks: 51, Start: time.Date(2026, 12, 6, 15, 4, 5, 0, time.UTC)},
			{PID: 2, Comm: "kthreadd", Kernel: true, State: "S", Threads: 1},
			{PID: 103, PPID: 1, Comm: "hb-parent", Cmdline: []string{"/bin/sh", "/usr/local/bin/hb-parent", "3"}, State: "S", Threads: 1, RSSKiB: 1592},
			{PID: 111, PPID: 103, Comm: "hb-child", Cmdline: []string{"/bin/sh", "/usr/local/bin/hb-child", "1"}, State: "S", Threads: 1, RSSKiB: 4},
			{PID: 112, PPID: 103, Comm: "hb-child", Cmdline: []string{"/bin/sh", "/usr/local/bin/hb-child", "2"}, State: "S", Threads: 1, RSSKiB: 4},
			{PID: 109, PPID: 1, Comm: "hb-stopped", State: "T", Threads: 1, Missing: []string{"cmdline: incomplete: 4096 of 6000 bytes read"}},
		},
		Sockets: []inspect.Socket{
			{Proto: "tcp6", Local: "[::]:8080", Remote: "[::]:0", State: "LISTEN", Inode: 10207, PIDs: []int{98}},
			{Proto: "tcp", Local: "127.0.0.1:52108", Remote: "127.0.0.1:7001", State: "ESTABLISHED", Inode: 10268},
		},
		Modules: []inspect.Module{
			{Name: "dummy", Size: 16384, State: "Live", Addr: 0xffffffffc0200000},
			{Name: "tun", Size: 61440, Refs: 1, State: "Live", Users: []string{"veth"}},
		},
		Views: []ViewStats{
			{Name: "ps", Engine: "Unicorn-taint", Elapsed: time.Second, Syscalls: 776, Instructions: 5_400_000, Globals: decision.Counts{Redirect: 3462, Local: 68407, Unknown: 2}, UnknownGlobals: []string{"jiffies"}},
			{Name: "netstat", Engine: "Unicorn-taint", Elapsed: 180 * time.Millisecond, Syscalls: 20},
			{Name: "lsmod", Engine: "Unicorn-taint", Elapsed: 5 * time.Millisecond, Syscalls: 3},
		},
		Memo: MemoSummary{Entries: 425, Decisions: decision.Counts{Local: 400, Redirect: 25},
			TopSeen: []MemoEntry{{PC: 0xffffffff81000000, Symbol: "task_pid_nr_ns+0x12", Disassembly: "mov rax, qword ptr [rdi+0x10]", Decision: "redirect", Seen: 99, View: "ps", Syscall: "read"}}},
	}
}

func newTestModel(t *testing.T, src *fakeSource) *Model {
	t.Helper()
	m := New(context.Background(), src, Options{})
	m.Update(tea.WindowSizeMsg{Width: testWidth, Height: testHeight})
	drive(t, m, m.Init())
	return m
}

// timerCode holds the code of the commands that wait on the clock: tea.Tick's (auto-refresh
// ticks, spinner frames after the first) and the filter cursor's blink. Each library returns one
// closure for all its commands of a kind, so one sample of each identifies them all.
var timerCode = func() map[uintptr]bool {
	c := cursor.New()
	return map[uintptr]bool{
		reflect.ValueOf(tea.Tick(time.Hour, nil)).Pointer(): true,
		reflect.ValueOf(c.Blink()).Pointer():                true,
	}
}()

// isTimer reports whether cmd waits on the clock: such a command is dropped rather than run.
func isTimer(cmd tea.Cmd) bool { return timerCode[reflect.ValueOf(cmd).Pointer()] }

// drive runs cmd and every command its messages return, as the program would, until nothing is
// left. Timer commands are dropped unrun, so tests never wait on the clock; every other command
// is waited for, however slow the machine, so none is lost. One that never returns is a hang.
func drive(t *testing.T, m *Model, cmd tea.Cmd) {
	t.Helper()
	queue := []tea.Cmd{cmd}
	for steps := 0; len(queue) > 0; steps++ {
		if steps > 1000 {
			t.Fatal("commands never settle")
		}
		c := queue[0]
		queue = queue[1:]
		if c == nil || isTimer(c) {
			continue
		}
		done := make(chan tea.Msg, 1)
		go func() { done <- c() }()
		var msg tea.Msg
		select {
		case msg = <-done:
		case <-time.After(time.Minute):
			t.Fatal("a command has not returned after a minute")
		}
		switch msg := msg.(type) {
		case nil:
		case tea.BatchMsg:
			queue = append(queue, msg...)
		case spinner.TickMsg:
			// Clock-driven: deliver once, do not follow the chain.
			m.Update(msg)
		default:
			_, next := m.Update(msg)
			queue = append(queue, next)
		}
	}
}

// TestDriveKnowsTimers: drive must recognise the model's clock-driven commands, or it would wait
// for each tick and follow the chain of ticks it re-arms.
func TestDriveKnowsTimers(t *testing.T) {
	m := New(context.Background(), &fakeSource{frame: demoFrame}, Options{})
	if !isTimer(m.armTick()) {
		t.Error("the auto-refresh tick is not recognised as a timer")
	}
	_, next := m.spin.Update(m.spin.Tick())
	if next == nil || !isTimer(next) {
		t.Error("the spinner's next frame is not recognised as a timer")
	}
	m.Update(tea.WindowSizeMsg{Width: testWidth, Height: testHeight})
	if blink := m.onKey(keyMsg("/")); blink == nil || !isTimer(blink) {
		t.Error("the filter cursor's blink is not recognised as a timer")
	}
	if isTimer(m.startRefresh()) || isTimer(waitNext(make(chan tea.Msg))) {
		t.Error("a refresh's command is taken for a timer")
	}
}

func press(t *testing.T, m *Model, keys ...string) {
	t.Helper()
	for _, k := range keys {
		drive(t, m, m.onKey(keyMsg(k)))
	}
}

func keyMsg(k string) tea.KeyPressMsg {
	switch k {
	case "tab":
		return tea.KeyPressMsg{Code: tea.KeyTab}
	case "shift+tab":
		return tea.KeyPressMsg{Code: tea.KeyTab, Mod: tea.ModShift}
	case "enter":
		return tea.KeyPressMsg{Code: tea.KeyEnter}
	case "esc":
		return tea.KeyPressMsg{Code: tea.KeyEscape}
	case "up":
		return tea.KeyPressMsg{Code: tea.KeyUp}
	case "ctrl+c":
		return tea.KeyPressMsg{Code: 'c', Mod: tea.ModCtrl}
	}
	r := []rune(k)[0]
	return tea.KeyPressMsg{Code: r, Text: k}
}

func screen(m *Model) string { return ansi.Strip(m.Render()) }

func TestConsoleFirstRefreshShowsProcesses(t *testing.T) {
	src := &fakeSource{frame: demoFrame}
	m := newTestModel(t, src)
	s := screen(m)
	for _, want := range []string{"hb-parent", "hb-child", "guest demo (running, tcg)", "mode auto", "engine Unicorn-taint (idle)", "memo 425 insns", "Processes 6"} {
		if !strings.Contains(s, want) {
			t.Errorf("screen lacks %q:\n%s", want, s)
		}
	}
	if len(src.modes) != 1 || src.modes[0] != ModeAuto {
		t.Errorf("refreshes asked: %v, want one in auto", src.modes)
	}
}

func TestConsoleRenderFitsTheTerminal(t *testing.T) {
	m := newTestModel(t, &fakeSource{frame: demoFrame})
	for _, size := range [][2]int{{100, 24}, {60, 10}, {200, 50}} {
		m.Update(tea.WindowSizeMsg{Width: size[0], Height: size[1]})
		for range m.panes {
			lines := strings.Split(m.Render(), "\n")
			if len(lines) != size[1] {
				t.Fatalf("%dx%d, pane %s: %d lines", size[0], size[1], m.panes[m.active].name(), len(lines))
			}
			for i, l := range lines {
				if w := ansi.StringWidth(l); w > size[0] {
					t.Fatalf("%dx%d, pane %s: line %d is %d wide: %q", size[0], size[1], m.panes[m.active].name(), i, w, ansi.Strip(l))
				}
			}
			press(t, m, "tab")
		}
	}
}

func TestConsoleTabsReachEveryPane(t *testing.T) {
	m := newTestModel(t, &fakeSource{frame: demoFrame})
	press(t, m, "tab")
	if s := screen(m); !strings.Contains(s, "[::]:8080") || !strings.Contains(s, "LISTEN") {
		t.Errorf("Network pane lacks the listener:\n%s", s)
	}
	press(t, m, "tab")
	if s := screen(m); !strings.Contains(s, "dummy") || !strings.Contains(s, "veth") {
		t.Errorf("Modules pane lacks the modules:\n%s", s)
	}
	press(t, m, "tab", "tab")
	if s := screen(m); !strings.Contains(s, "task_pid_nr_ns+0x12") || !strings.Contains(s, "local 400") {
		t.Errorf("Memo pane lacks the memo:\n%s", s)
	}
	press(t, m, "tab")
	if s := screen(m); !strings.Contains(s, "no program run yet") {
		t.Errorf("Program pane before any run:\n%s", s)
	}
	press(t, m, "tab")
	if m.active != 0 {
		t.Errorf("tab after the last pane: pane %d, want 0", m.active)
	}
	press(t, m, "shift+tab")
	if m.panes[m.active].name() != "Program" {
		t.Errorf("shift+tab from the first pane: %s", m.panes[m.active].name())
	}
}

func TestConsoleModeKeyRefreshesAndShowsWhatRan(t *testing.T) {
	src := &fakeSource{frame: demoFrame}
	m := newTestModel(t, src)
	press(t, m, "m")
	s := screen(m)
	if !strings.Contains(s, "mode fast") {
		t.Errorf("header lacks the new mode:\n%s", s)
	}
	// Slow-Bridge ran although fast was asked: the header must not pretend.
	if !strings.Contains(s, "engine Unicorn-taint (idle) (not fast)") {
		t.Errorf("header hides that the engine differs from the mode:\n%s", s)
	}
	press(t, m, "m")
	if s := screen(m); !strings.Contains(s, "mode slow") || strings.Contains(s, "(not slow)") {
		t.Errorf("slow mode with Unicorn-taint:\n%s", s)
	}
	press(t, m, "m")
	if want := []Mode{ModeAuto, ModeFast, ModeSlow, ModeAuto}; !equalModes(src.modes, want) {
		t.Errorf("refresh modes %v, want %v", src.modes, want)
	}
}

func equalModes(a, b []Mode) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestConsoleDropsStaleResults(t *testing.T) {
	m := newTestModel(t, &fakeSource{frame: demoFrame})
	before := m.frame
	old := m.gen
	press(t, m, "r")
	stale := demoFrame(ModeAuto)
	stale.Processes = nil
	m.Update(refreshMsg{gen: old, frame: stale})
	if m.frame == stale {
		t.Fatal("a result of an older generation replaced the frame")
	}
	m.Update(progressMsg{gen: old, p: Progress{Engine: "KVM"}, ch: make(chan tea.Msg)})
	if m.engine == "KVM" || m.frame == before {
		t.Errorf("stale progress applied, or the fresh refresh did not land (engine %q)", m.engine)
	}
}

func TestConsoleEngineSwitchIsMarked(t *testing.T) {
	src := &fakeSource{frame: demoFrame, progress: []Progress{{Engine: "KVM"}, {Engine: "Unicorn-taint"}}}
	m := newTestModel(t, src)
	if s := screen(m); !strings.Contains(s, "⇄ KVM→Unicorn-taint") || !strings.Contains(s, "switches 1") {
		t.Errorf("no switch mark:\n%s", s)
	}
}

func TestConsoleProgressShowsWorkInFlight(t *testing.T) {
	m := New(context.Background(), &fakeSource{frame: demoFrame}, Options{})
	m.Update(tea.WindowSizeMsg{Width: testWidth, Height: testHeight})
	m.startRefresh()
	ch := make(chan tea.Msg)
	m.Update(progressMsg{gen: m.gen, p: Progress{View: "netstat", Engine: "Unicorn-taint", GuestState: "paused"}, ch: ch})
	s := screen(m)
	for _, want := range []string{"refreshing netstat", "demo (paused", "engine Unicorn-taint  switches"} {
		if !strings.Contains(s, want) {
			t.Errorf("screen lacks %q while refreshing:\n%s", want, s)
		}
	}
}

func TestConsoleErrorsGoToTheStatusLine(t *testing.T) {
	src := &fakeSource{err: errors.New("attach guest demo: guest demo is not running\nmore")}
	m := newTestModel(t, src)
	s := screen(m)
	if !strings.Contains(s, "refresh failed: attach guest demo: guest demo is not running") || strings.Contains(s, "more") {
		t.Errorf("status line:\n%s", s)
	}
	src.err = nil
	src.frame = func(mode Mode) *Frame {
		f := demoFrame(mode)
		f.Modules = nil
		f.Views[2].Err = "read /proc/modules: bad address"
		return f
	}
	press(t, m, "r", "tab", "tab")
	s = screen(m)
	if !strings.Contains(s, "view failed: lsmod: read /proc/modules: bad address") || !strings.Contains(s, "lsmod failed:") {
		t.Errorf("a failed view is not shown:\n%s", s)
	}
	if !strings.Contains(s, "hb-parent") && !strings.Contains(screen(m), "(no rows)") {
		t.Errorf("modules pane:\n%s", s)
	}
}

func TestConsoleFilterAndSort(t *testing.T) {
	m := newTestModel(t, &fakeSource{frame: demoFrame})
	press(t, m, "/", "c", "h", "i", "l", "d")
	s := screen(m)
	if !strings.Contains(s, "hb-child 1") || strings.Contains(s, "hb-parent") {
		t.Errorf("filter child:\n%s", s)
	}
	// While typing, q is text, not quit.
	press(t, m, "q")
	if !m.panes[0].capturing() {
		t.Fatal("q ended filter typing")
	}
	press(t, m, "esc")
	if s := screen(m); !strings.Contains(s, "hb-parent") {
		t.Errorf("esc did not clear the filter:\n%s", s)
	}
	press(t, m, "/", "s", "t", "o", "p", "enter")
	if s := screen(m); !strings.Contains(s, `filter "stop": 1 of 6 rows`) || !strings.Contains(s, "Processes 1/6") {
		t.Errorf("applied filter:\n%s", s)
	}
	press(t, m, "esc", "s", "S")
	tp := m.panes[0].(*tablePane[inspect.Process])
	if tp.tbl.sortCol != 1 || !tp.tbl.desc {
		t.Fatalf("sort column %d desc %v, want PPID descending", tp.tbl.sortCol, tp.tbl.desc)
	}
	if first, _ := tp.tbl.selected(); first.cells[0] != "111" && first.cells[0] != "112" {
		t.Errorf("first row by PPID descending: %v", first.cells)
	}
}

func TestConsoleProcessDetails(t *testing.T) {
	m := newTestModel(t, &fakeSource{frame: demoFrame})
	press(t, m, "G", "up", "up", "up", "enter")
	s := screen(m)
	if !strings.Contains(s, "process 103 (hb-parent)") || !strings.Contains(s, `[1] "/usr/local/bin/hb-parent"`) {
		t.Errorf("details of the fourth row from the end (by PID):\n%s", s)
	}
	press(t, m, "esc")
	if s := screen(m); !strings.Contains(s, "PID▲") {
		t.Errorf("esc did not leave the details:\n%s", s)
	}
}

func TestConsoleEventDetailsDisassemble(t *testing.T) {
	// push rbp; mov rbp, rsp; mov rax, [rdi+0x10]; pop rbp; ret
	code := []byte{0x55, 0x48, 0x89, 0xe5, 0x48, 0x8b, 0x47, 0x10, 0x5d, 0xc3}
	src := &fakeSource{frame: func(mode Mode) *Frame {
		f := demoFrame(mode)
		f.Fallbacks = 1
		f.Events = []Event{{Time: t0, View: "ps", Syscall: "read", PC: 0x1004, Symbol: "task_state+0x4",
			Disassembly: "mov rax, qword ptr [rdi+0x10]", Reason: "not in the memo", CodeAddr: 0x1000, Code: code}}
		return f
	}}
	m := newTestModel(t, src)
	press(t, m, "tab", "tab", "tab")
	s := screen(m)
	if !strings.Contains(s, "Events 1") || !strings.Contains(s, "task_state+0x4") || !strings.Contains(s, "not in the memo") {
		t.Fatalf("events pane:\n%s", s)
	}
	press(t, m, "enter")
	s = screen(m)
	for _, want := range []string{"fall-back at task_state+0x4", "reason      not in the memo", "  0x1000  55", "> 0x1004  48 8b 47 10", "mov rax, qword ptr [rdi+0x10]", "  0x1009  c3"} {
		if !strings.Contains(s, want) {
			t.Errorf("event details lack %q:\n%s", want, s)
		}
	}
	// Events accumulate over refreshes.
	press(t, m, "esc", "r")
	if s := screen(m); !strings.Contains(s, "Events 2") {
		t.Errorf("second refresh's event not logged:\n%s", s)
	}
}

func TestConsoleClearMemoAsksFirst(t *testing.T) {
	src := &fakeSource{frame: demoFrame}
	m := newTestModel(t, src)
	press(t, m, "c")
	if s := screen(m); !strings.Contains(s, "clear the memo?") {
		t.Errorf("no confirmation asked:\n%s", s)
	}
	press(t, m, "n")
	if src.clears != 0 {
		t.Fatal("memo cleared although the user said no")
	}
	press(t, m, "c", "y")
	if src.clears != 1 {
		t.Fatalf("clears = %d after yes", src.clears)
	}
	if len(src.modes) != 2 {
		t.Errorf("no refresh after clearing (%d refreshes)", len(src.modes))
	}
}

func TestConsoleAutoRefresh(t *testing.T) {
	src := &fakeSource{frame: demoFrame}
	m := newTestModel(t, src)
	if m.auto {
		t.Fatal("auto-refresh on with Interval 0")
	}
	press(t, m, "a")
	if s := screen(m); !strings.Contains(s, "auto every 10s") {
		t.Errorf("header:\n%s", s)
	}
	press(t, m, "+")
	if m.interval != 5*time.Second {
		t.Errorf("+ from 10s: %v", m.interval)
	}
	drive(t, m, func() tea.Msg { return tickMsg{gen: m.tickGen} })
	if len(src.modes) != 2 {
		t.Errorf("tick did not refresh: %d refreshes", len(src.modes))
	}
	drive(t, m, func() tea.Msg { return tickMsg{gen: m.tickGen - 1} })
	press(t, m, "a")
	drive(t, m, func() tea.Msg { return tickMsg{gen: m.tickGen} })
	if len(src.modes) != 2 {
		t.Errorf("stale or disabled ticks refreshed: %d refreshes", len(src.modes))
	}
}

func TestConsoleMouse(t *testing.T) {
	m := newTestModel(t, &fakeSource{frame: demoFrame})
	// The tab bar is line 2; "Network" is the second label.
	x := len(" Processes 6 ") + 1
	m.Update(tea.MouseClickMsg{X: x, Y: headerLines - 1, Button: tea.MouseLeft})
	if m.panes[m.active].name() != "Network" {
		t.Fatalf("click on the tab bar focused %s", m.panes[m.active].name())
	}
	m.Update(tea.MouseClickMsg{X: 3, Y: 0, Button: tea.MouseLeft})
	press(t, m, "shift+tab")
	// Caption, table header, then rows: the third row is pane line 4.
	m.Update(tea.MouseClickMsg{X: 3, Y: headerLines + 4, Button: tea.MouseLeft})
	tp := m.panes[0].(*tablePane[inspect.Process])
	if tp.tbl.cursor != 2 {
		t.Errorf("click on the third row: cursor %d", tp.tbl.cursor)
	}
	m.Update(tea.MouseWheelMsg{Button: tea.MouseWheelDown})
	if tp.tbl.cursor != 5 {
		t.Errorf("wheel down: cursor %d", tp.tbl.cursor)
	}
}

func TestConsoleHelpAndQuit(t *testing.T) {
	m := newTestModel(t, &fakeSource{frame: demoFrame})
	if s := screen(m); !strings.Contains(s, "tab next pane") || !strings.Contains(s, "q quit") {
		t.Errorf("help bar:\n%s", s)
	}
	press(t, m, "?")
	if s := screen(m); !strings.Contains(s, "reverse sort") || !strings.Contains(s, "refresh less often") {
		t.Errorf("full help:\n%s", s)
	}
	press(t, m, "?")
	for _, k := range []string{"q", "ctrl+c"} {
		cmd := m.onKey(keyMsg(k))
		if cmd == nil {
			t.Fatalf("%s: no command", k)
		}
		if _, ok := cmd().(tea.QuitMsg); !ok {
			t.Errorf("%s does not quit", k)
		}
	}
}

func TestConsoleGolden(t *testing.T) {
	m := newTestModel(t, &fakeSource{frame: demoFrame})
	var b strings.Builder
	for range m.panes {
		b.WriteString(screen(m))
		b.WriteString("\n" + strings.Repeat("=", testWidth) + "\n")
		press(t, m, "tab")
	}
	golden := filepath.Join("testdata", "console.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./ui/ -run Golden -update)", err)
	}
	if b.String() != string(want) {
		t.Errorf("screens differ from %s (-update rewrites it):\n%s", golden, b.String())
	}
}

func TestSparkline(t *testing.T) {
	if got := sparkline([]float64{-1, 0, 0.5, 1}); got != "·▁▄█" {
		t.Errorf("sparkline = %q", got)
	}
}

func TestStepInterval(t *testing.T) {
	cases := []struct {
		d       time.Duration
		shorter bool
		want    time.Duration
	}{
		{10 * time.Second, true, 5 * time.Second},
		{2 * time.Second, true, 2 * time.Second},
		{10 * time.Second, false, 30 * time.Second},
		{time.Minute, false, time.Minute},
		{7 * time.Second, false, 10 * time.Second},
	}
	for _, c := range cases {
		if got := stepInterval(c.d, c.shorter); got != c.want {
			t.Errorf("stepInterval(%v, %v) = %v, want %v", c.d, c.shorter, got, c.want)
		}
	}
}

func TestCmpNumeric(t *testing.T) {
	if cmpNumeric("9", "10") >= 0 || cmpNumeric("-", "3") <= 0 || cmpNumeric("1.5", "1.5") != 0 {
		t.Error("numeric order wrong")
	}
}

func TestModeNames(t *testing.T) {
	for m := ModeAuto; m <= ModeSlow; m++ {
		if got, ok := ParseMode(m.String()); !ok || got != m {
			t.Errorf("ParseMode(%q) = %v, %v", m, got, ok)
		}
	}
	if ModeSlow.Next() != ModeAuto {
		t.Error("mode cycle does not wrap")
	}
}

func TestConsoleRefreshKeyDuringRefresh(t *testing.T) {
	src := &fakeSource{frame: demoFrame}
	m := newTestModel(t, src)
	cmd := m.startRefresh() // in flight: its command has not run yet
	gen := m.gen
	if c := m.onKey(keyMsg("r")); c != nil || m.gen != gen {
		t.Fatal("r restarted the refresh in flight")
	}
	if s := screen(m); !strings.Contains(s, "a refresh is already running") {
		t.Errorf("status:\n%s", s)
	}
	drive(t, m, cmd)
	if m.refreshing || len(src.modes) != 2 {
		t.Errorf("refreshing %v after %d refreshes", m.refreshing, len(src.modes))
	}
}

func TestConsoleRefreshPanicGoesToTheStatusLine(t *testing.T) {
	m := newTestModel(t, &fakeSource{frame: func(Mode) *Frame { panic("index out of range") }})
	if s := screen(m); !strings.Contains(s, "refresh failed: refresh panicked: index out of range") {
		t.Errorf("status:\n%s", s)
	}
	if m.refreshing {
		t.Error("still refreshing after the panic")
	}
}
