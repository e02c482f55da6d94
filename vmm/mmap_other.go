//go:build !linux

package vmm

import (
	"errors"
	"fmt"
	"os"
)

func mapReadOnly(f *os.File, size uint64) ([]byte, error) {
	return nil, fmt.Errorf("mmap %s: %w", f.Name(), errors.ErrUnsupported)
}

func unmap(name string, data []byte) error {
	return fmt.Errorf("munmap %s: %w", name, errors.ErrUnsupported)
}
