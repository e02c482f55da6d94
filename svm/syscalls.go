package svm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/elastic/go-seccomp-bpf/arch"
)

// Syscall numbers (x86-64) hybridbridge injects.
const (
	SysRead         = 0
	SysWrite        = 1
	SysChdir        = 80
	SysClose        = 3
	SysFstat        = 5
	SysLseek        = 8
	SysPread64      = 17
	SysNanosleep    = 35
	SysGetpid       = 39
	SysUname        = 63
	SysReadlink     = 89
	SysSysinfo      = 99
	SysTime         = 201
	SysGetuid       = 102
	SysGetppid      = 110
	SysGetdents64   = 217
	SysClockGettime = 228
	SysOpenat       = 257
	SysNewfstatat   = 262
	SysReadlinkat   = 267
	SysPipe2        = 293
	SysMmap         = 9
	SysMunmap       = 11
	SysMincore      = 27
)

// allowed are the calls known to be safe to inject: they read kernel state, or (nanosleep,
// pipe2) exist to exercise blocking detection, or (mmap, munmap) change only the agent's own
// address space, or (chdir, write) prepare a program to run: the agent's own directory and a file
// in the SVM's tmpfs. Anything that could reach a device, the network or another process is
// refused.
var allowed = map[int]bool{
	SysRead: true, SysClose: true, SysFstat: true, SysLseek: true, SysPread64: true,
	SysNanosleep: true, SysGetpid: true, SysUname: true, SysReadlink: true, SysSysinfo: true,
	SysGetuid: true, SysGetppid: true, SysGetdents64: true, SysClockGettime: true,
	SysOpenat: true, SysNewfstatat: true, SysReadlinkat: true, SysPipe2: true, SysTime: true,
	SysMmap: true, SysMunmap: true, SysMincore: true, SysWrite: true, SysChdir: true,
}

var syscallNames = map[int]string{
	SysRead: "read", SysClose: "close", SysFstat: "fstat", SysLseek: "lseek", SysPread64: "pread64",
	SysNanosleep: "nanosleep", SysGetpid: "getpid", SysUname: "uname", SysReadlink: "readlink",
	SysSysinfo: "sysinfo", SysGetuid: "getuid", SysGetppid: "getppid", SysGetdents64: "getdents64",
	SysClockGettime: "clock_gettime", SysOpenat: "openat", SysNewfstatat: "newfstatat",
	SysReadlinkat: "readlinkat", SysPipe2: "pipe2", SysTime: "time",
	SysMmap: "mmap", SysMunmap: "munmap", SysMincore: "mincore", SysWrite: "write", SysChdir: "chdir",
}

// SyscallName names a system call number: the agent's own calls, and any other x86-64 call a
// program makes.
func SyscallName(nr int) string {
	if n, ok := syscallNames[nr]; ok {
		return n
	}
	if n, ok := arch.X86_64.SyscallNumbers[nr]; ok {
		return n
	}
	return fmt.Sprintf("syscall %d", nr)
}

// Errno is a negative system-call return turned into an error.
type Errno struct {
	Call string
	Path string
	Err  syscall.Errno
}

func (e *Errno) Error() string {
	if e.Path != "" {
		return fmt.Sprintf("%s %s: %v", e.Call, e.Path, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.Call, e.Err)
}

func (e *Errno) Unwrap() error { return e.Err }

func check(call, path string, ret int64) (int64, error) {
	if ret < 0 && ret > -4096 {
		return ret, &Errno{Call: call, Path: path, Err: syscall.Errno(-ret)}
	}
	return ret, nil
}

// The agent's buffer: a scratch area for paths, then a data area for results.
const (
	pathArea = 0
	pathMax  = 4096
	dataArea = 64 << 10
)

const (
	atFDCWD   = -100
	oRDONLY   = 0
	oDIRECT   = 0o200000 // O_DIRECTORY
	oCLOEXEC  = 0o2000000
	oNONBLOCK = 0o4000
)

func (m *Machine) putPath(path string) (uint64, error) { return placePath(m.writeVirt, m.snap, path) }

func (m *Machine) dataBuf() (uint64, int) {
	return m.snap.Agent.Buffer + dataArea, int(m.snap.Agent.Size - dataArea)
}

// Open opens path in the SVM (openat relative to the agent's working directory) and returns the
// descriptor.
func (m *Machine) Open(path string, flags int) (int, error) {
	va, err := m.putPath(path)
	if err != nil {
		return 0, err
	}
	return openAt(m, va, path, flags)
}

// Close closes a descriptor.
func (m *Machine) CloseFD(fd int) error { return closeFD(m, fd) }

// done closes a file the machine has finished reading, unless the machine is reset before each
// operation (Options.LeaveOpen): then the reset drops the open file with everything else, and
// the close would only run the kernel's release path for nothing.
func (m *Machine) done(fd int) error {
	if m.opts.LeaveOpen {
		return nil
	}
	return m.CloseFD(fd)
}

// Read reads once from fd into the agent's data area and returns what was read.
func (m *Machine) Read(fd int, max int) ([]byte, error) { return readAt(m, m.snap, fd, max) }

// Pread reads up to max bytes at offset from fd.
func (m *Machine) Pread(fd int, max int, offset int64) ([]byte, error) {
	va, size := m.dataBuf()
	n := min(size, max)
	ret, err := m.Syscall(SysPread64, uint64(fd), va, uint64(n), uint64(offset))
	if err != nil {
		return nil, err
	}
	if _, err := check("pread64", "", ret); err != nil {
		return nil, err
	}
	out := make([]byte, ret)
	return out, m.virt.Read(va, out)
}

// ReadFile reads a whole file of the SVM with openat, read and close, all injected.
func (m *Machine) ReadFile(path string) ([]byte, error) {
	fd, err := m.Open(path, oRDONLY)
	if err != nil {
		return nil, err
	}
	out, err := readAll(m, m.snap, fd, path)
	if err != nil {
		m.CloseFD(fd)
		return nil, err
	}
	return out, m.done(fd)
}

// ReadLink reads a symbolic link of the SVM with an injected readlinkat.
func (m *Machine) ReadLink(path string) (string, error) {
	va, err := m.putPath(path)
	if err != nil {
		return "", err
	}
	buf, size := m.dataBuf()
	dirfd := int64(atFDCWD)
	ret, err := m.Syscall(SysReadlinkat, uint64(dirfd), va, buf, uint64(min(size, pathMax)))
	if err != nil {
		return "", err
	}
	if _, err := check("readlinkat", path, ret); err != nil {
		return "", err
	}
	out := make([]byte, ret)
	return string(out), m.virt.Read(buf, out)
}

// ReadRecords reads a record-oriented file (/dev/kmsg: one record per read) without blocking,
// until the kernel says there is no more (EAGAIN). A record longer than the data area fails.
func (m *Machine) ReadRecords(path string) ([][]byte, error) {
	fd, err := m.Open(path, oRDONLY|oNONBLOCK)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for {
		rec, err := m.Read(fd, 1<<16)
		if errors.Is(err, syscall.EAGAIN) {
			break
		}
		if errors.Is(err, syscall.EPIPE) {
			continue // records overwritten while reading: the next read resumes at the oldest
		}
		if err != nil {
			m.CloseFD(fd)
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		if len(rec) == 0 {
			break
		}
		out = append(out, rec)
	}
	return out, m.done(fd)
}

// DirEntry is one getdents64 record.
type DirEntry struct {
	Name  string `json:"name"`
	Inode uint64 `json:"inode"`
	Type  uint8  `json:"type"` // DT_* (4 directory, 8 regular, 10 symlink)
}

// ReadDir lists a directory of the SVM with openat, getdents64 and close. "." and ".." are left
// out.
func (m *Machine) ReadDir(path string) ([]DirEntry, error) {
	fd, err := m.Open(path, oRDONLY|oDIRECT)
	if err != nil {
		return nil, err
	}
	va, size := m.dataBuf()
	var out []DirEntry
	for {
		ret, err := m.Syscall(SysGetdents64, uint64(fd), va, uint64(size))
		if err == nil {
			_, err = check("getdents64", path, ret)
		}
		if err != nil {
			m.CloseFD(fd)
			return nil, err
		}
		if ret == 0 {
			break
		}
		buf := make([]byte, ret)
		if err := m.virt.Read(va, buf); err != nil {
			m.CloseFD(fd)
			return nil, err
		}
		ents, err := parseDirents(buf)
		if err != nil {
			m.CloseFD(fd)
			return nil, fmt.Errorf("getdents64 %s: %w", path, err)
		}
		out = append(out, ents...)
	}
	return out, m.done(fd)
}

// parseDirents decodes struct linux_dirent64 records: u64 ino, s64 off, u16 reclen, u8 type,
// name (NUL-terminated). This is the system call's ABI, not a kernel-internal layout.
func parseDirents(buf []byte) ([]DirEntry, error) {
	var out []DirEntry
	for len(buf) > 0 {
		if len(buf) < 19 {
			return nil, errors.New("truncated record")
		}
		reclen := int(binary.LittleEndian.Uint16(buf[16:]))
		if reclen < 19 || reclen > len(buf) {
			return nil, fmt.Errorf("bad record length %d", reclen)
		}
		name := buf[19:reclen]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		if n := string(name); n != "." && n != ".." {
			out = append(out, DirEntry{Name: n, Inode: binary.LittleEndian.Uint64(buf), Type: buf[18]})
		}
		buf = buf[reclen:]
	}
	return out, nil
}
