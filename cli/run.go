package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"hybridbridge/bridge"
	"hybridbridge/svm"
)

// programEnv is the environment a program starts with: what the guest's tools see when the
// demo's command channel runs them.
var programEnv = []string{"PATH=/sbin:/usr/sbin:/bin:/usr/bin", "HOME=/", "TERM=dumb"}

// unservedNote says that a program found the guest's file f absent because it is not in the
// guest's memory (bridge.ProgramRun.Unserved).
func unservedNote(f string) string {
	return fmt.Sprintf("the guest's %s is not in its memory: the program found none, so it shows the ids that file names as numbers", f)
}

// appletProgram is argv run as a busybox applet of the SVM's image (busybox dispatches on its
// argv[0]); a path names a file, which only --program brings into the SVM.
func appletProgram(argv []string) (svm.Program, error) {
	if len(argv) == 0 {
		return svm.Program{}, errors.New("nothing to run: give a busybox applet and its arguments (e.g. ps)")
	}
	if strings.Contains(argv[0], "/") {
		return svm.Program{}, fmt.Errorf("%s: the first argument is a busybox applet of the SVM's image (e.g. ps), not a file; hybridbridge run --program brings a file of yours", argv[0])
	}
	return svm.Program{Path: "/bin/busybox", Argv: argv, Envp: programEnv}, nil
}

func (e *env) runCommand() *cobra.Command {
	var name, program string
	var budget uint64
	c := &cobra.Command{
		Use:   "run [--guest NAME] [--program FILE] -- ARGS...",
		Short: "Run an unmodified program in the SVM against a guest and print its output",
		Long: `Run an unmodified program in the SVM at user level, its system calls served by the guest
kernel's own code against the guest's memory, and print what it writes; hybridbridge exits with
the program's exit status.

Without --program, ARGS name a busybox applet of the SVM's image and its arguments
(run -- ps, run -- busybox netstat -an). With --program, FILE is your own statically linked
x86-64 executable, copied into the SVM for the run, and ARGS are its arguments.

The program's /proc is the guest's: /proc/self, /proc/net and /proc/mounts are those of the
guest's init (pid 1), as the views read them. Its /etc/passwd and /etc/group are the guest's,
read from the guest's memory before the run (where the guest does not hold one in memory, the
program finds none and prints ids as numbers; stderr says so). Other files are the SVM image's.
A run is one engine operation: on Fast-Bridge with the memo, and in auto mode (--mode), on a
memo miss again from the start under Slow-Bridge, which learns; the summary on stderr says which
ran. A program that forks (a shell running a command), sleeps or waits stops with an error naming
the system call, as does one that runs past --budget.` + guestsHelp,
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			if len(args) == 0 && program == "" {
				return fmt.Errorf("nothing to run: give a busybox applet and its arguments after -- (e.g. hybridbridge run -- ps), or --program FILE")
			}
			var p svm.Program
			if program != "" {
				data, err := os.ReadFile(program)
				if err != nil {
					return err
				}
				if err := svm.CheckStaticX86(program, data); err != nil {
					return err
				}
				base := filepath.Base(program)
				p = svm.Program{Path: "/tmp/" + base, Binary: data, Argv: append([]string{base}, args...), Envp: programEnv}
			} else if p, err = appletProgram(args); err != nil {
				return err
			}
			p.Budget = budget
			if e.fastEngine == executorAuto {
				// A program's user mode runs on Unicorn only (bridge.ErrProgramOnKVM): auto picks
				// it, as the console does; an explicit --fast-engine kvm is refused by the bridge.
				e.fastEngine = executorUnicorn
			}
			progName := bridge.ProgramName(p.Argv)
			var res *bridge.ProgramRun
			run, err := e.inspectGuest(cmd.Context(), name, "run "+progName, func(s *bridge.Session) (err error) {
				res, err = s.RunProgram(p, progName)
				return err
			})
			if err != nil {
				return err
			}
			fmt.Fprintln(e.stderr, run.summary())
			fmt.Fprintf(e.stderr, "%s: %d system calls, %d user page faults, %v in the program's last run\n",
				progName, res.Syscalls, res.Faults, res.Wall.Round(100_000))
			for _, f := range res.Unserved {
				fmt.Fprintln(e.stderr, unservedNote(f))
			}
			if _, err := e.stdout.Write(res.Stdout); err != nil {
				return err
			}
			if _, err := e.stderr.Write(res.Stderr); err != nil {
				return err
			}
			if res.Status != 0 {
				return &ExitError{Status: res.Status}
			}
			return nil
		},
	}
	c.Flags().StringVar(&name, "guest", "demo", "the guest to run the program against: one hybridbridge started or an attached VM")
	c.Flags().StringVar(&program, "program", "", "your own statically linked x86-64 executable to run (default: busybox of the SVM's image)")
	c.Flags().Uint64Var(&budget, "budget", svm.DefaultProgramBudget, "instruction limit of the whole run")
	return c
}
