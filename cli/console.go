package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"hybridbridge/bridge"
	"hybridbridge/decision"
	"hybridbridge/guest"
	"hybridbridge/inspect"
	"hybridbridge/memo"
	"hybridbridge/svm"
	"hybridbridge/target"
	"hybridbridge/ui"
	"hybridbridge/vmm"
)

func (e *env) consoleCommand() *cobra.Command {
	var name string
	var mode bridge.Mode
	var interval time.Duration
	c := &cobra.Command{
		Use:   "console",
		Short: "Open the interactive console on a guest",
		Long: `Open the interactive terminal console on a guest, one hybridbridge started or one attached with
guest attach: its processes, sockets and kernel modules, computed by the guest kernel's own code
in the SVM, with the engine that ran, the memo's hit rate and the fall-back log. Each refresh
pauses a running guest for the time the views take and resumes it; nothing stays paused between
refreshes. The : key runs a busybox applet against the guest, as hybridbridge run does, and shows
its output in the Program pane. Without a terminal it names the view subcommands (ps, ...) to use
instead.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !e.interactive() {
				return errors.New(noTerminalMessage(cmd.Root()))
			}
			um, err := uiMode(mode)
			if err != nil {
				return err
			}
			return e.console(cmd.Context(), name, false, ui.Options{Mode: um, Interval: interval})
		},
	}
	c.Flags().StringVar(&name, "guest", "demo", "the guest to inspect (ours or attached)")
	c.Flags().Var(modeFlag(&mode), "mode", "engine mode at start: auto, fast or slow (m cycles it)")
	c.Flags().DurationVar(&interval, "refresh", 10*time.Second, "auto-refresh interval (0: start with auto-refresh off)")
	return c
}

// interactive reports whether the console can run: it reads keys from stdin and draws on stdout.
func (e *env) interactive() bool {
	out, ok := e.stdout.(*os.File)
	return ok && term.IsTerminal(int(out.Fd())) && term.IsTerminal(int(os.Stdin.Fd()))
}

// noTerminalMessage points to the subcommands that print what the console shows, for pipes and
// scripts.
func noTerminalMessage(root *cobra.Command) string {
	var cmds []string
	for _, c := range root.Commands() {
		if slices.ContainsFunc(consoleViews, func(v consoleView) bool { return v.name == c.Name() }) {
			cmds = append(cmds, "hybridbridge "+c.Name()+" [--guest NAME] [--json]")
		}
	}
	return "the console needs a terminal (stdin and stdout are not both one); for scripts and pipes use:\n  " +
		strings.Join(cmds, "\n  ")
}

// runRoot is hybridbridge without a command: the console on the demo guest when there is a
// terminal; otherwise a pointer to the scripting subcommands, then the plain-text demo report
// (which keeps non-interactive runs exercising the whole pipeline).
func (e *env) runRoot(cmd *cobra.Command) error {
	if e.interactive() {
		um, err := uiMode(e.mode)
		if err != nil {
			return err
		}
		return e.console(cmd.Context(), "demo", true, ui.Options{Mode: um, Interval: 10 * time.Second})
	}
	fmt.Fprintln(e.stderr, noTerminalMessage(cmd.Root()))
	fmt.Fprintln(e.stderr, "printing the demo report instead:")
	return e.demo(cmd.Context())
}

// console runs the console on the named guest, ours or attached. With bootDemo, a demo guest that
// is not running is booted first (progress on stderr, before the screen switches) and stopped when
// the console ends.
func (e *env) console(ctx context.Context, name string, bootDemo bool, opts ui.Options) error {
	t, kernel, err := e.openTarget(ctx, name)
	var owned *guest.Guest
	if errors.Is(err, guest.ErrNotRunning) && bootDemo {
		fmt.Fprintf(e.stderr, "booting the %s guest...\n", name)
		owned, err = e.startDemo(ctx, name, "512M", false, false)
		if err == nil {
			t, kernel = target.FromGuest(owned), owned.Meta.Kernel
		}
	}
	if err != nil {
		return err
	}
	if owned != nil {
		defer func() {
			if err := stopOwned(ctx, owned); err != nil {
				fmt.Fprintf(e.stderr, "stop guest %s: %v\n", name, err)
			}
		}()
	}
	src, err := e.newConsoleSource(ctx, name, t, kernel)
	// Each refresh opens the guest anew (an attached VM may be gone by then): this one only told
	// what the console needs to know first.
	t.Close()
	if err != nil {
		return err
	}
	err = ui.Run(ctx, src, opts)
	// A refresh may still hold the guest paused: wait for it so the guest is resumed (or stopped
	// by us) only once the SVM has let go of its memory.
	src.wait()
	return err
}

// consoleSource implements ui.Source with the bridge: one attach per refresh runs every
// view, so the guest is paused once per refresh and resumed between refreshes.
type consoleSource struct {
	name  string
	accel string
	// open opens the guest for a refresh; the refresh closes it.
	open     func(ctx context.Context) (target.Target, error)
	snap     *svm.Snapshot
	syms     *vmm.Symbols
	memoPath string
	kvm      bool // Fast-Bridge runs under KVM
	// mu serializes refreshes and memo clears: both use the memo and the guest.
	mu    sync.Mutex
	memo  *memo.Memo // Precondition: mu must be held.
	notes []string   // said once, in the next frame. Precondition: mu must be held.
}

var _ ui.Source = (*consoleSource)(nil)

// newConsoleSource prepares everything a refresh needs that may print progress (the snapshot is
// built here when missing), so nothing writes to the terminal once the console draws on it.
func (e *env) newConsoleSource(ctx context.Context, name string, t target.Target, kernel string) (*consoleSource, error) {
	snap, syms, err := e.kernelFor(ctx, kernel, t)
	if err != nil {
		return nil, err
	}
	onKVM, why, err := e.fastOnKVM()
	if err != nil {
		return nil, err
	}
	c := &consoleSource{name: name, accel: accelOf(t), snap: snap, syms: syms,
		memoPath: e.memoPath(snap.KernelID), kvm: onKVM, notes: []string{"Fast-Bridge executor: " + why}}
	c.open = func(ctx context.Context) (target.Target, error) {
		t, _, err := e.openTarget(ctx, name)
		return t, err
	}
	var reason error
	c.memo, reason = memo.LoadOrNew(c.memoPath, bridge.MemoKey(snap))
	if reason != nil && !errors.Is(reason, fs.ErrNotExist) {
		c.notes = append(c.notes, "memo rebuilt: "+reason.Error())
	}
	return c, nil
}

func (c *consoleSource) Info() ui.Info {
	return ui.Info{Guest: c.name, Kernel: c.snap.Release, Accel: c.accel}
}

// wait returns once no refresh or clear is running.
func (c *consoleSource) wait() {
	c.mu.Lock()
	defer c.mu.Unlock()
}

func (c *consoleSource) ClearMemo(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.memo.Clear()
	// A cleared memo replaces the file whatever it holds: there is nothing to report.
	_, err := saveMemo(c.memo, c.memoPath)
	return err
}

// consoleView is one view the console shows, and how to compute it into the frame.
type consoleView struct {
	name string
	run  func(s *bridge.Session, f *ui.Frame) error
}

// consoleViews are the views of inspect.Views the console shows, each in its field of the frame.
var consoleViews = []consoleView{
	frameView(inspect.ProcessView, func(f *ui.Frame, procs []inspect.Process) { f.Processes = procs }),
	frameView(inspect.SocketView, func(f *ui.Frame, socks []inspect.Socket) { f.Sockets = socks }),
	frameView(inspect.ModuleView, func(f *ui.Frame, mods []inspect.Module) { f.Modules = mods }),
}

// frameView reads v into the frame with set, and notes what vanished while it was read.
func frameView[T any](v inspect.TypedView[T], set func(*ui.Frame, T)) consoleView {
	return consoleView{name: v.Name, run: func(s *bridge.Session, f *ui.Frame) error {
		recs, gone, err := v.ReadTyped(s, 0)
		set(f, recs)
		noteVanished(f, v.Name, gone)
		return err
	}}
}

// noteVanished tells, in the frame's notes, what a view left out because it was gone when read.
func noteVanished(f *ui.Frame, view string, gone inspect.Vanished) {
	if !gone.Zero() {
		f.Notes = append(f.Notes, view+": "+gone.String())
	}
}

// Refresh attaches to the guest (pausing it), runs every view in the chosen mode, resumes the
// guest and saves the memo. The frame names the engines that actually ran and every fall-back.
func (c *consoleSource) Refresh(ctx context.Context, mode ui.Mode, progress func(ui.Progress)) (*ui.Frame, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t, err := c.open(ctx)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	f := &ui.Frame{Time: time.Now(), Mode: mode, Notes: slices.Clone(c.notes)}
	progress(ui.Progress{View: "attach"})
	s, err := bridge.AttachTarget(ctx, t, c.snap, c.syms, bridge.Options{Mode: bridge.Mode(mode.String()), Memo: c.memo, KVM: c.kvm})
	if err != nil {
		return nil, fmt.Errorf("attach guest %s: %w", c.name, err)
	}
	c.notes = nil // they are in this frame
	first := s.FastEngine()
	if mode == ui.ModeSlow {
		first = bridge.EngineTaint
	}
	progress(ui.Progress{GuestState: "paused", Engine: first})
	for _, v := range consoleViews {
		if ctx.Err() != nil {
			f.Views = append(f.Views, ui.ViewStats{Name: v.name, Engine: bridge.EngineTaint, Err: "not run: refresh cancelled"})
			continue
		}
		progress(ui.Progress{View: v.name})
		vs := c.runView(s, v, f)
		f.Views = append(f.Views, vs)
		progress(ui.Progress{View: v.name, Engine: vs.Engine})
	}
	est := s.Stats()
	f.Fallbacks = est.FallBacks
	f.Engine = engineOf(est.FastEngine, est.FastOps, est.SlowOps)
	f.Events = c.uiEvents(s, est.Events)
	cerr := s.Close(context.WithoutCancel(ctx))
	f.Took = time.Since(f.Time)
	if cerr != nil {
		return nil, fmt.Errorf("detach guest %s: %w", c.name, cerr)
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if st, err := t.State(sctx); err != nil {
		f.GuestState = "unknown"
		f.Notes = append(f.Notes, "guest state: "+err.Error())
	} else {
		f.GuestState = string(st)
	}
	progress(ui.Progress{GuestState: f.GuestState})
	if f.Kernel = c.snap.Release; s.Banner != "" {
		if fields := strings.Fields(s.Banner); len(fields) > 2 {
			f.Kernel = fields[2]
		}
	}
	if note, err := saveMemo(c.memo, c.memoPath); err != nil {
		f.Notes = append(f.Notes, err.Error())
	} else if note != "" {
		f.Notes = append(f.Notes, note)
	}
	f.Memo = c.memoSummary()
	return f, nil
}

// uiEvents converts the session's fall-backs for the console, each with the kernel code around
// its instruction so the event's details can disassemble it. The session must still be attached.
func (c *consoleSource) uiEvents(s *bridge.Session, evs []bridge.FallBack) []ui.Event {
	var out []ui.Event
	for _, ev := range evs {
		e := ui.Event{Time: ev.Time, View: ev.View, Syscall: ev.Syscall, PC: ev.PC, Symbol: ev.Symbol,
			Disassembly: ev.Disassembly, Reason: ev.Reason + " (touching " + ev.Region + ")"}
		if sym, off, ok := c.syms.LookupSymbol(ev.PC); ok && off < 4096 {
			code := make([]byte, off+48)
			if s.ReadKernel(sym.Addr, code) == nil {
				e.CodeAddr, e.Code = sym.Addr, code
			}
		}
		out = append(out, e)
	}
	return out
}

// RunProgram attaches to the guest (pausing it), runs argv as a busybox applet of the SVM's image
// in the chosen mode, resumes the guest and saves the memo, as `hybridbridge run` does.
func (c *consoleSource) RunProgram(ctx context.Context, mode ui.Mode, argv []string) (*ui.ProgramResult, error) {
	p, err := appletProgram(argv)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t, err := c.open(ctx)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	r := &ui.ProgramResult{Argv: argv, Mode: mode, Time: time.Now()}
	name := bridge.ProgramName(argv)
	// Programs run on Unicorn only (bridge.ErrProgramOnKVM): where the views' Fast-Bridge is KVM,
	// a run still gets Unicorn's Fast-Bridge rather than failing or going slow.
	s, err := bridge.AttachTarget(ctx, t, c.snap, c.syms, bridge.Options{Mode: bridge.Mode(mode.String()), Memo: c.memo})
	if err != nil {
		return nil, fmt.Errorf("attach guest %s: %w", c.name, err)
	}
	before := s.Stats()
	var run *bridge.ProgramRun
	rerr := runRecovered(func() (err error) {
		run, err = s.RunProgram(p, name)
		return err
	})
	if rerr != nil {
		r.Err = rerr.Error()
	}
	if run != nil {
		r.Status, r.Stdout, r.Stderr = run.Status, run.Stdout, run.Stderr
		r.Syscalls, r.Faults, r.Wall = run.Syscalls, run.Faults, run.Wall
		for _, f := range run.Unserved {
			r.Notes = append(r.Notes, unservedNote(f))
		}
	}
	after := s.Stats()
	r.Engine = engineOf(after.FastEngine, after.FastOps-before.FastOps, after.SlowOps-before.SlowOps)
	r.Fallbacks = after.FallBacks - before.FallBacks
	r.Events = c.uiEvents(s, after.Events[len(before.Events):])
	cerr := s.Close(context.WithoutCancel(ctx))
	r.Elapsed = time.Since(r.Time)
	if cerr != nil {
		return nil, fmt.Errorf("detach guest %s after %s: %w", c.name, name, cerr)
	}
	if note, err := saveMemo(c.memo, c.memoPath); err != nil {
		c.notes = append(c.notes, err.Error())
	} else if note != "" {
		c.notes = append(c.notes, note)
	}
	return r, nil
}

// runView runs one view in the session and measures what it cost; the session's counters are
// cumulative, so the view's share is the difference.
func (c *consoleSource) runView(s *bridge.Session, v consoleView, f *ui.Frame) ui.ViewStats {
	s.View = v.name
	before := c.counters(s)
	eb := s.Stats()
	start := time.Now()
	err := runRecovered(func() error { return v.run(s, f) })
	ea := s.Stats()
	st := ui.ViewStats{Name: v.name, Engine: engineOf(ea.FastEngine, ea.FastOps-eb.FastOps, ea.SlowOps-eb.SlowOps), Elapsed: time.Since(start)}
	if err != nil {
		st.Err = err.Error()
	}
	after := c.counters(s)
	st.Syscalls = after.syscalls - before.syscalls
	st.Instructions = after.insns - before.insns
	st.Globals = after.globals.Minus(before.globals)
	for sym, n := range after.unknown {
		if n > before.unknown[sym] {
			st.UnknownGlobals = append(st.UnknownGlobals, sym)
		}
	}
	slices.Sort(st.UnknownGlobals)
	mv, bv := after.memo.Views[v.name], before.memo.Views[v.name]
	st.Lookups = mv.Lookups - bv.Lookups
	st.Hits = mv.Hits - bv.Hits
	st.Misses = mv.Misses - bv.Misses
	st.Learned = mv.Learned - bv.Learned
	return st
}

// runRecovered turns a panic of a view into its error: the session must still be closed, or the
// guest would stay paused.
func runRecovered(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return fn()
}

type sessionCounters struct {
	syscalls int
	insns    uint64
	globals  decision.Counts
	unknown  map[string]int // accesses per unknown global
	memo     memo.Stats
}

func (c *consoleSource) counters(s *bridge.Session) sessionCounters {
	syscalls, insns, _ := s.Work()
	sc := sessionCounters{
		syscalls: syscalls,
		insns:    insns,
		globals:  s.Accesses(),
		unknown:  make(map[string]int),
		memo:     c.memo.Stats(),
	}
	for _, u := range s.Globals.Unknown() {
		sc.unknown[u.Symbol] = u.Accesses
	}
	return sc
}

// engineOf names the engines that ran a number of file operations: Fast-Bridge, Slow-Bridge, or
// both (Fast-Bridge with fall-backs).
func engineOf(fastEngine string, fast, slow int) string {
	switch {
	case slow == 0:
		return fastEngine
	case fast == 0:
		return bridge.EngineTaint
	default:
		return fastEngine + "+taint"
	}
}

// topEntries is how many instructions each memo list shows.
const topEntries = 10

// memoSummary reads the memo's totals and its most used instructions.
// Precondition: mu must be held.
func (c *consoleSource) memoSummary() ui.MemoSummary {
	st := c.memo.Stats()
	sum := ui.MemoSummary{
		Entries: st.Entries, Lookups: st.Total.Lookups, Hits: st.Total.Hits, Misses: st.Total.Misses,
		Decisions: st.Decisions,
	}
	entries := c.memo.Entries()
	top := func(key func(memo.Entry) uint64) []ui.MemoEntry {
		slices.SortStableFunc(entries, func(a, b memo.Entry) int { return -cmpUint(key(a), key(b)) })
		var out []ui.MemoEntry
		for _, en := range entries[:min(topEntries, len(entries))] {
			if key(en) == 0 {
				break
			}
			out = append(out, ui.MemoEntry{
				PC: en.PC, Symbol: c.syms.Format(c.snap.SVMAddr(en.PC)), Disassembly: memo.Disassemble(en.PC, en.Bytes),
				Decision: en.Decision.String(), Region: en.Region, Seen: en.Seen, Hits: en.Hits, Misses: en.Misses,
				View: en.View, Syscall: en.Syscall,
			})
		}
		return out
	}
	sum.TopSeen = top(func(e memo.Entry) uint64 { return e.Seen })
	sum.TopHits = top(func(e memo.Entry) uint64 { return e.Hits })
	sum.TopMisses = top(func(e memo.Entry) uint64 { return e.Misses })
	return sum
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
