//go:build linux

package vmm

import (
	"unsafe"

	"github.com/bobuhiro11/gokvm/kvm"
)

// runData views a vCPU's mapped run area as struct kvm_run's head.
func runData(run []byte) *kvm.RunData {
	return (*kvm.RunData)(unsafe.Pointer(&run[0]))
}

// sliceAddr is the user-space address KVM maps a memory slot from.
func sliceAddr(b []byte) uint64 {
	return uint64(uintptr(unsafe.Pointer(&b[0])))
}

// MMIOData is the data of the last exit's access, which must have been KVM_EXIT_MMIO: a write's
// bytes, or where a read's answer goes (KVM completes the read from it when the vCPU runs again).
// It aliases the run area.
func (c *VCPU) MMIOData() []byte {
	// struct kvm_run's mmio: u64 phys_addr; u8 data[8]; u32 len; u8 is_write.
	off := unsafe.Offsetof(kvm.RunData{}.Data) + 8
	n := min(c.MMIO().Len, 8)
	return c.run[off : off+uintptr(n)]
}
