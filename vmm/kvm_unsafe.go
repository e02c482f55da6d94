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
