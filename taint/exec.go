package taint

import "golang.org/x/arch/x86/x86asm"

// get returns the labels of operand i: a register's bytes, the bytes its
// read slot loaded, or an immediate's label.
func (t *Tracker) get(in *insn, i int) vec {
	o := &in.args[i]
	switch o.kind {
	case okReg:
		return t.regs.read(o.reg)
	case okMem:
		if o.rslot >= 0 {
			return t.sv[o.rslot]
		}
	case okImm:
		return o.imm
	}
	return vec{}
}

// set writes operand i: a register with the CPU's partial-write rules, or
// the value its write slot stores.
func (t *Tracker) set(in *insn, i int, v vec) {
	o := &in.args[i]
	switch o.kind {
	case okReg:
		t.regs.write(o.reg, v)
	case okMem:
		if o.wslot >= 0 {
			t.sv[o.wslot] = v.trunc(int(o.w))
		}
	}
}

// gpr and setGPR read and write the first w bytes of rAX (and friends) as the
// implicit operands of mul/div/string/sign-extension instructions.
func (t *Tracker) gpr(idx, w int) vec { return t.regs.read(gprInfo(idx, w)) }

func (t *Tracker) setGPR(idx, w int, v vec) { t.regs.write(gprInfo(idx, w), v) }

// exec applies in's rule to the shadow state. Read slots are loaded in
// t.sv; write slots are left in t.sv for storeWrites.
func (t *Tracker) exec(in *insn) {
	w := int(in.args[0].w)
	switch in.kind {
	case kNop, kRead, kRet, kPopf, kCmps, kScas, kJmp:
	case kMov, kSSEMov:
		t.set(in, 0, t.get(in, 1).trunc(w))
	case kMovzx:
		t.set(in, 0, t.get(in, 1))
	case kMovsx:
		t.movsx(in)
	case kCmov:
		t.set(in, 0, t.get(in, 0).or(t.get(in, 1)))
	case kLea:
		t.lea(in)
	case kArith, kShiftD, kIMul, kBitScan:
		t.arith(in)
	case kLogic:
		v := t.get(in, 0).or(t.get(in, 1))
		v.lo &^= in.clean
		t.set(in, 0, v)
	case kClear, kSetcc:
		t.set(in, 0, vec{})
	case kKeep:
		t.set(in, 0, t.get(in, 0))
	case kFold, kShift:
		t.set(in, 0, bvec(t.get(in, 0).fold(), w))
	case kCount:
		t.set(in, 0, bvec(t.get(in, 1).fold(), w))
	case kMul1:
		t.mul1(in)
	case kDiv1:
		t.div1(in)
	case kXchg:
		a, b := t.get(in, 0), t.get(in, 1)
		t.set(in, 0, b)
		t.set(in, 1, a)
	case kXadd:
		a, b := t.get(in, 0), t.get(in, 1)
		t.set(in, 1, a)
		t.set(in, 0, bvec(a.fold()|b.fold(), w))
	case kCmpxchg:
		t.cmpxchg(in)
	case kCmpxchgWide:
		t.cmpxchgWide(in)
	case kPush:
		t.sv[in.nslot-1] = t.get(in, 0).trunc(int(in.w))
	case kPop:
		t.set(in, 0, t.sv[0])
	case kCall, kPushf:
		t.sv[in.nslot-1] = vec{} // a return address or flags: constants
	case kLeave:
		t.regs.gpr[gRSP] = t.regs.gpr[gRBP]
		t.regs.gpr[gRBP] = t.sv[0].lo
	case kEnter:
		t.sv[0] = vec{lo: t.regs.gpr[gRBP]}
		t.regs.gpr[gRBP] = t.regs.gpr[gRSP]
	case kMovs:
		t.sv[1] = t.sv[0]
	case kStos:
		t.sv[0] = t.gpr(gRAX, int(in.w))
	case kLods:
		t.setGPR(gRAX, int(in.w), t.sv[0])
	case kBswap:
		t.set(in, 0, t.get(in, 0).reverse(w))
	case kMovbe:
		t.set(in, 0, t.get(in, 1).reverse(w))
	case kMovq, kMovd:
		t.movqd(in)
	case kMovLow, kMovHigh:
		t.movHalf(in)
	case kMovScalar:
		t.movScalar(in)
	case kLogicSSE:
		t.set(in, 0, t.get(in, 0).or(t.get(in, 1)))
	case kSignExtA:
		t.signExtA(in.op)
	case kSignExtD:
		t.signExtD(in.op)
	case kMachine:
		t.machine(in)
	case kXlat:
		t.setGPR(gRAX, 1, t.sv[0])
	case kSyscall:
		t.regs.gpr[gRCX] = 0 // return address
		t.regs.gpr[gR11] = 0 // flags
	case kIret:
		t.regs.gpr[gRSP] = bcast(LabelSVM)
	case kGeneric:
		t.execGeneric(in)
	}
}

// movsx extends the source's labels with its sign byte's.
func (t *Tracker) movsx(in *insn) {
	w, sw := int(in.args[0].w), int(in.args[1].w)
	src := t.get(in, 1)
	t.set(in, 0, src.or(bvec(src.byteAt(sw-1), w-sw).shift(sw)))
}

// lea labels the destination with the address arithmetic: base, index and
// displacement.
func (t *Tracker) lea(in *insn) {
	sp := &in.addrs[in.args[1].addr]
	l := sp.disp
	if sp.baseRI.class == rcGPR {
		l |= t.regs.read(sp.baseRI).fold()
	}
	if sp.indexRI.class == rcGPR {
		l |= t.regs.read(sp.indexRI).fold()
	}
	t.set(in, 0, bvec(l, int(in.args[0].w)))
}

// arith combines two operands into the destination, as add/sub, shld/shrd,
// imul and bsf/bsr do.
func (t *Tracker) arith(in *insn) {
	// Carries (and shifted-in bits) cross bytes: every byte gets
	// the union.
	a, b := 0, 1
	if in.kind == kIMul && in.nargs == 3 {
		a, b = 1, 2
	}
	t.set(in, 0, bvec(t.get(in, a).fold()|t.get(in, b).fold(), int(in.args[0].w)))
}

// mul1 is one-operand mul/imul: the product in rDX:rAX (ax for bytes).
func (t *Tracker) mul1(in *insn) {
	w := int(in.args[0].w)
	l := t.get(in, 0).fold()
	if w == 1 {
		t.setGPR(gRAX, 2, bvec(l|t.gpr(gRAX, 1).fold(), 2))
		return
	}
	l |= t.gpr(gRAX, w).fold()
	t.setGPR(gRAX, w, bvec(l, w))
	t.setGPR(gRDX, w, bvec(l, w))
}

// div1 is div/idiv: rDX:rAX divided by the operand, the quotient in rAX and
// the remainder in rDX (for bytes: ax, al and ah).
func (t *Tracker) div1(in *insn) {
	w := int(in.args[0].w)
	l := t.get(in, 0).fold()
	if w == 1 {
		t.setGPR(gRAX, 2, bvec(l|t.gpr(gRAX, 2).fold(), 2))
		return
	}
	l |= t.gpr(gRAX, w).fold() | t.gpr(gRDX, w).fold()
	t.setGPR(gRAX, w, bvec(l, w))
	t.setGPR(gRDX, w, bvec(l, w))
}

func (t *Tracker) cmpxchg(in *insn) {
	// Equal: dst = src. Not equal: rAX = dst. Flags are not tracked,
	// so both may have happened.
	w := int(in.args[0].w)
	dst := t.get(in, 0)
	t.set(in, 0, dst.or(t.get(in, 1)))
	t.setGPR(gRAX, w, t.gpr(gRAX, w).or(dst))
}

// execGeneric is the conservative rule for unmodelled and undecodable
// instructions and for accesses that do not fit a rule: the first
// operand, if it is a tracked register, and every byte written get the
// union of all operands' labels and all bytes read. Implicit register
// operands are not known and keep their labels.
func (t *Tracker) execGeneric(in *insn) {
	l := t.genLoaded
	for i := 0; i < int(in.nargs); i++ {
		if o := &in.args[i]; o.kind == okReg || o.kind == okImm {
			l |= t.get(in, i).fold()
		}
	}
	t.genOut = l
	if o := &in.args[0]; in.nargs > 0 && o.kind == okReg {
		t.regs.write(o.reg, bvec(l, int(o.w)))
	}
}

func (t *Tracker) cmpxchgWide(in *insn) {
	m := t.get(in, 0)
	if in.args[0].w == 16 {
		t.set(in, 0, m.or(vec{t.regs.gpr[gRBX], t.regs.gpr[gRCX]}))
		t.regs.gpr[gRAX] |= m.lo
		t.regs.gpr[gRDX] |= m.hi
		return
	}
	const lo4 = 0xffffffff
	nw := t.regs.gpr[gRBX]&lo4 | t.regs.gpr[gRCX]<<32
	t.set(in, 0, vec{lo: m.lo | nw})
	t.regs.gpr[gRAX] |= m.lo & lo4
	t.regs.gpr[gRDX] |= m.lo >> 32
}

func (t *Tracker) movHalf(in *insn) {
	d, s := in.args[0], in.args[1]
	hi := in.kind == kMovHigh
	if d.kind == okReg && d.reg.class == rcXMM {
		x := &t.regs.xmm[d.reg.idx]
		v := t.get(in, 1).lo
		if s.kind == okReg && s.reg.class == rcXMM {
			// movhlps/movlhps forms read the other half of a register;
			// x86asm names them separately, so this is a register-to-
			// register movlps/movhps only in theory.
			v = t.regs.xmm[s.reg.idx].lo
		}
		if hi {
			x.hi = v
		} else {
			x.lo = v
		}
		return
	}
	v := t.get(in, 1)
	if hi {
		v = vec{lo: v.hi}
	}
	t.set(in, 0, vec{lo: v.lo})
}

// movqd is movq and movd: the source's low 8 or 4 bytes.
func (t *Tracker) movqd(in *insn) {
	n := 8
	if in.kind == kMovd {
		n = 4
	}
	v := t.get(in, 1).trunc(n)
	if in.args[0].kind == okReg && in.args[0].reg.class == rcXMM {
		v.hi = 0 // the rest of the XMM register is zeroed
	}
	t.set(in, 0, v)
}

// movScalar is movss/movsd (the SSE forms): the low 4 or 8 bytes.
func (t *Tracker) movScalar(in *insn) {
	n := int(in.w)
	v := t.get(in, 1).trunc(n)
	if d := in.args[0]; d.kind == okReg {
		if in.args[1].kind == okReg {
			// Between registers the rest of the destination stays.
			d.reg.size = uint8(n)
		}
		t.regs.write(d.reg, v)
		return
	}
	t.set(in, 0, v)
}

func (t *Tracker) signExtA(op x86asm.Op) {
	n := 4
	switch op {
	case x86asm.CBW:
		n = 1
	case x86asm.CWDE:
		n = 2
	}
	src := t.gpr(gRAX, n)
	t.setGPR(gRAX, 2*n, src.or(bvec(src.byteAt(n-1), n).shift(n)))
}

// signExtD is cwd/cdq/cqo: rDX takes the label of rAX's sign byte.
func (t *Tracker) signExtD(op x86asm.Op) {
	n := 8
	switch op {
	case x86asm.CWD:
		n = 2
	case x86asm.CDQ:
		n = 4
	}
	t.setGPR(gRDX, n, bvec(t.gpr(gRAX, n).byteAt(n-1), n))
}

// machine sets the outputs of instructions that read the SVM's own
// machine state (time stamp, MSRs, CPUID, segment bases).
func (t *Tracker) machine(in *insn) {
	svm := bvec(LabelSVM, 4)
	switch in.op {
	case x86asm.RDFSBASE, x86asm.RDGSBASE:
		t.set(in, 0, bvec(LabelSVM, int(in.args[0].w)))
		return
	case x86asm.CPUID:
		t.setGPR(gRBX, 4, svm)
		t.setGPR(gRCX, 4, svm)
	case x86asm.RDTSCP:
		t.setGPR(gRCX, 4, svm)
	}
	t.setGPR(gRAX, 4, svm)
	t.setGPR(gRDX, 4, svm)
}
