package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/spf13/cobra"

	"hybridbridge/bridge"
	"hybridbridge/decision"
	"hybridbridge/memo"
	"hybridbridge/vmm"
)

func (e *env) memoCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "memo",
		Short: "Show or clear the training memo (the per-instruction decisions views learned)",
	}
	c.AddCommand(e.memoStats(), e.memoShow(), e.memoClear())
	return c
}

// memoPath resolves the memo file of the kernel build kernelID: --memo, else $HYBRIDBRIDGE_MEMO,
// else the cache's file for that build. Every command that loads, saves or clears the memo asks it.
// Precondition: e.cacheDir is set (e.assets has run).
func (e *env) memoPath(kernelID string) string {
	if p := e.memoNamed(); p != "" {
		return p
	}
	return bridge.MemoPath(e.cacheDir, kernelID)
}

// memoNamed is the memo file the user named (--memo, $HYBRIDBRIDGE_MEMO), or "".
func (e *env) memoNamed() string {
	if e.memoFlag != "" {
		return e.memoFlag
	}
	return os.Getenv("HYBRIDBRIDGE_MEMO")
}

// memoFile is the memo of the current kernel build, and its symbols when cached. A memo the user
// named is shown even without the cache (then without symbols).
func (e *env) memoFile() (string, *vmm.Symbols, error) {
	a, err := e.assets()
	var id string
	if err == nil {
		id, err = a.KernelID()
	}
	if err != nil {
		if p := e.memoNamed(); p != "" {
			return p, nil, nil
		}
		return "", nil, err
	}
	// Symbols only name the instructions; without the cached file (no guest of this build was
	// read yet) they are shown as addresses. A file that is there but unreadable is an error.
	syms, err := vmm.LoadSymbols(e.cacheDir + "/symbols/" + id + ".kallsyms")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", nil, err
	}
	return e.memoPath(id), syms, nil
}

// saveMemo merges m into the memo file at path, where other runs may have saved since m was
// loaded, and returns what the user must be told: that a file which could not be merged with was
// replaced.
func saveMemo(m *memo.Memo, path string) (note string, err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", fmt.Errorf("save memo: %w", err)
	}
	res, err := m.Save(path)
	if err != nil {
		return "", fmt.Errorf("save memo: %w", err)
	}
	if res.Replaced != nil {
		return fmt.Sprintf("memo rebuilt: the file could not be merged with and was replaced: %v", res.Replaced), nil
	}
	return "", nil
}

func (e *env) loadMemo() (*memo.Memo, *vmm.Symbols, error) {
	path, syms, err := e.memoFile()
	if err != nil {
		return nil, nil, err
	}
	m, err := memo.LoadAny(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("no memo yet at %s (run a view, e.g. hybridbridge ps)", path)
	}
	if err != nil {
		return nil, nil, err
	}
	return m, syms, nil
}

func (e *env) memoStats() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "stats",
		Short: "Memo size, decisions, hits and misses per view and system call",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, _, err := e.loadMemo()
			if err != nil {
				return err
			}
			st := m.Stats()
			if asJSON {
				return writeJSON(e.stdout, st)
			}
			fmt.Fprintf(e.stdout, "policy now: %s\n", bridge.PolicyVersion())
			fmt.Fprint(e.stdout, memo.FormatStats(st))
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return c
}

func (e *env) memoShow() *cobra.Command {
	var asJSON bool
	var limit int
	var only string
	c := &cobra.Command{
		Use:   "show",
		Short: "List memoized instructions: symbol+offset, disassembly, decision, region, counts",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, syms, err := e.loadMemo()
			if err != nil {
				return err
			}
			entries := m.Entries()
			if only != "" {
				want, err := decision.Parse(only)
				if err != nil {
					return err
				}
				kept := entries[:0]
				for _, en := range entries {
					if en.Decision == want {
						kept = append(kept, en)
					}
				}
				entries = kept
			}
			sort.SliceStable(entries, func(i, j int) bool { return entries[i].Seen > entries[j].Seen })
			if limit > 0 && len(entries) > limit {
				entries = entries[:limit]
			}
			if asJSON {
				if entries == nil {
					entries = []memo.Entry{}
				}
				return writeJSON(e.stdout, entries)
			}
			var symbolize func(uint64) string
			if syms != nil {
				symbolize = syms.Format
			}
			for _, en := range entries {
				fmt.Fprintln(e.stdout, memo.FormatEntry(en, symbolize))
			}
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	c.Flags().IntVar(&limit, "limit", 50, "show the most seen N instructions (0: all)")
	c.Flags().StringVar(&only, "decision", "", "only local, redirect, both or unknown")
	return c
}

func (e *env) memoClear() *cobra.Command {
	return &cobra.Command{
		Use:   "clear",
		Short: "Delete the memo of the current kernel build (views learn again)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path, _, err := e.memoFile()
			if err != nil {
				return err
			}
			// Under the lock saves take, so a view saving meanwhile cannot write it back.
			if err := memo.Remove(path); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "memo cleared (%s)\n", path)
			return nil
		},
	}
}
