// Package bridge runs the guest's kernel code in the SVM against the guest's memory: it attaches
// a paused guest, overlays its RAM, and decides which kernel globals come from the guest.
package bridge

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"hybridbridge/decision"
	"hybridbridge/emu"
	"hybridbridge/guest"
	"hybridbridge/inspect"
	"hybridbridge/memo"
	"hybridbridge/svm"
	"hybridbridge/taint"
	"hybridbridge/target"
	"hybridbridge/vmm"
)

// ErrKernelMismatch means the guest does not run the SVM snapshot's kernel build.
var ErrKernelMismatch = errors.New("the guest runs another kernel build than the SVM")

// ErrLayoutMismatch means the guest runs the SVM's kernel build, but KASLR placed it elsewhere
// than the SVM's: pointers in its memory would not mean the same in the SVM.
var ErrLayoutMismatch = errors.New("the guest's kernel layout is not the SVM's")

// Session is one inspection: the guest paused and overlaid into an SVM machine. Close resumes
// the guest if the session paused it.
type Session struct {
	t target.Target
	// closeTarget is set when the session made its target (AttachWith) and so closes it.
	closeTarget bool
	// paused is set when Attach paused a running guest: only that pause is the session's to undo.
	// A guest the user (or a test hashing its memory) paused stays paused after Close.
	paused bool
	// ctx is Attach's: the views read through inspect.Files, which carries no context, so every
	// file operation checks this one first and a cancelled inspection stops within one operation
	// instead of running its view to the end with the guest paused.
	ctx     context.Context
	Machine *svm.Machine
	ram     *target.RAM
	// RAMCopied and RAMTook are what making the guest's RAM mappable cost: nothing for a guest
	// we booted (its RAM is a shared file), a copy of its populated pages for a VM we attached.
	RAMCopied uint64
	RAMTook   time.Duration
	Banner    string         // the guest's linux_banner
	Grafts    svm.GraftStats // the guest's vmemmap entries copied into the SVM
	// GuestTSC is the guest's clock counter at its last timekeeping update, which the guest's
	// clock source read function (clockRead) returns in the SVM while the redirected timekeeper
	// (tk_core) is the guest's: views see the guest's time as of that update (the guest is
	// paused; an idle guest updates it when it wakes). It is a TSC value unless the guest's
	// clock source is another counter (an HPET, when the guest found its TSC unstable).
	GuestTSC  uint64
	clockRead string // the guest clock source's read function, e.g. read_tsc or read_hpet
	// ModuleGrafts are the guest's module-area directory entries copied into the SVM.
	ModuleGrafts svm.GraftStats
	// PercpuGrafts counts the guest's per-CPU chunk directory entries copied to where the SVM's
	// this_cpu operations reach them (percpuGrafts); 0 when the guest has no chunk in vmalloc.
	PercpuGrafts int
	Globals      *Globals       // the per-global lists, with the unknown globals seen
	Taint        *taint.Tracker // provenance for the kernel image's data and shared struct pages
	// Counts are the accesses to kernel globals by decision, plus guest-derived accesses to the
	// shared struct pages under Redirect. On Unicorn Fast-Bridge, the local ones let through in C are
	// added by Accesses (and Stats).
	Counts decision.Counts
	// OnAccess, if set, sees every memory access the taint engine decided (slow; for debugging
	// a view). a is valid only during the call.
	OnAccess func(a *taint.Access)
	// Memo, if set, learns every decision, keyed by instruction; View names the view running.
	Memo    *memo.Memo
	View    string
	vmemmap uint64 // vmemmap_base (the same in both kernels)
	snap    *svm.Snapshot
	leaves  []svm.Graft // the guest's vmemmap mappings
	mods    []svm.Graft // the guest's module-area directory entries
	// percpuTop and percpuShifted are the guest's per-CPU chunk entries (percpuGrafts).
	percpuTop     svm.Graft
	percpuShifted []svm.Graft
	// foreignCode is the guest's module code the SVM cannot run (codePage), guarded per machine.
	foreignCode []codePage
	mode        Mode
	fast        *svm.Machine   // Fast-Bridge's machine (modes auto and fast)
	filter      *emu.MemFilter // Fast-Bridge's hook, with the accesses it lets through in C
	// replay holds the redirect decisions Fast-Bridge replayed, by (instruction, physical
	// address), until the memo changes: the filter's counterpart for what needs a swap in Go.
	replay   map[[2]uint64]decision.Decision
	replayed uint64         // the memo version the filter and replay were filled from
	run      fastRun        // the Fast-Bridge operation in progress
	onKVM    bool           // Fast-Bridge runs under KVM
	kept     []svm.PhysSpan // on KVM: decided pages the CPU reads itself, left unintercepted
	stats    EngineStats
	policy   *policy // decides the kernel image's data and the shared struct pages
	// learnErr is the first decision the memo refused during the Slow-Bridge operation in
	// progress (a bug: Slow-Bridge only makes valid ones); the operation fails with it.
	learnErr error
	// lanes are the extra Fast-Bridge machines Each spreads a view over (lanesFor); a lane is
	// itself a Session, marked lane, whose misses the session re-runs.
	lanes           []*Session
	lane            bool
	absorbedSkipped uint64 // of a lane: its filter's count already moved into the session's
	closedLanes     struct{ syscalls, swaps int }
}

// Attach pauses the guest, checks that it runs the snapshot's kernel, and overlays its RAM into a
// new SVM machine with the taint engine attached (Slow-Bridge). The guest stays paused until
// Close.
func Attach(ctx context.Context, g *guest.Guest, snap *svm.Snapshot, syms *vmm.Symbols) (*Session, error) {
	return AttachMode(ctx, g, snap, syms, ModeSlow, nil)
}

// AttachMode is Attach with an engine mode: Slow-Bridge only, Fast-Bridge only (a memo miss is an
// error), or Fast-Bridge falling back to Slow-Bridge on a miss and learning (auto). The memo
// holds the decisions Fast-Bridge replays and Slow-Bridge learns; nil starts an empty one.
func AttachMode(ctx context.Context, g *guest.Guest, snap *svm.Snapshot, syms *vmm.Symbols, mode Mode, mem *memo.Memo) (*Session, error) {
	return AttachWith(ctx, g, snap, syms, Options{Mode: mode, Memo: mem})
}

// Options configure a session.
type Options struct {
	Mode Mode
	Memo *memo.Memo // nil starts an empty one
	// KVM runs Fast-Bridge under KVM instead of Unicorn: the decided ranges are left without
	// memory, so each access there exits and is resolved from the memo. Only fast where KVM is
	// hardware (vmm.ProbeKVM); elsewhere it works, slowly.
	KVM bool
}

// AttachWith is AttachMode with every option.
func AttachWith(ctx context.Context, g *guest.Guest, snap *svm.Snapshot, syms *vmm.Symbols, o Options) (*Session, error) {
	t := target.FromGuest(g)
	s, err := AttachTarget(ctx, t, snap, syms, o)
	if err != nil {
		return nil, errors.Join(err, t.Close())
	}
	s.closeTarget = true
	return s, nil
}

// AttachTarget attaches any target: a guest we booted, a QEMU process, a libvirt domain or a
// dump. Nothing from inside the guest is used: its kernel is found in its RAM by the SVM
// kernel's banner, and its page-table root is the kernel's own init_top_pgt, cross-checked with
// the vCPUs' CR3 where the target has vCPU state. A running target is paused until Close; one
// that was paused (or a dump) stays as it is. The session does not close t.
func AttachTarget(ctx context.Context, t target.Target, snap *svm.Snapshot, syms *vmm.Symbols, o Options) (_ *Session, err error) {
	mode, mem := o.Mode, o.Memo
	switch mode {
	case ModeAuto, ModeFast, ModeSlow:
	default:
		return nil, fmt.Errorf("unknown mode %q (auto, fast or slow)", mode)
	}
	if ram := target.RAMOnly(t.Phys().Ranges()); !snap.Layout.Serves(ram) {
		need, err := svm.GVMMaxFor(ram)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", t.Name(), err)
		}
		return nil, fmt.Errorf("%s has RAM up to %d MiB; the SVM snapshot serves guests up to %d MiB (rebuild it with: hybridbridge svm build --gvm-max %dM)",
			t.Name(), target.RAMEnd(ram)>>20, snap.Layout.GVMMax>>20, need>>20)
	}
	// Checked before pausing: a guest running another kernel is refused without being touched.
	place, err := checkKernelPlace(ctx, t, snap, syms)
	if err != nil {
		return nil, err
	}
	// A target the caller paused stays as it is (its memory may have been hashed); one still
	// running is paused where its clock is consistent.
	state, err := t.State(ctx)
	if err != nil {
		return nil, err
	}
	if state == target.Running {
		err = pauseSettled(ctx, t, syms, place)
	} else {
		err = clockSettled(t.Phys(), syms, place)
	}
	if err != nil {
		return nil, err
	}
	s := &Session{t: t, snap: snap, Memo: mem, onKVM: o.KVM && mode != ModeSlow, paused: state == target.Running, ctx: ctx}
	if s.Memo == nil {
		s.Memo = memo.New(MemoKey(snap))
	}
	defer func() {
		if err != nil {
			s.Close(context.WithoutCancel(ctx))
		}
	}()
	if s.ram, err = t.RAM(ctx); err != nil {
		return nil, err
	}
	s.RAMCopied, s.RAMTook = s.ram.Copied, s.ram.Took
	phys, err := vmm.NewFileView(s.ram.File, s.ram.Ranges)
	if err != nil {
		return nil, fmt.Errorf("%s RAM: %w", t.Name(), err)
	}
	defer phys.Close()
	w, err := vmm.NewWalker(phys, place.root, place.levels)
	if err != nil {
		return nil, err
	}
	virt := vmm.NewVirtView(t.Name(), w)
	if err := s.checkKernel(virt, snap); err != nil {
		return nil, err
	}
	s.Globals = NewGlobals(syms)
	if s.GuestTSC, s.clockRead, err = s.guestClock(virt, snap); err != nil {
		return nil, err
	}
	if s.leaves, err = vmemmapGrafts(w, s.vmemmap); err != nil {
		return nil, err
	}
	if s.mods, err = moduleGrafts(w); err != nil {
		return nil, err
	}
	if s.foreignCode, err = moduleCodeInImage(w, snap); err != nil {
		return nil, err
	}
	if s.percpuTop, s.percpuShifted, err = percpuGrafts(w, virt, snap, syms); err != nil {
		return nil, err
	}
	s.mode = mode
	first, err := s.openMachine(mode == ModeSlow)
	if err != nil {
		return nil, err
	}
	if mode == ModeSlow {
		s.Machine = first
		if s.Taint, err = s.tracker(snap, s.policy); err != nil {
			return nil, err
		}
	} else {
		s.fast = first
		if err := s.hookFast(first); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// BlockingEntries are the kernel functions whose entry means an injected call is about to sleep
// or to wait for another task: the scheduler's context switch, the idle loop a CPU enters with
// nothing to run, and the optimistic spins on a mutex's or rw-semaphore's owner while it is on a
// CPU. Nothing else runs in the SVM to wake the call or release the lock (an owner "on a CPU" is
// a guest task the pause caught inside its critical section), so the machine stops it there
// (svm.ErrBlocked) instead of letting it spin out its budget. Snapshots record them
// (svm.BuildOptions.KeepSymbols) for machines opened without a symbol table.
func BlockingEntries() []string {
	return []string{"__switch_to_asm", "default_idle", "mutex_spin_on_owner", "rwsem_spin_on_owner"}
}

// openMachine opens an SVM machine with the guest overlaid: its RAM, its vmemmap and module-area
// mappings, the aliased struct pages watched. The first machine also settles the aliases and the
// policy.
func (s *Session) openMachine(slow bool) (*svm.Machine, error) {
	// Every operation starts from a reset machine (do), so files need no closing.
	opts := svm.Options{Symbols: s.Globals.syms, LeaveOpen: true, Blocking: BlockingEntries(),
		Clock: &svm.ClockSource{Func: s.clockRead, TSC: func() uint64 { return s.GuestTSC }}}
	if slow {
		opts.OnReset = s.onReset
	}
	if !slow && s.onKVM {
		opts.KVM = &svm.KVMOptions{}
	} else {
		// UserMode: any of the session's machines may run a program (RunProgram); the views pay
		// only a privilege reload per reset for it.
		opts.Unicorn = &svm.UnicornOptions{Swaps: true, UserMode: true}
	}
	m, err := svm.Open(s.snap, opts)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			m.Close()
		}
	}()
	if err := m.AttachOverlay(s.ram.File, target.RAMOnly(s.ram.Ranges)); err != nil {
		return nil, err
	}
	if s.policy == nil {
		aliases, err := s.aliasesIn(m, s.leaves)
		if err != nil {
			return nil, err
		}
		if s.Globals.frameless, err = framelessHelpers(s.Globals.syms, m.ReadVirt); err != nil {
			return nil, err
		}
		s.policy = newPolicy(s.snap, s.Globals, aliases)
		s.policy.caller = func() uint64 { return s.callerOf(s.Machine) }
	}
	if s.Grafts, err = m.Graft(s.leaves); err != nil {
		return nil, err
	}
	if err := s.checkGuestTables(m, s.mods); err != nil {
		return nil, err
	}
	if s.ModuleGrafts, err = m.Graft(s.mods); err != nil {
		return nil, err
	}
	if err := s.graftPercpu(m); err != nil {
		return nil, err
	}
	if err := s.guardModuleCode(m); err != nil {
		return nil, err
	}
	var spans []svm.PhysSpan
	for _, a := range s.policy.aliases {
		spans = append(spans, svm.PhysSpan{Start: a.svm, End: a.svm + a.size})
	}
	if !m.OnKVM() {
		// On KVM the aliases are intercepted ranges instead (hookFast).
		if err := m.WatchAliases(spans); err != nil {
			return nil, err
		}
	}
	ok = true
	return m, nil
}

// alias is a range of the SVM's physical memory that holds, at the same virtual address, the SVM's
// own version of something the guest has too: the struct pages of memory sections both kernels
// describe (the first 128 MiB, where the guest's RAM and the SVM's kernel image and low memory
// interleave). The SVM's mapping stays; a guest-derived access is given the guest's bytes from
// guest, in the overlaid guest RAM.
type alias struct {
	svm, guest, size uint64
	vmemmap          uint64 // the range's offset in the vmemmap region: which pages' struct pages
}

// place is where phys, in the alias, lies in the vmemmap region: which page frame's struct page
// it is part of, the same in every KASLR layout.
func (a alias) place(phys uint64) uint64 { return a.vmemmap + phys - a.svm }

// aliasesIn finds, among the guest's vmemmap leaves, those the SVM maps itself.
func (s *Session) aliasesIn(m *svm.Machine, leaves []svm.Graft) ([]alias, error) {
	var out []alias
	for _, l := range leaves {
		first, err := m.Phys(l.VA)
		if err != nil {
			continue // the SVM has nothing there: grafted
		}
		last, err := m.Phys(l.VA + l.Size - 1)
		if err != nil || last != first+l.Size-1 {
			return nil, fmt.Errorf("vmemmap %#x: the SVM maps it in pieces; unsupported", l.VA)
		}
		guest := l.Entry & vmm.PTEAddrMask &^ (l.Size - 1)
		if !m.IsGuestRAM(guest, l.Size) {
			return nil, fmt.Errorf("vmemmap %#x: the guest's struct pages at %#x are not in its overlaid RAM", l.VA, guest)
		}
		out = append(out, alias{svm: first, guest: guest, size: l.Size, vmemmap: l.VA - s.vmemmap})
	}
	return out, nil
}

// vmemmapGrafts lists the guest's mappings of its struct pages (the vmemmap region): the SVM's
// kernel reaches a guest page's struct page (e.g. reading another process's memory for
// /proc/<pid>/cmdline) at the same virtual address, and the SVM maps struct pages only for its
// own memory sections. The whole region is walked, so no struct size is assumed.
func vmemmapGrafts(w *vmm.Walker, base uint64) ([]svm.Graft, error) {
	var out []svm.Graft
	err := w.Mappings(base, base+1<<40-1, func(m vmm.Mapping) error {
		out = append(out, svm.Graft{VA: m.VA, Size: m.Size, Entry: m.Entry})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("guest vmemmap: %w", err)
	}
	return out, nil
}

// checkKernel reads the guest's banner and the physical placement of its kernel through the
// guest's own page tables: both must be the SVM's, or the SVM's code and addresses do not fit the
// guest's data.
func (s *Session) checkKernel(virt *vmm.VirtView, snap *svm.Snapshot) error {
	w := virt.Walker()
	banner, err := virt.ReadCString(snap.Symbols["linux_banner"], 1024)
	if err != nil {
		return fmt.Errorf("%w: no kernel banner at the SVM kernel's linux_banner (%v)", ErrKernelMismatch, err)
	}
	s.Banner = strings.TrimSpace(banner)
	if s.Banner != snap.Banner {
		return fmt.Errorf("%w: %s runs %q; the SVM runs %q", ErrKernelMismatch, s.t.Name(), s.Banner, snap.Banner)
	}
	text, _, _, err := w.Translate(snap.Symbols["_text"])
	if err != nil {
		return fmt.Errorf("guest kernel text: %w", err)
	}
	if text != snap.Layout.KernelStart {
		return fmt.Errorf("%w: %s's kernel is at physical %#x, the SVM's at %#x (is KASLR on? boot it with nokaslr)", ErrKernelMismatch, s.t.Name(), text, snap.Layout.KernelStart)
	}
	for _, v := range []string{"page_offset_base", "vmemmap_base", "vmalloc_base"} {
		gv, err1 := virt.ReadUint64(snap.Symbols[v])
		sv, err2 := s.svmValue(snap, v)
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		if gv != sv {
			return fmt.Errorf("%w: %s is %#x in the guest, %#x in the SVM (memory layout randomised?)", ErrKernelMismatch, v, gv, sv)
		}
		if v == "vmemmap_base" {
			s.vmemmap = gv
		}
	}
	return nil
}

// svmValue reads a 64-bit global from the snapshot's RAM file.
func (s *Session) svmValue(snap *svm.Snapshot, name string) (uint64, error) {
	b, err := svmBytes(snap, snap.Symbols[name], 8)
	if err != nil {
		return 0, fmt.Errorf("SVM %s: %w", name, err)
	}
	return binary.LittleEndian.Uint64(b), nil
}

// svmBytes reads n bytes of the SVM kernel image's data at virtual address va from the snapshot.
func svmBytes(snap *svm.Snapshot, va uint64, n int) ([]byte, error) {
	f, err := os.Open(snap.RAMPath())
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, int64(va-snap.Symbols["_text"]+snap.Layout.KernelStart)); err != nil {
		return nil, err
	}
	return b, nil
}

// guestClock finds the guest's last counter value in its timekeeper (tk_core's
// tkr_mono.cycle_last) and the function its clock source reads the counter with. Offsets are
// not assumed: cycle_last is the field of the SVM's own timekeeper that holds a counter value
// shortly before the snapshot's captured TSC (the SVM's clock is the TSC and advances by ticks,
// so its last update is at most a few ticks earlier), and the clock source pointer is two words
// before it (struct tk_read_base: clock, mask, cycle_last), which the SVM's own confirms: it
// points at clocksource_tsc, whose first word is read_tsc.
func (s *Session) guestClock(virt *vmm.VirtView, snap *svm.Snapshot) (tsc uint64, read string, err error) {
	syms := s.Globals.syms
	tk, ok := syms.Addr("tk_core")
	if !ok {
		return 0, "", errors.New("no tk_core in the kernel's symbols")
	}
	mine, err := svmBytes(snap, tk, 64)
	if err != nil {
		return 0, "", fmt.Errorf("SVM timekeeper: %w", err)
	}
	window := snap.TSCKHz * 1000 // one second of counter
	off := -1
	for o := 16; o+8 <= len(mine); o += 8 {
		v := binary.LittleEndian.Uint64(mine[o:])
		if v <= snap.TSC && snap.TSC-v < window {
			off = o
			break
		}
	}
	if off < 0 {
		return 0, "", fmt.Errorf("no counter value near the snapshot's TSC %#x in the SVM's timekeeper (% x)", snap.TSC, mine)
	}
	csTSC, ok1 := syms.Addr("clocksource_tsc")
	readTSC, ok2 := syms.Addr("read_tsc")
	if !ok1 || !ok2 || binary.LittleEndian.Uint64(mine[off-16:]) != csTSC {
		return 0, "", fmt.Errorf("the SVM's timekeeper has no clocksource_tsc two words before cycle_last (% x)", mine)
	}
	if fn, err := svmBytes(snap, csTSC, 8); err != nil || binary.LittleEndian.Uint64(fn) != readTSC {
		return 0, "", fmt.Errorf("the SVM's clocksource_tsc does not begin with read_tsc (%v)", err)
	}
	if tsc, err = virt.ReadUint64(tk + uint64(off)); err != nil {
		return 0, "", fmt.Errorf("guest timekeeper: %w", err)
	}
	cs, err := virt.ReadUint64(tk + uint64(off-16))
	if err != nil {
		return 0, "", fmt.Errorf("guest clock source: %w", err)
	}
	fn, err := virt.ReadUint64(cs)
	if err != nil {
		return 0, "", fmt.Errorf("guest clock source at %#x: %w", cs, err)
	}
	name, delta, ok := syms.Lookup(fn)
	if !ok || delta != 0 {
		return 0, "", fmt.Errorf("the guest's clock source at %#x reads with %#x, not a function of the kernel image (a module's clock source is not supported)", cs, fn)
	}
	return tsc, name, nil
}

// Close releases the machines and resumes the guest if Attach paused it; a guest that was already
// paused when the session began stays paused.
func (s *Session) Close(ctx context.Context) error {
	err := s.Detach()
	if s.paused {
		s.paused = false
		err = errors.Join(err, s.t.Resume(ctx))
	}
	if s.closeTarget {
		s.closeTarget = false
		err = errors.Join(err, s.t.Close())
	}
	return err
}

// Detach releases the machines and leaves the guest paused (e.g. to inspect the same paused
// guest again in another mode).
func (s *Session) Detach() error {
	if s.filter != nil {
		// The filter lives in the Fast-Bridge machine's engine, which closes below: what it
		// counted is kept, so Stats and Accesses stay whole after the session.
		s.settleFilter()
		skipped, _, _ := s.filter.Stats()
		s.stats.Hits += skipped
		s.filter = nil
	}
	errs := []error{s.closeLanes()}
	if s.Machine != nil {
		errs = append(errs, s.Machine.Close())
	}
	if s.fast != nil {
		errs = append(errs, s.fast.Close())
	}
	errs = append(errs, s.ram.Close())
	s.Machine, s.fast, s.ram = nil, nil, nil
	return errors.Join(errs...)
}

// onReset clears the shadow state: the memory it described is gone.
func (s *Session) onReset() {
	if s.Taint != nil {
		s.Taint.Drain()
		s.Taint.Reset()
	}
}

// procPath maps a view's /proc path to the SVM's fresh procfs instance (svm.ProcRoot). The
// reader's own entries (/proc/self and the links to it: net, mounts) would resolve the SVM
// agent's pid among the guest's processes; they are the guest's init's (pid 1), whose namespaces
// are the guest's root ones, as for the guest's own tools.
func procPath(path string) string {
	rest, ok := strings.CutPrefix(path, "/proc")
	if !ok || (rest != "" && rest[0] != '/') {
		return path
	}
	for _, self := range []string{"/self", "/thread-self"} {
		if rest == self || strings.HasPrefix(rest, self+"/") {
			rest = "/1" + rest[len(self):]
		}
	}
	for _, link := range []string{"/net", "/mounts"} {
		if rest == link || strings.HasPrefix(rest, link+"/") {
			rest = "/1" + rest
		}
	}
	return svm.ProcRoot + rest
}

// ReadDir lists a directory of the guest as its kernel sees it (implements inspect.Files).
func (s *Session) ReadDir(path string) ([]string, error) {
	var names []string
	err := s.do(func(m *svm.Machine) error {
		ents, err := m.ReadDir(procPath(path))
		names = make([]string, len(ents))
		for i, e := range ents {
			names[i] = e.Name
		}
		return err
	})
	return names, err
}

// ReadFile reads a file of the guest as its kernel sees it (implements inspect.Files).
func (s *Session) ReadFile(path string) ([]byte, error) {
	var data []byte
	err := s.do(func(m *svm.Machine) (err error) { data, err = m.ReadFile(procPath(path)); return })
	return data, err
}

// ReadFiles reads several files of the guest in one operation (implements inspect.Batch): one
// reset of the machine for all of them. A file's own failure (the kernel's error for it: absent,
// vanished) is in errs; an engine failure fails the whole operation, which a fall-back re-runs
// whole.
func (s *Session) ReadFiles(paths []string) ([][]byte, []error, error) {
	data, errs := make([][]byte, len(paths)), make([]error, len(paths))
	current := ""
	err := s.do(func(m *svm.Machine) error {
		clear(errs)
		for i, p := range paths {
			current = p
			data[i], errs[i] = m.ReadFile(procPath(p))
			var errno *svm.Errno
			if errs[i] != nil && !errors.As(errs[i], &errno) {
				return errs[i]
			}
		}
		return nil
	})
	if err != nil {
		// The engine's error (a memo miss in fast mode among them) names the file it stopped in.
		return nil, nil, fmt.Errorf("read %s: %w", current, err)
	}
	return data, errs, nil
}

// ReadLinkDir lists a directory of the guest and reads every link in it in one operation
// (implements inspect.LinkDir). The listing's own failure (the kernel's error: the process
// vanished) is err; a link's is in errs; an engine failure fails the operation.
func (s *Session) ReadLinkDir(dir string) ([]string, []string, []error, error) {
	var names, targets []string
	var errs []error
	var dirErr error
	current := "list " + dir
	err := s.do(func(m *svm.Machine) error {
		names, targets, errs, dirErr = nil, nil, nil, nil
		current = "list " + dir
		ents, err := m.ReadDir(procPath(dir))
		var errno *svm.Errno
		if errors.As(err, &errno) {
			dirErr = err
			return nil
		}
		if err != nil {
			return err
		}
		names, targets, errs = make([]string, len(ents)), make([]string, len(ents)), make([]error, len(ents))
		for i, e := range ents {
			names[i] = e.Name
			current = "read link " + dir + "/" + e.Name
			targets[i], errs[i] = m.ReadLink(procPath(dir + "/" + e.Name))
			if errs[i] != nil && !errors.As(errs[i], &errno) {
				return errs[i]
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %w", current, err)
	}
	if dirErr != nil {
		return nil, nil, nil, fmt.Errorf("list %s: %w", dir, dirErr)
	}
	return names, targets, errs, nil
}

// ReadLink reads a symbolic link of the guest as its kernel sees it (implements inspect.Links).
func (s *Session) ReadLink(path string) (string, error) {
	var target string
	err := s.do(func(m *svm.Machine) (err error) { target, err = m.ReadLink(procPath(path)); return })
	return target, err
}

// ReadGuestFile reads a file of the guest's file system as its init sees it (e.g. /etc/passwd)
// only if it is wholly in the guest's page cache (svm.Machine.ReadCached); otherwise the error
// wraps inspect.ErrNotInMemory. The path walk from the guest's root needs the guest's lookup
// tables (guestLookupList), which serve the SVM's own paths elsewhere, so it runs on Slow-Bridge
// with those tables redirected for the whole operation, and nothing it decides is memoized.
func (s *Session) ReadGuestFile(path string) ([]byte, error) {
	if err := s.ctx.Err(); err != nil {
		return nil, fmt.Errorf("inspection stopped: %w", err)
	}
	rel, err := svm.AgentDirPath(procPath("/proc/1/root" + path))
	if err != nil {
		return nil, err
	}
	s.policy.guestFiles = true
	defer func() { s.policy.guestFiles = false }()
	start, engine := time.Now(), s.stats.Engine
	var data []byte
	err = s.runSlow(func(m *svm.Machine) (err error) { data, err = m.ReadCached(rel); return })
	s.stats.SlowTime += time.Since(start)
	if engine != "" {
		// The views' own operations say which engine runs them; this one is counted in SlowOps.
		s.stats.Engine = engine
	}
	if errors.Is(err, svm.ErrNotInMemory) {
		err = fmt.Errorf("%w: %w", inspect.ErrNotInMemory, err)
	}
	return data, err
}

// ReadRecords reads a record device of the guest (e.g. /dev/kmsg, the guest's kernel log) one
// record per read, without blocking.
func (s *Session) ReadRecords(path string) ([][]byte, error) {
	var recs [][]byte
	err := s.do(func(m *svm.Machine) (err error) { recs, err = m.ReadRecords(procPath(path)); return })
	return recs, err
}

// The module area (MODULES_VADDR to MODULES_END with CONFIG_RANDOMIZE_BASE): the top page
// directory of the kernel's address space, entries 0..503; the ones above are the fixmap.
const (
	modulesStart = 0xffffffffc0000000
	modulesEnd   = 0xffffffffff000000
)

// moduleGrafts lists the guest's page-directory entries for its module area: the guest's
// struct module, module text and data live there, mapped by page tables in the guest's RAM. The
// SVM loads no modules, so those directory slots are free in its tables (where it maps something
// of its own, it keeps it and the conflict is counted).
func moduleGrafts(w *vmm.Walker) ([]svm.Graft, error) {
	// The whole area lies in one page directory. Without it the guest's tables are not what
	// this layout expects, which is an error rather than a guest without modules.
	if _, err := w.Slot(modulesStart, 2); err != nil {
		return nil, fmt.Errorf("guest module area: no page directory: %w", err)
	}
	var out []svm.Graft
	err := w.Slots(modulesStart, modulesEnd-1, 2, func(s vmm.Slot) error {
		if s.Entry&vmm.PTEPresent != 0 {
			out = append(out, svm.Graft{VA: s.VA, Size: vmm.PageSize2M, Entry: s.Entry})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("guest module area: %w", err)
	}
	return out, nil
}

// checkGuestTables refuses grafted guest tables (of its module area, its per-CPU chunks) that
// lie outside its overlaid RAM: the emulator's page walk reads physical memory directly, and
// there the SVM's own bytes are.
func (s *Session) checkGuestTables(m *svm.Machine, grafts []svm.Graft) error {
	for _, g := range grafts {
		if g.Entry&vmm.PTEPageSize != 0 {
			continue // a leaf
		}
		pt := g.Entry & vmm.PTEAddrMask
		if !m.IsGuestRAM(pt, 4096) {
			return fmt.Errorf("the guest's page table for %#x is at physical %#x, outside its overlaid RAM; unsupported", g.VA, pt)
		}
	}
	return nil
}
