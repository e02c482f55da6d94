package inspect

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Uptime is the guest's /proc/uptime: seconds since boot, and idle seconds summed over CPUs.
type Uptime struct {
	Seconds     float64 `json:"seconds"`
	IdleSeconds float64 `json:"idle_seconds"`
}

// ReadUptime reads /proc/uptime.
func ReadUptime(f Files) (Uptime, error) {
	data, err := f.ReadFile("/proc/uptime")
	if err != nil {
		return Uptime{}, fmt.Errorf("read /proc/uptime: %w", err)
	}
	var u Uptime
	if n, err := fmt.Sscanf(string(data), "%g %g", &u.Seconds, &u.IdleSeconds); n != 2 {
		return Uptime{}, fmt.Errorf("/proc/uptime %q: %v", data, err)
	}
	return u, nil
}

// LoadAvg is /proc/loadavg: load averages, runnable and total scheduling entities, last pid.
type LoadAvg struct {
	Load1   float64 `json:"load1"`
	Load5   float64 `json:"load5"`
	Load15  float64 `json:"load15"`
	Running int     `json:"running"`
	Threads int     `json:"threads"`
	LastPID int     `json:"last_pid"`
}

// ReadLoadAvg reads /proc/loadavg.
func ReadLoadAvg(f Files) (LoadAvg, error) {
	data, err := f.ReadFile("/proc/loadavg")
	if err != nil {
		return LoadAvg{}, fmt.Errorf("read /proc/loadavg: %w", err)
	}
	var l LoadAvg
	n, err := fmt.Sscanf(string(data), "%g %g %g %d/%d %d", &l.Load1, &l.Load5, &l.Load15, &l.Running, &l.Threads, &l.LastPID)
	if n != 6 {
		return LoadAvg{}, fmt.Errorf("/proc/loadavg %q: %v", data, err)
	}
	return l, nil
}

// Uname is what uname(1) prints, from the kernel's /proc/sys/kernel entries (the UTS namespace
// of the guest's init).
type Uname struct {
	Sysname    string `json:"sysname"`
	Nodename   string `json:"nodename"`
	Release    string `json:"release"`
	Version    string `json:"version"`
	Machine    string `json:"machine"`
	Domainname string `json:"domainname"`
}

// UnameFiles are the files ReadUname reads, in the order of Uname's fields.
var UnameFiles = []string{"ostype", "hostname", "osrelease", "version", "arch", "domainname"}

// ReadUname reads /proc/sys/kernel/{ostype,hostname,osrelease,version,arch,domainname}.
func ReadUname(f Files) (Uname, error) {
	var vals [6]string
	for i, name := range UnameFiles {
		data, err := f.ReadFile("/proc/sys/kernel/" + name)
		if err != nil {
			return Uname{}, fmt.Errorf("read /proc/sys/kernel/%s: %w", name, err)
		}
		vals[i] = strings.TrimSuffix(string(data), "\n")
	}
	return Uname{vals[0], vals[1], vals[2], vals[3], vals[4], vals[5]}, nil
}

// MemField is one /proc/meminfo line: a name and an amount in KiB (or a count, without Unit).
type MemField struct {
	Name  string `json:"name"`
	Value uint64 `json:"value"`
	Unit  string `json:"unit,omitempty"` // "kB" or empty for counts (HugePages_*)
}

// ReadMeminfo reads /proc/meminfo, in the kernel's order.
func ReadMeminfo(f Files) ([]MemField, error) {
	data, err := f.ReadFile("/proc/meminfo")
	if err != nil {
		return nil, fmt.Errorf("read /proc/meminfo: %w", err)
	}
	return ParseMeminfo(data)
}

// ParseMeminfo parses "Name:   value [kB]" lines.
func ParseMeminfo(data []byte) ([]MemField, error) {
	var out []MemField
	for i, line := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		name, rest, ok := strings.Cut(line, ":")
		f := strings.Fields(rest)
		if !ok || len(f) == 0 || len(f) > 2 {
			return nil, fmt.Errorf("/proc/meminfo line %d: %q", i+1, line)
		}
		v, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("/proc/meminfo line %d: %q", i+1, line)
		}
		m := MemField{Name: name, Value: v}
		if len(f) == 2 {
			m.Unit = f[1]
		}
		out = append(out, m)
	}
	if len(out) == 0 {
		return nil, errors.New("/proc/meminfo is empty")
	}
	return out, nil
}

// Mount is one /proc/mounts line (of the guest's init's mount namespace).
type Mount struct {
	Device  string `json:"device"`
	Point   string `json:"point"`
	Type    string `json:"type"`
	Options string `json:"options"`
}

// ReadMounts reads /proc/mounts.
func ReadMounts(f Files) ([]Mount, error) {
	data, err := f.ReadFile("/proc/mounts")
	if err != nil {
		return nil, fmt.Errorf("read /proc/mounts: %w", err)
	}
	var out []Mount
	for i, line := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		f := strings.Fields(line)
		if len(f) != 6 {
			return nil, fmt.Errorf("/proc/mounts line %d: %q", i+1, line)
		}
		out = append(out, Mount{unescapeOctal(f[0]), unescapeOctal(f[1]), f[2], f[3]})
	}
	return out, nil
}

// unescapeOctal undoes the \ooo escapes /proc/mounts uses for spaces, tabs, newlines and
// backslashes.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// OpenFile is one open descriptor of a process (lsof -p): what it refers to, its position and
// open flags (from /proc/<pid>/fdinfo).
type OpenFile struct {
	FD     int    `json:"fd"`
	Target string `json:"target"`
	Pos    uint64 `json:"pos"`
	Flags  string `json:"flags"` // octal, as fdinfo prints it
}

// ListOpenFiles reads /proc/<pid>/fd and fdinfo. A descriptor closed while being read is left
// out; one whose fdinfo cannot be read keeps a zero position and empty flags.
func ListOpenFiles(f Files, l Links, pid int) ([]OpenFile, error) {
	dir := "/proc/" + strconv.Itoa(pid)
	names, err := f.ReadDir(dir + "/fd")
	if err != nil {
		return nil, fmt.Errorf("list %s/fd: %w", dir, err)
	}
	var out []OpenFile
	for _, n := range names {
		fd, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		target, err := l.ReadLink(dir + "/fd/" + n)
		if err != nil {
			continue
		}
		o := OpenFile{FD: fd, Target: target}
		if info, err := f.ReadFile(dir + "/fdinfo/" + n); err == nil {
			for _, line := range strings.Split(string(info), "\n") {
				k, v, _ := strings.Cut(line, ":")
				v = strings.TrimSpace(v)
				switch k {
				case "pos":
					o.Pos, _ = strconv.ParseUint(v, 10, 64)
				case "flags":
					o.Flags = v
				}
			}
		}
		out = append(out, o)
	}
	sortOpenFiles(out)
	return out, nil
}

func sortOpenFiles(s []OpenFile) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j].FD < s[j-1].FD; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// ReadEnviron reads a process's environment (/proc/<pid>/environ), one NAME=value per entry.
func ReadEnviron(f Files, pid int) ([]string, error) {
	data, err := f.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return nil, fmt.Errorf("read /proc/%d/environ: %w", pid, err)
	}
	out := splitCmdline(data)
	if out == nil {
		out = []string{}
	}
	return out, nil
}
