package svm

// Unmodified programs in user mode. The agent execve()s the program (injected like any call; the
// kernel's exit path then IRETs to CPL 3 itself), and one uc_emu_start runs it to its exit:
//
//   - SYSCALL at CPL 3: Unicorn only calls the UC_HOOK_INSN hook and steps over the instruction,
//     so onUserSyscall makes the architectural transition (RCX, R11, RFLAGS &= ~FMASK, CS/SS from
//     STAR, CPL 0, RIP = LSTAR) and the kernel's own entry_SYSCALL_64 runs; its SYSRETQ or IRETQ
//     returns to CPL 3 natively.
//   - Exceptions at CPL 3 (demand paging, stack growth): Unicorn never goes through the IDT, so
//     deliver pushes the frame on TSS.RSP0 (or the gate's IST), switches to CPL 0 and jumps to
//     the handler; the kernel IRETQs.
//   - write and writev to descriptors 1 and 2 are captured here; exit and exit_group end the run.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"path"
	"strings"
	"syscall"
	"time"

	"golang.org/x/arch/x86/x86asm"

	"hybridbridge/emu"
	"hybridbridge/vmm"
)

const (
	sysWrite     = 1
	sysWritev    = 20
	sysSendfile  = 40
	sysExecve    = 59
	sysExit      = 60
	sysExitGroup = 231
	sysChdir     = 80
	sysIoctl     = 16
	sysClone     = 56
	sysFork      = 57
	sysVfork     = 58
	sysClone3    = 435
	sysStatfs    = 137
	sysFchdir    = 81
	// Linux's MSR_SYSCALL_MASK (syscall_init) and MSR_STAR (__USER32_CS<<48 | __KERNEL_CS<<32),
	// which the snapshot's CPU state does not carry.
	linuxFMASK = 0x257fd5
	linuxSTAR  = 0x0023001000000000
	negEINVAL  = 0xffffffffffffffea
	negENOTTY  = 0xffffffffffffffe7
)

// errExited ends a run at the program's exit.
var errExited = errors.New("program exited")

// execFailedRIP is where a failed execve returns to (see runProgram).
const execFailedRIP = 0x10

// ProgramRun is what a program run in user mode did.
type ProgramRun struct {
	Status         int    // exit status
	Stdout, Stderr []byte // what it wrote to descriptors 1 and 2
	Syscalls       int    // system calls that entered the kernel
	Faults         int    // exceptions delivered from user mode (page faults, mostly)
	Wall           time.Duration
	Instructions   uint64 // with UnicornOptions.CountInstructions
}

// userState is the program running in user mode, if any.
type userState struct {
	run    *ProgramRun
	lstar  uint64
	lastPF [2]uint64 // rip and cr2 of the last user page fault delivered, and its W bit
	lastW  bool
	cr3    uint64
	view   *vmm.VirtView // the address space of cr3
	paths  func(string) string
	// cwd is the program's working directory while it is known: "" once it changed it by a
	// descriptor (fchdir).
	cwd string
}

// DefaultProgramBudget is a program run's instruction limit unless it says otherwise: several
// times what busybox ps takes over 1,000 processes under Slow-Bridge (about 100 million).
const DefaultProgramBudget = 500_000_000

// Program is what RunProgram runs.
type Program struct {
	Path       string // the executable, in the SVM's file system
	Argv, Envp []string
	// Binary, if set, is written to Path (in the SVM's tmpfs) by injected calls before the exec:
	// the user's own static executable. Nothing of it outlives the run (the machine is reset).
	Binary []byte
	// Files are written before the exec as Binary is (e.g. the guest's /etc/passwd, for Paths to
	// send the program's lookups to).
	Files []File
	// Budget is the run's instruction limit; 0 takes DefaultProgramBudget.
	Budget uint64
	// Paths, if set, is asked about each absolute path (made lexically clean, relative ones joined
	// to the program's working directory while it is known) the kernel is about to walk for the
	// program, and returns the path to walk instead, or "" to leave it as it is. The program's
	// memory is untouched: the kernel's own copy of the name is rewritten.
	Paths func(path string) string
}

// File is a file RunProgram writes into the SVM's file system for the run.
type File struct {
	Path string
	Data []byte
	Mode uint32 // permission bits
}

// RunProgram execs p.Path in the agent and runs it in user mode until it exits. The program starts
// in the root directory. The machine is reset afterwards, whatever happened. A program that forks,
// sleeps or waits stops as ErrBlocked in the call that would; one that runs past its budget as
// ErrBudget; with Paths, one that reaches /proc/self by a path Paths did not rewrite (through a
// directory descriptor) as ErrFault, since /proc/self is the SVM agent, not a process of the
// guest. Needs UnicornOptions.UserMode.
func (m *Machine) RunProgram(p Program) (*ProgramRun, error) {
	u, ok := m.exec.(*unicornExec)
	if !ok || !u.opts.UserMode {
		return nil, errors.New("running a program needs a Unicorn machine opened with UserMode")
	}
	run, err := u.runProgram(p)
	// The program's system calls returned through the injected calls' return address while it
	// was not the end of the run, and code translated then goes on past it: an injected call
	// after would return to the agent's user code. Dropping the blocks there (uc_ctl's
	// remove-cache) is not enough on Unicorn 2.1.1, so all translated code goes: the next
	// operation translates again (about 70 ms).
	return run, errors.Join(err, u.eng.FlushCode(), m.Reset())
}

// prepare makes the agent what the program starts from: its working directory the root (the
// agent's is the views' procfs), the user's binary, if any, written to p.Path, and p.Files.
func (u *unicornExec) prepare(p Program) error {
	m := u.m
	va, err := m.putPath("/")
	if err != nil {
		return err
	}
	ret, err := m.Syscall(SysChdir, va)
	if err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	if _, err := check("chdir", "/", ret); err != nil {
		return err
	}
	// Without a vDSO the program asks the kernel for the time, which the SVM serves as the
	// guest's (the views' clock); the vDSO would read the SVM's own vvar page, with RDTSC at
	// user level, which the clock redirect does not reach.
	vdso, err := m.kernelAddr(vdsoSwitch)
	if err != nil {
		return err
	}
	if err := m.writeVirt(vdso, []byte{0, 0, 0, 0}); err != nil {
		return fmt.Errorf("turn the vDSO off: %w", err)
	}
	files := p.Files
	if p.Binary != nil {
		files = append([]File{{Path: p.Path, Data: p.Binary, Mode: 0o755}}, files...)
	}
	for _, f := range files {
		if err := writeFile(m, f); err != nil {
			return fmt.Errorf("create %s in the SVM: %w", f.Path, err)
		}
	}
	return nil
}

// writeFile creates (or truncates) f.Path and writes f.Data to it by injected calls.
func writeFile(m *Machine, f File) error {
	va, err := m.putPath(f.Path)
	if err != nil {
		return err
	}
	const oWRONLY, oCREAT, oTRUNC = 0o1, 0o100, 0o1000
	dirfd := int64(atFDCWD)
	ret, err := m.Syscall(SysOpenat, uint64(dirfd), va, oWRONLY|oCREAT|oTRUNC|oCLOEXEC, uint64(f.Mode))
	if err != nil {
		return err
	}
	fd, err := check("openat", f.Path, ret)
	if err != nil {
		return err
	}
	buf, size := m.dataBuf()
	for rest := f.Data; len(rest) > 0; {
		n := min(len(rest), size)
		if err := m.writeVirt(buf, rest[:n]); err != nil {
			return err
		}
		ret, err := m.Syscall(SysWrite, uint64(fd), buf, uint64(n))
		if err != nil {
			return fmt.Errorf("write: %w", err)
		}
		if ret, err = check("write", f.Path, ret); err != nil {
			return err
		}
		if ret == 0 {
			return errors.New("write: no progress")
		}
		rest = rest[ret:]
	}
	return closeFD(m, int(fd))
}

func (u *unicornExec) runProgram(p Program) (*ProgramRun, error) {
	m, e := u.m, u.eng
	path, argv, envp, budget := p.Path, p.Argv, p.Envp, p.Budget
	if err := u.prepare(p); err != nil {
		return nil, err
	}
	// path, argv and envp, then the two pointer arrays, in the agent's data area.
	base, size := m.dataBuf()
	var blob []byte
	put := func(s string) uint64 {
		at := base + uint64(len(blob))
		blob = append(append(blob, s...), 0)
		return at
	}
	pathVA := put(path)
	var av, ev []uint64
	for _, a := range argv {
		av = append(av, put(a))
	}
	for _, a := range envp {
		ev = append(ev, put(a))
	}
	for len(blob)%8 != 0 {
		blob = append(blob, 0)
	}
	array := func(p []uint64) uint64 {
		at := base + uint64(len(blob))
		for _, x := range append(p, 0) {
			blob = binary.LittleEndian.AppendUint64(blob, x)
		}
		return at
	}
	argvVA, envpVA := array(av), array(ev)
	if len(blob) > size {
		return nil, fmt.Errorf("%s: arguments and environment take %d bytes, at most %d", path, len(blob), size)
	}
	if err := m.writeVirt(base, blob); err != nil {
		return nil, err
	}
	// A failed execve returns to the agent: its saved RIP is replaced by one below mmap_min_addr,
	// so that the return faults there and the run stops with execve's error, instead of running
	// the agent's own code.
	saved := bytes.Clone(m.savedRegs)
	binary.LittleEndian.PutUint64(saved[ptIP:], execFailedRIP)
	if err := placeCall(m.writeVirt, m.snap, saved, sysExecve, []uint64{pathVA, argvVA, envpVA}); err != nil {
		return nil, err
	}
	if err := u.enter(sysExecve); err != nil {
		return nil, err
	}
	lstar := m.snap.Symbols["entry_SYSCALL_64"]
	if err := errors.Join(
		e.SetMSR(emu.MSRSTAR, linuxSTAR),
		e.SetMSR(emu.MSRLSTAR, lstar),
		e.SetMSR(emu.MSRSyscallMask, linuxFMASK),
	); err != nil {
		return nil, fmt.Errorf("system call MSRs: %w", err)
	}
	run := &ProgramRun{Status: -1}
	u.user = &userState{run: run, lstar: lstar, paths: p.Paths, cwd: "/"}
	defer func() { u.user = nil }()
	m.curNR = sysExecve
	m.stats.Syscalls++
	run.Syscalls++
	if budget == 0 {
		budget = DefaultProgramBudget
	}
	u.budget.Reset(budget)
	insns := m.stats.Instructions
	start := time.Now()
	// The return address is never reached: the program ends by exit_group, or a stop.
	runErr := e.Start(m.snap.Symbols["do_syscall_64"], 1, 0)
	run.Wall = time.Since(start)
	if u.trace != nil {
		u.trace.Drain(func(evs []emu.Event) { m.stats.Instructions += uint64(len(evs)) })
	}
	run.Instructions = m.stats.Instructions - insns
	rip, _ := e.Reg(emu.RIP)
	stop := func(err error, detail string) error {
		se := &StopError{Err: err, NR: m.curNR, RIP: rip, Detail: detail}
		if m.opts.Symbols != nil && rip>>63 == 1 {
			se.Symbol = m.opts.Symbols.Format(rip)
		}
		return fmt.Errorf("%s: %w", path, se)
	}
	var errno *Errno
	switch {
	case errors.Is(u.stopErr, errExited):
		return run, nil
	case errors.As(u.stopErr, &errno):
		return run, fmt.Errorf("%s: %w", path, errno)
	case u.stopErr != nil:
		return run, stop(u.stopErr, u.stopDetail)
	case runErr != nil:
		return run, stop(ErrFault, runErr.Error())
	default:
		return run, stop(ErrBudget, fmt.Sprintf("about %d instructions", budget))
	}
}

// cur is the address space the CPU runs in now: the agent's, or after execve the program's (the
// agent's page tables are gone and their pages may be reused).
func (u *unicornExec) cur() *vmm.VirtView {
	if u.user == nil {
		return u.m.virt
	}
	cr3, err := u.eng.Reg(emu.CR3)
	if err != nil {
		return u.m.virt
	}
	cr3 &^= 0xfff
	if u.user.view == nil || cr3 != u.user.cr3 {
		w, err := vmm.NewWalker(u.m.phys, cr3, 4)
		if err != nil {
			return u.m.virt
		}
		u.user.view, u.user.cr3 = vmm.NewVirtView("program", w), cr3
	}
	return u.user.view
}

func (u *unicornExec) curWrite(va uint64, data []byte) error {
	return writeVirtRAM(u.cur().Walker(), u.m.ram, va, data, u.m.wrote)
}

// onUserSyscall is the UC_HOOK_INSN(SYSCALL) hook. RIP is the SYSCALL instruction; Unicorn adds
// its length (2) when the hook returns, so the kernel's entry is set at LSTAR - 2.
func (u *unicornExec) onUserSyscall() {
	m, e := u.m, u.eng
	var r [7]uint64
	if err := e.Regs([]emu.Reg{emu.RIP, emu.RFLAGS, emu.RAX, emu.RDI, emu.RSI, emu.RDX, emu.CS}, r[:]); err != nil {
		u.stop(ErrFault, "system call hook: "+err.Error())
		return
	}
	rip, rflags, nr, a0, a1, a2, cs := r[0], r[1], int(r[2]), r[3], r[4], r[5], r[6]
	if u.user == nil || cs&3 != 3 {
		u.stop(ErrFault, fmt.Sprintf("SYSCALL at %#x with CS %#x outside a program", rip, cs))
		return
	}
	run := u.user.run
	m.curNR = nr
	switch {
	case nr == sysChdir || nr == sysFchdir:
		// Relative paths are rewritten (Program.Paths) only while the directory is the root the
		// run started in; elsewhere they resolve as the kernel resolves them.
		u.user.cwd = ""
	case nr == sysExit || nr == sysExitGroup:
		run.Status = int(a0 & 0xff)
		u.stop(errExited, "")
		return
	case (nr == sysWrite || nr == sysWritev) && (a0 == 1 || a0 == 2):
		n, err := u.capture(nr, a0, a1, a2)
		if err != nil {
			u.stop(ErrFault, fmt.Sprintf("%s to %d: %v", SyscallName(nr), a0, err))
			return
		}
		u.served(nr, n)
		return
	case nr == sysStatfs && u.user.paths != nil:
		// Only /proc is the guest's: a file system's usage elsewhere would be the SVM's own,
		// shown as if it were the guest's (df).
		p, err := u.cur().ReadCString(a0, pathMax-1)
		if err != nil {
			u.stop(ErrFault, fmt.Sprintf("statfs: its path: %v", err))
			return
		}
		if u.user.paths(path.Clean(p)) == "" {
			u.stop(ErrFault, fmt.Sprintf("statfs %q: outside /proc a program sees the SVM's own file systems, not the guest's", p))
			return
		}
	case nr == sysClone || nr == sysFork || nr == sysVfork || nr == sysClone3:
		// Nothing would run the new task (the SVM runs one call at a time, with no scheduler
		// ticks), and the parent would wait for it forever.
		u.stop(ErrBlocked, "the program forks or starts a thread ("+SyscallName(nr)+"): a program runs as one task in the SVM")
		return
	case nr == sysIoctl && (a0 == 1 || a0 == 2):
		// The captured output is no terminal (the agent's descriptors are the SVM's console):
		// programs format it as for a pipe, as the guest's tools do for the command channel.
		u.served(nr, negENOTTY)
		return
	case nr == sysSendfile && (a0 == 1 || a0 == 2):
		// Output is captured by write: sendfile's callers fall back to read and write.
		u.served(nr, negEINVAL)
		return
	}
	run.Syscalls++
	m.stats.Syscalls++
	// SYSCALL in long mode: RCX = the next RIP, R11 = RFLAGS without RF, RFLAGS &= ~FMASK,
	// CS = STAR[47:32], SS = CS + 8, CPL 0, RIP = LSTAR.
	cs0, ss0 := emu.SyscallCS, emu.SyscallSS
	cs0.Selector, ss0.Selector = uint32(linuxSTAR>>32)&0xfffc, uint32(linuxSTAR>>32)&0xfffc+8
	if err := errors.Join(
		e.SetRegs([]emu.Reg{emu.RCX, emu.R11}, []uint64{rip + 2, rflags &^ (1 << 16)}),
		e.SetPrivilege(cs0, ss0, false),
		e.SetRegs([]emu.Reg{emu.RFLAGS, emu.RIP}, []uint64{rflags &^ (linuxFMASK | 1<<16), u.user.lstar - 2}),
	); err != nil {
		u.stop(ErrFault, "system call entry: "+err.Error())
	}
}

// served returns ret from the system call nr that was served here, without the kernel.
func (u *unicornExec) served(nr int, ret uint64) {
	if err := u.eng.SetReg(emu.RAX, ret); err != nil {
		u.stop(ErrFault, fmt.Sprintf("%s: return value: %v", SyscallName(nr), err))
	}
}

// capture serves write (buf, n) or writev (iov, count) to descriptor fd 1 or 2, returning the
// bytes written.
func (u *unicornExec) capture(nr int, fd, a1, a2 uint64) (uint64, error) {
	run, v := u.user.run, u.cur()
	out := &run.Stdout
	if fd == 2 {
		out = &run.Stderr
	}
	const maxOutput = 64 << 20
	add := func(va, n uint64) error {
		if uint64(len(*out))+n > maxOutput {
			return fmt.Errorf("more than %d MiB of output", maxOutput>>20)
		}
		b := make([]byte, n)
		if err := v.Read(va, b); err != nil {
			return err
		}
		*out = append(*out, b...)
		return nil
	}
	if nr == sysWrite {
		return a2, add(a1, a2)
	}
	var total uint64
	for i := range a2 {
		var iov [16]byte
		if err := v.Read(a1+16*i, iov[:]); err != nil {
			return 0, err
		}
		n := binary.LittleEndian.Uint64(iov[8:])
		if err := add(binary.LittleEndian.Uint64(iov[:]), n); err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

// userException counts an exception raised at CPL 3, or stops the run at the fault a failed
// execve returns into (runProgram), with execve's error; stopped says so.
func (u *unicornExec) userException(vector uint32, rip uint64) (stopped bool) {
	if rip == execFailedRIP && vector == 14 {
		ax, err := u.eng.Reg(emu.RAX)
		if err != nil {
			u.stop(ErrFault, "execve failed, and its error cannot be read: "+err.Error())
			return true
		}
		u.stop(&Errno{Call: "execve", Err: syscall.Errno(-int64(ax))}, "")
		return true
	}
	u.user.run.Faults++
	return false
}

// userFaultCode rebuilds a user page fault's error code (the caller adds U), which Unicorn does
// not report: P from a walk of the current page tables, W from the instruction (implicit stack
// writes included), I for fetches. A fault repeated at the same RIP and address right after its
// delivery had its W bit wrong (the kernel found nothing to do): it is flipped.
func (u *unicornExec) userFaultCode(cr2, rip uint64) uint64 {
	var code uint64
	v := u.cur()
	if _, _, fl, err := v.Walker().Translate(cr2); err == nil && fl&vmm.FlagUser != 0 {
		code |= 1
	}
	if cr2 >= rip && cr2 < rip+16 {
		return code | 1<<4
	}
	w := false
	insn := make([]byte, 15)
	if err := v.Read(rip, insn); err == nil {
		if in, err := x86asm.Decode(insn, 64); err == nil {
			switch in.Op {
			case x86asm.PUSH, x86asm.CALL, x86asm.PUSHF, x86asm.PUSHFQ, x86asm.ENTER:
				w = true
			case x86asm.BT, x86asm.NOP:
			default:
				w = writesMemory(in, cr2, u.eng)
			}
		}
	}
	if u.user.lastPF == [2]uint64{rip, cr2} && u.user.lastW == w && code&1 != 0 {
		w = !w
	}
	u.user.lastPF, u.user.lastW = [2]uint64{rip, cr2}, w
	if w {
		code |= 2
	}
	return code
}

// pathEntries are the kernel functions every path a program names passes through, with the
// kernel's copy of the name (a struct filename, whose first field points to the string in a
// names_cache buffer of PATH_MAX bytes): do_filp_open (open, exec) and filename_lookup (stat,
// readlink, access, chdir, ...). Both take the directory descriptor first.
var pathEntries = []string{"do_filp_open", "filename_lookup"}

// vdsoSwitch is the kernel's int that makes exec map the vDSO (the vdso= boot argument).
const vdsoSwitch = "vdso64_enabled"

// selfLinks are procfs's /proc/self and /proc/thread-self: followed for a program, they name
// the SVM agent's pid among the guest's processes.
var selfLinks = []string{"proc_self_get_link", "proc_thread_self_get_link"}

// kernelPrint is where every kernel message is made.
const kernelPrint = "vprintk_emit"

// programSymbols are the kernel symbols a program run needs, which snapshots record.
var programSymbols = append(append([]string{vdsoSwitch, kernelPrint, "__warn_printk"}, pathEntries...), selfLinks...)

// hookPaths installs the hooks that rewrite a program's paths (Program.Paths), stop it at
// /proc/self and at a kernel message. They do nothing outside a program.
func (u *unicornExec) hookPaths() error {
	for _, name := range pathEntries {
		if err := u.hookEntry(name, func() {
			if u.user != nil && u.user.paths != nil {
				u.rewritePath()
			}
		}); err != nil {
			return err
		}
	}
	// Every kernel message is stopped where it is made, before its printing runs on the SVM's
	// log and console: a warning (e.g. an RTNL assertion failed) by its own format, which
	// __warn_printk takes first and vprintk_emit fourth.
	for _, p := range []struct {
		name string
		fmt  emu.Reg
	}{{"__warn_printk", emu.RDI}, {kernelPrint, emu.RCX}} {
		if err := u.hookEntry(p.name, func() {
			if u.user != nil {
				u.stop(ErrFault, "the SVM's kernel printed a message while serving the program, on a path it does not expect: "+u.kernelFormat(p.fmt))
			}
		}); err != nil {
			return err
		}
	}
	for _, name := range selfLinks {
		if err := u.hookEntry(name, func() {
			// Without Paths /proc is the SVM's own, and so is its self.
			if u.user != nil && u.user.paths != nil {
				u.stop(ErrFault, "the program reached /proc/self through a directory descriptor or a link: "+
					"it would name the SVM's agent among the guest's processes (open it by its absolute path, which reads the guest's init, as the views do)")
			}
		}); err != nil {
			return err
		}
	}
	return nil
}

// hookEntry calls fn at the entry of the kernel function name.
func (u *unicornExec) hookEntry(name string, fn func()) error {
	addr, err := u.m.kernelAddr(name)
	if err != nil {
		return fmt.Errorf("program hooks: %w", err)
	}
	_, err = u.eng.HookCode(addr, addr, func(uint64, uint32) { fn() })
	return err
}

// rewritePath runs at a path entry: RDI is the directory descriptor, RSI the struct filename.
func (u *unicornExec) rewritePath() {
	var r [2]uint64
	if err := u.eng.Regs([]emu.Reg{emu.RDI, emu.RSI}, r[:]); err != nil {
		u.stop(ErrFault, "path hook: "+err.Error())
		return
	}
	dfd, fname := int32(r[0]), r[1]
	v := u.cur()
	name, err := v.ReadUint64(fname)
	if err != nil {
		u.stop(ErrFault, fmt.Sprintf("path hook: struct filename at %#x: %v", fname, err))
		return
	}
	// The name is inline after the struct (a short name) or fills a names_cache buffer of its own.
	room := uint64(pathMax)
	if name > fname && name-fname < 64 {
		room -= name - fname
	}
	orig, err := v.ReadCString(name, int(room)-1)
	if err != nil {
		u.stop(ErrFault, fmt.Sprintf("path hook: name at %#x: %v", name, err))
		return
	}
	if orig == "" {
		return // the kernel's ENOENT
	}
	abs := orig
	if abs[0] != '/' {
		if dfd != atFDCWD || u.user.cwd == "" {
			return
		}
		abs = u.user.cwd + "/" + abs
	}
	to := u.user.paths(path.Clean(abs))
	if to == "" || to == orig {
		return
	}
	if uint64(len(to)) >= room {
		u.stop(ErrFault, fmt.Sprintf("path %s, rewritten to %s, is longer than the kernel's buffer", orig, to))
		return
	}
	if err := u.curWrite(name, append([]byte(to), 0)); err != nil {
		u.stop(ErrFault, fmt.Sprintf("path hook: rewrite %s: %v", orig, err))
	}
}

// kernelFormat is the format string in register r at a message's entry, quoted, without the level
// prefix.
func (u *unicornExec) kernelFormat(r emu.Reg) string {
	va, err := u.eng.Reg(r)
	if err != nil {
		return "(format unreadable: " + err.Error() + ")"
	}
	f, err := u.cur().ReadCString(va, 160)
	if err != nil && !errors.Is(err, vmm.ErrNoTerminator) {
		return "(format unreadable: " + err.Error() + ")"
	}
	for len(f) >= 2 && f[0] == 1 {
		f = f[2:] // KERN_SOH and the level
	}
	return fmt.Sprintf("%q", strings.TrimSpace(f))
}
