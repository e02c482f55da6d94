package svm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/arch/x86/x86asm"

	"hybridbridge/guest"
	"hybridbridge/guest/gdbstub"
	"hybridbridge/kaslr"
	"hybridbridge/vmm"
)

// ProcRoot is where the SVM mounts the procfs instance that views read (see Build).
const ProcRoot = "/hbproc"

// Marker is what the agent passes as getppid's first argument (svm/agent/hbagent.c).
const Marker = 0x6879627269646765

const nrGetppid = 110

// pt_regs slots (arch/x86/include/asm/ptrace.h, the layout the syscall entry pushes; part of the
// kernel's ABI with its own entry code, stable across versions).
const (
	ptR15 = iota * 8
	ptR14
	ptR13
	ptR12
	ptBP
	ptBX
	ptR11
	ptR10
	ptR9
	ptR8
	ptAX
	ptCX
	ptDX
	ptSI
	ptDI
	ptOrigAX
	ptIP
	ptCS
	ptFlags
	ptSP
	ptSS
	ptSize
)

// BuildOptions configures Build.
type BuildOptions struct {
	CacheDir string // the setup's cache (symbols, images)
	RunDir   string // where the build's QEMU guests keep their sockets
	// OutDir is the snapshot's folder; default SnapshotDir(CacheDir, kernel id).
	OutDir string
	// GVMMaxMiB is the largest guest RAM the snapshot will serve (default 1024).
	GVMMaxMiB int
	// Progress, if set, receives the stage and the time since the build started.
	Progress func(stage string, elapsed time.Duration)
	// KeepSymbols are kernel symbols the snapshot records besides those the executor needs: the
	// names callers will give in Options (Blocking) without a symbol table of their own. The
	// kernel must have each.
	KeepSymbols []string
	// Layout, if set, is a KASLR layout (a guest's: bridge.GuestLayout) the SVM boots into
	// instead of nokaslr's: its kernel image at the same physical and virtual addresses and
	// the same direct-map, vmalloc and struct-page bases. The snapshot records
	// it (Snapshot.KASLR); its default folder is LayoutSnapshotDir.
	Layout *kaslr.Layout
}

// Build boots the secure VM under QEMU, stops its agent at system-call entry and saves the
// snapshot into the cache, replacing any older one for the same kernel.
func Build(ctx context.Context, a *guest.Assets, opt BuildOptions) (*Snapshot, error) {
	start := time.Now()
	report := func(stage string) {
		if opt.Progress != nil {
			opt.Progress(stage, time.Since(start))
		}
	}
	if opt.GVMMaxMiB == 0 {
		opt.GVMMaxMiB = 1024
	}
	if opt.GVMMaxMiB < 128 || opt.GVMMaxMiB > maxGVMMiB {
		return nil, fmt.Errorf("largest guest %d MiB out of range: 128 MiB to %d GiB", opt.GVMMaxMiB, maxGVMMiB>>10)
	}
	kernelID, err := a.KernelID()
	if err != nil {
		return nil, err
	}
	img, err := guest.BuildSVMImage(a)
	if err != nil {
		return nil, fmt.Errorf("SVM image: %w", err)
	}
	guestProgress := func(stage string, _ time.Duration) { report(stage) }
	gvmMax := uint64(opt.GVMMaxMiB) << 20
	var layoutSteer *layoutBoot
	if opt.Layout != nil {
		report("reading the kernel's relocations")
		if layoutSteer, err = openLayoutBoot(img.Kernel, *opt.Layout, gvmMax, report); err != nil {
			return nil, err
		}
	}

	// Boot 1: where does the kernel image sit physically? The reserved ranges must end at it and
	// resume right after it. Its symbols are the build's nokaslr ones.
	report("probing the kernel's physical placement")
	syms, kstart, kend, err := probeKernel(ctx, a, img, opt.RunDir, guestProgress)
	if err != nil {
		return nil, fmt.Errorf("probe boot: %w", err)
	}
	svmSyms := syms
	if layoutSteer != nil {
		if kstart, kend, err = layoutSteer.place(syms, kstart, kend); err != nil {
			return nil, err
		}
		svmSyms = svmSymbols(syms, opt.Layout.TextOffset)
	}
	kept, err := snapshotSymbols(svmSyms, opt.KeepSymbols)
	if err != nil {
		return nil, err
	}
	layout := planLayout(gvmMax, kstart, kend)

	// Boot 2: the SVM itself.
	gdbSock := filepath.Join(opt.RunDir, "svm-build.gdb")
	_ = os.Remove(gdbSock)
	defer os.Remove(gdbSock)
	report("booting the SVM")
	steer := &steering{gdbSock: gdbSock, syms: svmSyms, textPhys: kstart, layout: layoutSteer, report: report}
	g, err := bootSVM(ctx, img, layout, opt.RunDir, gdbSock, steer.steer, guestProgress)
	if err != nil {
		return nil, fmt.Errorf("SVM boot: %w", err)
	}
	defer g.Stop(context.WithoutCancel(ctx))

	snap := &Snapshot{KernelID: kernelID, Release: a.Release, Append: g.Meta.Append, Layout: layout, KeptImage: mergeSpans(steer.kept)}
	if layoutSteer != nil {
		l := *opt.Layout
		snap.KASLR = &l
		snap.relocs = &layoutSteer.bz.Relocs
		snap.Append = withoutNokaslr(g.Meta.Append)
	}
	if snap.Banner, err = bootBanner(g.ConsoleLog()); err != nil {
		return nil, err
	}
	report("checking the SVM's memory layout")
	if err := checkMemory(ctx, g, snap); err != nil {
		return nil, err
	}
	if layoutSteer != nil {
		if err := layoutSteer.check(g, svmSyms); err != nil {
			return nil, err
		}
	}
	if snap.StructPage, err = readStructPageSize(g, svmSyms, snap.Layout.KernelStart); err != nil {
		return nil, err
	}
	if err := mountViewsProc(ctx, g); err != nil {
		return nil, err
	}
	report("starting the agent")
	if snap.Agent, err = startAgent(ctx, g); err != nil {
		return nil, err
	}
	if err := recordGroundTruth(ctx, g, snap); err != nil {
		return nil, err
	}
	if err := shadowSVMProc(ctx, g); err != nil {
		return nil, err
	}

	report("stopping the agent at system-call entry")
	if err := capture(ctx, gdbSock, svmSyms, snap); err != nil {
		return nil, err
	}
	snap.Symbols = kept
	if snap.TSCSites, err = findTSCSites(ctx, gdbSock, svmSyms); err != nil {
		return nil, err
	}

	report("copying SVM memory")
	dir := opt.OutDir
	switch {
	case dir != "":
	case opt.Layout != nil:
		dir = LayoutSnapshotDir(opt.CacheDir, kernelID, *opt.Layout)
	default:
		dir = SnapshotDir(opt.CacheDir, kernelID)
	}
	if err := writeSnapshot(g, snap, dir, start); err != nil {
		return nil, err
	}
	report("done")
	return snap, nil
}

// bootSVM boots the SVM image with the layout's RAM and reserved ranges, and a gdbstub on
// gdbSock. QEMU starts stopped, and steer steers the boot (steering).
func bootSVM(ctx context.Context, img *guest.Image, l Layout, runDir, gdbSock string, steer func(context.Context, *guest.Guest) error, progress func(string, time.Duration)) (*guest.Guest, error) {
	svmImg := *img
	svmImg.Append = img.Append + l.kernelArgs()
	// Steering needs a decompressor that neither randomises nor relocates: the SVM's kernel lies
	// at its link addresses, or where a layout's steering moved it.
	if !slices.Contains(strings.Fields(svmImg.Append), guest.NoKASLR) {
		svmImg.Append += " " + guest.NoKASLR
	}
	return guest.Start(ctx, guest.Config{
		Name: "svm-build", MemMiB: int(l.RAMSize >> 20), Image: &svmImg, RunDir: runDir,
		ExtraArgs: []string{"-gdb", "unix:" + gdbSock + ",server=on,wait=off", "-S"},
		Progress:  progress,
		Started:   steer,
	})
}

// checkMemory checks that the booted SVM keeps out of the ranges reserved for the guest and
// gave none of its image to its page allocator, and records its System RAM.
func checkMemory(ctx context.Context, g *guest.Guest, snap *Snapshot) error {
	iomem, err := g.Exec(ctx, "cat /proc/iomem")
	if err != nil {
		return err
	}
	if snap.Layout.SystemRAM, err = checkLayout(string(iomem.Stdout), snap.Layout); err != nil {
		return err
	}
	freed, err := freedImagePages(ctx, g, snap.Layout)
	if err != nil {
		return err
	}
	if len(freed) > 0 {
		return fmt.Errorf("the SVM's kernel gave pages of its image to its page allocator although the boot was steered to keep them: %v", freed)
	}
	if len(snap.KeptImage) == 0 {
		return errors.New("the boot kept none of the kernel's image pages from the page allocator: did it free none?")
	}
	return nil
}

// readStructPageSize is structPageSize on the booted SVM's memory.
func readStructPageSize(g *guest.Guest, syms *vmm.Symbols, kernelStart uint64) (uint64, error) {
	mem, err := g.Memory()
	if err != nil {
		return 0, err
	}
	defer mem.Close()
	return structPageSize(mem, syms, kernelStart)
}

// startAgent starts the agent in the SVM and returns what it reports on the console. Its working
// directory is the views' procfs (ProcRoot): a guest file is read by a path relative to it
// (AgentDirPath), so that no lookup goes through the SVM's own root while the dentry hash is the
// guest's.
func startAgent(ctx context.Context, g *guest.Guest) (Agent, error) {
	if res, err := g.Exec(ctx, "cd "+ProcRoot+" && hbagent </dev/null >/dev/console 2>&1 &"); err != nil || res.Status != 0 {
		return Agent{}, fmt.Errorf("start agent: %v %v", err, res)
	}
	return waitAgent(ctx, g.ConsoleLog())
}

// recordGroundTruth records what the snapshot is checked against: the SVM's processes at capture
// (for tests) and its clock just before it (for the executor's time).
func recordGroundTruth(ctx context.Context, g *guest.Guest, snap *Snapshot) error {
	// The shell globs /proc itself (no child), so only the shell's own pid is transient; it is
	// left out.
	res, err := g.Exec(ctx, "echo $$; cd /proc && echo [0-9]*")
	if err != nil {
		return err
	}
	if snap.PIDs, err = parsePIDs(string(res.Stdout)); err != nil {
		return err
	}
	if res, err = g.Exec(ctx, "cat /proc/uptime"); err != nil {
		return err
	}
	if f := strings.Fields(string(res.Stdout)); len(f) > 0 {
		snap.UptimeBeforeCapture, _ = strconv.ParseFloat(f[0], 64)
	}
	return nil
}

// mountViewsProc mounts, at ProcRoot, the procfs instance that views read, before the agent
// starts there.
func mountViewsProc(ctx context.Context, g *guest.Guest) error {
	// The SVM's /proc has cached dentries for its own processes (listing it creates one per
	// pid, and nothing reliably drops them): a guest process with the same pid would be found
	// there, bound to the SVM's task, instead of being looked up in the guest's pid namespace.
	// Views read a procfs instance mounted just before the agent starts and never used in the
	// SVM (the agent's working directory is its root, which lists nothing), whose dentry cache is
	// empty.
	res, err := g.Exec(ctx, "mkdir -p "+ProcRoot+" && mount -t proc proc "+ProcRoot)
	if err != nil {
		return fmt.Errorf("mount the views' procfs in the SVM: %w", err)
	}
	if res.Status != 0 {
		return fmt.Errorf("mount the views' procfs in the SVM: exit status %d: %s", res.Status, res.Stderr)
	}
	return nil
}

// shadowSVMProc bind-mounts the views' procfs over the SVM's /proc, last before the capture, so
// that nothing in the SVM walks it after: a program run in the SVM (Machine.RunProgram) that
// reaches /proc by any path, not only the ones Program.Paths rewrites, finds the guest's
// processes, never the SVM's own. -n: mount reads and writes no mount table (reading
// /proc/mounts would create the views' procfs a dentry for mount's own pid).
func shadowSVMProc(ctx context.Context, g *guest.Guest) error {
	res, err := g.Exec(ctx, "mount -n -o bind "+ProcRoot+" /proc")
	if err != nil {
		return fmt.Errorf("mount the views' procfs over the SVM's /proc: %w", err)
	}
	if res.Status != 0 {
		return fmt.Errorf("mount the views' procfs over the SVM's /proc: exit status %d: %s", res.Status, res.Stderr)
	}
	return nil
}

// snapshotSymbols picks from syms the addresses the snapshot keeps: the executor's (Load checks
// the required ones), and the callers' keep, which must all be there.
func snapshotSymbols(syms *vmm.Symbols, keep []string) (map[string]uint64, error) {
	kept := map[string]uint64{}
	for _, name := range slices.Concat(requiredSymbols, faultEntries, programSymbols, []string{"entry_SYSCALL_64_after_hwframe", "init_task", "init_top_pgt", "_edata", "__bss_start", "__bss_stop"}) {
		if addr, ok := syms.Addr(name); ok {
			kept[name] = addr
		}
	}
	for _, name := range keep {
		addr, ok := syms.Addr(name)
		if !ok {
			return nil, fmt.Errorf("keep symbol %s: the kernel has none", name)
		}
		kept[name] = addr
	}
	return kept, nil
}

// writeSnapshot copies the SVM's RAM and saves snap into dir, replacing what was there; the
// build time counts from start.
func writeSnapshot(g *guest.Guest, snap *Snapshot, dir string, start time.Time) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".build-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	ramPath, err := g.RAMPath()
	if err != nil {
		return err
	}
	if err := copySparse(ramPath, filepath.Join(tmp, ramFile), snap.Layout.RAMRanges()); err != nil {
		return fmt.Errorf("copy SVM RAM: %w", err)
	}
	snap.CreatedAt = time.Now().UTC()
	snap.BuildTimeS = time.Since(start).Seconds()
	if err := snap.save(tmp, dir); err != nil {
		return fmt.Errorf("save snapshot: %w", err)
	}
	return nil
}

// probeKernel boots the SVM image plainly to read the kernel's symbols and translate its first
// and last address to physical through the guest's own page tables.
func probeKernel(ctx context.Context, a *guest.Assets, img *guest.Image, runDir string, progress func(string, time.Duration)) (*vmm.Symbols, uint64, uint64, error) {
	g, err := guest.Start(ctx, guest.Config{Name: "svm-probe", MemMiB: 256, Image: img, RunDir: runDir, Progress: progress})
	if err != nil {
		return nil, 0, 0, err
	}
	defer g.Stop(context.WithoutCancel(ctx))
	k, err := g.OpenKernel(ctx, a.CacheDir)
	if err != nil {
		return nil, 0, 0, err
	}
	defer k.Close()
	phys := func(name string) (uint64, error) {
		va, ok := k.Syms.Addr(name)
		if !ok {
			return 0, fmt.Errorf("symbol %s missing", name)
		}
		pa, _, _, err := k.Virt.Walker().Translate(va)
		if err != nil {
			return 0, fmt.Errorf("translate %s: %w", name, err)
		}
		return pa, nil
	}
	text, err := phys("_text")
	if err != nil {
		return nil, 0, 0, err
	}
	// _end itself may be the first unmapped byte: translate the last byte of the image.
	endVA, ok := k.Syms.Addr("_end")
	if !ok {
		return nil, 0, 0, fmt.Errorf("symbol _end missing")
	}
	last, _, _, err := k.Virt.Walker().Translate(endVA - 1)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("translate _end-1: %w", err)
	}
	return k.Syms, text, last + 1, nil
}

const mib = 1 << 20

// kernelArgs renders the reserved ranges and the overlay's table pages as memmap=size$start
// arguments.
func (l Layout) kernelArgs() string {
	var b strings.Builder
	for _, r := range l.reservedAll() {
		fmt.Fprintf(&b, " memmap=%#x$%#x", r.End-r.Start, r.Start)
	}
	return b.String()
}

// checkLayout verifies from /proc/iomem that no System RAM of the SVM lies in a reserved range
// (beyond the partial page at a range's unaligned start), and returns the System RAM ranges.
func checkLayout(iomem string, l Layout) ([]PhysSpan, error) {
	var ram []PhysSpan
	for _, line := range strings.Split(iomem, "\n") {
		if strings.HasPrefix(line, " ") || !strings.HasSuffix(line, ": System RAM") {
			continue
		}
		span, _, _ := strings.Cut(line, " : ")
		lo, hi, ok := strings.Cut(span, "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if !ok || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("SVM /proc/iomem: bad line %q", line)
		}
		ram = append(ram, PhysSpan{start, end + 1})
	}
	if len(ram) == 0 {
		return nil, fmt.Errorf("SVM /proc/iomem lists no System RAM (is it readable?):\n%s", iomem)
	}
	for _, r := range ram {
		for _, res := range l.reservedAll() {
			lo := (res.Start + 4095) &^ 4095
			if r.Start < res.End && r.End > lo {
				return nil, fmt.Errorf("SVM memory layout wrong: System RAM %#x-%#x overlaps the range %#x-%#x reserved for the guest (kernel args:%s)",
					r.Start, r.End-1, res.Start, res.End-1, l.kernelArgs())
			}
		}
	}
	return ram, nil
}

var bannerLine = regexp.MustCompile(`Linux version [^\r\n]*`)

// bootBanner is the kernel banner as the SVM printed it on its console while booting.
func bootBanner(consoleLog string) (string, error) {
	data, err := os.ReadFile(consoleLog)
	if err != nil {
		return "", err
	}
	m := bannerLine.Find(data)
	if m == nil {
		return "", fmt.Errorf("the SVM's console shows no kernel banner (%s)", consoleLog)
	}
	return string(m), nil
}

var agentLine = regexp.MustCompile(`hbagent: pid (\d+) buffer 0x([0-9a-f]+) size (\d+)`)

func waitAgent(ctx context.Context, consoleLog string) (Agent, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		data, _ := os.ReadFile(consoleLog)
		if m := agentLine.FindSubmatch(data); m != nil {
			pid, _ := strconv.Atoi(string(m[1]))
			buf, _ := strconv.ParseUint(string(m[2]), 16, 64)
			size, _ := strconv.ParseUint(string(m[3]), 10, 64)
			return Agent{PID: pid, Buffer: buf, Size: size}, nil
		}
		select {
		case <-ctx.Done():
			return Agent{}, fmt.Errorf("the agent never reported on the SVM console: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func parsePIDs(text string) ([]int, error) {
	lines := strings.SplitN(strings.TrimSpace(text), "\n", 2)
	if len(lines) != 2 {
		return nil, fmt.Errorf("unexpected process listing %q", text)
	}
	self := strings.TrimSpace(lines[0])
	var pids []int
	for _, f := range strings.Fields(lines[1]) {
		if f == self {
			continue
		}
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("unexpected /proc entry %q", f)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// capture stops the SVM at do_syscall_64 entered for the agent's marker call and records the CPU
// state, the pt_regs address and the return address.
func capture(ctx context.Context, sock string, syms *vmm.Symbols, snap *Snapshot) error {
	entry, ok := syms.Addr("do_syscall_64")
	if !ok {
		return fmt.Errorf("symbol do_syscall_64 missing")
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	c, err := gdbstub.Dial(ctx, sock)
	if err != nil {
		return err
	}
	defer c.Close()
	// Other processes make system calls too (the command channel's Go runtime polls), and every
	// breakpoint hit costs a round trip. So first wait in getppid's own handler, which only the
	// agent calls; then the agent's very next marker call is the one to catch at entry.
	if handler, ok := syms.Addr("__x64_sys_getppid"); ok {
		if err := c.SetBreakpoint(ctx, handler); err != nil {
			return err
		}
		if _, err := c.Continue(ctx); err != nil {
			return fmt.Errorf("wait for the agent's getppid: %w", err)
		}
		if err := c.ClearBreakpoint(ctx, handler); err != nil {
			return err
		}
	}
	if err := c.SetBreakpoint(ctx, entry); err != nil {
		return err
	}
	var regs map[string]uint64
	var ptregs []byte
	others := map[uint64]int{}
	for {
		if _, err := c.Continue(ctx); err != nil {
			return fmt.Errorf("wait for the agent's marker call (other calls seen, by number: %v): %w", others, err)
		}
		if regs, err = c.ReadRegisters(ctx); err != nil {
			return err
		}
		if regs["rip"] != entry || regs["rsi"] != nrGetppid {
			others[regs["rsi"]]++
			continue
		}
		if ptregs, err = c.ReadMemory(ctx, regs["rdi"], ptSize); err != nil {
			return err
		}
		if binary.LittleEndian.Uint64(ptregs[ptDI:]) == Marker {
			break
		}
		others[regs["rsi"]]++
	}
	if err := c.ClearBreakpoint(ctx, entry); err != nil {
		return err
	}
	if got := binary.LittleEndian.Uint64(ptregs[ptSI:]); got != snap.Agent.Buffer {
		return fmt.Errorf("marker call's buffer %#x differs from the agent's report %#x", got, snap.Agent.Buffer)
	}
	snap.PtRegs = regs["rdi"]
	snap.TSC = binary.LittleEndian.Uint64(ptregs[ptR10:])
	ret, err := c.ReadMemory(ctx, regs["rsp"], 8)
	if err != nil {
		return err
	}
	snap.ReturnAddr = binary.LittleEndian.Uint64(ret)
	if addr, ok := syms.Addr("tsc_khz"); ok {
		khz, err := c.ReadMemory(ctx, addr, 4)
		if err != nil {
			return err
		}
		snap.TSCKHz = uint64(binary.LittleEndian.Uint32(khz))
	}
	if snap.TSCKHz == 0 {
		return fmt.Errorf("the SVM kernel reports no TSC rate (tsc_khz)")
	}
	info, err := c.Monitor(ctx, "info registers")
	if err != nil {
		return err
	}
	cpu, err := parseInfoRegisters(info)
	if err != nil {
		return err
	}
	cpu.KernelGSBase = regs["k_gs_base"]
	snap.CPU = cpu
	if cpu.RIP != entry || cpu.GPR["rdi"] != snap.PtRegs {
		return fmt.Errorf("monitor and gdbstub disagree on the stopped CPU (rip %#x, rdi %#x)", cpu.RIP, cpu.GPR["rdi"])
	}
	return nil
}

var (
	segLine = regexp.MustCompile(`(?m)^(ES|CS|SS|DS|FS|GS|LDT|TR) *=([0-9a-f]{4}) ([0-9a-f]{16}) ([0-9a-f]{8}) ([0-9a-f]{8})`)
	tblLine = regexp.MustCompile(`(?m)^(GDT|IDT)= +([0-9a-f]{16}) ([0-9a-f]{8})`)
)

// parseInfoRegisters reads QEMU's "info registers" for one CPU. It is the only source of the
// hidden segment parts and descriptor-table registers; the gdbstub does not expose them.
func parseInfoRegisters(text string) (CPU, error) {
	cpu := CPU{GPR: map[string]uint64{}}
	seen := map[string]bool{}
	regs, err := guest.InfoRegisterValues(text)
	if err != nil {
		return cpu, err
	}
	for name, v := range regs {
		seen[name] = true
		switch name {
		case "rip":
			cpu.RIP = v
		case "rfl":
			cpu.RFLAGS = v
		case "cr0":
			cpu.CR0 = v
		case "cr2":
			cpu.CR2 = v
		case "cr3":
			cpu.CR3 = v
		case "cr4":
			cpu.CR4 = v
		case "efer":
			cpu.EFER = v
		default:
			cpu.GPR[name] = v
		}
	}
	segs := map[string]*Segment{"ES": &cpu.ES, "CS": &cpu.CS, "SS": &cpu.SS, "DS": &cpu.DS, "FS": &cpu.FS, "GS": &cpu.GS, "LDT": &cpu.LDT, "TR": &cpu.TR}
	for _, m := range segLine.FindAllStringSubmatch(text, -1) {
		s := segs[m[1]]
		sel, _ := strconv.ParseUint(m[2], 16, 16)
		base, _ := strconv.ParseUint(m[3], 16, 64)
		limit, _ := strconv.ParseUint(m[4], 16, 32)
		flags, _ := strconv.ParseUint(m[5], 16, 32)
		*s = Segment{Selector: uint16(sel), Base: base, Limit: uint32(limit), Flags: uint32(flags)}
		seen[m[1]] = true
	}
	for _, m := range tblLine.FindAllStringSubmatch(text, -1) {
		base, _ := strconv.ParseUint(m[2], 16, 64)
		limit, _ := strconv.ParseUint(m[3], 16, 32)
		if m[1] == "GDT" {
			cpu.GDT = Segment{Base: base, Limit: uint32(limit)}
		} else {
			cpu.IDT = Segment{Base: base, Limit: uint32(limit)}
		}
		seen[m[1]] = true
	}
	for _, need := range []string{"rsp", "rip", "rfl", "cr0", "cr3", "cr4", "efer", "CS", "SS", "GS", "TR", "GDT", "IDT"} {
		if !seen[need] {
			return cpu, fmt.Errorf("info registers: %s missing in:\n%s", need, text)
		}
	}
	cpu.FSBase, cpu.GSBase = cpu.FS.Base, cpu.GS.Base
	return cpu, nil
}

// copySparse copies the RAM ranges of src (QEMU's RAM file) to dst at their physical addresses,
// skipping all-zero pages, so the snapshot's RAM file takes only the space the SVM used and the
// PCI hole none.
func copySparse(src, dst string, ranges []vmm.PhysRange) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	page := make([]byte, 4096)
	zero := make([]byte, 4096)
	for _, rg := range ranges {
		r := bufio.NewReaderSize(io.NewSectionReader(in, int64(rg.FileOffset), int64(rg.Size)), 4<<20)
		for off := uint64(0); off < rg.Size; off += 4096 {
			if _, err := io.ReadFull(r, page); err != nil {
				return fmt.Errorf("read at %#x: %w", rg.FileOffset+off, err)
			}
			if bytes.Equal(page, zero) {
				continue
			}
			if _, err := out.WriteAt(page, int64(rg.GuestPhys+off)); err != nil {
				return err
			}
		}
	}
	if err := out.Truncate(int64(ranges[len(ranges)-1].End())); err != nil {
		return err
	}
	return out.Sync()
}

// findTSCSites lists the kernel's RDTSC and RDTSCP instructions by decoding every text symbol
// from its start to the next symbol (the executor hooks each one to continue the SVM's clock).
// The text is read from the stopped SVM, so alternatives are already patched in.
func findTSCSites(ctx context.Context, sock string, syms *vmm.Symbols) ([]uint64, error) {
	text, _ := syms.Addr("_text")
	etext, _ := syms.Addr("_etext")
	c, err := gdbstub.Dial(ctx, sock)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	code, err := c.ReadMemory(ctx, text, int(etext-text))
	if err != nil {
		return nil, fmt.Errorf("read kernel text: %w", err)
	}
	var starts []uint64
	syms.Each(func(s vmm.Symbol) bool {
		if s.Addr >= text && s.Addr < etext && (s.Type == 't' || s.Type == 'T') {
			starts = append(starts, s.Addr)
		}
		return true
	})
	starts = append(starts, etext)
	var sites []uint64
	for i := 0; i+1 < len(starts); i++ {
		for pc := starts[i]; pc < starts[i+1]; {
			in, err := x86asm.Decode(code[pc-text:starts[i+1]-text], 64)
			if err != nil {
				pc++ // padding or data: resynchronise
				continue
			}
			if in.Op == x86asm.RDTSC || in.Op == x86asm.RDTSCP {
				sites = append(sites, pc)
			}
			pc += uint64(in.Len)
		}
	}
	if len(sites) == 0 {
		return nil, fmt.Errorf("no RDTSC instruction found in kernel text")
	}
	return sites, nil
}

// kpfReserved is KPF_RESERVED in /proc/kpageflags (include/uapi/linux/kernel-page-flags.h: a
// user-space ABI).
const kpfReserved = 1 << 32

// freedImagePages asks the SVM's kernel which pages of its image it gave back to the page
// allocator after boot: /proc/kpageflags shows every image page as reserved except those.
func freedImagePages(ctx context.Context, g *guest.Guest, l Layout) ([]PhysSpan, error) {
	first, last := l.KernelStart>>12, (l.KernelEnd+4095)>>12
	res, err := g.Exec(ctx, fmt.Sprintf("dd if=/proc/kpageflags bs=8 skip=%d count=%d 2>/dev/null | base64 -w 0", first, last-first))
	if err != nil {
		return nil, err
	}
	flags, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(res.Stdout)))
	if err != nil || uint64(len(flags)) != 8*(last-first) {
		return nil, fmt.Errorf("read the SVM's /proc/kpageflags: %d bytes, %v %s", len(flags), err, res.Stderr)
	}
	var out []PhysSpan
	for i := uint64(0); i < last-first; i++ {
		if binary.LittleEndian.Uint64(flags[8*i:])&kpfReserved != 0 {
			continue
		}
		pa := (first + i) << 12
		if n := len(out); n > 0 && out[n-1].End == pa {
			out[n-1].End += 4096
		} else {
			out = append(out, PhysSpan{pa, pa + 4096})
		}
	}
	return out, nil
}
