package target

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"hybridbridge/vmm"
)

// procMem reads a guest's RAM where it lives: in the address space of its QEMU process, with
// process_vm_readv. It implements vmm.PhysView; its reads are as racy as the guest is running.
type procMem struct {
	name string
	pid  int
	// ranges are the guest's RAM ranges sorted by GuestPhys; FileOffset is the offset of the
	// range in QEMU's RAM block.
	ranges []vmm.PhysRange
	// hosts[i] is QEMU's virtual address of ranges[i]'s first byte.
	hosts []uint64
	size  uint64
}

var _ vmm.PhysView = (*procMem)(nil)

func newProcMem(name string, pid int, ranges []vmm.PhysRange, hosts []uint64) (*procMem, error) {
	if len(ranges) == 0 || len(ranges) != len(hosts) {
		return nil, fmt.Errorf("%s: no RAM ranges", name)
	}
	idx := make([]int, len(ranges))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return ranges[idx[a]].GuestPhys < ranges[idx[b]].GuestPhys })
	m := &procMem{name: name, pid: pid}
	for n, i := range idx {
		r := ranges[i]
		if r.Size == 0 || r.GuestPhys%pageSize != 0 || r.Size%pageSize != 0 || hosts[i]%pageSize != 0 {
			return nil, fmt.Errorf("%s: RAM range %v at host %#x is not page-aligned", name, r, hosts[i])
		}
		if n > 0 && r.GuestPhys < m.ranges[n-1].End() {
			return nil, fmt.Errorf("%s: RAM ranges %v and %v overlap", name, m.ranges[n-1], r)
		}
		m.ranges = append(m.ranges, r)
		m.hosts = append(m.hosts, hosts[i])
		m.size += r.Size
	}
	return m, nil
}

func (m *procMem) Name() string            { return m.name }
func (m *procMem) Ranges() []vmm.PhysRange { return m.ranges }
func (m *procMem) Size() uint64            { return m.size }

// find returns the index of the range holding addr.
func (m *procMem) find(addr uint64) (int, bool) {
	i := sort.Search(len(m.ranges), func(i int) bool { return m.ranges[i].End() > addr })
	return i, i < len(m.ranges) && m.ranges[i].GuestPhys <= addr
}

func (m *procMem) fault(addr uint64, err error) error {
	return &vmm.FaultError{View: m.name, Op: "read phys", Addr: addr, Err: err}
}

// ReadPhys implements vmm.PhysView.
func (m *procMem) ReadPhys(addr uint64, buf []byte) error {
	for len(buf) > 0 {
		i, ok := m.find(addr)
		if !ok {
			return m.fault(addr, vmm.ErrNotBacked)
		}
		r := m.ranges[i]
		n := min(uint64(len(buf)), r.End()-addr)
		if err := m.readHost(m.hosts[i]+(addr-r.GuestPhys), buf[:n]); err != nil {
			var short *shortRead
			if errors.As(err, &short) {
				return m.fault(addr+short.done, short.err)
			}
			return m.fault(addr, err)
		}
		buf, addr = buf[n:], addr+n
	}
	return nil
}

// maxReadv bounds one process_vm_readv: the kernel moves at most MAX_RW_COUNT (just under 2 GiB)
// per call.
const maxReadv = 1 << 30

// shortRead says how far a read got before it failed.
type shortRead struct {
	done uint64
	err  error
}

func (e *shortRead) Error() string { return e.err.Error() }
func (e *shortRead) Unwrap() error { return e.err }

// readHost copies QEMU's memory at host into buf.
func (m *procMem) readHost(host uint64, buf []byte) error {
	var done uint64
	for len(buf) > 0 {
		n := min(len(buf), maxReadv)
		local := []unix.Iovec{{Base: &buf[0]}}
		local[0].SetLen(n)
		remote := []unix.RemoteIovec{{Base: uintptr(host), Len: n}}
		got, err := unix.ProcessVMReadv(m.pid, local, remote, 0)
		if err != nil {
			return &shortRead{done, m.readErr(host, err)}
		}
		if got == 0 {
			return &shortRead{done, m.readErr(host, unix.EFAULT)}
		}
		buf, host, done = buf[got:], host+uint64(got), done+uint64(got)
	}
	return nil
}

// errPermission is how a refused read of QEMU's memory reads, whatever part refused it (ptrace
// access mode for process_vm_readv and /proc/PID/pagemap, file modes for smaps).
func errPermission(pid int) error {
	return fmt.Errorf("cannot read QEMU pid %d's memory: permission denied (run as root or as QEMU's user)", pid)
}

// readErr turns a process_vm_readv failure into the reason a user can act on.
func (m *procMem) readErr(host uint64, err error) error {
	switch {
	case errors.Is(err, unix.ESRCH):
		return fmt.Errorf("%w: QEMU pid %d has exited", ErrGone, m.pid)
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return errPermission(m.pid)
	case errors.Is(err, unix.EFAULT):
		return fmt.Errorf("QEMU pid %d has no readable memory at host address %#x: its RAM mapping changed", m.pid, host)
	}
	return fmt.Errorf("process_vm_readv from QEMU pid %d at %#x: %w", m.pid, host, err)
}

// Bits of a /proc/PID/pagemap entry (Documentation/admin-guide/mm/pagemap.rst).
const (
	pagemapPresent = 1 << 63
	pagemapSwapped = 1 << 62
)

// pagemapWindow is how much RAM one read of pagemap entries covers (512 KiB of entries).
const pagemapWindow = 256 << 20

// readvBatch is the buffer one process_vm_readv fills, from up to readvIovecs runs of pages of at
// most copyChunk each.
const (
	readvBatch  = 4 << 20
	readvIovecs = 1024 // IOV_MAX
)

// ram copies the guest's RAM into a memory file. Where QEMU's RAM is private anonymous memory
// (its default), only the pages its page tables hold are read (present or swapped out, per
// /proc/PID/pagemap): a page the guest never touched was never populated and reads as zeros,
// which the file's holes are already. An idle guest has touched a fraction of its RAM, so this
// reads far less than the whole of it. RAM in a shared or file mapping (memory-backend-file,
// memfd) is read whole: its pages can sit in the page cache without being mapped in QEMU.
// All-zero pages are left out of the file either way.
//
// Measured (BenchmarkProcessRAM, idle TCG guests of 256 and 512 MiB): 108 MiB populated, read
// in 35-55 ms whatever the RAM size; reading everything took 0.45 s (256 MiB) and 0.8 s (512 MiB)
// the first time, when each untouched page faults in as the zero page, and 40-80 ms after.
// Reading everything also leaves those zero-page mappings behind, which pagemap then counts as
// present.
func (m *procMem) ram(ctx context.Context) (*RAM, error) {
	start := time.Now()
	anon, err := anonymousRanges(m.pid, m.hosts, m.ranges)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", m.name, err)
	}
	pm, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", m.pid))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", m.name, m.procErr(err))
	}
	defer pm.Close()
	f, err := memFile(m.name)
	if err != nil {
		return nil, err
	}
	out := &RAM{File: f}
	c := pageCopier{m: m, pagemap: pm, file: f, buf: make([]byte, readvBatch)}
	for i, r := range m.ranges {
		out.Ranges = append(out.Ranges, vmm.PhysRange{GuestPhys: r.GuestPhys, FileOffset: r.GuestPhys, Size: r.Size})
		if err := c.copyRange(ctx, r.GuestPhys, m.hosts[i], r.Size, !anon[i]); err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: copy RAM: %w", m.name, err)
		}
	}
	if err := f.Truncate(int64(out.End())); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: size RAM file: %w", m.name, err)
	}
	out.Copied = c.copied
	out.Took = time.Since(start)
	return out, nil
}

// procErr names the reason a /proc file of QEMU's could not be read.
func (m *procMem) procErr(err error) error {
	switch {
	case errors.Is(err, os.ErrNotExist), errors.Is(err, unix.ESRCH):
		return fmt.Errorf("%w: QEMU pid %d has exited", ErrGone, m.pid)
	case errors.Is(err, os.ErrPermission), errors.Is(err, unix.EPERM):
		return errPermission(m.pid)
	}
	return err
}

// pageCopier batches the populated pages of a range into few process_vm_readv calls.
type pageCopier struct {
	m       *procMem
	pagemap *os.File
	file    *os.File
	buf     []byte
	entries []byte
	// The batch being gathered: runs of pages read together into buf.
	remote []unix.RemoteIovec
	guest  []uint64 // guest-physical address of each run
	used   int      // bytes of buf the batch fills
	copied uint64
}

type pageRun struct{ guest, host, size uint64 }

// copyRange copies the populated pages of a range, or all of them.
func (c *pageCopier) copyRange(ctx context.Context, guest, host, size uint64, all bool) error {
	for off := uint64(0); off < size; off += pagemapWindow {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(pagemapWindow, size-off)
		pages := int(n / pageSize)
		if cap(c.entries) < pages*8 {
			c.entries = make([]byte, pages*8)
		}
		ent := c.entries[:pages*8]
		if all {
			for i := range ent {
				ent[i] = 0xff
			}
		} else if got, err := c.pagemap.ReadAt(ent, int64((host+off)/pageSize*8)); got < len(ent) {
			// pagemap answers every user address, mapped or not; it comes up short only when
			// the process's memory is gone.
			if err == nil || errors.Is(err, io.EOF) {
				err = unix.ESRCH
			}
			return fmt.Errorf("read pagemap: %w", c.m.procErr(err))
		}
		// Runs of populated pages, each at most copyChunk long.
		for p := 0; p < pages; {
			if !populated(ent, p) {
				p++
				continue
			}
			q := p + 1
			for q < pages && populated(ent, q) && (q-p)*pageSize < copyChunk {
				q++
			}
			a := off + uint64(p)*pageSize
			if err := c.add(pageRun{guest + a, host + a, uint64(q-p) * pageSize}); err != nil {
				return err
			}
			p = q
		}
	}
	return c.flush()
}

func populated(ent []byte, page int) bool {
	return binary.LittleEndian.Uint64(ent[page*8:])&(pagemapPresent|pagemapSwapped) != 0
}

func (c *pageCopier) add(r pageRun) error {
	if c.used+int(r.size) > len(c.buf) || len(c.remote) == readvIovecs {
		if err := c.flush(); err != nil {
			return err
		}
	}
	c.remote = append(c.remote, unix.RemoteIovec{Base: uintptr(r.host), Len: int(r.size)})
	c.guest = append(c.guest, r.guest)
	c.used += int(r.size)
	return nil
}

// flush reads the batch and writes its non-zero pages to the file.
func (c *pageCopier) flush() error {
	if len(c.remote) == 0 {
		return nil
	}
	local := []unix.Iovec{{Base: &c.buf[0]}}
	local[0].SetLen(c.used)
	got, err := unix.ProcessVMReadv(c.m.pid, local, c.remote, 0)
	if err == nil && got < c.used {
		// Transfers stop at the first run that fails: read that one alone for its reason.
		err = unix.EFAULT
		pos := 0
		for i, r := range c.remote {
			if pos+r.Len > got {
				rerr := c.m.readHost(uint64(r.Base), c.buf[pos:pos+r.Len])
				if rerr == nil {
					rerr = fmt.Errorf("QEMU pid %d: short read at host address %#x", c.m.pid, r.Base)
				}
				return fmt.Errorf("guest-physical %#x: %w", c.guest[i], rerr)
			}
			pos += r.Len
		}
	}
	if err != nil {
		return fmt.Errorf("guest-physical %#x: %w", c.guest[0], c.m.readErr(uint64(c.remote[0].Base), err))
	}
	pos := 0
	for i, r := range c.remote {
		if err := writeNonZero(c.file, c.buf[pos:pos+r.Len], c.guest[i]); err != nil {
			return err
		}
		pos += r.Len
	}
	c.copied += uint64(c.used)
	c.remote, c.guest, c.used = c.remote[:0], c.guest[:0], 0
	return nil
}

// anonymousRanges says for each range whether QEMU's memory behind it is private anonymous
// memory all through, by /proc/PID/maps.
func anonymousRanges(pid int, hosts []uint64, ranges []vmm.PhysRange) ([]bool, error) {
	path := fmt.Sprintf("/proc/%d/maps", pid)
	data, err := os.ReadFile(path)
	if err != nil {
		m := procMem{pid: pid}
		return nil, m.procErr(err)
	}
	type vma struct{ start, end uint64 }
	var anon []vma
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		// "start-end perms offset dev inode [path]": anonymous has inode 0 and no path.
		if len(f) != 5 || f[4] != "0" || len(f[1]) < 4 || f[1][3] != 'p' {
			continue
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		a, err1 := strconv.ParseUint(lo, 16, 64)
		b, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 == nil && err2 == nil {
			anon = append(anon, vma{a, b})
		}
	}
	out := make([]bool, len(ranges))
	for i, r := range ranges {
		// maps is sorted; the range may span several adjacent VMAs.
		at, end := hosts[i], hosts[i]+r.Size
		for _, v := range anon {
			if v.start <= at && at < v.end {
				at = v.end
			}
		}
		out[i] = at >= end
	}
	return out, nil
}
