// Package inspect builds the views (ps, lsmod, netstat, ...) from files the kernel produces: the
// same /proc files the in-guest tools read, read by system calls injected into the SVM against
// the guest's memory. Listing is separate from rendering: the walkers return typed records.
package inspect

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Files is what a view needs from a running kernel: directory listings and whole files.
type Files interface {
	ReadDir(path string) ([]string, error)
	ReadFile(path string) ([]byte, error)
}

// Process is one row of ps. A field that could not be read is reported in Missing and left at
// its zero value: a view never guesses.
type Process struct {
	PID        int      `json:"pid"`
	PPID       int      `json:"ppid"`
	State      string   `json:"state"` // one letter, as in /proc/<pid>/stat
	UID        int      `json:"uid"`   // real uid
	Threads    int      `json:"threads"`
	RSSKiB     int      `json:"rss_kib"`
	StartTicks uint64   `json:"start_ticks"` // start time, clock ticks after boot
	Comm       string   `json:"comm"`
	Cmdline    []string `json:"cmdline"` // argv; empty for kernel threads
	Kernel     bool     `json:"kernel"`  // a kernel thread (no user address space)
	Missing    []string `json:"missing,omitempty"`

	argLen uint64 // arg_end - arg_start from stat, to check the command line against
}

// Command is what ps prints as the command: the argv joined, or [comm] for kernel threads and
// processes without one.
func (p Process) Command() string {
	if len(p.Cmdline) == 0 {
		return "[" + p.Comm + "]"
	}
	return strings.Join(p.Cmdline, " ")
}

// ListProcesses reads every process's stat, status and cmdline under /proc, in PID order.
func ListProcesses(f Files) ([]Process, error) {
	names, err := f.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list /proc: %w", err)
	}
	var pids []int
	for _, n := range names {
		if pid, err := strconv.Atoi(n); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	sort.Ints(pids)
	out := make([]Process, 0, len(pids))
	for _, pid := range pids {
		out = append(out, readProcess(f, pid))
	}
	return out, nil
}

func readProcess(f Files, pid int) Process {
	p := Process{PID: pid}
	dir := "/proc/" + strconv.Itoa(pid)
	miss := func(what string, err error) { p.Missing = append(p.Missing, what+": "+err.Error()) }
	if data, err := f.ReadFile(dir + "/stat"); err != nil {
		miss("stat", err)
	} else if err := p.parseStat(data); err != nil {
		miss("stat", err)
	}
	if data, err := f.ReadFile(dir + "/status"); err != nil {
		miss("status", err)
	} else if err := p.parseStatus(data); err != nil {
		miss("status", err)
	}
	if data, err := f.ReadFile(dir + "/cmdline"); err != nil {
		miss("cmdline", err)
	} else if err := p.checkCmdline(data); err != nil {
		miss("cmdline", err)
	} else {
		p.Cmdline = splitCmdline(data)
	}
	return p
}

// checkCmdline catches a command line cut short: the kernel returns the whole argument area
// (arg_end - arg_start from stat), NUL-terminated, a page of the process's memory at a time. Less
// than that, ending at a page boundary or without the final NUL, means reading a page failed; it
// is reported instead of shown shortened. (A process that rewrote its title with setproctitle
// legitimately returns a shorter, NUL-terminated string.)
//
// A run of 64 or more NUL bytes is reported too: arguments are separated by single NULs, so such
// a run (empty arguments aside) means a page of the argument area came back as zeros.
func (p *Process) checkCmdline(data []byte) error {
	if i := bytes.Index(bytes.TrimRight(data, "\x00"), make([]byte, 64)); i >= 0 {
		return fmt.Errorf("incomplete: zero bytes from offset %d of %d", i, len(data))
	}
	if p.argLen == 0 || uint64(len(data)) >= p.argLen {
		return nil
	}
	if len(data) > 0 && data[len(data)-1] == 0 && len(data)%4096 != 0 {
		return nil
	}
	return fmt.Errorf("incomplete: %d of %d bytes read", len(data), p.argLen)
}

// pfKthread is PF_KTHREAD in /proc/<pid>/stat's flags field (include/linux/sched.h, exported to
// user space through that field).
const pfKthread = 0x00200000

// parseStat reads "pid (comm) state ppid pgrp session tty tpgid flags ... starttime vsize rss".
// comm may contain spaces and parentheses, so it ends at the last ')'.
func (p *Process) parseStat(data []byte) error {
	s := string(data)
	open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || close < open {
		return errors.New("no (comm)")
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(s[:open])); err != nil || pid != p.PID {
		return fmt.Errorf("stat names pid %q", s[:open])
	}
	p.Comm = s[open+1 : close]
	f := strings.Fields(s[close+1:])
	if len(f) < 22 {
		return fmt.Errorf("%d fields after comm", len(f))
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
	// arg_start and arg_end are fields 48 and 49 (zero when the reader may not see them).
	if len(f) >= 47 {
		if start, end := num(45), num(46); end > start {
			p.argLen = end - start
		}
	}
	return err
}

// parseStatus reads the Uid, Threads and VmRSS lines.
func (p *Process) parseStatus(data []byte) error {
	seen := 0
	for _, line := range strings.Split(string(data), "\n") {
		key, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		fields := strings.Fields(value)
		if len(fields) == 0 {
			continue
		}
		n, err := strconv.Atoi(fields[0])
		switch key {
		case "Uid":
			if err != nil {
				return fmt.Errorf("Uid %q", value)
			}
			p.UID = n
			seen++
		case "Threads":
			if err != nil {
				return fmt.Errorf("Threads %q", value)
			}
			p.Threads = n
			seen++
		case "VmRSS":
			if err != nil {
				return fmt.Errorf("VmRSS %q", value)
			}
			p.RSSKiB = n
		}
	}
	if seen != 2 {
		return errors.New("no Uid or Threads line")
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
