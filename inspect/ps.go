// Package inspect builds the views (ps, lsmod, netstat, ...) from files the kernel produces: the
// same /proc files the in-guest tools read, read by system calls injected into the SVM against
// the guest's memory. Listing is separate from rendering: the walkers return typed records.
//
// A walker returns all it lists or fails: the only thing it may leave out is what vanished
// between being listed and being read (IsVanished), and it counts that in a Vanished result so
// the view can say so. A parser rejects what the kernel would not have printed (a file cut short,
// a field that is not a number) instead of filling in a zero.
package inspect

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Files is what a view needs from a running kernel: directory listings and whole files.
type Files interface {
	ReadDir(path string) ([]string, error)
	ReadFile(path string) ([]byte, error)
}

// Process is one row of ps. Every field is read from the kernel's files; a process whose files
// could not be read is not a row at all (the walker fails, or counts it as vanished). Missing
// holds only what the kernel did return but cannot be decided, such as a command line cut
// short: that field is left empty and shown as unknown, never guessed.
type Process struct {
	PID   int    `json:"pid"`
	PPID  int    `json:"ppid"`
	State string `json:"state"` // one letter, as in /proc/<pid>/stat
	UID   int    `json:"uid"`   // real uid
	// User is the uid's name in the guest's /etc/passwd, read through the SVM; empty when that
	// file is not in the guest's memory or does not list the uid: never a guessed name.
	User       string `json:"user,omitempty"`
	Threads    int    `json:"threads"`
	RSSKiB     int    `json:"rss_kib"`
	StartTicks uint64 `json:"start_ticks"` // start time, clock ticks after boot
	// Start is StartTicks as the guest's wall-clock time (UTC), from its boot time in
	// /proc/stat; zero when not read (ListProcesses alone does not).
	Start time.Time `json:"start,omitzero"`
	// CPUTicks is the user and system CPU time used, in clock ticks (ps's TIME).
	CPUTicks uint64 `json:"cpu_ticks"`
	// NSPIDs are the process's PIDs in the PID namespaces it is in below the guest's initial one
	// (the NSpid line of status after the first), innermost last; empty outside any.
	NSPIDs  []int    `json:"ns_pids,omitempty"`
	Comm    string   `json:"comm"`
	Cmdline []string `json:"cmdline"` // argv; empty for kernel threads and zombies
	Kernel  bool     `json:"kernel"`  // a kernel thread (no user address space)
	Missing []string `json:"missing,omitempty"`

	// arg_end - arg_start and env_end - env_start from stat, to check the command line and
	// the environment against.
	argLen, envLen uint64
}

// Command is what ps prints as the command: the argv joined; [comm] for kernel threads and
// processes without a command line (as ps does for zombies); "?" when the command line is
// unknown (see Missing), so that it never passes for a kernel thread.
func (p Process) Command() string {
	if len(p.Cmdline) == 0 {
		if len(p.Missing) > 0 {
			return "?"
		}
		return "[" + p.Comm + "]"
	}
	return strings.Join(p.Cmdline, " ")
}

// ListProcesses reads every process's stat, status and cmdline under /proc, in PID order. A
// process that exits between the listing and the reading of its files is left out and counted
// in the Vanished result; any other failure fails the whole list.
func ListProcesses(f Files) ([]Process, Vanished, error) {
	var gone Vanished
	names, err := f.ReadDir("/proc")
	if err != nil {
		return nil, gone, fmt.Errorf("list /proc: %w", err)
	}
	var pids []int
	for _, n := range names {
		if pid, err := strconv.Atoi(n); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	sort.Ints(pids)
	procs := make([]Process, len(pids))
	read := make([]bool, len(pids))
	err = each(f, len(pids), func(i int, f Files) error {
		p, err := readProcess(f, pids[i])
		if IsVanished(err) {
			return nil
		}
		procs[i], read[i] = p, err == nil
		return err
	})
	if err != nil {
		return nil, gone, err
	}
	out := make([]Process, 0, len(pids))
	for i, ok := range read {
		if !ok {
			gone.Processes++
			continue
		}
		out = append(out, procs[i])
	}
	return out, gone, nil
}

// Parallel is a Files that reads for several items at once, each on a machine of its own (the
// SVM runs one per CPU). Each calls fn(i, g) once for every i < n, in any order and at once; fn
// must read through g only. g is f, the Files the view was given (which may wrap the Parallel),
// or another machine's. Its error is fn's for the lowest i that failed, as a loop stopping at the
// first failure would return.
type Parallel interface {
	Each(n int, f Files, fn func(i int, g Files) error) error
}

// each is Parallel's Each where f can, otherwise a loop in order.
func each(f Files, n int, fn func(i int, g Files) error) error {
	if p, ok := f.(Parallel); ok {
		return p.Each(n, f, fn)
	}
	for i := range n {
		if err := fn(i, f); err != nil {
			return err
		}
	}
	return nil
}

// readProcess reads one process. Its three files are read before any is parsed, so that a
// process that vanished half-way is reported as vanished rather than as a parse failure.
func readProcess(f Files, pid int) (Process, error) {
	p := Process{PID: pid}
	dir := "/proc/" + strconv.Itoa(pid)
	names := []string{"stat", "status", "cmdline"}
	files, err := readAll(f, dir, names)
	if err != nil {
		return p, err
	}
	if err := p.parseStat(files[0]); err != nil {
		return p, fmt.Errorf("parse %s/stat: %w", dir, err)
	}
	if err := p.parseStatus(files[1]); err != nil {
		return p, fmt.Errorf("parse %s/status: %w", dir, err)
	}
	if err := p.checkCmdline(files[2]); err != nil {
		p.Missing = append(p.Missing, "cmdline: "+err.Error())
	} else {
		p.Cmdline = splitCmdline(files[2])
	}
	return p, nil
}

// Batch is a Files that reads several files in one operation: the SVM starts each operation
// from a reset machine, so a process's three files cost one reset instead of three. errs[i] is
// file i's own failure (absent, vanished, refused); err is one that failed the whole batch, and
// names the file it stopped in.
type Batch interface {
	ReadFiles(paths []string) (data [][]byte, errs []error, err error)
}

// readAll reads dir's files names, in one batch where f can.
func readAll(f Files, dir string, names []string) ([][]byte, error) {
	paths := make([]string, len(names))
	for i, n := range names {
		paths[i] = dir + "/" + n
	}
	if b, ok := f.(Batch); ok {
		data, errs, err := b.ReadFiles(paths)
		if err != nil {
			return nil, err // it names the file the batch stopped in
		}
		for i, e := range errs {
			if e != nil {
				return nil, fmt.Errorf("read %s: %w", paths[i], e)
			}
		}
		return data, nil
	}
	data := make([][]byte, len(paths))
	for i, path := range paths {
		var err error
		if data[i], err = f.ReadFile(path); err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
	}
	return data, nil
}

// checkCmdline catches a command line cut short (see checkArea).
func (p *Process) checkCmdline(data []byte) error { return checkArea(data, p.argLen) }

// checkArea catches an argument or environment area cut short: the kernel returns the whole area
// (end - start from stat), NUL-terminated, a page of the process's memory at a time. Less than
// that, ending at a page boundary or without the final NUL, means reading a page failed; it is
// reported instead of shown shortened. (A process that rewrote its title with setproctitle
// legitimately returns a shorter, NUL-terminated string.)
//
// A run of 64 or more NUL bytes is reported too: entries are separated by single NULs, so such
// a run (empty entries aside) means a page of the area came back as zeros.
func checkArea(data []byte, want uint64) error {
	if i := bytes.Index(bytes.TrimRight(data, "\x00"), make([]byte, 64)); i >= 0 {
		return fmt.Errorf("incomplete: zero bytes from offset %d of %d", i, len(data))
	}
	if want == 0 || uint64(len(data)) >= want {
		return nil
	}
	if len(data) > 0 && data[len(data)-1] == 0 && len(data)%4096 != 0 {
		return nil
	}
	return fmt.Errorf("incomplete: %d of %d bytes read", len(data), want)
}

// pfKthread is PF_KTHREAD in /proc/<pid>/stat's flags field (include/linux/sched.h, exported to
// user space through that field).
const pfKthread = 0x00200000

// parseStat reads "pid (comm) state ppid pgrp session tty tpgid flags ... starttime vsize rss".
// comm may contain spaces and parentheses, so it ends at the last ')'. The kernel ends the line
// with a newline: without it the file was cut short, and its last number may be too.
func (p *Process) parseStat(data []byte) error {
	s, ok := strings.CutSuffix(string(data), "\n")
	if !ok {
		return errors.New("no final newline")
	}
	open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || close < open {
		return errors.New("no (comm)")
	}
	if pid, err := strconv.Atoi(strings.TrimSuffix(s[:open], " ")); err != nil || pid != p.PID {
		return fmt.Errorf("stat names pid %q", s[:open])
	}
	p.Comm = s[open+1 : close]
	f := strings.Fields(s[close+1:])
	if len(f) < 22 {
		return fmt.Errorf("%d fields after comm", len(f))
	}
	if len(f[0]) != 1 {
		return fmt.Errorf("state %q", f[0])
	}
	var err error
	p.State = f[0]
	num := func(i int) uint64 {
		v, e := strconv.ParseUint(f[i], 10, 64)
		if e != nil && err == nil {
			err = fmt.Errorf("field %d %q: %w", i+3, f[i], e)
		}
		return v
	}
	p.PPID = int(num(1))
	p.Kernel = num(6)&pfKthread != 0
	p.StartTicks = num(19)
	p.CPUTicks = num(11) + num(12) // utime, stime
	// arg_start, arg_end, env_start and env_end are fields 48 to 51 (zero when the reader may
	// not see them).
	if len(f) >= 47 {
		if start, end := num(45), num(46); end > start {
			p.argLen = end - start
		}
	}
	if len(f) >= 49 {
		if start, end := num(47), num(48); end > start {
			p.envLen = end - start
		}
	}
	return err
}

// parseStatus reads the Uid, Threads, VmRSS and NSpid lines; kernel threads have no VmRSS line
// (no user memory), so its absence is a size of zero, as ps shows it.
func (p *Process) parseStatus(data []byte) error {
	s, ok := strings.CutSuffix(string(data), "\n")
	if !ok {
		return errors.New("no final newline")
	}
	var uid, threads bool
	for _, line := range strings.Split(s, "\n") {
		key, value, ok := strings.Cut(line, ":")
		if !ok {
			return fmt.Errorf("line %q", line)
		}
		fields := strings.Fields(value)
		if key == "NSpid" {
			if err := p.parseNSpid(fields); err != nil {
				return fmt.Errorf("NSpid %q: %w", value, err)
			}
			continue
		}
		var dst *int
		switch key {
		case "Uid":
			dst, uid = &p.UID, true
		case "Threads":
			dst, threads = &p.Threads, true
		case "VmRSS":
			dst = &p.RSSKiB
		default:
			continue
		}
		if len(fields) == 0 {
			return fmt.Errorf("%s %q", key, value)
		}
		n, err := strconv.Atoi(fields[0])
		if err != nil {
			return fmt.Errorf("%s %q", key, value)
		}
		*dst = n
	}
	if !uid || !threads {
		return errors.New("no Uid or Threads line")
	}
	return nil
}

// parseNSpid reads the process's PIDs in each PID namespace it is in, outermost (the one /proc
// was mounted in: here the guest's initial one) first.
func (p *Process) parseNSpid(fields []string) error {
	if len(fields) == 0 {
		return errors.New("empty")
	}
	for i, f := range fields {
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return fmt.Errorf("pid %q", f)
		}
		if i == 0 {
			if n != p.PID {
				return fmt.Errorf("first pid %d is not the process's %d", n, p.PID)
			}
			continue
		}
		p.NSPIDs = append(p.NSPIDs, n)
	}
	return nil
}

// splitCmdline splits /proc/<pid>/cmdline: NUL-separated arguments with a final NUL.
func splitCmdline(data []byte) []string {
	data = bytes.TrimRight(data, "\x00")
	if len(data) == 0 {
		return nil
	}
	parts := bytes.Split(data, []byte{0})
	out := make([]string, len(parts))
	for i, p := range parts {
		out[i] = string(p)
	}
	return out
}
