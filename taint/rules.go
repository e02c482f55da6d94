package taint

import (
	"errors"
	"fmt"

	"golang.org/x/arch/x86/x86asm"
)

// RulesVersion changes whenever a rule changes the labels it produces, so decisions memoized under
// older rules are never replayed. 2: a value masked to 16 bits carries no provenance.
const RulesVersion = 2

// ErrUnmodelled is returned (wrapped) by compile for an opcode without a
// propagation rule. The tracker then counts the mnemonic and applies the
// conservative rule (see kGeneric); it never treats the instruction as
// "no taint".
var ErrUnmodelled = errors.New("taint: no propagation rule")

// errUndecodable marks instruction bytes x86asm cannot decode, or decodes
// to a length that differs from the one Unicorn executed.
var errUndecodable = errors.New("taint: undecodable instruction")

// kind is a propagation rule: what an instruction does to labels. Which
// operands and memory accesses it has comes from the decoded instruction;
// the semantics are in Tracker.exec.
type kind uint8

const (
	kNop         kind = iota // no data flow (fences, hints, flag ops, system ops)
	kMov                     // dst = src
	kMovzx                   // dst = src, upper bytes constant
	kMovsx                   // dst = src, upper bytes take the sign byte's label
	kCmov                    // dst = dst ∪ src per byte: flags are not tracked, so either may be the result
	kLea                     // dst = label of the address arithmetic (base ∪ index ∪ displacement)
	kArith                   // add/sub/adc/sbb: dst = fold(dst ∪ src) on every byte (carries cross bytes)
	kLogic                   // and/or/xor: dst = dst ∪ src per byte; immediate bytes that force a constant clean it
	kClear                   // xor r,r / sub r,r / sbb r,r / pxor x,x: dst = constant
	kRead                    // cmp/test/bt: sources only (flags are not tracked)
	kKeep                    // not, bts/btr/btc: labels unchanged (memory forms read and write back)
	kFold                    // neg/inc/dec: dst = fold(dst)
	kShift                   // shifts and rotates: dst = fold(dst); the count is an amount, not a source
	kShiftD                  // shld/shrd: dst = fold(dst ∪ src)
	kMul1                    // one-operand mul/imul: rDX:rAX = fold(rAX ∪ src)
	kDiv1                    // div/idiv: rAX, rDX = fold(rDX ∪ rAX ∪ src)
	kIMul                    // two/three-operand imul
	kXchg                    // swap
	kXadd                    // src = dst; dst = fold(dst ∪ src)
	kCmpxchg                 // dst = dst ∪ src; rAX = rAX ∪ dst (which happened depends on flags)
	kCmpxchgWide             // cmpxchg8b/16b, the same with rDX:rAX and rCX:rBX
	kPush                    // [rsp-n] = src
	kPop                     // dst = [rsp]
	kCall                    // [rsp-8] = return address (a constant); indirect target read from memory
	kRet                     // reads the return address
	kLeave                   // rsp = rbp; rbp = [rbp]
	kEnter                   // push rbp; rbp = rsp (nesting level 0 only)
	kPushf                   // [rsp-n] = flags (constant)
	kPopf                    // reads flags from the stack
	kMovs                    // [rdi] = [rsi]; one exec event per rep iteration
	kStos                    // [rdi] = rAX
	kLods                    // rAX = [rsi]
	kCmps                    // reads [rdi] then [rsi]
	kScas                    // reads [rdi]
	kSetcc                   // dst8 = constant (from flags)
	kBswap                   // byte order reversed
	kMovbe                   // dst = src with byte order reversed
	kBitScan                 // bsf/bsr: dst = fold(dst ∪ src) (dst is kept when src is 0)
	kCount                   // tzcnt/lzcnt/popcnt: dst = fold(src)
	kSSEMov                  // 16-byte moves (movdqu/movdqa/movups/movaps/...)
	kMovq                    // 8 bytes; an XMM destination's upper half becomes constant
	kMovd                    // 4 bytes; likewise
	kMovLow                  // movlps/movlpd: low 8 bytes, the rest kept
	kMovHigh                 // movhps/movhpd: high 8 bytes, the rest kept
	kMovScalar               // movss/movsd: from memory zero the rest, between registers keep it
	kLogicSSE                // pxor/por/pand/xorps/...: per byte union
	kSignExtA                // cbw/cwde/cdqe
	kSignExtD                // cwd/cdq/cqo: rDX = label of rAX's sign byte
	kMachine                 // rdtsc/rdmsr/cpuid/...: outputs are SVM machine state
	kXlat                    // al = [rbx+al]
	kSyscall                 // rcx, r11 = constants (return address, flags)
	kIret                    // reads the frame; rsp = SVM stack
	kJmp                     // jumps, calls' targets: indirect ones read memory
	kGeneric                 // unmodelled or undecodable: conservative (see Tracker.execGeneric)
)

// rules maps each modelled opcode to its rule. It is data: adding an
// instruction is adding a line (and a testdata case).
var rules = map[x86asm.Op]kind{
	x86asm.MOV: kMov, x86asm.MOVNTI: kMov,
	x86asm.MOVZX: kMovzx,
	x86asm.MOVSX: kMovsx, x86asm.MOVSXD: kMovsx,

	x86asm.CMOVA: kCmov, x86asm.CMOVAE: kCmov, x86asm.CMOVB: kCmov, x86asm.CMOVBE: kCmov,
	x86asm.CMOVE: kCmov, x86asm.CMOVG: kCmov, x86asm.CMOVGE: kCmov, x86asm.CMOVL: kCmov,
	x86asm.CMOVLE: kCmov, x86asm.CMOVNE: kCmov, x86asm.CMOVNO: kCmov, x86asm.CMOVNP: kCmov,
	x86asm.CMOVNS: kCmov, x86asm.CMOVO: kCmov, x86asm.CMOVP: kCmov, x86asm.CMOVS: kCmov,

	x86asm.LEA: kLea,

	x86asm.ADD: kArith, x86asm.SUB: kArith, x86asm.ADC: kArith, x86asm.SBB: kArith,
	x86asm.AND: kLogic, x86asm.OR: kLogic, x86asm.XOR: kLogic,
	x86asm.CMP: kRead, x86asm.TEST: kRead, x86asm.BT: kRead,
	x86asm.NOT: kKeep, x86asm.BTS: kKeep, x86asm.BTR: kKeep, x86asm.BTC: kKeep,
	x86asm.NEG: kFold, x86asm.INC: kFold, x86asm.DEC: kFold,

	x86asm.SHL: kShift, x86asm.SHR: kShift, x86asm.SAR: kShift,
	x86asm.ROL: kShift, x86asm.ROR: kShift, x86asm.RCL: kShift, x86asm.RCR: kShift,
	x86asm.SHLD: kShiftD, x86asm.SHRD: kShiftD,

	x86asm.MUL: kMul1, x86asm.IMUL: kIMul, x86asm.DIV: kDiv1, x86asm.IDIV: kDiv1,

	x86asm.XCHG: kXchg, x86asm.XADD: kXadd, x86asm.CMPXCHG: kCmpxchg,
	x86asm.CMPXCHG8B: kCmpxchgWide, x86asm.CMPXCHG16B: kCmpxchgWide,

	x86asm.PUSH: kPush, x86asm.POP: kPop, x86asm.CALL: kCall, x86asm.RET: kRet,
	x86asm.LEAVE: kLeave, x86asm.ENTER: kEnter,
	x86asm.PUSHF: kPushf, x86asm.PUSHFQ: kPushf, x86asm.POPF: kPopf, x86asm.POPFQ: kPopf,

	x86asm.MOVSB: kMovs, x86asm.MOVSW: kMovs, x86asm.MOVSD: kMovs, x86asm.MOVSQ: kMovs,
	x86asm.STOSB: kStos, x86asm.STOSW: kStos, x86asm.STOSD: kStos, x86asm.STOSQ: kStos,
	x86asm.LODSB: kLods, x86asm.LODSW: kLods, x86asm.LODSD: kLods, x86asm.LODSQ: kLods,
	x86asm.CMPSB: kCmps, x86asm.CMPSW: kCmps, x86asm.CMPSD: kCmps, x86asm.CMPSQ: kCmps,
	x86asm.SCASB: kScas, x86asm.SCASW: kScas, x86asm.SCASD: kScas, x86asm.SCASQ: kScas,

	x86asm.SETA: kSetcc, x86asm.SETAE: kSetcc, x86asm.SETB: kSetcc, x86asm.SETBE: kSetcc,
	x86asm.SETE: kSetcc, x86asm.SETG: kSetcc, x86asm.SETGE: kSetcc, x86asm.SETL: kSetcc,
	x86asm.SETLE: kSetcc, x86asm.SETNE: kSetcc, x86asm.SETNO: kSetcc, x86asm.SETNP: kSetcc,
	x86asm.SETNS: kSetcc, x86asm.SETO: kSetcc, x86asm.SETP: kSetcc, x86asm.SETS: kSetcc,

	x86asm.BSWAP: kBswap, x86asm.MOVBE: kMovbe,
	x86asm.BSF: kBitScan, x86asm.BSR: kBitScan,
	x86asm.TZCNT: kCount, x86asm.LZCNT: kCount, x86asm.POPCNT: kCount,

	x86asm.MOVDQU: kSSEMov, x86asm.MOVDQA: kSSEMov, x86asm.MOVUPS: kSSEMov, x86asm.MOVAPS: kSSEMov,
	x86asm.MOVUPD: kSSEMov, x86asm.MOVAPD: kSSEMov, x86asm.MOVNTDQ: kSSEMov, x86asm.MOVNTPS: kSSEMov,
	x86asm.MOVNTPD: kSSEMov, x86asm.LDDQU: kSSEMov, x86asm.MOVNTDQA: kSSEMov,
	x86asm.MOVQ: kMovq, x86asm.MOVD: kMovd,
	x86asm.MOVLPS: kMovLow, x86asm.MOVLPD: kMovLow, x86asm.MOVHPS: kMovHigh, x86asm.MOVHPD: kMovHigh,
	x86asm.MOVSS: kMovScalar, x86asm.MOVSD_XMM: kMovScalar,
	x86asm.PXOR: kLogicSSE, x86asm.XORPS: kLogicSSE, x86asm.XORPD: kLogicSSE,
	x86asm.POR: kLogicSSE, x86asm.ORPS: kLogicSSE, x86asm.ORPD: kLogicSSE,
	x86asm.PAND: kLogicSSE, x86asm.ANDPS: kLogicSSE, x86asm.ANDPD: kLogicSSE,

	x86asm.CBW: kSignExtA, x86asm.CWDE: kSignExtA, x86asm.CDQE: kSignExtA,
	x86asm.CWD: kSignExtD, x86asm.CDQ: kSignExtD, x86asm.CQO: kSignExtD,

	x86asm.RDTSC: kMachine, x86asm.RDTSCP: kMachine, x86asm.RDMSR: kMachine, x86asm.RDPMC: kMachine,
	x86asm.CPUID: kMachine, x86asm.XGETBV: kMachine, x86asm.RDFSBASE: kMachine, x86asm.RDGSBASE: kMachine,

	x86asm.XLATB:   kXlat,
	x86asm.SYSCALL: kSyscall, x86asm.SYSRET: kNop, x86asm.IRETQ: kIret,

	x86asm.JMP: kJmp, x86asm.JA: kJmp, x86asm.JAE: kJmp, x86asm.JB: kJmp, x86asm.JBE: kJmp,
	x86asm.JE: kJmp, x86asm.JG: kJmp, x86asm.JGE: kJmp, x86asm.JL: kJmp, x86asm.JLE: kJmp,
	x86asm.JNE: kJmp, x86asm.JNO: kJmp, x86asm.JNP: kJmp, x86asm.JNS: kJmp, x86asm.JO: kJmp,
	x86asm.JP: kJmp, x86asm.JS: kJmp, x86asm.JRCXZ: kJmp, x86asm.JECXZ: kJmp,
	x86asm.LOOP: kJmp, x86asm.LOOPE: kJmp, x86asm.LOOPNE: kJmp,

	x86asm.NOP: kNop, x86asm.PAUSE: kNop, x86asm.LFENCE: kNop, x86asm.MFENCE: kNop, x86asm.SFENCE: kNop,
	x86asm.CLFLUSH: kNop, x86asm.PREFETCHNTA: kNop, x86asm.PREFETCHT0: kNop, x86asm.PREFETCHT1: kNop,
	x86asm.PREFETCHT2: kNop, x86asm.PREFETCHW: kNop,
	x86asm.CLC: kNop, x86asm.STC: kNop, x86asm.CMC: kNop, x86asm.CLD: kNop, x86asm.STD: kNop,
	x86asm.CLI: kNop, x86asm.STI: kNop, x86asm.HLT: kNop, x86asm.INT: kNop, x86asm.UD2: kNop,
	x86asm.UD0: kNop, x86asm.UD1: kNop, x86asm.SWAPGS: kNop, x86asm.WRMSR: kNop, x86asm.INVLPG: kNop,
	x86asm.WBINVD: kNop, x86asm.SAHF: kNop, x86asm.EMMS: kNop,
}

// opKind says what an operand is.
type opKind uint8

const (
	okNone opKind = iota // absent, or a Rel (jump target)
	okReg
	okMem
	okImm
)

type operand struct {
	kind opKind
	reg  regInfo // okReg
	w    uint8   // width in bytes
	// okMem: the slots that read and write it (-1: none), its address.
	rslot, wslot int8
	addr         uint8
	imm          vec    // okImm: its label on w bytes
	immVal       uint64 // okImm: its value, truncated to w bytes
	raw          int64  // okImm: its value as decoded (sign-extended)
}

// addrSpec is a memory operand's address computation.
type addrSpec struct {
	seg, base, index x86asm.Reg
	baseRI, indexRI  regInfo // GPR views of base and index; class rcNone if absent or RIP
	disp             Label   // LabelGlobal for RIP-relative or kernel-image displacements
	virt             uint64  // the address, when virtKnown
	virtKnown        bool
}

// slot is one expected memory access of an instruction, in the order
// Unicorn performs them. An operand wider than 8 bytes arrives as several
// events; a slot collects n bytes.
type slot struct {
	write    bool
	optional bool // the access may not happen (e.g. cmpxchg that fails)
	n        uint8
	addr     uint8 // index into insn.addrs
}

const maxSlots = 4

// insn is a decoded instruction compiled to its rule.
type insn struct {
	pc    uint64
	size  uint8
	kind  kind
	op    x86asm.Op
	w     uint8 // operation width in bytes, for rules with implicit operands
	nargs uint8
	args  [3]operand
	naddr uint8
	addrs [2]addrSpec
	nslot uint8
	slots [maxSlots]slot
	// str: a string instruction, which runs with no access at all when a
	// rep prefix finds rCX = 0.
	str bool
	// anyAccess instructions (kGeneric, kIret) take whatever accesses
	// happen, all with the address addrs[0] (undecodable ones with none).
	anyAccess   bool
	undecodable bool
	unmodelled  bool
	clean       uint64 // kLogic: bytes an immediate makes constant
	execs       uint64 // executions; counted for unmodelled and undecodable ones
}

// VirtRange is a range [Begin, End) of virtual addresses.
type VirtRange struct{ Begin, End uint64 }

// compiler holds what compile needs besides the instruction.
type compiler struct {
	image []VirtRange
}

func (c *compiler) inImage(va uint64) bool {
	for _, r := range c.image {
		if r.Begin <= va && va < r.End {
			return true
		}
	}
	return false
}

// undecodable builds the placeholder for bytes that cannot be decoded.
func undecodable(pc uint64, size uint8) *insn {
	return &insn{pc: pc, size: size, kind: kGeneric, undecodable: true, anyAccess: true}
}

// compile turns a decoded instruction into its rule. For an opcode
// without a rule it returns the conservative generic rule and an error
// wrapping ErrUnmodelled.
func (c *compiler) compile(inst x86asm.Inst, pc uint64) (*insn, error) {
	in := &insn{pc: pc, size: uint8(inst.Len), op: inst.Op}
	k, ok := rules[inst.Op]
	if inst.Op == x86asm.XSAVEOPT && hasPrefix(inst, x86asm.PrefixDataSize) {
		// clwb is 66 0F AE /6, which x86asm reads as xsaveopt; it has no
		// data flow and Unicorn reports no access for it.
		k, ok = kNop, true
	}
	var err error
	if !ok {
		err = fmt.Errorf("%w for %v at %#x", ErrUnmodelled, inst.Op, pc)
	}
	if e := c.operands(in, inst); e != nil && err == nil {
		err = e
	}
	if err == nil {
		err = c.shape(in, inst, k)
	}
	if err != nil {
		g := &insn{pc: pc, size: in.size, op: inst.Op, kind: kGeneric, unmodelled: true, anyAccess: true,
			nargs: in.nargs, args: in.args, naddr: in.naddr, addrs: in.addrs}
		for i := range g.args {
			g.args[i].rslot, g.args[i].wslot = -1, -1
		}
		return g, err
	}
	return in, nil
}

// operands fills in.args (and in.addrs for memory operands) from the
// typed x86asm arguments.
func (c *compiler) operands(in *insn, inst x86asm.Inst) error {
	var err error
	for i, a := range inst.Args {
		if a == nil {
			break
		}
		if i >= len(in.args) {
			return fmt.Errorf("%w: %v has %d operands", ErrUnmodelled, inst.Op, i+1)
		}
		o := &in.args[i]
		o.rslot, o.wslot = -1, -1
		switch a := a.(type) {
		case x86asm.Reg:
			ri := infoOf(a)
			if ri.class == rcOther || ri.class == rcNone {
				err = fmt.Errorf("%w: %v uses untracked register %v", ErrUnmodelled, inst.Op, a)
			}
			*o = operand{kind: okReg, reg: ri, w: ri.size, rslot: -1, wslot: -1}
		case x86asm.Mem:
			if in.naddr == uint8(len(in.addrs)) {
				return fmt.Errorf("%w: %v has too many memory operands", ErrUnmodelled, inst.Op)
			}
			o.kind = okMem
			o.addr = in.naddr
			o.w = uint8(inst.MemBytes)
			in.addrs[in.naddr] = c.addr(a, inst, in.pc)
			in.naddr++
		case x86asm.Imm:
			o.kind = okImm
			o.raw = int64(a)
		case x86asm.Rel:
			o.kind = okNone
		}
		in.nargs = uint8(i + 1)
	}
	// Immediates take the width of the destination (x86 sign-extends them).
	for i := 0; i < int(in.nargs); i++ {
		if o := &in.args[i]; o.kind == okImm {
			w := in.args[0].w
			if i == 0 || w == 0 || w > 8 {
				w = uint8(inst.DataSize / 8)
			}
			c.setImm(o, w)
		}
	}
	return err
}

// setImm sizes immediate o to w bytes: its value as the CPU extends it,
// and LabelGlobal if that value is an address in the kernel image.
func (c *compiler) setImm(o *operand, w uint8) {
	if w == 0 || w > 8 {
		w = 8
	}
	o.w = w
	o.immVal = uint64(o.raw) & mask8(int(w))
	o.imm = vec{}
	if w == 8 && c.inImage(o.immVal) {
		o.imm = bvec(LabelGlobal, 8)
	}
}

// addr compiles a memory operand's address computation.
func (c *compiler) addr(m x86asm.Mem, inst x86asm.Inst, pc uint64) addrSpec {
	s := addrSpec{seg: m.Segment, base: m.Base, index: m.Index}
	if infoOf(m.Base).class == rcGPR {
		s.baseRI = infoOf(m.Base)
	}
	if infoOf(m.Index).class == rcGPR {
		s.indexRI = infoOf(m.Index)
	}
	disp := uint64(m.Disp)
	switch {
	case infoOf(m.Base).class == rcIP:
		// RIP-relative data is the kernel's (or a module's) own image:
		// always a global.
		s.virt, s.virtKnown = pc+uint64(inst.Len)+disp, true
		s.disp = LabelGlobal
	case m.Base == 0 && m.Index == 0:
		if m.Segment != x86asm.GS && m.Segment != x86asm.FS {
			s.virt, s.virtKnown = disp, true
		}
		if c.inImage(disp) {
			s.disp = LabelGlobal
		}
	default:
		if c.inImage(disp) {
			s.disp = LabelGlobal
		}
	}
	if inst.AddrSize == 32 {
		s.virt &= 0xffffffff
	}
	return s
}

// stackAddr is the implicit operand of push/pop/call/ret.
func stackAddr() addrSpec {
	return addrSpec{seg: x86asm.SS, base: x86asm.RSP, baseRI: gprInfo(gRSP, 8)}
}

func (in *insn) addAddr(s addrSpec) uint8 {
	in.addrs[in.naddr] = s
	in.naddr++
	return in.naddr - 1
}

func (in *insn) addSlot(write, optional bool, n, addr uint8) int8 {
	in.slots[in.nslot] = slot{write: write, optional: optional, n: n, addr: addr}
	in.nslot++
	return int8(in.nslot - 1)
}

// rd, wr and rmw add the accesses of explicit memory operand i, if it is
// one.
func (in *insn) rd(i int) {
	if o := &in.args[i]; o.kind == okMem {
		o.rslot = in.addSlot(false, false, o.w, o.addr)
	}
}

func (in *insn) wr(i int) {
	if o := &in.args[i]; o.kind == okMem {
		o.wslot = in.addSlot(true, false, o.w, o.addr)
	}
}

func (in *insn) rmw(i int) {
	in.rd(i)
	in.wr(i)
}

func (in *insn) memArg() int {
	for i := 0; i < int(in.nargs); i++ {
		if in.args[i].kind == okMem {
			return i
		}
	}
	return -1
}

func hasPrefix(inst x86asm.Inst, p x86asm.Prefix) bool {
	for _, q := range inst.Prefix {
		if q == 0 {
			break
		}
		if q&0xff == p {
			return true
		}
	}
	return false
}

var stringWidth = map[x86asm.Op]uint8{
	x86asm.MOVSB: 1, x86asm.MOVSW: 2, x86asm.MOVSD: 4, x86asm.MOVSQ: 8,
	x86asm.STOSB: 1, x86asm.STOSW: 2, x86asm.STOSD: 4, x86asm.STOSQ: 8,
	x86asm.LODSB: 1, x86asm.LODSW: 2, x86asm.LODSD: 4, x86asm.LODSQ: 8,
	x86asm.CMPSB: 1, x86asm.CMPSW: 2, x86asm.CMPSD: 4, x86asm.CMPSQ: 8,
	x86asm.SCASB: 1, x86asm.SCASW: 2, x86asm.SCASD: 4, x86asm.SCASQ: 8,
}

// shape sets the rule, widths and expected accesses of in.
func (c *compiler) shape(in *insn, inst x86asm.Inst, k kind) error {
	in.kind = k
	sizeMemOperands(in, inst)
	in.w = in.args[0].w
	a0 := &in.args[0]

	switch k {
	case kNop:
	case kMov, kMovzx, kMovsx, kCmov, kBswap, kMovbe, kBitScan, kCount, kSetcc,
		kSSEMov, kMovq, kMovd, kMovLow, kMovHigh, kMovScalar:
		in.rd(1)
		in.wr(0)
		switch {
		case k == kSetcc:
			in.args[0].w = 1
		case inst.Op == x86asm.MOVSS:
			in.w = 4
		case inst.Op == x86asm.MOVSD_XMM:
			in.w = 8
		}
	case kLea:
		// The memory operand is arithmetic, not an access.
	case kArith, kLogic:
		shapeArithLogic(in, inst, k)
	case kLogicSSE:
		if in.sameReg() && (inst.Op == x86asm.PXOR || inst.Op == x86asm.XORPS || inst.Op == x86asm.XORPD) {
			in.kind = kClear
			break
		}
		in.rd(1)
	case kRead:
		in.rd(0)
		in.rd(1)
	case kKeep, kFold, kShift, kShiftD:
		in.rmw(0)
		in.rd(1)
	case kMul1, kDiv1:
		in.rd(0)
		in.w = in.args[0].w
	case kIMul:
		if in.nargs == 1 {
			in.kind = kMul1
			in.rd(0)
			break
		}
		in.rd(1)
	case kXchg:
		if i := in.memArg(); i >= 0 {
			in.rmw(i)
		}
	case kXadd:
		in.rmw(0)
	case kCmpxchg, kCmpxchgWide:
		in.rd(0)
		if a0.kind == okMem {
			a0.wslot = in.addSlot(true, true, a0.w, a0.addr)
		}
	case kPush, kPop, kCall, kRet, kPopf, kPushf, kLeave, kEnter:
		return c.shapeStack(in, inst, k)
	case kMovs, kStos, kLods, kCmps, kScas:
		return shapeString(in, inst, k)
	case kSignExtA, kSignExtD, kMachine, kSyscall:
	case kXlat:
		in.args[0].w = 1
		in.rd(0)
	case kIret:
		// Five stack reads of the interrupt frame, taken as they come.
		in.anyAccess = true
		in.addAddr(stackAddr())
	case kJmp:
		in.rd(0)
	default:
		return unmodelledShape(inst, "has no shape")
	}
	return nil
}

func unmodelledShape(inst x86asm.Inst, why string) error {
	return fmt.Errorf("%w: %v %s", ErrUnmodelled, inst.Op, why)
}

// sizeMemOperands gives memory operands without a size of their own the
// other operand's (x86asm leaves MemBytes 0 for some forms).
func sizeMemOperands(in *insn, inst x86asm.Inst) {
	for i := 0; i < int(in.nargs); i++ {
		if o := &in.args[i]; o.kind == okMem && o.w == 0 {
			o.w = uint8(inst.DataSize / 8)
			for j := 0; j < int(in.nargs); j++ {
				if in.args[j].kind == okReg {
					o.w = in.args[j].w
					break
				}
			}
		}
	}
}

// sameReg reports whether the first two operands are the same register
// (xor r,r and the like).
func (in *insn) sameReg() bool {
	a0, a1 := &in.args[0], &in.args[1]
	return in.nargs >= 2 && a0.kind == okReg && a1.kind == okReg && a0.reg == a1.reg
}

// shapeArithLogic shapes add/sub/adc/sbb and and/or/xor.
func shapeArithLogic(in *insn, inst x86asm.Inst, k kind) {
	if in.sameReg() && (inst.Op == x86asm.SUB || inst.Op == x86asm.SBB || inst.Op == x86asm.XOR) {
		in.kind = kClear
		return
	}
	in.rmw(0)
	in.rd(1)
	if a1 := &in.args[1]; k == kLogic && in.nargs >= 2 && a1.kind == okImm {
		in.clean |= immConstBytes(inst.Op, a1.immVal, in.w)
	}
}

// immConstBytes returns the bytes of a w-byte and/or result that immediate
// imm makes constant.
func immConstBytes(op x86asm.Op, imm uint64, w uint8) uint64 {
	// A value masked to 16 bits or fewer (addr & 0xfff, a hash bucket) is an amount, not
	// a pointer: it carries no provenance. Otherwise a guest page offset added to an
	// SVM buffer address would make the buffer look like guest memory.
	if op == x86asm.AND && imm < 1<<16 {
		return ^uint64(0)
	}
	var clean uint64
	for b := 0; b < int(w); b++ {
		v := byte(imm >> (8 * uint(b)))
		if op == x86asm.AND && v == 0 || op == x86asm.OR && v == 0xff {
			clean |= 0xff << (8 * uint(b))
		}
	}
	return clean
}

// shapeStack shapes the instructions that access the stack implicitly:
// push, pop, call, ret, pushf, popf, leave and enter.
func (c *compiler) shapeStack(in *insn, inst x86asm.Inst, k kind) error {
	a0 := &in.args[0]
	stackW := uint8(8)
	if inst.DataSize == 16 {
		stackW = 2
	}
	switch k {
	case kPush:
		in.rd(0)
		switch a0.kind {
		case okReg, okMem:
			stackW = a0.w
		case okImm:
			c.setImm(a0, stackW)
		}
		in.w = stackW
		in.addSlot(true, false, stackW, in.addAddr(stackAddr()))
	case kPop:
		if a0.kind == okReg || a0.kind == okMem {
			stackW = a0.w
		}
		in.w = stackW
		in.addSlot(false, false, stackW, in.addAddr(stackAddr()))
		in.wr(0)
	case kCall:
		in.rd(0)
		in.addSlot(true, false, 8, in.addAddr(stackAddr()))
	case kRet, kPopf:
		in.addSlot(false, false, stackW, in.addAddr(stackAddr()))
	case kPushf:
		in.addSlot(true, false, stackW, in.addAddr(stackAddr()))
	case kLeave:
		in.addSlot(false, false, 8, in.addAddr(addrSpec{seg: x86asm.SS, base: x86asm.RBP, baseRI: gprInfo(gRBP, 8)}))
	case kEnter:
		if in.nargs < 2 || in.args[1].immVal != 0 {
			return unmodelledShape(inst, "with a nesting level")
		}
		in.addSlot(true, false, 8, in.addAddr(stackAddr()))
	}
	return nil
}

// shapeString shapes the string instructions movs, stos, lods, cmps and
// scas. Their base register tells source (rsi) from destination (rdi).
func shapeString(in *insn, inst x86asm.Inst, k kind) error {
	in.str = true
	in.w = stringWidth[inst.Op]
	src, dst := -1, -1
	for i := 0; i < int(in.nargs); i++ {
		if o := &in.args[i]; o.kind == okMem {
			o.w = in.w
			switch in.addrs[o.addr].baseRI.idx {
			case gRSI:
				src = i
			case gRDI:
				dst = i
			}
		}
	}
	switch k {
	case kMovs:
		if src < 0 || dst < 0 {
			return unmodelledShape(inst, "without rsi and rdi operands")
		}
		in.rd(src)
		in.wr(dst)
	case kStos:
		in.wr(dst)
	case kLods:
		in.rd(src)
	case kCmps:
		// QEMU loads [rdi] first.
		if src < 0 || dst < 0 {
			return unmodelledShape(inst, "without rsi and rdi operands")
		}
		in.rd(dst)
		in.rd(src)
	case kScas:
		in.rd(dst)
	}
	if in.nslot == 0 {
		return unmodelledShape(inst, "without its memory operand")
	}
	return nil
}
