//go:build linux

package vmm

import (
	"fmt"
	"os"
	"syscall"
)

// mapReadOnly maps the first size bytes of f. PROT_READ makes any store into guest RAM fault in
// this process instead of corrupting the guest; MAP_SHARED makes the mapping see the guest's
// current memory rather than a private copy.
func mapReadOnly(f *os.File, size uint64) ([]byte, error) {
	if size > uint64(^uint(0)>>1) {
		return nil, fmt.Errorf("mmap %s: %d bytes do not fit the address space", f.Name(), size)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("mmap %s: %w", f.Name(), err)
	}
	var data []byte
	var mapErr error
	err = rc.Control(func(fd uintptr) {
		data, mapErr = syscall.Mmap(int(fd), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	})
	if err == nil {
		err = mapErr
	}
	if err != nil {
		return nil, fmt.Errorf("mmap %s read-only (%d bytes): %w", f.Name(), size, err)
	}
	return data, nil
}

func unmap(name string, data []byte) error {
	if err := syscall.Munmap(data); err != nil {
		return fmt.Errorf("munmap %s: %w", name, err)
	}
	return nil
}
