package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"hybridbridge/bridge"
)

// catCommand prints guest files as the guest's kernel produces them: the building block of every
// view, and the way to see what a view would parse.
func (e *env) catCommand() *cobra.Command {
	var name string
	c := &cobra.Command{
		Use:   "cat PATH...",
		Short: "Print files of a guest as its own kernel code produces them (e.g. /proc/uptime)",
		Long: `Print files of a guest, read from outside: each file is read by system calls injected into the
SVM against the guest's memory (--mode: Fast-Bridge falling back to Slow-Bridge by default). Paths
under /proc are the guest's procfs. The engine's work, including kernel globals not yet classified
(whose SVM copy was used), is summarised on stderr.` + guestsHelp,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out [][]byte
			run, err := e.inspectGuest(cmd.Context(), name, "cat", func(s *bridge.Session) error {
				for _, p := range args {
					data, err := s.ReadFile(p)
					if err != nil {
						return err
					}
					out = append(out, data)
				}
				return nil
			})
			if err != nil {
				return err
			}
			for _, data := range out {
				if _, err := e.stdout.Write(data); err != nil {
					return err
				}
			}
			fmt.Fprintln(e.stderr, run.summary())
			return nil
		},
	}
	c.Flags().StringVar(&name, "guest", "demo", "the guest to read: one hybridbridge started or an attached VM")
	return c
}
