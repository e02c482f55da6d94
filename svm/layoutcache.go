package svm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// KeepLayouts is how many layout snapshots of one kernel build the cache keeps: each is about
// 84 MB, and every boot of a KASLR guest has a layout of its own.
const KeepLayouts = 8

// MarkUsed records that the snapshot served a command now, for PruneLayouts: the time of its
// metadata file is its last use.
func (s *Snapshot) MarkUsed() error {
	now := time.Now()
	if err := os.Chtimes(filepath.Join(s.dir, metaFile), now, now); err != nil {
		return fmt.Errorf("mark the SVM snapshot used: %w", err)
	}
	return nil
}

// PruneLayouts removes the layout snapshots of a kernel build beyond the keep most recently
// used (MarkUsed), never the one in keepDir, and returns the folders it removed. A folder
// without metadata (a build that was interrupted) counts as the oldest.
func PruneLayouts(cacheDir, kernelID string, keep int, keepDir string) ([]string, error) {
	root := layoutsDir(cacheDir, kernelID)
	entries, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	type used struct {
		dir  string
		last time.Time
	}
	var dirs []used
	for _, e := range entries {
		if !e.IsDir() || e.Name()[0] == '.' { // .build-* folders belong to builds in progress
			continue
		}
		dir := filepath.Join(root, e.Name())
		if dir == filepath.Clean(keepDir) {
			continue
		}
		u := used{dir: dir}
		if st, err := os.Stat(filepath.Join(dir, metaFile)); err == nil {
			u.last = st.ModTime()
		}
		dirs = append(dirs, u)
	}
	others := keep // how many besides keepDir stay
	if keepDir != "" {
		others--
	}
	others = max(others, 0)
	if len(dirs) <= others {
		return nil, nil
	}
	slices.SortFunc(dirs, func(a, b used) int { return b.last.Compare(a.last) })
	var removed []string
	for _, u := range dirs[others:] {
		if err := os.RemoveAll(u.dir); err != nil {
			return removed, fmt.Errorf("remove an old layout snapshot: %w", err)
		}
		removed = append(removed, u.dir)
	}
	return removed, nil
}
