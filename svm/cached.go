package svm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// ErrNotInMemory means a file is not wholly in the page cache of the memory read: reading it
// would need the disk, which the SVM does not have.
var ErrNotInMemory = errors.New("not in memory")

const (
	oNOATIME      = 0o1000000
	protRead      = 1
	mapShared     = 1
	sIFMT, sIFREG = 0o170000, 0o100000
	// cachedMax bounds what ReadCached reads: configuration files, not data.
	cachedMax = 1 << 20
)

// AgentDirPath is path (absolute, in the views' procfs) relative to the agent's working
// directory, ProcRoot.
func AgentDirPath(path string) (string, error) {
	rel, ok := strings.CutPrefix(path, ProcRoot+"/")
	if !ok || rel == "" {
		return "", fmt.Errorf("%s is not under %s", path, ProcRoot)
	}
	return rel, nil
}

// ReadCached reads the regular file at path, relative to the agent's working directory, only if
// all of it is in the page cache (mincore on a mapping of it); otherwise it fails with
// ErrNotInMemory before reading. The file is opened O_NOATIME, so its access time is not
// updated either.
func (m *Machine) ReadCached(path string) ([]byte, error) {
	va, err := m.putPath(path)
	if err != nil {
		return nil, err
	}
	dirfd := int64(atFDCWD)
	fd64, err := m.Syscall(SysOpenat, uint64(dirfd), va, oRDONLY|oNOATIME|oCLOEXEC, 0)
	if err == nil {
		fd64, err = check("openat", path, fd64)
	}
	if err != nil {
		return nil, err
	}
	fd := int(fd64)
	buf, room := m.dataBuf()
	// struct stat (the x86-64 system-call ABI): st_mode at 24, st_size at 48.
	ret, err := m.Syscall(SysFstat, uint64(fd), buf)
	if err == nil {
		_, err = check("fstat", path, ret)
	}
	if err != nil {
		return nil, err
	}
	var st [64]byte
	if err := m.virt.Read(buf, st[:]); err != nil {
		return nil, err
	}
	if mode := binary.LittleEndian.Uint32(st[24:]); mode&sIFMT != sIFREG {
		return nil, fmt.Errorf("%s: not a regular file (mode %#o)", path, mode)
	}
	size := binary.LittleEndian.Uint64(st[48:])
	if size == 0 {
		return []byte{}, m.done(fd)
	}
	if size > min(cachedMax, uint64(room)) {
		return nil, fmt.Errorf("%s: %d bytes, more than is read from memory", path, size)
	}
	addr, err := m.Syscall(SysMmap, 0, size, protRead, mapShared, uint64(fd), 0)
	if err == nil {
		_, err = check("mmap", path, addr)
	}
	if err != nil {
		return nil, err
	}
	pages := (size + 4095) / 4096
	if ret, err = m.Syscall(SysMincore, uint64(addr), size, buf); err == nil {
		_, err = check("mincore", path, ret)
	}
	if err != nil {
		return nil, err
	}
	vec := make([]byte, pages)
	if err := m.virt.Read(buf, vec); err != nil {
		return nil, err
	}
	for i, v := range vec {
		if v&1 == 0 {
			return nil, fmt.Errorf("%s: page %d of %d is %w", path, i, pages, ErrNotInMemory)
		}
	}
	data, err := m.Pread(fd, int(size), 0)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if uint64(len(data)) != size {
		return nil, fmt.Errorf("read %s: %d of %d bytes", path, len(data), size)
	}
	if !m.opts.LeaveOpen {
		if ret, err = m.Syscall(SysMunmap, uint64(addr), size); err == nil {
			_, err = check("munmap", path, ret)
		}
		if err != nil {
			return nil, err
		}
	}
	return data, m.done(fd)
}
