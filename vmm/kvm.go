//go:build linux

package vmm

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/bobuhiro11/gokvm/kvm"
)

// KVM owns an open /dev/kvm. gokvm's kvm package is free functions over raw descriptors; the
// ownership (which descriptor and mapping belongs to what, and the order they are released in)
// is these types'.
type KVM struct {
	f *os.File
}

// OpenKVM opens /dev/kvm and checks its API version.
func OpenKVM() (*KVM, error) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/kvm: %w", err)
	}
	v, err := kvm.GetAPIVersion(f.Fd())
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("KVM_GET_API_VERSION: %w", err)
	}
	if v != 12 {
		f.Close()
		return nil, fmt.Errorf("KVM API version %d, want 12", v)
	}
	return &KVM{f: f}, nil
}

// Close releases /dev/kvm. Precondition: every VM made from it is destroyed.
func (k *KVM) Close() error { return k.f.Close() }

// VM is one KVM virtual machine: memory slots and vCPUs, no interrupt controller.
type VM struct {
	k     *KVM
	fd    int
	slots uint32
	vcpus []*VCPU
}

// NewVM creates a virtual machine.
func (k *KVM) NewVM() (*VM, error) {
	fd, err := kvm.CreateVM(k.f.Fd())
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	return &VM{k: k, fd: int(fd)}, nil
}

// AddMemory maps mem at guest-physical address phys as the next memory slot. mem must stay
// mapped until the VM is destroyed.
func (vm *VM) AddMemory(phys uint64, mem []byte, readOnly bool) error {
	if len(mem) == 0 || len(mem)%4096 != 0 || phys%4096 != 0 {
		return fmt.Errorf("memory slot at %#x: %d bytes, not whole pages", phys, len(mem))
	}
	r := &kvm.UserspaceMemoryRegion{Slot: vm.slots, GuestPhysAddr: phys, MemorySize: uint64(len(mem)), UserspaceAddr: sliceAddr(mem)}
	if readOnly {
		r.SetMemReadonly()
	}
	if err := kvm.SetUserMemoryRegion(uintptr(vm.fd), r); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION slot %d at %#x: %w", vm.slots, phys, err)
	}
	vm.slots++
	return nil
}

// Destroy releases the vCPUs and the VM, in that order.
func (vm *VM) Destroy() error {
	var errs []error
	for _, c := range vm.vcpus {
		errs = append(errs, c.destroy())
	}
	vm.vcpus = nil
	errs = append(errs, syscall.Close(vm.fd))
	return errors.Join(errs...)
}

// VCPU owns a vCPU descriptor, its mapped run area and its exit counters.
type VCPU struct {
	fd     int
	run    []byte
	Exits  map[kvm.ExitType]int // exits seen, by reason
	synced bool                 // KVM stores the registers in run at every exit (SyncRegs)
}

// NewVCPU creates a vCPU and maps its run area.
func (vm *VM) NewVCPU() (*VCPU, error) {
	fd, err := kvm.CreateVCPU(uintptr(vm.fd), len(vm.vcpus))
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU: %w", err)
	}
	size, err := kvm.GetVCPUMMmapSize(vm.k.f.Fd())
	if err != nil {
		syscall.Close(int(fd))
		return nil, fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	run, err := syscall.Mmap(int(fd), 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		syscall.Close(int(fd))
		return nil, fmt.Errorf("map the vCPU run area: %w", err)
	}
	c := &VCPU{fd: int(fd), run: run, Exits: map[kvm.ExitType]int{}}
	vm.vcpus = append(vm.vcpus, c)
	return c, nil
}

func (c *VCPU) destroy() error {
	return errors.Join(syscall.Munmap(c.run), syscall.Close(c.fd))
}

// LongMode puts the vCPU in 64-bit mode with paging rooted at cr3, flat code and data segments
// (no GDT in guest memory is needed: KVM loads the hidden parts), and RIP/RSP as given.
func (c *VCPU) LongMode(cr3, rip, rsp uint64) error {
	s, err := kvm.GetSregs(uintptr(c.fd))
	if err != nil {
		return fmt.Errorf("KVM_GET_SREGS: %w", err)
	}
	code := kvm.Segment{Base: 0, Limit: 0xffffffff, Selector: 0x8, Typ: 0xb, Present: 1, S: 1, L: 1, G: 1}
	data := kvm.Segment{Base: 0, Limit: 0xffffffff, Selector: 0x10, Typ: 0x3, Present: 1, S: 1, DB: 1, G: 1}
	s.CS = code
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.CR3 = cr3
	s.CR4 = 1 << 5                             // PAE
	s.CR0 = 1<<0 | 1<<4 | 1<<5 | 1<<16 | 1<<31 // PE, ET, NE, WP, PG
	s.EFER = 1<<8 | 1<<10                      // LME, LMA
	if err := kvm.SetSregs(uintptr(c.fd), s); err != nil {
		return fmt.Errorf("KVM_SET_SREGS: %w", err)
	}
	regs := &kvm.Regs{RIP: rip, RSP: rsp, RFLAGS: 2}
	if err := kvm.SetRegs(uintptr(c.fd), regs); err != nil {
		return fmt.Errorf("KVM_SET_REGS: %w", err)
	}
	return nil
}

// Regs reads the general registers.
func (c *VCPU) Regs() (*kvm.Regs, error) { return kvm.GetRegs(uintptr(c.fd)) }

// SetRegs writes the general registers.
func (c *VCPU) SetRegs(r *kvm.Regs) error { return kvm.SetRegs(uintptr(c.fd), r) }

// Exit is why KVM_RUN returned.
type Exit struct {
	Reason kvm.ExitType
	// For EXITIO: direction (kvm.EXITIOOUT/IN), size, port and the data bytes.
	IODir  uint64
	IOPort uint64
	IOData []byte
}

// Run enters the guest until its next exit.
func (c *VCPU) Run() (Exit, error) {
	if err := kvm.Run(uintptr(c.fd)); err != nil {
		return Exit{}, fmt.Errorf("KVM_RUN: %w", err)
	}
	rd := runData(c.run)
	e := Exit{Reason: kvm.ExitType(rd.ExitReason)}
	c.Exits[e.Reason]++
	if e.Reason == kvm.EXITIO {
		dir, size, port, count, off := rd.IO()
		e.IODir, e.IOPort = dir, port
		if n := size * count; off+n <= uint64(len(c.run)) {
			e.IOData = append([]byte(nil), c.run[off:off+n]...)
		}
	}
	return e, nil
}

// KVMProbe is what a run-time probe found about hardware KVM.
type KVMProbe struct {
	Opens    bool          `json:"opens"`   // /dev/kvm opened and speaks API 12
	RunsCode bool          `json:"runs"`    // a hand-made long-mode program ran to its end
	ExitTime time.Duration `json:"exit_ns"` // mean round trip of a guest exit to user space
	Usable   bool          `json:"usable"`  // fit for Fast-Bridge
	Reason   string        `json:"reason"`  // why (not)
}

// maxExitTime is the slowest exit round trip a usable KVM shows: hardware virtualization takes a
// few microseconds; a paravirtual /dev/kvm that emulates privileged work takes far longer.
const maxExitTime = 50 * time.Microsecond

// ProbeKVM runs a small long-mode program under KVM that exits to user space many times, and
// decides whether KVM is usable for Fast-Bridge: it must open, run the program, and exit quickly,
// and the CPU must show hardware virtualization (hw says whether it does).
func ProbeKVM(hw bool) KVMProbe {
	var p KVMProbe
	k, err := OpenKVM()
	if err != nil {
		p.Reason = err.Error()
		return p
	}
	defer k.Close()
	p.Opens = true
	const exits = 200
	res, err := RunLongModeProgram(k, exits)
	if err != nil {
		p.Reason = "long-mode program: " + err.Error()
		return p
	}
	p.RunsCode = res.RAX == LongModeResult(exits)
	p.ExitTime = res.Elapsed / exits
	switch {
	case !p.RunsCode:
		p.Reason = fmt.Sprintf("long-mode program computed %#x, want %#x", res.RAX, LongModeResult(exits))
	case !hw:
		p.Reason = "no vmx/svm CPU flag: a paravirtual KVM, which runs a stock kernel far slower than hardware"
	case p.ExitTime > maxExitTime:
		p.Reason = fmt.Sprintf("exits take %v (hardware KVM: a few µs)", p.ExitTime)
	default:
		p.Usable = true
		p.Reason = fmt.Sprintf("hardware KVM, exits in %v", p.ExitTime)
	}
	return p
}
