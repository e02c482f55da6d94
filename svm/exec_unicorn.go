package svm

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/arch/x86/x86asm"

	"hybridbridge/emu"
)

// UnicornOptions configure the Unicorn executor (Options.Unicorn), which runs every instruction
// in an emulator with hooks: slow, but it can stop anywhere and give any access to Go code.
type UnicornOptions struct {
	// Budget is the instruction limit of one system call (default 50 million), estimated per
	// translated block (see emu.Budget).
	Budget uint64
	// CountInstructions makes Stats count executed instructions exactly, at some speed cost.
	CountInstructions bool
	// Swaps installs the hooks that undo SwapInGuest over the kernel image's data, for a taint
	// engine that redirects accesses there.
	Swaps bool
	// UserMode installs the SYSCALL hook RunProgram needs (a program's system calls).
	UserMode bool
}

// unicornExec is a Machine's Unicorn engine, mapped onto the machine's RAM, with the hooks
// that stand in for what the emulator lacks (exception delivery, the TSC, port I/O) and end a
// call where it would sleep or crash.
type unicornExec struct {
	m        *Machine
	opts     UnicornOptions
	eng      *emu.Engine
	tscHooks int // RDTSC/RDTSCP hooks installed

	// Set by hooks during a run, read after Start returns.
	stopErr    error
	stopDetail string
	// lastException is the last exception this call delivered, for the message of an oops it
	// leads to: the faulting instruction is far down the stack by then.
	lastException string
	trace         *emu.TraceBuffer // with CountInstructions: every executed instruction, counted
	budget        *emu.Budget
	user          *userState // the program RunProgram runs, if any
}

// openUnicornExec makes the machine's executor a new Unicorn engine.
func openUnicornExec(m *Machine) error {
	var o UnicornOptions
	if m.opts.Unicorn != nil {
		o = *m.opts.Unicorn
	}
	if o.Budget == 0 {
		o.Budget = 50_000_000
	}
	eng, err := emu.Open(emu.CPUDefault)
	if err != nil {
		return err
	}
	u := &unicornExec{m: m, opts: o, eng: eng}
	m.exec = u
	return u.setup()
}

// Engine exposes the Unicorn engine, for hooks that the taint engine installs; nil on KVM, whose
// accesses reach Go code through Intercept instead. Hooks must be installed before the first
// system call.
func (m *Machine) Engine() *emu.Engine {
	if u, ok := m.exec.(*unicornExec); ok {
		return u.eng
	}
	return nil
}

func (u *unicornExec) setup() error {
	m, e := u.m, u.eng
	// Each RAM range at its physical address; the PCI hole between stays unmapped.
	for _, r := range m.snap.Layout.RAMRanges() {
		if err := e.MapPtr(r.GuestPhys, r.Size, emu.ProtAll, m.ram[r.GuestPhys:r.End()]); err != nil {
			return fmt.Errorf("map SVM RAM %v into Unicorn: %w", r, err)
		}
	}
	for _, p := range scratchPages {
		if err := e.Map(p, 4096, emu.ProtRead|emu.ProtWrite); err != nil {
			return fmt.Errorf("map scratch page %#x: %w", p, err)
		}
	}
	// Every hook exists from the start: Unicorn compiles hook checks into translated code.
	blocking, err := m.blockingEntries()
	if err != nil {
		return err
	}
	for _, b := range blocking {
		if _, err := e.HookCode(b.addr, b.addr, func(uint64, uint32) {
			u.stop(ErrBlocked, "reached "+b.name)
		}); err != nil {
			return err
		}
	}
	for _, name := range faultEntries {
		if addr := m.snap.Symbols[name]; addr != 0 {
			where := name
			if _, err := e.HookCode(addr, addr, func(uint64, uint32) {
				detail := "kernel " + where
				if u.lastException != "" {
					detail += " after " + u.lastException
				}
				u.stop(ErrFault, detail)
			}); err != nil {
				return err
			}
		}
	}
	if _, err := e.HookInterrupt(u.onInterrupt); err != nil {
		return err
	}
	// ud2 (BUG/WARN) becomes #UD through the guest's IDT, as on hardware.
	if _, err := e.HookInvalidInsn(func() bool { return true }); err != nil {
		return err
	}
	if _, err := e.HookMemFault(emu.HookMemUnmapped, 1, 0, func(acc emu.MemAccess, addr uint64, size int, _ int64) bool {
		u.stop(ErrFault, fmt.Sprintf("access to unmapped physical %#x (%d bytes)", addr, size))
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
	if err := u.hookTSC(); err != nil {
		return err
	}
	if u.opts.UserMode {
		if _, err := e.HookSyscall(u.onUserSyscall); err != nil {
			return err
		}
		if err := u.hookPaths(); err != nil {
			return err
		}
	}
	if u.opts.Swaps {
		if err := m.hookSwaps(e); err != nil {
			return err
		}
		if m.wlog, err = e.NewWriteLog(0, m.snap.Layout.RAMEnd()); err != nil {
			return err
		}
	}
	if u.budget, err = e.NewBudget(); err != nil {
		return err
	}
	if u.opts.CountInstructions {
		tb, err := e.NewTrace(emu.TraceConfig{Capacity: 1 << 16, Code: true, CodeBegin: 1, CodeEnd: 0,
			OnFull: func(evs []emu.Event) { m.stats.Instructions += uint64(len(evs)) }})
		if err != nil {
			return err
		}
		u.trace = tb
	}
	return nil
}

// hookTSC makes RDTSC continue the SVM's own clock: Unicorn's RDTSC reads the host's counter,
// which would make the guest's time jump by the host's uptime. Unicorn has no RDTSC hook and
// ignores writes to the TSC MSR, so each RDTSC/RDTSCP instruction of the kernel (found when the
// snapshot was built) gets a one-address code hook that supplies svmTSC, or the clock source's
// counter, and steps over the instruction.
func (u *unicornExec) hookTSC() error {
	m := u.m
	if m.snap.TSCKHz == 0 || len(m.snap.TSCSites) == 0 {
		return fmt.Errorf("snapshot lacks the TSC rate or RDTSC sites")
	}
	sites, err := m.tscSites()
	if err != nil {
		return err
	}
	e := u.eng
	for _, s := range sites {
		if _, err := e.HookCode(s.addr, s.addr, func(uint64, uint32) {
			m.stats.TSCReads++
			tsc := m.svmTSC()
			if s.clock {
				tsc = m.opts.Clock.TSC()
			}
			if s.entry {
				// Return the counter from the function: RAX, and the return address popped.
				rsp, err := e.Reg(emu.RSP)
				var ret uint64
				if err == nil {
					ret, err = m.virt.ReadUint64(rsp)
				}
				if err == nil {
					err = e.SetRegs([]emu.Reg{emu.RAX, emu.RIP, emu.RSP}, []uint64{tsc, ret, rsp + 8})
				}
				if err != nil {
					u.stop(ErrFault, "clock source "+m.opts.Clock.Func+": "+err.Error())
				}
				return
			}
			regs := []emu.Reg{emu.RAX, emu.RDX, emu.RIP}
			vals := []uint64{tsc & 0xffffffff, tsc >> 32, s.next()}
			if s.aux {
				regs, vals = append(regs, emu.RCX), append(vals, 0)
			}
			if err := e.SetRegs(regs, vals); err != nil {
				u.stop(ErrFault, "emulate rdtsc: "+err.Error())
			}
		}); err != nil {
			return err
		}
		u.tscHooks++
	}
	return nil
}

// loadCPU puts the captured CPU state into the engine. The order matters: in Unicorn 2.1.1
// writing CR2 also sets CR3, so CR2 goes first; descriptor tables precede the selectors that
// index them.
func (u *unicornExec) loadCPU() error {
	c := u.m.snap.CPU
	e := u.eng
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
	if u.opts.UserMode {
		// In 64-bit mode a selector write changes only the selector: a program stopped in user
		// mode leaves CPL 3 behind until the descriptor caches are loaded again.
		kcs, kss := emu.SyscallCS, emu.SyscallSS
		kcs.Selector, kcs.Flags = uint32(c.CS.Selector), uint32(c.CS.Flags)
		kss.Selector, kss.Flags = uint32(c.SS.Selector), uint32(c.SS.Flags)
		steps = append(steps, e.SetPrivilege(kcs, kss, true))
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

// enter sets the registers do_syscall_64 takes; the others keep what the last reset or call
// left, which the kernel's entry path does not read.
func (u *unicornExec) enter(nr int) error {
	m, e := u.m, u.eng
	if err := errors.Join(
		e.SetReg(emu.RSP, m.snap.CPU.GPR["rsp"]),
		e.SetReg(emu.RDI, m.snap.PtRegs),
		e.SetReg(emu.RSI, uint64(nr)),
		e.SetReg(emu.RFLAGS, m.snap.CPU.RFLAGS),
	); err != nil {
		return fmt.Errorf("%s: set registers: %w", SyscallName(nr), err)
	}
	u.stopErr, u.stopDetail, u.lastException = nil, "", ""
	return nil
}

func (u *unicornExec) run(nr int) error {
	m, e := u.m, u.eng
	entry := m.snap.Symbols["do_syscall_64"]
	u.budget.Reset(u.opts.Budget)
	runErr := e.Start(entry, m.snap.ReturnAddr, 0)
	if u.trace != nil {
		u.trace.Drain(func(evs []emu.Event) { m.stats.Instructions += uint64(len(evs)) })
	}
	rip, _ := e.Reg(emu.RIP)
	stop := func(err error, detail string) error {
		se := &StopError{Err: err, NR: nr, RIP: rip, Detail: detail}
		if m.opts.Symbols != nil {
			se.Symbol = m.opts.Symbols.Format(rip)
		}
		if sp, err := e.Reg(emu.RSP); err == nil {
			se.Stack = m.stackScan(sp, 24)
		}
		return se
	}
	switch {
	case u.stopErr != nil:
		return stop(u.stopErr, u.stopDetail)
	case runErr != nil:
		return stop(ErrFault, runErr.Error())
	case u.budget.Exceeded() || rip != m.snap.ReturnAddr:
		return stop(ErrBudget, fmt.Sprintf("about %d instructions", u.opts.Budget))
	}
	return nil
}

func (u *unicornExec) stop(err error, detail string) {
	if u.stopErr == nil {
		u.stopErr, u.stopDetail = err, detail
	}
	if u.eng != nil {
		_ = u.eng.Stop()
	}
}

func (u *unicornExec) clearScratch() error {
	for _, p := range scratchPages {
		if err := u.eng.WritePhys(p, make([]byte, 4096)); err != nil {
			return fmt.Errorf("clear scratch page %#x: %w", p, err)
		}
	}
	return nil
}

func (u *unicornExec) intercept([]PhysSpan, func(*Trapped) error) ([]PhysSpan, error) {
	return nil, errors.New("Intercept needs a machine on KVM (Options.KVM); Unicorn hooks memory through Engine")
}

// plantedBytes: the Unicorn executor stops calls by hooks, and writes nothing into RAM.
func (u *unicornExec) plantedBytes(func(at uint64, b byte)) {}

func (u *unicornExec) exits() map[string]int { return map[string]int{} }

// close releases the trace buffer and the engine; the engine's hooks go with it.
func (u *unicornExec) close() error {
	if u.trace != nil {
		u.trace.Close()
		u.trace = nil
	}
	if u.eng == nil {
		return nil
	}
	err := u.eng.Close()
	u.eng = nil
	return err
}

// Exception vectors that push an error code.
var hasErrorCode = map[uint32]bool{8: true, 10: true, 11: true, 12: true, 13: true, 14: true, 17: true, 21: true}

// onInterrupt delivers an exception through the guest's IDT as the CPU would: Unicorn only
// reports the vector. The frame goes on the current stack or the gate's IST stack.
func (u *unicornExec) onInterrupt(vector uint32) {
	u.m.stats.Exceptions[vector]++
	u.lastException = u.describeException(vector)
	if err := u.deliver(vector); err != nil {
		u.stop(ErrFault, fmt.Sprintf("exception %d: %v", vector, err))
	}
}

// describeException names an exception about to be delivered: vector, instruction and, for a
// page fault, the address.
func (u *unicornExec) describeException(vector uint32) string {
	var r [2]uint64
	if err := u.eng.Regs([]emu.Reg{emu.RIP, emu.CR2}, r[:]); err != nil {
		return fmt.Sprintf("exception %d", vector)
	}
	at := fmt.Sprintf("%#x", r[0])
	if syms := u.m.opts.Symbols; syms != nil {
		at = syms.Format(r[0])
	}
	if vector == 14 {
		return fmt.Sprintf("a page fault at %s (address %#x)", at, r[1])
	}
	return fmt.Sprintf("exception %d at %s", vector, at)
}

func (u *unicornExec) deliver(vector uint32) error {
	m, e := u.m, u.eng
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
	v := u.cur()
	if err := v.Read(idt.Base+uint64(vector)*16, gate); err != nil {
		return fmt.Errorf("read IDT gate: %w", err)
	}
	handler := uint64(binary.LittleEndian.Uint16(gate[0:])) | uint64(binary.LittleEndian.Uint16(gate[6:]))<<16 |
		uint64(binary.LittleEndian.Uint32(gate[8:]))<<32
	if gate[5]&0x80 == 0 {
		return fmt.Errorf("IDT gate %d not present", vector)
	}
	fromUser := cs&3 == 3
	if fromUser {
		if u.user == nil {
			return fmt.Errorf("exception %d at CPL 3 outside a program", vector)
		}
		if stopped := u.userException(vector, rip); stopped {
			return nil
		}
	}
	// From user mode the stack is TSS.RSP0 (at byte 4); the 64-bit TSS holds IST1..7 from byte
	// 36, used at any level.
	newRSP, slot := rsp, uint64(0)
	if ist := gate[4] & 7; ist != 0 {
		slot = 36 + uint64(ist-1)*8
	} else if fromUser {
		slot = 4
	}
	if slot != 0 {
		var err error
		if newRSP, err = v.ReadUint64(m.snap.CPU.TR.Base + slot); err != nil {
			return fmt.Errorf("read the TSS stack at byte %d: %w", slot, err)
		}
	}
	newRSP &^= 0xf
	frame := []uint64{ss, rsp, rflags, cs, rip}
	if hasErrorCode[vector] {
		code := uint64(0)
		switch {
		case vector == 14 && fromUser:
			code = u.userFaultCode(cr2, rip) | 4 // U: from user mode
		case vector == 14:
			code = u.pageFaultCode(cr2, rip)
		}
		frame = append(frame, code)
	}
	buf := make([]byte, 8*len(frame))
	for i, x := range frame {
		binary.LittleEndian.PutUint64(buf[8*(len(frame)-1-i):], x)
	}
	newRSP -= uint64(len(buf))
	if err := u.curWrite(newRSP, buf); err != nil {
		return fmt.Errorf("push exception frame: %w", err)
	}
	// An interrupt gate (type 0xE) clears IF; every gate clears TF, NT, RF, VM.
	flags := rflags &^ (1<<8 | 1<<14 | 1<<16 | 1<<17)
	if gate[5]&0xf == 0xe {
		flags &^= 1 << 9
	}
	enter := e.ClearException
	if fromUser {
		// CPL 0 with the gate's CS; SS becomes the NULL selector with RPL 0, as a 64-bit
		// interrupt to an inner level loads it.
		cs0 := emu.SyscallCS
		cs0.Selector = uint32(binary.LittleEndian.Uint16(gate[2:])) &^ 3
		enter = func() error { return e.SetPrivilege(cs0, emu.SegCache{}, true) }
	}
	if err := enter(); err != nil {
		return err
	}
	return e.SetRegs([]emu.Reg{emu.RSP, emu.RFLAGS, emu.RIP}, []uint64{newRSP, flags, handler})
}

// pageFaultCode rebuilds the #PF error code, which Unicorn does not report: P from a walk of the
// faulting address, W from the faulting instruction, I/D for fetches. Kernel mode, so U is 0.
func (u *unicornExec) pageFaultCode(cr2, rip uint64) uint64 {
	v := u.cur()
	var code uint64
	if _, _, _, err := v.Walker().Translate(cr2); err == nil {
		code |= 1 // present: a protection violation
	}
	if cr2 == rip {
		return code | 1<<4
	}
	insn := make([]byte, 15)
	if err := v.Read(rip, insn); err == nil {
		if in, err := x86asm.Decode(insn, 64); err == nil && writesMemory(in, cr2, u.eng) {
			code |= 2
		}
	}
	return code
}

// writesMemory guesses whether the faulting access was a write: the destination operand is
// memory, or a string instruction whose destination (RDI) is on the faulting page.
func writesMemory(in x86asm.Inst, cr2 uint64, e *emu.Engine) bool {
	switch in.Op {
	case x86asm.MOVSB, x86asm.MOVSW, x86asm.MOVSD, x86asm.MOVSQ, x86asm.STOSB, x86asm.STOSW, x86asm.STOSD, x86asm.STOSQ:
		rdi, _ := e.Reg(emu.RDI)
		return rdi&^0xfff == cr2&^0xfff
	case x86asm.CMP, x86asm.TEST, x86asm.PUSH, x86asm.PREFETCHT0, x86asm.PREFETCHNTA, x86asm.PREFETCHW:
		return false
	}
	_, isMem := in.Args[0].(x86asm.Mem)
	return isMem
}
