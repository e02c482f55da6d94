package ui

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"charm.land/bubbles/v2/key"
	"charm.land/bubbles/v2/textinput"
	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/x/ansi"

	"hybridbridge/inspect"
)

// pane is one tab of the console. The root model routes keys to the focused pane and frames to
// every pane.
type pane interface {
	name() string
	count() (shown, total int) // the numbers in the tab; total -1 for none
	setFrame(f *Frame)
	setSize(w, h int)
	// key handles a key press; false means the root model should handle it.
	key(msg tea.KeyPressMsg, k KeyMap) (bool, tea.Cmd)
	// capturing is true while the pane takes every key (typing a filter).
	capturing() bool
	click(y int)
	scroll(n int)
	view(s *Styles) string
}

// tablePane shows a slice of records as a table with a filter, and one record's details on enter.
type tablePane[T any] struct {
	title    string
	viewName string // the engine view that fills this pane, for the caption
	items    []T
	extract  func(*Frame) []T
	// accumulate keeps earlier frames' items (the event log) instead of replacing them.
	accumulate bool
	limit      int // with accumulate: the most items kept
	// fromProgram, with accumulate, logs a program run's items too (its fall-backs).
	fromProgram func(*ProgramResult) []T
	cells       func(T) []string
	details     func(T) string
	// caption, if set, replaces the engine-work caption of viewName.
	caption   func(p *tablePane[T]) string
	tbl       table
	input     textinput.Model
	typing    bool
	detail    string // non-empty while the details of a record are shown
	detailOff int
	frame     *Frame
	width     int
	height    int
}

func newTablePane[T any](title, viewName string, cols []column, sortCol int, extract func(*Frame) []T, cells func(T) []string, details func(T) string) *tablePane[T] {
	in := textinput.New()
	in.Prompt = "/"
	in.Placeholder = "filter"
	return &tablePane[T]{title: title, viewName: viewName, extract: extract, cells: cells, details: details,
		tbl: newTable(cols, sortCol), input: in}
}

func (p *tablePane[T]) name() string { return p.title }

func (p *tablePane[T]) count() (int, int) {
	if p.frame == nil && len(p.items) == 0 {
		return 0, -1
	}
	return len(p.tbl.rows), len(p.tbl.all)
}

func (p *tablePane[T]) setFrame(f *Frame) {
	p.frame = f
	p.add(p.extract(f))
}

func (p *tablePane[T]) addProgram(r *ProgramResult) {
	if p.accumulate && p.fromProgram != nil {
		p.add(p.fromProgram(r))
	}
}

// add logs items, or replaces the shown ones when the pane does not accumulate.
func (p *tablePane[T]) add(items []T) {
	if p.accumulate {
		p.items = append(p.items, items...)
		if p.limit > 0 && len(p.items) > p.limit {
			p.items = p.items[len(p.items)-p.limit:]
		}
	} else {
		p.items = items
	}
	rows := make([]row, len(p.items))
	for i, it := range p.items {
		rows[i] = row{cells: p.cells(it), index: i}
	}
	p.tbl.setRows(rows)
}

// setSize lays out caption (1 line), table (header + rows) and the filter line (1 line).
func (p *tablePane[T]) setSize(w, h int) {
	p.width, p.height = w, h
	p.tbl.width = w
	p.tbl.height = max(1, h-3)
	p.tbl.clamp()
	p.input.SetWidth(max(10, w-20))
}

func (p *tablePane[T]) capturing() bool { return p.typing }

func (p *tablePane[T]) key(msg tea.KeyPressMsg, k KeyMap) (bool, tea.Cmd) {
	if p.typing {
		switch {
		case key.Matches(msg, k.ApplyFilter):
			p.typing = false
			p.input.Blur()
			return true, nil
		case key.Matches(msg, k.ClearFilter):
			p.typing = false
			p.input.Blur()
			p.input.SetValue("")
			p.tbl.setFilter("")
			return true, nil
		}
		var cmd tea.Cmd
		p.input, cmd = p.input.Update(msg)
		p.tbl.setFilter(p.input.Value())
		return true, cmd
	}
	if p.detail != "" {
		switch {
		case key.Matches(msg, k.Back), key.Matches(msg, k.Details):
			p.detail = ""
			return true, nil
		case key.Matches(msg, k.Up):
			p.detailOff = max(0, p.detailOff-1)
			return true, nil
		case key.Matches(msg, k.Down):
			p.detailOff++
			return true, nil
		}
		return false, nil
	}
	switch {
	case key.Matches(msg, k.Filter):
		p.typing = true
		return true, p.input.Focus()
	case key.Matches(msg, k.Back):
		if p.input.Value() == "" {
			return false, nil
		}
		p.input.SetValue("")
		p.tbl.setFilter("")
	case key.Matches(msg, k.Details):
		if r, ok := p.tbl.selected(); ok {
			p.detail, p.detailOff = p.details(p.items[r.index]), 0
		}
	case key.Matches(msg, k.Sort):
		p.tbl.cycleSort()
	case key.Matches(msg, k.Reverse):
		p.tbl.reverse()
	case key.Matches(msg, k.Up):
		p.tbl.move(-1)
	case key.Matches(msg, k.Down):
		p.tbl.move(1)
	case key.Matches(msg, k.PageUp):
		p.tbl.move(-p.tbl.height)
	case key.Matches(msg, k.PageDown):
		p.tbl.move(p.tbl.height)
	case key.Matches(msg, k.Home):
		p.tbl.home()
	case key.Matches(msg, k.End):
		p.tbl.end()
	default:
		return false, nil
	}
	return true, nil
}

// click selects the row under the pointer; y counts from the pane's first line (the caption).
func (p *tablePane[T]) click(y int) {
	if p.detail == "" {
		p.tbl.clickRow(y - 1)
	}
}

func (p *tablePane[T]) scroll(n int) {
	if p.detail != "" {
		p.detailOff = max(0, p.detailOff+n)
		return
	}
	p.tbl.move(n)
}

func (p *tablePane[T]) view(s *Styles) string {
	if p.detail != "" {
		return scrollText(p.detail, p.detailOff, p.width, p.height-1) + "\n" + s.Dim.Render("esc/enter: back  ↑/↓: scroll")
	}
	caption := viewCaption(p.frame.View(p.viewName), p.viewName)
	if p.caption != nil {
		caption = p.caption(p)
	} else if p.frame == nil && len(p.items) == 0 {
		caption = "waiting for the first refresh..."
	}
	var footer string
	switch {
	case p.typing:
		footer = p.input.View()
	case p.input.Value() != "":
		footer = s.Dim.Render(fmt.Sprintf("filter %q: %d of %d rows (esc clears)", p.input.Value(), len(p.tbl.rows), len(p.tbl.all)))
	default:
		footer = s.Dim.Render(fmt.Sprintf("%d rows  s: sort  S: reverse  /: filter  enter: details", len(p.tbl.rows)))
	}
	errLine := ""
	if v := p.frame.View(p.viewName); v != nil && v.Err != "" {
		errLine = s.Error.Render(p.viewName+" failed: ") + v.Err
	}
	head := s.Dim.Render(ansi.Truncate(caption, p.width, "…"))
	if errLine != "" {
		head = ansi.Truncate(errLine, p.width, "…")
	}
	return head + "\n" + p.tbl.view(s, true) + "\n" + ansi.Truncate(footer, p.width, "…")
}

// scrollText shows h lines of text from line off, each cut to w cells.
func scrollText(text string, off, w, h int) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	off = max(0, min(off, len(lines)-1))
	lines = lines[off:]
	if len(lines) > h {
		lines = lines[:h]
	}
	for i, l := range lines {
		lines[i] = ansi.Truncate(l, w, "…")
	}
	for len(lines) < h {
		lines = append(lines, "")
	}
	return strings.Join(lines, "\n")
}

// viewCaption is the one line of engine work behind a pane.
func viewCaption(v *ViewStats, name string) string {
	if v == nil {
		return name + ": not run yet"
	}
	s := fmt.Sprintf("%s on %s: %v, %d syscalls, %s instructions, globals %d redirected / %d local / %d unknown",
		v.Name, orDash(v.Engine), v.Elapsed.Round(time.Millisecond), v.Syscalls, humanCount(v.Instructions), v.Globals.Redirect, v.Globals.Local, v.Globals.Unknown)
	if len(v.UnknownGlobals) > 0 {
		s += " (" + strings.Join(v.UnknownGlobals, ", ") + ")"
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// humanCount prints 1234567 as 1.2M: instruction counts are only read for their magnitude.
func humanCount(n uint64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.1fG", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1fM", float64(n)/1e6)
	case n >= 1e4:
		return fmt.Sprintf("%.1fk", float64(n)/1e3)
	}
	return strconv.FormatUint(n, 10)
}

// startOfDay is a process's start as a time of day (UTC), or "?" when the view did not read the
// guest's boot time.
func startOfDay(p inspect.Process) string {
	if p.Start.IsZero() {
		return "?"
	}
	return p.Start.UTC().Format("15:04:05")
}

func newProcessesPane() pane {
	cols := []column{
		{title: "PID", width: 5, numeric: true}, {title: "PPID", width: 5, numeric: true},
		{title: "USER", width: 8}, {title: "STAT", width: 4}, {title: "THR", width: 3, numeric: true},
		{title: "RSS", width: 5, numeric: true}, {title: "START", width: 8},
		{title: "COMMAND", width: 10, flex: true},
	}
	return newTablePane("Processes", "ps", cols, 0,
		func(f *Frame) []inspect.Process { return f.Processes },
		func(p inspect.Process) []string {
			cmd := p.Command()
			if len(p.Missing) > 0 {
				cmd += fmt.Sprintf("  (comm %q; unknown: %s)", p.Comm, strings.Join(p.Missing, "; "))
			}
			user := p.User
			if user == "" {
				user = strconv.Itoa(p.UID) // the name is unknown, never guessed
			}
			return []string{strconv.Itoa(p.PID), strconv.Itoa(p.PPID), user, p.State,
				strconv.Itoa(p.Threads), strconv.Itoa(p.RSSKiB), startOfDay(p), cmd}
		},
		func(p inspect.Process) string {
			var b strings.Builder
			fmt.Fprintf(&b, "process %d (%s)\n\n", p.PID, p.Comm)
			fmt.Fprintf(&b, "  parent      %d\n  state       %s\n  uid         %d %s\n  threads     %d\n  rss         %d KiB\n  start       %s UTC, %d ticks after boot\n  cpu time    %d ticks\n  kernel      %v\n",
				p.PPID, p.State, p.UID, p.User, p.Threads, p.RSSKiB, startOfDay(p), p.StartTicks, p.CPUTicks, p.Kernel)
			if len(p.NSPIDs) > 0 {
				fmt.Fprintf(&b, "  pid in its namespaces %v\n", p.NSPIDs)
			}
			if len(p.Cmdline) > 0 {
				b.WriteString("  argv\n")
				for i, a := range p.Cmdline {
					fmt.Fprintf(&b, "    [%d] %q\n", i, a)
				}
			}
			if len(p.Missing) > 0 {
				b.WriteString("  not available (never guessed)\n")
				for _, m := range p.Missing {
					fmt.Fprintf(&b, "    %s\n", m)
				}
			}
			return b.String()
		})
}

func newNetworkPane() pane {
	cols := []column{
		{title: "PROTO", width: 5}, {title: "LOCAL", width: 21}, {title: "REMOTE", width: 21},
		{title: "STATE", width: 11}, {title: "RECV-Q", width: 6, numeric: true}, {title: "SEND-Q", width: 6, numeric: true},
		{title: "UID", width: 4, numeric: true}, {title: "INODE", width: 6, numeric: true}, {title: "PIDS", width: 6, flex: true},
	}
	return newTablePane("Network", "netstat", cols, 0,
		func(f *Frame) []inspect.Socket { return f.Sockets },
		func(s inspect.Socket) []string {
			return []string{s.Proto, orDash(s.Local), orDash(s.Remote), orDash(s.State),
				strconv.FormatUint(s.RxQueue, 10), strconv.FormatUint(s.TxQueue, 10), strconv.Itoa(s.UID),
				strconv.FormatUint(s.Inode, 10), joinInts(s.PIDs)}
		},
		func(s inspect.Socket) string {
			var b strings.Builder
			fmt.Fprintf(&b, "%s socket, inode %d\n\n", s.Proto, s.Inode)
			fmt.Fprintf(&b, "  local       %s\n  remote      %s\n  state       %s\n  recv-q      %d\n  send-q      %d\n  uid         %d\n",
				orDash(s.Local), orDash(s.Remote), orDash(s.State), s.RxQueue, s.TxQueue, s.UID)
			if s.NetNS != 0 {
				fmt.Fprintf(&b, "  netns       net:[%d] (not the guest's initial one)\n", s.NetNS)
			}
			if s.Proto == "unix" {
				fmt.Fprintf(&b, "  type        %s\n  refs        %d\n  flags       %#x\n", orDash(s.Type), s.Refs, s.Flags)
			}
			fmt.Fprintf(&b, "  processes   %s\n", joinInts(s.PIDs))
			return b.String()
		})
}

func newModulesPane() pane {
	cols := []column{
		{title: "MODULE", width: 16}, {title: "SIZE", width: 7, numeric: true}, {title: "REFS", width: 4, numeric: true},
		{title: "STATE", width: 7}, {title: "ADDRESS", width: 18}, {title: "USED BY", width: 8, flex: true},
	}
	return newTablePane("Modules", "lsmod", cols, 0,
		func(f *Frame) []inspect.Module { return f.Modules },
		func(m inspect.Module) []string {
			addr := "-"
			if m.Addr != 0 {
				addr = fmt.Sprintf("%#x", m.Addr)
			}
			return []string{m.Name, strconv.FormatUint(m.Size, 10), strconv.Itoa(m.Refs), orDash(m.State), addr, strings.Join(m.Users, ",")}
		},
		func(m inspect.Module) string {
			return fmt.Sprintf("module %s\n\n  size        %d bytes\n  refs        %d\n  state       %s\n  address     %#x\n  used by     %s\n  taint       %s\n",
				m.Name, m.Size, m.Refs, orDash(m.State), m.Addr, orDash(strings.Join(m.Users, ", ")), orDash(m.Taint))
		})
}

func newEventsPane() pane {
	cols := []column{
		{title: "TIME", width: 8}, {title: "VIEW", width: 7}, {title: "SYSCALL", width: 8},
		{title: "SYMBOL+OFF", width: 24}, {title: "INSTRUCTION", width: 28}, {title: "REASON", width: 10, flex: true},
	}
	p := newTablePane("Events", "", cols, 0,
		func(f *Frame) []Event { return f.Events },
		func(e Event) []string {
			return []string{e.Time.Format("15:04:05"), orDash(e.View), orDash(e.Syscall), eventSymbol(e), orDash(e.Disassembly), orDash(e.Reason)}
		},
		eventDetails)
	p.accumulate, p.limit = true, 1000
	p.fromProgram = func(r *ProgramResult) []Event { return r.Events }
	p.caption = func(p *tablePane[Event]) string {
		switch {
		case p.frame == nil && len(p.items) == 0:
			return "fall-backs from Fast-Bridge to Slow-Bridge: waiting for the first refresh..."
		case p.frame == nil:
			return fmt.Sprintf("fall-backs from Fast-Bridge to Slow-Bridge: %d logged from program runs; no refresh yet", len(p.items))
		}
		return fmt.Sprintf("fall-backs from Fast-Bridge to Slow-Bridge: %d in the last refresh (engine %s), %d logged",
			p.frame.Fallbacks, orDash(p.frame.Engine), len(p.items))
	}
	return p
}

func eventSymbol(e Event) string {
	if e.Symbol != "" {
		return e.Symbol
	}
	return fmt.Sprintf("%#x", e.PC)
}

func joinInts(v []int) string {
	if len(v) == 0 {
		return "-"
	}
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}
