package inspect

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// The views compare with the guest through the same parsers, so a parser bug would hide on both
// sides: these pin the parsers to files as the 6.1 kernel printed them (testdata/README says how
// they were captured). The expected values are read off the captured lines by hand. Each table
// also holds lines a parser must reject: a view never shows a zero for what it could not read.

// testdata returns a captured file.
func testdata(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// cut returns data without its last n bytes: a file cut short.
func cut(data []byte, n int) []byte { return data[:len(data)-n] }

// parseCase is one input for a parser: want is the result, or nil when the input must be
// rejected.
type parseCase struct {
	name string
	in   []byte
	want any
}

// checkParse runs parse over the cases.
func checkParse[T any](t *testing.T, cases []parseCase, parse func([]byte) (T, error)) {
	t.Helper()
	for _, c := range cases {
		got, err := parse(c.in)
		switch {
		case c.want == nil && err == nil:
			t.Errorf("%s: accepted %.80q as %+v", c.name, c.in, got)
		case c.want == nil:
			t.Logf("%s: rejected: %v", c.name, err)
		case err != nil:
			t.Errorf("%s: %v", c.name, err)
		case !reflect.DeepEqual(got, c.want):
			t.Errorf("%s:\n got  %+v\n want %+v", c.name, got, c.want)
		}
	}
}

func TestParseStat(t *testing.T) {
	type stat struct {
		PID, PPID      int
		State, Comm    string
		Kernel         bool
		StartTicks     uint64
		ArgLen, EnvLen uint64
	}
	parse := func(pid int) func([]byte) (stat, error) {
		return func(data []byte) (stat, error) {
			p := Process{PID: pid}
			err := p.parseStat(data)
			return stat{p.PID, p.PPID, p.State, p.Comm, p.Kernel, p.StartTicks, p.argLen, p.envLen}, err
		}
	}
	init1 := testdata(t, "stat-1")
	checkParse(t, []parseCase{
		// flags 4194560 = 0x400100: no PF_KTHREAD; arg area 140732959260575..586, environment
		// ..586..653.
		{"init", init1, stat{1, 0, "S", "init", false, 51, 11, 67}},
		{"init cut short", cut(init1, 1), nil},
		{"init without comm's parenthesis", bytes.Replace(init1, []byte("(init)"), []byte("(init"), 1), nil},
		{"init with too few fields", []byte("1 (init) S 0 1 1 0 -1 4194560\n"), nil},
		{"init with a bad ppid", bytes.Replace(init1, []byte(") S 0 "), []byte(") S x "), 1), nil},
		{"init with a bad state", bytes.Replace(init1, []byte(") S "), []byte(") SS "), 1), nil},
	}, parse(1))
	checkParse(t, []parseCase{
		// flags 2129984 = 0x208040: PF_KTHREAD; no user memory, so no argument area.
		{"kthreadd", testdata(t, "stat-2"), stat{2, 0, "S", "kthreadd", true, 51, 0, 0}},
	}, parse(2))
	checkParse(t, []parseCase{
		// comm "a) (b c" ends at the last ')'.
		{"a) (b c", testdata(t, "stat-odd"), stat{175, 1, "S", "a) (b c", false, 2053, 21, 85}},
		{"the stat of another pid", init1, nil},
	}, parse(175))
}

func TestParseStatus(t *testing.T) {
	type status struct{ UID, Threads, RSSKiB int }
	parse := func(data []byte) (status, error) {
		var p Process
		// The file's own Pid line, which NSpid's first entry must equal.
		if _, rest, ok := bytes.Cut(data, []byte("\nPid:\t")); ok {
			p.PID, _ = strconv.Atoi(string(rest[:bytes.IndexByte(rest, '\n')]))
		}
		err := p.parseStatus(data)
		return status{p.UID, p.Threads, p.RSSKiB}, err
	}
	init1 := testdata(t, "status-1")
	checkParse(t, []parseCase{
		{"init", init1, status{0, 1, 12}},
		{"kthreadd (no VmRSS line)", testdata(t, "status-2"), status{0, 1, 0}},
		{"a) (b c", testdata(t, "status-odd"), status{0, 1, 4}},
		{"the analyst's sleeper", testdata(t, "status-analyst"), status{1000, 1, 4}},
		{"init cut short", cut(init1, 1), nil},
		{"init cut before Threads", init1[:bytes.Index(init1, []byte("Threads:"))], nil},
		{"init with a bad Uid", bytes.Replace(init1, []byte("Uid:\t0"), []byte("Uid:\tx"), 1), nil},
		{"init with an empty VmRSS", bytes.Replace(init1, []byte("VmRSS:\t      12 kB"), []byte("VmRSS:\t"), 1), nil},
		{"a line without a colon", append(bytes.Clone(init1), "garbage\n"...), nil},
	}, parse)
}

// CPU time (utime + stime) and the PIDs in nested PID namespaces, from the Debian guest's process
// in its own PID namespace and from the demo's init, which is in none.
func TestParseCPUTimeAndNSpid(t *testing.T) {
	type fields struct {
		CPUTicks uint64
		NSPIDs   []int
	}
	parse := func(pid int) func([]byte) (fields, error) {
		return func(status []byte) (fields, error) {
			p := Process{PID: pid}
			stat := testdata(t, "stat-nsproc")
			if pid == 1 {
				stat = testdata(t, "stat-1")
			}
			if err := p.parseStat(stat); err != nil {
				return fields{}, err
			}
			err := p.parseStatus(status)
			return fields{p.CPUTicks, p.NSPIDs}, err
		}
	}
	ns := testdata(t, "status-nsproc")
	checkParse(t, []parseCase{
		// utime 2, stime 2; "NSpid:\t268\t1".
		{"nc in its namespace", ns, fields{4, []int{1}}},
		{"an NSpid of another pid", bytes.Replace(ns, []byte("NSpid:\t268"), []byte("NSpid:\t269"), 1), nil},
		{"an empty NSpid", bytes.Replace(ns, []byte("NSpid:\t268\t1"), []byte("NSpid:"), 1), nil},
		{"a bad inner pid", bytes.Replace(ns, []byte("NSpid:\t268\t1"), []byte("NSpid:\t268\tx"), 1), nil},
	}, parse(268))
	checkParse(t, []parseCase{
		// utime 2, stime 73 in stat-1 (fields 14 and 15); "NSpid:\t1".
		{"the demo's init", testdata(t, "status-1"), fields{75, nil}},
	}, parse(1))
}

func TestParsePasswd(t *testing.T) {
	passwd := testdata(t, "passwd-debian")
	names := parsePasswd(passwd)
	for uid, want := range map[int]string{0: "root", 100: "messagebus", 998: "systemd-network", 1000: "analyst", 65534: "nobody"} {
		if names[uid] != want {
			t.Errorf("uid %d: %q, want %q", uid, names[uid], want)
		}
	}
	if len(names) != bytes.Count(passwd, []byte("\n")) {
		t.Errorf("%d names from %d lines", len(names), bytes.Count(passwd, []byte("\n")))
	}
	// The first entry of a uid wins; malformed lines and NIS entries are no names.
	odd := parsePasswd([]byte("toor:x:0:0::/:/bin/sh\nroot:x:0:0::/root:/bin/sh\n+nis::5:5:::\nshort:x:7\nbad:x:x:1::/:/bin/sh\n"))
	if want := map[int]string{0: "toor"}; !reflect.DeepEqual(odd, want) {
		t.Errorf("odd lines: %v, want %v", odd, want)
	}
}

func TestReadBootTime(t *testing.T) {
	stat := testdata(t, "proc-stat")
	parse := func(data []byte) (int64, error) {
		bt, err := ReadBootTime(memFiles{"/proc/stat": data})
		return bt.Unix(), err
	}
	checkParse(t, []parseCase{
		{"the Debian guest's", stat, int64(1796585548)},
		{"no btime line", bytes.Replace(stat, []byte("btime "), []byte("btimer "), 1), nil},
		{"a bad btime", bytes.Replace(stat, []byte("btime 1796585548"), []byte("btime 17965x5548"), 1), nil},
	}, parse)
}

func TestNetNamespace(t *testing.T) {
	parse := func(data []byte) (uint64, error) {
		return netNamespace(memLinks{"/proc/268/ns/net": string(data)}, 268)
	}
	checkParse(t, []parseCase{
		{"nc's namespace", []byte("net:[4026532195]"), uint64(4026532195)},
		{"another kind", []byte("pid:[4026532194]"), nil},
		{"no closing bracket", []byte("net:[4026532195"), nil},
		{"zero", []byte("net:[0]"), nil},
	}, parse)
}

// memFiles and memLinks serve files and links from memory.
type memFiles map[string][]byte

func (m memFiles) ReadDir(path string) ([]string, error) { return nil, os.ErrNotExist }
func (m memFiles) ReadFile(path string) ([]byte, error) {
	if d, ok := m[path]; ok {
		return d, nil
	}
	return nil, os.ErrNotExist
}

type memLinks map[string]string

func (m memLinks) ReadLink(path string) (string, error) {
	if d, ok := m[path]; ok {
		return d, nil
	}
	return "", os.ErrNotExist
}

func TestParseCmdlineAndEnviron(t *testing.T) {
	parse := func(want uint64) func([]byte) ([]string, error) {
		return func(data []byte) ([]string, error) {
			if err := checkArea(data, want); err != nil {
				return nil, err
			}
			return splitCmdline(data), nil
		}
	}
	odd := testdata(t, "cmdline-odd")
	checkParse(t, []parseCase{
		{"a) (b c", odd, []string{"/bin/sh", "/tmp/a) (b c"}},
		{"a) (b c cut short", cut(odd, 4), nil},
		{"a) (b c cut at its final NUL", cut(odd, 1), nil},
	}, parse(21))
	checkParse(t, []parseCase{
		// busybox init blanks its argument area after "init".
		{"init", testdata(t, "cmdline-1"), []string{"init"}},
	}, parse(11))
	checkParse(t, []parseCase{
		{"nc", testdata(t, "cmdline-nc"), []string{"nc", "-ll", "-p", "7001", "-e", "/bin/cat"}},
	}, parse(27))
	checkParse(t, []parseCase{
		{"kthreadd", testdata(t, "cmdline-2"), []string(nil)},
	}, parse(0))
	env := testdata(t, "environ-odd")
	checkParse(t, []parseCase{
		{"environment of a) (b c", env, []string{"SHLVL=1", "HOME=/root", "TERM=dumb", "PATH=/sbin:/usr/sbin:/bin:/usr/bin:/usr/local/bin", "PWD=/"}},
		{"environment of a) (b c cut short", env[:40], nil},
		{"environment with a page of zeros", append(append(bytes.Clone(env[:40]), make([]byte, 4096)...), env[40:]...), nil},
	}, parse(85))
	checkParse(t, []parseCase{
		{"environment of init", testdata(t, "environ-1"), []string{"SHLVL=1", "HOME=/", "TERM=linux", "PATH=/sbin:/usr/sbin:/bin:/usr/bin", "PWD=/"}},
	}, parse(67))
}

func TestParseUptimeAndLoad(t *testing.T) {
	up := testdata(t, "uptime")
	checkParse(t, []parseCase{
		{"uptime", up, Uptime{Seconds: 31.85, IdleSeconds: 27.70}},
		{"uptime cut short", cut(up, 1), nil},
		{"uptime cut to one number", []byte("31.85\n"), nil},
		{"uptime with a third number", []byte("31.85 27.70 1\n"), nil},
		{"uptime not a number", []byte("31.85 2x.70\n"), nil},
		{"uptime twice", append(bytes.Clone(up), up...), nil},
	}, parseUptime)
	load := testdata(t, "loadavg")
	checkParse(t, []parseCase{
		{"loadavg", load, LoadAvg{Load1: 0, Load5: 0, Load15: 0, Running: 1, Threads: 77, LastPID: 206}},
		{"loadavg cut short", cut(load, 1), nil},
		{"loadavg without last pid", []byte("0.00 0.00 0.00 1/77\n"), nil},
		{"loadavg without a slash", []byte("0.00 0.00 0.00 1-77 206\n"), nil},
		{"loadavg with a bad load", []byte("0.00 0.0x 0.00 1/77 206\n"), nil},
		{"loadavg with a bad count", []byte("0.00 0.00 0.00 1/7x 206\n"), nil},
	}, parseLoadAvg)
}

func TestParseMeminfo(t *testing.T) {
	type some struct {
		Lines int
		Picks []MemField // lines 1, 36, 46 and 53
	}
	parse := func(data []byte) (some, error) {
		m, err := ParseMeminfo(data)
		if err != nil {
			return some{}, err
		}
		return some{len(m), []MemField{m[0], m[35], m[45], m[52]}}, nil
	}
	mem := testdata(t, "meminfo")
	checkParse(t, []parseCase{
		{"meminfo", mem, some{53, []MemField{
			{"MemTotal", 210752, "kB"}, {"VmallocTotal", 34359738367, "kB"},
			{"HugePages_Total", 0, ""}, {"DirectMap2M", 233472, "kB"}}}},
		{"meminfo cut short", cut(mem, 1), nil},
		{"meminfo cut after a name", mem[:bytes.Index(mem, []byte("MemFree:"))+8], nil},
		{"another unit", bytes.Replace(mem, []byte("210752 kB"), []byte("210752 MB"), 1), nil},
		{"no colon", bytes.Replace(mem, []byte("MemTotal:"), []byte("MemTotal "), 1), nil},
		{"not a number", bytes.Replace(mem, []byte("210752"), []byte("21075x"), 1), nil},
		{"empty", []byte{}, nil},
	}, parse)
}

func TestParseMounts(t *testing.T) {
	mounts := testdata(t, "mounts")
	checkParse(t, []parseCase{
		{"mounts", mounts, []Mount{
			{"rootfs", "/", "rootfs", "rw,size=99144k,nr_inodes=24786,inode64"},
			{"dev", "/dev", "devtmpfs", "rw,relatime,size=99144k,nr_inodes=24786,mode=755,inode64"},
			{"proc", "/proc", "proc", "rw,relatime"},
			{"sys", "/sys", "sysfs", "rw,relatime"},
			{"devpts", "/dev/pts", "devpts", "rw,relatime,mode=600,ptmxmode=000"},
			{"tmpfs", "/tmp", "tmpfs", "rw,relatime,inode64"},
			{"tmpfs", "/run", "tmpfs", "rw,relatime,inode64"},
			{"tmp fs", "/mnt/my disk", "tmpfs", "rw,relatime,size=1024k,inode64"},
			{"none", `/mnt/back\slash`, "tmpfs", "rw,relatime,size=1024k,inode64"},
			{"none", "/mnt/tab\tdir", "tmpfs", "rw,relatime,inode64"},
		}},
		{"mounts cut short", cut(mounts, 1), nil},
		{"mounts cut in a line", cut(mounts, 10), nil},
		{"a backslash not escaped", []byte(`none /mnt/back\slash tmpfs rw 0 0` + "\n"), nil},
		{"an escape cut short", []byte(`none /mnt/x\04 tmpfs rw 0 0` + "\n"), nil},
		{"a space not escaped", []byte("none /mnt/my disk tmpfs rw 0 0\n"), nil},
	}, parseMounts)
}

func TestParseFdinfo(t *testing.T) {
	type info struct {
		Pos   uint64
		Flags string
	}
	parse := func(data []byte) (info, error) {
		pos, flags, err := parseFdinfo(data)
		return info{pos, flags}, err
	}
	passwd := testdata(t, "fdinfo-odd-3")
	checkParse(t, []parseCase{
		{"/etc/passwd after a read", passwd, info{30, "0100000"}},
		{"/dev/null", testdata(t, "fdinfo-odd-0"), info{0, "0100000"}},
		{"/dev/null for writing", testdata(t, "fdinfo-odd-1"), info{0, "0100001"}},
		{"the script, close-on-exec", testdata(t, "fdinfo-odd-10"), info{54, "02100000"}},
		{"an epoll", testdata(t, "fdinfo-epoll"), info{0, "02000002"}},
		{"an eventfd", testdata(t, "fdinfo-eventfd"), info{0, "02004002"}},
		{"a pidfd", testdata(t, "fdinfo-pidfd"), info{0, "02000002"}},
		{"cut short", cut(passwd, 1), nil},
		{"cut before flags", passwd[:bytes.Index(passwd, []byte("flags"))], nil},
		{"no pos", passwd[bytes.Index(passwd, []byte("flags")):], nil},
		{"a bad pos", bytes.Replace(passwd, []byte("pos:\t30"), []byte("pos:\t3x"), 1), nil},
		{"flags not octal", bytes.Replace(passwd, []byte("0100000"), []byte("0190000"), 1), nil},
	}, parse)
}

func TestParseModules(t *testing.T) {
	mods := testdata(t, "modules")
	checkParse(t, []parseCase{
		{"modules", mods, []Module{
			{Name: "loop", Size: 32768, Users: []string{}, State: "Live", Addr: 0xffffffffc022d000},
			{Name: "veth", Size: 36864, Users: []string{}, State: "Live", Addr: 0xffffffffc021d000},
			{Name: "tun", Size: 61440, Users: []string{}, State: "Live", Addr: 0xffffffffc0206000},
			{Name: "dummy", Size: 16384, Users: []string{}, State: "Live", Addr: 0xffffffffc0201000},
		}},
		// Not in the capture: users, taint and a hidden address, in m_show's format.
		{"users and taint", []byte("loop 32768 2 dm_mod,tun, Unloading 0x0000000000000000 (OE)\n"), []Module{
			{Name: "loop", Size: 32768, Refs: 2, Users: []string{"dm_mod", "tun"}, State: "Unloading", Taint: "OE"},
		}},
		{"no module", []byte{}, []Module{}},
		{"cut short", cut(mods, 1), nil},
		{"cut in a line", cut(mods, 12), nil},
		{"users without the final comma", []byte("loop 32768 2 dm_mod Live 0xffffffffc022d000\n"), nil},
		{"a bad size", []byte("loop 3276x 0 - Live 0xffffffffc022d000\n"), nil},
		{"an address without 0x", []byte("loop 32768 0 - Live ffffffffc022d000\n"), nil},
		{"a bad taint", []byte("loop 32768 0 - Live 0xffffffffc022d000 OE\n"), nil},
		{"a field too many", []byte("loop 32768 0 - Live 0xffffffffc022d000 (OE) x\n"), nil},
	}, ParseModules)
}

func TestParseInet(t *testing.T) {
	inet := func(proto string) func([]byte) ([]Socket, error) {
		return func(data []byte) ([]Socket, error) { return parseInet(proto, data) }
	}
	tcp := testdata(t, "tcp")
	checkParse(t, []parseCase{
		// 0100007F:AC10 is 127.0.0.1:44048, 1B59 is 7001.
		{"tcp", tcp, []Socket{{Proto: "tcp", Local: "127.0.0.1:44048", Remote: "127.0.0.1:7001", State: "ESTABLISHED", Inode: 10278}}},
		{"cut short", cut(tcp, 1), nil},
		{"no header", tcp[bytes.IndexByte(tcp, '\n')+1:], nil},
		{"an address of 7 digits", bytes.Replace(tcp, []byte("0100007F:AC10"), []byte("100007F:AC10"), 1), nil},
		{"a port of 3 digits", bytes.Replace(tcp, []byte("0100007F:AC10"), []byte("0100007F:C10"), 1), nil},
		{"a bad state", bytes.Replace(tcp, []byte(" 01 0000"), []byte(" 0x 0000"), 1), nil},
		{"queues without a colon", bytes.Replace(tcp, []byte("00000000:00000000"), []byte("0000000000000000"), 1), nil},
		{"a bad inode", bytes.Replace(tcp, []byte(" 10278 "), []byte(" 1027x "), 1), nil},
		{"a line of 9 fields", []byte("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" +
			"   0: 0100007F:AC10 0100007F:1B59 01 00000000:00000000 00:00000000 00000000     0        0\n"), nil},
	}, inet("tcp"))
	checkParse(t, []parseCase{
		// IPv6 addresses are four host-order words: ::ffff:127.0.0.1 is 0000000000000000FFFF00000100007F.
		{"tcp6", testdata(t, "tcp6"), []Socket{
			{Proto: "tcp6", Local: "[::]:7001", Remote: "[::]:0", State: "LISTEN", Inode: 10233},
			{Proto: "tcp6", Local: "[::]:2323", Remote: "[::]:0", State: "LISTEN", Inode: 10221},
			{Proto: "tcp6", Local: "[::]:8080", Remote: "[::]:0", State: "LISTEN", Inode: 10215},
			{Proto: "tcp6", Local: "[::ffff:127.0.0.1]:7001", Remote: "[::ffff:127.0.0.1]:44048", State: "ESTABLISHED", Inode: 10234},
		}},
	}, inet("tcp6"))
	udp := testdata(t, "udp")
	checkParse(t, []parseCase{
		// State 07 (TCP_CLOSE) is an unconnected UDP socket: no state, as netstat shows it.
		{"udp", udp, []Socket{{Proto: "udp", Local: "0.0.0.0:5353", Remote: "0.0.0.0:0", Inode: 10287}}},
		{"udp in an unknown state", bytes.Replace(udp, []byte(" 07 "), []byte(" 0A "), 1), []Socket{
			{Proto: "udp", Local: "0.0.0.0:5353", Remote: "0.0.0.0:0", State: "UNKNOWN(0A)", Inode: 10287}}},
	}, inet("udp"))
	checkParse(t, []parseCase{
		{"udp6 (no socket)", testdata(t, "udp6"), []Socket(nil)},
		{"empty", []byte{}, nil},
	}, inet("udp6"))
}

func TestParseUnix(t *testing.T) {
	unix := testdata(t, "unix")
	header := "Num       RefCount Protocol Flags    Type St Inode Path\n"
	checkParse(t, []parseCase{
		{"unix", unix, []Socket{{Proto: "unix", Local: "/dev/log", Type: "DGRAM", State: "CONNECTED", Refs: 2, Inode: 10214}}},
		// Not in the capture, in unix_seq_show's format: a listening socket whose path has
		// two spaces in a row, and an unbound one.
		{"listening, path with spaces", []byte(header +
			"0000000000000000: 00000002 00000000 00010000 0001 01 10206 /run/a  b\n" +
			"0000000000000000: 00000003 00000000 00000000 0002 03 10207\n"), []Socket{
			{Proto: "unix", Local: "/run/a  b", State: "LISTENING", Inode: 10206, Type: "STREAM", Refs: 2, Flags: 1 << 16},
			{Proto: "unix", State: "CONNECTED", Inode: 10207, Type: "DGRAM", Refs: 3},
		}},
		{"an unknown type", bytes.Replace(unix, []byte(" 0002 03 "), []byte(" 0009 03 "), 1), []Socket{
			{Proto: "unix", Local: "/dev/log", Type: "UNKNOWN(0009)", State: "CONNECTED", Refs: 2, Inode: 10214}}},
		{"cut short", cut(unix, 1), nil},
		{"no header", unix[bytes.IndexByte(unix, '\n')+1:], nil},
		{"a bad refcount", bytes.Replace(unix, []byte("00000002"), []byte("0000000x"), 1), nil},
		{"cut before the inode", []byte(header + "(____ptrval____): 00000002 00000000 00000000 0002 03\n"), nil},
	}, parseUnix)
}

func TestSocketInode(t *testing.T) {
	type link struct {
		Inode  uint64
		Socket bool
	}
	parse := func(data []byte) (link, error) {
		ino, ok, err := socketInode(string(data))
		return link{ino, ok}, err
	}
	checkParse(t, []parseCase{
		{"nc's socket", []byte("socket:[10233]"), link{10233, true}},
		{"a file", []byte("/tmp/a) (b c"), link{}},
		{"an epoll", []byte("anon_inode:[eventpoll]"), link{}},
		{"a pipe", []byte("pipe:[10604]"), link{}},
		{"a bad inode", []byte("socket:[1023x]"), nil},
		{"no closing bracket", []byte("socket:[10233"), nil},
	}, parse)
}

func TestParseArp(t *testing.T) {
	arp := testdata(t, "arp")
	checkParse(t, []parseCase{
		{"arp", arp, []Neighbour{{"10.77.0.2", "0x1", "0x6", "02:00:00:00:77:02", "*", "dummy0"}}},
		{"header only", arp[:bytes.IndexByte(arp, '\n')+1], []Neighbour{}},
		{"cut short", cut(arp, 1), nil},
		{"no header", arp[bytes.IndexByte(arp, '\n')+1:], nil},
		{"a column short", bytes.Replace(arp, []byte("dummy0"), nil, 1), nil},
	}, parseArp)
}

func TestParseNetDevAndInet6(t *testing.T) {
	dev := testdata(t, "net-dev")
	checkParse(t, []parseCase{
		{"net/dev", dev, []Interface{
			{Name: "lo", RxBytes: 172, RxPackets: 3, TxBytes: 172, TxPackets: 3, IPv4: []string{}, IPv6: []string{}},
			{Name: "dummy0", TxBytes: 280, TxPackets: 4, IPv4: []string{}, IPv6: []string{}},
		}},
		{"cut short", cut(dev, 1), nil},
		{"no second header line", bytes.Replace(dev, []byte(" face |"), []byte(" fxxx |"), 1), nil},
		{"a column short", bytes.Replace(dev, []byte("       0          0\n"), []byte("       0\n"), 1), nil},
		{"not a number", bytes.Replace(dev, []byte("280"), []byte("28x"), 1), nil},
		{"no colon", bytes.Replace(dev, []byte("dummy0:"), []byte("dummy0 "), 1), nil},
	}, parseNetDev)
	v6 := testdata(t, "if_inet6")
	checkParse(t, []parseCase{
		// Network order, prefix length in hex (0x80 = 128, 0x40 = 64).
		{"if_inet6", v6, []ifAddr6{
			{"lo", netip.MustParsePrefix("::1/128")},
			{"dummy0", netip.MustParsePrefix("fe80::64e4:a6ff:fe61:d4de/64")},
			{"dummy0", netip.MustParsePrefix("fd00:77::1/64")},
		}},
		{"no address", []byte{}, []ifAddr6(nil)},
		{"cut short", cut(v6, 1), nil},
		{"an address of 31 digits", bytes.Replace(v6, []byte("00000000000000000000000000000001 "), []byte("0000000000000000000000000000001 "), 1), nil},
		{"a bad prefix length", bytes.Replace(v6, []byte(" 80 10 "), []byte(" 8x 10 "), 1), nil},
		{"a prefix length over 128", bytes.Replace(v6, []byte(" 80 10 "), []byte(" 81 10 "), 1), nil},
	}, parseIfInet6)
	routes := testdata(t, "route")
	checkParse(t, []parseCase{
		// 00004D0A/00FFFFFF are 10.77.0.0/255.255.255.0 in host order.
		{"route", routes, []route{{"dummy0", netip.MustParsePrefix("10.77.0.0/24")}}},
		{"cut short", cut(routes, 1), nil},
		{"a bad mask", bytes.Replace(routes, []byte("00FFFFFF"), []byte("00FFFFFX"), 1), nil},
	}, parseRoutes)
	trie := testdata(t, "fib_trie")
	checkParse(t, []parseCase{
		// Only "/32 host LOCAL" leaves of the Local table: 127.0.0.0 is "/8 host LOCAL".
		{"fib_trie", trie, []netip.Addr{netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("127.0.0.1")}},
		{"a bad leaf", bytes.Replace(trie, []byte("|-- 10.77.0.1\n"), []byte("|-- 10.77.0.x\n"), 1), nil},
	}, localIPv4)
}

func TestListInterfaces(t *testing.T) {
	files := map[string][]byte{}
	for i, name := range []string{"net-dev", "if_inet6", "fib_trie", "route"} {
		files[InterfaceFiles[i]] = testdata(t, name)
	}
	got, err := ListInterfaces(&FileSet{Files: files})
	if err != nil {
		t.Fatal(err)
	}
	// lo has no route in the main table: its 127.0.0.1 is not placed, and says so.
	want := Interfaces{Interfaces: []Interface{
		{Name: "lo", RxBytes: 172, RxPackets: 3, TxBytes: 172, TxPackets: 3, IPv4: []string{}, IPv6: []string{"::1/128"}},
		{Name: "dummy0", TxBytes: 280, TxPackets: 4, IPv4: []string{"10.77.0.1"}, IPv6: []string{"fd00:77::1/64", "fe80::64e4:a6ff:fe61:d4de/64"}},
	}, Unassigned: []string{"127.0.0.1"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
	files["/proc/net/if_inet6"] = bytes.ReplaceAll(files["/proc/net/if_inet6"], []byte("dummy0"), []byte("dummy1"))
	if got, err := ListInterfaces(&FileSet{Files: files}); err == nil {
		t.Fatalf("an address on an interface /proc/net/dev does not list: %+v", got)
	}
}

func TestParseKmsg(t *testing.T) {
	// A record is a line and the dictionary lines after it, which start with a space.
	var recs [][]byte
	for _, line := range strings.SplitAfter(string(testdata(t, "kmsg")), "\n") {
		switch {
		case line == "":
		case strings.HasPrefix(line, " "):
			recs[len(recs)-1] = append(recs[len(recs)-1], line...)
		default:
			recs = append(recs, []byte(line))
		}
	}
	if len(recs) != 9 {
		t.Fatalf("%d records in testdata/kmsg", len(recs))
	}
	checkParse(t, []parseCase{
		{"the banner", recs[0], []LogLine{{Seq: 0, Level: 5, Text: "Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-26)"}}},
		{"a tab", recs[2], []LogLine{{Seq: 89, Level: 6, Micros: 150451, Text: "rcu: \tRCU restricting CPUs from NR_CPUS=8192 to nr_cpu_ids=1."}}},
		{"a dictionary", recs[4], []LogLine{{Seq: 169, Level: 6, Micros: 907523, Text: "acpi PNP0A03:00: _OSC: OS supports [ASPM ClockPM Segments MSI HPX-Type3]"}}},
		// Written to /dev/kmsg with <12>: facility 1 (user), level 4.
		{"a backslash", recs[6], []LogLine{{Seq: 351, Level: 4, Facility: 1, Micros: 20612065, Text: `hb: tab` + "\t" + `here back\slash`}}},
		{"two lines", recs[7], []LogLine{
			{Seq: 352, Level: 4, Facility: 1, Micros: 20612347, Text: "hb: line one"},
			{Seq: 352, Level: 4, Facility: 1, Micros: 20612347, Text: "line two"}}},
		{"cut short", cut(recs[0], 1), nil},
		{"no semicolon", bytes.Replace(recs[1], []byte("-;"), []byte("-,"), 1), nil},
		{"three fields", []byte("6,1,0;Command line\n"), nil},
		{"a bad sequence number", []byte("6,x,0,-;Command line\n"), nil},
		{"a backslash not escaped", []byte(`6,1,0,-;a\b` + "\n"), nil},
		{"an escape cut short", []byte(`6,1,0,-;a\x0` + "\n"), nil},
		{"a bad escape", []byte(`6,1,0,-;a\xzz` + "\n"), nil},
	}, parseKmsg)
}

func TestParseSyslog(t *testing.T) {
	checkParse(t, []parseCase{
		{"dmesg -r", []byte("<6>[    1.883496] clocksource: Switched\n<12>[   12.000001] user: x\n"), []LogLine{
			{Level: 6, Micros: 1883496, Text: "clocksource: Switched"}, {Level: 4, Facility: 1, Micros: 12000001, Text: "user: x"}}},
		{"no timestamp", []byte("<6> clocksource\n"), nil},
	}, ParseSyslog)
}

func TestReadUname(t *testing.T) {
	files := map[string][]byte{}
	for i, v := range []string{"Linux\n", "hb-demo\n", "6.1.0-57-amd64\n", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-26)\n", "x86_64\n", "(none)\n"} {
		files["/proc/sys/kernel/"+UnameFiles[i]] = []byte(v)
	}
	got, err := ReadUname(&FileSet{Files: files})
	want := Uname{"Linux", "hb-demo", "6.1.0-57-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-26)", "x86_64", "(none)"}
	if err != nil || got != want {
		t.Fatalf("got %+v, %v", got, err)
	}
	files["/proc/sys/kernel/osrelease"] = []byte("6.1.0-5")
	if got, err := ReadUname(&FileSet{Files: files}); err == nil {
		t.Fatalf("a release cut short: %+v", got)
	}
}
