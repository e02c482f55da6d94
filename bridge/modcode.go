package bridge

import (
	"fmt"

	"hybridbridge/svm"
	"hybridbridge/vmm"
)

// codePage is guest module code the SVM cannot run: an executable page of the module area whose
// frame lies in the kernel image's physical range, memory the guest's kernel freed from its image
// and reused, where the SVM's own image is. The SVM keeps the pages a kernel frees unused and
// overlays the guest's there (svm.Snapshot.KeptImage), so this is code in what the SVM did not
// keep: the brk the guest left unused and the SVM's early page tables took. Data accesses there
// are decided per access, but the emulator fetches instructions without asking, so it would run
// the SVM's bytes as the guest's code.
type codePage struct {
	va, pa, size uint64
}

// codeInImage lists the executable mappings among maps (the guest's module area) whose frames
// lie in [kstart, kend), apart from those wholly inside kept.
func codeInImage(maps []vmm.Mapping, kstart, kend uint64, kept []svm.PhysSpan) []codePage {
	var out []codePage
	for _, m := range maps {
		if m.Flags&vmm.FlagExec == 0 || m.PA >= kend || m.PA+m.Size <= kstart || inOneSpan(kept, m.PA, m.PA+m.Size) {
			continue
		}
		out = append(out, codePage{va: m.VA, pa: m.PA, size: m.Size})
	}
	return out
}

// inOneSpan reports whether [start, end) lies inside one of spans.
func inOneSpan(spans []svm.PhysSpan, start, end uint64) bool {
	for _, s := range spans {
		if start >= s.Start && end <= s.End {
			return true
		}
	}
	return false
}

// moduleCodeInImage walks the guest's module area for codeInImage.
func moduleCodeInImage(w *vmm.Walker, snap *svm.Snapshot) ([]codePage, error) {
	var maps []vmm.Mapping
	err := w.Mappings(modulesStart, modulesEnd-1, func(m vmm.Mapping) error {
		maps = append(maps, m)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("guest module area: %w", err)
	}
	return codeInImage(maps, snap.Layout.KernelStart, snap.Layout.KernelEnd, snap.KeptImage), nil
}

// guardModuleCode stops a call that reaches such code, in one clear line, before it runs a single
// instruction there. On KVM nothing can watch instruction fetches, so a guest with such code is
// refused there.
func (s *Session) guardModuleCode(m *svm.Machine) error {
	if len(s.foreignCode) == 0 {
		return nil
	}
	e := m.Engine()
	if e == nil {
		c := s.foreignCode[0]
		return fmt.Errorf("the guest's module code at %#x lies in memory its kernel freed from its image (physical %#x) and the SVM uses, which it cannot run on KVM; use --fast-engine unicorn",
			c.va, c.pa)
	}
	for _, c := range s.foreignCode {
		_, err := e.HookCode(c.va, c.va+c.size-1, func(pc uint64, _ uint32) {
			m.Stop(fmt.Sprintf("the guest's module code at %#x lies in memory its kernel freed from its image (physical %#x), which the SVM uses itself: it cannot run in the SVM",
				pc, c.pa+pc-c.va))
		})
		if err != nil {
			return fmt.Errorf("guard the guest's module code at %#x: %w", c.va, err)
		}
	}
	return nil
}
