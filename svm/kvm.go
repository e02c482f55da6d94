//go:build linux

package svm

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"time"

	"github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/arch/x86/x86asm"
	"golang.org/x/sys/unix"

	"hybridbridge/vmm"
)

// KVMOptions make a Machine run its system calls under KVM instead of Unicorn (Options.KVM).
// The machine's RAM, overlay, grafts and resets are the same; instead of memory hooks it has
// intercepted ranges (Intercept), which KVM leaves without memory so that every access there
// exits to user space.
type KVMOptions struct {
	// Timeout bounds one system call's wall-clock time (default 10 s). KVM runs the guest until
	// it exits, and a kernel spinning with interrupts off may never exit on its own.
	Timeout time.Duration
	// MaxExits bounds one system call's exits to user space (default 1 000 000): a call that
	// keeps exiting (port I/O from a console flood) is as stuck as one that spins.
	MaxExits int
}

// ErrUnsupported: KVM met an instruction it cannot carry out on this machine (a paravirtual KVM
// emulates the guest and lacks some instructions); Unicorn runs the same call.
var ErrUnsupported = errors.New("KVM cannot run an instruction")

// kvmCPU is a Machine's KVM virtual machine: one vCPU loaded with the captured state, no
// interrupt controller, the machine's RAM as memory slots except the intercepted ranges.
type kvmCPU struct {
	m       *Machine // whose RAM the memory slots are
	opts    KVMOptions
	k       *vmm.KVM
	vm      *vmm.VM
	cpu     *vmm.VCPU
	retPhys uint64    // physical address of Snapshot.ReturnAddr, where the halt is planted
	halts   []kvmHalt // the other planted halts
	// holes are the page-aligned intercepted ranges without memory slots; ranges are the
	// intercepted bytes, which trap decides; the rest of a hole's pages are the SVM's.
	holes, ranges []PhysSpan
	kept          []PhysSpan // pages of the ranges the CPU itself reads: mapped, not intercepted
	trap          func(*Trapped) error
	slotted       bool // the memory slots exist: the holes are fixed
	// writerAt caches writers by the RIP KVM reports: the kernel text does not change.
	writerAt map[uint64][]uint64
	synced   bool // KVM stores the registers at every exit (vmm.VCPU.SyncRegs)
}

// kvmHalt is a kernel address where a planted halt stops the vCPU, and what it means: a call
// ends (err), or an RDTSC/RDTSCP of the clock source is answered (tsc).
type kvmHalt struct {
	name string
	addr uint64
	phys uint64
	err  error
	tsc  *tscSite
}

// hltOpcode ends every call: the halt exits to user space because the VM has no interrupt
// controller, which needs no breakpoint support from KVM (a paravirtual KVM reports int3 as an
// emulation failure, not a debug exit).
const (
	hltOpcode = 0xf4
	nopOpcode = 0x90
)

// Trapped is an access to an intercepted range, stopped before it completes. The handler fills
// a read's Data or stores a write's.
type Trapped struct {
	Phys  uint64
	Write bool
	Data  []byte
	// PC is the instruction of a read. KVM reports a write after the instruction completed, with
	// RIP past it: PCs are then the instructions that can end there and write memory (decoding
	// backwards is ambiguous; at most one of them is real code).
	PC  uint64
	PCs []uint64
}

// openKVMExec makes the machine's executor a KVM virtual machine. The memory slots are added at the
// first call, once the overlay and the intercepted ranges are known.
func openKVMExec(m *Machine) error {
	o := *m.opts.KVM
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second
	}
	if o.MaxExits == 0 {
		o.MaxExits = 1_000_000
	}
	c := &kvmCPU{m: m, opts: o}
	m.exec = c
	if err := c.findHalts(); err != nil {
		return err
	}
	var err error
	if c.k, err = vmm.OpenKVM(); err != nil {
		return err
	}
	if c.vm, err = c.k.NewVM(); err != nil {
		return err
	}
	if c.cpu, err = c.vm.NewVCPU(); err != nil {
		return err
	}
	id, err := c.k.SupportedCPUID()
	if err != nil {
		return err
	}
	if err := c.cpu.SetCPUID(id); err != nil {
		return err
	}
	c.synced = c.cpu.SyncRegs(c.k)
	return nil
}

// findHalts translates where halts are planted: the return address; the entries where the
// Unicorn machine stops a call (Options.Blocking, an oops); with Options.Clock, its RDTSCs.
func (c *kvmCPU) findHalts() error {
	m := c.m
	w := m.virt.Walker()
	var err error
	if c.retPhys, _, _, err = w.Translate(m.snap.ReturnAddr); err != nil || c.retPhys >= uint64(len(m.ram)) {
		return fmt.Errorf("return address %#x: not in SVM RAM (%v)", m.snap.ReturnAddr, err)
	}
	blocking, err := m.blockingEntries()
	if err != nil {
		return err
	}
	var halts []kvmHalt
	for _, b := range blocking {
		halts = append(halts, kvmHalt{name: b.name, addr: b.addr, err: ErrBlocked})
	}
	for _, name := range faultEntries {
		halts = append(halts, kvmHalt{name: name, addr: m.snap.Symbols[name], err: ErrFault}) // 0 if absent
	}
	sites, err := m.tscSites()
	if err != nil {
		return err
	}
	for _, s := range sites {
		// The other sites read the vCPU's own counter, which continues the SVM's (loadCPU).
		if s.clock {
			halts = append(halts, kvmHalt{name: m.opts.Clock.Func, addr: s.addr, tsc: &s})
		}
	}
	for _, h := range halts {
		if h.addr == 0 {
			continue
		}
		pa, _, _, err := w.Translate(h.addr)
		if err != nil || pa >= uint64(len(m.ram)) {
			return fmt.Errorf("%s at %#x: not in SVM RAM (%v)", h.name, h.addr, err)
		}
		h.phys = pa
		c.halts = append(c.halts, h)
	}
	return nil
}

// plantHalts writes the halts into the private copy of the kernel text; a reset drops them with
// every other write. An RDTSC's remaining bytes become NOPs.
func (c *kvmCPU) plantHalts() {
	c.plantedBytes(func(at uint64, b byte) { c.m.ram[at] = b })
}

// plantedBytes calls put with every byte the planted halts change, by physical address.
func (c *kvmCPU) plantedBytes(put func(at uint64, b byte)) {
	put(c.retPhys, hltOpcode)
	for _, h := range c.halts {
		put(h.phys, hltOpcode)
		if h.tsc != nil {
			for i := uint64(1); i < h.tsc.size; i++ {
				put(h.phys+i, nopOpcode)
			}
		}
	}
}

// intercept leaves the ranges' pages without memory slots (see Machine.Intercept).
func (c *kvmCPU) intercept(ranges []PhysSpan, trap func(*Trapped) error) (kept []PhysSpan, err error) {
	if c.slotted {
		return nil, errors.New("Intercept after the first system call")
	}
	cpuPages, err := c.m.cpuPages()
	if err != nil {
		return nil, err
	}
	var pages []PhysSpan
	for _, r := range ranges {
		if r.End > r.Start {
			pages = append(pages, PhysSpan{r.Start &^ 4095, (r.End + 4095) &^ 4095})
			c.ranges = append(c.ranges, r)
		}
	}
	c.holes, c.kept = subtractPages(mergeSpans(pages), cpuPages)
	c.trap = trap
	return c.kept, nil
}

// cpuPages are the physical pages the CPU reads without an instruction asking: every page-table
// page reachable from CR3 (after the overlay's and grafts' entries), and the pages of the IDT,
// GDT and TSS. KVM cannot walk tables or deliver an event through memory without a slot.
func (m *Machine) cpuPages() (map[uint64]bool, error) {
	pages := map[uint64]bool{}
	w, err := vmm.NewWalker(m.phys, m.snap.CPU.CR3, vmm.PagingLevels(m.snap.CPU.CR4))
	if err != nil {
		return nil, err
	}
	// A grafted guest table beyond SVM RAM is nobody's hole: Tables does not follow it.
	if err := w.Tables(func(table uint64, _ int) error { pages[table] = true; return nil }); err != nil {
		return nil, err
	}
	c := m.snap.CPU
	for _, t := range []struct{ base, limit uint64 }{{c.IDT.Base, uint64(c.IDT.Limit)}, {c.GDT.Base, uint64(c.GDT.Limit)}, {c.TR.Base, uint64(c.TR.Limit)}} {
		for va := t.base &^ 4095; va <= t.base+t.limit; va += 4096 {
			if pa, err := m.Phys(va); err == nil {
				pages[pa&^4095] = true
			}
		}
	}
	return pages, nil
}

// mergeSpans sorts spans and joins those that touch.
func mergeSpans(spans []PhysSpan) []PhysSpan {
	out := slices.SortedFunc(slices.Values(spans), func(a, b PhysSpan) int { return cmp.Compare(a.Start, b.Start) })
	var merged []PhysSpan
	for _, s := range out {
		if n := len(merged); n > 0 && s.Start <= merged[n-1].End {
			merged[n-1].End = max(merged[n-1].End, s.End)
			continue
		}
		merged = append(merged, s)
	}
	return merged
}

// subtractPages removes the given pages from page-aligned spans, returning what is left and the
// removed pages that were inside them.
func subtractPages(spans []PhysSpan, pages map[uint64]bool) (left, removed []PhysSpan) {
	for _, s := range spans {
		start := s.Start
		for p := s.Start; p < s.End; p += 4096 {
			if !pages[p] {
				continue
			}
			if p > start {
				left = append(left, PhysSpan{start, p})
			}
			removed = append(removed, PhysSpan{p, p + 4096})
			start = p + 4096
		}
		if start < s.End {
			left = append(left, PhysSpan{start, s.End})
		}
	}
	return left, mergeSpans(removed)
}

// addSlots gives the VM the machine's RAM, without the holes, as memory slots. The slots point
// into the machine's mapping: the overlay's guest pages and every reset's dropped pages are
// followed by KVM through its MMU notifiers.
func (c *kvmCPU) addSlots() error {
	m := c.m
	start := uint64(0)
	holes := mergeSpans(append(append([]PhysSpan(nil), c.holes...), m.snap.Layout.ramGaps()...))
	for _, h := range append(holes, PhysSpan{uint64(len(m.ram)), uint64(len(m.ram))}) {
		if h.Start > start {
			if err := c.vm.AddMemory(start, m.ram[start:h.Start], false); err != nil {
				return err
			}
		}
		start = h.End
	}
	c.slotted = true
	return nil
}

// kvmSegment converts a segment as QEMU reports it (its descriptor-cache flags: the high dword
// of the descriptor, type at bit 8) into KVM's unpacked form. QEMU marks a segment unusable
// when it is not present, and so does this.
func kvmSegment(s Segment) kvm.Segment {
	f := s.Flags
	bit := func(n uint) uint8 { return uint8(f >> n & 1) }
	return kvm.Segment{
		Base: s.Base, Limit: s.Limit, Selector: s.Selector,
		Typ: uint8(f >> 8 & 0xf), S: bit(12), DPL: uint8(f >> 13 & 3), Present: bit(15),
		AVL: bit(20), L: bit(21), DB: bit(22), G: bit(23), Unusable: 1 - bit(15),
	}
}

// tssBusy is the type of a busy 64-bit TSS. QEMU's cached TR keeps the type the descriptor had
// before LTR marked it busy; VM entry requires the busy type.
const tssBusy = 0xb

// loadCPU plants the halts and puts the captured CPU state into the vCPU: special registers,
// then MSRs, then the general registers (the order KVM validates them in: EFER and CR4 before
// what depends on them).
func (c *kvmCPU) loadCPU() error {
	m := c.m
	c.plantHalts()
	cpu := c.cpu
	st := m.snap.CPU
	s, err := cpu.Sregs()
	if err != nil {
		return err
	}
	s.CS, s.SS, s.DS, s.ES = kvmSegment(st.CS), kvmSegment(st.SS), kvmSegment(st.DS), kvmSegment(st.ES)
	s.FS, s.GS = kvmSegment(st.FS), kvmSegment(st.GS)
	s.FS.Base, s.GS.Base = st.FSBase, st.GSBase
	s.TR, s.LDT = kvmSegment(st.TR), kvmSegment(st.LDT)
	s.TR.Typ = tssBusy
	s.GDT = kvm.Descriptor{Base: st.GDT.Base, Limit: uint16(st.GDT.Limit)}
	s.IDT = kvm.Descriptor{Base: st.IDT.Base, Limit: uint16(st.IDT.Limit)}
	s.CR0, s.CR2, s.CR3, s.CR4, s.EFER = st.CR0, st.CR2, st.CR3, st.CR4, st.EFER
	if err := cpu.SetSregs(s); err != nil {
		return fmt.Errorf("load CR0 %#x CR4 %#x EFER %#x: %w", st.CR0, st.CR4, st.EFER, err)
	}
	// The TSC continues the SVM's clock from the capture, as on the Unicorn machine.
	if err := cpu.SetMSRs(map[uint32]uint64{
		uint32(kvm.MSRKERNELGSBASE): st.KernelGSBase,
		uint32(kvm.MSRIA32TSC):      m.svmTSC(),
	}); err != nil {
		return err
	}
	return cpu.SetRegs(m.capturedRegs())
}

// capturedRegs are the general registers as captured.
func (m *Machine) capturedRegs() *kvm.Regs {
	g := m.snap.CPU.GPR
	return &kvm.Regs{
		RAX: g["rax"], RBX: g["rbx"], RCX: g["rcx"], RDX: g["rdx"], RSI: g["rsi"], RDI: g["rdi"],
		RSP: g["rsp"], RBP: g["rbp"], R8: g["r8"], R9: g["r9"], R10: g["r10"], R11: g["r11"],
		R12: g["r12"], R13: g["r13"], R14: g["r14"], R15: g["r15"],
		RIP: m.snap.CPU.RIP, RFLAGS: m.snap.CPU.RFLAGS,
	}
}

// enter readies the call placed in the agent's pt_regs: the vCPU starts at do_syscall_64(regs,
// nr), as the entry code would, with every other register as captured (a call then does not
// depend on what the previous one left), and ends at the halt on the return address.
func (c *kvmCPU) enter(nr int) error {
	m := c.m
	if !c.slotted {
		if err := c.addSlots(); err != nil {
			return fmt.Errorf("%s: %w", SyscallName(nr), err)
		}
	}
	r := m.capturedRegs()
	r.RSP, r.RDI, r.RSI = m.snap.CPU.GPR["rsp"], m.snap.PtRegs, uint64(nr)
	r.RIP = m.snap.Symbols["do_syscall_64"]
	if err := c.cpu.SetRegs(r); err != nil {
		return fmt.Errorf("%s: KVM_SET_REGS: %w", SyscallName(nr), err)
	}
	return nil
}

// run enters the vCPU until the call halts at its return address, and turns every other stop
// into a *StopError.
func (c *kvmCPU) run(nr int) error {
	m := c.m
	// The watchdog signals this very thread to pull it out of KVM_RUN.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	stopWatch := kickAfter(unix.Gettid(), c.opts.Timeout)
	defer stopWatch()
	start := time.Now()
	deadline := start.Add(c.opts.Timeout)
	defer func() { m.stats.KVMTime += time.Since(start) }()
	for exits := 1; ; exits++ {
		e, err := c.cpu.Run()
		m.stats.Exits++
		if err != nil {
			return c.kvmStop(ErrFault, nr, err.Error())
		}
		done, err := c.handleExit(nr, e)
		if done || err != nil {
			return err
		}
		switch {
		case time.Now().After(deadline):
			return c.kvmStop(ErrBudget, nr, fmt.Sprintf("still running after %v (%d exits)", c.opts.Timeout, exits))
		case exits >= c.opts.MaxExits:
			return c.kvmStop(ErrBudget, nr, fmt.Sprintf("%d exits to user space", exits))
		}
	}
}

// handleExit reports whether the call is done, or why it cannot go on.
func (c *kvmCPU) handleExit(nr int, e vmm.Exit) (done bool, err error) {
	cpu := c.cpu
	switch e.Reason {
	case kvm.EXITHLT:
		return c.halted(nr)
	case kvm.EXITINTR:
		return false, nil // the watchdog's signal, or any other: the caller checks the time
	case kvm.EXITIO:
		return false, c.portIO(nr, e)
	case kvm.EXITMMIO:
		return false, c.mmio(nr)
	case kvm.EXITSHUTDOWN:
		return false, c.kvmStop(ErrFault, nr, "shutdown (triple fault)")
	case kvm.EXITINTERNALERROR:
		w := cpu.ExitWords()
		if uint32(w[0]) == internalErrorEmulation {
			return false, c.emulate(nr)
		}
		return false, c.kvmStop(ErrFault, nr, fmt.Sprintf("KVM internal error %d (data %#x %#x %#x)", uint32(w[0]), w[1], w[2], w[3]))
	default:
		w := cpu.ExitWords()
		return false, c.kvmStop(ErrFault, nr, fmt.Sprintf("exit %v (reason %d, data %#x %#x %#x %#x)", e.Reason, uint32(e.Reason), w[0], w[1], w[2], w[3]))
	}
}

// halted handles a planted halt (KVM reports it with RIP past the one-byte instruction).
func (c *kvmCPU) halted(nr int) (bool, error) {
	m := c.m
	cpu := c.cpu
	r, err := cpu.ExitRegs()
	if err != nil {
		return false, fmt.Errorf("KVM_GET_REGS: %w", err)
	}
	if r.RIP == m.snap.ReturnAddr+1 {
		return true, nil
	}
	for _, h := range c.halts {
		if r.RIP != h.addr+1 {
			continue
		}
		if h.tsc == nil {
			err := c.kvmStop(h.err, nr, "reached "+h.name)
			err.RIP, err.Symbol = h.addr, m.symbolize(h.addr) // the entry, not past the halt
			return false, err
		}
		m.stats.TSCReads++
		tsc := m.opts.Clock.TSC()
		if h.tsc.entry {
			ret, err := m.virt.ReadUint64(r.RSP)
			if err != nil {
				return false, c.kvmStop(ErrFault, nr, "clock source "+h.name+": return address: "+err.Error())
			}
			r.RAX, r.RIP, r.RSP = tsc, ret, r.RSP+8
			if err := cpu.SetRegs(r); err != nil {
				return false, fmt.Errorf("KVM_SET_REGS: %w", err)
			}
			return false, nil
		}
		r.RAX, r.RDX, r.RIP = tsc&0xffffffff, tsc>>32, h.tsc.next()
		if h.tsc.aux {
			r.RCX = 0
		}
		if err := cpu.SetRegs(r); err != nil {
			return false, fmt.Errorf("KVM_SET_REGS: %w", err)
		}
		return false, nil
	}
	return false, c.kvmStop(ErrFault, nr, "halted away from the return address")
}

// mmio carries out an access to physical memory without a slot: an intercepted range's through
// the trap, the rest of a hole's pages as the SVM's memory, the scratch pages (local APIC and
// friends) as nothing that answers.
func (c *kvmCPU) mmio(nr int) error {
	m := c.m
	a := c.cpu.MMIO()
	data := c.cpu.MMIOData()
	m.stats.Trapped++
	if a.Addr+uint64(len(data)) > uint64(len(m.ram)) {
		for _, p := range scratchPages {
			if a.Addr >= p && a.Addr+uint64(len(data)) <= p+4096 {
				if !a.Write {
					clear(data)
				}
				return nil
			}
		}
		kind := "read"
		if a.Write {
			kind = "write"
		}
		return c.kvmStop(ErrFault, nr, fmt.Sprintf("MMIO %s of %d bytes at physical %#x, outside SVM RAM", kind, a.Len, a.Addr))
	}
	if c.trap == nil || !InSpans(c.ranges, a.Addr) {
		if a.Write {
			copy(m.ram[a.Addr:], data)
		} else {
			copy(data, m.ram[a.Addr:])
		}
		return nil
	}
	r, err := c.cpu.ExitRegs()
	if err != nil {
		return fmt.Errorf("KVM_GET_REGS: %w", err)
	}
	t := &Trapped{Phys: a.Addr, Write: a.Write, Data: data, PC: r.RIP}
	if a.Write {
		t.PC, t.PCs = 0, c.writers(r.RIP)
	}
	if err := c.trap(t); err != nil {
		return c.kvmStop(ErrFault, nr, err.Error())
	}
	return nil
}

// writers are the instructions that may have made a write KVM reports with RIP at next: those
// that decode to exactly end there and have a memory operand, and a string instruction at next
// itself (KVM keeps RIP on a repeated one until its last iteration).
func (c *kvmCPU) writers(next uint64) []uint64 {
	m := c.m
	if w, ok := c.writerAt[next]; ok {
		return w
	}
	if c.writerAt == nil {
		c.writerAt = map[uint64][]uint64{}
	}
	w := m.decodeWriters(next)
	c.writerAt[next] = w
	return w
}

// decodeWriters is writers without the cache.
func (m *Machine) decodeWriters(next uint64) []uint64 {
	const maxLen = 15
	code := make([]byte, 2*maxLen)
	if m.virt.Read(next-maxLen, code) != nil {
		return nil
	}
	var out []uint64
	for n := 1; n <= maxLen; n++ {
		in, err := x86asm.Decode(code[maxLen-n:], 64)
		if err == nil && in.Len == n && touchesMemory(in) {
			out = append(out, next-uint64(n))
		}
	}
	if in, err := x86asm.Decode(code[maxLen:], 64); err == nil && isString(in.Op) {
		out = append(out, next)
	}
	return out
}

func touchesMemory(in x86asm.Inst) bool {
	if isString(in.Op) {
		return true
	}
	for _, a := range in.Args {
		if _, ok := a.(x86asm.Mem); ok {
			return true
		}
	}
	return false
}

func isString(op x86asm.Op) bool {
	switch op {
	case x86asm.MOVSB, x86asm.MOVSW, x86asm.MOVSD, x86asm.MOVSQ, x86asm.STOSB, x86asm.STOSW, x86asm.STOSD, x86asm.STOSQ:
		return true
	}
	return false
}

// exits counts the vCPU's exits to user space by reason, since the machine was opened.
func (c *kvmCPU) exits() map[string]int {
	out := map[string]int{}
	if c.cpu == nil {
		return out
	}
	for r, n := range c.cpu.Exits {
		out[r.String()] = n
	}
	return out
}

// stop does nothing: Go code runs inside a call only in the trap handler, which stops the call
// by returning an error.
func (c *kvmCPU) stop(error, string) {}

// clearScratch does nothing: the scratch pages have no memory under KVM (mmio answers them).
func (c *kvmCPU) clearScratch() error { return nil }

// OnKVM reports whether the machine runs its calls under KVM.
func (m *Machine) OnKVM() bool {
	_, ok := m.exec.(*kvmCPU)
	return ok
}

// close releases the VM and /dev/kvm, before the RAM its memory slots point into.
func (c *kvmCPU) close() error {
	var errs []error
	if c.vm != nil {
		errs = append(errs, c.vm.Destroy())
		c.vm, c.cpu = nil, nil
	}
	if c.k != nil {
		errs = append(errs, c.k.Close())
		c.k = nil
	}
	return errors.Join(errs...)
}

// portIO answers port I/O as the Unicorn machine does (a console write from a warning): output
// goes nowhere, and the UART's line status always reports an empty transmitter.
func (c *kvmCPU) portIO(nr int, e vmm.Exit) error {
	if e.IODir == kvm.EXITIOOUT {
		return nil
	}
	data := make([]byte, len(e.IOData))
	if e.IOPort&7 == 5 {
		for i := range data {
			data[i] = 0x60
		}
	}
	if err := c.cpu.AnswerIn(data); err != nil {
		return c.kvmStop(ErrFault, nr, err.Error())
	}
	return nil
}

// kvmStop builds the StopError of a call that ended anywhere but its return.
func (c *kvmCPU) kvmStop(err error, nr int, detail string) *StopError {
	m := c.m
	se := &StopError{Err: err, NR: nr, Detail: detail}
	if r, rerr := c.cpu.Regs(); rerr == nil {
		se.RIP = r.RIP
		se.Symbol = m.symbolize(r.RIP)
		se.Stack = m.stackScan(r.RSP, 24)
	}
	return se
}

// symbolize renders addr with the full symbol table if there is one, else with the few symbols
// the snapshot records, which still name the common stops (the scheduler, the idle loop).
func (m *Machine) symbolize(addr uint64) string {
	if m.opts.Symbols != nil {
		return m.opts.Symbols.Format(addr)
	}
	best, bestAddr := "", uint64(0)
	for name, a := range m.snap.Symbols {
		if a <= addr && a > bestAddr {
			best, bestAddr = name, a
		}
	}
	if best == "" || addr-bestAddr > 1<<20 {
		return ""
	}
	return fmt.Sprintf("near %s+%#x", best, addr-bestAddr)
}

// kickAfter signals thread tid every few milliseconds once d has passed, until stop is called.
// A signal makes KVM_RUN return (KVM_EXIT_INTR); repeating it covers one that lands while the
// thread is between two KVM_RUNs. Go's runtime ignores a SIGURG it did not ask for.
func kickAfter(tid int, d time.Duration) (stop func()) {
	done := make(chan struct{})
	pid := unix.Getpid()
	go func() {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-done:
			return
		case <-t.C:
		}
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			_ = unix.Tgkill(pid, tid, unix.SIGURG)
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() { close(done) }
}

// internalErrorEmulation is KVM_INTERNAL_ERROR_EMULATION: KVM met an instruction it had to
// emulate and cannot.
const internalErrorEmulation = 1

// rflagsZF is the zero flag, CMPXCHG16B's result.
const rflagsZF = 1 << 6

// emulate carries out in user space the instruction KVM failed to emulate, then resumes the
// guest after it. A KVM that emulates the guest (a paravirtual one) lacks some instructions
// the kernel uses: CMPXCHG16B in SLUB's lockless fast path runs in nearly every call that
// allocates. With one vCPU, stopped, doing it here is as atomic as the instruction.
func (c *kvmCPU) emulate(nr int) error {
	m := c.m
	cpu := c.cpu
	r, err := cpu.Regs()
	if err != nil {
		return fmt.Errorf("KVM_GET_REGS: %w", err)
	}
	code := make([]byte, 15)
	if err := m.virt.Read(r.RIP, code); err != nil {
		return c.kvmStop(ErrUnsupported, nr, fmt.Sprintf("the instruction at %#x, unreadable: %v", r.RIP, err))
	}
	in, err := x86asm.Decode(code, 64)
	if err != nil {
		return c.kvmStop(ErrUnsupported, nr, fmt.Sprintf("% x", code))
	}
	if in.Op != x86asm.CMPXCHG16B {
		return c.kvmStop(ErrUnsupported, nr, fmt.Sprintf("%v (% x)", in, code[:in.Len]))
	}
	if err := c.cmpxchg16b(in, r); err != nil {
		return c.kvmStop(ErrUnsupported, nr, fmt.Sprintf("%v: %v", in, err))
	}
	r.RIP += uint64(in.Len)
	if err := cpu.SetRegs(r); err != nil {
		return fmt.Errorf("KVM_SET_REGS: %w", err)
	}
	m.stats.Emulated++
	return nil
}

// cmpxchg16b compares RDX:RAX with the 16 bytes at the operand: equal, it stores RCX:RBX and
// sets ZF; else it loads them into RDX:RAX and clears ZF. An operand in an intercepted range
// would need a decision this path cannot ask for.
func (c *kvmCPU) cmpxchg16b(in x86asm.Inst, r *kvm.Regs) error {
	m := c.m
	va, err := c.effectiveAddr(in, r)
	if err != nil {
		return err
	}
	if va%16 != 0 {
		return fmt.Errorf("operand %#x not 16-byte aligned (the CPU raises #GP)", va)
	}
	if pa, err := m.Phys(va); err == nil && InSpans(c.ranges, pa) {
		return fmt.Errorf("operand %#x in an intercepted range", va)
	}
	cur := make([]byte, 16)
	if err := m.virt.Read(va, cur); err != nil {
		return err
	}
	lo, hi := binary.LittleEndian.Uint64(cur), binary.LittleEndian.Uint64(cur[8:])
	if lo != r.RAX || hi != r.RDX {
		r.RAX, r.RDX = lo, hi
		r.RFLAGS &^= rflagsZF
		return nil
	}
	binary.LittleEndian.PutUint64(cur, r.RBX)
	binary.LittleEndian.PutUint64(cur[8:], r.RCX)
	r.RFLAGS |= rflagsZF
	return m.writeVirt(va, cur)
}

// effectiveAddr computes a memory operand's virtual address. The translation uses the
// snapshot's page tables, so the vCPU must still be on them (it is: nothing switches tasks).
func (c *kvmCPU) effectiveAddr(in x86asm.Inst, r *kvm.Regs) (uint64, error) {
	m := c.m
	mem, ok := in.Args[0].(x86asm.Mem)
	if !ok {
		return 0, errors.New("no memory operand")
	}
	if in.AddrSize != 64 {
		return 0, fmt.Errorf("%d-bit addressing", in.AddrSize)
	}
	s, err := c.cpu.Sregs()
	if err != nil {
		return 0, err
	}
	if s.CR3&vmm.PTEAddrMask != m.snap.CPU.CR3&vmm.PTEAddrMask {
		return 0, fmt.Errorf("CR3 %#x is not the snapshot's %#x", s.CR3, m.snap.CPU.CR3)
	}
	va := uint64(mem.Disp)
	switch mem.Segment {
	case x86asm.FS:
		va += s.FS.Base
	case x86asm.GS:
		va += s.GS.Base
	}
	if mem.Base == x86asm.RIP {
		va += r.RIP + uint64(in.Len)
	} else if mem.Base != 0 {
		b, ok := gpr64(r, mem.Base)
		if !ok {
			return 0, fmt.Errorf("base register %v", mem.Base)
		}
		va += b
	}
	if mem.Index != 0 {
		x, ok := gpr64(r, mem.Index)
		if !ok {
			return 0, fmt.Errorf("index register %v", mem.Index)
		}
		va += x * uint64(mem.Scale)
	}
	return va, nil
}

// gpr64 reads a 64-bit general register by its decoder name.
func gpr64(r *kvm.Regs, reg x86asm.Reg) (uint64, bool) {
	regs := [...]*uint64{&r.RAX, &r.RCX, &r.RDX, &r.RBX, &r.RSP, &r.RBP, &r.RSI, &r.RDI,
		&r.R8, &r.R9, &r.R10, &r.R11, &r.R12, &r.R13, &r.R14, &r.R15}
	if reg < x86asm.RAX || reg > x86asm.R15 {
		return 0, false
	}
	return *regs[reg-x86asm.RAX], true
}
