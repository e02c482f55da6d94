package taint

import (
	"fmt"

	"golang.org/x/arch/x86/x86asm"

	"hybridbridge/decision"
)

// Reason says which rule of a policy produced a decision.
type Reason uint8

// Reasons of the default policy, VMST.
const (
	ReasonUnlabelled     Reason = iota // the address has no provenance (constant outside the image): local
	ReasonStack                        // RSP-based address: the SVM's stack
	ReasonPerCPU                       // gs-relative: the SVM's per-cpu data
	ReasonSVMPointer                   // SVM-derived pointer
	ReasonGVMPointer                   // GVM-derived pointer
	ReasonMixedPointer                 // GVM-derived pointer combined with SVM data: redirected, as VMST does
	ReasonUserPointer                  // the inspecting process's user memory
	ReasonGlobalRedirect               // kernel global the classifier redirects
	ReasonGlobalLocal                  // kernel global the classifier keeps local
	ReasonGlobalUnknown                // kernel global the classifier does not know
	ReasonUnknownAddress               // no operand gives the address (undecodable or unmodelled instruction): Unknown
	ReasonGuestFrame                   // the struct page of a page frame only the guest uses
	ReasonUserCode                     // an instruction of a program at CPL 3: its memory is the SVM's
	NumReasons
)

var reasonNames = [...]string{
	"unlabelled", "stack", "per-cpu", "svm-pointer", "gvm-pointer", "mixed-pointer",
	"user-pointer", "global-redirect", "global-local", "global-unknown", "unknown-address",
	"guest-frame", "user-code",
}

func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return fmt.Sprintf("Reason(%d)", uint8(r))
}

// Access is one memory access of one executed instruction, with the
// provenance of its address and the policy's decision.
type Access struct {
	PC   uint64    // virtual address of the instruction
	Op   x86asm.Op // its mnemonic (0 if it could not be decoded)
	Phys uint64    // guest-physical address, as Unicorn's memory hook saw it
	// Virt is the virtual address when it follows from the instruction
	// alone (RIP-relative or absolute operands); the batched trace carries
	// no register values, so other accesses have VirtKnown false.
	Virt      uint64
	VirtKnown bool
	Size      int
	Write     bool

	// The address computation: segment override, base and index registers
	// as decoded (0 = none; Base is RIP for RIP-relative operands and RSP
	// for push/pop/call/ret), their labels, and whether the displacement
	// is a constant address into the kernel image.
	Seg, Base, Index      x86asm.Reg
	BaseLabel, IndexLabel Label
	DispGlobal            bool
	// Addr is the label of the address: the union of the base and index
	// labels, LabelGlobal for a kernel-image displacement, LabelSVM for a
	// gs-relative operand.
	Addr Label

	Decision decision.Decision
	Reason   Reason

	// Data is the union label of the bytes read (after the decision: a
	// redirected read yields GVM data) or written. It is filled in after
	// the instruction's rule ran, so policies cannot use it.
	Data Label
}

func (a *Access) String() string {
	rw := "R"
	if a.Write {
		rw = "W"
	}
	return fmt.Sprintf("%#x %v %s%d phys=%#x addr=%v data=%v %v (%v)", a.PC, a.Op, rw, a.Size, a.Phys, a.Addr, a.Data, a.Decision, a.Reason)
}

// Policy decides each access from its address provenance. It is called
// once per access (by the batch processor or, for the synchronous range,
// from the memory hook) and must not keep a.
type Policy interface {
	Decide(a *Access) (decision.Decision, Reason)
}

// Classifier decides accesses whose address is a kernel global: the
// per-global redirect and keep-local lists (bridge/globals.go). It typically
// maps a.Phys (or a.Virt when known) back to a data symbol. It returns
// Unknown for globals in neither list.
type Classifier func(a *Access) decision.Decision

// VMST is the default policy (VMST's rules, adapted):
//
//  1. gs-relative operands are per-cpu data: local.
//  2. RSP-based operands (including push/pop/call/ret) are the SVM's stack:
//     local, whatever an index register carries.
//  3. A displacement into the kernel image (RIP-relative or absolute) makes
//     the operand a kernel global, whatever its index: ask Globals.
//  4. A GVM-labelled address is redirected; if it is also SVM-labelled the
//     reason is ReasonMixedPointer so the conflict stays visible.
//  5. A global-labelled address (a register holding a global's address):
//     ask Globals.
//  6. SVM-labelled: local. 7. User-labelled: local.
//  8. No provenance at all: local, ReasonUnlabelled.
type VMST struct {
	// Globals classifies kernel globals; nil answers Unknown.
	Globals Classifier
}

// Decide implements Policy.
func (p VMST) Decide(a *Access) (decision.Decision, Reason) {
	switch {
	case a.Seg == x86asm.GS:
		return decision.Local, ReasonPerCPU
	case a.Base == x86asm.RSP || a.Base == x86asm.ESP:
		return decision.Local, ReasonStack
	case a.DispGlobal:
		return p.global(a)
	case a.Addr&LabelGVM != 0:
		if a.Addr&LabelSVM != 0 {
			return decision.Redirect, ReasonMixedPointer
		}
		return decision.Redirect, ReasonGVMPointer
	case a.Addr&LabelGlobal != 0:
		return p.global(a)
	case a.Addr&LabelSVM != 0:
		return decision.Local, ReasonSVMPointer
	case a.Addr&LabelUser != 0:
		return decision.Local, ReasonUserPointer
	}
	return decision.Local, ReasonUnlabelled
}

func (p VMST) global(a *Access) (decision.Decision, Reason) {
	d := decision.Unknown
	if p.Globals != nil {
		d = p.Globals(a)
	}
	switch d {
	case decision.Redirect:
		return decision.Redirect, ReasonGlobalRedirect
	case decision.Local:
		return decision.Local, ReasonGlobalLocal
	}
	return decision.Unknown, ReasonGlobalUnknown
}
