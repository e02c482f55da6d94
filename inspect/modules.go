package inspect

import (
	"fmt"
	"strconv"
	"strings"
)

// Module is one row of lsmod, from /proc/modules.
type Module struct {
	Name  string   `json:"name"`
	Size  uint64   `json:"size"`  // bytes of the module's core image
	Refs  int      `json:"refs"`  // use count; -1 when the kernel cannot unload it
	Users []string `json:"users"` // modules that depend on this one
	State string   `json:"state"` // Live, Loading or Unloading
	Addr  uint64   `json:"addr"`  // load address as printed (zero when the reader may not see it)
	Taint string   `json:"taint,omitempty"`
}

// ListModules reads /proc/modules.
func ListModules(f Files) ([]Module, error) {
	data, err := f.ReadFile("/proc/modules")
	if err != nil {
		return nil, fmt.Errorf("read /proc/modules: %w", err)
	}
	return ParseModules(data)
}

// ParseModules parses /proc/modules: "name size refs users, state addr [(taint)]" per line,
// users being "-" or a comma-terminated list (m_show in kernel/module/procfs.c).
func ParseModules(data []byte) ([]Module, error) {
	out := []Module{}
	for i, line := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 6 {
			return nil, fmt.Errorf("/proc/modules line %d: %d fields in %q", i+1, len(f), line)
		}
		m := Module{Name: f[0], State: f[4], Users: []string{}}
		var err error
		if m.Size, err = strconv.ParseUint(f[1], 10, 64); err != nil {
			return nil, fmt.Errorf("/proc/modules line %d: size %q", i+1, f[1])
		}
		if m.Refs, err = strconv.Atoi(f[2]); err != nil {
			return nil, fmt.Errorf("/proc/modules line %d: use count %q", i+1, f[2])
		}
		if f[3] != "-" {
			for _, u := range strings.Split(strings.TrimSuffix(f[3], ","), ",") {
				m.Users = append(m.Users, u)
			}
		}
		if m.Addr, err = strconv.ParseUint(strings.TrimPrefix(f[5], "0x"), 16, 64); err != nil {
			return nil, fmt.Errorf("/proc/modules line %d: address %q", i+1, f[5])
		}
		if len(f) > 6 {
			m.Taint = strings.Trim(f[6], "()")
		}
		out = append(out, m)
	}
	return out, nil
}
