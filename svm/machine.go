package svm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
	"unsafe"

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

// Options configure a Machine. Those at the top hold for either executor; Unicorn and KVM pick
// the executor and configure it.
type Options struct {
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
	// LeaveOpen: the caller resets the machine before every operation (ReadFile, ReadDir,
	// ReadRecords), so they leave their file open for the reset to drop. Files opened in one
	// operation without a reset accumulate.
	LeaveOpen bool
	// Unicorn configures the Unicorn executor. It is the default: nil here and in KVM means
	// Unicorn with default options.
	Unicorn *UnicornOptions
	// KVM, if set, runs the calls under KVM instead: the machine then has no engine and no
	// hooks (Engine is nil), and Intercept decides which accesses exit. At most one of Unicorn
	// and KVM may be set.
	KVM *KVMOptions
}

// Stats are a Machine's counters since it was opened.
type Stats struct {
	Syscalls     int
	Instructions uint64         // only with UnicornOptions.CountInstructions
	Exceptions   map[uint32]int // Unicorn only: exceptions delivered through the guest's IDT
	TSCReads     int
	Resets       int
	ResetPages   int // written RAM pages put back by resets (0 where all RAM is dropped)
	Blocked      int
	OverBudget   int
	Swaps        int // accesses given the guest's bytes at an SVM address (kernel data, struct pages)
	// LeftoverSwaps counts redirected reads whose after-read hook never came (the access faulted).
	LeftoverSwaps int
	// Under KVM only: exits to user space, accesses to memory without a slot (intercepted ranges),
	// instructions KVM could not emulate and were carried out here, time inside KVM_RUN loops.
	Exits, Trapped, Emulated int
	KVMTime                  time.Duration
}

// Machine is the SVM snapshot loaded into an executor: Unicorn, or KVM (Options.KVM). Its RAM is
// a private copy-on-write mapping of the snapshot file that the executor runs on directly: the
// snapshot is never written, and Reset drops every change.
// A Machine is not safe for concurrent use.
type Machine struct {
	snap *Snapshot
	opts Options
	exec executor // runs the calls; the rest of the Machine is the same for every executor
	ram  []byte   // MAP_PRIVATE mapping of ram.img; the executor runs on it directly
	// written finds the RAM pages an operation wrote, so Reset drops only those (nil: all).
	written *writtenPages
	wlog    *emu.WriteLog // the pages executed code wrote, on machines with memory hooks anyway
	base    []byte        // read-only shared mapping of ram.img: what Reset copies back
	phys    vmm.PhysView
	virt    *vmm.VirtView // the agent's address space (the kernel half is every process's)

	savedRegs []byte       // the agent's pt_regs as captured
	tscBase   time.Time    // when the virtual TSC was at Snapshot.TSC
	gate      *emu.MemGate // the after-read hooks of swapped-in values, open while one waits

	overlay *Overlay  // the guest whose RAM is mapped in, if any
	swaps   []swapped // redirected reads between their two hooks
	writes  []swapped // redirected writes waiting for FlushWrites
	curNR   int       // the system call running, for hooks that report it

	stats Stats
}

// Open loads a snapshot into a new executor: Unicorn, or KVM with Options.KVM.
func Open(snap *Snapshot, opts Options) (*Machine, error) {
	if opts.Unicorn != nil && opts.KVM != nil {
		return nil, errors.New("open SVM: Options.Unicorn and Options.KVM are both set")
	}
	m := &Machine{snap: snap, opts: opts, stats: Stats{Exceptions: map[uint32]int{}}}
	if err := m.mapRAM(); err != nil {
		return nil, err
	}
	if err := m.open(); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// open readies the agent's address space, opens the executor and loads the captured CPU.
func (m *Machine) open() error {
	var err error
	if m.virt, m.savedRegs, err = agentView("svm", m.phys, m.snap); err != nil {
		return err
	}
	openExec := openUnicornExec
	if m.opts.KVM != nil {
		openExec = openKVMExec
	}
	if err := openExec(m); err != nil {
		return err
	}
	m.tscBase = time.Now()
	return m.loadCPU()
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

// Close releases the executor and the RAM mapping, in that order.
func (m *Machine) Close() error {
	var err error
	if ov := m.overlay; ov != nil {
		if ov.image != nil {
			unix.Munmap(ov.image)
		}
		unix.Munmap(ov.guest)
	}
	if m.exec != nil {
		err = m.exec.close()
	}
	m.unmapRAM()
	return err
}

// Snapshot returns the snapshot the machine runs.
func (m *Machine) Snapshot() *Snapshot { return m.snap }

// Stats returns the counters.
func (m *Machine) Stats() Stats { return m.stats }

// RAM is the machine's physical memory (the private mapping the executor runs on).
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

// loadCPU puts the captured CPU state into the executor.
func (m *Machine) loadCPU() error { return m.exec.loadCPU() }

// Reset drops every change the injected calls made to memory and restores the captured CPU
// state: the machine is as freshly loaded (translated code stays cached).
func (m *Machine) Reset() error {
	if err := m.dropWrites(); err != nil {
		return fmt.Errorf("reset SVM RAM: %w", err)
	}
	m.swaps, m.writes = m.swaps[:0], m.writes[:0]
	m.pending()
	if err := m.exec.clearScratch(); err != nil {
		return fmt.Errorf("reset SVM: %w", err)
	}
	m.stats.Resets++
	if m.opts.OnReset != nil {
		m.opts.OnReset()
	}
	if m.overlay != nil {
		return m.applyOverlay()
	}
	// Reloading the CPU state flushes the executor's TLB: translations made through page tables
	// the calls changed must not outlive the reset that put those tables back.
	return m.loadCPU()
}

// pristine is the page at physical p as every operation starts with it: the guest's where the
// overlay maps guest RAM, else the snapshot's.
func (m *Machine) pristine(p uint64) []byte {
	if ov := m.overlay; ov != nil {
		for _, s := range ov.spans {
			if p >= s.Start && p < s.End {
				off, _ := ov.fileOffset(p)
				return ov.guest[off : off+4096]
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

// Syscall injects one system call and returns its return value (negative errno on failure, as
// the kernel returns it). It is refused unless the call is on the allow-list. A call that stops
// anywhere but its return gives a *StopError (see executor.run for the kinds).
func (m *Machine) Syscall(nr int, args ...uint64) (int64, error) {
	if err := checkCall(nr, args); err != nil {
		return 0, err
	}
	if err := placeCall(m.writeVirt, m.snap, m.savedRegs, nr, args); err != nil {
		return 0, err
	}
	if err := m.exec.enter(nr); err != nil {
		return 0, err
	}
	m.swaps = m.swaps[:0]
	m.pending()
	m.curNR = nr
	m.stats.Syscalls++
	if err := m.exec.run(nr); err != nil {
		var se *StopError
		if errors.As(err, &se) {
			if errors.Is(err, ErrBlocked) {
				m.stats.Blocked++
			} else if errors.Is(err, ErrBudget) {
				m.stats.OverBudget++
			}
		}
		// A call stopped midway leaves the kernel mid-schedule or with locks held: reset now, so
		// the caller's next arguments are written into a clean machine.
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

// Stop ends the current system call with a fault (from a hook of another package, e.g. a
// synchronous taint decision that cannot be carried out).
func (m *Machine) Stop(detail string) { m.exec.stop(ErrFault, detail) }

// Intercept makes the physical ranges absent from the VM: every access there exits, and trap
// carries it out (a read's answer or a write's target), or stops the call by returning an error.
// Pages of the ranges that the CPU reads by itself (page tables, descriptor tables, the TSS)
// cannot be absent: they stay mapped, unintercepted, and are returned. Call it before the first
// system call. Only KVM intercepts; on Unicorn it is an error (hooks go through Engine).
func (m *Machine) Intercept(ranges []PhysSpan, trap func(*Trapped) error) (kept []PhysSpan, err error) {
	return m.exec.intercept(ranges, trap)
}

// ExitsByReason counts the executor's exits to user space by reason, since the machine was
// opened (empty on Unicorn).
func (m *Machine) ExitsByReason() map[string]int { return m.exec.exits() }

// haltsIn writes the bytes the executor plants in RAM that fall in the page at p into page (a
// copy of it), for Unrestored: they are part of the state every call starts from.
func (m *Machine) haltsIn(p uint64, page []byte) {
	m.exec.plantedBytes(func(at uint64, b byte) {
		if at >= p && at < p+uint64(len(page)) {
			page[at-p] = b
		}
	})
}

// writeVirt writes into the SVM's memory at a virtual address of the agent's address space.
func (m *Machine) writeVirt(va uint64, data []byte) error {
	return writeVirtRAM(m.virt.Walker(), m.ram, va, data, m.wrote)
}

// ReadVirt reads the SVM's memory at a virtual address of the agent's address space.
func (m *Machine) ReadVirt(va uint64, buf []byte) error { return m.virt.Read(va, buf) }

// WriteVirt writes the SVM's memory at a virtual address of the agent's address space.
func (m *Machine) WriteVirt(va uint64, data []byte) error { return m.writeVirt(va, data) }

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
