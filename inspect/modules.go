package inspect

import (
	"errors"
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
	if len(data) == 0 {
		return out, nil // no module loaded
	}
	text, ok := strings.CutSuffix(string(data), "\n")
	if !ok {
		return nil, errors.New("/proc/modules: no final newline")
	}
	for i, line := range strings.Split(text, "\n") {
		m, err := parseModule(line)
		if err != nil {
			return nil, fmt.Errorf("/proc/modules line %d: %w", i+1, err)
		}
		out = append(out, m)
	}
	return out, nil
}

func parseModule(line string) (Module, error) {
	f := strings.Fields(line)
	if len(f) != 6 && len(f) != 7 {
		return Module{}, fmt.Errorf("%d fields in %q", len(f), line)
	}
	m := Module{Name: f[0], State: f[4], Users: []string{}}
	var err error
	if m.Size, err = strconv.ParseUint(f[1], 10, 64); err != nil {
		return Module{}, fmt.Errorf("size %q", f[1])
	}
	if m.Refs, err = strconv.Atoi(f[2]); err != nil {
		return Module{}, fmt.Errorf("use count %q", f[2])
	}
	if f[3] != "-" {
		users, ok := strings.CutSuffix(f[3], ",")
		if !ok {
			return Module{}, fmt.Errorf("users %q", f[3])
		}
		m.Users = strings.Split(users, ",")
	}
	addr, ok := strings.CutPrefix(f[5], "0x")
	if m.Addr, err = strconv.ParseUint(addr, 16, 64); err != nil || !ok {
		return Module{}, fmt.Errorf("address %q", f[5])
	}
	if len(f) == 7 {
		t := f[6]
		if len(t) < 3 || t[0] != '(' || t[len(t)-1] != ')' {
			return Module{}, fmt.Errorf("taint %q", t)
		}
		m.Taint = t[1 : len(t)-1]
	}
	return m, nil
}
