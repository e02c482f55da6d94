package ui

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"charm.land/bubbles/v2/help"
	"charm.land/bubbles/v2/key"
	"charm.land/bubbles/v2/spinner"
	"charm.land/bubbles/v2/textinput"
	tea "charm.land/bubbletea/v2"
	"charm.land/lipgloss/v2"
	"github.com/charmbracelet/x/ansi"
)

// Options configure a console.
type Options struct {
	Mode     Mode          // the mode of the first refresh
	Interval time.Duration // auto-refresh interval; 0 starts with auto-refresh off
}

// Auto-refresh intervals the +/- keys step through.
var intervals = []time.Duration{2 * time.Second, 5 * time.Second, 10 * time.Second, 30 * time.Second, time.Minute}

const defaultInterval = 10 * time.Second

// Layout: three header lines and the tab bar above the pane, status and help lines below.
const (
	headerLines = 4
	footerLines = 2
)

// Messages. Each asynchronous result carries the generation it was started in; a result of an
// older generation is dropped (the user changed mode, cleared the memo or asked again since).
type (
	refreshMsg struct {
		gen   int
		frame *Frame
		err   error
		ch    <-chan tea.Msg // the stream it came from
	}
	progressMsg struct {
		gen int
		p   Progress
		ch  <-chan tea.Msg
	}
	tickMsg    struct{ gen int }
	clearedMsg struct {
		gen int
		err error
	}
	// programMsg ends a program run. Runs are not generations: one runs at a time, and its
	// result stays valid whatever the refreshes did meanwhile.
	programMsg struct {
		argv []string
		res  *ProgramResult
		err  error
	}
)

// Model is the console's root model: header, tabs, the focused pane, status and help lines.
type Model struct {
	ctx    context.Context // cancels in-flight work when the console ends
	src    Source
	info   Info
	keys   KeyMap
	styles Styles
	help   help.Model
	spin   spinner.Model

	panes  []pane
	active int
	width  int
	height int

	mode     Mode
	auto     bool
	interval time.Duration
	tickGen  int // the live auto-refresh tick chain; older chains stop

	gen        int // generation of the latest refresh or clear started
	refreshing bool
	clearing   bool
	spinning   bool
	cancel     context.CancelFunc // cancels the refresh in flight
	progress   Progress           // what the refresh in flight reports
	frame      *Frame             // the latest refresh's result

	engine     string  // the engine running now, or the last that ran
	switches   int     // live engine switches seen
	lastSwitch *Switch // the latest one, shown in the header

	program   *programPane // also in panes
	prompt    textinput.Model
	prompting bool     // the prompt takes every key
	running   []string // the program run in flight, nil when none
	history   []string // command lines run, the latest first: the prompt completes from them

	status    string
	statusErr bool
	confirm   bool // asking whether to clear the memo
	showHelp  bool
}

// historyLimit is how many command lines the prompt completes from.
const historyLimit = 50

// New builds the console's model. ctx bounds every refresh it starts.
func New(ctx context.Context, src Source, opts Options) *Model {
	st := DefaultStyles()
	sp := spinner.New(spinner.WithSpinner(spinner.MiniDot), spinner.WithStyle(st.Spinner))
	h := help.New()
	in := textinput.New()
	in.Prompt = ":"
	in.Placeholder = "a busybox applet and its arguments, e.g. ps -o pid,user,comm"
	in.ShowSuggestions = true
	prog := newProgramPane()
	m := &Model{
		ctx: ctx, src: src, info: src.Info(), keys: DefaultKeyMap(), styles: st, help: h, spin: sp,
		panes:   []pane{newProcessesPane(), newNetworkPane(), newModulesPane(), newEventsPane(), newMemoPane(), prog},
		program: prog, prompt: in,
		mode: opts.Mode, auto: opts.Interval > 0, interval: opts.Interval,
		width: 100, height: 30,
	}
	if m.interval <= 0 {
		m.interval = defaultInterval
	}
	m.layout()
	return m
}

// Init starts the first refresh and, when on, the auto-refresh ticks.
func (m *Model) Init() tea.Cmd {
	cmds := []tea.Cmd{m.startRefresh()}
	if m.auto {
		cmds = append(cmds, m.armTick())
	}
	return tea.Batch(cmds...)
}

func (m *Model) layout() {
	h := max(1, m.height-headerLines-footerLines)
	for _, p := range m.panes {
		p.setSize(m.width, h)
	}
	m.help.SetWidth(m.width)
	m.prompt.SetWidth(max(10, m.width-2))
}

// startRefresh begins a refresh in the background, abandoning any in flight. The refresh's
// progress reports and its result come through one channel, in the order they happened, so a
// late progress report can never be applied after the result.
func (m *Model) startRefresh() tea.Cmd {
	if m.cancel != nil {
		m.cancel()
	}
	m.gen++
	gen := m.gen
	ctx, cancel := context.WithCancel(m.ctx)
	m.cancel = cancel
	m.refreshing = true
	m.progress = Progress{}
	ch := make(chan tea.Msg, 16)
	src, mode := m.src, m.mode
	send := func(msg tea.Msg) {
		select {
		case ch <- msg:
		case <-ctx.Done(): // nobody will read a cancelled refresh's stream to its end
		}
	}
	start := func() tea.Msg {
		go func() {
			defer close(ch)
			f, err := refreshRecovered(ctx, src, mode, func(p Progress) { send(progressMsg{gen: gen, p: p, ch: ch}) })
			send(refreshMsg{gen: gen, frame: f, err: err, ch: ch})
		}()
		return waitNext(ch)()
	}
	return tea.Batch(start, m.startSpinner())
}

// refreshRecovered runs a refresh; a panic becomes its error, so the status line shows it and the
// terminal is not left in raw mode by a crash outside the program's own goroutine.
func refreshRecovered(ctx context.Context, src Source, mode Mode, progress func(Progress)) (f *Frame, err error) {
	defer func() {
		if r := recover(); r != nil {
			f, err = nil, fmt.Errorf("refresh panicked: %v", r)
		}
	}()
	f, err = src.Refresh(ctx, mode, progress)
	if err == nil && f == nil {
		err = errors.New("refresh returned no frame")
	}
	return f, err
}

// waitNext delivers the next message of a refresh's stream; the model re-arms it until the
// stream closes.
func waitNext(ch <-chan tea.Msg) tea.Cmd {
	return func() tea.Msg {
		msg, ok := <-ch
		if !ok {
			return nil
		}
		return msg
	}
}

func (m *Model) startSpinner() tea.Cmd {
	if m.spinning {
		return nil
	}
	m.spinning = true
	return m.spin.Tick
}

func (m *Model) armTick() tea.Cmd {
	m.tickGen++
	gen := m.tickGen
	return tea.Tick(m.interval, func(time.Time) tea.Msg { return tickMsg{gen: gen} })
}

func (m *Model) setStatus(s string, isErr bool) { m.status, m.statusErr = s, isErr }

// Update handles one message.
func (m *Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
		m.layout()
		return m, nil
	case tea.KeyPressMsg:
		return m, m.onKey(msg)
	case tea.MouseClickMsg:
		m.onClick(msg.Mouse())
		return m, nil
	case tea.MouseWheelMsg:
		switch msg.Button {
		case tea.MouseWheelUp:
			m.panes[m.active].scroll(-3)
		case tea.MouseWheelDown:
			m.panes[m.active].scroll(3)
		}
		return m, nil
	case progressMsg:
		if msg.gen == m.gen {
			m.onProgress(msg.p)
		}
		// Keep draining even a stale stream so its refresh never blocks on a report.
		return m, waitNext(msg.ch)
	case refreshMsg:
		if msg.gen != m.gen {
			return m, nil
		}
		m.refreshing = false
		if msg.err != nil {
			m.setStatus("refresh failed: "+oneLine(msg.err.Error()), true)
			return m, nil
		}
		m.onFrame(msg.frame)
		return m, nil
	case clearedMsg:
		m.clearing = false
		if msg.err != nil {
			m.setStatus("clear memo failed: "+oneLine(msg.err.Error()), true)
			return m, nil
		}
		m.setStatus("memo cleared; refreshing so views learn again", false)
		return m, m.startRefresh()
	case tickMsg:
		if msg.gen != m.tickGen || !m.auto {
			return m, nil
		}
		var cmds []tea.Cmd
		if !m.refreshing && !m.clearing {
			cmds = append(cmds, m.startRefresh())
		}
		cmds = append(cmds, m.armTick())
		return m, tea.Batch(cmds...)
	case programMsg:
		m.onProgram(msg)
		return m, nil
	case spinner.TickMsg:
		if !m.refreshing && !m.clearing && m.running == nil {
			m.spinning = false
			return m, nil
		}
		var cmd tea.Cmd
		m.spin, cmd = m.spin.Update(msg)
		return m, cmd
	}
	return m, nil
}

// onProgress follows the refresh live; a change of engine while a refresh runs is a switch.
func (m *Model) onProgress(p Progress) {
	if p.View != "" {
		m.progress.View = p.View
	}
	if p.GuestState != "" {
		m.progress.GuestState = p.GuestState
	}
	if p.Engine != "" {
		m.progress.Engine = p.Engine
		m.noteEngine(p.Engine, time.Now())
	}
}

// noteEngine records that engine is running now, marking a switch when it replaces another.
func (m *Model) noteEngine(engine string, at time.Time) {
	if m.engine != "" && engine != m.engine {
		m.switches++
		m.lastSwitch = &Switch{Time: at, From: m.engine, To: engine}
	}
	m.engine = engine
}

func (m *Model) onFrame(f *Frame) {
	m.frame = f
	if f.Engine != "" {
		m.noteEngine(f.Engine, time.Now())
	}
	for _, p := range m.panes {
		p.setFrame(f)
	}
	var failed []string
	for _, v := range f.Views {
		if v.Err != "" {
			failed = append(failed, v.Name+": "+oneLine(v.Err))
		}
	}
	switch {
	case len(failed) > 0:
		m.setStatus("view failed: "+strings.Join(failed, "; "), true)
	case len(f.Notes) > 0:
		m.setStatus(strings.Join(f.Notes, "; "), false)
	default:
		m.setStatus(fmt.Sprintf("refreshed at %s in %v", f.Time.Format("15:04:05"), f.Took.Round(10*time.Millisecond)), false)
	}
}

func (m *Model) onKey(msg tea.KeyPressMsg) tea.Cmd {
	k := m.keys
	if key.Matches(msg, k.Interrupt) {
		return m.quit()
	}
	if m.prompting {
		return m.onPromptKey(msg)
	}
	if m.confirm {
		switch {
		case key.Matches(msg, k.Confirm):
			m.confirm = false
			m.clearing = true
			m.setStatus("clearing the memo...", false)
			// The refresh in flight would report the memo as it was: drop it.
			if m.cancel != nil {
				m.cancel()
			}
			m.gen++
			m.refreshing = false
			gen, src, ctx := m.gen, m.src, m.ctx
			return tea.Batch(func() tea.Msg { return clearedMsg{gen: gen, err: src.ClearMemo(ctx)} }, m.startSpinner())
		case key.Matches(msg, k.Cancel):
			m.confirm = false
			m.setStatus("memo kept", false)
		}
		return nil
	}
	p := m.panes[m.active]
	if p.capturing() {
		_, cmd := p.key(msg, k)
		return cmd
	}
	if m.showHelp {
		if key.Matches(msg, k.Help) || key.Matches(msg, k.Back) {
			m.showHelp = false
			return nil
		}
		if !key.Matches(msg, k.Quit) {
			return nil
		}
	}
	if handled, cmd := p.key(msg, k); handled {
		return cmd
	}
	switch {
	case key.Matches(msg, k.Quit):
		return m.quit()
	case key.Matches(msg, k.Help):
		m.showHelp = true
	case key.Matches(msg, k.NextPane):
		m.active = (m.active + 1) % len(m.panes)
	case key.Matches(msg, k.PrevPane):
		m.active = (m.active + len(m.panes) - 1) % len(m.panes)
	case key.Matches(msg, k.Refresh):
		if m.refreshing || m.clearing {
			// Restarting would throw away the work in flight; its result is as fresh.
			m.setStatus("a refresh is already running", false)
			return nil
		}
		return m.startRefresh()
	case key.Matches(msg, k.Auto):
		m.auto = !m.auto
		if m.auto {
			m.setStatus(fmt.Sprintf("auto-refresh every %v", m.interval), false)
			return m.armTick()
		}
		m.tickGen++
		m.setStatus("auto-refresh off", false)
	case key.Matches(msg, k.Faster), key.Matches(msg, k.Slower):
		m.interval = stepInterval(m.interval, key.Matches(msg, k.Faster))
		m.setStatus(fmt.Sprintf("auto-refresh interval %v", m.interval), false)
		if m.auto {
			return m.armTick()
		}
	case key.Matches(msg, k.Mode):
		m.mode = m.mode.Next()
		m.setStatus("mode "+m.mode.String()+": refreshing", false)
		if m.clearing {
			return nil
		}
		return m.startRefresh()
	case key.Matches(msg, k.ClearMemo):
		m.confirm = true
		m.setStatus("clear the memo? every view learns again (y/n)", false)
	case key.Matches(msg, k.Prompt):
		m.prompting = true
		return m.prompt.Focus()
	}
	return nil
}

// onPromptKey edits the command line; enter runs it, esc drops it.
func (m *Model) onPromptKey(msg tea.KeyPressMsg) tea.Cmd {
	k := m.keys
	switch {
	case key.Matches(msg, k.PromptCancel):
		m.closePrompt()
		m.prompt.SetValue("")
		return nil
	case key.Matches(msg, k.PromptRun):
		line := m.prompt.Value()
		m.closePrompt()
		argv, err := splitWords(line)
		switch {
		case err != nil:
			// The text stays in the prompt, so that : brings it back to be fixed.
			m.setStatus("run: "+err.Error()+" (: edits the command line)", true)
			return nil
		case len(argv) == 0:
			m.setStatus("nothing to run: type a busybox applet and its arguments after :", false)
			return nil
		case m.running != nil:
			m.setStatus("a program is already running ("+commandLine(m.running)+"); : and enter run this one after it", false)
			return nil
		}
		m.prompt.SetValue("")
		m.remember(commandLine(argv))
		return m.startProgram(argv)
	}
	var cmd tea.Cmd
	m.prompt, cmd = m.prompt.Update(msg)
	return cmd
}

func (m *Model) closePrompt() {
	m.prompting = false
	m.prompt.Blur()
}

// remember puts a command line first in the prompt's history.
func (m *Model) remember(line string) {
	m.history = append([]string{line}, slices.DeleteFunc(m.history, func(h string) bool { return h == line })...)
	if len(m.history) > historyLimit {
		m.history = m.history[:historyLimit]
	}
	m.prompt.SetSuggestions(m.history)
}

// startProgram runs argv in the background in the console's mode and shows the program pane.
func (m *Model) startProgram(argv []string) tea.Cmd {
	m.running = argv
	m.program.start(argv, m.mode)
	for i, p := range m.panes {
		if p == pane(m.program) {
			m.active = i
		}
	}
	m.setStatus("running "+commandLine(argv)+" in mode "+m.mode.String(), false)
	ctx, src, mode := m.ctx, m.src, m.mode
	run := func() tea.Msg {
		res, err := runProgramRecovered(ctx, src, mode, argv)
		return programMsg{argv: argv, res: res, err: err}
	}
	return tea.Batch(run, m.startSpinner())
}

// onProgram shows a program run's result in its pane and logs its fall-backs with the refreshes'.
func (m *Model) onProgram(msg programMsg) {
	m.running = nil
	m.program.finish(msg.argv, msg.res, msg.err)
	cmd := commandLine(msg.argv)
	switch r := msg.res; {
	case msg.err != nil:
		m.setStatus("run "+cmd+": "+oneLine(msg.err.Error()), true)
		return
	case r.Err != "":
		m.setStatus(cmd+" failed: "+oneLine(r.Err), true)
	default:
		m.setStatus(fmt.Sprintf("%s exited with status %d in %v on %s, fall-backs %d", cmd, r.Status,
			r.Elapsed.Round(10*time.Millisecond), orDash(r.Engine), r.Fallbacks), false)
	}
	for _, p := range m.panes {
		if sink, ok := p.(programSink); ok {
			sink.addProgram(msg.res)
		}
	}
}

func (m *Model) quit() tea.Cmd {
	if m.cancel != nil {
		m.cancel()
	}
	return tea.Quit
}

// stepInterval moves to the next shorter or longer preset interval.
func stepInterval(d time.Duration, shorter bool) time.Duration {
	if shorter {
		for i := len(intervals) - 1; i >= 0; i-- {
			if intervals[i] < d {
				return intervals[i]
			}
		}
		return intervals[0]
	}
	for _, iv := range intervals {
		if iv > d {
			return iv
		}
	}
	return intervals[len(intervals)-1]
}

// onClick focuses a tab, or passes the click to the pane.
func (m *Model) onClick(ms tea.Mouse) {
	if ms.Button != tea.MouseLeft {
		return
	}
	switch {
	case ms.Y == headerLines-1:
		x := 0
		for i, p := range m.panes {
			w := lipgloss.Width(m.tabLabel(i, p))
			if ms.X >= x && ms.X < x+w {
				m.active = i
				return
			}
			x += w
		}
	case ms.Y >= headerLines && ms.Y < m.height-footerLines && !m.showHelp:
		m.panes[m.active].click(ms.Y - headerLines)
	}
}

// View draws the console in the alternate screen with mouse reporting.
func (m *Model) View() tea.View {
	v := tea.NewView(m.Render())
	v.AltScreen = true
	v.MouseMode = tea.MouseModeCellMotion
	v.WindowTitle = "hybridbridge: " + m.info.Guest
	return v
}

// Render is the screen's text, exactly height lines of at most width cells.
func (m *Model) Render() string {
	s := &m.styles
	lines := append(m.header(), m.tabs())
	body := ""
	paneHeight := max(1, m.height-headerLines-footerLines)
	if m.showHelp {
		full := m.help
		full.ShowAll = true
		body = scrollText(s.Value.Render("keys")+"\n\n"+full.FullHelpView(m.keys.FullHelp()), 0, m.width, paneHeight)
	} else {
		body = m.panes[m.active].view(s)
	}
	lines = append(lines, fitLines(body, paneHeight)...)
	status := m.statusLine()
	if m.prompting {
		status = m.prompt.View()
	}
	lines = append(lines, status, m.helpLine())
	for i, l := range lines {
		lines[i] = ansi.Truncate(l, m.width, "…")
	}
	return strings.Join(lines, "\n")
}

// fitLines pads or cuts text to exactly h lines.
func fitLines(text string, h int) []string {
	ls := strings.Split(text, "\n")
	if len(ls) > h {
		ls = ls[:h]
	}
	for len(ls) < h {
		ls = append(ls, "")
	}
	return ls
}

// header is three lines: what is inspected; what runs it; what the last refresh found.
func (m *Model) header() []string {
	s := &m.styles
	state := "?"
	switch {
	case m.refreshing && m.progress.GuestState != "":
		state = m.progress.GuestState
	case m.frame != nil && m.frame.GuestState != "":
		state = m.frame.GuestState
	}
	kernel := m.info.Kernel
	if m.frame != nil && m.frame.Kernel != "" {
		kernel = m.frame.Kernel
	}
	line1 := strings.Join([]string{
		s.Title.Render("hybridbridge"),
		field(s, "guest", m.info.Guest+" ("+state+orEmpty(", ", m.info.Accel)+")"),
		field(s, "kernel", kernel),
	}, "  ")

	engine := m.engine
	switch {
	case m.refreshing && m.progress.Engine != "":
		engine = m.progress.Engine
	case engine == "":
		engine = "none yet"
	case !m.refreshing:
		engine += " (idle)"
	}
	engineField := field(s, "engine", engine)
	if m.frame != nil && !modeMatches(m.frame.Mode, m.frame.Engine) {
		// The last refresh could not run the engine its mode asks for: say so where the engine is.
		engineField = s.Label.Render("engine") + " " + s.Warn.Render(engine+" (not "+m.frame.Mode.String()+")")
	}
	parts := []string{field(s, "mode", m.mode.String()), engineField}
	if f := m.frame; f != nil {
		parts = append(parts, field(s, "fall-backs", fmt.Sprint(f.Fallbacks)))
	}
	parts = append(parts, field(s, "switches", fmt.Sprint(m.switches)))
	if m.lastSwitch != nil {
		parts = append(parts, s.Switch.Render(fmt.Sprintf("⇄ %s→%s %s", m.lastSwitch.From, m.lastSwitch.To, m.lastSwitch.Time.Format("15:04:05"))))
	}
	line2 := strings.Join(parts, "  ")

	parts = parts[:0]
	if f := m.frame; f != nil {
		rate := "-"
		if r, ok := f.Memo.HitRate(); ok {
			rate = fmt.Sprintf("%.1f%%", 100*r)
		}
		parts = append(parts,
			field(s, "memo", fmt.Sprintf("%d insns", f.Memo.Entries)),
			field(s, "hit rate", rate),
			field(s, "misses", fmt.Sprint(f.Memo.Misses)),
			field(s, "refreshed", f.Time.Format("15:04:05")+" in "+f.Took.Round(10*time.Millisecond).String()),
		)
	} else {
		parts = append(parts, s.Dim.Render("no refresh yet"))
	}
	auto := "off"
	if m.auto {
		auto = "every " + m.interval.String()
	}
	parts = append(parts, field(s, "auto", auto))
	var busy []string
	switch {
	case m.clearing:
		busy = append(busy, "clearing memo")
	case m.refreshing:
		what := "refreshing"
		if m.progress.View != "" {
			what += " " + m.progress.View
		}
		busy = append(busy, what)
	}
	if m.running != nil {
		busy = append(busy, "running "+commandLine(m.running))
	}
	if len(busy) > 0 {
		parts = append(parts, m.spin.View()+" "+strings.Join(busy, ", "))
	}
	return []string{line1, line2, strings.Join(parts, "  ")}
}

func field(s *Styles, label, value string) string {
	return s.Label.Render(label) + " " + s.Value.Render(value)
}

func orEmpty(prefix, s string) string {
	if s == "" {
		return ""
	}
	return prefix + s
}

// modeMatches reports whether the engine that ran is the one the mode asks for. The auto mode
// accepts any engine; only Slow-Bridge engines track taint.
func modeMatches(mode Mode, engine string) bool {
	slow := strings.Contains(strings.ToLower(engine), "taint")
	switch mode {
	case ModeFast:
		return !slow
	case ModeSlow:
		return slow
	}
	return true
}

func (m *Model) tabLabel(i int, p pane) string {
	label := p.name()
	switch shown, total := p.count(); {
	case total < 0:
	case shown != total:
		label += fmt.Sprintf(" %d/%d", shown, total)
	default:
		label += fmt.Sprintf(" %d", total)
	}
	if i == m.active {
		return m.styles.ActiveTab.Render(label)
	}
	return m.styles.Tab.Render(label)
}

func (m *Model) tabs() string {
	var b strings.Builder
	for i, p := range m.panes {
		b.WriteString(m.tabLabel(i, p))
	}
	return b.String()
}

func (m *Model) statusLine() string {
	switch {
	case m.status == "":
		return ""
	case m.statusErr:
		return m.styles.Error.Render("✗ ") + m.status
	case m.confirm:
		return m.styles.Warn.Render("? " + m.status)
	}
	return m.styles.Info.Render("• ") + m.status
}

func (m *Model) helpLine() string {
	if m.prompting {
		return m.help.ShortHelpView([]key.Binding{m.keys.PromptRun, m.keys.PromptCancel, m.keys.PromptComplete, m.keys.Interrupt})
	}
	if m.panes[m.active].capturing() {
		return m.help.ShortHelpView([]key.Binding{m.keys.ApplyFilter, m.keys.ClearFilter, m.keys.Interrupt})
	}
	if m.confirm {
		return m.help.ShortHelpView([]key.Binding{m.keys.Confirm, m.keys.Cancel})
	}
	return m.help.ShortHelpView(m.keys.ShortHelp())
}

func oneLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}
