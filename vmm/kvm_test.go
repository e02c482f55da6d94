//go:build linux

package vmm_test

import (
	"testing"
	"unsafe"

	"github.com/bobuhiro11/gokvm/kvm"

	"hybridbridge/guest"
	"hybridbridge/internal/testenv"
	"hybridbridge/vmm"
)

// TestKVMLongModeProgram runs a hand-made long-mode program wherever /dev/kvm opens, hardware or
// paravirtual: page tables, 64-bit code, OUT exits to user space, HLT.
func TestKVMLongModeProgram(t *testing.T) {
	k, err := vmm.OpenKVM()
	if err != nil {
		testenv.SkipNoKVM(t, err.Error())
	}
	defer k.Close()
	const n = 100
	res, err := vmm.RunLongModeProgram(k, n)
	if err != nil {
		t.Fatal(err)
	}
	if res.RAX != vmm.LongModeResult(n) || res.Exits[kvm.EXITIO] != n || res.Exits[kvm.EXITHLT] != 1 {
		t.Fatalf("RAX %#x (want %#x), exits %v", res.RAX, vmm.LongModeResult(n), res.Exits)
	}
	t.Logf("%d exits in %v (%v each)", n+1, res.Elapsed, res.Elapsed/(n+1))
}

// TestKVMProbe: the probe agrees with the CPU flags, and calls a paravirtual KVM unusable.
func TestKVMProbe(t *testing.T) {
	hw := guest.DetectAccel().KVM
	p := vmm.ProbeKVM(hw)
	t.Logf("probe: %+v", p)
	if !p.Opens {
		testenv.SkipNoKVM(t, p.Reason)
	}
	if !p.RunsCode {
		t.Fatalf("the probe's program did not run: %s", p.Reason)
	}
	if !hw && p.Usable {
		t.Fatal("a KVM without vmx/svm was judged usable")
	}
}

// TestKVMStructSizes pins the structures passed to ioctls to the kernel's layouts.
func TestKVMStructSizes(t *testing.T) {
	for name, got := range map[string]uintptr{
		"kvm_regs":                    unsafe.Sizeof(kvm.Regs{}),
		"kvm_userspace_memory_region": unsafe.Sizeof(kvm.UserspaceMemoryRegion{}),
		"kvm_segment":                 unsafe.Sizeof(kvm.Segment{}),
	} {
		want := map[string]uintptr{"kvm_regs": 144, "kvm_userspace_memory_region": 32, "kvm_segment": 24}[name]
		if got != want {
			t.Errorf("%s: %d bytes, the kernel's are %d", name, got, want)
		}
	}
}
