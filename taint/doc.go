// Package taint is a dynamic taint tracker for x86-64 kernel code executed
// by Unicorn (package emu). It labels every value with where it came from
// (SVM, GVM, constant kernel global, user) and decides, for every memory
// access, whether the data belongs to the SVM (Local) or to the inspected
// guest (Redirect), as README's "Slow-Bridge" section describes.
//
// # How it is driven
//
// Attach installs one batched trace (emu.TraceBuffer: an exec event before
// every instruction, then its memory accesses with guest-physical
// addresses), which C hooks fill without entering Go. The tracker consumes
// the events in batches, decoding each instruction once per address
// (x86asm, cached) and applying its propagation rule (rules.go: data keyed
// by x86asm.Op) to shadow registers (byte granularity, XMM included) and
// shadow memory (byte granularity, keyed by physical page). An instruction
// is applied when the next exec event arrives, or at Drain: after Start
// returns, Drain processes exactly the executed instructions, whatever the
// batch size, so a count limit may stop emulation anywhere.
//
// Where a decision must be known before an access completes (the
// Slow-Bridge redirecting kernel-image data), Current gives it from inside
// a Go memory hook, and Config.Sync installs such a hook: Current first
// processes the pending batch (Sync), so the labels are exact up to the
// instruction now executing, and the batch later records the same
// decision.
//
// A Tracker is not safe for concurrent use; every method runs on the
// goroutine that calls Engine.Start (or, for Sync and Current, inside its
// hooks).
//
// # Approximations
//
// Flags are not tracked, so control dependencies are ignored (as in VMST),
// and instructions whose result depends on flags take the union of the
// possible results: cmovcc (dst ∪ src), cmpxchg (memory ∪ new value, rAX ∪
// memory). Arithmetic with carries (add, sub, shifts, mul) gives every
// byte of the result the union of its inputs; moves, logic and byte swaps
// are exact per byte. Shift counts and flag-derived values (setcc, sbb
// r,r) carry no label.
//
// An instruction without a rule is counted per mnemonic (Stats.Unmodelled)
// and handled conservatively: its first operand, if a register, and every
// byte it writes get the union of all operand labels and all bytes it
// read; implicit register outputs are not known. Bytes that do not decode
// are counted as "(undecodable)", their accesses decided Unknown. Accesses
// that do not fit an instruction's rule are counted (Stats.Mismatched) and
// handled the same conservative way. An instruction that faulted before
// all its accesses (Stats.Incomplete) has no effect: Unicorn re-executes
// it.
//
// Unicorn 2.1.1 reports a page-crossing write once, with the first page's
// physical address: its bytes on the next page are assumed to follow
// physically (crossing reads report both frames and are exact). Writes are
// shadowed at the physical address Unicorn wrote even when redirected; a
// bridge that sends them elsewhere can relabel with SetMemLabel.
package taint
