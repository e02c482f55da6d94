package target

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"hybridbridge/guest"
	"hybridbridge/vmm"
)

// Monitor is a QEMU monitor: QMP commands and HMP lines. *guest.QMP satisfies it; so can a
// monitor reached another way (libvirt's virsh qemu-monitor-command).
type Monitor interface {
	Run(ctx context.Context, command string, args any) (json.RawMessage, error)
	HMP(ctx context.Context, line string) (string, error)
	Close() error
}

var (
	_ Monitor = (*guest.QMP)(nil)
	_ Target  = (*Process)(nil)
)

// Process is a running QEMU process hybridbridge did not start. Its RAM is read out of QEMU's
// address space; the layout comes from the monitor where there is one (info mtree -f, gpa2hva),
// else from QEMU's command line and memory mappings. The VM is never paused or resumed except
// through Pause and Resume.
type Process struct {
	name string
	kind Kind
	pid  int
	// started is the process's start time (/proc/PID/stat field 22): a recycled pid has another.
	started uint64
	mon     Monitor // nil: monitor-less
	qmp     string  // the QMP socket mon is connected to, if it is one
	// noMonitor says why a process opened by pid has no monitor.
	noMonitor string
	mem       *procMem
	pause     func(context.Context) error
	resume    func(context.Context) error
	state     func(context.Context) (State, error)
}

// ProcessOptions let another kind of target (libvirt) reuse Process with its own monitor and its
// own pause, resume and state.
type ProcessOptions struct {
	Name string // default "QEMU pid N"
	Kind Kind   // default KindPID
	// Monitor gives the RAM layout and the vCPUs; nil opens the process monitor-less (layout from
	// its command line and mappings, no vCPU state).
	Monitor Monitor
	// Pause and Resume default to QMP stop/cont with a monitor, SIGSTOP/SIGCONT without.
	Pause, Resume func(ctx context.Context) error
	// State defaults to QMP query-status with a monitor, /proc/PID/stat state 'T' without.
	State func(ctx context.Context) (State, error)
}

// monitorTimeout bounds each monitor command that comes with no deadline of its own: a wedged
// QEMU must not hang inspection.
const monitorTimeout = 15 * time.Second

// greetTimeout bounds waiting for a QMP greeting. QEMU greets at once; silence means the socket
// is not QMP or another client (libvirt) holds the monitor, which serves one client at a time.
const greetTimeout = 5 * time.Second

// NewProcess opens QEMU process pid as a target. With a monitor the RAM layout comes from it;
// without, from the command line and /proc/PID/smaps. The monitor belongs to the Process from
// here on, also when NewProcess fails.
func NewProcess(ctx context.Context, pid int, o ProcessOptions) (*Process, error) {
	p, err := newProcess(ctx, pid, o)
	if err != nil && o.Monitor != nil {
		o.Monitor.Close()
	}
	return p, err
}

func newProcess(ctx context.Context, pid int, o ProcessOptions) (*Process, error) {
	info, err := inspectPID(pid)
	if err != nil {
		return nil, err
	}
	p := &Process{name: o.Name, kind: o.Kind, pid: pid, started: info.started, mon: o.Monitor,
		pause: o.Pause, resume: o.Resume, state: o.State}
	if p.name == "" {
		p.name = fmt.Sprintf("QEMU pid %d", pid)
	}
	if p.kind == "" {
		p.kind = KindPID
	}
	var ranges []vmm.PhysRange
	var hosts []uint64
	if p.mon != nil {
		ranges, hosts, err = p.monitorLayout(ctx)
	} else if ranges, hosts, err = mappedLayout(pid, info.args); err != nil {
		err = fmt.Errorf("%s: %w", p.name, err)
	}
	if err != nil {
		return nil, err
	}
	if p.mem, err = newProcMem(p.name, pid, ranges, hosts); err != nil {
		return nil, err
	}
	return p, nil
}

// OpenQMP opens the QEMU process serving QMP on socket. The socket's peer credentials give its
// pid.
func OpenQMP(ctx context.Context, socket string) (*Process, error) {
	fail := func(err error) error { return fmt.Errorf("QMP socket %s: %w", socket, err) }
	fi, err := os.Stat(socket)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fail(errors.New("no such file"))
		}
		return nil, fail(err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return nil, fail(errors.New("not a unix socket"))
	}
	pid, err := peerPID(ctx, socket)
	if err != nil {
		return nil, fail(err)
	}
	// Check the peer before talking to it: a socket some other program serves is not QEMU's.
	if _, err := inspectPID(pid); err != nil {
		return nil, fail(err)
	}
	q, err := dialQMP(ctx, socket)
	if err != nil {
		return nil, fail(err)
	}
	p, err := NewProcess(ctx, pid, ProcessOptions{
		Name:    fmt.Sprintf("QEMU pid %d (qmp %s)", pid, socket),
		Kind:    KindQMP,
		Monitor: q,
	})
	if err != nil {
		return nil, err
	}
	p.qmp = socket
	return p, nil
}

// OpenPID opens QEMU process pid. A QMP socket on its command line (-qmp unix:PATH, or a socket
// chardev behind -mon mode=control) that answers becomes its monitor; otherwise it is opened
// without one (see ProcessOptions and Monitorless).
func OpenPID(ctx context.Context, pid int) (*Process, error) {
	info, err := inspectPID(pid)
	if err != nil {
		return nil, err
	}
	sockets := qmpSockets(info.args, info.cwd)
	var tried []string
	for _, s := range sockets {
		// The path on the command line may now name another QEMU's socket (a relative path whose
		// folder could not be read, a path reused since): only this process's monitor will do.
		if peer, err := peerPID(ctx, s); err != nil || peer != pid {
			if err == nil {
				err = fmt.Errorf("served by pid %d, not this QEMU", peer)
			}
			tried = append(tried, fmt.Sprintf("%s: %v", s, err))
			continue
		}
		q, err := dialQMP(ctx, s)
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s: %v", s, err))
			continue
		}
		p, err := NewProcess(ctx, pid, ProcessOptions{Name: fmt.Sprintf("QEMU pid %d (qmp %s)", pid, s), Kind: KindPID, Monitor: q})
		if err != nil {
			return nil, err
		}
		p.qmp = s
		return p, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("QEMU pid %d: %w", pid, err)
	}
	why := "no QMP socket on its command line"
	if len(tried) > 0 {
		why = "its QMP socket did not answer: " + strings.Join(tried, "; ")
	}
	p, err := NewProcess(ctx, pid, ProcessOptions{Name: fmt.Sprintf("QEMU pid %d (no monitor)", pid), Kind: KindPID})
	if err != nil {
		if len(tried) > 0 {
			err = fmt.Errorf("%w (%s)", err, why)
		}
		return nil, err
	}
	p.noMonitor = why
	return p, nil
}

// Name implements Target.
func (p *Process) Name() string { return p.name }

// Kind implements Target.
func (p *Process) Kind() Kind { return p.kind }

// PID returns QEMU's process id.
func (p *Process) PID() int { return p.pid }

// QMPSocket returns the QMP socket the process was opened through, "" if none.
func (p *Process) QMPSocket() string { return p.qmp }

// Monitorless says whether the process has no monitor and, for one opened by pid, why: then RAM
// ranges come from its command line and vCPU state is unknown.
func (p *Process) Monitorless() (bool, string) { return p.mon == nil, p.noMonitor }

// Phys implements Target: reads go straight to QEMU's memory. Ranges' FileOffset is the offset in
// QEMU's RAM block.
func (p *Process) Phys() vmm.PhysView { return p.mem }

// RAM implements Target. Of anonymous RAM (QEMU's default) only the pages QEMU has populated are
// read, of a shared RAM file all; all-zero pages stay holes. See procMem.ram.
func (p *Process) RAM(ctx context.Context) (*RAM, error) {
	r, err := p.mem.ram(ctx)
	if err != nil {
		return nil, p.checkGone(err)
	}
	return r, nil
}

// State implements Target. Any run state of QEMU's but "running" has the vCPUs stopped.
func (p *Process) State(ctx context.Context) (State, error) {
	if p.state != nil {
		return p.state(ctx)
	}
	if p.mon == nil {
		st, err := p.procState()
		if err != nil {
			return "", err
		}
		if st == 'T' || st == 't' {
			return Paused, nil
		}
		return Running, nil
	}
	ret, err := p.run(ctx, "query-status", nil)
	if err != nil {
		return "", err
	}
	var st struct {
		Running bool   `json:"running"`
		Status  string `json:"status"`
	}
	if err := json.Unmarshal(ret, &st); err != nil {
		return "", fmt.Errorf("%s: query-status: %w", p.name, err)
	}
	if st.Running {
		return Running, nil
	}
	return Paused, nil
}

// Pause implements Target: QMP stop, or without a monitor SIGSTOP, waiting until every thread of
// QEMU has stopped (a stopped main thread alone does not keep I/O threads from writing RAM).
func (p *Process) Pause(ctx context.Context) error {
	if p.pause != nil {
		return p.pause(ctx)
	}
	if p.mon != nil {
		_, err := p.run(ctx, "stop", nil)
		return err
	}
	if err := p.signal(syscall.SIGSTOP); err != nil {
		return err
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		stopped, err := p.allStopped()
		if err != nil || stopped {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: SIGSTOP sent, but not every thread stopped within 5s", p.name)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: waiting for SIGSTOP: %w", p.name, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}

// Resume implements Target: QMP cont, or SIGCONT without a monitor.
func (p *Process) Resume(ctx context.Context) error {
	if p.resume != nil {
		return p.resume(ctx)
	}
	if p.mon != nil {
		_, err := p.run(ctx, "cont", nil)
		return err
	}
	return p.signal(syscall.SIGCONT)
}

// CPUs implements Target: every vCPU from the monitor's "info registers -a" (which has no
// IA32_KERNEL_GS_BASE); nil without a monitor.
func (p *Process) CPUs(ctx context.Context) ([]CPUState, error) {
	if p.mon == nil {
		return nil, nil
	}
	text, err := p.hmp(ctx, "info registers -a")
	if err != nil {
		return nil, err
	}
	cpus, err := parseRegistersAll(text)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p.name, err)
	}
	return cpus, nil
}

// Close implements Target: it closes the monitor and leaves the VM as it is.
func (p *Process) Close() error {
	if p.mon == nil {
		return nil
	}
	return p.mon.Close()
}

// withTimeout gives ctx monitorTimeout unless it has a deadline already.
func withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, monitorTimeout)
}

func (p *Process) run(ctx context.Context, command string, args any) (json.RawMessage, error) {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	ret, err := p.mon.Run(ctx, command, args)
	if err != nil {
		return nil, p.monitorErr(err)
	}
	return ret, nil
}

func (p *Process) hmp(ctx context.Context, line string) (string, error) {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	text, err := p.mon.HMP(ctx, line)
	if err != nil {
		return "", p.monitorErr(fmt.Errorf("hmp %q: %w", line, err))
	}
	return text, nil
}

// monitorErr names the real reason when a monitor command fails because QEMU has exited: the
// closed connection says so only indirectly.
func (p *Process) monitorErr(err error) error {
	if !p.alive() {
		return p.gone()
	}
	return fmt.Errorf("%s: %w", p.name, err)
}

// checkGone is monitorErr for errors that already carry the name.
func (p *Process) checkGone(err error) error {
	if err == nil || errors.Is(err, ErrGone) || p.alive() {
		return err
	}
	return p.gone()
}

func (p *Process) gone() error {
	return fmt.Errorf("%s: %w: QEMU pid %d has exited", p.name, ErrGone, p.pid)
}

// alive says whether QEMU still runs: its pid exists, is not a zombie and is the same process.
func (p *Process) alive() bool {
	st, err := readStat(p.pid)
	return err == nil && st.state != 'Z' && st.state != 'X' && st.started == p.started
}

func (p *Process) procState() (byte, error) {
	st, err := readStat(p.pid)
	if err != nil || st.state == 'Z' || st.state == 'X' || st.started != p.started {
		return 0, p.gone()
	}
	return st.state, nil
}

func (p *Process) signal(sig syscall.Signal) error {
	if !p.alive() {
		return p.gone()
	}
	if err := syscall.Kill(p.pid, sig); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return p.gone()
		}
		return fmt.Errorf("%s: send %v: %w", p.name, sig, err)
	}
	return nil
}

// allStopped says whether every thread of QEMU is in the stopped state.
func (p *Process) allStopped() (bool, error) {
	if _, err := p.procState(); err != nil {
		return false, err
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", p.pid))
	if err != nil {
		return false, p.checkGone(fmt.Errorf("%s: list threads of QEMU pid %d: %w", p.name, p.pid, err))
	}
	for _, t := range tasks {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", p.pid, t.Name()))
		if err != nil {
			continue // a thread that just exited
		}
		st, err := parseStat(data)
		if err == nil && st.state != 'T' && st.state != 't' {
			return false, nil
		}
	}
	return true, nil
}

// monitorLayout asks the monitor where the guest's RAM is: the ranges of the main RAM block in
// the CPUs' address space, and for each, QEMU's address of its first byte.
func (p *Process) monitorLayout(ctx context.Context) ([]vmm.PhysRange, []uint64, error) {
	text, err := p.hmp(ctx, "info mtree -f")
	if err != nil {
		return nil, nil, err
	}
	block, layout, err := ramLayout(text)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", p.name, err)
	}
	var ranges []vmm.PhysRange
	var hosts []uint64
	for _, r := range layout {
		// Per range rather than once per block: the monitor then vouches for every address.
		ans, err := p.hmp(ctx, fmt.Sprintf("gpa2hva %#x", r.GuestPhys))
		if err != nil {
			return nil, nil, err
		}
		_, hva, b, err := parseGPA2HVA(ans)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", p.name, err)
		}
		if b != block {
			return nil, nil, fmt.Errorf("%s: gpa2hva %#x names RAM block %q, info mtree -f %q", p.name, r.GuestPhys, b, block)
		}
		ranges = append(ranges, vmm.PhysRange{GuestPhys: r.GuestPhys, FileOffset: r.Offset, Size: r.Size})
		hosts = append(hosts, hva)
	}
	return ranges, hosts, nil
}

// procInfo is what /proc says about a QEMU process.
type procInfo struct {
	args    []string // command line, program first
	cwd     string   // "" if unreadable; relative socket paths are relative to it
	started uint64
}

// inspectPID checks that pid is a running QEMU system emulator and reads its command line.
func inspectPID(pid int) (procInfo, error) {
	if pid <= 0 {
		return procInfo{}, fmt.Errorf("pid %d: not a process id", pid)
	}
	st, err := readStat(pid)
	if errors.Is(err, os.ErrNotExist) || (err == nil && (st.state == 'Z' || st.state == 'X')) {
		return procInfo{}, fmt.Errorf("QEMU pid %d: no such process", pid)
	}
	if err != nil {
		return procInfo{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	// The executable is the reliable name: QEMU's -name process=NAME renames its threads. Another
	// user's process hides it from us, though; then its command name has to do.
	prog, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		prog = st.comm
	}
	if !strings.Contains(filepath.Base(prog), "qemu-system") {
		return procInfo{}, fmt.Errorf("pid %d (%s) is not a QEMU process", pid, prog)
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return procInfo{}, fmt.Errorf("QEMU pid %d: command line: %w", pid, err)
	}
	info := procInfo{args: strings.Split(strings.TrimSuffix(string(raw), "\x00"), "\x00"), started: st.started}
	info.cwd, _ = os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	return info, nil
}

type procStat struct {
	comm    string
	state   byte
	started uint64
}

func readStat(pid int) (procStat, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	return parseStat(data)
}

// parseStat reads /proc/PID/stat: "pid (comm) state ..." where comm may hold spaces and
// parentheses, so the fields are counted from the last ')'.
func parseStat(data []byte) (procStat, error) {
	open, end := bytes.IndexByte(data, '('), bytes.LastIndexByte(data, ')')
	if open < 0 || end < open {
		return procStat{}, fmt.Errorf("malformed stat %.60q", data)
	}
	fields := strings.Fields(string(data[end+1:]))
	// fields[0] is field 3 (state); field 22 is starttime.
	if len(fields) < 20 {
		return procStat{}, fmt.Errorf("short stat %.60q", data)
	}
	started, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("stat starttime %q: %w", fields[19], err)
	}
	return procStat{comm: string(data[open+1 : end]), state: fields[0][0], started: started}, nil
}

// peerPID returns the pid of the process that listens on a unix socket: the peer credentials of
// a connection to it are the listener's, set when it called listen (so they are there even while
// QEMU serves another client and has not accepted ours).
func peerPID(ctx context.Context, socket string) (int, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return 0, errors.New("connection refused: nothing listens on it (has the VM exited?)")
		}
		return 0, err
	}
	defer conn.Close()
	raw, err := conn.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if credErr != nil {
		return 0, fmt.Errorf("SO_PEERCRED: %w", credErr)
	}
	if cred.Pid == 0 {
		return 0, errors.New("the listener runs in another pid namespace: open it by its pid from there")
	}
	return int(cred.Pid), nil
}

// dialQMP connects and negotiates within greetTimeout (or ctx's deadline, if sooner).
func dialQMP(ctx context.Context, socket string) (*guest.QMP, error) {
	start := time.Now()
	gctx, cancel := context.WithTimeout(ctx, greetTimeout)
	defer cancel()
	q, err := guest.DialQMP(gctx, socket)
	switch {
	case err == nil:
		return q, nil
	case errors.Is(ctx.Err(), context.Canceled):
		return nil, ctx.Err()
	case errors.Is(err, syscall.ECONNREFUSED):
		return nil, errors.New("connection refused: nothing listens on it (has the VM exited?)")
	case gctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded):
		return nil, fmt.Errorf("no QMP greeting within %v (not a QMP socket, or another client such as libvirt holds the monitor)",
			time.Since(start).Round(100*time.Millisecond))
	}
	return nil, err
}

// qmpSockets lists the unix sockets QEMU's command line serves QMP on: -qmp unix:PATH and
// -qmp-pretty, and socket chardevs that a -mon with mode=control uses. Relative paths are
// resolved against QEMU's working directory.
func qmpSockets(args []string, cwd string) []string {
	chardevs := map[string]string{} // id → path of a socket chardev
	var out, monitors []string
	opts := optionValues(args)
	for _, o := range opts {
		switch o.name {
		case "qmp", "qmp-pretty":
			if p, ok := strings.CutPrefix(o.value, "unix:"); ok {
				path, _, _ := strings.Cut(p, ",")
				if k, v, ok := strings.Cut(path, "="); ok && k == "path" {
					path = v
				}
				out = append(out, path)
			}
		case "chardev":
			backend, rest, _ := strings.Cut(o.value, ",")
			kv := keyValues(rest)
			if backend == "socket" && kv["path"] != "" {
				chardevs[kv["id"]] = kv["path"]
			}
		case "mon":
			kv := keyValues(o.value)
			if kv["mode"] == "control" {
				monitors = append(monitors, kv["chardev"])
			}
		}
	}
	for _, id := range monitors {
		if p := chardevs[id]; p != "" {
			out = append(out, p)
		}
	}
	for i, p := range out {
		if !filepath.IsAbs(p) && cwd != "" {
			out[i] = filepath.Join(cwd, p)
		}
	}
	return out
}

type option struct{ name, value string }

// optionValues pairs QEMU's options with their values. QEMU takes -opt and --opt alike; every
// option this package reads takes a value.
func optionValues(args []string) []option {
	var out []option
	if len(args) > 0 {
		args = args[1:]
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name := strings.TrimLeft(a, "-")
		switch name {
		case "qmp", "qmp-pretty", "chardev", "mon", "m", "M", "machine":
			if i+1 < len(args) {
				out = append(out, option{name, args[i+1]})
				i++
			}
		}
	}
	return out
}

// keyValues splits "k=v,k2=v2"; a leading bare value (QEMU's implied key) is stored under "".
func keyValues(s string) map[string]string {
	out := map[string]string{}
	for i, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			if i == 0 {
				out[""] = part
			}
			continue
		}
		out[k] = v
	}
	return out
}

// defaultRAM is QEMU's RAM size for x86 machines without -m.
const defaultRAM = 128 << 20

// ramSize reads -m: "-m 256" (MiB), "-m 256M", "-m 1G", "-m size=1G,slots=2,maxmem=4G".
func ramSize(args []string) (uint64, error) {
	size := uint64(defaultRAM)
	for _, o := range optionValues(args) {
		if o.name != "m" {
			continue
		}
		kv := keyValues(o.value)
		v := kv["size"]
		if v == "" {
			v = kv[""]
		}
		if v == "" {
			continue
		}
		n, err := parseSize(v)
		if err != nil {
			return 0, fmt.Errorf("-m %s: %w", o.value, err)
		}
		size = n
	}
	return size, nil
}

// parseSize reads a QEMU size whose unit defaults to MiB.
func parseSize(s string) (uint64, error) {
	unit := uint64(1 << 20)
	num := s
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'k', 'K':
			unit, num = 1<<10, s[:n-1]
		case 'm', 'M':
			unit, num = 1<<20, s[:n-1]
		case 'g', 'G':
			unit, num = 1<<30, s[:n-1]
		case 't', 'T':
			unit, num = 1<<40, s[:n-1]
		case 'b', 'B':
			unit, num = 1, s[:n-1]
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f <= 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return uint64(f * float64(unit)), nil
}

// machineType returns the -machine type ("pc" when none is given: QEMU's default for x86) and
// whether its options set max-ram-below-4g, which moves the split vmm.PCRanges assumes.
func machineType(args []string) (string, bool) {
	typ, lowSet := "pc", false
	for _, o := range optionValues(args) {
		if o.name != "machine" && o.name != "M" {
			continue
		}
		kv := keyValues(o.value)
		if t := kv["type"]; t != "" {
			typ = t
		} else if t := kv[""]; t != "" {
			typ = t
		}
		if _, ok := kv["max-ram-below-4g"]; ok {
			lowSet = true
		}
	}
	return typ, lowSet
}

// monitorlessMax is the most RAM a machine other than pc may have for its layout to be known
// without a monitor: all of it at guest-physical 0 (q35 splits at 2 GiB).
const monitorlessMax = 2 << 30

// mappedLayout finds the guest's RAM without a monitor: its size from -m, its layout from the
// machine type, its host address from the one anonymous mapping of that size QEMU marked for KSM
// (VmFlags mg: QEMU does so for every RAM block unless mem-merge=off).
func mappedLayout(pid int, args []string) ([]vmm.PhysRange, []uint64, error) {
	size, err := ramSize(args)
	if err != nil {
		return nil, nil, err
	}
	typ, lowSet := machineType(args)
	pc := typ == "pc" || strings.HasPrefix(typ, "pc-i440fx")
	var ranges []vmm.PhysRange
	switch {
	case pc && (!lowSet || size <= monitorlessMax):
		ranges = vmm.PCRanges(size)
	case size <= monitorlessMax:
		ranges = []vmm.PhysRange{{Size: size}}
	default:
		return nil, nil, fmt.Errorf("the RAM layout of machine %q with %d MiB is unknown without a monitor (it splits RAM around the PCI hole): open it by its QMP socket", typ, size>>20)
	}
	base, err := ramMapping(pid, size)
	if err != nil {
		return nil, nil, err
	}
	hosts := make([]uint64, len(ranges))
	for i, r := range ranges {
		hosts[i] = base + r.FileOffset
	}
	return ranges, hosts, nil
}

// ramMapping returns the start of QEMU's anonymous mapping of exactly size bytes, preferring the
// one marked mergeable.
func ramMapping(pid int, size uint64) (uint64, error) {
	path := fmt.Sprintf("/proc/%d/smaps", pid)
	f, err := os.Open(path)
	if err != nil {
		switch {
		case errors.Is(err, os.ErrNotExist):
			return 0, fmt.Errorf("%w: QEMU pid %d has exited", ErrGone, pid)
		case errors.Is(err, os.ErrPermission):
			return 0, errPermission(pid)
		}
		return 0, err
	}
	defer f.Close()
	var merged, plain []uint64
	var start uint64
	candidate := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if !strings.HasSuffix(fields[0], ":") {
			// A mapping: "start-end perms offset dev inode [path]".
			candidate = false
			lo, hi, ok := strings.Cut(fields[0], "-")
			if !ok || len(fields) < 5 {
				continue
			}
			a, err1 := strconv.ParseUint(lo, 16, 64)
			b, err2 := strconv.ParseUint(hi, 16, 64)
			anonymous := fields[4] == "0" && len(fields) == 5
			if err1 == nil && err2 == nil && b-a == size && anonymous && strings.HasPrefix(fields[1], "rw") {
				candidate, start = true, a
			}
			continue
		}
		if candidate && fields[0] == "VmFlags:" {
			if slices.Contains(fields[1:], "mg") {
				merged = append(merged, start)
			} else {
				plain = append(plain, start)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	switch {
	case len(merged) == 1:
		return merged[0], nil
	case len(merged) == 0 && len(plain) == 1:
		return plain[0], nil
	case len(merged)+len(plain) == 0:
		return 0, fmt.Errorf("no anonymous mapping of %d MiB (the RAM size of its command line) in %s: "+
			"its RAM may be file-backed (memory-backend-file) or in several blocks; open it by its QMP socket", size>>20, path)
	}
	return 0, fmt.Errorf("%d anonymous mappings of %d MiB in %s: cannot tell which is the RAM; open it by its QMP socket",
		len(merged)+len(plain), size>>20, path)
}

// Monitor returns the QEMU monitor the target holds (nil without one). QEMU serves one QMP
// client at a time, so whoever needs the VM's monitor while the target is open asks it here.
func (p *Process) Monitor() Monitor { return p.mon }
