package ui

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"

	"charm.land/bubbles/v2/key"
	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/x/ansi"
)

// programSink is a pane that also shows program runs, not only refreshes.
type programSink interface {
	addProgram(r *ProgramResult)
}

// programPane shows the last program run: a header with what ran it, then its output.
type programPane struct {
	running []string // the command line in flight, nil when none
	mode    Mode     // the mode it runs in
	res     *ProgramResult
	err     error // nothing ran: the source could not start the run
	argv    []string
	// body is the output, made once per run: rebuilding it on every frame would cost a long
	// output's sanitizing at each scroll step.
	body          []string
	nOut, nErr    int
	off           int
	width, height int
}

func newProgramPane() *programPane { return &programPane{} }

func (p *programPane) name() string                   { return "Program" }
func (p *programPane) count() (int, int)              { return 0, -1 }
func (p *programPane) setFrame(*Frame)                {}
func (p *programPane) setSize(w, h int)               { p.width, p.height = w, h; p.scroll(0) }
func (p *programPane) capturing() bool                { return false }
func (p *programPane) click(int)                      {}
func (p *programPane) bodyHeight() int                { return max(1, p.height-p.headerLines()-1) }
func (p *programPane) start(argv []string, mode Mode) { p.running, p.mode = argv, mode }

func (p *programPane) headerLines() int {
	n := 1
	if p.err != nil || (p.res != nil && p.res.Err != "") {
		n++
	}
	if p.res != nil {
		n += len(p.res.Notes)
	}
	return n
}

func (p *programPane) scroll(n int) {
	p.off = max(0, min(p.off+n, len(p.body)-p.bodyHeight()))
}

// finish shows a run's result, or err when nothing ran.
func (p *programPane) finish(argv []string, res *ProgramResult, err error) {
	p.running, p.argv, p.res, p.err, p.off = nil, argv, res, err, 0
	p.body, p.nOut, p.nErr = nil, 0, 0
	if res == nil {
		return
	}
	out, errs := outputLines(res.Stdout), outputLines(res.Stderr)
	p.nOut, p.nErr = len(out), len(errs)
	p.body = out
	for _, l := range errs {
		// Marked per line, so a scrolled view still tells the two streams apart.
		p.body = append(p.body, stderrMark+l)
	}
}

// stderrMark starts each line the program wrote to its standard error; view styles it.
const stderrMark = "stderr│ "

func (p *programPane) key(msg tea.KeyPressMsg, k KeyMap) (bool, tea.Cmd) {
	switch {
	case key.Matches(msg, k.Up):
		p.scroll(-1)
	case key.Matches(msg, k.Down):
		p.scroll(1)
	case key.Matches(msg, k.PageUp):
		p.scroll(-p.bodyHeight())
	case key.Matches(msg, k.PageDown):
		p.scroll(p.bodyHeight())
	case key.Matches(msg, k.Home):
		p.off = 0
	case key.Matches(msg, k.End):
		p.scroll(len(p.body))
	default:
		return false, nil
	}
	return true, nil
}

func (p *programPane) view(s *Styles) string {
	switch {
	case p.running != nil:
		head := s.Value.Render("$ "+commandLine(p.running)) + "  " + s.Dim.Render("running in mode "+p.mode.String()+"...")
		return scrollText(head, 0, p.width, p.height)
	case p.res == nil && p.err == nil:
		return scrollText("no program run yet\n\n"+
			"Press : and type a busybox applet of the SVM's image with its arguments (ps, netstat -an,\n"+
			"free, ip addr, cat /proc/loadavg). It runs unmodified against the guest, its system calls\n"+
			"served by the guest kernel's code in the console's mode; its output shows here.\n"+
			"Quotes group words ('a b', \"a b\"); nothing else of a shell applies.", 0, p.width, p.height)
	}
	lines := []string{p.header(s)}
	switch {
	case p.err != nil:
		lines = append(lines, s.Error.Render("✗ not run: ")+oneLine(p.err.Error()))
	case p.res.Err != "":
		lines = append(lines, s.Error.Render("✗ failed: ")+oneLine(p.res.Err))
	}
	if p.res != nil {
		for _, n := range p.res.Notes {
			lines = append(lines, s.Warn.Render("! ")+oneLine(n))
		}
	}
	h := p.bodyHeight()
	body := make([]string, 0, h)
	for _, l := range p.body[min(p.off, len(p.body)):min(p.off+h, len(p.body))] {
		if rest, ok := strings.CutPrefix(l, stderrMark); ok {
			l = s.Warn.Render(stderrMark) + rest
		}
		body = append(body, l)
	}
	if p.res != nil && len(p.body) == 0 {
		body = append(body, s.Dim.Render("(no output)"))
	}
	for i, l := range lines {
		lines[i] = ansi.Truncate(l, p.width, "…")
	}
	footer := s.Dim.Render(fmt.Sprintf("%d lines of output, %d on stderr  ↑/↓ pgup/pgdn: scroll  :: run a program", p.nOut+p.nErr, p.nErr))
	return strings.Join(lines, "\n") + "\n" + strings.Join(fitLines(strings.Join(body, "\n"), h), "\n") + "\n" + ansi.Truncate(footer, p.width, "…")
}

// header is the run's one line: what ran, how it ended, and what it cost.
func (p *programPane) header(s *Styles) string {
	parts := []string{s.Value.Render("$ " + commandLine(p.argv))}
	r := p.res
	if r == nil {
		return parts[0]
	}
	exit := strconv.Itoa(r.Status)
	if r.Err != "" {
		exit = "-"
	}
	engine := field(s, "engine", orDash(r.Engine))
	if !modeMatches(r.Mode, r.Engine) {
		engine = s.Label.Render("engine") + " " + s.Warn.Render(r.Engine+" (not "+r.Mode.String()+")")
	}
	elapsed := r.Elapsed.Round(10 * time.Millisecond).String()
	if r.Wall > 0 {
		elapsed += " (program " + r.Wall.Round(time.Millisecond).String() + ")"
	}
	parts = append(parts,
		field(s, "exit", exit),
		engine,
		field(s, "elapsed", elapsed),
		field(s, "syscalls", strconv.Itoa(r.Syscalls)),
		field(s, "fall-backs", strconv.Itoa(r.Fallbacks)),
		field(s, "mode", r.Mode.String()),
		field(s, "faults", strconv.Itoa(r.Faults)),
	)
	if !r.Time.IsZero() {
		parts = append(parts, field(s, "at", r.Time.Format("15:04:05")))
	}
	return strings.Join(parts, "  ")
}

// outputLines is a program's output as lines fit for the terminal: the program writes bytes, and
// its escape sequences, carriage returns or tabs would move the console's own cursor.
func outputLines(b []byte) []string {
	if len(b) == 0 {
		return nil
	}
	text := strings.ReplaceAll(ansi.Strip(strings.ToValidUTF8(string(b), "\uFFFD")), "\r\n", "\n")
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	for i, l := range lines {
		lines[i] = printable(l)
	}
	return lines
}

// printable expands tabs to 8-column stops and shows any other control character as '?'.
func printable(line string) string {
	clean := true
	for _, r := range line {
		if unicode.IsControl(r) {
			clean = false
			break
		}
	}
	if clean {
		return line
	}
	var b strings.Builder
	col := 0
	for _, r := range line {
		switch {
		case r == '\t':
			n := 8 - col%8
			b.WriteString(strings.Repeat(" ", n))
			col += n
		case unicode.IsControl(r):
			b.WriteByte('?')
			col++
		default:
			b.WriteRune(r)
			col += ansi.StringWidth(string(r))
		}
	}
	return b.String()
}

// splitWords splits a command line into words the way a shell does for plain words and quotes:
// blanks separate words; '...' keeps its text as it is; "..." too, except that \" \\ \$ and \`
// stand for the character; a backslash outside quotes keeps the next character as it is. Nothing
// else of a shell applies (no variables, globs, pipes or redirections): the program has no shell
// to interpret them.
func splitWords(line string) ([]string, error) {
	var words []string
	var w strings.Builder
	inWord := false // a word is open, even an empty one ('')
	rs := []rune(line)
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch {
		case r == ' ' || r == '\t' || r == '\n':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		case r == '\\':
			inWord = true
			if i+1 < len(rs) {
				i++
				w.WriteRune(rs[i])
			} else {
				w.WriteRune(r)
			}
		case r == '\'' || r == '"':
			inWord = true
			end := -1
			for j := i + 1; j < len(rs); j++ {
				if rs[j] == r {
					end = j
					break
				}
				if r == '"' && rs[j] == '\\' && j+1 < len(rs) && strings.ContainsRune("\"\\$`", rs[j+1]) {
					j++
					w.WriteRune(rs[j])
					continue
				}
				w.WriteRune(rs[j])
			}
			if end < 0 {
				return nil, fmt.Errorf("unterminated %c quote", r)
			}
			i = end
		default:
			inWord = true
			w.WriteRune(r)
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, nil
}

// commandLine shows argv as it could be typed again at the prompt.
func commandLine(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && !strings.ContainsAny(a, " \t\n'\"\\") {
			q[i] = a
			continue
		}
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// runProgramRecovered runs a program; a panic becomes its error, as refreshRecovered does for a
// refresh.
func runProgramRecovered(ctx context.Context, src Source, mode Mode, argv []string) (r *ProgramResult, err error) {
	defer func() {
		if p := recover(); p != nil {
			r, err = nil, fmt.Errorf("run panicked: %v", p)
		}
	}()
	r, err = src.RunProgram(ctx, mode, argv)
	if err == nil && r == nil {
		err = errors.New("run returned no result")
	}
	return r, err
}
