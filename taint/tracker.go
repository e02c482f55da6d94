package taint

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"golang.org/x/arch/x86/x86asm"

	"hybridbridge/emu"
)

// Config configures a Tracker. The zero value is usable: VMST policy with
// no global classifier, all memory SVM-local, RSP SVM-local.
type Config struct {
	// Policy decides accesses; nil means VMST{}.
	Policy Policy

	// Image lists the kernel image's virtual ranges (text, data, bss):
	// absolute displacements and immediates pointing into them are
	// constant-global addresses. RIP-relative operands are global
	// whatever this says.
	Image []VirtRange

	// Memory gives initial labels of physical ranges (GVM overlay → GVM,
	// user pages → user); the first range containing a byte wins.
	// Default labels memory in no range; zero means LabelSVM, since
	// everything else in the SVM's RAM is the SVM's.
	Memory  []PhysRange
	Default Label

	// Regs are the register labels after New and Reset, byte for byte
	// over the named registers (narrower names override wider ones); nil
	// means {RSP: LabelSVM}.
	Regs map[x86asm.Reg]Label

	// OnAccess receives every access of every processed instruction, after
	// its rule ran (Data is filled in). a is valid only during the call.
	OnAccess func(a *Access)
	// Record keeps a copy of every access for TakeAccesses.
	Record bool

	// Sync, if set, makes Attach install a Go memory hook on a physical
	// range whose accesses need their decision before they complete.
	Sync *SyncConfig

	// Capacity is the trace buffer size in events (default 1<<14).
	Capacity int

	// ReadCode fills buf with the instruction bytes at virtual address va;
	// nil reads them through the attached engine's page tables (CR3).
	ReadCode func(va uint64, buf []byte) error
}

// SyncConfig selects accesses decided synchronously.
type SyncConfig struct {
	Begin, End uint64 // guest-physical, inclusive
	// More are further inclusive ranges decided the same way (Begin/End may then be zero).
	More [][2]uint64
	// Func runs inside the memory hook before the access completes, with
	// the same decision the batch will record. It may redirect the access
	// (e.g. patch memory) or call Engine.Stop. a is valid during the call.
	Func func(a *Access)
}

// Tracker is the taint engine. See the package documentation.
type Tracker struct {
	cfg    Config
	policy Policy
	comp   compiler

	e     *emu.Engine
	tb    *emu.TraceBuffer
	hooks []emu.Hook // the Sync hooks

	regs regFile
	mem  shadowMem

	code    map[uint64]*insn
	front   [4096]*insn // direct-mapped by pc in front of code
	special []*insn     // unmodelled and undecodable instructions, for Stats
	xlat    map[uint64]uint64

	// The instruction whose exec event came last, and its accesses so far.
	cur *insn
	raw []emu.Event
	la  []logAcc
	acc []Access
	sv  [maxSlots]vec // slot values: loaded bytes of read slots, results of write slots
	pre []preDecided
	// For accesses outside any slot (kGeneric, kIret, mismatches): the
	// union of what they read, and the label their writes store.
	genLoaded, genOut Label

	recorded []Access
	st       counters
}

// logAcc is one logical access: Unicorn's events for a page-crossing read
// folded back into one.
type logAcc struct {
	phys, phys2 uint64 // phys2: physical address of the next page, for crossing accesses
	n           uint8
	write       bool
	slot        int8  // index into insn.slots, -1 if none
	off         uint8 // byte offset within the slot
	last        int   // index in raw of its last event
}

// preDecided is a decision made synchronously for the current
// instruction's access k, reused when the instruction is processed.
type preDecided struct {
	k      int
	phys   uint64
	write  bool
	access Access
}

// New creates a Tracker. Call Attach before the engine's first Start, or
// feed events by hand with Process.
func New(cfg Config) *Tracker {
	if cfg.Capacity <= 0 {
		cfg.Capacity = 1 << 14
	}
	if cfg.Default == LabelNone {
		cfg.Default = LabelSVM
	}
	if cfg.Regs == nil {
		cfg.Regs = map[x86asm.Reg]Label{x86asm.RSP: LabelSVM}
	}
	t := &Tracker{
		cfg:    cfg,
		policy: cfg.Policy,
		comp:   compiler{image: cfg.Image},
		mem:    newShadowMem(cfg.Memory, cfg.Default),
		code:   make(map[uint64]*insn),
		xlat:   make(map[uint64]uint64),
	}
	if t.policy == nil {
		t.policy = VMST{}
	}
	t.st.mismatched = make(map[x86asm.Op]uint64)
	t.resetRegs()
	return t
}

// ErrAttached is returned by Attach on a Tracker that already has an
// engine.
var ErrAttached = errors.New("taint: tracker already attached")

// Attach installs the trace (and the Sync hook, if configured) on e. It
// must be called before e's first Start: Unicorn compiles hooks into
// translated code.
func (t *Tracker) Attach(e *emu.Engine) error {
	if t.e != nil {
		return ErrAttached
	}
	tb, err := e.NewTrace(emu.TraceConfig{
		Capacity: t.cfg.Capacity,
		Code:     true,
		Mem:      emu.HookMemRead | emu.HookMemWrite,
		OnFull:   t.Process,
	})
	if err != nil {
		return fmt.Errorf("taint: attach trace: %w", err)
	}
	// Installed after the trace, so Unicorn calls it after the trace's C
	// hook has recorded the same access (hooks run in installation order).
	if s := t.cfg.Sync; s != nil {
		ranges := s.More
		if s.Begin != 0 || s.End != 0 {
			ranges = append([][2]uint64{{s.Begin, s.End}}, ranges...)
		}
		for _, r := range ranges {
			h, err := e.HookMem(emu.HookMemRead|emu.HookMemWrite, r[0], r[1], t.syncHook)
			if err != nil {
				for _, h := range t.hooks {
					e.HookDel(h)
				}
				t.hooks = nil
				tb.Close()
				return fmt.Errorf("taint: attach sync hook [%#x, %#x]: %w", r[0], r[1], err)
			}
			t.hooks = append(t.hooks, h)
		}
	}
	t.e, t.tb = e, tb
	return nil
}

// Detach removes the trace and hook, after processing what they recorded.
func (t *Tracker) Detach() error {
	if t.e == nil {
		return nil
	}
	t.Drain()
	err := t.tb.Close()
	for _, h := range t.hooks {
		if e := t.e.HookDel(h); e != nil && err == nil {
			err = e
		}
	}
	t.e, t.tb, t.hooks = nil, nil, nil
	if err != nil {
		return fmt.Errorf("taint: detach: %w", err)
	}
	return nil
}

func (t *Tracker) syncHook(k emu.MemAccess, addr uint64, size int, _ int64) {
	a, err := t.Current(addr, size, k == emu.MemWrite)
	if err != nil {
		// emu turns this into a HookPanicError stop: a synchronous access
		// that cannot be decided must not complete silently.
		panic(err)
	}
	t.cfg.Sync.Func(&a)
}

// Process consumes trace events (exec events with virtual addresses, read
// and write events with physical ones). Attach wires it as the trace's
// OnFull; call it directly to replay recorded events. The last
// instruction stays pending until the next exec event or Drain.
func (t *Tracker) Process(evs []emu.Event) {
	if len(evs) == 0 {
		return
	}
	start := time.Now()
	for i := range evs {
		ev := &evs[i]
		switch ev.Kind {
		case emu.EventExec:
			if t.cur != nil {
				t.finish()
			}
			t.cur = t.lookup(ev.Addr, ev.Size)
		case emu.EventRead, emu.EventWrite:
			if t.cur != nil {
				t.raw = append(t.raw, *ev)
			}
		}
	}
	t.st.busy += time.Since(start)
	t.st.batches++
}

// Sync processes every event recorded so far. The instruction now
// executing (the last exec event) stays pending: its effects are not
// applied, so the shadow state is exactly the state before it. Inside a
// memory hook this is the state its address was computed from.
func (t *Tracker) Sync() {
	if t.tb != nil {
		t.tb.Drain(t.Process)
	}
}

// Drain processes every recorded event and the pending instruction. Call
// it after Start returns (before reading labels or statistics); it
// assumes the last traced instruction completed, which holds for every
// stop except Engine.Stop from inside a memory hook. An instruction that
// faulted (missing accesses) has no effect; Unicorn re-executes it.
func (t *Tracker) Drain() {
	t.Sync()
	if t.cur != nil {
		start := time.Now()
		t.finish()
		t.st.busy += time.Since(start)
	}
}

// Reset processes what is pending, then clears the shadow state: memory
// returns to its initial labels and registers to Config.Regs. Decoded
// instructions and statistics are kept.
func (t *Tracker) Reset() {
	t.Drain()
	t.mem.reset()
	t.resetRegs()
}

func (t *Tracker) resetRegs() {
	t.regs = regFile{}
	regs := slices.Collect(maps.Keys(t.cfg.Regs))
	slices.SortFunc(regs, func(a, b x86asm.Reg) int {
		return cmp.Or(cmp.Compare(infoOf(b).size, infoOf(a).size), cmp.Compare(a, b))
	})
	for _, r := range regs {
		t.SetRegLabel(r, t.cfg.Regs[r])
	}
}

// FlushCode forgets decoded instructions and address translations, for
// code that was patched or remapped.
func (t *Tracker) FlushCode() {
	clear(t.code)
	clear(t.xlat)
	t.front = [len(t.front)]*insn{}
}

// TakeAccesses returns the accesses recorded (Config.Record) since the
// last call.
func (t *Tracker) TakeAccesses() []Access {
	a := t.recorded
	t.recorded = nil
	return a
}

// SetRegLabel sets every byte of register r (a GPR of any width, or an
// XMM register) to l. Unlike an instruction's write, a 32-bit name does
// not touch the upper bytes.
func (t *Tracker) SetRegLabel(r x86asm.Reg, l Label) {
	ri := infoOf(r)
	switch ri.class {
	case rcGPR:
		m := mask8(int(ri.size)) << (8 * uint(ri.off))
		t.regs.gpr[ri.idx] = t.regs.gpr[ri.idx]&^m | bcast(l)&m
	case rcXMM:
		t.regs.xmm[ri.idx] = bvec(l, 16)
	}
}

// RegLabels returns the labels of register r's bytes, low byte first
// (nil for registers that are not tracked).
func (t *Tracker) RegLabels(r x86asm.Reg) []Label {
	ri := infoOf(r)
	if ri.class != rcGPR && ri.class != rcXMM {
		return nil
	}
	return t.regs.read(ri).labels(int(ri.size))
}

// MemLabels returns the labels of n bytes of physical memory at phys.
func (t *Tracker) MemLabels(phys uint64, n int) []Label {
	out := make([]Label, n)
	for i := range out {
		out[i] = Label(t.mem.load(phys+uint64(i), 0, 1))
	}
	return out
}

// SetMemLabel sets n bytes of physical memory at phys to l.
func (t *Tracker) SetMemLabel(phys uint64, n int, l Label) {
	for i := 0; i < n; i++ {
		t.mem.store(phys+uint64(i), 0, 1, uint64(l))
	}
}

// lookup returns the compiled instruction at pc, decoding it on first use.
func (t *Tracker) lookup(pc uint64, size uint8) *insn {
	h := &t.front[(pc^pc>>12)&uint64(len(t.front)-1)]
	if in := *h; in != nil && in.pc == pc && in.size == size {
		return in
	}
	in := t.code[pc]
	if in == nil || in.size != size {
		in = t.decode(pc, size)
		t.code[pc] = in
	}
	*h = in
	return in
}

func (t *Tracker) decode(pc uint64, size uint8) *insn {
	var buf [16]byte
	if size == 0 || int(size) > len(buf) {
		t.st.undecodable++
		in := undecodable(pc, size)
		t.special = append(t.special, in)
		return in
	}
	in, err := t.compileAt(pc, buf[:size])
	if err != nil {
		if errors.Is(err, ErrUnmodelled) {
			t.st.unmodelledInsns++
		} else {
			t.st.undecodable++
		}
		t.special = append(t.special, in)
	}
	return in
}

// compileAt reads and compiles the instruction at pc; buf's length is the
// size Unicorn executed. The error wraps ErrUnmodelled or errUndecodable;
// the instruction is usable either way.
func (t *Tracker) compileAt(pc uint64, buf []byte) (*insn, error) {
	size := uint8(len(buf))
	if err := t.readCode(pc, buf); err != nil {
		return undecodable(pc, size), fmt.Errorf("%w: %w", errUndecodable, err)
	}
	return t.comp.compileBytes(buf, pc)
}

// compileBytes decodes code (exactly one instruction) and compiles it.
func (c *compiler) compileBytes(code []byte, pc uint64) (*insn, error) {
	size := uint8(len(code))
	if in := c.special(code, pc); in != nil {
		return in, nil
	}
	inst, err := x86asm.Decode(code, 64)
	if err != nil {
		return undecodable(pc, size), fmt.Errorf("%w at %#x (% x): %w", errUndecodable, pc, code, err)
	}
	if inst.Op == 0 || inst.Len != len(code) {
		return undecodable(pc, size), fmt.Errorf("%w at %#x (% x): decoded %v of %d bytes", errUndecodable, pc, code, inst.Op, inst.Len)
	}
	return c.compile(inst, pc)
}

// special recognises instructions x86asm does not know (it decodes endbr64
// as a lone prefix and rejects stac/clac); none of them moves data.
func (c *compiler) special(code []byte, pc uint64) *insn {
	switch string(code) {
	case "\xf3\x0f\x1e\xfa", "\xf3\x0f\x1e\xfb", // endbr64, endbr32
		"\x0f\x01\xca", "\x0f\x01\xcb": // clac, stac
		return &insn{pc: pc, size: uint8(len(code)), kind: kNop}
	}
	return nil
}
