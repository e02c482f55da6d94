package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"hybridbridge/bridge"
	"hybridbridge/decision"
	"hybridbridge/guest"
	"hybridbridge/inspect"
	"hybridbridge/memo"
)

// viewRun is one view computed against a guest: the session's counters for the summary line.
type viewRun struct {
	name     string
	elapsed  time.Duration
	syscalls int
	insns    uint64
	globals  decision.Counts
	swaps    int
	unknown  []bridge.UnknownCount
	memo     int
	mode     bridge.Mode
	engine   bridge.EngineStats
	vanished inspect.Vanished // what the view left out because it was gone when read
	// ramCopied and ramTook are what making the guest's RAM mappable cost: nothing for our own
	// guests (a shared file), a copy for an attached VM.
	ramCopied uint64
	ramTook   time.Duration
}

// inspectGuest attaches to the named guest, ours or attached (pausing it if it runs), in the
// engine mode of --mode, runs fn, resumes the guest and saves the memo. The snapshot is built
// first if needed.
func (e *env) inspectGuest(ctx context.Context, name, view string, fn func(*bridge.Session) error) (*viewRun, error) {
	t, kernel, err := e.openTarget(ctx, name)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	snap, syms, err := e.kernelFor(ctx, kernel, t)
	if err != nil {
		return nil, err
	}
	memoPath := e.memoPath(snap.KernelID)
	mem, reason := memo.LoadOrNew(memoPath, bridge.MemoKey(snap))
	if reason != nil && !errors.Is(reason, fs.ErrNotExist) {
		fmt.Fprintf(e.stderr, "memo rebuilt: %v\n", reason)
	}
	start := time.Now()
	mode := e.mode
	onKVM := false
	if mode != bridge.ModeSlow {
		if onKVM, _, err = e.fastOnKVM(); err != nil {
			return nil, err
		}
	}
	s, err := bridge.AttachTarget(ctx, t, snap, syms, bridge.Options{Mode: mode, Memo: mem, KVM: onKVM})
	if err != nil {
		return nil, err
	}
	s.View = view
	ferr := fn(s)
	run := &viewRun{name: view, elapsed: time.Since(start), mode: mode, ramCopied: s.RAMCopied, ramTook: s.RAMTook}
	run.syscalls, run.insns, run.swaps = s.Work()
	run.globals, run.engine = s.Accesses(), s.Stats()
	run.unknown = s.Globals.Unknown()
	cerr := s.Close(context.WithoutCancel(ctx))
	if err := errors.Join(ferr, cerr); err != nil {
		return nil, err
	}
	run.memo = mem.Len()
	note, err := saveMemo(mem, memoPath)
	if err != nil {
		return nil, err
	}
	if note != "" {
		fmt.Fprintln(e.stderr, note)
	}
	return run, nil
}

// stopOwned stops a guest this command booted, even when ctx is already cancelled.
func stopOwned(ctx context.Context, g *guest.Guest) error {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	return g.Stop(sctx)
}

// summary is the one line of engine work a view prints on stderr.
func (r *viewRun) summary() string {
	var unknown []string
	for _, u := range r.unknown {
		unknown = append(unknown, u.Symbol)
	}
	en := r.engine
	s := fmt.Sprintf("%s (mode %s): %d system calls; Fast-Bridge (%s) %d operations in %v, memo hits %d misses %d; Slow-Bridge %d operations (%d fall-backs) in %v, %d instructions tainted; kernel-image accesses %d redirected / %d local / %d unknown, memo %d instructions, %v in all",
		r.name, r.mode, r.syscalls, en.FastEngine, en.FastOps, en.FastTime.Round(time.Millisecond), en.Hits, en.Misses,
		en.SlowOps, en.FallBacks, en.SlowTime.Round(time.Millisecond), r.insns,
		r.globals.Redirect, r.globals.Local, r.globals.Unknown, r.memo, r.elapsed.Round(time.Millisecond))
	if r.ramCopied > 0 {
		s += fmt.Sprintf("; guest RAM copied for the SVM first: %d MiB read in %v", r.ramCopied>>20, r.ramTook.Round(time.Millisecond))
	}
	for _, ev := range en.Events {
		s += fmt.Sprintf("\n  fall-back: %s at %s (%s) touching %s: %s; re-run under taint in %v",
			ev.Syscall, ev.Symbol, ev.Disassembly, ev.Region, ev.Reason, ev.Latency.Round(time.Millisecond))
	}
	if len(unknown) > 0 {
		s += fmt.Sprintf("; unknown globals (executed on the SVM's copy): %s", strings.Join(unknown, ", "))
	}
	if !r.vanished.Zero() {
		s += "; " + r.vanished.String()
	}
	return s
}

// psCommand is the view command that came first: its help tells the engine's part in its own
// words rather than with engineHelp.
func (e *env) psCommand() *cobra.Command {
	v := inspect.ProcessView
	return e.viewCommand(v.View, v.Long, "print the processes as JSON")
}

// printProcesses renders the ps table. A command line that cannot be decided shows as "?" with
// the reason and the name from stat, so it is neither guessed nor mistaken for a kernel thread.
// USER is the uid where the name is unknown; START is the time of day (UTC) for a process
// started within a day of the newest one, else its date, as procps shows it; NSPID is "-" for a
// process in no nested PID namespace.
func printProcesses(w io.Writer, procs []inspect.Process) error {
	var newest time.Time
	for _, p := range procs {
		if p.Start.After(newest) {
			newest = p.Start
		}
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PID\tPPID\tUSER\tSTAT\tTHR\tRSS\tSTART\tTIME\tNSPID\tCOMMAND")
	for _, p := range procs {
		cmdline := cell(p.Command())
		if len(p.Missing) > 0 {
			cmdline += fmt.Sprintf("  (comm %q; unknown: %s)", p.Comm, strings.Join(p.Missing, "; "))
		}
		nspid := "-"
		if n := len(p.NSPIDs); n > 0 {
			nspid = strconv.Itoa(p.NSPIDs[n-1])
		}
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\n", p.PID, p.PPID, cell(userText(p)), p.State, p.Threads, p.RSSKiB,
			startText(p.Start, newest), cpuTimeText(p.CPUTicks), nspid, cmdline)
	}
	return tw.Flush()
}

// userText is the process's user name, or its uid where the name is unknown.
func userText(p inspect.Process) string {
	if p.User != "" {
		return p.User
	}
	return strconv.Itoa(p.UID)
}

// startText is procps's START: the time of day for a process started within a day of now, the
// month and day otherwise; "?" when the start is unknown.
func startText(start, now time.Time) string {
	switch {
	case start.IsZero():
		return "?"
	case now.Sub(start) < 24*time.Hour:
		return start.UTC().Format("15:04:05")
	default:
		return start.UTC().Format("Jan02")
	}
}

// cpuTimeText is procps's TIME: [DD-]HH:MM:SS of CPU time in clock ticks (USER_HZ, 100).
func cpuTimeText(ticks uint64) string {
	sec := ticks / 100
	days, h, m, s := sec/86400, sec/3600%24, sec/60%60, sec%60
	if days > 0 {
		return fmt.Sprintf("%d-%02d:%02d:%02d", days, h, m, s)
	}
	return fmt.Sprintf("%02d:%02d:%02d", h, m, s)
}
