//go:build linux

package svm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/arch/x86/x86asm"
	"golang.org/x/sys/unix"

	"hybridbridge/vmm"
)

// KVMOptions configure a KVMMachine.
type KVMOptions struct {
	// Timeout bounds one system call's wall-clock time (default 10 s). KVM runs the guest until
	// it exits, and a kernel spinning with interrupts off may never exit on its own.
	Timeout time.Duration
	// MaxExits bounds one system call's exits to user space (default 100000): a call that
	// keeps exiting (port I/O from a console flood) is as stuck as one that spins.
	MaxExits int
	// Symbols, if set, renders stop addresses as symbol+offset.
	Symbols *vmm.Symbols
}

// KVMStats are a KVMMachine's counters since it was opened.
type KVMStats struct {
	Syscalls int
	Exits    int           // exits to user space, over all calls
	Elapsed  time.Duration // time inside KVM_RUN loops, over all calls
	Resets   int
	Emulated int // instructions KVM could not emulate, carried out in user space
}

// KVMMachine is the SVM snapshot loaded into a KVM virtual machine with one vCPU and no
// interrupt controller. Its RAM is a private copy-on-write mapping of the snapshot file: the
// snapshot is never written. A KVMMachine is not safe for concurrent use.
type KVMMachine struct {
	snap      *Snapshot
	opts      KVMOptions
	ram       []byte // MAP_PRIVATE mapping of ram.img, the VM's only memory slot
	virt      *vmm.VirtView
	savedRegs []byte // the agent's pt_regs as captured
	retPhys   uint64 // physical address of Snapshot.ReturnAddr, where the halt is planted
	stops     []kvmStop

	k   *vmm.KVM
	vm  *vmm.VM
	cpu *vmm.VCPU

	stats KVMStats
}

// hltOpcode ends every call: the halt exits to user space because the VM has no interrupt
// controller, which needs no breakpoint support from KVM (a paravirtual KVM reports int3 as an
// emulation failure, not a debug exit).
const hltOpcode = 0xf4

// OpenKVM loads a snapshot into a new KVM virtual machine.
func OpenKVM(snap *Snapshot, opts KVMOptions) (*KVMMachine, error) {
	if opts.Timeout == 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.MaxExits == 0 {
		opts.MaxExits = 100_000
	}
	m := &KVMMachine{snap: snap, opts: opts}
	if err := m.mapRAM(); err != nil {
		m.Close()
		return nil, err
	}
	if err := m.setup(); err != nil {
		m.Close()
		return nil, fmt.Errorf("SVM under KVM: %w", err)
	}
	return m, nil
}

// mapRAM maps ram.img privately and finds what the executor needs in it; the mapping outlives
// the VM, which KVM requires of a memory slot's backing.
func (m *KVMMachine) mapRAM() error {
	ram, err := mapSnapshotRAM(m.snap, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
	if err != nil {
		return err
	}
	m.ram = ram
	phys, err := vmm.NewBytesView("svm-kvm", ram, nil)
	if err != nil {
		return err
	}
	if m.virt, m.savedRegs, err = agentView("svm-kvm", phys, m.snap); err != nil {
		return err
	}
	w := m.virt.Walker()
	if m.retPhys, _, _, err = w.Translate(m.snap.ReturnAddr); err != nil {
		return fmt.Errorf("return address %#x: %w", m.snap.ReturnAddr, err)
	}
	if m.retPhys >= uint64(len(ram)) {
		return fmt.Errorf("return address %#x at physical %#x, outside SVM RAM", m.snap.ReturnAddr, m.retPhys)
	}
	if err := m.findStops(w); err != nil {
		return err
	}
	m.plantHalts()
	return nil
}

// plantHalts writes the halts that end a call into the private copy of the kernel text: at the
// return address, and at the entries where the Unicorn machine stops a call (a context switch
// or the idle loop: nothing else runs in the SVM, so a call that sleeps never wakes; an oops).
func (m *KVMMachine) plantHalts() {
	m.ram[m.retPhys] = hltOpcode
	for _, s := range m.stops {
		m.ram[s.phys] = hltOpcode
	}
}

// kvmStop is a kernel entry where a call is stopped, and why.
type kvmStop struct {
	name string
	addr uint64
	phys uint64
	err  error
}

// findStops translates the stop entries the snapshot names; oops_begin and panic may be absent.
func (m *KVMMachine) findStops(w *vmm.Walker) error {
	for _, s := range []kvmStop{
		{name: "__switch_to_asm", err: ErrBlocked}, {name: "default_idle", err: ErrBlocked},
		{name: "oops_begin", err: ErrFault}, {name: "panic", err: ErrFault},
	} {
		if s.addr = m.snap.Symbols[s.name]; s.addr == 0 {
			continue
		}
		pa, _, _, err := w.Translate(s.addr)
		if err != nil || pa >= uint64(len(m.ram)) {
			return fmt.Errorf("%s at %#x: not in SVM RAM (%v)", s.name, s.addr, err)
		}
		s.phys = pa
		m.stops = append(m.stops, s)
	}
	return nil
}

func (m *KVMMachine) setup() error {
	k, err := vmm.OpenKVM()
	if err != nil {
		return err
	}
	m.k = k
	if m.vm, err = k.NewVM(); err != nil {
		return err
	}
	if err := m.vm.AddMemory(0, m.ram, false); err != nil {
		return err
	}
	if m.cpu, err = m.vm.NewVCPU(); err != nil {
		return err
	}
	id, err := k.SupportedCPUID()
	if err != nil {
		return err
	}
	if err := m.cpu.SetCPUID(id); err != nil {
		return err
	}
	return m.loadCPU()
}

// Close releases the VM, /dev/kvm and the RAM mapping, in that order: the VM's memory slot
// points into the mapping until the VM is gone.
func (m *KVMMachine) Close() error {
	var errs []error
	if m.vm != nil {
		errs = append(errs, m.vm.Destroy())
		m.vm, m.cpu = nil, nil
	}
	if m.k != nil {
		errs = append(errs, m.k.Close())
		m.k = nil
	}
	if m.ram != nil {
		errs = append(errs, unix.Munmap(m.ram))
		m.ram = nil
	}
	return errors.Join(errs...)
}

// Snapshot returns the snapshot the machine runs.
func (m *KVMMachine) Snapshot() *Snapshot { return m.snap }

// Stats returns the counters.
func (m *KVMMachine) Stats() KVMStats { return m.stats }

// ExitsByReason counts the vCPU's exits to user space by reason, since the machine was opened.
func (m *KVMMachine) ExitsByReason() map[string]int {
	out := map[string]int{}
	if m.cpu == nil {
		return out // closed
	}
	for r, n := range m.cpu.Exits {
		out[r.String()] = n
	}
	return out
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

// loadCPU puts the captured CPU state into the vCPU: special registers, then MSRs, then the
// general registers (the order KVM validates them in: EFER and CR4 before what depends on them).
func (m *KVMMachine) loadCPU() error {
	c := m.snap.CPU
	s, err := m.cpu.Sregs()
	if err != nil {
		return err
	}
	s.CS, s.SS, s.DS, s.ES = kvmSegment(c.CS), kvmSegment(c.SS), kvmSegment(c.DS), kvmSegment(c.ES)
	s.FS, s.GS = kvmSegment(c.FS), kvmSegment(c.GS)
	s.FS.Base, s.GS.Base = c.FSBase, c.GSBase
	s.TR, s.LDT = kvmSegment(c.TR), kvmSegment(c.LDT)
	s.TR.Typ = tssBusy
	s.GDT = kvm.Descriptor{Base: c.GDT.Base, Limit: uint16(c.GDT.Limit)}
	s.IDT = kvm.Descriptor{Base: c.IDT.Base, Limit: uint16(c.IDT.Limit)}
	s.CR0, s.CR2, s.CR3, s.CR4, s.EFER = c.CR0, c.CR2, c.CR3, c.CR4, c.EFER
	if err := m.cpu.SetSregs(s); err != nil {
		return fmt.Errorf("load CR0 %#x CR4 %#x EFER %#x: %w", c.CR0, c.CR4, c.EFER, err)
	}
	// The TSC continues from the capture, so the kernel's clock does not jump back to the
	// vCPU's zero.
	if err := m.cpu.SetMSRs(map[uint32]uint64{
		uint32(kvm.MSRKERNELGSBASE): c.KernelGSBase,
		uint32(kvm.MSRIA32TSC):      m.snap.TSC,
	}); err != nil {
		return err
	}
	return m.cpu.SetRegs(m.capturedRegs())
}

// capturedRegs are the general registers as captured.
func (m *KVMMachine) capturedRegs() *kvm.Regs {
	g := m.snap.CPU.GPR
	return &kvm.Regs{
		RAX: g["rax"], RBX: g["rbx"], RCX: g["rcx"], RDX: g["rdx"], RSI: g["rsi"], RDI: g["rdi"],
		RSP: g["rsp"], RBP: g["rbp"], R8: g["r8"], R9: g["r9"], R10: g["r10"], R11: g["r11"],
		R12: g["r12"], R13: g["r13"], R14: g["r14"], R15: g["r15"],
		RIP: m.snap.CPU.RIP, RFLAGS: m.snap.CPU.RFLAGS,
	}
}

// Reset drops every change the calls made to memory and reloads the captured CPU state. KVM
// follows the dropped pages through its MMU notifiers, so the VM sees the snapshot again.
func (m *KVMMachine) Reset() error {
	if err := unix.Madvise(m.ram, unix.MADV_DONTNEED); err != nil {
		return fmt.Errorf("reset SVM RAM: %w", err)
	}
	m.plantHalts()
	m.stats.Resets++
	return m.loadCPU()
}

// Syscall injects one system call and returns its return value (negative errno on failure, as
// the kernel returns it). It is refused unless the call is on the allow-list. A call that stops
// anywhere but its return leaves the kernel midway (locks held), so the machine resets itself
// before reporting it.
func (m *KVMMachine) Syscall(nr int, args ...uint64) (int64, error) {
	if err := checkCall(nr, args); err != nil {
		return 0, err
	}
	if err := m.prepare(nr, args); err != nil {
		return 0, fmt.Errorf("%s: %w", SyscallName(nr), err)
	}
	m.stats.Syscalls++
	if err := m.run(nr); err != nil {
		if rerr := m.Reset(); rerr != nil {
			return 0, errors.Join(err, rerr)
		}
		return 0, err
	}
	ax, err := m.virt.ReadUint64(m.snap.PtRegs + ptAX)
	if err != nil {
		return 0, fmt.Errorf("%s: result: %w", SyscallName(nr), err)
	}
	return int64(ax), nil
}

// prepare writes the call into the agent's pt_regs and the return address on the kernel stack,
// and points the vCPU at do_syscall_64(regs, nr), as the entry code would have.
func (m *KVMMachine) prepare(nr int, args []uint64) error {
	if err := placeCall(m.writeVirt, m.snap, m.savedRegs, nr, args); err != nil {
		return err
	}
	rsp := m.snap.CPU.GPR["rsp"]
	// Every general register from the capture, not only the arguments: a call then does not
	// depend on what the previous one left in the vCPU.
	r := m.capturedRegs()
	r.RSP, r.RDI, r.RSI = rsp, m.snap.PtRegs, uint64(nr)
	r.RIP = m.snap.Symbols["do_syscall_64"]
	if err := m.cpu.SetRegs(r); err != nil {
		return fmt.Errorf("KVM_SET_REGS: %w", err)
	}
	return nil
}

// run enters the vCPU until the call halts at its return address, and turns every other stop
// into a *StopError.
func (m *KVMMachine) run(nr int) error {
	// The watchdog signals this very thread to pull it out of KVM_RUN.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	stopWatch := kickAfter(unix.Gettid(), m.opts.Timeout)
	defer stopWatch()
	start := time.Now()
	deadline := start.Add(m.opts.Timeout)
	defer func() { m.stats.Elapsed += time.Since(start) }()
	for exits := 1; ; exits++ {
		e, err := m.cpu.Run()
		m.stats.Exits++
		if err != nil {
			return m.stop(ErrFault, nr, err.Error())
		}
		done, err := m.handleExit(nr, e)
		if done || err != nil {
			return err
		}
		switch {
		case time.Now().After(deadline):
			return m.stop(ErrBudget, nr, fmt.Sprintf("still running after %v (%d exits)", m.opts.Timeout, exits))
		case exits >= m.opts.MaxExits:
			return m.stop(ErrBudget, nr, fmt.Sprintf("%d exits to user space", exits))
		}
	}
}

// handleExit reports whether the call is done, or why it cannot go on.
func (m *KVMMachine) handleExit(nr int, e vmm.Exit) (done bool, err error) {
	switch e.Reason {
	case kvm.EXITHLT:
		r, err := m.cpu.Regs()
		if err != nil {
			return false, fmt.Errorf("KVM_GET_REGS: %w", err)
		}
		// KVM reports a halt with RIP past the one-byte instruction.
		if r.RIP == m.snap.ReturnAddr+1 {
			return true, nil
		}
		for _, s := range m.stops {
			if r.RIP == s.addr+1 {
				err := m.stop(s.err, nr, "reached "+s.name)
				err.RIP, err.Symbol = s.addr, m.symbolize(s.addr) // the entry, not past the halt
				return false, err
			}
		}
		return false, m.stop(ErrFault, nr, "halted away from the return address")
	case kvm.EXITINTR:
		return false, nil // the watchdog's signal, or any other: the caller checks the time
	case kvm.EXITIO:
		return false, m.portIO(nr, e)
	case kvm.EXITMMIO:
		a := m.cpu.MMIO()
		kind := "read"
		if a.Write {
			kind = "write"
		}
		return false, m.stop(ErrFault, nr, fmt.Sprintf("MMIO %s of %d bytes at physical %#x, outside SVM RAM", kind, a.Len, a.Addr))
	case kvm.EXITSHUTDOWN:
		return false, m.stop(ErrFault, nr, "shutdown (triple fault)")
	case kvm.EXITINTERNALERROR:
		w := m.cpu.ExitWords()
		if uint32(w[0]) == internalErrorEmulation {
			return false, m.emulate(nr)
		}
		return false, m.stop(ErrFault, nr, fmt.Sprintf("KVM internal error %d (data %#x %#x %#x)", uint32(w[0]), w[1], w[2], w[3]))
	default:
		w := m.cpu.ExitWords()
		return false, m.stop(ErrFault, nr, fmt.Sprintf("exit %v (reason %d, data %#x %#x %#x %#x)", e.Reason, uint32(e.Reason), w[0], w[1], w[2], w[3]))
	}
}

// portIO answers port I/O as the Unicorn machine does (a console write from a warning): output
// goes nowhere, and the UART's line status always reports an empty transmitter.
func (m *KVMMachine) portIO(nr int, e vmm.Exit) error {
	if e.IODir == kvm.EXITIOOUT {
		return nil
	}
	data := make([]byte, len(e.IOData))
	if e.IOPort&7 == 5 {
		for i := range data {
			data[i] = 0x60
		}
	}
	if err := m.cpu.AnswerIn(data); err != nil {
		return m.stop(ErrFault, nr, err.Error())
	}
	return nil
}

// stop builds the StopError of a call that ended anywhere but its return.
func (m *KVMMachine) stop(err error, nr int, detail string) *StopError {
	se := &StopError{Err: err, NR: nr, Detail: detail}
	if r, rerr := m.cpu.Regs(); rerr == nil {
		se.RIP = r.RIP
		se.Symbol = m.symbolize(r.RIP)
	}
	return se
}

// symbolize renders addr with the full symbol table if there is one, else with the few symbols
// the snapshot records, which still name the common stops (the scheduler, the idle loop).
func (m *KVMMachine) symbolize(addr uint64) string {
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

// writeVirt writes into the VM's memory at a virtual address of the agent's address space.
func (m *KVMMachine) writeVirt(va uint64, data []byte) error {
	return writeVirtRAM(m.virt.Walker(), m.ram, va, data, nil)
}

// ReadVirt reads the VM's memory at a virtual address of the agent's address space.
func (m *KVMMachine) ReadVirt(va uint64, buf []byte) error { return m.virt.Read(va, buf) }

// ReadFile reads a whole file of the SVM with openat, read and close, all injected, with paths
// and data where the Unicorn machine puts them.
func (m *KVMMachine) ReadFile(path string) ([]byte, error) {
	va, err := placePath(m.writeVirt, m.snap, path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	fd, err := openAt(m, va, path, oRDONLY)
	if err != nil {
		return nil, err
	}
	out, err := readAll(m, m.snap, fd, path)
	if err != nil {
		_ = closeFD(m, fd)
		return nil, err
	}
	return out, closeFD(m, fd)
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
func (m *KVMMachine) emulate(nr int) error {
	r, err := m.cpu.Regs()
	if err != nil {
		return fmt.Errorf("KVM_GET_REGS: %w", err)
	}
	code := make([]byte, 15)
	if err := m.virt.Read(r.RIP, code); err != nil {
		return m.stop(ErrFault, nr, fmt.Sprintf("KVM cannot emulate the instruction at %#x, unreadable: %v", r.RIP, err))
	}
	in, err := x86asm.Decode(code, 64)
	if err != nil {
		return m.stop(ErrFault, nr, fmt.Sprintf("KVM cannot emulate % x", code))
	}
	if in.Op != x86asm.CMPXCHG16B {
		return m.stop(ErrFault, nr, fmt.Sprintf("KVM cannot emulate %v (% x)", in, code[:in.Len]))
	}
	if err := m.cmpxchg16b(in, r); err != nil {
		return m.stop(ErrFault, nr, fmt.Sprintf("emulate %v: %v", in, err))
	}
	r.RIP += uint64(in.Len)
	if err := m.cpu.SetRegs(r); err != nil {
		return fmt.Errorf("KVM_SET_REGS: %w", err)
	}
	m.stats.Emulated++
	return nil
}

// cmpxchg16b compares RDX:RAX with the 16 bytes at the operand: equal, it stores RCX:RBX and
// sets ZF; else it loads them into RDX:RAX and clears ZF.
func (m *KVMMachine) cmpxchg16b(in x86asm.Inst, r *kvm.Regs) error {
	va, err := m.effectiveAddr(in, r)
	if err != nil {
		return err
	}
	if va%16 != 0 {
		return fmt.Errorf("operand %#x not 16-byte aligned (the CPU raises #GP)", va)
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
func (m *KVMMachine) effectiveAddr(in x86asm.Inst, r *kvm.Regs) (uint64, error) {
	mem, ok := in.Args[0].(x86asm.Mem)
	if !ok {
		return 0, errors.New("no memory operand")
	}
	if in.AddrSize != 64 {
		return 0, fmt.Errorf("%d-bit addressing", in.AddrSize)
	}
	s, err := m.cpu.Sregs()
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

// Phys translates a virtual address of the agent's address space to physical.
func (m *KVMMachine) Phys(va uint64) (uint64, error) {
	pa, _, _, err := m.virt.Walker().Translate(va)
	return pa, err
}
