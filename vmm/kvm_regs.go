//go:build linux

package vmm

import (
	"fmt"

	"github.com/bobuhiro11/gokvm/kvm"
)

// maxCPUIDEntries bounds KVM_GET_SUPPORTED_CPUID's answer; KVM fails with E2BIG when the array
// is too small, and no CPU today reports near this many leaves.
const maxCPUIDEntries = 256

// SupportedCPUID is the CPUID KVM can present to a guest on this host.
func (k *KVM) SupportedCPUID() (*kvm.CPUID, error) {
	c := &kvm.CPUID{Nent: maxCPUIDEntries, Entries: make([]kvm.CPUIDEntry2, maxCPUIDEntries)}
	if err := kvm.GetSupportedCPUID(k.f.Fd(), c); err != nil {
		return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
	}
	c.Entries = c.Entries[:c.Nent]
	return c, nil
}

// SetCPUID sets the vCPU's CPUID. It must come before KVM_SET_SREGS: KVM checks CR4 bits
// against the CPUID the guest sees.
func (c *VCPU) SetCPUID(id *kvm.CPUID) error {
	if err := kvm.SetCPUID2(uintptr(c.fd), id); err != nil {
		return fmt.Errorf("KVM_SET_CPUID2: %w", err)
	}
	return nil
}

// Sregs reads the special registers (segments, descriptor tables, control registers, EFER).
func (c *VCPU) Sregs() (*kvm.Sregs, error) {
	s, err := kvm.GetSregs(uintptr(c.fd))
	if err != nil {
		return nil, fmt.Errorf("KVM_GET_SREGS: %w", err)
	}
	return s, nil
}

// SetSregs writes the special registers.
func (c *VCPU) SetSregs(s *kvm.Sregs) error {
	if err := kvm.SetSregs(uintptr(c.fd), s); err != nil {
		return fmt.Errorf("KVM_SET_SREGS: %w", err)
	}
	return nil
}

// SetMSRs writes model-specific registers, index to value. KVM_SET_MSRS stops at the first MSR
// it refuses without failing, so each one is read back: a silently dropped MSR is an error.
func (c *VCPU) SetMSRs(msrs map[uint32]uint64) error {
	if len(msrs) == 0 {
		return nil
	}
	set := &kvm.MSRS{NMSRs: uint32(len(msrs))}
	get := &kvm.MSRS{NMSRs: uint32(len(msrs))}
	for idx, v := range msrs {
		set.Entries = append(set.Entries, kvm.MSREntry{Index: idx, Data: v})
		get.Entries = append(get.Entries, kvm.MSREntry{Index: idx})
	}
	if err := kvm.SetMSRs(uintptr(c.fd), set); err != nil {
		return fmt.Errorf("KVM_SET_MSRS: %w", err)
	}
	if err := kvm.GetMSRs(uintptr(c.fd), get); err != nil {
		return fmt.Errorf("KVM_GET_MSRS: %w", err)
	}
	for _, e := range get.Entries {
		if e.Index == uint32(kvm.MSRIA32TSC) {
			continue // it runs on between the write and the read
		}
		if e.Data != msrs[e.Index] {
			return fmt.Errorf("MSR %#x reads %#x after writing %#x", e.Index, e.Data, msrs[e.Index])
		}
	}
	return nil
}

// MMIOExit is a KVM_EXIT_MMIO's access: the guest touched physical memory no slot backs.
type MMIOExit struct {
	Addr  uint64
	Len   uint32
	Write bool
}

// MMIO reads the access of the last exit, which must have been KVM_EXIT_MMIO.
func (c *VCPU) MMIO() MMIOExit {
	// struct kvm_run's mmio: u64 phys_addr; u8 data[8]; u32 len; u8 is_write.
	d := runData(c.run).Data
	return MMIOExit{Addr: d[0], Len: uint32(d[2]), Write: uint8(d[2]>>32) != 0}
}

// ExitWords are the first words of the last exit's union in struct kvm_run (for an internal
// error: suberror, ndata, data; for a failed entry: the hardware reason), for error messages.
func (c *VCPU) ExitWords() [4]uint64 {
	d := runData(c.run).Data
	return [4]uint64{d[0], d[1], d[2], d[3]}
}

// AnswerIn puts data where the guest's IN instruction of the last exit (KVM_EXIT_IO, in) reads
// its value from when the vCPU runs again.
func (c *VCPU) AnswerIn(data []byte) error {
	_, size, _, count, off := runData(c.run).IO()
	n := size * count
	if off+n > uint64(len(c.run)) || uint64(len(data)) < n {
		return fmt.Errorf("port input of %d bytes at run-area offset %d: %d bytes given", n, off, len(data))
	}
	copy(c.run[off:off+n], data)
	return nil
}
