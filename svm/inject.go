package svm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"hybridbridge/vmm"
)

// What injecting calls needs, whichever executor (Unicorn or KVM) runs them.

// mapSnapshotRAM maps ram.img with prot and flags: private and writable for an executor to run
// on (the snapshot file is never written), or shared and read-only for what a reset copies back.
func mapSnapshotRAM(snap *Snapshot, prot, flags int) ([]byte, error) {
	f, err := os.Open(snap.RAMPath())
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ram, err := unix.Mmap(int(f.Fd()), 0, int(snap.Layout.RAMEnd()), prot, flags)
	if err != nil {
		return nil, fmt.Errorf("map SVM RAM %s: %w", snap.RAMPath(), err)
	}
	return ram, nil
}

// agentView is the agent's address space over the SVM's physical memory (the kernel half is every
// process's), and the agent's pt_regs as captured, which every injected call starts from.
func agentView(name string, phys vmm.PhysView, snap *Snapshot) (*vmm.VirtView, []byte, error) {
	w, err := vmm.NewWalker(phys, snap.CPU.CR3, vmm.PagingLevels(snap.CPU.CR4))
	if err != nil {
		return nil, nil, err
	}
	virt := vmm.NewVirtView(name, w)
	saved := make([]byte, ptSize)
	if err := virt.Read(snap.PtRegs, saved); err != nil {
		return nil, nil, fmt.Errorf("snapshot pt_regs: %w", err)
	}
	return virt, saved, nil
}

// writeVirtRAM writes data at virtual address va of the agent's address space (walker w) into
// ram; mark, if set, sees each physical range written.
func writeVirtRAM(w *vmm.Walker, ram []byte, va uint64, data []byte, mark func(pa, n uint64)) error {
	for len(data) > 0 {
		pa, size, _, err := w.Translate(va)
		if err != nil {
			return fmt.Errorf("write %#x: %w", va, err)
		}
		n := min(uint64(len(data)), size-(va&(size-1)))
		if pa+n > uint64(len(ram)) {
			return fmt.Errorf("write %#x: physical %#x outside SVM RAM", va, pa)
		}
		if mark != nil {
			mark(pa, n)
		}
		copy(ram[pa:pa+n], data[:n])
		data, va = data[n:], va+n
	}
	return nil
}

// checkCall refuses a call off the allow-list or with too many arguments.
func checkCall(nr int, args []uint64) error {
	if !allowed[nr] {
		return fmt.Errorf("%w: %s (%d)", ErrNotAllowed, SyscallName(nr), nr)
	}
	if len(args) > 6 {
		return fmt.Errorf("%s: %d arguments, at most 6", SyscallName(nr), len(args))
	}
	return nil
}

// placeCall writes call nr into the agent's pt_regs (saved is them as captured) and the return
// address on the kernel stack, as the entry code would have before calling do_syscall_64.
func placeCall(write func(va uint64, data []byte) error, snap *Snapshot, saved []byte, nr int, args []uint64) error {
	regs := bytes.Clone(saved)
	put := func(off int, v uint64) { binary.LittleEndian.PutUint64(regs[off:], v) }
	var a [6]uint64
	copy(a[:], args)
	put(ptOrigAX, uint64(nr))
	negENOSYS := int64(-enosys)
	put(ptAX, uint64(negENOSYS)) // as the entry code sets it
	put(ptDI, a[0])
	put(ptSI, a[1])
	put(ptDX, a[2])
	put(ptR10, a[3])
	put(ptR8, a[4])
	put(ptR9, a[5])
	if err := write(snap.PtRegs, regs); err != nil {
		return err
	}
	var ret [8]byte
	binary.LittleEndian.PutUint64(ret[:], snap.ReturnAddr)
	return write(snap.CPU.GPR["rsp"], ret[:])
}

// placePath writes path, NUL-terminated, where the agent's buffer takes paths, and returns its
// address.
func placePath(write func(va uint64, data []byte) error, snap *Snapshot, path string) (uint64, error) {
	if len(path)+1 > pathMax {
		return 0, fmt.Errorf("path too long (%d bytes)", len(path))
	}
	if bytes.IndexByte([]byte(path), 0) >= 0 {
		return 0, fmt.Errorf("path contains NUL")
	}
	va := snap.Agent.Buffer + pathArea
	return va, write(va, append([]byte(path), 0))
}

// caller is an executor that injects calls into the agent.
type caller interface {
	Syscall(nr int, args ...uint64) (int64, error)
	ReadVirt(va uint64, buf []byte) error
}

// openAt opens the path placed at va (placePath) relative to the agent's working directory.
func openAt(c caller, va uint64, path string, flags int) (int, error) {
	dirfd := int64(atFDCWD)
	fd, err := c.Syscall(SysOpenat, uint64(dirfd), va, uint64(flags|oCLOEXEC), 0)
	if err != nil {
		return 0, err
	}
	fd, err = check("openat", path, fd)
	return int(fd), err
}

// readAt reads once from fd into the agent's data area (at most max bytes) and returns what was
// read.
func readAt(c caller, snap *Snapshot, fd, max int) ([]byte, error) {
	va, size := snap.Agent.Buffer+dataArea, int(snap.Agent.Size-dataArea)
	ret, err := c.Syscall(SysRead, uint64(fd), va, uint64(min(size, max)))
	if err != nil {
		return nil, err
	}
	if _, err := check("read", "", ret); err != nil {
		return nil, err
	}
	out := make([]byte, ret)
	return out, c.ReadVirt(va, out)
}

// readAll reads fd to its end.
func readAll(c caller, snap *Snapshot, fd int, path string) ([]byte, error) {
	var out []byte
	for {
		chunk, err := readAt(c, snap, fd, 1<<20)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		if len(chunk) == 0 {
			return out, nil
		}
		out = append(out, chunk...)
	}
}

// closeFD closes a descriptor.
func closeFD(c caller, fd int) error {
	ret, err := c.Syscall(SysClose, uint64(fd))
	if err != nil {
		return err
	}
	_, err = check("close", "", ret)
	return err
}
