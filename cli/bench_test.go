package cli

import (
	"testing"

	"hybridbridge/bridge"
	"hybridbridge/memo"
)

// A run without memo lookups has no hit rate: it prints n/a, never 100 %.
func TestBenchRatesWithoutLookups(t *testing.T) {
	for _, c := range []struct {
		run        benchRun
		access     string
		insn       string
		accessNull bool
	}{
		{benchRun{}, "n/a", "n/a", true},
		{benchRun{Hits: 999, Misses: 1, InsnHits: 3, InsnMisses: 1}, "99.900%", "75.000%", false},
		{benchRun{Misses: 4}, "0.000%", "n/a", false},
	} {
		if got := percent(c.run.HitRate()); got != c.access {
			t.Errorf("%+v: access hit rate %s, want %s", c.run, got, c.access)
		}
		if got := percent(c.run.InsnHitRate()); got != c.insn {
			t.Errorf("%+v: instruction hit rate %s, want %s", c.run, got, c.insn)
		}
		if (c.run.HitRate() == nil) != c.accessNull {
			t.Errorf("%+v: JSON hit rate null %v, want %v", c.run, c.run.HitRate() == nil, c.accessNull)
		}
	}
}

// insnCounts counts instructions, not accesses: one instruction hit a thousand times is one hit;
// an instruction that missed once counts as missed even if it also hit; a fall-back on an
// instruction the memo did not hold counts as missed.
func TestBenchInstructionCounts(t *testing.T) {
	before := []memo.Entry{{PC: 1, Hits: 5}, {PC: 2, Hits: 1}, {PC: 3}}
	after := []memo.Entry{{PC: 1, Hits: 1005}, {PC: 2, Hits: 2, Misses: 1}, {PC: 3}, {PC: 4, Hits: 7}}
	hits, misses := insnCounts(before, after, []bridge.FallBack{{PC: 0x109, MemoPC: 9}, {PC: 0x109, MemoPC: 9}})
	if hits != 2 || misses != 2 {
		t.Errorf("insnCounts: %d hit, %d missed; want 2 (pcs 1 and 4) and 2 (pcs 2 and 9)", hits, misses)
	}
}
