// Package vmm models a guest's memory as seen from outside the guest: guest-physical RAM backed by
// a file (or a byte slice), x86-64 page tables walked over that RAM, virtual-memory views built on
// the walk, and the kernel's symbol table.
//
// Everything here only ever reads guest memory. File mappings are PROT_READ so that a bug in a
// caller cannot corrupt a paused guest; tests hash guest RAM before and after to prove it.
//
// Views are safe for concurrent reads. Closing a FileView must not race with reads from it.
package vmm
