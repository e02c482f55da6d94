package inspect

import (
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
)

// GuestFiles reads files of the guest's own file system (not /proc), only if they are wholly in
// its memory: a file not in its page cache would need the disk, and the error then wraps
// ErrNotInMemory.
type GuestFiles interface {
	ReadGuestFile(path string) ([]byte, error)
}

// ErrNotInMemory is what a GuestFiles error wraps when the file is not in the guest's memory.
var ErrNotInMemory = errors.New("not in memory")

// parsePasswd maps uids to names from a passwd file as getpwuid finds them: the first entry of a
// uid wins. Lines that are not "name:password:uid:gid:gecos:home:shell" with a numeric uid are
// skipped, as the C library skips them (NIS "+" and "-" entries among them).
func parsePasswd(data []byte) map[int]string {
	out := map[int]string{}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Split(line, ":")
		if len(f) != 7 || f[0] == "" || strings.ContainsAny(f[0][:1], "+-") {
			continue
		}
		uid, err := strconv.Atoi(f[2])
		if err != nil || uid < 0 {
			continue
		}
		if _, ok := out[uid]; !ok {
			out[uid] = f[0]
		}
	}
	return out
}

// nameUsers fills in each process's user name from the guest's /etc/passwd, when r reads guest
// files and that file is in the guest's memory; otherwise, or for a uid it does not list, the
// name stays empty and the uid is shown. A failure other than the file being absent or not in
// memory fails the view.
func nameUsers(r Reader, procs []Process) error {
	g, ok := r.(GuestFiles)
	if !ok {
		return nil
	}
	data, err := g.ReadGuestFile("/etc/passwd")
	if errors.Is(err, ErrNotInMemory) || errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("the guest's /etc/passwd: %w", err)
	}
	names := parsePasswd(data)
	for i := range procs {
		procs[i].User = names[procs[i].UID]
	}
	return nil
}
