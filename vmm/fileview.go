package vmm

import (
	"fmt"
	"hash"
	"os"
	"runtime/debug"
)

// FileView is guest-physical RAM read through a read-only shared mapping of QEMU's memory
// backend file (memory-backend-file,share=on, typically under /dev/shm). Reads see the guest's
// live memory; they are consistent only while the guest is paused.
type FileView struct{ mem }

// OpenFileView maps the file at path. Nil ranges mean the whole file at guest-physical 0; use
// PCRanges for guests whose RAM is split around the PCI hole. The file descriptor is closed
// before returning: the mapping keeps the memory reachable.
func OpenFileView(path string, ranges []PhysRange) (*FileView, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open guest RAM: %w", err)
	}
	defer f.Close()
	return NewFileView(f, ranges)
}

// NewFileView maps f, which may be open for writing: the mapping is read-only regardless. The
// view does not keep f; the caller may close it at once.
func NewFileView(f *os.File, ranges []PhysRange) (*FileView, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("file view %s: %w", f.Name(), err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("file view %s: not a regular file (%v)", f.Name(), fi.Mode().Type())
	}
	// Checking ranges against the file size up front matters: touching a mapped page beyond
	// EOF is SIGBUS, not an error return.
	rs, size, err := checkRanges(ranges, uint64(fi.Size()))
	if err != nil {
		return nil, fmt.Errorf("file view %s: %w", f.Name(), err)
	}
	var mapLen uint64
	for _, r := range rs {
		mapLen = max(mapLen, r.FileOffset+r.Size)
	}
	data, err := mapReadOnly(f, mapLen)
	if err != nil {
		return nil, fmt.Errorf("file view: %w", err)
	}
	return &FileView{mem{name: f.Name(), data: data, ranges: rs, size: size, mapped: true}}, nil
}

// Close unmaps the file. Later reads fail with ErrClosed; closing twice is a no-op.
func (v *FileView) Close() error {
	if v.data == nil {
		return nil
	}
	data := v.data
	v.data = nil
	return unmap(v.name, data)
}

// copyMapped copies out of a file mapping. Pages of a file truncated after mapping raise SIGBUS
// when touched; SetPanicOnFault turns that into a recoverable panic so that the caller gets an
// error instead of the whole process dying.
func copyMapped(dst, src []byte) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = mappingFault(r)
		}
	}()
	copy(dst, src)
	return nil
}

// hashMapped feeds a file mapping to h, surviving truncation like copyMapped.
func hashMapped(h hash.Hash, src []byte) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = mappingFault(r)
		}
	}()
	h.Write(src)
	return nil
}

// mappingFault converts a recovered memory fault into an error and re-raises anything else,
// which would be a bug rather than a vanished page.
func mappingFault(r any) error {
	if f, ok := r.(interface{ Addr() uintptr }); ok {
		return fmt.Errorf("memory fault at host address %#x in the mapping (backing file truncated?)", f.Addr())
	}
	panic(r)
}
