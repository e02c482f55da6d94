package target

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"hybridbridge/guest"
	"hybridbridge/vmm"
)

// One demo guest serves the real-dump test and benchmark: booting is the slow part.
var (
	demo     *guest.Guest
	cacheDir string
	runDir   string
	setupErr error
)

func TestMain(m *testing.M) {
	code := func() int {
		dir, err := os.MkdirTemp("", "hbtarget-test")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		runDir = dir
		// The plain VM boots after the demo guest, not beside it: two TCG guests booting at once
		// on a busy host can starve a kernel's early timer check into a panic.
		defer func() {
			if plain != nil {
				plain.Stop()
			}
		}()
		cacheDir, err = guest.FindCacheDir()
		var assets *guest.Assets
		if err == nil {
			assets, err = guest.LoadAssets(cacheDir)
		}
		var img *guest.Image
		if err == nil {
			img, err = guest.BuildDemoImage(assets)
		}
		if err == nil {
			demo, err = guest.Start(context.Background(), guest.Config{Name: "demo", MemMiB: 512, Image: img, RunDir: runDir})
		}
		if err != nil {
			// The real-dump tests fail with this reason rather than skip; the synthetic ones
			// do not need the guest.
			setupErr = err
			plain, plainErr = startPlain(context.Background(), dir)
			return m.Run()
		}
		defer demo.Stop(context.Background())
		plain, plainErr = startPlain(context.Background(), dir)
		return m.Run()
	}()
	os.Exit(code)
}

func needDemo(tb testing.TB) *guest.Guest {
	tb.Helper()
	if setupErr != nil {
		tb.Fatalf("demo guest did not start: %v", setupErr)
	}
	// A test that failed between a pause and its resume must not leave the guest paused.
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := demo.ResumeIfPaused(ctx); err != nil {
			tb.Errorf("resume guest: %v", err)
		}
	})
	return demo
}

// dumpGuest writes the guest's memory to path with dump-guest-memory, detached so that the
// monitor stays free, and waits for query-dump to report the end. The guest should be paused so
// that the dump is one moment's memory.
func dumpGuest(ctx context.Context, g *guest.Guest, path string) error {
	return dumpQMP(ctx, g.QMPSocket(), path)
}

// dumpQMP is dumpGuest for any QEMU with a QMP socket.
func dumpQMP(ctx context.Context, socket, path string) error {
	q, err := guest.DialQMP(ctx, socket)
	if err != nil {
		return err
	}
	defer q.Close()
	return WriteDump(ctx, q, path)
}

// The real dump, shared by the test and the benchmark.
var (
	realDumpOnce sync.Once
	realDumpPath string
	realDumpErr  error
)

func TestRealDump(t *testing.T) {
	g := needDemo(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	syms, err := g.Symbols(ctx, cacheDir)
	if err != nil {
		t.Fatal(err)
	}
	bannerAddr, ok := syms.Addr("linux_banner")
	if !ok {
		t.Fatal("no linux_banner in the guest's kallsyms")
	}
	// The command channel needs a running guest; /proc/version does not change anyway.
	res, err := g.Exec(ctx, "cat /proc/version")
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != 0 {
		t.Fatalf("cat /proc/version: status %d: %s", res.Status, res.Stderr)
	}
	version := string(res.Stdout)

	if err := g.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	cpu, err := g.CPU(ctx)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(runDir, "demo.elf")
	start := time.Now()
	realDumpOnce.Do(func() { realDumpPath, realDumpErr = path, dumpGuest(ctx, g, path) })
	if realDumpErr != nil {
		t.Fatal(realDumpErr)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("dump-guest-memory: %d bytes (%.1f MiB) in %v", fi.Size(), float64(fi.Size())/(1<<20), time.Since(start).Round(time.Millisecond))

	start = time.Now()
	d, err := OpenDump(path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	t.Logf("OpenDump: %v; %d vCPU(s); ranges %v", time.Since(start).Round(time.Microsecond), len(d.cpus), d.Phys().Ranges())

	if len(d.cpus) == 0 {
		t.Fatal("no vCPUs")
	}
	c0 := d.cpus[0]
	t.Logf("vCPU 0: CR0=%#x CR3=%#x CR4=%#x RIP=%#x GS=%#x KernelGS=%#x (%v)",
		c0.CR0, c0.CR3, c0.CR4, c0.RIP, c0.GSBase, c0.KernelGSBase, c0.HasKernelGSBase)
	if c0.CR3 != cpu.CR3 || c0.CR4 != cpu.CR4 || c0.CR0 != cpu.CR0 {
		t.Errorf("dump vCPU 0 CR0/CR3/CR4 = %#x/%#x/%#x, info registers says %#x/%#x/%#x",
			c0.CR0, c0.CR3, c0.CR4, cpu.CR0, cpu.CR3, cpu.CR4)
	}

	mem, err := g.Memory()
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	start = time.Now()
	compareRAM(t, d.Phys(), mem)
	t.Logf("compared RAM in %v", time.Since(start).Round(time.Millisecond))

	w, err := vmm.NewWalker(d.Phys(), c0.CR3, vmm.PagingLevels(c0.CR4))
	if err != nil {
		t.Fatal(err)
	}
	banner, err := vmm.NewVirtView("dump kernel", w).ReadCString(bannerAddr, 512)
	if err != nil {
		t.Fatalf("linux_banner at %#x through the dump's page tables: %v", bannerAddr, err)
	}
	if banner != version {
		t.Errorf("linux_banner from the dump = %q, /proc/version = %q", banner, version)
	}
	t.Logf("linux_banner from the dump: %s", strings.TrimSpace(banner))

	if err := g.Resume(ctx); err != nil {
		t.Fatal(err)
	}
}

// compareRAM checks that every dump range inside guest RAM holds the guest's bytes, and that the
// dump leaves out no more of RAM than the legacy VGA window, which is MMIO rather than RAM on a
// machine with a VGA device. Both are compared chunk by chunk rather than read whole: each is
// 512 MiB.
func compareRAM(t *testing.T, dump vmm.PhysView, ram vmm.PhysView) {
	t.Helper()
	var covered uint64
	for _, r := range dump.Ranges() {
		if !inside(r, ram.Ranges()) {
			t.Logf("dump range %v is outside guest RAM (firmware ROM or device memory): not compared", r)
			continue
		}
		covered += r.Size
		sameRange(t, "dump", dump, "guest RAM", ram, r)
	}
	const vgaWindow = 0xc0000 - 0xa0000
	if covered+vgaWindow < ram.Size() {
		t.Errorf("dump covers %#x bytes of the guest's %#x bytes of RAM", covered, ram.Size())
	}
}

func inside(r vmm.PhysRange, ranges []vmm.PhysRange) bool {
	for _, o := range ranges {
		if r.GuestPhys >= o.GuestPhys && r.End() <= o.End() {
			return true
		}
	}
	return false
}

func BenchmarkOpenDump(b *testing.B) {
	g := needDemo(b)
	realDumpOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		realDumpPath = filepath.Join(runDir, "demo.elf")
		if realDumpErr = g.Pause(ctx); realDumpErr == nil {
			realDumpErr = dumpGuest(ctx, g, realDumpPath)
			if err := g.Resume(ctx); realDumpErr == nil {
				realDumpErr = err
			}
		}
	})
	if realDumpErr != nil {
		b.Fatal(realDumpErr)
	}
	for b.Loop() {
		d, err := OpenDump(realDumpPath)
		if err != nil {
			b.Fatal(err)
		}
		d.Close()
	}
}

// synthetic describes a small ELF core file for the unit tests.
type synthetic struct {
	typ     elf.Type
	machine elf.Machine
	loads   []load
	notes   []note
	cut     int // bytes removed from the end of the file
}

type load struct {
	paddr uint64
	data  []byte
	memsz uint64 // 0 means len(data)
}

func qemuNote(size int, cr3, cr4, rip, gs, kgs uint64) note {
	desc := make([]byte, max(size, qemuStateKGSBSSize))
	le := binary.LittleEndian
	le.PutUint32(desc[0:], qemuStateVersion)
	le.PutUint32(desc[4:], uint32(size))
	le.PutUint64(desc[offRIP:], rip)
	le.PutUint64(desc[offGSBase:], gs)
	le.PutUint64(desc[offCR:], 0x80050033)
	le.PutUint64(desc[offCR+3*8:], cr3)
	le.PutUint64(desc[offCR+4*8:], cr4)
	le.PutUint64(desc[offKernelGSBase:], kgs)
	return note{name: noteQEMU, desc: desc[:size]}
}

func prstatus() note { return note{name: noteCore, typ: ntPRStatus, desc: make([]byte, 336)} }

func goodCore() synthetic {
	return synthetic{
		typ:     elf.ET_CORE,
		machine: elf.EM_X86_64,
		loads: []load{
			{paddr: 0, data: bytes.Repeat([]byte{0xaa}, 0x2000)},
			{paddr: 0x100000, data: bytes.Repeat([]byte{0xbb}, 0x1000), memsz: 0x3000},
		},
		notes: []note{prstatus(), prstatus(),
			qemuNote(qemuStateKGSBSSize, 0x1234000, 0x6f0, 0xffffffff81000000, 0xffff888000000000, 0),
			qemuNote(qemuStateMinSize, 0x5678000, 0x6f0, 0xffffffff81000010, 0, 0)},
	}
}

func encodeNotes(notes []note) []byte {
	var buf bytes.Buffer
	le := binary.LittleEndian
	pad := func() {
		for buf.Len()%4 != 0 {
			buf.WriteByte(0)
		}
	}
	for _, n := range notes {
		binary.Write(&buf, le, [3]uint32{uint32(len(n.name) + 1), uint32(len(n.desc)), n.typ})
		buf.WriteString(n.name)
		buf.WriteByte(0)
		pad()
		buf.Write(n.desc)
		pad()
	}
	return buf.Bytes()
}

func (s synthetic) write(t *testing.T) string {
	t.Helper()
	le := binary.LittleEndian
	notes := encodeNotes(s.notes)
	nprog := len(s.loads)
	if len(s.notes) > 0 {
		nprog++
	}
	const ehsize, phsize = 64, 56
	off := uint64(ehsize + phsize*nprog)
	var progs []elf.Prog64
	if len(s.notes) > 0 {
		progs = append(progs, elf.Prog64{Type: uint32(elf.PT_NOTE), Off: off, Filesz: uint64(len(notes)), Memsz: uint64(len(notes))})
		off += uint64(len(notes))
	}
	for _, l := range s.loads {
		memsz := l.memsz
		if memsz == 0 {
			memsz = uint64(len(l.data))
		}
		progs = append(progs, elf.Prog64{Type: uint32(elf.PT_LOAD), Off: off, Paddr: l.paddr, Filesz: uint64(len(l.data)), Memsz: memsz})
		off += uint64(len(l.data))
	}
	hdr := elf.Header64{
		Type: uint16(s.typ), Machine: uint16(s.machine), Version: uint32(elf.EV_CURRENT),
		Phoff: ehsize, Ehsize: ehsize, Phentsize: phsize, Phnum: uint16(nprog),
	}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	var buf bytes.Buffer
	binary.Write(&buf, le, hdr)
	for _, p := range progs {
		binary.Write(&buf, le, p)
	}
	buf.Write(notes)
	for _, l := range s.loads {
		buf.Write(l.data)
	}
	return writeTemp(t, buf.Bytes()[:buf.Len()-s.cut])
}

func writeTemp(t *testing.T, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "dump")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestSyntheticDump(t *testing.T) {
	d, err := OpenDump(goodCore().write(t))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	want := []vmm.PhysRange{{GuestPhys: 0, Size: 0x2000}, {GuestPhys: 0x100000, Size: 0x1000}}
	got := d.Phys().Ranges()
	if len(got) != len(want) {
		t.Fatalf("ranges %v", got)
	}
	for i := range want {
		if got[i].GuestPhys != want[i].GuestPhys || got[i].Size != want[i].Size {
			t.Errorf("range %d = %v, want guest-physical %#x size %#x", i, got[i], want[i].GuestPhys, want[i].Size)
		}
	}
	buf := make([]byte, 0x1000)
	if err := d.Phys().ReadPhys(0x100000, buf); err != nil || !bytes.Equal(buf, bytes.Repeat([]byte{0xbb}, 0x1000)) {
		t.Errorf("read 0x100000: %v, % x...", err, buf[:4])
	}
	// Declared by p_memsz but not in the file: a hole, not zeros.
	if err := d.Phys().ReadPhys(0x101000, buf[:8]); !errors.Is(err, vmm.ErrNotBacked) {
		t.Errorf("read beyond p_filesz: %v, want ErrNotBacked", err)
	}
	cpus := d.cpus
	if len(cpus) != 2 {
		t.Fatalf("%d vCPUs, want 2", len(cpus))
	}
	c0 := CPUState{CR0: 0x80050033, CR3: 0x1234000, CR4: 0x6f0, RIP: 0xffffffff81000000, GSBase: 0xffff888000000000, HasKernelGSBase: true}
	c1 := CPUState{CR0: 0x80050033, CR3: 0x5678000, CR4: 0x6f0, RIP: 0xffffffff81000010}
	if cpus[0] != c0 || cpus[1] != c1 {
		t.Errorf("vCPUs %+v, want %+v and %+v", cpus, c0, c1)
	}
}

func TestBadDumps(t *testing.T) {
	mod := func(f func(*synthetic)) synthetic {
		s := goodCore()
		f(&s)
		return s
	}
	file := func(s synthetic) func(*testing.T) string { return s.write }
	raw := func(data string) func(*testing.T) string {
		return func(t *testing.T) string { return writeTemp(t, []byte(data)) }
	}
	cases := []struct {
		name string
		path func(*testing.T) string
		want error
		text string // also in the message
	}{
		{"empty", raw(""), ErrNotELF, "empty"},
		{"text", raw("hello, world\n"), ErrNotELF, "unrecognised"},
		{"kdump compressed", raw("KDUMP   \x06\x00\x00\x00"), ErrNotELF, "kdump-compressed"},
		{"libvirt save", raw("LibvirtQemudSave\x02\x00\x00\x00"), ErrNotELF, "without --memory-only"},
		{"header cut", func(t *testing.T) string {
			return writeTemp(t, []byte(elf.ELFMAG+"\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x04\x00"))
		}, ErrTruncated, "ELF headers"},
		{"executable", file(mod(func(s *synthetic) { s.typ = elf.ET_EXEC })), ErrNotCore, "ET_EXEC"},
		{"arm64", file(mod(func(s *synthetic) { s.machine = elf.EM_AARCH64 })), ErrNotX86_64, "EM_AARCH64"},
		{"segment cut", file(mod(func(s *synthetic) { s.cut = 0x800 })), ErrTruncated, "segment 2"},
		{"no PT_LOAD", file(mod(func(s *synthetic) { s.loads = nil })), ErrNoRAM, ""},
		{"no QEMU note", file(mod(func(s *synthetic) { s.notes = s.notes[:2] })), ErrNoQEMUNote, "NT_PRSTATUS"},
		{"vmcore", file(mod(func(s *synthetic) {
			s.notes = []note{prstatus(), {name: noteVMCoreInfo, desc: []byte("OSRELEASE=6.1\n")}}
		})), ErrNoQEMUNote, "/proc/vmcore"},
		{"no notes", file(mod(func(s *synthetic) { s.notes = nil })), ErrNoQEMUNote, "no vCPU notes"},
		{"old QEMU note", file(mod(func(s *synthetic) { s.notes[2] = qemuNote(100, 0, 0, 0, 0, 0) })), ErrBadQEMUNote, "size 100"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := c.path(t)
			d, err := OpenDump(path)
			if err == nil {
				d.Close()
				t.Fatalf("OpenDump succeeded, want %v", c.want)
			}
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.text) || !strings.Contains(err.Error(), path) {
				t.Errorf("error %q, want %v mentioning %q and the path", err, c.want, c.text)
			}
			t.Log(err)
		})
	}
}
