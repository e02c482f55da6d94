package guest

import (
	"bufio"
	"os"
	"strings"
)

// Accel describes how QEMU will run guests on this host.
type Accel struct {
	KVM    bool   // hardware-assisted KVM is usable
	Reason string // why, in words, for logs and the console
}

// DetectAccel decides between KVM and TCG. /dev/kvm alone is not enough: on some cloud machines it
// is a paravirtual KVM (kvm_pvm) that runs a stock kernel about 1000 times slower than hardware and
// fails on FPU state instructions. Hardware KVM needs the CPU's virtualization extensions, which
// the host kernel shows as the vmx (Intel) or svm (AMD) flag.
func DetectAccel() Accel {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return Accel{Reason: "TCG: /dev/kvm is not usable (" + err.Error() + ")"}
	}
	f.Close()
	flags := cpuFlags()
	switch {
	case flags["vmx"]:
		return Accel{KVM: true, Reason: "KVM: /dev/kvm with Intel VT-x (vmx)"}
	case flags["svm"]:
		return Accel{KVM: true, Reason: "KVM: /dev/kvm with AMD-V (svm)"}
	default:
		return Accel{Reason: "TCG: /dev/kvm exists but the CPU shows no vmx/svm flag (paravirtual KVM, unusable for stock kernels)"}
	}
}

func cpuFlags() map[string]bool {
	flags := map[string]bool{}
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return flags
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		key, value, ok := strings.Cut(s.Text(), ":")
		if ok && strings.TrimSpace(key) == "flags" {
			for _, fl := range strings.Fields(value) {
				flags[fl] = true
			}
			break
		}
	}
	return flags
}
