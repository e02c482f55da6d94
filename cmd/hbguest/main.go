// Command hbguest is the small static helper that runs inside hybridbridge's own guests. It is
// built with CGO_ENABLED=0 by scripts/setup.sh and copied into the demo guest's initramfs and the
// Debian guest's disk (a systemd service there).
//
//	hbguest serve /dev/ttyS1   run shell commands sent by the host over a serial port
//	hb-udpd PORT               (argv[0]) hold a bound UDP socket and echo datagrams
//
// It is part of the guest's workload, not of the inspection: hybridbridge reads guest state from
// outside and uses this channel only to take ground truth and to drive tests.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"hybridbridge/guest/wire"
)

func main() {
	var err error
	switch {
	case filepath.Base(os.Args[0]) == "hb-udpd" && len(os.Args) == 2:
		err = udpEcho(os.Args[1])
	case len(os.Args) == 3 && os.Args[1] == "serve":
		err = serve(os.Args[2])
	default:
		err = errors.New("usage: hbguest serve DEVICE | hb-udpd PORT")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "hbguest:", err)
		os.Exit(1)
	}
}

// serve runs every command in a goroutine of its own, so one that takes long holds up no other.
// Replies go out whole, one at a time, in the order the commands finish: the host matches them to
// its requests by id.
func serve(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// Not f.Fd(): that would make the file blocking, and closing it could no longer end a read.
	raw, err := f.SyscallConn()
	if err != nil {
		return err
	}
	if cerr := raw.Control(func(fd uintptr) { err = makeRaw(int(fd)) }); cerr != nil || err != nil {
		return fmt.Errorf("raw mode on %s: %w", dev, errors.Join(cerr, err))
	}
	out := bufio.NewWriterSize(f, 64<<10)
	var (
		outMu sync.Mutex // serialises replies
		wErr  error      // the first failed write; guarded by outMu
	)
	reply := func(id uint64, stdout, stderr []byte, status int) {
		outMu.Lock()
		defer outMu.Unlock()
		if wErr != nil {
			return
		}
		err := wire.WriteReply(out, id, stdout, stderr, status)
		if err == nil {
			err = out.Flush()
		}
		if err != nil {
			// Closing the device ends the read loop below, so the helper exits and init
			// starts a fresh one.
			wErr = fmt.Errorf("write %s: %w", dev, err)
			f.Close()
		}
	}
	in := bufio.NewReaderSize(f, 1<<20)
	for {
		line, err := in.ReadString('\n')
		if err != nil {
			outMu.Lock()
			defer outMu.Unlock()
			if wErr != nil {
				return wErr
			}
			return fmt.Errorf("read %s: %w", dev, err)
		}
		id, command, ok := wire.ParseCommand(line[:len(line)-1])
		if !ok {
			continue
		}
		go func() {
			stdout, stderr, status := run(command)
			reply(id, stdout, stderr, status)
		}()
	}
}

// run runs command with /bin/sh -c and returns when the shell exits. Processes the command leaves
// in the background inherit its output pipes; waiting for them to close the pipes (as exec.Cmd
// does when it copies output) would hold the reply, and every later command, until the last of
// them exits, which for a daemon is never. So output is read only until the shell exits, and the
// pipes are closed then: what background processes write afterwards is lost (a write fails with
// EPIPE, or SIGPIPE ends the writer, as when any reader of a pipe goes away).
func run(command string) (stdout, stderr []byte, status int) {
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Appendf(nil, "hbguest: stdout pipe: %v\n", err), 127
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, fmt.Appendf(nil, "hbguest: stderr pipe: %v\n", err), 127
	}
	o, se := collect(outR), collect(errR)
	cmd := exec.Command("/bin/sh", "-c", command)
	// Files, not writers: exec hands them to the shell as they are and starts no copying of its
	// own that Wait would wait for.
	cmd.Stdout, cmd.Stderr = outW, errW
	cmd.Env = []string{"PATH=/sbin:/usr/sbin:/bin:/usr/bin:/usr/local/bin", "HOME=/root", "TERM=dumb"}
	cmd.Dir = "/"
	err = cmd.Start()
	// Only the shell and its children hold the write ends now.
	outW.Close()
	errW.Close()
	if err == nil {
		err = cmd.Wait()
	}
	stdout, stderr = o.finish(), se.finish()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			status = 128 + int(ws.Signal())
		} else {
			status = exitErr.ExitCode()
		}
	default:
		stderr = fmt.Appendf(stderr, "hbguest: %v\n", err)
		status = 127
	}
	return stdout, stderr, status
}

// collector reads one output pipe of a command into memory.
type collector struct {
	r    *os.File
	buf  bytes.Buffer
	done chan struct{} // closed when the reading has stopped; buf is complete then
}

func collect(r *os.File) *collector {
	c := &collector{r: r, done: make(chan struct{})}
	go c.read()
	return c
}

func (c *collector) read() {
	defer close(c.done)
	b := make([]byte, 64<<10)
	for {
		n, err := c.r.Read(b)
		c.buf.Write(b[:n])
		if errors.Is(err, os.ErrDeadlineExceeded) {
			c.drain(b)
			return
		}
		if err != nil {
			return // EOF: no process holds the pipe any more
		}
	}
}

// drain takes what is in the pipe without waiting for more. The shell has exited, so whatever it
// wrote is in the pipe already; a pipe holds at most its capacity, and reading no more than that
// keeps a background process that writes on and on from holding up the reply.
func (c *collector) drain(b []byte) {
	if err := c.r.SetReadDeadline(time.Time{}); err != nil {
		return
	}
	raw, err := c.r.SyscallConn()
	if err != nil {
		return
	}
	left := len(b)
	_ = raw.Control(func(fd uintptr) {
		if size, err := unix.FcntlInt(fd, unix.F_GETPIPE_SZ, 0); err == nil {
			left = size
		}
	})
	for left > 0 {
		var n int
		var rerr error
		// Returning true makes this one non-blocking read: an empty pipe gives EAGAIN.
		err := raw.Read(func(fd uintptr) bool {
			n, rerr = unix.Read(int(fd), b[:min(len(b), left)])
			return true
		})
		if err != nil || rerr != nil || n <= 0 {
			return
		}
		c.buf.Write(b[:n])
		left -= n
	}
}

// finish ends the reading once the command's shell has exited and returns what was read.
func (c *collector) finish() []byte {
	// The deadline wakes a read waiting on an empty pipe that background processes keep open;
	// read then drains what is left.
	_ = c.r.SetReadDeadline(time.Now())
	<-c.done
	c.r.Close()
	return c.buf.Bytes()
}

// makeRaw turns off every line discipline feature (echo, CR/LF translation, flow control), so the
// bytes the host sends are the bytes the helper reads.
func makeRaw(fd int) error {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return err
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON | unix.IXOFF
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB | unix.CRTSCTS
	t.Cflag |= unix.CS8 | unix.CLOCAL | unix.CREAD
	t.Cc[unix.VMIN] = 1
	t.Cc[unix.VTIME] = 0
	return unix.IoctlSetTermios(fd, unix.TCSETS, t)
}

func udpEcho(port string) error {
	p, err := strconv.Atoi(port)
	if err != nil {
		return fmt.Errorf("bad port %q", port)
	}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{Port: p})
	if err != nil {
		return err
	}
	buf := make([]byte, 2048)
	for {
		n, from, err := conn.ReadFromUDP(buf)
		if err != nil {
			return err
		}
		_, _ = conn.WriteToUDP(buf[:n], from)
	}
}
