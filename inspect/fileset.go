package inspect

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
)

// FileSet is a set of files captured at one moment, e.g. inside a guest for ground truth. It
// implements Files: a directory lists the names under it.
type FileSet struct {
	Files map[string][]byte // absolute path -> contents
	Links map[string]string // absolute path -> symbolic link target
	// Self is the pid of the shell that captured the files, which exists only during the capture.
	Self int
}

// ReadDir lists the names directly under dir.
func (s *FileSet) ReadDir(dir string) ([]string, error) {
	prefix := strings.TrimSuffix(dir, "/") + "/"
	seen := map[string]bool{}
	add := func(p string) {
		if rest, ok := strings.CutPrefix(p, prefix); ok {
			name, _, _ := strings.Cut(rest, "/")
			seen[name] = true
		}
	}
	for p := range s.Files {
		add(p)
	}
	for p := range s.Links {
		add(p)
	}
	if len(seen) == 0 {
		return nil, &fs.PathError{Op: "readdir", Path: dir, Err: fs.ErrNotExist}
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, nil
}

// ReadFile returns a captured file.
func (s *FileSet) ReadFile(p string) ([]byte, error) {
	data, ok := s.Files[path.Clean(p)]
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrNotExist}
	}
	return data, nil
}

// ReadLink returns a captured link's target (implements Links).
func (s *FileSet) ReadLink(p string) (string, error) {
	t, ok := s.Links[path.Clean(p)]
	if !ok {
		return "", &fs.PathError{Op: "readlink", Path: p, Err: fs.ErrNotExist}
	}
	return t, nil
}

// CaptureLinksCommand is CaptureCommand that also prints the targets of the symbolic links
// matching linkPatterns, as "L <path> <base64 target>" lines.
func CaptureLinksCommand(patterns, linkPatterns []string) string {
	return CaptureCommand(patterns...) + `; for l in ` + strings.Join(linkPatterns, " ") +
		`; do t=$(readlink "$l") && echo "L $l $(printf %s "$t" | base64 -w 0)"; done 2>/dev/null; true`
}

// CaptureCommand is a shell command that prints the files matching the glob patterns (shell
// globs, expanded once, so the capture is one pass) as "F <path> <base64>" lines after a
// "SELF <pid>" line. Unreadable files are left out.
func CaptureCommand(patterns ...string) string {
	return `echo "SELF $$"; for f in ` + strings.Join(patterns, " ") +
		`; do d=$(base64 -w 0 < "$f" 2>/dev/null) && echo "F $f $d"; done 2>/dev/null; true`
}

// ParseCapture reads CaptureCommand's output.
func ParseCapture(out []byte) (*FileSet, error) {
	s := &FileSet{Files: map[string][]byte{}, Links: map[string]string{}}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 2 && f[0] == "SELF":
			pid, err := strconv.Atoi(f[1])
			if err != nil {
				return nil, fmt.Errorf("capture: bad SELF line %q", sc.Text())
			}
			s.Self = pid
		case len(f) == 3 && f[0] == "L":
			t, err := base64.StdEncoding.DecodeString(f[2])
			if err != nil {
				return nil, fmt.Errorf("capture of link %s: %w", f[1], err)
			}
			s.Links[path.Clean(f[1])] = string(t)
		case len(f) >= 2 && f[0] == "F":
			var data []byte
			if len(f) == 3 {
				var err error
				if data, err = base64.StdEncoding.DecodeString(f[2]); err != nil {
					return nil, fmt.Errorf("capture of %s: %w", f[1], err)
				}
			}
			s.Files[path.Clean(f[1])] = data
		default:
			return nil, fmt.Errorf("capture: unexpected line %.80q", sc.Text())
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if s.Self == 0 {
		return nil, errors.New("capture: no SELF line")
	}
	return s, nil
}
