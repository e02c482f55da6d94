// Package wire is the line protocol of the command channel between the host and the helper that
// runs inside a guest (cmd/hbguest). It travels over a serial port, so every line is plain ASCII:
// payloads are base64, and markers let the reader resynchronise after noise (for example bytes the
// UART received before the helper opened it).
//
//	host  → guest: "@@HB-CMD <id> <base64 shell command>\n"
//	guest → host:  "@@HB-BEGIN <id>\n"
//	               "O <base64 chunk of stdout>\n" / "E <base64 chunk of stderr>\n" ...
//	               "@@HB-END <id> <exit status>\n"
//
// An exit status of 128+N means the command was killed by signal N, as in a shell. Commands run
// at the same time: replies come whole, in the order the commands finish, not in request order.
package wire

import (
	"encoding/base64"
	"fmt"
	"io"
	"strconv"
	"strings"
)

const (
	cmdPrefix   = "@@HB-CMD "
	beginPrefix = "@@HB-BEGIN "
	endPrefix   = "@@HB-END "
	// chunk is the raw size of one output line; base64 makes it 4/3 larger.
	chunk = 3 * 256
)

// Stream tells which output a chunk belongs to.
type Stream byte

const (
	Stdout Stream = 'O'
	Stderr Stream = 'E'
)

// FormatCommand returns the request line for one command.
func FormatCommand(id uint64, command string) string {
	return fmt.Sprintf("%s%d %s\n", cmdPrefix, id, base64.StdEncoding.EncodeToString([]byte(command)))
}

// ParseCommand parses a request line (without its newline). ok is false for anything else,
// which the guest ignores.
func ParseCommand(line string) (id uint64, command string, ok bool) {
	rest, found := strings.CutPrefix(strings.TrimRight(line, "\r"), cmdPrefix)
	if !found {
		return 0, "", false
	}
	idText, payload, found := strings.Cut(rest, " ")
	if !found {
		return 0, "", false
	}
	id, err := strconv.ParseUint(idText, 10, 64)
	if err != nil {
		return 0, "", false
	}
	raw, err := base64.StdEncoding.DecodeString(payload)
	if err != nil {
		return 0, "", false
	}
	return id, string(raw), true
}

// WriteReply writes one whole reply. The caller serialises replies.
func WriteReply(w io.Writer, id uint64, stdout, stderr []byte, status int) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s%d\n", beginPrefix, id)
	for _, s := range []struct {
		stream Stream
		data   []byte
	}{{Stdout, stdout}, {Stderr, stderr}} {
		for off := 0; off < len(s.data); off += chunk {
			end := min(off+chunk, len(s.data))
			b.WriteByte(byte(s.stream))
			b.WriteByte(' ')
			b.WriteString(base64.StdEncoding.EncodeToString(s.data[off:end]))
			b.WriteByte('\n')
		}
	}
	fmt.Fprintf(&b, "%s%d %d\n", endPrefix, id, status)
	_, err := io.WriteString(w, b.String())
	return err
}

// Reply is one command's result as the host assembles it.
type Reply struct {
	ID     uint64
	Stdout []byte
	Stderr []byte
	Status int
}

// ReplyParser assembles replies from lines. Lines outside a reply are dropped, and a reply that
// a new BEGIN interrupts is discarded, so a garbled stream cannot produce a wrong result.
type ReplyParser struct {
	cur *Reply
}

// Line feeds one line (without its newline) and returns a reply when one is complete.
func (p *ReplyParser) Line(line string) (*Reply, error) {
	line = strings.TrimRight(line, "\r")
	if rest, ok := strings.CutPrefix(line, beginPrefix); ok {
		id, err := strconv.ParseUint(rest, 10, 64)
		if err != nil {
			p.cur = nil
			return nil, nil
		}
		p.cur = &Reply{ID: id}
		return nil, nil
	}
	if p.cur == nil {
		return nil, nil
	}
	if rest, ok := strings.CutPrefix(line, endPrefix); ok {
		idText, statusText, found := strings.Cut(rest, " ")
		id, err1 := strconv.ParseUint(idText, 10, 64)
		status, err2 := strconv.Atoi(statusText)
		cur := p.cur
		p.cur = nil
		if !found || err1 != nil || err2 != nil || id != cur.ID {
			return nil, fmt.Errorf("command channel: malformed end of reply %d: %q", cur.ID, line)
		}
		cur.Status = status
		return cur, nil
	}
	if len(line) < 2 || line[1] != ' ' || (Stream(line[0]) != Stdout && Stream(line[0]) != Stderr) {
		id := p.cur.ID
		p.cur = nil
		return nil, fmt.Errorf("command channel: garbled line in reply %d: %.40q", id, line)
	}
	raw, err := base64.StdEncoding.DecodeString(line[2:])
	if err != nil {
		id := p.cur.ID
		p.cur = nil
		return nil, fmt.Errorf("command channel: bad payload in reply %d: %w", id, err)
	}
	if Stream(line[0]) == Stdout {
		p.cur.Stdout = append(p.cur.Stdout, raw...)
	} else {
		p.cur.Stderr = append(p.cur.Stderr, raw...)
	}
	return nil, nil
}
