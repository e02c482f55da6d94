package inspect

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
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
	// process holds it (TIME_WAIT, kernel sockets) or owners were not asked for.
	PIDs []int `json:"pids,omitempty"`
	// NetNS is the inode of the network namespace the socket is in (/proc/<pid>/ns/net), for a
	// socket of another namespace than the guest's initial one; 0 for the initial one's.
	NetNS uint64 `json:"netns,omitempty"`
}

// Links is what a view needs to resolve symbolic links, e.g. /proc/<pid>/fd/<n>.
type Links interface {
	ReadLink(path string) (string, error)
}

// NetFiles are the files the socket view reads.
var NetFiles = []string{"/proc/net/tcp", "/proc/net/tcp6", "/proc/net/udp", "/proc/net/udp6", "/proc/net/unix"}

// ListSockets reads the socket tables of the guest's initial network namespace and, with owners,
// which processes hold each socket (f must then implement Links). With owners, the sockets of
// other network namespaces are listed too, marked with their namespace: a process holding a
// socket that is in none of the initial namespace's tables is in another namespace, whose tables
// are read through that process (/proc/<pid>/net). What vanished while the owners were read is
// counted in Vanished.
func ListSockets(f Files, owners bool) ([]Socket, Vanished, error) {
	out, err := readSocketTables(f, "/proc/net")
	if err != nil || !owners {
		return out, Vanished{}, err
	}
	l, ok := f.(Links)
	if !ok {
		return nil, Vanished{}, fmt.Errorf("socket owners: %T cannot read symbolic links", f)
	}
	holders, gone, err := SocketHolders(f, l)
	if err != nil {
		return nil, gone, err
	}
	others, err := otherNamespaces(f, l, out, holders, &gone)
	if err != nil {
		return nil, gone, err
	}
	out = append(out, others...)
	for i := range out {
		out[i].PIDs = holders[out[i].Inode]
	}
	return out, gone, nil
}

// readSocketTables reads the tcp, tcp6, udp, udp6 and unix tables of the /proc/net directory dir
// (/proc/net, or /proc/<pid>/net for another namespace).
func readSocketTables(f Files, dir string) ([]Socket, error) {
	var out []Socket
	for _, path := range NetFiles {
		proto := path[len("/proc/net/"):]
		path = dir + "/" + proto
		data, err := f.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		var socks []Socket
		if proto == "unix" {
			socks, err = parseUnix(data)
		} else {
			socks, err = parseInet(proto, data)
		}
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", path, err)
		}
		out = append(out, socks...)
	}
	return out, nil
}

// otherNamespaces reads the socket tables of the network namespaces, other than the initial one,
// of the processes holding sockets that are not in the initial one's tables. A holder that is in
// the initial namespace itself (a descriptor passed across) leaves its socket unlisted: no
// process shows its namespace's tables.
func otherNamespaces(f Files, l Links, initial []Socket, holders map[uint64][]int, gone *Vanished) ([]Socket, error) {
	listed := map[uint64]bool{}
	for _, s := range initial {
		listed[s.Inode] = true
	}
	var pids []int
	for ino, ps := range holders {
		if !listed[ino] {
			pids = append(pids, ps...)
		}
	}
	if len(pids) == 0 {
		return nil, nil
	}
	sort.Ints(pids)
	pids = slices.Compact(pids)
	initNS, err := netNamespace(l, 1)
	if err != nil {
		return nil, err
	}
	var out []Socket
	seen := map[uint64]bool{initNS: true}
	for _, pid := range pids {
		ns, err := netNamespace(l, pid)
		if IsVanished(err) {
			gone.Processes++
			continue
		}
		if err != nil {
			return nil, err
		}
		if seen[ns] {
			continue
		}
		socks, err := readSocketTables(f, "/proc/"+strconv.Itoa(pid)+"/net")
		if IsVanished(err) {
			gone.Processes++
			continue
		}
		if err != nil {
			return nil, err
		}
		seen[ns] = true
		for i := range socks {
			socks[i].NetNS = ns
		}
		out = append(out, socks...)
	}
	return out, nil
}

// netNamespace reads the inode of a process's network namespace from its /proc/<pid>/ns/net link
// ("net:[4026531840]").
func netNamespace(l Links, pid int) (uint64, error) {
	path := "/proc/" + strconv.Itoa(pid) + "/ns/net"
	target, err := l.ReadLink(path)
	if err != nil {
		return 0, fmt.Errorf("read link %s: %w", path, err)
	}
	rest, ok := strings.CutPrefix(target, "net:[")
	num, ok2 := strings.CutSuffix(rest, "]")
	n, err := strconv.ParseUint(num, 10, 64)
	if !ok || !ok2 || err != nil || n == 0 {
		return 0, fmt.Errorf("link %s: %q is not a network namespace", path, target)
	}
	return n, nil
}

// SocketHolders maps socket inodes to the pids holding them, from every /proc/<pid>/fd/<n>
// link of the form socket:[inode]. A process that exits, or a descriptor closed, while being
// read is left out and counted; any other failure fails the whole map.
func SocketHolders(f Files, l Links) (map[uint64][]int, Vanished, error) {
	var gone Vanished
	names, err := f.ReadDir("/proc")
	if err != nil {
		return nil, gone, fmt.Errorf("list /proc: %w", err)
	}
	var pids []int
	for _, n := range names {
		if pid, err := strconv.Atoi(n); err == nil && pid > 0 {
			pids = append(pids, pid) // not /proc/net, /proc/self, ...
		}
	}
	type held struct {
		inodes    []uint64
		vanished  bool
		closedFDs int
	}
	res := make([]held, len(pids))
	err = each(f, len(pids), func(i int, g Files) error {
		gl := l
		if own, ok := g.(Links); ok {
			gl = own // the links of g's machine
		}
		dir := "/proc/" + strconv.Itoa(pids[i]) + "/fd"
		fds, targets, errs, err := readLinkDir(g, gl, dir)
		if IsVanished(err) {
			res[i] = held{vanished: true}
			return nil
		}
		if err != nil {
			return err // it names what it stopped in
		}
		var h held
		for k, fd := range fds {
			target, err := targets[k], errs[k]
			if IsVanished(err) {
				h.closedFDs++
				continue
			}
			if err != nil {
				return fmt.Errorf("read link %s/%s: %w", dir, fd, err)
			}
			ino, ok, err := socketInode(target)
			if err != nil {
				return fmt.Errorf("link %s/%s: %w", dir, fd, err)
			}
			if ok {
				h.inodes = append(h.inodes, ino)
			}
		}
		res[i] = h
		return nil
	})
	if err != nil {
		return nil, gone, err
	}
	out := map[uint64][]int{}
	for i, h := range res {
		if h.vanished {
			gone.Processes++
			continue
		}
		gone.Descriptors += h.closedFDs
		for _, ino := range h.inodes {
			if !slices.Contains(out[ino], pids[i]) {
				out[ino] = append(out[ino], pids[i])
			}
		}
	}
	for _, pids := range out {
		sort.Ints(pids)
	}
	return out, gone, nil
}

// LinkDir lists a directory of symbolic links and reads them all in one operation: the SVM
// starts each operation from a reset machine, so a process's descriptors cost one reset instead
// of one per descriptor and one for the listing. err is the listing's failure (the directory
// vanished), or one that failed the whole operation, naming what it stopped in; errs[i] is link
// i's own.
type LinkDir interface {
	ReadLinkDir(dir string) (names, targets []string, errs []error, err error)
}

// readLinkDir lists dir and reads its links, in one operation where l can.
func readLinkDir(f Files, l Links, dir string) (names, targets []string, errs []error, err error) {
	if ld, ok := l.(LinkDir); ok {
		return ld.ReadLinkDir(dir)
	}
	if names, err = f.ReadDir(dir); err != nil {
		return nil, nil, nil, fmt.Errorf("list %s: %w", dir, err)
	}
	targets, errs = make([]string, len(names)), make([]error, len(names))
	for i, n := range names {
		targets[i], errs[i] = l.ReadLink(dir + "/" + n)
		if errs[i] != nil && !IsVanished(errs[i]) {
			return names[:i+1], targets[:i+1], errs[:i+1], nil // the caller fails on it
		}
	}
	return names, targets, errs, nil
}

// socketInode reads a descriptor's link target: whether it is a socket, and its inode.
func socketInode(target string) (uint64, bool, error) {
	rest, ok := strings.CutPrefix(target, "socket:[")
	if !ok {
		return 0, false, nil
	}
	num, ok := strings.CutSuffix(rest, "]")
	n, err := strconv.ParseUint(num, 10, 64)
	if !ok || err != nil {
		return 0, false, fmt.Errorf("socket link %q", target)
	}
	return n, true, nil
}

// tcpStates are the st column's values (include/net/tcp_states.h).
var tcpStates = map[uint64]string{
	1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
	7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV",
}

// parseInet parses /proc/net/{tcp,tcp6,udp,udp6}: after "sl:", local and remote address:port in
// hex, st, tx_queue:rx_queue, tr:tm->when, retrnsmt, uid, timeout, inode.
func parseInet(proto string, data []byte) ([]Socket, error) {
	lines, err := tableLines(data, "local_address")
	if err != nil {
		return nil, err
	}
	var out []Socket
	for i, line := range lines {
		s, err := parseInetLine(proto, line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+2, err)
		}
		out = append(out, s)
	}
	return out, nil
}

// tableLines splits a /proc/net table into its rows, checking the header: a file without it was
// not produced whole.
func tableLines(data []byte, header string) ([]string, error) {
	s, ok := strings.CutSuffix(string(data), "\n")
	if !ok {
		return nil, errors.New("no final newline")
	}
	lines := strings.Split(s, "\n")
	if !strings.Contains(lines[0], header) {
		return nil, fmt.Errorf("header %.60q", lines[0])
	}
	return lines[1:], nil
}

func parseInetLine(proto, line string) (Socket, error) {
	f := strings.Fields(line)
	if len(f) < 10 || !strings.HasSuffix(f[0], ":") {
		return Socket{}, fmt.Errorf("%d fields in %.80q", len(f), line)
	}
	s := Socket{Proto: proto}
	var err error
	if s.Local, err = hexAddrPort(f[1]); err != nil {
		return Socket{}, fmt.Errorf("local address: %w", err)
	}
	if s.Remote, err = hexAddrPort(f[2]); err != nil {
		return Socket{}, fmt.Errorf("remote address: %w", err)
	}
	st, err := strconv.ParseUint(f[3], 16, 8)
	if err != nil {
		return Socket{}, fmt.Errorf("state %q", f[3])
	}
	s.State = tcpStates[st]
	if strings.HasPrefix(proto, "udp") {
		// UDP reuses TCP's numbers: ESTABLISHED when connected, CLOSE otherwise.
		s.State = udpStates[st]
	}
	if s.State == "" && !(strings.HasPrefix(proto, "udp") && st == tcpClose) {
		s.State = "UNKNOWN(" + f[3] + ")"
	}
	tx, rx, ok := strings.Cut(f[4], ":")
	if !ok {
		return Socket{}, fmt.Errorf("queues %q", f[4])
	}
	if s.TxQueue, err = strconv.ParseUint(tx, 16, 64); err != nil {
		return Socket{}, fmt.Errorf("tx_queue %q", tx)
	}
	if s.RxQueue, err = strconv.ParseUint(rx, 16, 64); err != nil {
		return Socket{}, fmt.Errorf("rx_queue %q", rx)
	}
	if s.UID, err = strconv.Atoi(f[7]); err != nil {
		return Socket{}, fmt.Errorf("uid %q", f[7])
	}
	if s.Inode, err = strconv.ParseUint(f[9], 10, 64); err != nil {
		return Socket{}, fmt.Errorf("inode %q", f[9])
	}
	return s, nil
}

// tcpClose is TCP_CLOSE, the state of an unconnected UDP socket (shown blank, as netstat does).
const tcpClose = 7

var udpStates = map[uint64]string{1: "ESTABLISHED", tcpClose: ""}

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
	if err != nil || len(p) != 4 {
		return "", fmt.Errorf("port %q", p)
	}
	addr, ok := netip.AddrFromSlice(raw)
	if !ok {
		return "", fmt.Errorf("%q", s)
	}
	return netip.AddrPortFrom(addr, uint16(port)).String(), nil
}

var unixTypes = map[uint64]string{1: "STREAM", 2: "DGRAM", 5: "SEQPACKET"}
var unixStates = map[uint64]string{0: "FREE", 1: "UNCONNECTED", 2: "CONNECTING", 3: "CONNECTED", 4: "DISCONNECTING"}

// unixListening is __SO_ACCEPTCON in the Flags column.
const unixListening = 1 << 16

// parseUnix parses /proc/net/unix: "Num: RefCount Protocol Flags Type St Inode [Path]".
func parseUnix(data []byte) ([]Socket, error) {
	lines, err := tableLines(data, "RefCount")
	if err != nil {
		return nil, err
	}
	var out []Socket
	for i, line := range lines {
		s, err := parseUnixLine(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+2, err)
		}
		out = append(out, s)
	}
	return out, nil
}

// parseUnixLine reads one socket. The path is the rest of the line after one space (unix_seq_show
// prints it raw, spaces included; an abstract name starts with '@').
func parseUnixLine(line string) (Socket, error) {
	f, path, err := leadingFields(line, 7)
	if err != nil || !strings.HasSuffix(f[0], ":") {
		return Socket{}, fmt.Errorf("%.80q", line)
	}
	var vals [6]uint64
	for j, base := range []int{16, 16, 16, 16, 16, 10} {
		v, err := strconv.ParseUint(f[j+1], base, 64)
		if err != nil {
			return Socket{}, fmt.Errorf("field %d %q", j+2, f[j+1])
		}
		vals[j] = v
	}
	s := Socket{Proto: "unix", Local: path, Refs: int(vals[0]), Flags: uint32(vals[2]), Inode: vals[5]}
	s.Type = unixTypes[vals[3]]
	if s.Type == "" {
		s.Type = "UNKNOWN(" + f[4] + ")"
	}
	s.State = unixStates[vals[4]]
	if s.State == "" {
		s.State = "UNKNOWN(" + f[5] + ")"
	}
	if s.Flags&unixListening != 0 {
		s.State = "LISTENING"
	}
	return s, nil
}

// leadingFields splits the first n space-separated fields off line and returns them and what
// follows the single space after the last one ("" when the line ends there).
func leadingFields(line string, n int) ([]string, string, error) {
	f := make([]string, 0, n)
	rest := line
	for len(f) < n {
		rest = strings.TrimLeft(rest, " ")
		end := strings.IndexByte(rest, ' ')
		if end < 0 {
			end = len(rest)
		}
		if end == 0 {
			return nil, "", fmt.Errorf("%d fields", len(f))
		}
		f = append(f, rest[:end])
		rest = rest[end:]
	}
	if rest == "" {
		return f, "", nil
	}
	return f, rest[1:], nil
}
