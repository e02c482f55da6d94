package bridge

import (
	"sort"
	"sync"

	"hybridbridge/svm"
	"hybridbridge/vmm"
)

// redirectList are the roots of guest state: the kernel globals whose guest copy a view must read.
// Each entry says which kernel path needed it. Everything reached from them lies in the guest's
// (overlaid) memory, so very few are needed (DESIGN §3.3).
var redirectList = map[string]string{
	// proc_pid_readdir → next_tgid → find_ge_pid → idr_get_next(&ns->idr): the PID IDR of the
	// /proc mount's namespace, which is &init_pid_ns.
	"init_pid_ns": "process IDs (getdents64 of /proc, /proc/<pid> lookup)",
}

// keepLocalList are globals of the SVM's own machinery, which must stay the SVM's whatever
// function touches them: redirecting them breaks the SVM (e.g. freeing into another VM's slab
// cache) or mixes its state with the guest's.
var keepLocalList = map[string]string{}

// Globals classifies kernel-global accesses by the data symbol they touch and counts the unknown
// ones by symbol, so they stay visible.
type Globals struct {
	syms *vmm.Symbols

	mu      sync.Mutex
	unknown map[string]int // symbol -> accesses; guarded by mu
}

// NewGlobals builds the classifier over the kernel's symbols.
func NewGlobals(syms *vmm.Symbols) *Globals {
	return &Globals{syms: syms, unknown: map[string]int{}}
}

// Classify implements svm.Classifier, counting the unknown globals.
func (g *Globals) Classify(a svm.GlobalAccess) svm.GlobalDecision {
	d := g.decide(a.Virt)
	if d == svm.GlobalUnknown {
		name, _, ok := g.syms.Lookup(a.Virt)
		if !ok {
			name = "?"
		}
		g.mu.Lock()
		g.unknown[name]++
		g.mu.Unlock()
	}
	return d
}

// decide looks the global up in the lists, without counting.
func (g *Globals) decide(virt uint64) svm.GlobalDecision {
	name, _, ok := g.syms.Lookup(virt)
	if !ok {
		return svm.GlobalUnknown
	}
	if _, r := redirectList[name]; r {
		return svm.GlobalRedirect
	}
	if _, l := keepLocalList[name]; l {
		return svm.GlobalLocal
	}
	return svm.GlobalUnknown
}

// UnknownCount is one global in neither list, with how often it was accessed.
type UnknownCount struct {
	Symbol   string `json:"symbol"`
	Accesses int    `json:"accesses"`
}

// Unknown lists the globals in neither list, most accessed first.
func (g *Globals) Unknown() []UnknownCount {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]UnknownCount, 0, len(g.unknown))
	for s, n := range g.unknown {
		out = append(out, UnknownCount{s, n})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Accesses != out[j].Accesses {
			return out[i].Accesses > out[j].Accesses
		}
		return out[i].Symbol < out[j].Symbol
	})
	return out
}
