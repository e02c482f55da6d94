package svm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
	"unsafe"

	"golang.org/x/arch/x86/x86asm"
	"golang.org/x/sys/unix"

	"hybridbridge/emu"
	"hybridbridge/vmm"
)

// Outcomes of an injected system call other than its return value.
var (
	// ErrBlocked: the call tried to sleep (it reached the scheduler's context switch or the idle
	// loop). Nothing else runs in the SVM, so it would never wake. The machine has reset itself
	// when the call returns.
	ErrBlocked = errors.New("system call blocked")
	// ErrBudget: the call ran past its instruction budget (e.g. a spin that waits for time or
	// entropy). The machine has reset itself when the call returns.
	ErrBudget = errors.New("system call exceeded its instruction budget")
	// ErrNotAllowed: the system call is not on the allow-list of calls known to be safe to inject.
	ErrNotAllowed = errors.New("system call not allowed")
	// ErrFault: the emulator stopped on something the executor cannot handle (an access to
	// unmapped physical memory, an unexpected exception).
	ErrFault = errors.New("emulation fault")
)

// StopError tells where an injected call stopped.
type StopError struct {
	Err    error  // ErrBlocked, ErrBudget or ErrFault
	NR     int    // the system call
	RIP    uint64 // where it stopped
	Symbol string // RIP as symbol+offset, when known
	Detail string
	// Stack lists the kernel text addresses found on the stack above RSP, innermost first (a
	// scan, not an unwind: the kernel has no frame pointers), as symbol+offset when known.
	Stack []string
}

func (e *StopError) Error() string {
	msg := fmt.Sprintf("%s (%s) at %#x", e.Err, SyscallName(e.NR), e.RIP)
	if e.Symbol != "" {
		msg += " " + e.Symbol
	}
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return msg
}

func (e *StopError) Unwrap() error { return e.Err }

// Options configure a Machine.
type Options struct {
	// Budget is the instruction limit of one system call (default 50 million), estimated per
	// translated block (see emu.Budget).
	Budget uint64
	// CountInstructions makes Stats count executed instructions exactly, at some speed cost.
	CountInstructions bool
	// Symbols, if set, renders stop addresses as symbol+offset, and resolves the names in
	// Blocking that the snapshot does not record. Clock needs it.
	Symbols *vmm.Symbols
	// Blocking names the kernel functions whose entry means the call is about to sleep (the
	// scheduler's context switch, the idle loop): nothing else runs in the SVM to wake it, so
	// the call stops there with ErrBlocked instead of spinning out its budget. Each name must
	// be recorded in the snapshot (BuildOptions.KeepSymbols) or be in Symbols.
	Blocking []string
	// Clock, if set, gives the RDTSCs of one kernel function the caller's counter.
	Clock *ClockSource
	// OnReset, if set, runs after every Reset (e.g. to clear a taint engine's shadow state).
	OnReset func()
	// Window installs the hooks that undo SwapInGuest over the kernel image's data and freed
	// pages, for a taint engine that redirects accesses there.
	Window bool
	// LeaveOpen: the caller resets the machine before every operation (ReadFile, ReadDir,
	// ReadRecords), so they leave their file open for the reset to drop. Files opened in one
	// operation without a reset accumulate.
	LeaveOpen bool
	// KVM, if set, runs the calls under KVM instead of Unicorn: the machine then has no engine
	// and no hooks (Engine is nil; Window and CountInstructions do nothing; Budget gives way to
	// the KVM options' timeout), and Intercept decides which accesses exit.
	KVM *KVMOptions
}

// Stats are a Machine's counters since it was opened.
type Stats struct {
	Syscalls     int
	Instructions uint64 // only with Options.CountInstructions
	Exceptions   map[uint32]int
	TSCReads     int
	Resets       int
	ResetPages   int // written RAM pages put back by resets (0 where all RAM is dropped)
	Blocked      int
	OverBudget   int
	WindowSwaps  int // guest-derived reads in the image window given the guest's bytes
	// LeftoverSwaps counts redirected reads whose after-read hook never came (the access faulted).
	LeftoverSwaps int
	// On KVM: exits to user space, accesses to memory without a slot (intercepted ranges),
	// instructions KVM could not emulate and were carried out here, time inside KVM_RUN loops.
	Exits, Trapped, Emulated int
	KVMTime                  time.Duration
}

// Machine is the SVM snapshot loaded into Unicorn, or into KVM (Options.KVM). Its RAM is a private
// copy-on-write mapping of the snapshot file that the executor runs on directly: the snapshot is
// never written, and Reset drops every change.
// A Machine is not safe for concurrent use.
type Machine struct {
	snap *Snapshot
	opts Options
	eng  *emu.Engine
	ram  []byte // MAP_PRIVATE mapping of ram.img; Unicorn runs on it directly
	// written finds the RAM pages an operation wrote, so Reset drops only those (nil: all).
	written *writtenPages
	wlog    *emu.WriteLog // the pages executed code wrote, on machines with memory hooks anyway
	base    []byte        // read-only shared mapping of ram.img: what Reset copies back
	phys    vmm.PhysView
	virt    *vmm.VirtView // the agent's address space (the kernel half is every process's)

	savedRegs []byte       // the agent's pt_regs as captured
	tscBase   time.Time    // when the virtual TSC was at Snapshot.TSC
	tscHooks  int          // RDTSC/RDTSCP hooks installed
	gate      *emu.MemGate // the after-read hooks of swapped-in values, open while one waits

	// Set by hooks during a run, read after Start returns.
	stopErr    error
	stopDetail string
	trace      *emu.TraceBuffer
	budget     *emu.Budget
	overlay    *Overlay  // the guest whose RAM is mapped in, if any
	swaps      []swapped // redirected reads between their two hooks
	writes     []swapped // redirected writes waiting for FlushWrites
	curNR      int       // the system call running, for hooks that report it
	kvm        *kvmCPU   // the executor, if KVM (else the engine is)

	stats Stats
}

// Open loads a snapshot into a new Unicorn engine.
func Open(snap *Snapshot, opts Options) (*Machine, error) {
	if opts.Budget == 0 {
		opts.Budget = 50_000_000
	}
	m := &Machine{snap: snap, opts: opts, stats: Stats{Exceptions: map[uint32]int{}}}
	if err := m.mapRAM(); err != nil {
		return nil, err
	}
	if opts.KVM != nil {
		if err := m.openKVM(); err != nil {
			m.Close()
			return nil, err
		}
		return m, nil
	}
	eng, err := emu.Open(emu.CPUDefault)
	if err != nil {
		m.unmapRAM()
		return nil, err
	}
	m.eng = eng
	if err := m.setup(); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

func (m *Machine) mapRAM() (err error) {
	defer func() {
		if err != nil {
			m.unmapRAM()
		}
	}()
	if m.ram, err = mapSnapshotRAM(m.snap, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE); err != nil {
		return err
	}
	if m.base, err = mapSnapshotRAM(m.snap, unix.PROT_READ, unix.MAP_SHARED); err != nil {
		return err
	}
	m.written = openWrittenPages(m.ram)
	m.phys, err = vmm.NewBytesView("svm", m.ram, nil)
	return err
}

func (m *Machine) unmapRAM() {
	if m.ram != nil {
		_ = unix.Munmap(m.ram)
		m.ram = nil
	}
	if m.base != nil {
		_ = unix.Munmap(m.base)
		m.base = nil
	}
	if m.written != nil {
		m.written.Close()
		m.written = nil
	}
}

// Close releases the engine and the RAM mapping, in that order.
func (m *Machine) Close() error {
	var err error
	if ov := m.overlay; ov != nil {
		if ov.image != nil {
			unix.Munmap(ov.image)
		}
		unix.Munmap(ov.guest)
	}
	if m.trace != nil {
		m.trace.Close()
	}
	if m.eng != nil {
		err = m.eng.Close()
		m.eng = nil
	}
	if m.kvm != nil {
		err = errors.Join(err, m.kvm.close())
	}
	m.unmapRAM()
	return err
}

// Snapshot returns the snapshot the machine runs.
func (m *Machine) Snapshot() *Snapshot { return m.snap }

// Stats returns the counters.
func (m *Machine) Stats() Stats { return m.stats }

// Engine exposes the Unicorn engine, for hooks that the taint engine installs. Hooks must be
// installed before the first system call.
func (m *Machine) Engine() *emu.Engine { return m.eng }

// RAM is the machine's physical memory (the private mapping Unicorn runs on).
func (m *Machine) RAM() []byte { return m.ram }

// apicBase and friends are MMIO pages the kernel may touch; they get scratch memory so such an
// access does not stop emulation. Nothing behind them answers.
var scratchPages = []uint64{0xfec00000, 0xfed00000, 0xfee00000}

// faultEntries are where a kernel oops or panic starts. Reaching one stops the call as a fault:
// an oops would otherwise end in do_exit and a context switch, far from the faulting path that
// is still on the stack here. A kernel may lack either; the snapshot records those it has.
var faultEntries = []string{"oops_begin", "panic"}

// kernelEntry is a kernel function a caller named, resolved.
type kernelEntry struct {
	name string
	addr uint64
}

// blockingEntries resolves Options.Blocking.
func (m *Machine) blockingEntries() ([]kernelEntry, error) {
	out := make([]kernelEntry, 0, len(m.opts.Blocking))
	for _, name := range m.opts.Blocking {
		addr, err := m.kernelAddr(name)
		if err != nil {
			return nil, fmt.Errorf("blocking entry: %w", err)
		}
		out = append(out, kernelEntry{name, addr})
	}
	return out, nil
}

// kernelAddr is the address of a kernel symbol a caller named: as the snapshot recorded it, else
// as Options.Symbols has it. A name neither knows is an error, not a hook that never fires.
func (m *Machine) kernelAddr(name string) (uint64, error) {
	if addr := m.snap.Symbols[name]; addr != 0 {
		return addr, nil
	}
	if m.opts.Symbols == nil {
		return 0, fmt.Errorf("symbol %s: not recorded in the snapshot (BuildOptions.KeepSymbols), and no Options.Symbols", name)
	}
	addr, ok := m.opts.Symbols.Addr(name)
	if !ok {
		return 0, fmt.Errorf("symbol %s: neither recorded in the snapshot nor in Options.Symbols", name)
	}
	return addr, nil
}

func (m *Machine) setup() error {
	e := m.eng
	if err := e.MapPtr(0, m.snap.Layout.RAMSize, emu.ProtAll, m.ram); err != nil {
		return fmt.Errorf("map SVM RAM into Unicorn: %w", err)
	}
	for _, p := range scratchPages {
		if err := e.Map(p, 4096, emu.ProtRead|emu.ProtWrite); err != nil {
			return fmt.Errorf("map scratch page %#x: %w", p, err)
		}
	}
	var err error
	if m.virt, m.savedRegs, err = agentView("svm", m.phys, m.snap); err != nil {
		return err
	}
	// Every hook exists from the start: Unicorn compiles hook checks into translated code.
	blocking, err := m.blockingEntries()
	if err != nil {
		return err
	}
	for _, b := range blocking {
		if _, err := e.HookCode(b.addr, b.addr, func(uint64, uint32) {
			m.stopWith(ErrBlocked, "reached "+b.name)
		}); err != nil {
			return err
		}
	}
	for _, name := range faultEntries {
		if addr := m.snap.Symbols[name]; addr != 0 {
			where := name
			if _, err := e.HookCode(addr, addr, func(uint64, uint32) {
				m.stopWith(ErrFault, "kernel "+where)
			}); err != nil {
				return err
			}
		}
	}
	if _, err := e.HookInterrupt(m.onInterrupt); err != nil {
		return err
	}
	// ud2 (BUG/WARN) becomes #UD through the guest's IDT, as on hardware.
	if _, err := e.HookInvalidInsn(func() bool { return true }); err != nil {
		return err
	}
	if _, err := e.HookMemFault(emu.HookMemUnmapped, 1, 0, func(acc emu.MemAccess, addr uint64, size int, _ int64) bool {
		m.stopWith(ErrFault, fmt.Sprintf("access to unmapped physical %#x (%d bytes)", addr, size))
		return false
	}); err != nil {
		return err
	}
	// Port I/O (a console write from a warning): the UART always reports an empty transmitter.
	if _, err := e.HookIn(func(port uint32, size int) uint32 {
		if port&7 == 5 {
			return 0x60
		}
		return 0
	}); err != nil {
		return err
	}
	if _, err := e.HookOut(func(uint32, int, uint32) {}); err != nil {
		return err
	}
	if err := m.hookTSC(); err != nil {
		return err
	}
	if m.opts.Window {
		if err := m.hookSwaps(); err != nil {
			return err
		}
		if m.wlog, err = e.NewWriteLog(0, m.snap.Layout.RAMSize); err != nil {
			return err
		}
	}
	if m.budget, err = e.NewBudget(); err != nil {
		return err
	}
	if m.opts.CountInstructions {
		tb, err := e.NewTrace(emu.TraceConfig{Capacity: 1 << 16, Code: true, CodeBegin: 1, CodeEnd: 0,
			OnFull: func(evs []emu.Event) { m.stats.Instructions += uint64(len(evs)) }})
		if err != nil {
			return err
		}
		m.trace = tb
	}
	m.tscBase = time.Now()
	return m.loadCPU()
}

// loadCPU puts the captured CPU state into the engine. The order matters: in Unicorn 2.1.1
// writing CR2 also sets CR3, so CR2 goes first; descriptor tables precede the selectors that
// index them.
func (m *Machine) loadCPU() error {
	if m.kvm != nil {
		return m.kvmLoadCPU()
	}
	c := m.snap.CPU
	e := m.eng
	seg := func(s Segment) emu.DescTable {
		return emu.DescTable{Selector: s.Selector, Base: s.Base, Limit: s.Limit, Flags: s.Flags}
	}
	steps := []error{
		e.SetReg(emu.CR2, c.CR2),
		e.SetReg(emu.CR3, c.CR3),
		e.SetReg(emu.CR4, c.CR4),
		e.SetMSR(emu.MSREFER, c.EFER),
		e.SetReg(emu.CR0, c.CR0),
		e.SetDescTable(emu.GDTR, seg(c.GDT)),
		e.SetDescTable(emu.IDTR, seg(c.IDT)),
		e.SetDescTable(emu.TR, seg(c.TR)),
		e.SetDescTable(emu.LDTR, seg(c.LDT)),
		e.SetReg(emu.CS, uint64(c.CS.Selector)),
		e.SetReg(emu.SS, uint64(c.SS.Selector)),
		e.SetReg(emu.DS, uint64(c.DS.Selector)),
		e.SetReg(emu.ES, uint64(c.ES.Selector)),
		e.SetReg(emu.FS, uint64(c.FS.Selector)),
		e.SetReg(emu.GS, uint64(c.GS.Selector)),
		e.SetMSR(emu.MSRFSBase, c.FSBase),
		e.SetMSR(emu.MSRGSBase, c.GSBase),
		e.SetMSR(emu.MSRKernelGSBase, c.KernelGSBase),
	}
	for name, r := range gprs {
		steps = append(steps, e.SetReg(r, c.GPR[name]))
	}
	// A CR3 write keeps global TLB entries, and every kernel mapping is global: after a reset
	// or a change to the page tables they could still point where memory used to be mapped.
	steps = append(steps, e.SetReg(emu.RFLAGS, c.RFLAGS), e.SetReg(emu.RIP, c.RIP), e.FlushTLB())
	if err := errors.Join(steps...); err != nil {
		return fmt.Errorf("load SVM CPU state: %w", err)
	}
	return nil
}

var gprs = map[string]emu.Reg{
	"rax": emu.RAX, "rbx": emu.RBX, "rcx": emu.RCX, "rdx": emu.RDX, "rsi": emu.RSI, "rdi": emu.RDI,
	"rbp": emu.RBP, "rsp": emu.RSP, "r8": emu.R8, "r9": emu.R9, "r10": emu.R10, "r11": emu.R11,
	"r12": emu.R12, "r13": emu.R13, "r14": emu.R14, "r15": emu.R15,
}

// Reset drops every change the injected calls made to memory and restores the captured CPU
// state: the machine is as freshly loaded (translated code stays cached).
func (m *Machine) Reset() error {
	if err := m.dropWrites(); err != nil {
		return fmt.Errorf("reset SVM RAM: %w", err)
	}
	m.swaps, m.writes = m.swaps[:0], m.writes[:0]
	m.pending()
	if m.eng != nil {
		for _, p := range scratchPages {
			_ = m.eng.WritePhys(p, make([]byte, 4096))
		}
	}
	m.stats.Resets++
	if m.opts.OnReset != nil {
		m.opts.OnReset()
	}
	if m.overlay != nil {
		return m.applyOverlay()
	}
	// Reloading the CPU state flushes Unicorn's TLB: translations made through page tables the
	// calls changed must not outlive the reset that put those tables back.
	return m.loadCPU()
}

// pristine is the page at physical p as every operation starts with it: the guest's where the
// overlay maps guest RAM, else the snapshot's.
func (m *Machine) pristine(p uint64) []byte {
	if ov := m.overlay; ov != nil {
		for _, s := range ov.spans {
			if p >= s.Start && p < s.End {
				return ov.guest[p : p+4096]
			}
		}
	}
	return m.base[p : p+4096]
}

// wrote records a write into RAM made from Go, for Reset.
func (m *Machine) wrote(pa, n uint64) {
	if m.wlog != nil {
		m.wlog.Mark(pa, n)
	}
}

// wroteSlice records a write from Go into b, if b is part of RAM.
func (m *Machine) wroteSlice(b []byte) {
	if m.wlog == nil || len(b) == 0 || len(m.ram) == 0 {
		return
	}
	start := uintptr(unsafe.Pointer(unsafe.SliceData(m.ram)))
	at := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	if at >= start && at < start+uintptr(len(m.ram)) {
		m.wlog.Mark(uint64(at-start), uint64(len(b)))
	}
}

// Unrestored lists the RAM pages that differ from what Reset puts back: right after Reset, none
// may (a check for tests; it reads all RAM).
func (m *Machine) Unrestored() []uint64 {
	// The overlay's page-table entries are part of that state.
	entries := map[uint64][]pteWrite{}
	if m.overlay != nil {
		for _, w := range m.overlay.pte {
			entries[w.at&^4095] = append(entries[w.at&^4095], w)
		}
	}
	var pages []uint64
	want := make([]byte, 4096)
	for p := uint64(0); p < uint64(len(m.ram)); p += 4096 {
		copy(want, m.pristine(p))
		for _, w := range entries[p] {
			binary.LittleEndian.PutUint64(want[w.at-p:], w.value)
		}
		m.haltsIn(p, want)
		if !bytes.Equal(m.ram[p:p+4096], want) {
			pages = append(pages, p)
		}
	}
	return pages
}

// dropWrites puts the snapshot's contents back into every RAM page written since the last reset.
func (m *Machine) dropWrites() error {
	if m.wlog != nil {
		// Copying the snapshot's bytes back keeps the page mapped and private: dropping it
		// (DONTNEED) would cost a copy-on-write fault at its next write, in every operation.
		m.wlog.Drain(func(p uint64) {
			copy(m.ram[p:p+4096], m.pristine(p))
			m.stats.ResetPages++
		})
		return nil
	}
	if m.written == nil {
		return unix.Madvise(m.ram, unix.MADV_DONTNEED)
	}
	n, err := m.written.scan(m.ram, func(run []byte) error { return unix.Madvise(run, unix.MADV_DONTNEED) })
	m.stats.ResetPages += n
	return err
}

func (m *Machine) stopWith(err error, detail string) {
	if m.stopErr == nil {
		m.stopErr, m.stopDetail = err, detail
	}
	if m.eng != nil {
		_ = m.eng.Stop()
	}
}

// Syscall injects one system call and returns its return value (negative errno on failure, as
// the kernel returns it). It is refused unless the call is on the allow-list.
func (m *Machine) Syscall(nr int, args ...uint64) (int64, error) {
	if err := checkCall(nr, args); err != nil {
		return 0, err
	}
	if err := placeCall(m.writeVirt, m.snap, m.savedRegs, nr, args); err != nil {
		return 0, err
	}
	if m.kvm != nil {
		return m.kvmSyscall(nr)
	}
	rsp := m.snap.CPU.GPR["rsp"]
	e := m.eng
	if err := errors.Join(
		e.SetReg(emu.RSP, rsp),
		e.SetReg(emu.RDI, m.snap.PtRegs),
		e.SetReg(emu.RSI, uint64(nr)),
		e.SetReg(emu.RFLAGS, m.snap.CPU.RFLAGS),
	); err != nil {
		return 0, err
	}
	m.stopErr, m.stopDetail = nil, ""
	m.swaps = m.swaps[:0]
	m.pending()
	m.curNR = nr
	m.stats.Syscalls++
	entry := m.snap.Symbols["do_syscall_64"]
	m.budget.Reset(m.opts.Budget)
	runErr := e.Start(entry, m.snap.ReturnAddr, 0)
	if m.trace != nil {
		m.trace.Drain(func(evs []emu.Event) { m.stats.Instructions += uint64(len(evs)) })
	}
	rip, _ := e.Reg(emu.RIP)
	// A call stopped midway leaves the kernel mid-schedule or with locks held: reset now, so
	// the caller's next arguments are written into a clean machine.
	stop := func(err error, detail string) (int64, error) {
		se := &StopError{Err: err, NR: nr, RIP: rip, Detail: detail}
		if m.opts.Symbols != nil {
			se.Symbol = m.opts.Symbols.Format(rip)
		}
		if sp, err := e.Reg(emu.RSP); err == nil {
			se.Stack = m.stackScan(sp, 24)
		}
		if rerr := m.Reset(); rerr != nil {
			return 0, errors.Join(se, rerr)
		}
		return 0, se
	}
	switch {
	case m.stopErr != nil:
		if errors.Is(m.stopErr, ErrBlocked) {
			m.stats.Blocked++
		}
		return stop(m.stopErr, m.stopDetail)
	case runErr != nil:
		return stop(ErrFault, runErr.Error())
	case m.budget.Exceeded() || rip != m.snap.ReturnAddr:
		m.stats.OverBudget++
		return stop(ErrBudget, fmt.Sprintf("about %d instructions", m.opts.Budget))
	}
	out := make([]byte, 8)
	if err := m.virt.Read(m.snap.PtRegs+ptAX, out); err != nil {
		return 0, err
	}
	return int64(binary.LittleEndian.Uint64(out)), nil
}

// writeVirt writes into the SVM's memory at a virtual address of the agent's address space.
func (m *Machine) writeVirt(va uint64, data []byte) error {
	return writeVirtRAM(m.virt.Walker(), m.ram, va, data, m.wrote)
}

// ReadVirt reads the SVM's memory at a virtual address of the agent's address space.
func (m *Machine) ReadVirt(va uint64, buf []byte) error { return m.virt.Read(va, buf) }

// WriteVirt writes the SVM's memory at a virtual address of the agent's address space.
func (m *Machine) WriteVirt(va uint64, data []byte) error { return m.writeVirt(va, data) }

// Exception vectors that push an error code.
var hasErrorCode = map[uint32]bool{8: true, 10: true, 11: true, 12: true, 13: true, 14: true, 17: true, 21: true}

// onInterrupt delivers an exception through the guest's IDT as the CPU would: Unicorn only
// reports the vector. The frame goes on the current stack or the gate's IST stack.
func (m *Machine) onInterrupt(vector uint32) {
	m.stats.Exceptions[vector]++
	if err := m.deliver(vector); err != nil {
		m.stopWith(ErrFault, fmt.Sprintf("exception %d: %v", vector, err))
	}
}

func (m *Machine) deliver(vector uint32) error {
	e := m.eng
	var r [6]uint64
	if err := e.Regs([]emu.Reg{emu.RIP, emu.RSP, emu.RFLAGS, emu.CS, emu.SS, emu.CR2}, r[:]); err != nil {
		return err
	}
	rip, rsp, rflags, cs, ss, cr2 := r[0], r[1], r[2], r[3], r[4], r[5]
	gate := make([]byte, 16)
	idt := m.snap.CPU.IDT
	if uint64(vector)*16+15 > uint64(idt.Limit) {
		return fmt.Errorf("vector %d beyond the IDT limit", vector)
	}
	if err := m.virt.Read(idt.Base+uint64(vector)*16, gate); err != nil {
		return fmt.Errorf("read IDT gate: %w", err)
	}
	handler := uint64(binary.LittleEndian.Uint16(gate[0:])) | uint64(binary.LittleEndian.Uint16(gate[6:]))<<16 |
		uint64(binary.LittleEndian.Uint32(gate[8:]))<<32
	if gate[5]&0x80 == 0 {
		return fmt.Errorf("IDT gate %d not present", vector)
	}
	newRSP := rsp
	if ist := gate[4] & 7; ist != 0 {
		// The 64-bit TSS holds IST1..7 from byte 36.
		v, err := m.virt.ReadUint64(m.snap.CPU.TR.Base + 36 + uint64(ist-1)*8)
		if err != nil {
			return fmt.Errorf("read IST%d: %w", ist, err)
		}
		newRSP = v
	}
	newRSP &^= 0xf
	frame := []uint64{ss, rsp, rflags, cs, rip}
	if hasErrorCode[vector] {
		code := uint64(0)
		if vector == 14 {
			code = m.pageFaultCode(cr2, rip)
		}
		frame = append(frame, code)
	}
	buf := make([]byte, 8*len(frame))
	for i, v := range frame {
		binary.LittleEndian.PutUint64(buf[8*(len(frame)-1-i):], v)
	}
	newRSP -= uint64(len(buf))
	if err := m.writeVirt(newRSP, buf); err != nil {
		return fmt.Errorf("push exception frame: %w", err)
	}
	// An interrupt gate (type 0xE) clears IF; every gate clears TF, NT, RF, VM.
	flags := rflags &^ (1<<8 | 1<<14 | 1<<16 | 1<<17)
	if gate[5]&0xf == 0xe {
		flags &^= 1 << 9
	}
	if err := errors.Join(e.SetReg(emu.RSP, newRSP), e.SetReg(emu.RFLAGS, flags), e.SetReg(emu.RIP, handler)); err != nil {
		return err
	}
	return e.ClearException()
}

// pageFaultCode rebuilds the #PF error code, which Unicorn does not report: P from a walk of the
// faulting address, W from the faulting instruction, I/D for fetches. Kernel mode, so U is 0.
func (m *Machine) pageFaultCode(cr2, rip uint64) uint64 {
	var code uint64
	if _, _, _, err := m.virt.Walker().Translate(cr2); err == nil {
		code |= 1 // present: a protection violation
	}
	if cr2 == rip {
		return code | 1<<4
	}
	insn := make([]byte, 15)
	if err := m.virt.Read(rip, insn); err == nil {
		if in, err := x86asm.Decode(insn, 64); err == nil && writesMemory(in, cr2, m) {
			code |= 2
		}
	}
	return code
}

// writesMemory guesses whether the faulting access was a write: the destination operand is
// memory, or a string instruction whose destination (RDI) is on the faulting page.
func writesMemory(in x86asm.Inst, cr2 uint64, m *Machine) bool {
	switch in.Op {
	case x86asm.MOVSB, x86asm.MOVSW, x86asm.MOVSD, x86asm.MOVSQ, x86asm.STOSB, x86asm.STOSW, x86asm.STOSD, x86asm.STOSQ:
		rdi, _ := m.eng.Reg(emu.RDI)
		return rdi&^0xfff == cr2&^0xfff
	case x86asm.CMP, x86asm.TEST, x86asm.PUSH, x86asm.PREFETCHT0, x86asm.PREFETCHNTA, x86asm.PREFETCHW:
		return false
	}
	_, isMem := in.Args[0].(x86asm.Mem)
	return isMem
}

const enosys = 38

// Phys translates a virtual address of the agent's address space to physical.
func (m *Machine) Phys(va uint64) (uint64, error) {
	pa, _, _, err := m.virt.Walker().Translate(va)
	return pa, err
}

// stackScan returns up to n kernel text addresses found in the 4 KiB above rsp.
func (m *Machine) stackScan(rsp uint64, n int) []string {
	// Up to 4 KiB, stopping at the first unmapped page (the stack's guard page).
	var buf []byte
	for va := rsp; va < rsp+4096; va = (va + 4096) &^ 4095 {
		chunk := make([]byte, min((va+4096)&^4095, rsp+4096)-va)
		if err := m.virt.Read(va, chunk); err != nil {
			break
		}
		buf = append(buf, chunk...)
	}
	text, etext := m.snap.Symbols["_text"], m.snap.Symbols["_etext"]
	var out []string
	for i := 0; i+8 <= len(buf) && len(out) < n; i += 8 {
		v := binary.LittleEndian.Uint64(buf[i:])
		if v < text || v >= etext {
			continue
		}
		if m.opts.Symbols != nil {
			out = append(out, m.opts.Symbols.Format(v))
		} else {
			out = append(out, fmt.Sprintf("%#x", v))
		}
	}
	return out
}

// CurrentSyscall is the number of the system call running (or that ran last).
func (m *Machine) CurrentSyscall() int { return m.curNR }
