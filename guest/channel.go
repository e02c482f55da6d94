package guest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"hybridbridge/guest/wire"
)

// Result is the outcome of a command run inside a guest.
type Result struct {
	Stdout []byte
	Stderr []byte
	Status int // exit status; 128+N when killed by signal N
}

// Channel runs shell commands inside a guest over its second serial port (see package wire).
// Commands may run at the same time, from any goroutines: the guest runs each as it arrives and
// replies when it ends, and one reader goroutine hands each reply to the command waiting for its
// id.
type Channel struct {
	conn    net.Conn
	writeMu sync.Mutex                  // one request line at a time, each with its own write deadline
	nextID  atomic.Uint64               // ids of requests; replies to other ids are stale and dropped
	waitMu  sync.Mutex                  // guards waiting
	waiting map[uint64]chan *wire.Reply // the commands in flight, by id
	done    chan struct{}               // closed when the reader exits
	err     error                       // why the reader exited; read only after done is closed
}

// DialChannel connects to the guest's command-channel socket.
func DialChannel(ctx context.Context, path string) (*Channel, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("connect to command channel %s: %w", path, err)
	}
	c := &Channel{conn: conn, waiting: map[uint64]chan *wire.Reply{}, done: make(chan struct{})}
	// Ids start from a per-connection random-ish base so that replies to an earlier client's
	// commands (still queued in the guest) can never match ours.
	c.nextID.Store(uint64(time.Now().UnixNano()))
	go c.read()
	return c, nil
}

func (c *Channel) read() {
	defer close(c.done)
	r := bufio.NewReaderSize(c.conn, 1<<20)
	var p wire.ReplyParser
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			c.err = err
			return
		}
		rep, err := p.Line(line[:len(line)-1])
		if err != nil || rep == nil {
			// A garbled reply is dropped; its command times out or is retried by the caller.
			continue
		}
		c.waitMu.Lock()
		ch := c.waiting[rep.ID]
		delete(c.waiting, rep.ID)
		c.waitMu.Unlock()
		if ch != nil {
			ch <- rep
		}
	}
}

// Exec runs command with /bin/sh -c inside the guest and returns its output and exit status.
// The reply comes when the shell exits: output that processes it left in the background write
// later is not part of it. When ctx ends first the command may still be running in the guest; its
// late reply is dropped.
func (c *Channel) Exec(ctx context.Context, command string) (*Result, error) {
	id := c.nextID.Add(1)
	ch := make(chan *wire.Reply, 1)
	c.waitMu.Lock()
	c.waiting[id] = ch
	c.waitMu.Unlock()
	defer func() {
		c.waitMu.Lock()
		delete(c.waiting, id)
		c.waitMu.Unlock()
	}()
	if err := c.send(ctx, id, command); err != nil {
		return nil, fmt.Errorf("send command %.60q: %w", command, err)
	}
	select {
	case rep := <-ch:
		return &Result{Stdout: rep.Stdout, Stderr: rep.Stderr, Status: rep.Status}, nil
	case <-c.done:
		return nil, fmt.Errorf("command channel closed: %w", c.err)
	case <-ctx.Done():
		return nil, fmt.Errorf("command %.60q: %w", command, ctx.Err())
	}
}

func (c *Channel) send(ctx context.Context, id uint64, command string) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	// Without a deadline in ctx the zero time clears the one an earlier command set.
	dl, _ := ctx.Deadline()
	if err := c.conn.SetWriteDeadline(dl); err != nil {
		return err
	}
	_, err := io.WriteString(c.conn, wire.FormatCommand(id, command))
	return err
}

// Close closes the connection and waits for the reader.
func (c *Channel) Close() error {
	err := c.conn.Close()
	<-c.done
	return err
}
