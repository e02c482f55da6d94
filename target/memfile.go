package target

import (
	"bytes"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// copyChunk is the unit of copying a guest's RAM: large enough that the per-call cost vanishes
// (process_vm_readv with 1 MiB iovecs ran at ~4.8 GB/s here), small enough to check for
// cancellation often.
const copyChunk = 1 << 20

const pageSize = 4096

// memFile makes an anonymous in-memory file: its pages cost memory only once written, and the SVM
// can map it copy-on-write like the shared RAM file of a guest we booted.
func memFile(name string) (*os.File, error) {
	fd, err := unix.MemfdCreate("hybridbridge-ram", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("%s: memory file for its RAM: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "hybridbridge-ram:"+name), nil
}

var zeroPage [pageSize]byte

// writeNonZero writes buf at off, page by page, skipping all-zero pages: the file reads zeros
// there anyway, and most of an idle guest's RAM was never touched.
func writeNonZero(f *os.File, buf []byte, off uint64) error {
	for i := 0; i < len(buf); {
		if bytes.Equal(buf[i:min(i+pageSize, len(buf))], zeroPage[:min(pageSize, len(buf)-i)]) {
			i += pageSize
			continue
		}
		// Extend the run over the following non-zero pages: one write for the lot.
		j := i + pageSize
		for j < len(buf) && !bytes.Equal(buf[j:min(j+pageSize, len(buf))], zeroPage[:min(pageSize, len(buf)-j)]) {
			j += pageSize
		}
		j = min(j, len(buf))
		if _, err := f.WriteAt(buf[i:j], int64(off)+int64(i)); err != nil {
			return err
		}
		i = j
	}
	return nil
}
