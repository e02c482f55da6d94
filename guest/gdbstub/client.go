// Package gdbstub is a small client for the GDB remote serial protocol as served by QEMU's
// gdbstub (-gdb unix:PATH,server=on,wait=off). It stops a guest VM at kernel breakpoints, steps
// it, reads and writes the CPU's registers as QEMU's target description lists them, and reads
// and writes guest memory through the current CPU's page tables.
//
// Every operation takes a context and honours its deadline and cancellation, so a wedged QEMU
// cannot hang the caller. If an operation is cut off in the middle of an exchange, the
// connection can no longer be trusted and every later operation fails; the one exception is the
// wait for a stop in Continue and StepInstruction, which interrupts the VM and recovers.
//
// Connecting stops the VM: QEMU pauses it when a debugger attaches. Close does not resume it
// (it only removes the breakpoints this client set); QEMU's monitor does, with "cont".
//
// A Client may be used from several goroutines, but operations run one at a time: a Continue
// holds the connection until the VM stops or its context ends.
package gdbstub

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

// haltTimeout bounds the interrupt-and-wait that Continue performs when its context ends, and
// the cleanup in Close: both run after the caller's context is spent.
const haltTimeout = 5 * time.Second

// Client is a connection to one gdbstub.
type Client struct {
	mu   sync.Mutex
	conn net.Conn
	r    *bufio.Reader
	err  error // sticky: set once the stream can no longer be trusted

	parser  packetParser // resumable, so a read cut off by a deadline loses nothing
	pending [][]byte     // packets received while waiting for an ack

	running bool // a c/s is outstanding

	regs      []register
	regByName map[string]int // index into regs
	pcReg     int            // index into regs of the program counter, -1 if unknown

	steppingOver bool // a breakpoint is lifted while stepping over it

	opCtx      context.Context // the context of the exchange in progress (runWithDeadline)
	opDeadline time.Time       // and its deadline

	breakpoints map[uint64]byte // address -> '0' (software) or '1' (hardware)
}

// Dial connects to the gdbstub listening on the unix socket path, negotiates features and loads
// the target description. QEMU stops the VM when a debugger connects.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("gdbstub: dial %s: %w", path, err)
	}
	c := &Client{
		conn:        conn,
		r:           bufio.NewReaderSize(conn, 16<<10),
		breakpoints: map[uint64]byte{},
		opCtx:       context.Background(),
	}
	if err := c.handshake(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// handshake runs before the client is shared, so it needs no lock.
func (c *Client) handshake(ctx context.Context) error {
	var features map[string]string
	err := c.withContext(ctx, func() error {
		// QEMU pauses the VM as the connection opens and may announce it with an unsolicited
		// stop reply before it reads anything from us; request() skips that (qSupported's reply
		// never looks like one).
		reply, err := c.request("qSupported:swbreak+;hwbreak+;xmlRegisters=i386")
		if err != nil {
			return err
		}
		features = parseFeatures(reply)
		// QEMU answers "?" by dropping every breakpoint, as a debugger only asks it on
		// connecting: breakpoints an earlier client failed to remove cannot stop this one.
		_, err = c.request("?")
		return err
	})
	if err != nil {
		return err
	}
	if features["qXfer:features:read"] != "+" {
		return errors.New("gdbstub: stub does not offer qXfer:features:read (no target description)")
	}
	return c.loadTargetDescription(ctx)
}

func parseFeatures(reply []byte) map[string]string {
	m := map[string]string{}
	for _, f := range strings.Split(string(reply), ";") {
		switch {
		case f == "":
		case strings.HasSuffix(f, "+") || strings.HasSuffix(f, "-") || strings.HasSuffix(f, "?"):
			m[f[:len(f)-1]] = f[len(f)-1:]
		default:
			k, v, _ := strings.Cut(f, "=")
			m[k] = v
		}
	}
	return m
}

// Close removes the breakpoints this client set, which would otherwise outlive the connection and
// stop the VM, once resumed, with nobody waiting; then it closes the connection. It does not
// resume the VM. The cleanup is best effort, bounded by haltTimeout.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil
	}
	if c.err == nil && len(c.breakpoints) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), haltTimeout)
		c.cleanup(ctx)
		cancel()
	}
	err := c.conn.Close()
	c.conn = nil
	if c.err == nil {
		c.err = net.ErrClosed
	}
	return err
}

func (c *Client) cleanup(ctx context.Context) {
	_ = c.withContext(ctx, func() error {
		for addr, kind := range c.breakpoints {
			if err := c.breakpointRequest('z', kind, addr); err != nil {
				return err
			}
			delete(c.breakpoints, addr)
		}
		return nil
	})
}

// withContext runs fn, an exchange on the connection, within ctx: the connection's deadline is
// ctx's, and ctx's cancellation cuts off any read or write in progress. If fn fails while the
// stream may be mid-packet, the client is marked unusable. Called with c.mu held.
func (c *Client) withContext(ctx context.Context, fn func() error) error {
	if c.err != nil {
		return fmt.Errorf("gdbstub: connection unusable: %w", c.err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	err := c.runWithDeadline(ctx, fn)
	if err != nil && !isProtocolError(err) {
		c.err = err
	}
	return err
}

// runWithDeadline runs fn with the connection's deadline tied to ctx. An I/O timeout caused by
// ctx becomes ctx.Err() (wrapped together with the I/O error).
func (c *Client) runWithDeadline(ctx context.Context, fn func() error) error {
	dl, _ := ctx.Deadline()
	c.opCtx, c.opDeadline = ctx, dl
	c.conn.SetDeadline(dl)
	// The callback runs in a goroutine of its own, possibly after fn has returned and stop has
	// been called: it must not cut off the operation that follows (seen in CI: the halt after a
	// Continue's deadline failed at once with an i/o timeout), so it acts only while fn runs.
	var mu sync.Mutex
	running := true
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if running {
			c.conn.SetDeadline(time.Unix(1, 0))
		}
	})
	err := fn()
	stop()
	mu.Lock()
	running = false
	mu.Unlock()
	c.conn.SetDeadline(time.Time{})
	c.opCtx, c.opDeadline = context.Background(), time.Time{}
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		if ctx.Err() == nil && !dl.IsZero() && !time.Now().Before(dl) {
			<-ctx.Done() // the conn deadline fired a moment before ctx's timer
		}
		if ctx.Err() != nil {
			return fmt.Errorf("gdbstub: %w (%v)", ctx.Err(), err)
		}
	}
	return err
}

// protocolError marks errors that leave the stream in sync (a well-formed reply that was an
// error or unexpected), so the client stays usable.
type protocolError struct{ error }

func (e protocolError) Unwrap() error { return e.error }

func isProtocolError(err error) bool {
	var p protocolError
	var r *RemoteError
	return errors.As(err, &p) || errors.As(err, &r) || errors.Is(err, ErrUnsupported)
}

// ackGrace is how long send waits for the ack once a stop reply has crossed its packet.
const ackGrace = 200 * time.Millisecond

// send transmits one packet, waits for the "+" and retransmits on "-".
//
// QEMU stops a running VM on any byte it receives and discards that byte. So if the VM was
// resumed behind this client's back (by the monitor or QMP "cont"), the packet's "$" stops the
// VM and the rest is ignored: a stop reply comes instead of the ack. send then waits ackGrace
// for an ack in case the stop was unrelated, and sends the packet again. This is why the client
// never switches to no-ack mode (QStartNoAckMode), where the loss would go unseen.
func (c *Client) send(payload []byte) error {
	pkt := frame(payload)
	for attempt := 0; ; attempt++ {
		if attempt > 3 {
			return errors.New("gdbstub: packet not acknowledged after 3 retransmissions")
		}
		if _, err := c.conn.Write(pkt); err != nil {
			return fmt.Errorf("gdbstub: write: %w", err)
		}
		acked, err := c.waitAck()
		if err != nil || acked {
			return err
		}
	}
}

// waitAck reads until "+" (true) or "-" (false: retransmit). If a stop reply comes first and no
// ack follows within ackGrace, it also answers false.
func (c *Client) waitAck() (bool, error) {
	sawStop := false
	for {
		b, err := c.r.ReadByte()
		if err != nil {
			if sawStop && errors.Is(err, os.ErrDeadlineExceeded) && c.opCtx.Err() == nil &&
				(c.opDeadline.IsZero() || time.Now().Before(c.opDeadline)) {
				c.setReadDeadline(c.opDeadline)
				return false, nil
			}
			return false, fmt.Errorf("gdbstub: waiting for ack: %w", readErr(err))
		}
		switch b {
		case '+':
			if sawStop {
				c.setReadDeadline(c.opDeadline)
			}
			return true, nil
		case '-':
			return false, nil
		case '$':
			c.parser.start()
			p, err := c.readFrame()
			if err != nil {
				return false, err
			}
			if !isStopReply(p) {
				c.pending = append(c.pending, p)
				continue
			}
			if !sawStop {
				sawStop = true
				grace := time.Now().Add(ackGrace)
				if !c.opDeadline.IsZero() && c.opDeadline.Before(grace) {
					grace = c.opDeadline
				}
				c.setReadDeadline(grace)
			}
		}
	}
}

// setReadDeadline sets the read deadline without losing a cancellation of the operation's
// context that races with it (runWithDeadline's AfterFunc sets a past deadline).
func (c *Client) setReadDeadline(t time.Time) {
	c.conn.SetReadDeadline(t)
	if c.opCtx.Err() != nil {
		c.conn.SetReadDeadline(time.Unix(1, 0))
	}
}

func readErr(err error) error {
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("stub closed the connection: %w", err)
	}
	return err
}

// packetParser is the receive state machine. It keeps its state across calls so that a read
// interrupted by a deadline can be resumed.
type packetParser struct {
	state int // 0 idle, 1 body, 2 first checksum digit, 3 second
	body  []byte
	cs    byte
}

func (p *packetParser) start() {
	p.state = 1
	p.body = p.body[:0]
}

// readPacket returns the next packet's body (run-length decoded), acknowledging it.
func (c *Client) readPacket() ([]byte, error) {
	if len(c.pending) > 0 {
		out := c.pending[0]
		c.pending = c.pending[1:]
		return out, nil
	}
	return c.readFrame()
}

// readFrame runs the receive state machine until a whole, valid packet has arrived.
func (c *Client) readFrame() ([]byte, error) {
	p := &c.parser
	for {
		b, err := c.r.ReadByte()
		if err != nil {
			return nil, fmt.Errorf("gdbstub: read: %w", readErr(err))
		}
		switch p.state {
		case 0:
			if b == '$' {
				p.start()
			}
			// '+' and '-' outside a send, stray bytes and '%' notifications are ignored.
		case 1:
			if b == '#' {
				p.state = 2
			} else {
				p.body = append(p.body, b)
			}
		case 2:
			p.cs = unhex(b) << 4
			p.state = 3
		case 3:
			p.cs |= unhex(b)
			p.state = 0
			if p.cs != checksum(p.body) {
				if _, err := c.conn.Write([]byte{'-'}); err != nil {
					return nil, fmt.Errorf("gdbstub: write: %w", err)
				}
				continue
			}
			if _, err := c.conn.Write([]byte{'+'}); err != nil {
				return nil, fmt.Errorf("gdbstub: write: %w", err)
			}
			out, err := expandRLE(p.body)
			if err != nil {
				return nil, err
			}
			return append([]byte(nil), out...), nil
		}
	}
}

// request sends a command and returns its reply, skipping console output and, unless the
// command is "?", stop replies that arrive unsolicited.
func (c *Client) request(cmd string) ([]byte, error) {
	skipStops := cmd != "?"
	if err := c.send([]byte(cmd)); err != nil {
		return nil, err
	}
	for {
		reply, err := c.readPacket()
		if err != nil {
			return nil, err
		}
		if isConsoleOutput(reply) {
			continue
		}
		if skipStops && isStopReply(reply) {
			continue
		}
		return reply, nil
	}
}

// waitStop waits for a stop reply after c/s, ignoring console output.
func (c *Client) waitStop() (StopReply, error) {
	for {
		reply, err := c.readPacket()
		if err != nil {
			return StopReply{}, err
		}
		if isConsoleOutput(reply) {
			continue
		}
		if !isStopReply(reply) {
			// Not expected while running; skip it rather than lose sync.
			continue
		}
		st, err := parseStopReply(reply)
		if err != nil {
			return StopReply{}, err
		}
		c.running = false
		if !st.Stopped() {
			return st, fmt.Errorf("%w: %s", ErrExited, st.Raw)
		}
		return st, nil
	}
}

// interruptAndWait sends the interrupt byte and waits for the stop reply, within the deadline
// of the exchange in progress. If the VM has already stopped (a breakpoint), QEMU ignores the
// byte and the stop reply already sent is the one read.
func (c *Client) interruptAndWait() (StopReply, error) {
	if _, err := c.conn.Write([]byte{interrupt}); err != nil {
		return StopReply{}, fmt.Errorf("gdbstub: write: %w", err)
	}
	return c.waitStop()
}

// Continue resumes the VM and waits for it to stop (a breakpoint, a step, an interrupt from
// elsewhere). The wait lasts until ctx ends; then Continue stops the VM itself (interrupt, then
// wait up to haltTimeout for the stop) and returns ctx's error — the VM is stopped
// afterwards either way.
func (c *Client) Continue(ctx context.Context) (StopReply, error) {
	return c.resume(ctx, "c")
}

// StepInstruction executes one instruction and returns the stop reply. Like Continue, it halts
// the VM if ctx ends first.
func (c *Client) StepInstruction(ctx context.Context) (StopReply, error) {
	return c.resume(ctx, "s")
}

func (c *Client) resume(ctx context.Context, cmd string) (StopReply, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return StopReply{}, fmt.Errorf("gdbstub: connection unusable: %w", c.err)
	}
	if err := ctx.Err(); err != nil {
		return StopReply{}, err
	}
	var st StopReply
	c.steppingOver = false
	err := c.runWithDeadline(ctx, func() error {
		if cmd == "c" {
			if err := c.stepOverBreakpoint(); err != nil {
				return err
			}
		}
		if err := c.send([]byte(cmd)); err != nil {
			return err
		}
		c.running = true
		var err error
		st, err = c.waitStop()
		return err
	})
	if err == nil {
		return st, nil
	}
	if !c.running || ctx.Err() == nil || c.steppingOver {
		// Cut off outside the wait for the stop (or while a breakpoint was lifted to step
		// over it): the stream or QEMU's breakpoints are in an unknown state.
		if !errors.Is(err, ErrExited) {
			c.err = err
		}
		return st, err
	}
	// ctx ended while the VM ran: stop it ourselves.
	hctx, cancel := context.WithTimeout(context.Background(), haltTimeout)
	defer cancel()
	herr := c.runWithDeadline(hctx, func() error {
		var err error
		st, err = c.interruptAndWait()
		return err
	})
	if herr != nil {
		c.err = herr
		return st, fmt.Errorf("%w; halting the VM afterwards failed: %v", ctx.Err(), herr)
	}
	return st, ctx.Err()
}

// stepOverBreakpoint moves the VM past a breakpoint of ours at the current PC before a
// continue: QEMU reports a breakpoint again, without executing anything, when the VM resumes on
// it. As GDB does, it removes the breakpoint, single-steps (QEMU steps with interrupts masked,
// and a step is not stopped by breakpoints) and inserts it again.
func (c *Client) stepOverBreakpoint() error {
	if len(c.breakpoints) == 0 || c.pcReg < 0 {
		return nil
	}
	raw, err := c.readRegisterRaw(c.regs[c.pcReg])
	if err != nil {
		return err
	}
	pc := leUint(raw)
	kind, ok := c.breakpoints[pc]
	if !ok {
		return nil
	}
	c.steppingOver = true
	if err := c.breakpointRequest('z', kind, pc); err != nil {
		return err
	}
	if err := c.send([]byte("s")); err != nil {
		return err
	}
	c.running = true
	if _, err := c.waitStop(); err != nil {
		return err
	}
	if err := c.breakpointRequest('Z', kind, pc); err != nil {
		return err
	}
	c.steppingOver = false
	return nil
}

func (c *Client) breakpointRequest(op, kind byte, addr uint64) error {
	cmd := fmt.Sprintf("%c%c,%x,1", op, kind, addr)
	reply, err := c.request(cmd)
	if err != nil {
		return err
	}
	if string(reply) == "OK" {
		return nil
	}
	if err := replyError(cmd[:2], reply); err != nil {
		return err
	}
	return protocolError{fmt.Errorf("gdbstub: %s: unexpected reply %q", cmd, reply)}
}

// SetBreakpoint inserts a breakpoint at the virtual address addr (Z0, a software breakpoint; if
// the stub does not support those, Z1, a hardware one). Under QEMU both are kept by QEMU itself,
// not written into guest memory.
func (c *Client) SetBreakpoint(ctx context.Context, addr uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.withContext(ctx, func() error {
		if _, ok := c.breakpoints[addr]; ok {
			return nil
		}
		var last error
		for _, kind := range []byte{'0', '1'} {
			cmd := fmt.Sprintf("Z%c,%x,1", kind, addr)
			reply, err := c.request(cmd)
			if err != nil {
				return err
			}
			if string(reply) == "OK" {
				c.breakpoints[addr] = kind
				return nil
			}
			last = replyError(cmd[:2], reply)
			if last == nil {
				return protocolError{fmt.Errorf("gdbstub: %s: unexpected reply %q", cmd, reply)}
			}
			if !errors.Is(last, ErrUnsupported) {
				return last
			}
		}
		return last
	})
}

// ClearBreakpoint removes a breakpoint set with SetBreakpoint.
func (c *Client) ClearBreakpoint(ctx context.Context, addr uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.withContext(ctx, func() error {
		kind, ok := c.breakpoints[addr]
		if !ok {
			return protocolError{fmt.Errorf("gdbstub: no breakpoint at %#x", addr)}
		}
		if err := c.breakpointRequest('z', kind, addr); err != nil {
			return err
		}
		delete(c.breakpoints, addr)
		return nil
	})
}

// maxMemChunk is the most bytes one m packet reads: QEMU refuses longer reads
// (MAX_PACKET_LENGTH/2 = 2048).
const maxMemChunk = 2048

// maxMemWrite is the most bytes one M packet writes. The data travels as hex after a header of up
// to 22 bytes ("Mffffffff81000000,7d0:"), and QEMU drops a packet that overflows its 4096-byte
// buffer without answering, which would leave the client waiting for an ack.
const maxMemWrite = 2000

// ReadMemory reads n bytes at addr. Under QEMU the address is virtual, translated through the
// current CPU's page tables (with paging off, as at a 32-bit boot entry, it is physical). An
// unmapped address gives a *RemoteError (QEMU answers "E14", EFAULT); the bytes read before it
// are returned with it.
func (c *Client) ReadMemory(ctx context.Context, addr uint64, n int) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]byte, 0, n)
	for len(out) < n {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		chunk := min(n-len(out), maxMemChunk)
		a := addr + uint64(len(out))
		err := c.withContext(ctx, func() error {
			cmd := fmt.Sprintf("m%x,%x", a, chunk)
			reply, err := c.request(cmd)
			if err != nil {
				return err
			}
			if err := replyError("m", reply); err != nil {
				return err
			}
			if len(reply) != 2*chunk {
				// A stub may return fewer bytes than asked; take what came.
				if len(reply) == 0 || len(reply)%2 != 0 {
					return protocolError{fmt.Errorf("gdbstub: %s: malformed reply of %d bytes", cmd, len(reply))}
				}
			}
			b := make([]byte, len(reply)/2)
			if _, err := hex.Decode(b, reply); err != nil {
				return protocolError{fmt.Errorf("gdbstub: %s: %w", cmd, err)}
			}
			out = append(out, b...)
			return nil
		})
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// WriteMemory writes data at addr, an address as ReadMemory takes it. Unlike a write to the
// guest's RAM file, QEMU sees this one and drops code it translated from those bytes, so it may
// patch code that has already run.
func (c *Client) WriteMemory(ctx context.Context, addr uint64, data []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for off := 0; off < len(data); off += maxMemWrite {
		if err := ctx.Err(); err != nil {
			return err
		}
		chunk := data[off:min(len(data), off+maxMemWrite)]
		err := c.withContext(ctx, func() error {
			cmd := fmt.Sprintf("M%x,%x:%x", addr+uint64(off), len(chunk), chunk)
			reply, err := c.request(cmd)
			if err != nil {
				return err
			}
			if err := replyError("M", reply); err != nil {
				return err
			}
			if string(reply) != "OK" {
				return protocolError{fmt.Errorf("gdbstub: M: unexpected reply %q", reply)}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// Monitor runs a QEMU monitor command through the stub (qRcmd) and returns its output.
func (c *Client) Monitor(ctx context.Context, command string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out strings.Builder
	err := c.withContext(ctx, func() error {
		if err := c.send(fmt.Appendf(nil, "qRcmd,%x", command)); err != nil {
			return err
		}
		for {
			reply, err := c.readPacket()
			if err != nil {
				return err
			}
			if isConsoleOutput(reply) {
				b, _ := hex.DecodeString(string(reply[1:]))
				out.Write(b)
				continue
			}
			if string(reply) == "OK" {
				return nil
			}
			if err := replyError("qRcmd", reply); err != nil {
				return err
			}
			// Some stubs answer with the hex output directly.
			if b, err := hex.DecodeString(string(reply)); err == nil {
				out.Write(b)
				return nil
			}
			return protocolError{fmt.Errorf("gdbstub: qRcmd: unexpected reply %q", reply)}
		}
	})
	return out.String(), err
}
