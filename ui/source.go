// Package ui is hybridbridge's interactive terminal console: a header with the engine and
// memo state, panes for the guest's processes, sockets and modules, the fall-back log, the memo,
// and the output of a program run against the guest from the console's prompt.
//
// The console knows nothing of guests or engines: it draws what a Source returns. All blocking
// work (a refresh or a program run pauses the guest and runs kernel code in the SVM) happens in
// tea.Cmd functions, so the UI keeps drawing while the engine works.
package ui

import (
	"context"
	"time"

	"hybridbridge/decision"
	"hybridbridge/inspect"
)

// Mode is the engine policy the user asks for. Which engine actually ran is reported separately
// (Frame.Engine), because a mode is a request: Fast-Bridge falls back to Slow-Bridge on code the
// memo has never seen, and an engine that is not built yet cannot run at all.
type Mode int

const (
	ModeAuto Mode = iota // fast where the memo allows, slow elsewhere
	ModeFast             // Fast-Bridge only: a memo miss fails the view
	ModeSlow             // always Slow-Bridge (taint tracking, learns the memo)
)

var modeNames = [...]string{ModeAuto: "auto", ModeFast: "fast", ModeSlow: "slow"}

func (m Mode) String() string {
	if m < 0 || int(m) >= len(modeNames) {
		return "mode?"
	}
	return modeNames[m]
}

// Next is the mode the `m` key switches to.
func (m Mode) Next() Mode { return (m + 1) % Mode(len(modeNames)) }

// ParseMode reads a mode name as String prints it.
func ParseMode(s string) (Mode, bool) {
	for i, n := range modeNames {
		if n == s {
			return Mode(i), true
		}
	}
	return ModeAuto, false
}

// Info is what the console shows before the first refresh completes.
type Info struct {
	Guest  string // the guest's name
	Kernel string // the kernel build the SVM runs (and the guest must run)
	Accel  string // how QEMU runs the guest: kvm or tcg
}

// Progress reports what a refresh is doing now; the header shows it live. Empty fields mean
// "unchanged". A report naming another engine than the one running is a live switch (Fast-Bridge
// falling back to Slow-Bridge and resuming): the console marks each one.
type Progress struct {
	View       string // the view running: ps, netstat, lsmod
	Engine     string // the engine executing kernel code now (see Frame.Engine)
	GuestState string // QEMU's run state: running, paused
}

// Source produces the console's data. Implementations must be safe for one Refresh, one
// RunProgram and one ClearMemo running at the same time (they may serialize them).
type Source interface {
	Info() Info
	// Refresh computes every view once in the given mode. progress may be called from any
	// goroutine while Refresh runs, never after it returns. A failing view is reported in its
	// ViewStats.Err and the other views still fill the frame; an error means no frame at all
	// (the guest could not be attached, for instance).
	Refresh(ctx context.Context, mode Mode, progress func(Progress)) (*Frame, error)
	// ClearMemo forgets every memoized decision: views learn again.
	ClearMemo(ctx context.Context) error
	// RunProgram runs one unmodified program against the guest in the given mode: argv is a
	// busybox applet of the SVM's image and its arguments. A run that started but did not reach
	// its exit (it forked, slept, ran past its budget, missed the memo in fast mode) is a result
	// with Err set; an error means nothing ran (the guest could not be attached, for instance).
	RunProgram(ctx context.Context, mode Mode, argv []string) (*ProgramResult, error)
}

// ProgramResult is one program run against the guest.
type ProgramResult struct {
	Argv    []string
	Mode    Mode          // the mode the run was asked to run in
	Time    time.Time     // when the run started
	Elapsed time.Duration // attach to resume: how long the run held the guest
	// Wall is the program's own last run: a fall-back runs it again whole under Slow-Bridge.
	Wall           time.Duration
	Engine         string // the engine that ran it, as Frame.Engine
	Status         int    // the program's exit status; meaningless when Err is set
	Stdout, Stderr []byte // what it wrote to descriptors 1 and 2, up to where it stopped
	Syscalls       int    // system calls that entered the guest kernel's code
	Faults         int    // exceptions delivered from user mode
	Fallbacks      int    // re-runs under Slow-Bridge after a Fast-Bridge miss
	Events         []Event
	Notes          []string // what the run could not give the program as the guest has it
	Err            string   // empty when the program ran to its exit
}

// Frame is the result of one refresh.
type Frame struct {
	Time       time.Time     // when the refresh started
	Took       time.Duration // how long it took, attach to resume
	Mode       Mode          // the mode the refresh was asked to run in
	Engine     string        // the engine that ran the views, e.g. "Unicorn-taint" (Slow-Bridge)
	GuestState string        // QEMU's run state after the refresh
	Kernel     string        // the kernel build the guest was found to run

	Processes []inspect.Process
	Sockets   []inspect.Socket
	Modules   []inspect.Module
	Views     []ViewStats // one per view run, in run order

	Memo      MemoSummary
	Fallbacks int     // fall-backs from Fast-Bridge to Slow-Bridge during this refresh
	Events    []Event // the fall-backs, with the instruction that caused each
	Notes     []string
}

// View returns the stats of the named view, or nil when it did not run.
func (f *Frame) View(name string) *ViewStats {
	if f == nil {
		return nil
	}
	for i := range f.Views {
		if f.Views[i].Name == name {
			return &f.Views[i]
		}
	}
	return nil
}

// Switch is one live change of engine, as the console saw it in the progress reports.
type Switch struct {
	Time     time.Time
	From, To string
	Reason   string
}

// ViewStats is the engine work one view cost.
type ViewStats struct {
	Name           string
	Engine         string
	Err            string // empty when the view succeeded
	Elapsed        time.Duration
	Syscalls       int
	Instructions   uint64
	Globals        decision.Counts // kernel-global accesses by decision
	UnknownGlobals []string        // globals executed on the SVM's copy for lack of a decision
	// Memo lookups this view made during the refresh (Fast-Bridge consults the memo; Slow-Bridge
	// only learns it, so these are zero while it runs alone).
	Lookups, Hits, Misses uint64
	Learned               uint64 // instructions first memoized by this view during the refresh
}

// MemoSummary is the training memo's state after a refresh.
type MemoSummary struct {
	Entries               int
	Lookups, Hits, Misses uint64          // since the memo was created
	Decisions             decision.Counts // memoized instructions by decision
	TopSeen               []MemoEntry     // most executed memoized instructions
	TopHits               []MemoEntry
	TopMisses             []MemoEntry
}

// HitRate is hits per lookup, and false when there were no lookups.
func (s MemoSummary) HitRate() (float64, bool) {
	if s.Lookups == 0 {
		return 0, false
	}
	return float64(s.Hits) / float64(s.Lookups), true
}

// MemoEntry is one memoized instruction.
type MemoEntry struct {
	PC                 uint64
	Symbol             string // symbol+offset, or empty when unknown
	Disassembly        string
	Decision           string
	Region             string
	Seen, Hits, Misses uint64
	View, Syscall      string // where it was first seen
}

// Event is one fall-back from Fast-Bridge to Slow-Bridge.
type Event struct {
	Time        time.Time
	View        string
	Syscall     string
	PC          uint64
	Symbol      string // symbol+offset
	Disassembly string
	Reason      string // why the fast path could not go on (the taint engine's reason)
	// Code holds kernel text around PC starting at CodeAddr, an instruction boundary (e.g. the
	// function's start), so the detail view can disassemble the neighbourhood.
	CodeAddr uint64
	Code     []byte
}
