package bridge

import (
	"fmt"

	"golang.org/x/arch/x86/x86asm"

	"hybridbridge/decision"
	"hybridbridge/svm"
	"hybridbridge/taint"
)

// policy is the Slow-Bridge's taint policy for the kernel image's physical range, where the
// same addresses hold the SVM's data and, in the guest's copy, the guest's:
//
//   - In the data sections (globals): an address derived from guest data (a guest task's
//     &init_nsproxy) is the guest's; any other address — a constant or an SVM pointer such as the
//     /proc mount's &init_pid_ns — is decided per global by the redirect and keep-local lists.
//   - In the struct pages both kernels keep at the same address: the struct page of a frame only
//     the guest uses is the guest's; elsewhere guest-derived addresses are the guest's, others
//     the SVM's (VMST).
//
// The image's pages a kernel frees and reuses need no decision: the SVM keeps them unused and
// the guest's RAM is overlaid there (svm.Snapshot.KeptImage).
//
// Data read through a redirected access is labelled as the guest's, so provenance follows it.
type policy struct {
	snap    *svm.Snapshot
	globals *Globals
	data    []svm.PhysSpan
	aliases []alias
	// caller is Session.callerOf on the Slow-Bridge machine.
	caller func() uint64
	// guestFiles is set while a guest file is read (Session.ReadGuestFile): the lookup tables
	// of guestLookupList are then the guest's for every access.
	guestFiles bool
}

func newPolicy(snap *svm.Snapshot, g *Globals, aliases []alias) *policy {
	return &policy{snap: snap, globals: g, data: snap.DataRanges(), aliases: aliases}
}

// decided are the inclusive physical ranges whose accesses need a decision before they complete:
// the kernel image's data and the aliased struct pages. Slow-Bridge decides them by taint,
// Fast-Bridge from the memo.
func (p *policy) decided() [][2]uint64 {
	var out [][2]uint64
	for _, r := range p.data {
		if r.End > r.Start {
			out = append(out, [2]uint64{r.Start, r.End - 1})
		}
	}
	for _, a := range p.aliases {
		out = append(out, [2]uint64{a.svm, a.svm + a.size - 1})
	}
	return out
}

// alias returns the alias holding phys.
func (p *policy) alias(phys uint64) (alias, bool) {
	for _, a := range p.aliases {
		if phys >= a.svm && phys < a.svm+a.size {
			return a, true
		}
	}
	return alias{}, false
}

// svmSide are the labels of the SVM's own data: its kernel's and the inspecting process's.
const svmSide = taint.LabelSVM | taint.LabelUser

func (p *policy) virt(phys uint64) uint64 {
	return phys - p.snap.Layout.KernelStart + p.snap.Symbols["_text"]
}

func (p *policy) Decide(a *taint.Access) (decision.Decision, taint.Reason) {
	if userPC(a.PC) {
		return decision.Local, taint.ReasonUserCode
	}
	// The inspecting process's memory (user-labelled) is the SVM's as much as its kernel's is.
	guestOnly := a.Addr&taint.LabelGVM != 0 && a.Addr&svmSide == 0 && a.Seg != x86asm.GS && a.Base != x86asm.RSP
	if svm.InSpans(p.data, a.Phys) {
		if p.guestFiles && p.globals.guestLookup(p.virt(a.Phys)) {
			return decision.Redirect, taint.ReasonGlobalRedirect
		}
		if p.globals.same(p.virt(a.Phys), a.PC) {
			return decision.Local, taint.ReasonGlobalLocal
		}
		if guestOnly && !a.DispGlobal {
			return decision.Redirect, taint.ReasonGVMPointer
		}
		switch d := p.globals.decide(p.virt(a.Phys), a.PC, p.caller); d {
		case decision.Redirect:
			return d, taint.ReasonGlobalRedirect
		case decision.Local:
			return d, taint.ReasonGlobalLocal
		default:
			return decision.Unknown, taint.ReasonGlobalUnknown
		}
	}
	if p.guestFrame(a.Phys) {
		return decision.Redirect, taint.ReasonGuestFrame
	}
	if _, ok := p.alias(a.Phys); ok {
		return p.shared(a, guestOnly)
	}
	return taint.VMST{}.Decide(a)
}

// userPC reports whether pc is a program's instruction (the canonical lower half) rather than the
// kernel's. Of the kernel image's data a program's page tables map only the zero page (untouched
// anonymous memory; the vDSO is off), and what a program touches is the SVM's, whatever the
// provenance of the address: a program computes addresses from the guest's data it read.
func userPC(pc uint64) bool { return pc>>63 == 0 }

// guestFrame reports whether phys, in the aliased struct pages, is the struct page of a page frame
// the SVM reserved or kept for the guest. The SVM never uses those frames, so their struct pages are the
// guest's whatever the pointer's provenance: a page-table page's lock, a guest page's count. No
// per-address memo is needed for them, and none would carry over to another boot, whose page
// tables are elsewhere.
func (p *policy) guestFrame(phys uint64) bool {
	a, ok := p.alias(phys)
	if !ok || p.snap.StructPage == 0 {
		return false
	}
	frame := a.place(phys) / p.snap.StructPage << 12
	return svm.InSpans(p.snap.Layout.Reserved, frame) || svm.InSpans(p.snap.KeptImage, frame)
}

// shared decides an access where both VMs keep their own data at the same physical address (the
// struct pages of frames both use). An address from guest data alone is the guest's,
// one without guest provenance the SVM's. A mixed address is decided by its base register — the
// pointer; an index is only an amount (a guest-given length into an SVM buffer). When the pointer
// itself is mixed, reads are the guest's (guest data at an SVM-given position, as in VMST) and
// writes the SVM's: inspection produces output into its own buffers at guest-given positions
// (copy_to_user advancing by guest-derived lengths), while its writes to guest state (locks,
// reference counts) go through pointers from guest data alone. Page offsets (masked values) and
// layout constants (page_offset_base, vmemmap_base) carry no provenance, so a guest pfn turned
// into an address, plus an offset, stays the guest's.
func (p *policy) shared(a *taint.Access, guestOnly bool) (decision.Decision, taint.Reason) {
	switch {
	case guestOnly:
		return decision.Redirect, taint.ReasonGVMPointer
	case a.Addr&taint.LabelGVM == 0:
		return taint.VMST{}.Decide(a)
	case a.BaseLabel&svmSide != 0 && a.BaseLabel&taint.LabelGVM == 0, a.Write:
		return decision.Local, taint.ReasonMixedPointer
	default:
		return decision.Redirect, taint.ReasonMixedPointer
	}
}

// tracker builds the taint engine for a session: guest memory is labelled as the guest's, the
// agent's buffer as user data, and every access to the kernel image's data is decided
// synchronously, so a redirected one uses the guest's bytes before it completes.
func (s *Session) tracker(snap *svm.Snapshot, pol *policy) (*taint.Tracker, error) {
	m := s.Machine
	var mem []taint.PhysRange
	for _, sp := range append(append([]svm.PhysSpan{}, snap.Layout.Reserved...), snap.KeptImage...) {
		mem = append(mem, taint.PhysRange{Begin: sp.Start, End: min(sp.End, s.ram.End()), Label: taint.LabelGVM})
	}
	for va := snap.Agent.Buffer; va < snap.Agent.Buffer+snap.Agent.Size; va += 4096 {
		pa, err := m.Phys(va)
		if err != nil {
			return nil, fmt.Errorf("agent buffer page %#x: %w", va, err)
		}
		mem = append(mem, taint.PhysRange{Begin: pa, End: pa + 4096, Label: taint.LabelUser})
	}
	// The kernel's globals carry no provenance of their own: most are layout constants equal in
	// both VMs, and those that hold guest state are redirected (their data is then the guest's).
	for _, r := range pol.data {
		mem = append(mem, taint.PhysRange{Begin: r.Start, End: r.End, Label: taint.LabelNone})
	}
	tr := taint.New(taint.Config{
		Policy:   pol,
		Image:    []taint.VirtRange{{Begin: snap.Symbols["_text"], End: snap.Symbols["_end"]}},
		Memory:   mem,
		ReadCode: m.ReadVirt,
		OnAccess: func(a *taint.Access) {
			if s.OnAccess != nil {
				s.OnAccess(a)
			}
		},
		Sync: &taint.SyncConfig{More: pol.decided(), Func: s.decideImage},
	})
	if err := tr.Attach(m.Engine()); err != nil {
		return nil, err
	}
	return tr, nil
}

// decideImage runs before each access to the kernel image's data or aliased struct pages completes
// (Slow-Bridge): it applies the taint engine's decision and learns it.
func (s *Session) decideImage(a *taint.Access) {
	if userPC(a.PC) {
		// Also where the tracker could not decode the program's instruction (the AVX string
		// functions of a static C library) and so never asked the policy: nothing for the memo,
		// whose entries are the kernel's instructions.
		s.apply(s.Machine, a.Phys, a.Size, a.Write, decision.Local)
		return
	}
	region := s.apply(s.Machine, a.Phys, a.Size, a.Write, a.Decision)
	if s.policy.guestFiles {
		// Decided for this kind of operation alone (ReadGuestFile): not memoized.
		if a.Decision == decision.Unknown && svm.InSpans(s.policy.data, a.Phys) {
			s.Globals.count(region)
		}
		return
	}
	if svm.InSpans(s.policy.data, a.Phys) {
		if a.Decision == decision.Unknown {
			s.Globals.count(region)
		}
		if a.Reason == taint.ReasonGVMPointer {
			// Decided by provenance, not by the lists: Fast-Bridge must not re-derive it from them.
			region += guestPointer
		}
	} else if a.Reason != taint.ReasonGuestFrame {
		// Where both VMs keep struct pages at the same address, the decision is per access; the
		// address it was made for lets Fast-Bridge replay an instruction seen both ways.
		region = addressRegion(region, s.policy.place(a.Phys), a.Decision)
	}
	s.learn(a.PC, a.Decision, region)
}

// apply carries out a decision for an access to the kernel image's data, or to aliased
// struct pages, on machine m: a redirected access gets the guest's bytes swapped in for just that
// access. It returns the region touched (the global's name in the data sections).
func (s *Session) apply(m *svm.Machine, phys uint64, size int, write bool, d decision.Decision) string {
	s.swap(m, phys, size, write, d)
	return s.region(phys)
}

// swap carries out decision d for an access about to happen: a redirected one is given the
// guest's bytes (for a write, its result goes to the guest's private copy).
func (s *Session) swap(m *svm.Machine, phys uint64, size int, write bool, d decision.Decision) {
	m.FlushWrites()
	s.count(phys, d)
	if al, ok := s.policy.alias(phys); ok {
		if d == decision.Redirect {
			g := al.guest + (phys - al.svm)
			if err := m.SwapInAlias(phys, m.RAM()[g:g+uint64(size)], write); err != nil {
				m.Stop(err.Error())
			}
		}
		return
	}
	if d != decision.Redirect {
		return
	}
	var err error
	if write {
		err = m.SwapInGuestForWrite(phys, size)
	} else {
		err = m.SwapInGuest(phys, size)
	}
	if err != nil {
		m.Stop(err.Error())
	}
}

// count adds a decided access to Counts: every access to a global by its decision, and in the
// aliased struct pages the redirected ones.
func (s *Session) count(phys uint64, d decision.Decision) {
	if _, ok := s.policy.alias(phys); !ok && svm.InSpans(s.policy.data, phys) {
		s.Counts.Add(d, 1)
	} else if d == decision.Redirect {
		s.Counts.Redirect++
	}
}

// addressRegion names a decision at one address of the aliased struct pages, as memoized:
// "struct-pages +0x1c0040 redirect". The address is given as where it lies in the vmemmap
// region (place), not physically: KASLR moves it, and the memo serves every layout.
func addressRegion(class string, place uint64, d decision.Decision) string {
	return fmt.Sprintf("%s +%#x %s", class, place, d)
}

// place is where a physical address of the aliased struct pages lies in the vmemmap region
// (which pages' struct pages it holds), or in the kernel image for any other.
func (p *policy) place(phys uint64) uint64 {
	if a, ok := p.alias(phys); ok {
		return a.place(phys)
	}
	return phys - p.snap.Layout.KernelStart
}
