package taint

import "golang.org/x/arch/x86/x86asm"

// regClass says how the shadow state tracks a register.
type regClass uint8

const (
	rcNone  regClass = iota
	rcGPR            // one of the 16 general-purpose registers, at byte granularity
	rcXMM            // XMM0..15, at byte granularity
	rcIP             // RIP/EIP/IP: only as a base of RIP-relative addresses
	rcSys            // segment, control, debug, descriptor-table registers: SVM machine state
	rcOther          // x87, MMX, YMM/ZMM, mask registers: not tracked (their rules are unmodelled)
)

// regInfo places an x86asm register in the shadow register file: which
// full register, at which byte offset, how many bytes. This one table
// settles aliasing (AL/AH/AX/EAX/RAX all name bytes of register 0).
type regInfo struct {
	class regClass
	idx   uint8 // GPR or XMM number
	off   uint8 // byte offset within the full register (1 for AH..BH)
	size  uint8 // width in bytes
}

// regTab is filled once by buildRegTab and only read afterwards.
var regTab = buildRegTab()

func buildRegTab() (t [x86asm.TR7 + 1]regInfo) {
	gpr := func(first, last x86asm.Reg, size uint8) {
		for r := first; r <= last; r++ {
			t[r] = regInfo{class: rcGPR, idx: uint8(r - first), size: size}
		}
	}
	gpr(x86asm.AL, x86asm.R15B, 1)
	// Without REX, encodings 4..7 of byte registers are AH, CH, DH, BH:
	// byte 1 of registers 0..3. x86asm lists them between BL and SPB and
	// calls the REX forms SPB, BPB, SIB, DIB.
	for i, r := range []x86asm.Reg{x86asm.AH, x86asm.CH, x86asm.DH, x86asm.BH} {
		t[r] = regInfo{class: rcGPR, idx: uint8(i), off: 1, size: 1}
	}
	for i, r := range []x86asm.Reg{x86asm.SPB, x86asm.BPB, x86asm.SIB, x86asm.DIB} {
		t[r] = regInfo{class: rcGPR, idx: uint8(4 + i), size: 1}
	}
	for r := x86asm.R8B; r <= x86asm.R15B; r++ {
		t[r] = regInfo{class: rcGPR, idx: uint8(8 + r - x86asm.R8B), size: 1}
	}
	gpr(x86asm.AX, x86asm.R15W, 2)
	gpr(x86asm.EAX, x86asm.R15L, 4)
	gpr(x86asm.RAX, x86asm.R15, 8)
	t[x86asm.IP] = regInfo{class: rcIP, size: 2}
	t[x86asm.EIP] = regInfo{class: rcIP, size: 4}
	t[x86asm.RIP] = regInfo{class: rcIP, size: 8}
	for r := x86asm.X0; r <= x86asm.X15; r++ {
		t[r] = regInfo{class: rcXMM, idx: uint8(r - x86asm.X0), size: 16}
	}
	for r := x86asm.F0; r <= x86asm.K7; r++ {
		if t[r].class == rcNone {
			t[r] = regInfo{class: rcOther, size: 8}
		}
	}
	for r := x86asm.ES; r <= x86asm.TR7; r++ {
		t[r] = regInfo{class: rcSys, size: 8}
	}
	return t
}

func infoOf(r x86asm.Reg) regInfo {
	if int(r) < len(regTab) {
		return regTab[r]
	}
	return regInfo{}
}

// Indices of the general-purpose registers in the shadow file (x86asm's
// encoding order).
const (
	gRAX = iota
	gRCX
	gRDX
	gRBX
	gRSP
	gRBP
	gRSI
	gRDI
	gR8
	gR9
	gR10
	gR11
	numGPR = 16
	numXMM = 16
)

// regFile is the shadow register state.
type regFile struct {
	gpr [numGPR]uint64 // byte labels, low byte first
	xmm [numXMM]vec
}

// read returns the labels of register ri's bytes (starting at byte 0).
func (f *regFile) read(ri regInfo) vec {
	switch ri.class {
	case rcGPR:
		return vec{lo: f.gpr[ri.idx] >> (8 * uint(ri.off)) & mask8(int(ri.size))}
	case rcXMM:
		return f.xmm[ri.idx].trunc(int(ri.size))
	case rcSys:
		// A value read from a segment or control register is the SVM's
		// machine state.
		return bvec(LabelSVM, int(ri.size))
	}
	return vec{}
}

// write stores the labels of register ri as the CPU writes the register: a
// 32-bit GPR write zero-extends (the upper bytes become constants), 8- and
// 16-bit writes keep the other bytes. XMM writes replace the first
// ri.size bytes; SSE rules that zero the rest pass a 16-byte value.
func (f *regFile) write(ri regInfo, v vec) {
	switch ri.class {
	case rcGPR:
		switch ri.size {
		case 8:
			f.gpr[ri.idx] = v.lo
		case 4:
			f.gpr[ri.idx] = v.lo & mask8(4)
		default:
			m := mask8(int(ri.size)) << (8 * uint(ri.off))
			f.gpr[ri.idx] = f.gpr[ri.idx]&^m | v.lo<<(8*uint(ri.off))&m
		}
	case rcXMM:
		n := int(ri.size)
		old := f.xmm[ri.idx]
		keep := vec{^mask8(n), ^mask8(n - 8)}
		if n <= 8 {
			keep.hi = ^uint64(0)
		}
		v = v.trunc(n)
		f.xmm[ri.idx] = vec{old.lo&keep.lo | v.lo, old.hi&keep.hi | v.hi}
	}
}

// gprInfo names the first size bytes of GPR idx.
func gprInfo(idx, size int) regInfo {
	return regInfo{class: rcGPR, idx: uint8(idx), size: uint8(size)}
}
