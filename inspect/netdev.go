package inspect

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// Neighbour is one row of the ARP table (/proc/net/arp).
type Neighbour struct {
	IP     string `json:"ip"`
	HWType string `json:"hw_type"`
	Flags  string `json:"flags"`
	HWAddr string `json:"hw_addr"`
	Mask   string `json:"mask"`
	Device string `json:"device"`
}

// ListNeighbours reads /proc/net/arp.
func ListNeighbours(f Files) ([]Neighbour, error) {
	data, err := f.ReadFile("/proc/net/arp")
	if err != nil {
		return nil, fmt.Errorf("read /proc/net/arp: %w", err)
	}
	out, err := parseArp(data)
	if err != nil {
		return nil, fmt.Errorf("parse /proc/net/arp: %w", err)
	}
	return out, nil
}

func parseArp(data []byte) ([]Neighbour, error) {
	lines, err := tableLines(data, "HW address")
	if err != nil {
		return nil, err
	}
	out := []Neighbour{}
	for i, line := range lines {
		c := strings.Fields(line)
		if len(c) != 6 {
			return nil, fmt.Errorf("line %d: %q", i+2, line)
		}
		out = append(out, Neighbour{c[0], c[1], c[2], c[3], c[4], c[5]})
	}
	return out, nil
}

// Interface is one network interface with its counters (/proc/net/dev) and addresses: IPv6 from
// /proc/net/if_inet6; IPv4 from the local routing table (/proc/net/fib_trie), assigned to an
// interface only where the main routing table (/proc/net/route) has a route through it that
// covers the address — procfs names no interface for IPv4 addresses, so an address no route
// explains is listed under Unassigned by ListInterfaces, not guessed.
type Interface struct {
	Name      string   `json:"name"`
	RxBytes   uint64   `json:"rx_bytes"`
	RxPackets uint64   `json:"rx_packets"`
	RxErrors  uint64   `json:"rx_errors"`
	RxDropped uint64   `json:"rx_dropped"`
	TxBytes   uint64   `json:"tx_bytes"`
	TxPackets uint64   `json:"tx_packets"`
	TxErrors  uint64   `json:"tx_errors"`
	TxDropped uint64   `json:"tx_dropped"`
	IPv4      []string `json:"ipv4"`
	IPv6      []string `json:"ipv6"` // address/prefix
}

// Interfaces is the ifconfig view.
type Interfaces struct {
	Interfaces []Interface `json:"interfaces"`
	Unassigned []string    `json:"unassigned_ipv4"` // local IPv4 addresses no route places
}

// InterfaceFiles are the files ListInterfaces reads.
var InterfaceFiles = []string{"/proc/net/dev", "/proc/net/if_inet6", "/proc/net/fib_trie", "/proc/net/route"}

// ListInterfaces reads the interface files.
func ListInterfaces(f Files) (Interfaces, error) {
	var files [4][]byte
	for i, p := range InterfaceFiles {
		data, err := f.ReadFile(p)
		if err != nil {
			return Interfaces{}, fmt.Errorf("read %s: %w", p, err)
		}
		files[i] = data
	}
	var out Interfaces
	var err error
	if out.Interfaces, err = parseNetDev(files[0]); err != nil {
		return Interfaces{}, fmt.Errorf("parse /proc/net/dev: %w", err)
	}
	byName := map[string]*Interface{}
	for i := range out.Interfaces {
		byName[out.Interfaces[i].Name] = &out.Interfaces[i]
	}
	v6, err := parseIfInet6(files[1])
	if err != nil {
		return Interfaces{}, fmt.Errorf("parse /proc/net/if_inet6: %w", err)
	}
	for _, a := range v6 {
		it := byName[a.dev]
		if it == nil {
			return Interfaces{}, fmt.Errorf("/proc/net/if_inet6 names %q, which /proc/net/dev does not list", a.dev)
		}
		it.IPv6 = append(it.IPv6, a.prefix.String())
	}
	routes, err := parseRoutes(files[3])
	if err != nil {
		return Interfaces{}, fmt.Errorf("parse /proc/net/route: %w", err)
	}
	local, err := localIPv4(files[2])
	if err != nil {
		return Interfaces{}, fmt.Errorf("parse /proc/net/fib_trie: %w", err)
	}
	for _, a := range local {
		dev := ""
		for _, r := range routes {
			if r.prefix.Contains(a) {
				dev = r.dev
			}
		}
		if it := byName[dev]; it != nil {
			it.IPv4 = append(it.IPv4, a.String())
		} else {
			out.Unassigned = append(out.Unassigned, a.String())
		}
	}
	for i := range out.Interfaces {
		sort.Strings(out.Interfaces[i].IPv4)
		sort.Strings(out.Interfaces[i].IPv6)
	}
	if out.Unassigned == nil {
		out.Unassigned = []string{}
	}
	sort.Strings(out.Unassigned)
	return out, nil
}

// parseNetDev reads /proc/net/dev: two header lines, then "name: 8 receive and 8 transmit
// counters" per interface (dev_seq_printf_stats in net/core/net-procfs.c).
func parseNetDev(data []byte) ([]Interface, error) {
	lines, err := tableLines(data, "Inter-|")
	if err != nil {
		return nil, err
	}
	if len(lines) == 0 || !strings.Contains(lines[0], "face |") {
		return nil, errors.New("no second header line")
	}
	var out []Interface
	for i, line := range lines[1:] {
		name, rest, ok := strings.Cut(line, ":")
		c := strings.Fields(rest)
		if !ok || len(c) != 16 || strings.TrimSpace(name) == "" {
			return nil, fmt.Errorf("line %d: %q", i+3, line)
		}
		var v [16]uint64
		for j := range c {
			n, err := strconv.ParseUint(c[j], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("line %d: column %d %q", i+3, j+2, c[j])
			}
			v[j] = n
		}
		out = append(out, Interface{Name: strings.TrimSpace(name),
			RxBytes: v[0], RxPackets: v[1], RxErrors: v[2], RxDropped: v[3],
			TxBytes: v[8], TxPackets: v[9], TxErrors: v[10], TxDropped: v[11],
			IPv4: []string{}, IPv6: []string{}})
	}
	return out, nil
}

type ifAddr6 struct {
	dev    string
	prefix netip.Prefix
}

// parseIfInet6 reads /proc/net/if_inet6: "address ifindex prefixlen scope flags name" per
// address, the address as 32 hex digits in network order (unlike /proc/net/tcp6), the numbers
// in hex. It is empty when no interface has an IPv6 address.
func parseIfInet6(data []byte) ([]ifAddr6, error) {
	if len(data) == 0 {
		return nil, nil
	}
	text, ok := strings.CutSuffix(string(data), "\n")
	if !ok {
		return nil, errors.New("no final newline")
	}
	var out []ifAddr6
	for i, line := range strings.Split(text, "\n") {
		c := strings.Fields(line)
		if len(c) != 6 || len(c[0]) != 32 {
			return nil, fmt.Errorf("line %d: %q", i+1, line)
		}
		raw, err := hex.DecodeString(c[0])
		if err != nil {
			return nil, fmt.Errorf("line %d: address %q", i+1, c[0])
		}
		plen, err := strconv.ParseUint(c[2], 16, 8)
		if err != nil || plen > 128 {
			return nil, fmt.Errorf("line %d: prefix length %q", i+1, c[2])
		}
		out = append(out, ifAddr6{c[5], netip.PrefixFrom(netip.AddrFrom16([16]byte(raw)), int(plen))})
	}
	return out, nil
}

// rtfGateway is RTF_GATEWAY in /proc/net/route's Flags column.
const rtfGateway = 0x2

type route struct {
	dev    string
	prefix netip.Prefix
}

// parseRoutes reads the connected routes of /proc/net/route (Iface, Destination, Flags and Mask,
// in host-order hex), least specific first.
func parseRoutes(data []byte) ([]route, error) {
	lines, err := tableLines(data, "Destination")
	if err != nil {
		return nil, err
	}
	var out []route
	for i, line := range lines {
		c := strings.Fields(line)
		if len(c) != 11 {
			return nil, fmt.Errorf("line %d: %q", i+2, line)
		}
		dst, err1 := strconv.ParseUint(c[1], 16, 32)
		flags, err2 := strconv.ParseUint(c[3], 16, 32)
		mask, err3 := strconv.ParseUint(c[7], 16, 32)
		if err1 != nil || err2 != nil || err3 != nil {
			return nil, fmt.Errorf("line %d: %q", i+2, line)
		}
		if flags&rtfGateway != 0 || mask == 0 {
			continue // only connected routes say which interface's subnet an address is in
		}
		d := netip.AddrFrom4([4]byte{byte(dst), byte(dst >> 8), byte(dst >> 16), byte(dst >> 24)})
		m := uint32(mask)
		bits := 0
		for m != 0 {
			bits += int(m & 1)
			m >>= 1
		}
		out = append(out, route{c[0], netip.PrefixFrom(d, bits)})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].prefix.Bits() < out[j].prefix.Bits() })
	return out, nil
}

// localIPv4 lists the host's own addresses in fib_trie's Local table: a leaf followed by a
// "/32 host LOCAL" line.
func localIPv4(data []byte) ([]netip.Addr, error) {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	var last netip.Addr
	inLocal := false
	for i, line := range strings.Split(string(data), "\n") {
		t := strings.TrimSpace(line)
		switch {
		case t == "Local:":
			inLocal = true
		case t == "Main:":
			inLocal = false
		case strings.HasPrefix(t, "|-- "):
			a, err := netip.ParseAddr(strings.TrimPrefix(t, "|-- "))
			if err != nil || !a.Is4() {
				return nil, fmt.Errorf("line %d: leaf %q", i+1, t)
			}
			last = a
		case inLocal && t == "/32 host LOCAL" && last.IsValid() && !seen[last]:
			seen[last] = true
			out = append(out, last)
		}
	}
	return out, nil
}
