package bridge

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"

	"hybridbridge/inspect"
	"hybridbridge/svm"
)

// ErrProgramOnKVM: a program's user mode runs on Unicorn only (the SYSCALL and exception
// delivery at CPL 3 are done in Unicorn's hooks).
var ErrProgramOnKVM = errors.New("programs run on Unicorn's Fast-Bridge only, not on KVM (use --fast-engine unicorn or --mode slow)")

// ProgramRun is a program's run against the guest.
type ProgramRun struct {
	*svm.ProgramRun
	// Unserved are the guest's files (of guestNameFiles) the program found absent because they
	// are not in the guest's memory, so it shows the ids they would name as numbers.
	Unserved []string
}

// guestNameFiles are the files outside /proc that programs name users and groups by (ps's USER,
// ls -l, id). The SVM's image has its own, which may name the same id differently, so a program
// gets the guest's: read from its page cache before the run and written into the SVM's tmpfs, or,
// where the guest has none in memory, none at all.
var guestNameFiles = []string{"/etc/passwd", "/etc/group"}

// RunProgram runs an unmodified program in the SVM against the guest, as one operation of the
// session's engines: on Fast-Bridge with the memo, and, in auto mode, again whole under
// Slow-Bridge if Fast-Bridge met an access the memo could not decide (the paper's fall-back).
// Its /proc is the guest's procfs, with /proc/self and the links through it (/proc/net,
// /proc/mounts) the guest's init's, as the views read them (programPath), and its /etc/passwd
// and /etc/group are the guest's (guestNameFiles). The program's own exit status is in the run;
// an error is the run's failure (it forked, slept, faulted, ran past its budget, or a miss in
// fast mode). The view name the memo counts it under is "run <name>".
func (s *Session) RunProgram(p svm.Program, name string) (*ProgramRun, error) {
	if s.onKVM && s.mode != ModeSlow {
		return nil, ErrProgramOnKVM
	}
	res := &ProgramRun{}
	served := map[string]string{}
	for _, f := range guestNameFiles {
		data, err := s.ReadGuestFile(f)
		at := "/tmp/.guest" + strings.ReplaceAll(f, "/", "-")
		switch {
		case errors.Is(err, inspect.ErrNotInMemory):
			res.Unserved = append(res.Unserved, f)
		case errors.Is(err, fs.ErrNotExist):
			// Not written either: the program finds none, as in the guest.
		case err != nil:
			return nil, fmt.Errorf("the guest's %s: %w", f, err)
		default:
			p.Files = append(p.Files, svm.File{Path: at, Data: data, Mode: 0o644})
		}
		served[f] = at
	}
	p.Paths = func(q string) string {
		if at, ok := served[q]; ok {
			return at
		}
		return programPath(q)
	}
	view := s.View
	s.View = "run " + name
	defer func() { s.View = view }()
	err := s.do(func(m *svm.Machine) (err error) {
		res.ProgramRun, err = m.RunProgram(p)
		return err
	})
	if res.ProgramRun == nil {
		return nil, err
	}
	return res, err
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
