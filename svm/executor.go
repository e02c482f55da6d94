package svm

// executor runs injected system calls on a Machine's RAM: Unicorn (exec_unicorn.go) or KVM
// (kvm.go). The Machine owns everything they share — the RAM mapping, the overlay and grafts,
// placing a call's arguments, resets, the counters — and calls the executor only for what
// differs: the CPU, the run loop, and how accesses to chosen memory reach Go code.
//
// A call goes enter, run; after a stop the Machine resets (restores RAM pages, the overlay's
// entries), which ends in loadCPU. Executors count into the Machine's Stats directly.
type executor interface {
	// loadCPU puts the captured CPU state into the executor, after the Machine restored or
	// changed RAM (open, reset, overlay, grafts): translations cached from page tables that
	// changed must not survive it, and anything the executor keeps in RAM (KVM's planted
	// halts) is written again, since a reset drops it with every other write.
	loadCPU() error
	// enter readies the executor for the call nr whose arguments the Machine has placed in the
	// agent's pt_regs: do_syscall_64(regs, nr) with the captured stack. An error means the call
	// never started, and counts nothing.
	enter(nr int) error
	// run runs the entered call to the snapshot's return address. nil means it returned there,
	// its result in pt_regs. Otherwise the error is a *StopError wrapping one of:
	//   - ErrBlocked: the call reached a blocking entry (Options.Blocking);
	//   - ErrBudget: it ran past UnicornOptions.Budget, or KVMOptions.Timeout or MaxExits;
	//   - ErrFault: an oops or panic entry, an access or exit the executor cannot handle, or a
	//     hook's or trap's own stop (Machine.Stop, an intercept trap's error);
	//   - ErrUnsupported: KVM met an instruction it cannot carry out (Unicorn never returns it);
	// or a plain error when the executor itself failed (a vCPU register ioctl). Either way the
	// kernel may be mid-call, and the Machine resets before returning it.
	run(nr int) error
	// stop ends the running call with err (from a hook called during run). The KVM executor
	// runs no Go code inside a call except its trap handler, which stops it by returning an
	// error, so there stop does nothing.
	stop(err error, detail string)
	// clearScratch zeroes the memory the executor gives the MMIO pages (scratchPages), at every
	// reset, so no call reads what an earlier one left there. KVM gives them none: its reads
	// there return zeros anyway.
	clearScratch() error
	// intercept makes accesses to the physical ranges stop and go to trap (Machine.Intercept).
	// The Unicorn executor cannot: its accesses reach Go through memory hooks installed on
	// Machine.Engine, and it returns an error.
	intercept(ranges []PhysSpan, trap func(*Trapped) error) (kept []PhysSpan, err error)
	// plantedBytes calls put with every byte the executor keeps written into RAM (KVM's
	// halts), by physical address: they are part of the state every call starts from.
	plantedBytes(put func(at uint64, b byte))
	// exits counts exits to user space by reason (empty for Unicorn, which has none).
	exits() map[string]int
	// close releases the executor, before the RAM it runs on is unmapped.
	close() error
}
