package bridge

import (
	"errors"
	"path"
	"strings"

	"hybridbridge/svm"
)

// ErrProgramOnKVM: a program's user mode runs on Unicorn only (the SYSCALL and exception
// delivery at CPL 3 are done in Unicorn's hooks).
var ErrProgramOnKVM = errors.New("programs run on Unicorn's Fast-Bridge only, not on KVM (use --fast-engine unicorn or --mode slow)")

// RunProgram runs an unmodified program in the SVM against the guest, as one operation of the
// session's engines: on Fast-Bridge with the memo, and, in auto mode, again whole under
// Slow-Bridge if Fast-Bridge met an access the memo could not decide (the paper's fall-back).
// Its /proc is the guest's procfs, with /proc/self and the links through it (/proc/net,
// /proc/mounts) the guest's init's, as the views read them (programPath). The program's own exit
// status is in the run; an error is the run's failure (it forked, slept, faulted, ran past its
// budget, or a miss in fast mode). The view name the memo counts it under is "run <name>".
func (s *Session) RunProgram(p svm.Program, name string) (*svm.ProgramRun, error) {
	if s.onKVM && s.mode != ModeSlow {
		return nil, ErrProgramOnKVM
	}
	p.Paths = programPath
	view := s.View
	s.View = "run " + name
	defer func() { s.View = view }()
	var run *svm.ProgramRun
	err := s.do(func(m *svm.Machine) (err error) {
		run, err = m.RunProgram(p)
		return err
	})
	return run, err
}

// programPath is the path a program's lookup walks instead of p (absolute and clean), or "" for
// p itself: under /proc, the views' procfs with their reading of /proc/self.
func programPath(p string) string {
	if p != "/proc" && !strings.HasPrefix(p, "/proc/") {
		return ""
	}
	return path.Clean(procPath(p))
}

// ProgramName is the name a program run is shown under: the busybox applet, or the executable's
// base name.
func ProgramName(argv []string) string {
	if len(argv) == 0 {
		return "?"
	}
	base := path.Base(argv[0])
	if base == "busybox" && len(argv) > 1 {
		return argv[1]
	}
	return base
}
