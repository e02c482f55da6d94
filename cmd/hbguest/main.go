// Command hbguest is the small static helper that runs inside hybridbridge's demo guests. It is
// built with CGO_ENABLED=0 by scripts/setup.sh and copied into the guest's initramfs.
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
	"syscall"

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

// serve answers commands one at a time; the host serialises them anyway, and running them in
// order keeps replies from interleaving on the single serial line.
func serve(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := makeRaw(int(f.Fd())); err != nil {
		return fmt.Errorf("raw mode on %s: %w", dev, err)
	}
	out := bufio.NewWriterSize(f, 64<<10)
	in := bufio.NewReaderSize(f, 1<<20)
	for {
		line, err := in.ReadString('\n')
		if err != nil {
			return fmt.Errorf("read %s: %w", dev, err)
		}
		id, command, ok := wire.ParseCommand(line[:len(line)-1])
		if !ok {
			continue
		}
		stdout, stderr, status := run(command)
		if err := wire.WriteReply(out, id, stdout, stderr, status); err != nil {
			return err
		}
		if err := out.Flush(); err != nil {
			return fmt.Errorf("write %s: %w", dev, err)
		}
	}
}

func run(command string) (stdout, stderr []byte, status int) {
	var o, e bytes.Buffer
	cmd := exec.Command("/bin/sh", "-c", command)
	cmd.Stdout, cmd.Stderr = &o, &e
	cmd.Env = []string{"PATH=/sbin:/usr/sbin:/bin:/usr/bin:/usr/local/bin", "HOME=/root", "TERM=dumb"}
	cmd.Dir = "/"
	err := cmd.Run()
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
		fmt.Fprintf(&e, "hbguest: %v\n", err)
		status = 127
	}
	return o.Bytes(), e.Bytes(), status
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
