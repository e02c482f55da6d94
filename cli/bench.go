package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"hybridbridge/bridge"
	"hybridbridge/guest"
	"hybridbridge/inspect"
	"hybridbridge/memo"
	"hybridbridge/svm"
	"hybridbridge/target"
	"hybridbridge/vmm"
)

// benchViews are the views of inspect.Views the benchmark measures; its help names them.
var benchViews = []inspect.View{inspect.ProcessView.View, inspect.ModuleView.View, inspect.SocketView.View}

// benchRun is one view run in one mode: engine time (in the engines) and whole time (attach,
// run, detach: what a user waits for).
type benchRun struct {
	Engine    time.Duration `json:"engine_ns"`
	Whole     time.Duration `json:"whole_ns"`
	FallBacks int           `json:"fallbacks"`
	Hits      uint64        `json:"hits"`
	Misses    uint64        `json:"misses"`
	Syscalls  int           `json:"syscalls"`
	Ops       int           `json:"operations"`            // file operations, both engines
	Exits     int           `json:"kvm_exits,omitempty"`   // on KVM: exits to user space
	Trapped   int           `json:"kvm_trapped,omitempty"` // of which accesses to the decided ranges
	// InsnHits and InsnMisses count distinct kernel instructions: those whose memo entry replayed a
	// decision, and those the memo could not decide (the paper's hit rate is per instruction; Hits
	// and Misses count accesses).
	InsnHits   int `json:"insn_hits"`
	InsnMisses int `json:"insn_misses"`
	// Tainted are the instructions Slow-Bridge ran (it sees each one): in slow mode, all.
	Tainted uint64 `json:"tainted_instructions,omitempty"`
}

// rate is n over n+m, nil when there was nothing to count: "no lookups" is not a 100 % hit rate.
func rate[T int | uint64](n, m T) *float64 {
	if n+m == 0 {
		return nil
	}
	r := float64(n) / float64(n+m)
	return &r
}

// HitRate is hits over memo lookups, per access; nil without lookups.
func (r benchRun) HitRate() *float64 { return rate(r.Hits, r.Misses) }

// InsnHitRate is the share of distinct instructions decided by the memo; nil without any.
func (r benchRun) InsnHitRate() *float64 { return rate(r.InsnHits, r.InsnMisses) }

// percent prints a rate, or n/a when there was nothing to count.
func percent(r *float64) string {
	if r == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.3f%%", 100**r)
}

// insnCounts counts the distinct instructions a run hit and missed: entries whose hit or miss
// counters moved between two copies of the memo, and the instructions of fall-backs (a miss on an
// instruction the memo did not hold has no entry to count it).
func insnCounts(before, after []memo.Entry, events []bridge.FallBack) (hits, misses int) {
	old := make(map[uint64]memo.Entry, len(before))
	for _, e := range before {
		old[e.PC] = e
	}
	missed := map[uint64]bool{}
	for _, ev := range events {
		missed[ev.MemoPC] = true
	}
	hit := map[uint64]bool{}
	for _, e := range after {
		o := old[e.PC]
		if e.Misses > o.Misses {
			missed[e.PC] = true
		}
		if e.Hits > o.Hits {
			hit[e.PC] = true
		}
	}
	for pc := range hit {
		if !missed[pc] {
			hits++
		}
	}
	return hits, len(missed)
}

type benchView struct {
	View     string   `json:"view"`
	Slow     benchRun `json:"slow"`
	ColdAuto benchRun `json:"cold_auto"`
	WarmFast benchRun `json:"warm_fast"`
	// WarmFast is the fastest of three auto runs with the trained memo; WarmFallBacks counts the
	// fall-backs of all three.
	WarmFallBacks int      `json:"warm_fallbacks"`
	Ratio         float64  `json:"slow_over_warm_fast"`
	HitRate       *float64 `json:"warm_hit_rate"`       // per access; null without lookups
	InsnHitRate   *float64 `json:"warm_insn_hit_rate"`  // per distinct instruction; null without any
	FallBack      float64  `json:"fallback_latency_ms"` // mean Slow-Bridge re-run per fall-back (engine), measured
	// FallWhole is derived, not measured: cold auto whole time minus warm whole time, per fall-back.
	FallWhole float64 `json:"fallback_whole_ms"`
	WarmMiss  string  `json:"warm_fast_miss,omitempty"` // why a fast-only run could not finish
	// WarmOther is a warm Fast-Bridge run on the other executor (Report.Other), where both run:
	// what the executor choice gains.
	WarmOther *benchRun `json:"warm_fast_other,omitempty"`
}

type benchSnapshot struct {
	N         int      `json:"snapshot"`
	Processes int      `json:"processes"`
	Change    string   `json:"change"`
	FallBacks int      `json:"fallbacks"`
	Misses    uint64   `json:"misses"`
	HitRate   *float64 `json:"hit_rate"` // null without lookups
	Memo      int      `json:"memo_instructions"`
	EngineMS  float64  `json:"engine_ms"`
	WholeMS   float64  `json:"whole_ms"`
}

type benchReport struct {
	Guest     string          `json:"guest"`
	Processes int             `json:"processes"`
	Executor  string          `json:"executor"`
	Other     string          `json:"other_executor,omitempty"` // the executor of WarmOther runs
	KVM       vmm.KVMProbe    `json:"kvm_probe"`
	Views     []benchView     `json:"views"`
	Snapshots []benchSnapshot `json:"snapshots"`
	Scale     []benchScale    `json:"scale,omitempty"`
	Memory    *benchMemory    `json:"memory,omitempty"`
}

// benchMemory is the benchmark process's memory over console-like refreshes: each attaches,
// reads ps, lsmod and netstat with one memo, and detaches.
type benchMemory struct {
	Processes int         `json:"processes"`
	Machines  int         `json:"fast_machines"` // Fast-Bridge machines per refresh
	Samples   []memSample `json:"samples"`
}

type memSample struct {
	Refresh int     `json:"refresh"`
	RSSKiB  int     `json:"rss_kib"`
	HeapKiB uint64  `json:"go_heap_kib"` // in use by Go after a collection
	MS      float64 `json:"refresh_ms"`  // that refresh's whole time
}

// benchScale is one row of the scale table: a view, warm, on the guest grown to Processes,
// beside the guest's own tool doing the same work inside it (run by the same kind of
// emulator: the same kernel code runs in both).
type benchScale struct {
	Processes int      `json:"processes"`
	View      string   `json:"view"`
	Warm      benchRun `json:"warm"` // the fastest of three auto runs with a trained memo
	Tool      string   `json:"tool"` // the in-guest command timed
	ToolMS    float64  `json:"tool_ms"`
	// EngineRatio and WholeRatio are the warm engine and whole times over the tool's.
	EngineRatio float64 `json:"engine_over_tool"`
	WholeRatio  float64 `json:"whole_over_tool"`
	// Slow is one Slow-Bridge run from an empty memo, for the instructions the work takes
	// (ps and its program only).
	Slow *benchRun `json:"slow,omitempty"`
	// TrainFallBacks are the fall-backs of the first, training auto run.
	TrainFallBacks int `json:"training_fallbacks"`
}

// scaleTools are the in-guest commands the scale table times against ps and netstat. The demo
// guest's busybox netstat has no -p: what -p adds is reading every process's descriptors, which
// the listing of /proc/*/fd does.
var scaleTools = map[string]string{
	"ps":      "busybox ps",
	"netstat": "busybox netstat -tuan; busybox ls -l /proc/[0-9]*/fd",
}

func (e *env) benchCommand() *cobra.Command {
	var name string
	var asJSON bool
	var snapshots, procs int
	scale := []int{100, 1000}
	var refreshes int
	c := &cobra.Command{
		Use:   "bench",
		Short: "Measure Slow-Bridge, Fast-Bridge and fall-back on ps, lsmod and netstat",
		Long: `Measure the engines on a guest grown to about 100 processes (a demo guest is booted for it
unless --guest names a running one, whose workload is then changed too). For ps, lsmod and
netstat: Slow-Bridge time, cold auto time (empty memo: Fast-Bridge falling back and learning),
warm Fast-Bridge time with the trained memo, their ratio, the hit rate and the fall-back latency,
each as engine time and as whole time (attach, run, detach). Then a series of snapshots starting
from an empty memo, the workload changing between them, shows how training converges (like
HYBRID-BRIDGE's Fig. 5). With --refreshes N, N console-like refreshes follow (attach, ps, lsmod,
netstat, detach), with the process's resident memory sampled over them. Last, the scale table: the
guest grown to each count of --scale in turn, warm ps and netstat beside the guest's own busybox
doing the same work, timed inside the guest, and their ratio; and beside the ps view, busybox ps
itself run unmodified in the SVM (hybridbridge run -- ps), with the instructions one Slow-Bridge
run of each takes. The memo used here is private to the benchmark; the saved one is untouched.

An attached VM (guest attach) is measured as it is: hybridbridge has no command channel into it to
grow or change its workload, so --processes does not apply and the snapshots of the series see
only what the VM changed by itself (a dump: nothing), and there is no scale table.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			t, kernel, stop, err := e.benchGuest(ctx, name)
			if err != nil {
				return err
			}
			defer stop()
			rep, err := e.bench(ctx, name, t, kernel, procs, snapshots, scale, refreshes)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(e.stdout, rep)
			}
			return printBench(e.stdout, rep)
		},
	}
	c.Flags().StringVar(&name, "guest", "", "a guest to measure, ours or attached (default: boot a demo guest for the benchmark)")
	c.Flags().BoolVar(&asJSON, "json", false, "print the numbers as JSON")
	c.Flags().IntVar(&snapshots, "snapshots", 5, "snapshots in the training series")
	c.Flags().IntVar(&procs, "processes", 100, "grow the guest to this many processes first")
	c.Flags().IntVar(&refreshes, "refreshes", 0, "after the training series, run this many console-like refreshes (ps, lsmod, netstat) and report the process's memory over them")
	c.Flags().Var(&scaleFlag{&scale}, "scale", "for the scale table, grow the guest to each of these process counts in turn, e.g. 100,1000 (\"\": no table)")
	return c
}

// scaleFlag is --scale: process counts separated by commas; empty for none.
type scaleFlag struct{ counts *[]int }

func (f *scaleFlag) String() string {
	if f.counts == nil {
		return ""
	}
	var parts []string
	for _, n := range *f.counts {
		parts = append(parts, strconv.Itoa(n))
	}
	return strings.Join(parts, ",")
}

func (f *scaleFlag) Set(v string) error {
	var counts []int
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 {
			return fmt.Errorf("%q is not a process count", p)
		}
		counts = append(counts, n)
	}
	*f.counts = counts
	return nil
}

func (f *scaleFlag) Type() string { return "counts" }

// benchGuest opens the named guest (ours or attached) or boots a demo guest owned by the
// benchmark; stop closes the target and stops a guest it booted.
func (e *env) benchGuest(ctx context.Context, name string) (target.Target, string, func(), error) {
	if name != "" {
		t, kernel, err := e.openTarget(ctx, name)
		if err != nil {
			return nil, "", nil, err
		}
		return t, kernel, func() { t.Close() }, nil
	}
	fmt.Fprintln(e.stderr, "booting a demo guest for the benchmark...")
	g, err := e.startDemo(ctx, fmt.Sprintf("bench-%d", time.Now().UnixNano()%100000), "512M", false, false)
	if err != nil {
		return nil, "", nil, err
	}
	t := target.FromGuest(g)
	return t, g.Meta.Kernel, func() { t.Close(); stopOwned(ctx, g) }, nil
}

func (e *env) bench(ctx context.Context, name string, t target.Target, kernel string, procs, snapshots int, scale []int, refreshes int) (*benchReport, error) {
	snap, syms, err := e.kernelFor(ctx, kernel, t)
	if err != nil {
		return nil, err
	}
	g := ownGuest(t)
	n := 0
	if g != nil {
		if n, err = growWorkload(ctx, g, procs); err != nil {
			return nil, err
		}
		name = g.Meta.Name
	} else {
		fmt.Fprintf(e.stderr, "%s is an attached VM: measured as it is (no command channel to grow or change its workload)\n", name)
	}
	onKVM, why, err := e.fastOnKVM()
	if err != nil {
		return nil, err
	}
	rep := &benchReport{Guest: name, Processes: n, KVM: e.kvmProbe(), Executor: why}
	switch {
	case onKVM:
		rep.Other = "Unicorn"
	case rep.KVM.RunsCode:
		rep.Other = "this machine's KVM, which the probe turned down"
	}
	b := &benchRunner{ctx: ctx, t: t, g: g, snap: snap, syms: syms, kvm: onKVM}
	for i, v := range benchViews {
		fmt.Fprintf(e.stderr, "bench %s...\n", v.Name)
		bv, err := b.view(i, rep.Other, e.stderr)
		if err != nil {
			return nil, err
		}
		rep.Views = append(rep.Views, bv)
	}
	if g == nil {
		rep.Processes = b.procs
	}
	if rep.Snapshots, err = b.training(snapshots, e.stderr); err != nil {
		return nil, err
	}
	if refreshes > 0 {
		if rep.Memory, err = b.memory(refreshes, e.stderr); err != nil {
			return nil, err
		}
	}
	if g == nil && len(scale) > 0 {
		fmt.Fprintf(e.stderr, "no scale table for %s: hybridbridge cannot grow an attached VM's workload or run its tools\n", name)
	} else if rep.Scale, err = b.scale(scale, e.stderr); err != nil {
		return nil, err
	}
	return rep, nil
}

// memory runs n refreshes as the console does (a session each, the views in turn, one memo)
// and samples the process's resident memory at about twenty of them.
func (b *benchRunner) memory(n int, progress io.Writer) (*benchMemory, error) {
	m := memo.New(bridge.MemoKey(b.snap))
	out := &benchMemory{Processes: b.procs}
	every := max(n/20, 1)
	for k := 1; k <= n; k++ {
		start := time.Now()
		s, err := bridge.AttachTarget(b.ctx, b.t, b.snap, b.syms, bridge.Options{Mode: bridge.ModeAuto, Memo: m, KVM: b.kvm})
		if err != nil {
			return nil, fmt.Errorf("refresh %d: %w", k, err)
		}
		for _, v := range benchViews {
			s.View = v.Name
			if _, _, err = v.Read(s, 0); err != nil {
				break
			}
		}
		out.Machines = s.FastMachines()
		err = errors.Join(err, s.Close(context.WithoutCancel(b.ctx)))
		if err != nil {
			return nil, fmt.Errorf("refresh %d: %w", k, err)
		}
		if k == 1 || k%every == 0 || k == n {
			took := time.Since(start)
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			rss, err := residentKiB()
			if err != nil {
				return nil, err
			}
			out.Samples = append(out.Samples, memSample{Refresh: k, RSSKiB: rss, HeapKiB: ms.HeapInuse >> 10, MS: float64(took.Microseconds()) / 1e3})
			fmt.Fprintf(progress, "refresh %d of %d: RSS %d MiB\n", k, n, rss>>10)
		}
	}
	return out, nil
}

// residentKiB is this process's resident memory (VmRSS).
func residentKiB() (int, error) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	return 0, errors.New("no VmRSS line in /proc/self/status")
}

// scale grows the guest to each count in turn and times ps and netstat warm beside the guest's
// own tools.
func (b *benchRunner) scale(counts []int, progress io.Writer) ([]benchScale, error) {
	var rows []benchScale
	for _, n := range counts {
		got, err := growWorkload(b.ctx, b.g, n)
		if err != nil {
			return nil, err
		}
		m := memo.New(bridge.MemoKey(b.snap))
		for i, v := range benchViews {
			tool, ok := scaleTools[v.Name]
			if !ok {
				continue
			}
			fmt.Fprintf(progress, "scale: %s at %d processes...\n", v.Name, got)
			toolMS, err := timeInGuest(b.ctx, b.g, tool)
			if err != nil {
				return nil, err
			}
			row, err := b.scaleRow(got, v.Name, tool, toolMS, m, v.Name == "ps", func(mode bridge.Mode, m *memo.Memo) (benchRun, bridge.EngineStats, error) {
				return b.run(i, mode, m)
			})
			if err != nil {
				return nil, err
			}
			rows = append(rows, row)
			if v.Name != "ps" {
				continue
			}
			// The same question asked by the unmodified program instead of the view.
			name := "run " + strings.Join(benchProgram, " ")
			fmt.Fprintf(progress, "scale: %s at %d processes...\n", name, got)
			if row, err = b.scaleRow(got, name, tool, toolMS, m, true, b.runProgram); err != nil {
				return nil, err
			}
			rows = append(rows, row)
		}
	}
	return rows, nil
}

// scaleRow times one scale-table row with runner: a Slow-Bridge run from an empty memo if slow,
// a training auto run, then the fastest of three warm auto runs.
func (b *benchRunner) scaleRow(procs int, name, tool string, toolMS float64, m *memo.Memo, slow bool,
	runner func(bridge.Mode, *memo.Memo) (benchRun, bridge.EngineStats, error)) (benchScale, error) {
	row := benchScale{Processes: procs, View: name, Tool: tool, ToolMS: toolMS}
	if slow {
		r, _, err := runner(bridge.ModeSlow, memo.New(bridge.MemoKey(b.snap)))
		if err != nil {
			return row, fmt.Errorf("scale %s slow at %d processes: %w", name, procs, err)
		}
		row.Slow = &r
	}
	for k := range 4 { // the first trains the memo
		r, _, err := runner(bridge.ModeAuto, m)
		if err != nil {
			return row, fmt.Errorf("scale %s at %d processes: %w", name, procs, err)
		}
		if k == 0 {
			row.TrainFallBacks = r.FallBacks
		} else if row.Warm.Engine == 0 || r.Engine < row.Warm.Engine {
			row.Warm = r
		}
	}
	row.EngineRatio = float64(row.Warm.Engine.Microseconds()) / 1e3 / toolMS
	row.WholeRatio = float64(row.Warm.Whole.Microseconds()) / 1e3 / toolMS
	return row, nil
}

// timeInGuest is the mean wall time of cmd run five times inside the guest, its output
// discarded, timed by the guest's own clock (busybox time, 10 ms resolution over the five).
func timeInGuest(ctx context.Context, g *guest.Guest, cmd string) (float64, error) {
	res, err := g.Exec(ctx, fmt.Sprintf(`busybox time -f %%e sh -c 'for i in 1 2 3 4 5; do %s; done >/dev/null 2>&1' 2>&1 >/dev/null`, cmd))
	if err != nil {
		return 0, err
	}
	out := strings.TrimSpace(string(res.Stdout))
	secs, perr := strconv.ParseFloat(out[strings.LastIndexByte(out, '\n')+1:], 64)
	if res.Status != 0 || perr != nil {
		return 0, fmt.Errorf("time %q in the guest: exit status %d: %s%s", cmd, res.Status, res.Stdout, res.Stderr)
	}
	return secs * 1e3 / 5, nil
}

// benchRunner runs the benchmark's views on one guest, each in a session of its own.
type benchRunner struct {
	ctx  context.Context
	t    target.Target
	g    *guest.Guest // the guest's command channel; nil for an attached VM, which has none
	snap *svm.Snapshot
	syms *vmm.Symbols
	kvm  bool // Fast-Bridge's executor is KVM
	// procs is how many processes the last ps run listed: the count for a guest without a
	// command channel to ask.
	procs int
}

// runOn runs view i once in mode with memo m, Fast-Bridge on KVM or not, and measures it.
func (b *benchRunner) runOn(i int, mode bridge.Mode, m *memo.Memo, kvm bool) (benchRun, bridge.EngineStats, error) {
	return b.measure(mode, m, kvm, benchViews[i].Name, func(s *bridge.Session) error {
		res, _, err := benchViews[i].Read(s, 0)
		if procs, ok := res.([]inspect.Process); ok && err == nil {
			b.procs = len(procs)
		}
		return err
	})
}

// benchProgram is the unmodified program the scale table runs beside the ps view.
var benchProgram = []string{"ps"}

// runProgram runs benchProgram once in the SVM, measured as a view is.
func (b *benchRunner) runProgram(mode bridge.Mode, m *memo.Memo) (benchRun, bridge.EngineStats, error) {
	name := bridge.ProgramName(benchProgram)
	p, err := appletProgram(benchProgram)
	if err != nil {
		return benchRun{}, bridge.EngineStats{}, err
	}
	return b.measure(mode, m, b.kvm, "run "+name, func(s *bridge.Session) error {
		run, err := s.RunProgram(p, name)
		if err == nil && run.Status != 0 {
			err = fmt.Errorf("%s: exit status %d: %s", name, run.Status, run.Stderr)
		}
		return err
	})
}

// measure runs fn in one session of its own in mode with memo m, Fast-Bridge on KVM or not:
// engine and whole times, memo and engine counters.
func (b *benchRunner) measure(mode bridge.Mode, m *memo.Memo, kvm bool, view string, fn func(s *bridge.Session) error) (benchRun, bridge.EngineStats, error) {
	start := time.Now()
	s, err := bridge.AttachTarget(b.ctx, b.t, b.snap, b.syms, bridge.Options{Mode: mode, Memo: m, KVM: kvm})
	if err != nil {
		return benchRun{}, bridge.EngineStats{}, err
	}
	s.View = view
	before := m.Entries()
	rerr := fn(s)
	st := s.Stats() // settles the hits replayed in C into the memo's entries
	sc, tainted, _ := s.Work()
	cerr := s.Close(context.WithoutCancel(b.ctx))
	r := benchRun{Engine: st.FastTime + st.SlowTime, Whole: time.Since(start), FallBacks: st.FallBacks, Hits: st.Hits, Misses: st.Misses, Syscalls: sc,
		Ops: st.FastOps + st.SlowOps, Tainted: tainted,
		Exits: st.KVMExits, Trapped: st.KVMTrapped}
	r.InsnHits, r.InsnMisses = insnCounts(before, m.Entries(), st.Events)
	return r, st, errors.Join(rerr, cerr)
}

// run is runOn on the executor the benchmark chose.
func (b *benchRunner) run(i int, mode bridge.Mode, m *memo.Memo) (benchRun, bridge.EngineStats, error) {
	return b.runOn(i, mode, m, b.kvm)
}

// view measures view i: Slow-Bridge, cold auto from an empty memo, warm auto (the best of three),
// fast only, and warm on the other executor where there is one (other names it).
func (b *benchRunner) view(i int, other string, progress io.Writer) (benchView, error) {
	name := benchViews[i].Name
	bv := benchView{View: name}
	var err error
	if bv.Slow, _, err = b.run(i, bridge.ModeSlow, memo.New(bridge.MemoKey(b.snap))); err != nil {
		return bv, fmt.Errorf("%s slow: %w", name, err)
	}
	m := memo.New(bridge.MemoKey(b.snap))
	var cold bridge.EngineStats
	if bv.ColdAuto, cold, err = b.run(i, bridge.ModeAuto, m); err != nil {
		return bv, fmt.Errorf("%s cold auto: %w", name, err)
	}
	// Warm: the memo trained; the best of three auto runs (the first may still learn, and
	// its fall-backs are shown).
	for range 3 {
		r, _, err := b.run(i, bridge.ModeAuto, m)
		if err != nil {
			return bv, fmt.Errorf("%s warm: %w", name, err)
		}
		bv.WarmFallBacks += r.FallBacks
		if bv.WarmFast.Engine == 0 || r.Engine < bv.WarmFast.Engine {
			bv.WarmFast = r
		}
	}
	if _, _, err := b.run(i, bridge.ModeFast, m); errors.Is(err, bridge.ErrMemoMiss) {
		bv.WarmMiss = err.Error()
	} else if err != nil {
		return bv, fmt.Errorf("%s fast: %w", name, err)
	}
	if other != "" {
		fmt.Fprintf(progress, "bench %s on %s...\n", name, other)
		r, _, err := b.runOn(i, bridge.ModeAuto, m, !b.kvm)
		if err != nil {
			return bv, fmt.Errorf("%s warm on %s: %w", name, other, err)
		}
		bv.WarmOther = &r
	}
	bv.Ratio = float64(bv.Slow.Engine) / float64(max(bv.WarmFast.Engine, 1))
	bv.HitRate, bv.InsnHitRate = bv.WarmFast.HitRate(), bv.WarmFast.InsnHitRate()
	if len(cold.Events) > 0 {
		var sum time.Duration
		for _, ev := range cold.Events {
			sum += ev.Latency
		}
		bv.FallBack = float64(sum.Microseconds()) / 1e3 / float64(len(cold.Events))
		bv.FallWhole = float64((bv.ColdAuto.Whole - bv.WarmFast.Whole).Microseconds()) / 1e3 / float64(len(cold.Events))
	}
	return bv, nil
}

// training runs every view over a series of snapshots from an empty memo, the workload changing
// between them: how training converges.
func (b *benchRunner) training(snapshots int, progress io.Writer) ([]benchSnapshot, error) {
	var rows []benchSnapshot
	m := memo.New(bridge.MemoKey(b.snap))
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	for k := 1; k <= snapshots; k++ {
		change := "as grown"
		switch {
		case b.g == nil && k == 1:
			change = "as it is"
		case b.g == nil:
			change = "unchanged by hybridbridge (attached VM)"
		case k > 1:
			var err error
			if change, err = changeWorkload(b.ctx, b.g, r); err != nil {
				return nil, err
			}
		}
		fmt.Fprintf(progress, "snapshot %d (%s)...\n", k, change)
		row := benchSnapshot{N: k, Change: change}
		var hits, misses uint64
		for i := range benchViews {
			br, _, err := b.run(i, bridge.ModeAuto, m)
			if err != nil {
				return nil, fmt.Errorf("snapshot %d %s: %w", k, benchViews[i].Name, err)
			}
			row.FallBacks += br.FallBacks
			hits, misses = hits+br.Hits, misses+br.Misses
			row.EngineMS += float64(br.Engine.Microseconds()) / 1e3
			row.WholeMS += float64(br.Whole.Microseconds()) / 1e3
		}
		row.Misses, row.Memo = misses, m.Len()
		row.HitRate = benchRun{Hits: hits, Misses: misses}.HitRate()
		row.Processes = b.procs
		if b.g != nil {
			var err error
			if row.Processes, err = countProcesses(b.ctx, b.g); err != nil {
				return nil, err
			}
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// growWorkload starts sleepers until the guest has about n processes, and returns the count.
func growWorkload(ctx context.Context, g *guest.Guest, n int) (int, error) {
	res, err := g.Exec(ctx, fmt.Sprintf(`i=$(ls -d /proc/[0-9]* | wc -l); while [ $i -lt %d ]; do setsid sleep 36000 </dev/null >/dev/null 2>&1 & i=$((i+1)); done; sleep 0.3`, n))
	if err != nil {
		return 0, err
	}
	if res.Status != 0 {
		return 0, fmt.Errorf("grow the workload: exit status %d: %s", res.Status, res.Stderr)
	}
	return countProcesses(ctx, g)
}

func countProcesses(ctx context.Context, g *guest.Guest) (int, error) {
	res, err := g.Exec(ctx, `ls -d /proc/[0-9]* | wc -l`)
	if err != nil {
		return 0, err
	}
	var n int
	_, err = fmt.Sscan(string(res.Stdout), &n)
	return n, err
}

// changeWorkload starts and stops processes, opens a listener and a connection, and loads or
// removes a module: what a guest does between two inspections.
func changeWorkload(ctx context.Context, g *guest.Guest, r *rand.Rand) (string, error) {
	var sc strings.Builder
	var what []string
	started := 3 + r.IntN(6)
	for i := 0; i < started; i++ {
		fmt.Fprintf(&sc, "setsid sh -c 'exec -a w%d sleep 36000' </dev/null >/dev/null 2>&1 &\n", r.IntN(100000))
	}
	what = append(what, fmt.Sprintf("+%d processes", started))
	killed := 1 + r.IntN(3)
	fmt.Fprintf(&sc, "for p in $(pgrep -f 'sleep 36000' | head -%d); do kill $p; done\n", killed)
	what = append(what, fmt.Sprintf("-%d", killed))
	port := 20000 + r.IntN(30000)
	fmt.Fprintf(&sc, "setsid nc -ll -p %d -e /bin/cat </dev/null >/dev/null 2>&1 &\nsleep 0.2\n(sleep 36000 </dev/null 2>/dev/null | setsid nc 127.0.0.1 %d >/dev/null 2>&1 &)\n", port, port)
	what = append(what, fmt.Sprintf("listener+connection :%d", port))
	mod := guest.DemoSpareModules[r.IntN(len(guest.DemoSpareModules))]
	fmt.Fprintf(&sc, "if grep -q '^%s ' /proc/modules; then rmmod %s; else insmod /lib/modules/%s.ko; fi\nsleep 0.3\n", mod, mod, mod)
	what = append(what, "module "+mod+" toggled")
	res, err := g.Exec(ctx, sc.String())
	if err != nil {
		return "", err
	}
	if res.Status != 0 {
		return "", fmt.Errorf("change the workload: exit status %d: %s", res.Status, res.Stderr)
	}
	return strings.Join(what, ", "), nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1e3) }

func printBench(w interface{ Write([]byte) (int, error) }, rep *benchReport) error {
	fmt.Fprintf(w, "guest %s, %d processes; executor: %s\n\n", rep.Guest, rep.Processes, rep.Executor)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "view\tslow engine\tslow whole\tcold auto engine\tcold auto whole\tfall-backs\twarm engine (min of 3)\twarm whole\twarm fall-backs (all 3)\tslow/warm\twarm hit rate (accesses)\t(instructions)\tfall-back latency (engine)\tper fall-back (whole, derived)\t")
	for _, v := range rep.Views {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%d\t%.1fx\t%s\t%s\t%.1f ms\t%.1f ms\t\n", v.View,
			ms(v.Slow.Engine), ms(v.Slow.Whole), ms(v.ColdAuto.Engine), ms(v.ColdAuto.Whole), v.ColdAuto.FallBacks,
			ms(v.WarmFast.Engine), ms(v.WarmFast.Whole), v.WarmFallBacks, v.Ratio, percent(v.HitRate), percent(v.InsnHitRate), v.FallBack, v.FallWhole)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "warm: Fast-Bridge falling back (auto) with the trained memo, the fastest of three runs; hit rates of that run.")
	fmt.Fprintln(w, "per fall-back (whole) is not measured: (cold auto whole - warm whole) / cold fall-backs.")
	for _, v := range rep.Views {
		if v.WarmFast.FallBacks > 0 || v.WarmMiss != "" {
			fmt.Fprintf(w, "%s: warm runs still fall back %d time(s); fast-only: %s\n", v.View, v.WarmFast.FallBacks, v.WarmMiss)
		}
	}
	if rep.Other != "" {
		fmt.Fprintf(w, "\nwarm Fast-Bridge on %s (KVM probe: %s):\n", rep.Other, rep.KVM.Reason)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "view\tengine\twhole\tfall-backs\tKVM exits\tintercepted accesses\tengine time per exit\tover the executor's warm\t")
		for _, v := range rep.Views {
			o, k := v.WarmOther, v.WarmOther
			if o.Exits == 0 {
				k = &v.WarmFast // the executor is KVM
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%.1f µs\t%.2fx\t\n", v.View, ms(o.Engine), ms(o.Whole), o.FallBacks, k.Exits, k.Trapped,
				float64(k.Engine.Microseconds())/float64(max(k.Exits, 1)), float64(o.Engine)/float64(max(v.WarmFast.Engine, 1)))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	fmt.Fprintln(w, "\ntraining from an empty memo, the workload changing between snapshots (ps + lsmod + netstat, auto):")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "snapshot\tprocesses\tfall-backs\tmisses\thit rate\tmemo\tengine\twhole\tchange")
	for _, s := range rep.Snapshots {
		fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t%s\t%d\t%.0f ms\t%.0f ms\t%s\n", s.N, s.Processes, s.FallBacks, s.Misses, percent(s.HitRate), s.Memo, s.EngineMS, s.WholeMS, s.Change)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if mem := rep.Memory; mem != nil {
		fmt.Fprintf(w, "\nmemory over %d console-like refreshes (ps, lsmod, netstat; %d processes, %d Fast-Bridge machine(s) each):\n",
			mem.Samples[len(mem.Samples)-1].Refresh, mem.Processes, mem.Machines)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "refresh\tRSS\tGo heap\trefresh time")
		for _, m := range mem.Samples {
			fmt.Fprintf(tw, "%d\t%.1f MiB\t%.1f MiB\t%.0f ms\n", m.Refresh, float64(m.RSSKiB)/1024, float64(m.HeapKiB)/1024, m.MS)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(rep.Scale) == 0 {
		return nil
	}
	fmt.Fprintln(w, "\nscale: warm views (fastest of three) beside the guest's own tool, timed inside the guest (mean of five):")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "processes\tview\tengine\twhole\toperations\tsystem calls\tfall-backs (training, warm)\tslow-bridge\tinstructions\tin-guest tool\tengine/tool\twhole/tool\ttool")
	for _, r := range rep.Scale {
		slow, insns := "-", "-"
		if r.Slow != nil {
			slow, insns = ms(r.Slow.Engine), strconv.FormatUint(r.Slow.Tainted, 10)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%d\t%d, %d\t%s\t%s\t%.0f ms\t%.1fx\t%.1fx\t%s\n", r.Processes, r.View, ms(r.Warm.Engine), ms(r.Warm.Whole),
			r.Warm.Ops, r.Warm.Syscalls, r.TrainFallBacks, r.Warm.FallBacks, slow, insns, r.ToolMS, r.EngineRatio, r.WholeRatio, r.Tool)
	}
	return tw.Flush()
}
