//go:build linux

package vmm

import (
	"encoding/binary"
	"fmt"
	"syscall"
	"time"

	"github.com/bobuhiro11/gokvm/kvm"
)

// longModeProgram sums n, n-1, ..., 1 into RAX, leaving to user space with an OUT after every
// addition, then halts. It runs at 0x4000 with identity paging of the first 2 MiB.
var longModeProgram = []byte{
	0x48, 0x01, 0xc8, // add rax, rcx
	0xe6, 0x10, // out 0x10, al
	0x48, 0xff, 0xc9, // dec rcx
	0x75, 0xf6, // jnz -10 (the add)
	0xf4, // hlt
}

// LongModeResult is what the program leaves in RAX for n.
func LongModeResult(n int) uint64 { return uint64(n) * uint64(n+1) / 2 }

// LongModeRun is the outcome of RunLongModeProgram.
type LongModeRun struct {
	RAX     uint64
	Exits   map[kvm.ExitType]int
	Elapsed time.Duration // from the first entry to the halt
}

// RunLongModeProgram runs the hand-made long-mode program in a new VM with one vCPU and 64 KiB of
// memory: page tables at 0x1000-0x3fff, code at 0x4000, stack below 0x8000.
func RunLongModeProgram(k *KVM, n int) (LongModeRun, error) {
	mem, err := syscall.Mmap(-1, 0, 64<<10, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		return LongModeRun{}, err
	}
	defer syscall.Munmap(mem)
	binary.LittleEndian.PutUint64(mem[0x1000:], 0x2000|3) // PML4[0] -> PDPT
	binary.LittleEndian.PutUint64(mem[0x2000:], 0x3000|3) // PDPT[0] -> PD
	binary.LittleEndian.PutUint64(mem[0x3000:], 0x0|0x83) // PD[0]: 2 MiB page at 0, writable
	copy(mem[0x4000:], longModeProgram)
	vm, err := k.NewVM()
	if err != nil {
		return LongModeRun{}, err
	}
	defer vm.Destroy()
	if err := vm.AddMemory(0, mem, false); err != nil {
		return LongModeRun{}, err
	}
	c, err := vm.NewVCPU()
	if err != nil {
		return LongModeRun{}, err
	}
	if err := c.LongMode(0x1000, 0x4000, 0x8000); err != nil {
		return LongModeRun{}, err
	}
	regs, err := c.Regs()
	if err != nil {
		return LongModeRun{}, err
	}
	regs.RCX, regs.RAX = uint64(n), 0
	if err := c.SetRegs(regs); err != nil {
		return LongModeRun{}, err
	}
	start := time.Now()
	for outs := 0; ; {
		e, err := c.Run()
		if err != nil {
			return LongModeRun{}, err
		}
		switch {
		case e.Reason == kvm.EXITHLT:
			elapsed := time.Since(start)
			regs, err := c.Regs()
			if err != nil {
				return LongModeRun{}, err
			}
			if outs != n {
				return LongModeRun{}, fmt.Errorf("%d OUT exits, want %d", outs, n)
			}
			return LongModeRun{RAX: regs.RAX, Exits: c.Exits, Elapsed: elapsed}, nil
		case e.Reason == kvm.EXITIO && e.IODir == kvm.EXITIOOUT && e.IOPort == 0x10:
			outs++
			if outs > n {
				return LongModeRun{}, fmt.Errorf("more than %d OUT exits", n)
			}
		default:
			regs, _ := c.Regs()
			rip := uint64(0)
			if regs != nil {
				rip = regs.RIP
			}
			return LongModeRun{}, fmt.Errorf("unexpected exit %v at RIP %#x", e.Reason, rip)
		}
	}
}
