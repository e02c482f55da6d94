package inspect

import (
	"errors"
	"fmt"
	"slices"
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
	u, err := parseUptime(data)
	if err != nil {
		return Uptime{}, fmt.Errorf("parse /proc/uptime: %w", err)
	}
	return u, nil
}

// parseUptime reads "seconds idle\n".
func parseUptime(data []byte) (Uptime, error) {
	f, err := lineFields(data, 2)
	if err != nil {
		return Uptime{}, err
	}
	var u Uptime
	if u.Seconds, err = strconv.ParseFloat(f[0], 64); err != nil {
		return Uptime{}, fmt.Errorf("seconds %q", f[0])
	}
	if u.IdleSeconds, err = strconv.ParseFloat(f[1], 64); err != nil {
		return Uptime{}, fmt.Errorf("idle seconds %q", f[1])
	}
	return u, nil
}

// lineFields splits a one-line file into exactly n fields. The kernel ends it with a newline:
// without one, the file was cut short.
func lineFields(data []byte, n int) ([]string, error) {
	s, ok := strings.CutSuffix(string(data), "\n")
	if !ok || strings.Contains(s, "\n") {
		return nil, fmt.Errorf("not one line: %.80q", data)
	}
	f := strings.Fields(s)
	if len(f) != n {
		return nil, fmt.Errorf("%d fields, want %d: %.80q", len(f), n, s)
	}
	return f, nil
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
	l, err := parseLoadAvg(data)
	if err != nil {
		return LoadAvg{}, fmt.Errorf("parse /proc/loadavg: %w", err)
	}
	return l, nil
}

// parseLoadAvg reads "load1 load5 load15 running/total lastpid\n".
func parseLoadAvg(data []byte) (LoadAvg, error) {
	f, err := lineFields(data, 5)
	if err != nil {
		return LoadAvg{}, err
	}
	var l LoadAvg
	for i, dst := range []*float64{&l.Load1, &l.Load5, &l.Load15} {
		if *dst, err = strconv.ParseFloat(f[i], 64); err != nil {
			return LoadAvg{}, fmt.Errorf("load %q", f[i])
		}
	}
	run, total, ok := strings.Cut(f[3], "/")
	if !ok {
		return LoadAvg{}, fmt.Errorf("running/total %q", f[3])
	}
	var err1, err2, err3 error
	l.Running, err1 = strconv.Atoi(run)
	l.Threads, err2 = strconv.Atoi(total)
	l.LastPID, err3 = strconv.Atoi(f[4])
	if err := errors.Join(err1, err2, err3); err != nil {
		return LoadAvg{}, fmt.Errorf("%q: %w", f[3]+" "+f[4], err)
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
		v, ok := strings.CutSuffix(string(data), "\n")
		if !ok {
			return Uname{}, fmt.Errorf("/proc/sys/kernel/%s: no final newline: %.80q", name, data)
		}
		vals[i] = v
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
	text, ok := strings.CutSuffix(string(data), "\n")
	if !ok {
		return nil, errors.New("/proc/meminfo: no final newline")
	}
	var out []MemField
	for i, line := range strings.Split(text, "\n") {
		name, rest, ok := strings.Cut(line, ":")
		f := strings.Fields(rest)
		if !ok || name == "" || len(f) == 0 || len(f) > 2 || (len(f) == 2 && f[1] != "kB") {
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
	m, err := parseMounts(data)
	if err != nil {
		return nil, fmt.Errorf("parse /proc/mounts: %w", err)
	}
	return m, nil
}

// parseMounts reads "device point type options 0 0" lines; device and point are escaped.
func parseMounts(data []byte) ([]Mount, error) {
	text, ok := strings.CutSuffix(string(data), "\n")
	if !ok {
		return nil, errors.New("no final newline")
	}
	var out []Mount
	for i, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) != 6 {
			return nil, fmt.Errorf("line %d: %q", i+1, line)
		}
		dev, err1 := unescapeOctal(f[0])
		point, err2 := unescapeOctal(f[1])
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		out = append(out, Mount{dev, point, f[2], f[3]})
	}
	return out, nil
}

// unescapeOctal undoes the \ooo escapes /proc/mounts uses for spaces, tabs, newlines, '#' and
// backslashes. The kernel escapes every backslash, so one not starting an escape means the line
// is not what the kernel printed.
func unescapeOctal(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i+4 > len(s) {
			return "", fmt.Errorf("escape at the end of %q", s)
		}
		v, err := strconv.ParseUint(s[i+1:i+4], 8, 8)
		if err != nil {
			return "", fmt.Errorf("escape %q in %q", s[i:i+4], s)
		}
		b.WriteByte(byte(v))
		i += 3
	}
	return b.String(), nil
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
// out and counted in Vanished; any other failure, including the process itself not existing,
// fails the list.
func ListOpenFiles(f Files, l Links, pid int) ([]OpenFile, Vanished, error) {
	var gone Vanished
	dir := "/proc/" + strconv.Itoa(pid)
	names, err := f.ReadDir(dir + "/fd")
	if err != nil {
		return nil, gone, fmt.Errorf("list %s/fd: %w", dir, err)
	}
	var out []OpenFile
	for _, n := range names {
		fd, err := strconv.Atoi(n)
		if err != nil || fd < 0 {
			return nil, gone, fmt.Errorf("%s/fd: entry %q is not a descriptor", dir, n)
		}
		target, err := l.ReadLink(dir + "/fd/" + n)
		if IsVanished(err) {
			gone.Descriptors++
			continue
		}
		if err != nil {
			return nil, gone, fmt.Errorf("read link %s/fd/%s: %w", dir, n, err)
		}
		info, err := f.ReadFile(dir + "/fdinfo/" + n)
		if IsVanished(err) {
			gone.Descriptors++
			continue
		}
		if err != nil {
			return nil, gone, fmt.Errorf("read %s/fdinfo/%s: %w", dir, n, err)
		}
		o := OpenFile{FD: fd, Target: target}
		if o.Pos, o.Flags, err = parseFdinfo(info); err != nil {
			return nil, gone, fmt.Errorf("parse %s/fdinfo/%s: %w", dir, n, err)
		}
		out = append(out, o)
	}
	slices.SortFunc(out, func(a, b OpenFile) int { return a.FD - b.FD })
	return out, gone, nil
}

// parseFdinfo reads the pos and flags lines every fdinfo starts with (seq_show in fs/proc/fd.c);
// the lines after them depend on the kind of file and are left out.
func parseFdinfo(data []byte) (pos uint64, flags string, err error) {
	text, ok := strings.CutSuffix(string(data), "\n")
	if !ok {
		return 0, "", errors.New("no final newline")
	}
	var seenPos, seenFlags bool
	for _, line := range strings.Split(text, "\n") {
		k, v, _ := strings.Cut(line, ":")
		v = strings.TrimSpace(v)
		switch k {
		case "pos":
			if pos, err = strconv.ParseUint(v, 10, 64); err != nil {
				return 0, "", fmt.Errorf("pos %q", v)
			}
			seenPos = true
		case "flags":
			if _, err := strconv.ParseUint(v, 8, 32); err != nil || !strings.HasPrefix(v, "0") {
				return 0, "", fmt.Errorf("flags %q", v)
			}
			flags, seenFlags = v, true
		}
	}
	if !seenPos || !seenFlags {
		return 0, "", fmt.Errorf("no pos or flags line in %.80q", text)
	}
	return pos, flags, nil
}

// ReadEnviron reads a process's environment (/proc/<pid>/environ), one NAME=value per entry. Its
// stat says how long the environment is, so one cut short (a page of the process's memory that
// could not be read) fails instead of showing fewer variables.
func ReadEnviron(f Files, pid int) ([]string, error) {
	dir := "/proc/" + strconv.Itoa(pid)
	stat, err := f.ReadFile(dir + "/stat")
	if err != nil {
		return nil, fmt.Errorf("read %s/stat: %w", dir, err)
	}
	p := Process{PID: pid}
	if err := p.parseStat(stat); err != nil {
		return nil, fmt.Errorf("parse %s/stat: %w", dir, err)
	}
	data, err := f.ReadFile(dir + "/environ")
	if err != nil {
		return nil, fmt.Errorf("read %s/environ: %w", dir, err)
	}
	if err := checkArea(data, p.envLen); err != nil {
		return nil, fmt.Errorf("%s/environ: %w", dir, err)
	}
	out := splitCmdline(data)
	if out == nil {
		out = []string{}
	}
	return out, nil
}
