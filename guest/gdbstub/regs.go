package gdbstub

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
)

// register describes one register of the target description.
type register struct {
	Name    string
	Number  int    // GDB register number: the p/P index and the order in the g packet
	BitSize int    // e.g. 64, 32 (eflags, segment selectors), 80 (st0-7), 128 (xmm)
	Type    string // e.g. "int64", "code_ptr", "i387_ext", "vec128"
	Offset  int    // byte offset in the g packet's data
}

// Size is the register's size in bytes.
func (r register) Size() int { return (r.BitSize + 7) / 8 }

// readXfer reads a whole qXfer object ("features", "read", annex) and returns it unescaped.
func (c *Client) readXfer(object, annex string) ([]byte, error) {
	var out []byte
	const chunk = 0xffb // QEMU clamps to what fits its packet buffer anyway
	for {
		cmd := fmt.Sprintf("qXfer:%s:read:%s:%x,%x", object, annex, len(out), chunk)
		reply, err := c.request(cmd)
		if err != nil {
			return nil, err
		}
		if err := replyError("qXfer:"+object, reply); err != nil {
			return nil, err
		}
		if reply[0] != 'm' && reply[0] != 'l' {
			return nil, protocolError{fmt.Errorf("gdbstub: %s: unexpected reply %.40q", cmd, reply)}
		}
		data, err := unescapeBinary(reply[1:])
		if err != nil {
			return nil, protocolError{err}
		}
		out = append(out, data...)
		if reply[0] == 'l' {
			return out, nil
		}
		if len(data) == 0 {
			return nil, protocolError{fmt.Errorf("gdbstub: %s: empty 'm' reply", cmd)}
		}
	}
}

// loadTargetDescription reads the target description and builds the register numbering. It runs
// from handshake, before the client is shared.
func (c *Client) loadTargetDescription(ctx context.Context) error {
	var regs []register
	next := 0
	var load func(annex string, depth int) error
	load = func(annex string, depth int) error {
		if depth > 8 {
			return protocolError{fmt.Errorf("gdbstub: target description includes nest too deep at %s", annex)}
		}
		doc, err := c.readXfer("features", annex)
		if err != nil {
			return fmt.Errorf("gdbstub: reading target description %s: %w", annex, err)
		}
		d := xml.NewDecoder(bytes.NewReader(doc))
		d.Strict = false
		for {
			tok, err := d.Token()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return protocolError{fmt.Errorf("gdbstub: parsing %s: %w", annex, err)}
			}
			se, ok := tok.(xml.StartElement)
			if !ok {
				continue
			}
			attr := func(name string) string {
				for _, a := range se.Attr {
					if a.Name.Local == name {
						return a.Value
					}
				}
				return ""
			}
			switch se.Name.Local {
			case "include":
				href := attr("href")
				if href == "" {
					continue
				}
				if err := load(href, depth+1); err != nil {
					return err
				}
			case "reg":
				r := register{Name: attr("name"), Type: attr("type")}
				r.BitSize, err = strconv.Atoi(attr("bitsize"))
				if err != nil || r.BitSize <= 0 || r.Name == "" {
					return protocolError{fmt.Errorf("gdbstub: %s: bad <reg name=%q bitsize=%q>", annex, r.Name, attr("bitsize"))}
				}
				r.Number = next
				if s := attr("regnum"); s != "" {
					if r.Number, err = strconv.Atoi(s); err != nil {
						return protocolError{fmt.Errorf("gdbstub: %s: bad regnum %q", annex, s)}
					}
				}
				next = r.Number + 1
				regs = append(regs, r)
			}
		}
	}
	err := c.withContext(ctx, func() error { return load("target.xml", 0) })
	if err != nil {
		return err
	}
	if len(regs) == 0 {
		return errors.New("gdbstub: target description lists no registers")
	}
	sort.SliceStable(regs, func(i, j int) bool { return regs[i].Number < regs[j].Number })
	c.regByName = make(map[string]int, len(regs))
	off := 0
	for i := range regs {
		regs[i].Offset = off
		off += regs[i].Size()
		c.regByName[regs[i].Name] = i
	}
	c.regs = regs
	c.pcReg = -1
	for i, r := range regs {
		if r.Name == "rip" || r.Name == "pc" || r.Name == "eip" {
			c.pcReg = i
			break
		}
		if r.Type == "code_ptr" && c.pcReg < 0 {
			c.pcReg = i
		}
	}
	return nil
}

// ReadRegisters reads every register of at most 64 bits with one g packet, by name. Registers
// the stub reports as unavailable ("xx") are left out. Registers that the description lists
// beyond the end of the g reply (none, for QEMU x86-64) are read with p.
func (c *Client) ReadRegisters(ctx context.Context) (map[string]uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	values := map[string]uint64{}
	err := c.withContext(ctx, func() error {
		reply, err := c.request("g")
		if err != nil {
			return err
		}
		if err := replyError("g", reply); err != nil {
			return err
		}
		for _, r := range c.regs {
			if r.BitSize > 64 {
				continue
			}
			end := 2 * (r.Offset + r.Size())
			var raw []byte
			if end <= len(reply) {
				h := reply[2*r.Offset : end]
				if bytes.Contains(h, []byte("x")) {
					continue
				}
				raw = make([]byte, r.Size())
				if _, err := hex.Decode(raw, h); err != nil {
					return protocolError{fmt.Errorf("gdbstub: g: register %s: %w", r.Name, err)}
				}
			} else {
				raw, err = c.readRegisterRaw(r)
				if err != nil {
					return err
				}
			}
			values[r.Name] = leUint(raw)
		}
		return nil
	})
	return values, err
}

func leUint(b []byte) uint64 {
	var buf [8]byte
	copy(buf[:], b)
	return binary.LittleEndian.Uint64(buf[:])
}

// readRegisterRaw reads one register with p. Called inside withContext.
func (c *Client) readRegisterRaw(r register) ([]byte, error) {
	cmd := fmt.Sprintf("p%x", r.Number)
	reply, err := c.request(cmd)
	if err != nil {
		return nil, err
	}
	if err := replyError("p", reply); err != nil {
		return nil, err
	}
	if bytes.Contains(reply, []byte("x")) {
		return nil, protocolError{fmt.Errorf("gdbstub: register %s is unavailable", r.Name)}
	}
	raw, err := hex.DecodeString(string(reply))
	if err != nil {
		return nil, protocolError{fmt.Errorf("gdbstub: %s: %w", cmd, err)}
	}
	return raw, nil
}

// WriteRegister sets a register of at most 64 bits (P packet).
func (c *Client) WriteRegister(ctx context.Context, name string, value uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	i, ok := c.regByName[name]
	if !ok {
		return fmt.Errorf("gdbstub: no register %q in the target description", name)
	}
	r := c.regs[i]
	if r.BitSize > 64 {
		return fmt.Errorf("gdbstub: register %s has %d bits", name, r.BitSize)
	}
	var buf [8]byte
	binary.LittleEndian.PutUint64(buf[:], value)
	return c.withContext(ctx, func() error {
		cmd := fmt.Sprintf("P%x=%x", r.Number, buf[:r.Size()])
		reply, err := c.request(cmd)
		if err != nil {
			return err
		}
		if err := replyError("P", reply); err != nil {
			return err
		}
		if string(reply) != "OK" {
			return protocolError{fmt.Errorf("gdbstub: %s: unexpected reply %q", strings.SplitN(cmd, "=", 2)[0], reply)}
		}
		return nil
	})
}
