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
		head, body, ok := strings.Cut(string(rec), ";")
		f := strings.Split(head, ",")
		if !ok || len(f) < 4 {
			return nil, fmt.Errorf("/dev/kmsg record %q", rec)
		}
		var v [3]uint64
		for i := range v {
			if v[i], err = strconv.ParseUint(f[i], 10, 64); err != nil {
				return nil, fmt.Errorf("/dev/kmsg record %q", rec)
			}
		}
		text, _, _ := strings.Cut(body, "\n")
		for _, line := range strings.Split(unescapeHex(text), "\n") {
			out = append(out, LogLine{Seq: v[1], Level: int(v[0] & 7), Facility: int(v[0] >> 3), Micros: v[2], Text: line})
		}
	}
	return out, nil
}

// unescapeHex undoes /dev/kmsg's \xNN escapes.
func unescapeHex(s string) string {
	if !strings.Contains(s, `\x`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) && s[i+1] == 'x' {
			if v, err := strconv.ParseUint(s[i+2:i+4], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
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
