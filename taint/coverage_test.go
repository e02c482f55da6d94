package taint

import (
	"testing"

	"golang.org/x/arch/x86/x86asm"
)

// Every rule kind is exercised by some testdata/rules.txt case.
func TestRulesCoverEveryKind(t *testing.T) {
	c := compiler{image: []VirtRange{{kernelVirt, kernelVirt + 2<<20}}}
	seen := map[kind]bool{}
	for _, rc := range readRuleCases(t, "testdata/rules.txt") {
		for b := rc.code; len(b) > 0; {
			n := len(b)
			if inst, err := x86asm.Decode(b, 64); err == nil && inst.Op != 0 {
				n = inst.Len
			}
			for h := range specialNames {
				if p := hexCode(t, h); len(b) >= len(p) && string(b[:len(p)]) == string(p) {
					n = len(p)
				}
			}
			in, _ := c.compileBytes(b[:n], kernelVirt)
			seen[in.kind] = true
			b = b[n:]
		}
	}
	for k := kNop; k <= kGeneric; k++ {
		if !seen[k] {
			t.Errorf("rule kind %d has no testdata case", k)
		}
	}
}
