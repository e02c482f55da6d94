package atomicfile

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// entries lists the names in dir.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestWriteReplaces(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := os.WriteFile(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteBytes(path, []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil || string(got) != "new" {
		t.Fatalf("content %q, %v; want %q", got, err, "new")
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", fi.Mode().Perm())
	}
	if names := entries(t, dir); !slices.Equal(names, []string{"f"}) {
		t.Errorf("directory holds %v, want only f", names)
	}
}

// TestFailedWriteKeepsOld: whatever step fails, the old file is intact and no temporary file is
// left beside it.
func TestFailedWriteKeepsOld(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	check := func(t *testing.T) {
		t.Helper()
		if got, err := os.ReadFile(path); err != nil || string(got) != "old" {
			t.Errorf("old file now %q, %v", got, err)
		}
		if names := entries(t, dir); !slices.Equal(names, []string{"f"}) {
			t.Errorf("directory holds %v, want only f", names)
		}
	}

	t.Run("write fails half way", func(t *testing.T) {
		err := Write(path, 0o644, func(w io.Writer) error {
			io.WriteString(w, "partial")
			return errors.New("disk full")
		})
		if err == nil || !strings.Contains(err.Error(), "disk full") {
			t.Errorf("err = %v, want the writer's error", err)
		}
		check(t)
	})
	t.Run("rename fails", func(t *testing.T) {
		// A non-empty directory in the way makes the rename fail even for root, after the
		// temporary file was written in full.
		block := filepath.Join(dir, "blocked")
		if err := os.MkdirAll(filepath.Join(block, "x"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := WriteBytes(block, []byte("new"), 0o644); err == nil {
			t.Error("write over a directory succeeded")
		}
		if err := os.RemoveAll(block); err != nil {
			t.Fatal(err)
		}
		check(t)
	})
	t.Run("directory missing", func(t *testing.T) {
		err := WriteBytes(filepath.Join(dir, "nope", "f"), []byte("new"), 0o644)
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("err = %v, want fs.ErrNotExist", err)
		}
		check(t)
	})
}
