package inspect

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"syscall"
)

// IsVanished reports whether err means that what was read is gone: a process that exited or a
// descriptor that was closed after it was listed (ENOENT or ESRCH from procfs). It is the only
// failure a walker may skip, and it counts what it skips in Vanished. Anything else — a memo
// miss, a fault, a permission error — fails the view: a shortened list that looks complete would
// mislead more than no list.
func IsVanished(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH)
}

// Vanished counts what a walker left out because it was gone by the time it was read. The guest
// is paused while a view reads it, so these are processes and descriptors caught half torn down;
// with ground truth captured in a running guest they are the ones that changed during the capture.
type Vanished struct {
	Processes   int `json:"processes"`   // listed under /proc, gone before their files were read
	Descriptors int `json:"descriptors"` // listed under /proc/<pid>/fd, closed before being read
}

// Add sums two counts, e.g. of the views of one refresh.
func (v Vanished) Add(o Vanished) Vanished {
	return Vanished{Processes: v.Processes + o.Processes, Descriptors: v.Descriptors + o.Descriptors}
}

// Zero reports whether nothing vanished.
func (v Vanished) Zero() bool { return v == Vanished{} }

// String says what vanished, e.g. "2 processes and 1 descriptor vanished while read", or is empty
// when nothing did.
func (v Vanished) String() string {
	var parts []string
	if v.Processes > 0 {
		parts = append(parts, plural(v.Processes, "process", "processes"))
	}
	if v.Descriptors > 0 {
		parts = append(parts, plural(v.Descriptors, "descriptor", "descriptors"))
	}
	if len(parts) == 0 {
		return ""
	}
	return strings.Join(parts, " and ") + " vanished while read"
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
