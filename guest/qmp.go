package guest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Monitor is what hybridbridge needs of a QEMU monitor. QMP here is a small client of our own
// rather than a library's because every call needs a deadline (a paused or wedged QEMU must not
// hang the console), which the served QMP libraries do not offer.
type Monitor interface {
	// Run executes one QMP command and returns its "return" value.
	Run(ctx context.Context, command string, args any) (json.RawMessage, error)
	// Events delivers asynchronous events; it is closed when the connection ends.
	Events() <-chan Event
	Close() error
}

var _ Monitor = (*QMP)(nil)

// Event is an asynchronous QMP event such as STOP, RESUME or SHUTDOWN.
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data"`
}

// QMPError is an error reply from QEMU.
type QMPError struct {
	Command string
	Class   string
	Desc    string
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// QMP is a connection to a QEMU monitor socket. One reader goroutine separates events from
// replies; commands are serialised by mu, since QMP answers them in order.
type QMP struct {
	conn    net.Conn
	mu      sync.Mutex    // serialises commands; held while one is in flight
	replies chan qmpReply // replies from the reader, one per command
	events  chan Event    // buffered; events are dropped when nobody reads them
	done    chan struct{} // closed when the reader exits
	err     error         // why the reader exited; read only after done is closed
}

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
}

// DialQMP connects to a QMP unix socket and negotiates capabilities.
func DialQMP(ctx context.Context, path string) (*QMP, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("connect to QMP %s: %w", path, err)
	}
	q := &QMP{conn: conn, replies: make(chan qmpReply, 1), events: make(chan Event, 64), done: make(chan struct{})}
	r := bufio.NewReader(conn)
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(dl)
	}
	greeting, err := r.ReadBytes('\n')
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("QMP greeting from %s: %w", path, err)
	}
	var g struct {
		QMP json.RawMessage `json:"QMP"`
	}
	if json.Unmarshal(greeting, &g) != nil || g.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("QMP %s: unexpected greeting %.80q", path, greeting)
	}
	_ = conn.SetReadDeadline(time.Time{})
	go q.read(r)
	if _, err := q.Run(ctx, "qmp_capabilities", nil); err != nil {
		q.Close()
		return nil, err
	}
	return q, nil
}

func (q *QMP) read(r *bufio.Reader) {
	defer close(q.done)
	defer close(q.events)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			q.err = err
			return
		}
		var probe struct {
			Event string `json:"event"`
		}
		if err := json.Unmarshal(line, &probe); err != nil {
			q.err = fmt.Errorf("QMP: bad message %.80q: %w", line, err)
			return
		}
		if probe.Event != "" {
			var ev Event
			_ = json.Unmarshal(line, &ev)
			select {
			case q.events <- ev:
			default:
			}
			continue
		}
		var rep qmpReply
		if err := json.Unmarshal(line, &rep); err != nil {
			q.err = fmt.Errorf("QMP: bad reply %.80q: %w", line, err)
			return
		}
		// One command is in flight at most and replies has room for one, so this never blocks,
		// even when the caller gave up on the reply.
		q.replies <- rep
	}
}

// Run executes one command. If ctx ends first the connection is closed, because a late reply
// would otherwise be taken as the next command's.
func (q *QMP) Run(ctx context.Context, command string, args any) (json.RawMessage, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	msg := map[string]any{"execute": command}
	if args != nil {
		msg["arguments"] = args
	}
	data, err := json.Marshal(msg)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = q.conn.SetWriteDeadline(dl)
	}
	if _, err := q.conn.Write(append(data, '\n')); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	select {
	case rep := <-q.replies:
		if rep.Error != nil {
			return nil, &QMPError{Command: command, Class: rep.Error.Class, Desc: rep.Error.Desc}
		}
		return rep.Return, nil
	case <-q.done:
		return nil, fmt.Errorf("qmp %s: connection closed: %w", command, q.err)
	case <-ctx.Done():
		q.conn.Close()
		return nil, fmt.Errorf("qmp %s: %w", command, ctx.Err())
	}
}

// HMP runs a human monitor command, for information QMP does not expose (e.g. control registers).
func (q *QMP) HMP(ctx context.Context, line string) (string, error) {
	ret, err := q.Run(ctx, "human-monitor-command", map[string]string{"command-line": line})
	if err != nil {
		return "", err
	}
	var s string
	if err := json.Unmarshal(ret, &s); err != nil {
		return "", fmt.Errorf("hmp %q: %w", line, err)
	}
	return s, nil
}

// Events returns the event stream.
func (q *QMP) Events() <-chan Event { return q.events }

// Close closes the connection and waits for the reader to stop.
func (q *QMP) Close() error {
	err := q.conn.Close()
	<-q.done
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
