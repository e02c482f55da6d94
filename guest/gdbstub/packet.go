package gdbstub

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Packet layer of the GDB remote serial protocol: "$payload#cs" framing where cs is the sum of the
// payload bytes modulo 256 as two hex digits, run-length encoding of replies ("X*n" repeats X a
// further n-29 times) and the binary escape ("}" followed by the byte XOR 0x20) used in binary
// replies such as qXfer.

const (
	escapeByte = '}'
	interrupt  = 0x03
)

// checksum is the sum of b's bytes modulo 256.
func checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return s
}

// frame wraps payload as "$payload#cs". The payload is sent as is, so it must not hold '$', '#',
// '}' or '*': every command this client sends is text and hex.
func frame(payload []byte) []byte {
	out := make([]byte, 0, len(payload)+4)
	out = append(out, '$')
	out = append(out, payload...)
	return fmt.Appendf(out, "#%02x", checksum(payload))
}

// unescapeBinary undoes the binary escape of a reply such as qXfer's.
func unescapeBinary(b []byte) ([]byte, error) {
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		if b[i] != escapeByte {
			out = append(out, b[i])
			continue
		}
		if i+1 >= len(b) {
			return nil, errors.New("gdbstub: binary data ends inside an escape")
		}
		i++
		out = append(out, b[i]^0x20)
	}
	return out, nil
}

// expandRLE expands run-length encoding: "X*n" stands for X followed by n-29 more copies of X.
// It is applied to every received packet body, before any binary unescaping.
func expandRLE(b []byte) ([]byte, error) {
	if !containsByte(b, '*') {
		return b, nil
	}
	out := make([]byte, 0, len(b)*2)
	for i := 0; i < len(b); i++ {
		if b[i] != '*' {
			out = append(out, b[i])
			continue
		}
		if len(out) == 0 || i+1 >= len(b) {
			return nil, fmt.Errorf("gdbstub: malformed run-length encoding in %q", b)
		}
		i++
		n := int(b[i]) - 29
		if n < 3 || n > 97 {
			return nil, fmt.Errorf("gdbstub: bad run-length count %q in %q", b[i], b)
		}
		last := out[len(out)-1]
		for range n {
			out = append(out, last)
		}
	}
	return out, nil
}

func containsByte(b []byte, c byte) bool {
	for _, x := range b {
		if x == c {
			return true
		}
	}
	return false
}

// isConsoleOutput reports whether a reply is an "O" packet (hex-encoded console output), which
// may arrive while the target runs and is ignored. "OK" is not one.
func isConsoleOutput(p []byte) bool {
	if len(p) < 3 || p[0] != 'O' || len(p)%2 != 1 {
		return false
	}
	for _, c := range p[1:] {
		if !isHex(c) {
			return false
		}
	}
	return true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10
	}
	return 0
}

// RemoteError is an "Exx" reply: the stub refused the command with error number Code, the two
// digits read as hex as the protocol says. (QEMU writes errnos in decimal: "E14" is EFAULT for
// unreadable memory, Code 0x14; "E22" is EINVAL.)
type RemoteError struct {
	Command string // the command's name, e.g. "m" or "Z0"
	Code    int
	Text    string // the full reply, e.g. "E14" or "E.message"
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("gdbstub: %s: remote error %s", e.Command, e.Text)
}

// ErrUnsupported is returned (wrapped) when the stub answers a command with an empty packet,
// the protocol's way of saying it does not know the command.
var ErrUnsupported = errors.New("gdbstub: command not supported by the stub")

// replyError turns an "Exx" (or "E.text") reply into a *RemoteError, and an empty reply into
// ErrUnsupported; other replies give nil.
func replyError(cmd string, p []byte) error {
	if len(p) == 0 {
		return fmt.Errorf("%w: %s", ErrUnsupported, cmd)
	}
	if p[0] != 'E' {
		return nil
	}
	if len(p) == 3 && isHex(p[1]) && isHex(p[2]) {
		return &RemoteError{Command: cmd, Code: int(unhex(p[1])<<4 | unhex(p[2])), Text: string(p)}
	}
	if len(p) > 1 && p[1] == '.' {
		return &RemoteError{Command: cmd, Code: -1, Text: string(p)}
	}
	return nil
}

// StopReply is a parsed stop reply ("S05", "T05thread:01;06:...;", "W00", "X09").
type StopReply struct {
	Kind   byte // 'T' or 'S' (stopped), 'W' (exited), 'X' (terminated by a signal)
	Signal int  // GDB signal number: 5 SIGTRAP (breakpoint, step), 2 SIGINT (interrupted)
	// Thread is the thread: field if present ("01", or "p1.1" with multiprocess ids).
	Thread string
	// Registers holds "n:value" fields, keyed by register number, as raw target-order bytes.
	Registers map[int][]byte
	// Fields holds every other "key:value" field (e.g. "swbreak", "watch", "core").
	Fields map[string]string
	Raw    string
}

// Stopped reports whether the target is stopped (as opposed to having exited).
func (s StopReply) Stopped() bool { return s.Kind == 'T' || s.Kind == 'S' }

// ErrExited is returned (wrapped) when the stub reports that the target exited (W or X reply),
// which QEMU does when the VM shuts down.
var ErrExited = errors.New("gdbstub: target exited")

func isStopReply(p []byte) bool {
	if len(p) < 3 || !isHex(p[1]) || !isHex(p[2]) {
		return false
	}
	switch p[0] {
	case 'T':
		return true
	case 'S', 'W', 'X':
		return len(p) == 3 || p[3] == ';'
	}
	return false
}

// parseStopReply parses a stop reply packet.
func parseStopReply(p []byte) (StopReply, error) {
	if !isStopReply(p) {
		return StopReply{}, fmt.Errorf("gdbstub: not a stop reply: %q", p)
	}
	s := StopReply{Kind: p[0], Signal: int(unhex(p[1])<<4 | unhex(p[2])), Raw: string(p)}
	if s.Kind != 'T' {
		return s, nil
	}
	for _, f := range strings.Split(string(p[3:]), ";") {
		if f == "" {
			continue
		}
		k, v, ok := strings.Cut(f, ":")
		if !ok {
			// e.g. "swbreak" without a value is not valid, but tolerate it.
			if s.Fields == nil {
				s.Fields = map[string]string{}
			}
			s.Fields[f] = ""
			continue
		}
		if k == "thread" {
			s.Thread = v
			continue
		}
		if n, err := strconv.ParseUint(k, 16, 32); err == nil && isAllHex(k) {
			if b, err := hex.DecodeString(v); err == nil {
				if s.Registers == nil {
					s.Registers = map[int][]byte{}
				}
				s.Registers[int(n)] = b
				continue
			}
		}
		if s.Fields == nil {
			s.Fields = map[string]string{}
		}
		s.Fields[k] = v
	}
	return s, nil
}

func isAllHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isHex(s[i]) {
			return false
		}
	}
	return s != ""
}
