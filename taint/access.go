package taint

import (
	"fmt"

	"golang.org/x/arch/x86/x86asm"

	"hybridbridge/decision"
	"hybridbridge/emu"
)

// finish applies the pending instruction: matches its accesses to the
// rule's slots, decides each access, loads, runs the rule, stores, and
// delivers the accesses.
func (t *Tracker) finish() {
	in := t.cur
	t.cur = nil
	t.st.insns++
	if in.kind == kGeneric {
		in.execs++
	}
	if len(t.raw) == 0 && in.nslot == 0 {
		t.pre = t.pre[:0]
		t.genLoaded = 0
		t.exec(in)
		return
	}
	t.buildLogical()
	t.raw = t.raw[:0]
	res := t.assign(in)
	if res == assignIncomplete {
		// A rep string instruction with rCX = 0 performs no access; any
		// other instruction short of its accesses faulted and is retried
		// by Unicorn, so it must have no effect now.
		if !in.str || len(t.la) != 0 {
			t.st.incomplete++
		}
		t.pre = t.pre[:0]
		return
	}
	switch res {
	case assignMismatch:
		// The rule does not describe what Unicorn did: fall back to the
		// conservative rule rather than lose labels, and count it.
		t.st.mismatched[in.op]++
		for k := range t.la {
			t.la[k].slot = -1
		}
		t.decideAll(in)
		t.execGeneric(in)
	default:
		t.decideAll(in)
		t.exec(in)
	}
	t.storeWrites()
	t.deliver()
	t.pre = t.pre[:0]
}

type assignResult uint8

const (
	assignOK assignResult = iota
	assignIncomplete
	assignMismatch
)

// buildLogical turns the pending raw events into logical accesses.
//
// Unicorn 2.1.1 reports a read that crosses a page as the whole access
// (physical address of its first byte), followed by the two aligned reads
// QEMU splits it into; the second of those carries the next page's frame,
// which need not be adjacent. A crossing write is reported once, so its
// second page is assumed to follow the first physically.
func (t *Tracker) buildLogical() {
	t.la = t.la[:0]
	raw := t.raw
	for i := 0; i < len(raw); i++ {
		e := &raw[i]
		write := e.Kind == emu.EventWrite
		n := uint64(e.Size)
		off := e.Addr & pageMask
		la := logAcc{phys: e.Addr, phys2: e.Addr - off + pageSize, n: e.Size, write: write, slot: -1, last: i}
		if !write && n > 1 && off+n > pageSize {
			if isSplit(raw, i+1, n) && raw[i+1].Addr == e.Addr&^(n-1) {
				i++
				la.last = i
				if isSplit(raw, i+1, n) && raw[i+1].Addr&pageMask == 0 {
					i++
					la.last = i
					la.phys2 = raw[i].Addr
				}
			}
		}
		t.la = append(t.la, la)
	}
}

// isSplit says whether raw[j] is a read of n bytes, as the aligned halves
// of a crossing read are.
func isSplit(raw []emu.Event, j int, n uint64) bool {
	return j < len(raw) && raw[j].Kind == emu.EventRead && uint64(raw[j].Size) == n
}

// assign matches logical accesses to in's slots, in order.
func (t *Tracker) assign(in *insn) assignResult {
	if in.anyAccess {
		return assignOK
	}
	k := 0
	for s := 0; s < int(in.nslot); s++ {
		sl := &in.slots[s]
		got := 0
		for got < int(sl.n) && k < len(t.la) && t.la[k].write == sl.write {
			la := &t.la[k]
			if got+int(la.n) > int(sl.n) {
				return assignMismatch
			}
			la.slot, la.off = int8(s), uint8(got)
			got += int(la.n)
			k++
		}
		if got < int(sl.n) {
			if sl.optional && got == 0 {
				continue
			}
			if k == len(t.la) {
				return assignIncomplete
			}
			return assignMismatch
		}
	}
	if k < len(t.la) {
		return assignMismatch
	}
	return assignOK
}

// decideAll decides every logical access and loads what the reads read:
// into the slot values, or (for accesses outside any slot) into genLoaded.
func (t *Tracker) decideAll(in *insn) {
	t.acc = t.acc[:0]
	t.sv = [maxSlots]vec{}
	t.genLoaded = 0
	for k := range t.la {
		la := &t.la[k]
		t.acc = append(t.acc, Access{})
		a := &t.acc[k]
		if p := t.preFor(k, la); p != nil {
			*a = p.access
		} else {
			t.decide(in, la, a)
		}
		if la.write {
			continue
		}
		v := t.load(la, a)
		a.Data = fold64(v)
		if la.slot >= 0 {
			t.sv[la.slot] = t.sv[la.slot].or(vec{lo: v}.shift(int(la.off)))
		} else {
			t.genLoaded |= a.Data
		}
	}
}

// decide fills a for logical access la of in and asks the policy.
func (t *Tracker) decide(in *insn, la *logAcc, a *Access) {
	*a = Access{PC: in.pc, Op: in.op, Phys: la.phys, Size: int(la.n), Write: la.write}
	var sp *addrSpec
	switch {
	case la.slot >= 0:
		sp = &in.addrs[in.slots[la.slot].addr]
	case in.naddr > 0 && !in.undecodable:
		sp = &in.addrs[0]
	}
	if sp == nil {
		// No operand to take the address from: say so instead of
		// guessing.
		a.Decision, a.Reason = decision.Unknown, ReasonUnknownAddress
		return
	}
	a.Seg, a.Base, a.Index = sp.seg, sp.base, sp.index
	if sp.baseRI.class == rcGPR {
		a.BaseLabel = t.regs.read(sp.baseRI).fold()
	}
	if sp.indexRI.class == rcGPR {
		a.IndexLabel = t.regs.read(sp.indexRI).fold()
	}
	a.DispGlobal = sp.disp != LabelNone
	a.Addr = a.BaseLabel | a.IndexLabel | sp.disp
	if sp.seg == x86asm.GS {
		a.Addr |= LabelSVM
	}
	if sp.virtKnown {
		a.Virt, a.VirtKnown = sp.virt+uint64(la.off), true
	}
	a.Decision, a.Reason = t.policy.Decide(a)
}

// load returns the labels of the bytes read by la: a redirected read
// yields GVM data whatever the SVM's shadow says; a gs-relative read
// yields SVM-local data unless the shadow knows better.
func (t *Tracker) load(la *logAcc, a *Access) uint64 {
	n := int(la.n)
	if a.Decision == decision.Redirect {
		return bcast(LabelGVM) & mask8(n)
	}
	v := t.mem.load(la.phys, la.phys2, n)
	if a.Seg == x86asm.GS {
		for i := 0; i < n; i++ {
			if v>>(8*uint(i))&0xff == 0 {
				v |= uint64(LabelSVM) << (8 * uint(i))
			}
		}
	}
	return v
}

// storeWrites writes the labels of the instruction's stores to shadow
// memory, at the physical address Unicorn wrote (also for redirected
// writes: the bridge, which knows where the data really went, can relabel
// with SetMemLabel).
func (t *Tracker) storeWrites() {
	for k := range t.la {
		la := &t.la[k]
		if !la.write {
			continue
		}
		n := int(la.n)
		var v uint64
		if la.slot >= 0 {
			v = t.sv[la.slot].unshift(int(la.off)).lo & mask8(n)
		} else {
			v = bcast(t.genOut) & mask8(n)
		}
		t.mem.store(la.phys, la.phys2, n, v)
		t.acc[k].Data = fold64(v)
	}
}

func (t *Tracker) deliver() {
	for k := range t.acc {
		a := &t.acc[k]
		t.st.accesses++
		if int(a.Decision) < len(t.st.byDecision) {
			t.st.byDecision[a.Decision]++
		}
		if int(a.Reason) < len(t.st.byReason) {
			t.st.byReason[a.Reason]++
		}
		if t.cfg.OnAccess != nil {
			t.cfg.OnAccess(a)
		}
		if t.cfg.Record {
			t.recorded = append(t.recorded, *a)
		}
	}
}

func (t *Tracker) preFor(k int, la *logAcc) *preDecided {
	for i := range t.pre {
		if p := &t.pre[i]; p.k == k && p.phys == la.phys && p.write == la.write {
			return p
		}
	}
	return nil
}

// Current returns the access, with its decision, that the instruction now
// executing makes at guest-physical phys. Call it from a Go memory hook
// (installed after Attach, so the trace has recorded the access; an
// earlier hook is taken to see the next access). It first calls Sync, so
// the decision uses exactly the labels the instruction's address was
// computed from; the batch later records the same decision (the policy
// is not asked twice).
func (t *Tracker) Current(phys uint64, size int, write bool) (Access, error) {
	t.Sync()
	in := t.cur
	if in == nil {
		return Access{}, fmt.Errorf("taint: access at %#x outside any traced instruction", phys)
	}
	t.buildLogical()
	k := -1
	for i := len(t.raw) - 1; i >= 0 && k < 0; i-- {
		e := &t.raw[i]
		if e.Addr != phys || int(e.Size) != size || (e.Kind == emu.EventWrite) != write {
			continue
		}
		for j := range t.la {
			if t.la[j].last >= i {
				k = j
				break
			}
		}
	}
	if k < 0 && len(t.la) > 0 {
		// A hook that runs before the trace's sees QEMU's aligned halves
		// of a crossing read before the trace records them.
		l := &t.la[len(t.la)-1]
		n := uint64(l.n)
		if !write && !l.write && uint64(size) == n && l.phys&pageMask+n > pageSize &&
			(phys == l.phys&^(n-1) || phys&pageMask == 0) {
			k = len(t.la) - 1
		}
	}
	if k < 0 {
		t.la = append(t.la, logAcc{phys: phys, phys2: phys&^pageMask + pageSize, n: uint8(size), write: write, slot: -1})
		k = len(t.la) - 1
	}
	if t.assign(in) == assignMismatch {
		for j := range t.la {
			t.la[j].slot = -1
		}
	}
	la := &t.la[k]
	if p := t.preFor(k, la); p != nil {
		return p.access, nil
	}
	var a Access
	t.decide(in, la, &a)
	t.pre = append(t.pre, preDecided{k: k, phys: la.phys, write: la.write, access: a})
	return a, nil
}
