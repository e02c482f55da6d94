package inspect

import (
	"reflect"
	"testing"
)

// The views compare with the guest through the same parsers, so a parser bug would hide on both
// sides: these pin the parsers to lines as the 6.1 kernel prints them.

func TestParseModules(t *testing.T) {
	got, err := ParseModules([]byte("veth 36864 0 - Live 0xffffffffc0221000\nloop 32768 2 dm_mod,tun, Unloading 0x0000000000000000 (OE)\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Module{
		{Name: "veth", Size: 36864, Users: []string{}, State: "Live", Addr: 0xffffffffc0221000},
		{Name: "loop", Size: 32768, Refs: 2, Users: []string{"dm_mod", "tun"}, State: "Unloading", Taint: "OE"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v", got)
	}
}

func TestParseInet(t *testing.T) {
	tcp := "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" +
		"   0: 0100007F:C646 0100007F:1B59 01 00000002:00000010 00:00000000 00000000  1000        0 10270 2 (____ptrval____) 20 0 0 10 -1\n"
	got, err := parseInet("tcp", []byte(tcp))
	if err != nil {
		t.Fatal(err)
	}
	want := Socket{Proto: "tcp", Local: "127.0.0.1:50758", Remote: "127.0.0.1:7001", State: "ESTABLISHED", TxQueue: 2, RxQueue: 16, UID: 1000, Inode: 10270}
	if len(got) != 1 || !reflect.DeepEqual(got[0], want) {
		t.Fatalf("got %+v", got)
	}
	tcp6 := "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" +
		"   0: 0000000000000000FFFF00000100007F:1B59 0000000000000000FFFF00000100007F:C646 0A 00000000:00000000 00:00000000 00000000     0        0 10222 1 0 20 4 30 10 -1\n"
	got, err = parseInet("tcp6", []byte(tcp6))
	if err != nil || got[0].Local != "[::ffff:127.0.0.1]:7001" || got[0].State != "LISTEN" {
		t.Fatalf("got %+v, %v", got, err)
	}
}

func TestParseUnix(t *testing.T) {
	got, err := parseUnix([]byte("Num       RefCount Protocol Flags    Type St Inode Path\n" +
		"0000000000000000: 00000002 00000000 00010000 0001 01 10206 /run/a b\n" +
		"0000000000000000: 00000003 00000000 00000000 0002 03 10207\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Socket{
		{Proto: "unix", Local: "/run/a b", State: "LISTENING", Inode: 10206, Type: "STREAM", Refs: 2, Flags: 1 << 16},
		{Proto: "unix", State: "CONNECTED", Inode: 10207, Type: "DGRAM", Refs: 3},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v", got)
	}
}

func TestParseSyslogAndKmsg(t *testing.T) {
	got, err := ParseSyslog([]byte("<6>[    1.883496] clocksource: Switched\n<12>[   12.000001] user: x\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []LogLine{{Level: 6, Micros: 1883496, Text: "clocksource: Switched"}, {Level: 4, Facility: 1, Micros: 12000001, Text: "user: x"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v", got)
	}
	if s := unescapeHex(`a\x0ab\x5c`); s != "a\nb\\" {
		t.Fatalf("unescape: %q", s)
	}
}

func TestLocalIPv4AndRoutes(t *testing.T) {
	trie := "Main:\n  +-- 10.77.0.0/24 2 0 2\n     |-- 10.77.0.1\n        /32 host LOCAL\nLocal:\n  +-- 10.77.0.0/24 2 0 2\n     |-- 10.77.0.1\n        /32 host LOCAL\n     |-- 10.77.0.255\n        /32 link BROADCAST\n"
	addrs := localIPv4([]byte(trie))
	if len(addrs) != 1 || addrs[0].String() != "10.77.0.1" {
		t.Fatalf("local addresses %v", addrs)
	}
	routes, err := parseRoutes([]byte("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n" +
		"dummy0\t00004D0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n" +
		"eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"))
	if err != nil || len(routes) != 1 || routes[0].dev != "dummy0" || routes[0].prefix.String() != "10.77.0.0/24" {
		t.Fatalf("routes %+v, %v", routes, err)
	}
}
