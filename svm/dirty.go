package svm

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Reset used to drop the whole RAM mapping (madvise DONTNEED): correct, but every page the next
// operation reads then faults in again from the snapshot file, and those faults were half of a
// Fast-Bridge view's time. A written page of a private file mapping is an anonymous copy; Linux's
// PAGEMAP_SCAN (6.7) lists exactly those, so Reset drops only them and read pages stay mapped.

// Constants of linux/fs.h (not in golang.org/x/sys/unix).
const (
	pageIsFile    = 1 << 2
	pageIsPresent = 1 << 3
	pageIsSwapped = 1 << 4
	pagemapScan   = 0xc0606610 // _IOWR('f', 16, struct pm_scan_arg)
)

type pmScanArg struct {
	Size, Flags, Start, End, WalkEnd, Vec, VecLen, MaxPages       uint64
	CategoryInverted, CategoryMask, CategoryAnyofMask, ReturnMask uint64
}

type pageRegion struct{ Start, End, Categories uint64 }

// writtenPages finds the written pages of private file mappings in /proc/self/pagemap.
type writtenPages struct {
	pagemap *os.File
	vec     []pageRegion
}

// openWrittenPages returns nil where the kernel has no PAGEMAP_SCAN (or no /proc): Reset then
// drops the whole mapping. mapping is a page-aligned mapping to probe with.
func openWrittenPages(mapping []byte) *writtenPages {
	f, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return nil
	}
	w := &writtenPages{pagemap: f, vec: make([]pageRegion, 512)}
	if _, err := w.scan(mapping, func([]byte) error { return nil }); err != nil {
		f.Close()
		return nil
	}
	return w
}

func (w *writtenPages) Close() error { return w.pagemap.Close() }

// scan calls fn for each run of written pages of b (present or swapped, and not the file's own
// pages), and returns how many pages there were.
func (w *writtenPages) scan(b []byte, fn func(run []byte) error) (int, error) {
	base := uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
	end := base + uint64(len(b))
	pages := 0
	for start := base; start < end; {
		arg := pmScanArg{
			Size: uint64(unsafe.Sizeof(pmScanArg{})), Start: start, End: end,
			Vec: uint64(uintptr(unsafe.Pointer(&w.vec[0]))), VecLen: uint64(len(w.vec)),
			CategoryInverted: pageIsFile, CategoryMask: pageIsFile,
			CategoryAnyofMask: pageIsPresent | pageIsSwapped,
		}
		n, _, errno := unix.Syscall(unix.SYS_IOCTL, w.pagemap.Fd(), pagemapScan, uintptr(unsafe.Pointer(&arg)))
		if errno != 0 {
			return pages, fmt.Errorf("PAGEMAP_SCAN: %w", errno)
		}
		for _, r := range w.vec[:n] {
			pages += int(r.End-r.Start) / 4096
			if err := fn(b[r.Start-base : r.End-base]); err != nil {
				return pages, err
			}
		}
		if arg.WalkEnd <= start {
			return pages, fmt.Errorf("PAGEMAP_SCAN made no progress at %#x", start)
		}
		start = arg.WalkEnd
	}
	return pages, nil
}
