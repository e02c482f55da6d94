package bridge

import (
	"fmt"

	"hybridbridge/svm"
	"hybridbridge/taint"
)

// policy is the Slow-Bridge's taint policy. It agrees with the SVM's data-side trap on kernel
// globals (decided by symbol, whatever the address's provenance: a global reached through an SVM
// pointer such as the /proc mount's &init_pid_ns is still the guest's), so that data read from a
// redirected global is labelled as the guest's. Elsewhere the VMST rules decide.
type policy struct {
	snap    *svm.Snapshot
	globals *Globals
	data    []svm.PhysSpan
	window  []svm.PhysSpan
}

func newPolicy(snap *svm.Snapshot, g *Globals) *policy {
	return &policy{snap: snap, globals: g, data: snap.DataRanges(), window: snap.WindowRanges()}
}

func in(spans []svm.PhysSpan, phys uint64) bool {
	for _, s := range spans {
		if phys >= s.Start && phys < s.End {
			return true
		}
	}
	return false
}

func (p *policy) Decide(a *taint.Access) (taint.Decision, taint.Reason) {
	if in(p.data, a.Phys) {
		virt := a.Phys - p.snap.Layout.KernelStart + p.snap.Symbols["_text"]
		switch p.globals.decide(virt) {
		case svm.GlobalRedirect:
			return taint.Redirect, taint.ReasonGlobalRedirect
		case svm.GlobalLocal:
			return taint.Local, taint.ReasonGlobalLocal
		default:
			return taint.Unknown, taint.ReasonGlobalUnknown
		}
	}
	return taint.VMST{}.Decide(a)
}

// tracker builds the taint engine for a session: guest memory is labelled as the guest's, the
// agent's buffer as user data, and accesses in the image window are decided synchronously so a
// guest-derived one reads the guest's bytes.
func (s *Session) tracker(snap *svm.Snapshot, pol *policy) (*taint.Tracker, error) {
	m := s.Machine
	var mem []taint.PhysRange
	for _, sp := range snap.Layout.Reserved {
		mem = append(mem, taint.PhysRange{Begin: sp.Start, End: min(sp.End, s.g.Meta.RAMSize), Label: taint.LabelGVM})
	}
	for va := snap.Agent.Buffer; va < snap.Agent.Buffer+snap.Agent.Size; va += 4096 {
		pa, err := m.Phys(va)
		if err != nil {
			return nil, fmt.Errorf("agent buffer page %#x: %w", va, err)
		}
		mem = append(mem, taint.PhysRange{Begin: pa, End: pa + 4096, Label: taint.LabelUser})
	}
	lo, hi := pol.window[0].Start, pol.window[0].End
	for _, w := range pol.window {
		lo, hi = min(lo, w.Start), max(hi, w.End)
	}
	tr := taint.New(taint.Config{
		Policy:   pol,
		Image:    []taint.VirtRange{{Begin: snap.Symbols["_text"], End: snap.Symbols["_end"]}},
		Memory:   mem,
		ReadCode: m.ReadVirt,
		Sync: &taint.SyncConfig{Begin: lo, End: hi - 1, Func: func(a *taint.Access) {
			if !in(pol.window, a.Phys) {
				return
			}
			s.learn(a.PC, taintMemoDecision(a.Decision), "image-window")
			if a.Decision != taint.Redirect {
				return
			}
			if a.Write {
				m.Stop(fmt.Sprintf("guest-derived write into the image window at %#x by %#x: the guest's copy there is read-only", a.Phys, a.PC))
				return
			}
			if err := m.SwapInGuest(a.Phys, a.Size); err != nil {
				m.Stop(err.Error())
			}
		}},
	})
	if err := tr.Attach(m.Engine()); err != nil {
		return nil, err
	}
	return tr, nil
}
