// Package vmm models a guest's memory as seen from outside the guest: guest-physical RAM backed by
// a file (or a byte slice), x86-64 page tables walked over that RAM, virtual-memory views built on
// the walk, and the kernel's symbol table. It also owns /dev/kvm (KVM, VM, VCPU): the executor
// that runs the secure VM's code where KVM is used, and the probe that tells hardware KVM from
// KVM that merely runs code.
//
// The inspected guest's memory is only ever read here. Its file mappings are PROT_READ so that a
// bug in a caller cannot corrupt a paused guest; tests hash guest RAM before and after to prove
// it. The memory KVM runs on is the secure VM's own (a private copy of its snapshot), which it
// writes as any machine does.
//
// Views are safe for concurrent reads. Closing a FileView must not race with reads from it.
package vmm
