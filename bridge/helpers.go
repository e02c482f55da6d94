package bridge

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/arch/x86/x86asm"

	"hybridbridge/emu"
	"hybridbridge/svm"
	"hybridbridge/vmm"
)

// scopedHelpers are out-of-line helpers through which listed functions read the globals they
// redirect (redirectInList): for_each_possible_cpu in show_stat calls _find_next_bit on
// __cpu_possible_mask. The helper itself is in no list, so the function it returns to decides;
// this works only for a frameless helper, which never moves its stack pointer, so [RSP] is its
// return address wherever it runs.
var scopedHelpers = []string{"_find_next_bit", "_find_first_bit"}

// maxHelperBytes bounds the code read to check a helper: these are a few dozen instructions.
const maxHelperBytes = 4096

// framelessHelpers returns the scopedHelpers whose code, read from the SVM, never changes RSP
// before returning: no push, pop, call or other instruction naming RSP, only ret. A helper the
// kernel lacks, or one that is not frameless in this build, is left out (its callers' lists then
// do not reach into it, as before).
func framelessHelpers(syms *vmm.Symbols, read func(va uint64, b []byte) error) (map[string]bool, error) {
	out := map[string]bool{}
	for _, name := range scopedHelpers {
		start, ok := syms.Addr(name)
		if !ok {
			continue
		}
		end := start + maxHelperBytes
		syms.Each(func(s vmm.Symbol) bool {
			if s.Addr > start && s.Addr < end {
				end = s.Addr
			}
			return true
		})
		code := make([]byte, end-start)
		if err := read(start, code); err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
		out[name] = frameless(code)
	}
	return out, nil
}

// frameless reports whether code (one function) leaves RSP alone until it returns.
func frameless(code []byte) bool {
	for i := 0; i < len(code); {
		in, err := x86asm.Decode(code[i:], 64)
		if err != nil || in.Op == 0 { // a lone prefix decodes as Op 0
			return false
		}
		i += in.Len
		switch in.Op {
		case x86asm.RET, x86asm.INT: // INT3 pads the function's end
			continue
		case x86asm.PUSH, x86asm.POP, x86asm.CALL, x86asm.ENTER, x86asm.LEAVE, x86asm.PUSHF, x86asm.POPF:
			return false
		}
		for _, a := range in.Args {
			switch a := a.(type) {
			case x86asm.Reg:
				if a == x86asm.RSP || a == x86asm.ESP || a == x86asm.SP {
					return false
				}
			case x86asm.Mem:
				if a.Base == x86asm.RSP || a.Index == x86asm.RSP {
					return false
				}
			}
		}
	}
	return true
}

// callerOf is where the frameless scoped helper m is running returns to: [RSP]. It is 0 where the
// machine cannot tell (on KVM the trap carries no stack pointer), and where the stack cannot be
// read, which stops the call: Unicorn holds the registers and the kernel stack is mapped.
func (s *Session) callerOf(m *svm.Machine) uint64 {
	e := m.Engine()
	if e == nil {
		return 0
	}
	rsp, err := e.Reg(emu.RSP)
	var b [8]byte
	if err == nil {
		err = m.ReadVirt(rsp, b[:])
	}
	if err != nil {
		m.Stop(fmt.Sprintf("read a helper's return address: %v", err))
		return 0
	}
	return binary.LittleEndian.Uint64(b[:])
}
