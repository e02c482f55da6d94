package inspect

import (
	"fmt"
	"strconv"
	"strings"
)

// Records is what the kernel-log view needs: a device read one record per read (/dev/kmsg).
type Records interface {
	ReadRecords(path string) ([][]byte, error)
}

// LogLine is one line of the kernel log. A record with several lines gives several LogLines with
// the same sequence number.
type LogLine struct {
	Seq      uint64 `json:"seq"`
	Level    int    `json:"level"`    // 0 emerg .. 7 debug
	Facility int    `json:"facility"` // 0 kernel
	Micros   uint64 `json:"usec"`     // since boot
	Text     string `json:"text"`
}

// ReadKernelLog reads /dev/kmsg: "prio,seq,usec,flags[,...];text" records, text escaped as \xNN,
// followed by " KEY=value" dictionary lines, which are left out.
func ReadKernelLog(r Records) ([]LogLine, error) {
	recs, err := r.ReadRecords("/dev/kmsg")
	if err != nil {
		return nil, fmt.Errorf("read /dev/kmsg: %w", err)
	}
	out := []LogLine{}
	for _, rec := range recs {
		lines, err := parseKmsg(rec)
		if err != nil {
			return nil, fmt.Errorf("/dev/kmsg: %w", err)
		}
		out = append(out, lines...)
	}
	return out, nil
}

// parseKmsg reads one /dev/kmsg record (devkmsg_read in kernel/printk/printk.c). Every record
// ends with a newline; one without it was cut short.
func parseKmsg(rec []byte) ([]LogLine, error) {
	head, body, ok := strings.Cut(string(rec), ";")
	f := strings.Split(head, ",")
	if !ok || len(f) < 4 || !strings.HasSuffix(body, "\n") {
		return nil, fmt.Errorf("record %.80q", rec)
	}
	var v [3]uint64
	for i := range v {
		var err error
		if v[i], err = strconv.ParseUint(f[i], 10, 64); err != nil {
			return nil, fmt.Errorf("record %.80q: field %d", rec, i+1)
		}
	}
	text, _, _ := strings.Cut(body, "\n")
	text, err := unescapeHex(text)
	if err != nil {
		return nil, fmt.Errorf("record %d: %w", v[1], err)
	}
	var out []LogLine
	for _, line := range strings.Split(text, "\n") {
		out = append(out, LogLine{Seq: v[1], Level: int(v[0] & 7), Facility: int(v[0] >> 3), Micros: v[2], Text: line})
	}
	return out, nil
}

// unescapeHex undoes /dev/kmsg's \xNN escapes. The kernel escapes every backslash, so one that
// starts no escape means the text is not what the kernel printed.
func unescapeHex(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i+4 > len(s) || s[i+1] != 'x' {
			return "", fmt.Errorf("bad escape at %d in %.80q", i, s)
		}
		v, err := strconv.ParseUint(s[i+2:i+4], 16, 8)
		if err != nil {
			return "", fmt.Errorf("bad escape %q in %.80q", s[i:i+4], s)
		}
		b.WriteByte(byte(v))
		i += 3
	}
	return b.String(), nil
}

// ParseSyslog parses dmesg -r output ("<prio>[secs.micros] text" per line), as printed inside a
// guest by busybox for ground truth. Sequence numbers are not in that format and stay zero.
func ParseSyslog(data []byte) ([]LogLine, error) {
	out := []LogLine{}
	for i, line := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		if line == "" {
			continue
		}
		end := strings.IndexByte(line, '>')
		tsEnd := strings.Index(line, "] ")
		if !strings.HasPrefix(line, "<") || end < 0 || tsEnd < end || line[end+1] != '[' {
			return nil, fmt.Errorf("syslog line %d: %q", i+1, line)
		}
		prio, err1 := strconv.Atoi(line[1:end])
		secs, micros, ok := strings.Cut(strings.TrimSpace(line[end+2:tsEnd]), ".")
		s, err2 := strconv.ParseUint(secs, 10, 64)
		us, err3 := strconv.ParseUint(micros, 10, 64)
		if err1 != nil || err2 != nil || err3 != nil || !ok {
			return nil, fmt.Errorf("syslog line %d: %q", i+1, line)
		}
		out = append(out, LogLine{Level: prio & 7, Facility: prio >> 3, Micros: s*1e6 + us, Text: line[tsEnd+2:]})
	}
	return out, nil
}
