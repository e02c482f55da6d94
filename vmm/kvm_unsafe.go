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

// Offsets in struct kvm_run: kvm_valid_regs, then the synced registers (struct kvm_sync_regs,
// whose first member is struct kvm_regs), after the 32-byte head and the 256-byte exit union.
const (
	runValidRegs = 288
	runSyncRegs  = 304
	syncX86Regs  = 1 << 0 // KVM_SYNC_X86_REGS
	capSyncRegs  = 74     // KVM_CAP_SYNC_REGS
)

// SyncRegs asks KVM to store the general registers in the run area at every exit, which saves a
// KVM_GET_REGS for each exit that needs them. It reports whether this KVM can.
func (c *VCPU) SyncRegs(k *KVM) bool {
	got, err := kvm.CheckExtension(k.f.Fd(), capSyncRegs)
	if err != nil || got&syncX86Regs == 0 {
		return false
	}
	*(*uint64)(unsafe.Pointer(&c.run[runValidRegs])) = syncX86Regs
	c.synced = true
	return true
}

// ExitRegs are the general registers at the last exit: from the run area where SyncRegs is on,
// else from KVM_GET_REGS. The result is a copy.
func (c *VCPU) ExitRegs() (*kvm.Regs, error) {
	if !c.synced {
		return c.Regs()
	}
	r := *(*kvm.Regs)(unsafe.Pointer(&c.run[runSyncRegs]))
	return &r, nil
}
