package ui

import (
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// psResult is shaped like a busybox ps run on the demo guest that fell back once.
func psResult(mode Mode, argv []string) (*ProgramResult, error) {
	return &ProgramResult{
		Argv: argv, Mode: mode, Time: t0, Elapsed: 1234 * time.Millisecond, Wall: 800 * time.Millisecond,
		Engine: "Unicorn-fast+taint", Status: 0,
		Stdout:   []byte("PID   USER     TIME  COMMAND\n    1 root      0:00 init\n  103 root      0:00 {hb-parent}\n"),
		Stderr:   []byte("ps: warning\n"),
		Syscalls: 412, Faults: 31, Fallbacks: 1,
		Events: []Event{{Time: t0, View: "run ps", Syscall: "read", PC: 0x1004, Symbol: "proc_pid_cmdline_read+0x4",
			Disassembly: "mov rax, qword ptr [rdi+0x10]", Reason: "not in the memo"}},
	}, nil
}

// typeLine presses each character of line as its own key, as a user types it.
func typeLine(t *testing.T, m *Model, line string) {
	t.Helper()
	for _, r := range line {
		press(t, m, string(r))
	}
}

func TestConsolePromptRunsAProgram(t *testing.T) {
	src := &fakeSource{frame: demoFrame, program: psResult}
	m := newTestModel(t, src)
	press(t, m, ":")
	if s := screen(m); !strings.Contains(s, ":a busybox applet") || !strings.Contains(s, "enter run") || !strings.Contains(s, "esc cancel") {
		t.Errorf("the prompt or its keys are not shown:\n%s", s)
	}
	typeLine(t, m, "ps")
	press(t, m, "enter")
	if want := [][]string{{"ps"}}; !reflect.DeepEqual(src.runs, want) || src.runModes[0] != ModeAuto {
		t.Fatalf("runs %q in %v, want %q in auto", src.runs, src.runModes, want)
	}
	if m.prompting || m.running != nil {
		t.Errorf("prompting %v, running %q after the run", m.prompting, m.running)
	}
	if name := m.panes[m.active].name(); name != "Program" {
		t.Errorf("focused pane %s after a run, want Program", name)
	}
	s := screen(m)
	for _, want := range []string{
		"$ ps  exit 0  engine Unicorn-fast+taint  elapsed 1.23s (program 800ms)  syscalls 412  fall-backs 1",
		"    1 root      0:00 init", "  103 root      0:00 {hb-parent}", "stderr│ ps: warning",
		"4 lines of output, 1 on stderr",
		"ps exited with status 0 in 1.23s on Unicorn-fast+taint, fall-backs 1",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("screen lacks %q:\n%s", want, s)
		}
	}
	// The run's fall-back joins the refreshes' in the event log.
	press(t, m, "shift+tab", "shift+tab")
	if s := screen(m); !strings.Contains(s, "Events 1") || !strings.Contains(s, "run ps") || !strings.Contains(s, "proc_pid_cmdline_read+0x4") {
		t.Errorf("the events pane lacks the program's fall-back:\n%s", s)
	}
}

func TestConsolePromptShowsTheRunInFlight(t *testing.T) {
	src := &fakeSource{frame: demoFrame, program: psResult}
	m := newTestModel(t, src)
	press(t, m, ":")
	typeLine(t, m, "netstat -an")
	cmd := m.onKey(keyMsg("enter")) // not run yet: the program is in flight
	s := screen(m)
	for _, want := range []string{"running netstat -an", "$ netstat -an  running in mode auto..."} {
		if !strings.Contains(s, want) {
			t.Errorf("screen lacks %q while the program runs:\n%s", want, s)
		}
	}
	// A second command line waits for the first rather than piling up on the guest.
	press(t, m, ":", "p", "s", "enter")
	if s := screen(m); !strings.Contains(s, "a program is already running (netstat -an)") {
		t.Errorf("second run while one is in flight:\n%s", s)
	}
	drive(t, m, cmd)
	if want := [][]string{{"netstat", "-an"}}; !reflect.DeepEqual(src.runs, want) {
		t.Errorf("runs %q, want %q", src.runs, want)
	}
	// The refused line stays in the prompt.
	press(t, m, ":")
	if m.prompt.Value() != "ps" {
		t.Errorf("prompt after a refused line: %q", m.prompt.Value())
	}
}

func TestConsolePromptEscCancels(t *testing.T) {
	src := &fakeSource{frame: demoFrame, program: psResult}
	m := newTestModel(t, src)
	press(t, m, ":")
	// While typing, the console's keys are text.
	typeLine(t, m, "qmrc ")
	press(t, m, "esc")
	if m.prompting || len(src.runs) != 0 {
		t.Fatalf("esc: prompting %v, runs %q", m.prompting, src.runs)
	}
	if len(src.modes) != 1 || m.mode != ModeAuto || m.confirm || src.clears != 0 {
		t.Errorf("keys typed at the prompt acted: %d refreshes, mode %v, confirm %v", len(src.modes), m.mode, m.confirm)
	}
	if s := screen(m); strings.Contains(s, "qmrc") || !strings.Contains(s, "q quit") {
		t.Errorf("screen after esc:\n%s", s)
	}
	press(t, m, ":")
	if m.prompt.Value() != "" {
		t.Errorf("the cancelled line came back: %q", m.prompt.Value())
	}
	press(t, m, "enter")
	if len(src.runs) != 0 || !strings.Contains(screen(m), "nothing to run") {
		t.Errorf("an empty line ran %q:\n%s", src.runs, screen(m))
	}
}

func TestConsolePromptQuotes(t *testing.T) {
	src := &fakeSource{frame: demoFrame, program: psResult}
	m := newTestModel(t, src)
	press(t, m, ":")
	typeLine(t, m, `ps -o 'pid,user' "a b"`)
	press(t, m, "enter")
	if want := [][]string{{"ps", "-o", "pid,user", "a b"}}; !reflect.DeepEqual(src.runs, want) {
		t.Fatalf("runs %q, want %q", src.runs, want)
	}
	if s := screen(m); !strings.Contains(s, "$ ps -o pid,user 'a b'  exit 0") {
		t.Errorf("header does not show the command as typed again:\n%s", s)
	}
	press(t, m, ":")
	typeLine(t, m, `cat 'x`)
	press(t, m, "enter")
	if s := screen(m); len(src.runs) != 1 || !strings.Contains(s, "run: unterminated ' quote") {
		t.Errorf("an unterminated quote ran (%q) or is not reported:\n%s", src.runs, s)
	}
	// The prompt completes from the lines run before.
	press(t, m, ":")
	m.prompt.SetValue("")
	typeLine(t, m, "ps -")
	press(t, m, "tab", "enter")
	if n := len(src.runs); n != 2 || !reflect.DeepEqual(src.runs[1], []string{"ps", "-o", "pid,user", "a b"}) {
		t.Errorf("completion from history: runs %q", src.runs)
	}
}

func TestConsolePromptFailedRunIsOneLine(t *testing.T) {
	src := &fakeSource{frame: demoFrame, program: func(mode Mode, argv []string) (*ProgramResult, error) {
		return &ProgramResult{Argv: argv, Mode: mode, Engine: "Unicorn-fast", Elapsed: time.Second, Syscalls: 7,
			Stdout: []byte("partial\n"), Err: "sh: forked at clone\n  at do_syscall_64"}, nil
	}}
	m := newTestModel(t, src)
	press(t, m, ":")
	typeLine(t, m, "sh -c ls")
	press(t, m, "enter")
	s := screen(m)
	for _, want := range []string{"$ sh -c ls  exit -  engine Unicorn-fast", "✗ failed: sh: forked at clone", "partial", "✗ sh -c ls failed: sh: forked at clone"} {
		if !strings.Contains(s, want) {
			t.Errorf("screen lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "do_syscall_64") {
		t.Errorf("the error's second line is shown:\n%s", s)
	}

	src.program = func(Mode, []string) (*ProgramResult, error) {
		return nil, errors.New("attach guest demo: guest demo is not running")
	}
	press(t, m, ":", "i", "d", "enter")
	s = screen(m)
	if !strings.Contains(s, "$ id\n") && !strings.Contains(s, "$ id ") {
		t.Errorf("the command is not shown:\n%s", s)
	}
	if !strings.Contains(s, "✗ not run: attach guest demo: guest demo is not running") || strings.Contains(s, "partial") {
		t.Errorf("a run that could not start:\n%s", s)
	}
}

func TestConsolePromptModeAndPanic(t *testing.T) {
	src := &fakeSource{frame: demoFrame, program: func(Mode, []string) (*ProgramResult, error) { panic("nil map") }}
	m := newTestModel(t, src)
	press(t, m, "m", ":", "p", "s", "enter")
	if len(src.runModes) != 1 || src.runModes[0] != ModeFast {
		t.Errorf("run modes %v, want the console's mode (fast)", src.runModes)
	}
	if s := screen(m); !strings.Contains(s, "run ps: run panicked: nil map") || m.running != nil {
		t.Errorf("a panicking run:\n%s", s)
	}
	// A fast run that Slow-Bridge ran says so.
	src.program = func(mode Mode, argv []string) (*ProgramResult, error) {
		return &ProgramResult{Argv: argv, Mode: mode, Engine: "Unicorn-taint"}, nil
	}
	press(t, m, ":", "p", "s", "enter")
	if s := screen(m); !strings.Contains(s, "engine Unicorn-taint (not fast)") || !strings.Contains(s, "(no output)") {
		t.Errorf("engine against mode:\n%s", s)
	}
}

func TestProgramPaneScrolls(t *testing.T) {
	var out strings.Builder
	for i := range 100 {
		out.WriteString("line " + strings.Repeat("x", i%3) + "\n")
	}
	src := &fakeSource{frame: demoFrame, program: func(mode Mode, argv []string) (*ProgramResult, error) {
		return &ProgramResult{Argv: argv, Mode: mode, Engine: "Unicorn-fast", Stdout: []byte(out.String() + "last\n")}, nil
	}}
	m := newTestModel(t, src)
	press(t, m, ":", "l", "s", "enter")
	if s := screen(m); strings.Contains(s, "last") {
		t.Fatalf("the end of a long output fits:\n%s", s)
	}
	press(t, m, "G")
	if s := screen(m); !strings.Contains(s, "last") {
		t.Errorf("G does not reach the output's end:\n%s", s)
	}
	press(t, m, "g")
	if m.program.off != 0 {
		t.Errorf("g: offset %d", m.program.off)
	}
	for range 200 {
		press(t, m, "j")
	}
	if want := len(m.program.body) - m.program.bodyHeight(); m.program.off != want {
		t.Errorf("scrolled past the end: offset %d, want %d", m.program.off, want)
	}
}

// A note of the run (a guest file the program could not be given) shows under its header, and the
// output below still scrolls to its end.
func TestProgramPaneShowsNotes(t *testing.T) {
	note := "the guest's /etc/passwd is not in its memory: the program found none"
	var out strings.Builder
	for i := range 60 {
		out.WriteString("line " + strconv.Itoa(i) + "\n")
	}
	src := &fakeSource{frame: demoFrame, program: func(mode Mode, argv []string) (*ProgramResult, error) {
		return &ProgramResult{Argv: argv, Mode: mode, Engine: "Unicorn-fast", Stdout: []byte(out.String()), Notes: []string{note}}, nil
	}}
	m := newTestModel(t, src)
	press(t, m, ":", "p", "s", "enter", "G")
	s := screen(m)
	if !strings.Contains(s, "! "+note) || !strings.Contains(s, "line 59") {
		t.Errorf("the note or the output's end is missing:\n%s", s)
	}
}

func TestSplitWords(t *testing.T) {
	cases := []struct {
		line string
		want []string
	}{
		{"", nil},
		{"  ps   -o  pid ", []string{"ps", "-o", "pid"}},
		{`cat '/proc/a b' "x\"y" \$HOME`, []string{"cat", "/proc/a b", `x"y`, "$HOME"}},
		{`echo '' "" a''b`, []string{"echo", "", "", "ab"}},
		{`echo "a\nb" 'c\d'`, []string{"echo", `a\nb`, `c\d`}},
		{`echo a\ b`, []string{"echo", "a b"}},
	}
	for _, c := range cases {
		got, err := splitWords(c.line)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("splitWords(%q) = %q, %v; want %q", c.line, got, err, c.want)
		}
		if back, err := splitWords(commandLine(got)); err != nil || !reflect.DeepEqual(back, got) {
			t.Errorf("commandLine(%q) = %q does not split back: %q, %v", got, commandLine(got), back, err)
		}
	}
	for _, bad := range []string{`echo 'a`, `echo "a`, `echo "a\"`} {
		if _, err := splitWords(bad); err == nil {
			t.Errorf("splitWords(%q): no error", bad)
		}
	}
}

func TestOutputLinesAreSafeToDraw(t *testing.T) {
	got := outputLines([]byte("a\tb\r\n\x1b[31mred\x1b[0m\nbell\a\xff\n"))
	want := []string{"a       b", "red", "bell?\uFFFD"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("outputLines = %q, want %q", got, want)
	}
	if outputLines(nil) != nil {
		t.Error("no output is not no lines")
	}
}
