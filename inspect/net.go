package inspect

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// Socket is one row of netstat: an inet socket from /proc/net/{tcp,tcp6,udp,udp6} or a Unix
// socket from /proc/net/unix. Kernel pointers and timers in those files are left out: pointers
// are hashed with a per-boot key, and timers count down while the guest runs.
type Socket struct {
	Proto   string `json:"proto"` // tcp, tcp6, udp, udp6, unix
	Local   string `json:"local"` // address:port, or the path of a Unix socket
	Remote  string `json:"remote,omitempty"`
	State   string `json:"state"`
	TxQueue uint64 `json:"tx_queue"`
	RxQueue uint64 `json:"rx_queue"`
	UID     int    `json:"uid"`
	Inode   uint64 `json:"inode"`
	Type    string `json:"type,omitempty"` // Unix: STREAM, DGRAM, SEQPACKET
	Refs    int    `json:"refs,omitempty"` // Unix: reference count
	Flags   uint32 `json:"flags,omitempty"`
	// PIDs hold the socket open, from /proc/<pid>/fd links (socket:[inode]); empty when no
	// process holds it (TIME_WAIT, kernel sockets) or the links were not read.
	PIDs []int `json:"pids,omitempty"`
}

// Links is what a view needs to resolve symbolic links, e.g. /proc/<pid>/fd/<n>.
type Links interface {
	ReadLink(path string) (string, error)
}

// NetFiles are the files the socket view reads.
var NetFiles = []string{"/proc/net/tcp", "/proc/net/tcp6", "/proc/net/udp", "/proc/net/udp6", "/proc/net/unix"}

// ListSockets reads the socket tables and, with owners, which processes hold each socket.
func ListSockets(f Files, owners bool) ([]Socket, error) {
	var out []Socket
	for _, path := range NetFiles {
		data, err := f.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		proto := path[len("/proc/net/"):]
		var socks []Socket
		if proto == "unix" {
			socks, err = parseUnix(data)
		} else {
			socks, err = parseInet(proto, data)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, socks...)
	}
	if owners {
		if l, ok := f.(Links); ok {
			holders, err := SocketHolders(f, l)
			if err != nil {
				return nil, err
			}
			for i := range out {
				out[i].PIDs = holders[out[i].Inode]
			}
		}
	}
	return out, nil
}

// SocketHolders maps socket inodes to the pids holding them, from every /proc/<pid>/fd/<n>
// link of the form socket:[inode]. A process that exits while being read is skipped.
func SocketHolders(f Files, l Links) (map[uint64][]int, error) {
	names, err := f.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list /proc: %w", err)
	}
	out := map[uint64][]int{}
	for _, n := range names {
		pid, err := strconv.Atoi(n)
		if err != nil || pid <= 0 {
			continue
		}
		dir := "/proc/" + n + "/fd"
		fds, err := f.ReadDir(dir)
		if err != nil {
			continue // a kernel thread's fd directory, or the process is gone
		}
		for _, fd := range fds {
			target, err := l.ReadLink(dir + "/" + fd)
			if err != nil {
				continue
			}
			ino, ok := socketInode(target)
			if ok && !containsInt(out[ino], pid) {
				out[ino] = append(out[ino], pid)
			}
		}
	}
	for _, pids := range out {
		sort.Ints(pids)
	}
	return out, nil
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func socketInode(target string) (uint64, bool) {
	rest, ok := strings.CutPrefix(target, "socket:[")
	if !ok || !strings.HasSuffix(rest, "]") {
		return 0, false
	}
	n, err := strconv.ParseUint(strings.TrimSuffix(rest, "]"), 10, 64)
	return n, err == nil
}

// tcpStates are the st column's values (include/net/tcp_states.h).
var tcpStates = map[uint64]string{
	1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
	7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV",
}

// parseInet parses /proc/net/{tcp,tcp6,udp,udp6}: after "sl:", local and remote address:port in
// hex, st, tx_queue:rx_queue, tr:tm->when, retrnsmt, uid, timeout, inode.
func parseInet(proto string, data []byte) ([]Socket, error) {
	var out []Socket
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	for i, line := range lines[1:] {
		f := strings.Fields(line)
		if len(f) < 10 {
			return nil, fmt.Errorf("line %d: %d fields", i+2, len(f))
		}
		s := Socket{Proto: proto}
		var err error
		if s.Local, err = hexAddrPort(f[1]); err != nil {
			return nil, fmt.Errorf("line %d: local address: %w", i+2, err)
		}
		if s.Remote, err = hexAddrPort(f[2]); err != nil {
			return nil, fmt.Errorf("line %d: remote address: %w", i+2, err)
		}
		st, err := strconv.ParseUint(f[3], 16, 8)
		if err != nil {
			return nil, fmt.Errorf("line %d: state %q", i+2, f[3])
		}
		s.State = tcpStates[st]
		if s.State == "" {
			s.State = "UNKNOWN(" + f[3] + ")"
		}
		if strings.HasPrefix(proto, "udp") {
			// UDP reuses TCP's numbers: ESTABLISHED when connected, CLOSE otherwise.
			s.State = map[uint64]string{1: "ESTABLISHED", 7: ""}[st]
		}
		tx, rx, ok := strings.Cut(f[4], ":")
		if !ok {
			return nil, fmt.Errorf("line %d: queues %q", i+2, f[4])
		}
		if s.TxQueue, err = strconv.ParseUint(tx, 16, 64); err != nil {
			return nil, fmt.Errorf("line %d: tx_queue %q", i+2, tx)
		}
		if s.RxQueue, err = strconv.ParseUint(rx, 16, 64); err != nil {
			return nil, fmt.Errorf("line %d: rx_queue %q", i+2, rx)
		}
		if s.UID, err = strconv.Atoi(f[7]); err != nil {
			return nil, fmt.Errorf("line %d: uid %q", i+2, f[7])
		}
		if s.Inode, err = strconv.ParseUint(f[9], 10, 64); err != nil {
			return nil, fmt.Errorf("line %d: inode %q", i+2, f[9])
		}
		out = append(out, s)
	}
	return out, nil
}

// hexAddrPort decodes "0100007F:1F90" (IPv4) or 32 hex digits (IPv6): the address as the
// kernel's 32-bit words printed in host (little-endian) order, the port in network order.
func hexAddrPort(s string) (string, error) {
	a, p, ok := strings.Cut(s, ":")
	if !ok || (len(a) != 8 && len(a) != 32) {
		return "", fmt.Errorf("%q", s)
	}
	raw, err := hex.DecodeString(a)
	if err != nil {
		return "", fmt.Errorf("%q", s)
	}
	for w := 0; w < len(raw); w += 4 {
		raw[w], raw[w+1], raw[w+2], raw[w+3] = raw[w+3], raw[w+2], raw[w+1], raw[w]
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return "", fmt.Errorf("port %q", p)
	}
	addr, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(addr, uint16(port)).String(), nil
}

var unixTypes = map[uint64]string{1: "STREAM", 2: "DGRAM", 5: "SEQPACKET"}
var unixStates = map[uint64]string{0: "FREE", 1: "UNCONNECTED", 2: "CONNECTING", 3: "CONNECTED", 4: "DISCONNECTING"}

// unixListening is __SO_ACCEPTCON in the Flags column.
const unixListening = 1 << 16

// parseUnix parses /proc/net/unix: "Num: RefCount Protocol Flags Type St Inode [Path]".
func parseUnix(data []byte) ([]Socket, error) {
	var out []Socket
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	for i, line := range lines[1:] {
		f := strings.Fields(line)
		if len(f) < 7 {
			return nil, fmt.Errorf("line %d: %d fields", i+2, len(f))
		}
		s := Socket{Proto: "unix"}
		var vals [6]uint64
		for j, base := range []int{16, 16, 16, 16, 16, 10} {
			v, err := strconv.ParseUint(f[j+1], base, 64)
			if err != nil {
				return nil, fmt.Errorf("line %d: field %d %q", i+2, j+2, f[j+1])
			}
			vals[j] = v
		}
		s.Refs, s.Flags, s.Inode = int(vals[0]), uint32(vals[2]), vals[5]
		s.Type = unixTypes[vals[3]]
		s.State = unixStates[vals[4]]
		if s.Flags&unixListening != 0 {
			s.State = "LISTENING"
		}
		if len(f) > 7 {
			s.Local = strings.Join(f[7:], " ")
		}
		out = append(out, s)
	}
	return out, nil
}
