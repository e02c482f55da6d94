package kaslr

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"hybridbridge/internal/plainvm"
	"hybridbridge/internal/testenv"
	"hybridbridge/target"
)

// relocTail writes tables in the build's format: 0, 64-bit, 0, inverse 32-bit, 0, 32-bit.
func relocTail(r Relocs) []byte {
	var b []byte
	put := func(entries []uint64) {
		b = binary.LittleEndian.AppendUint32(b, 0)
		for _, a := range entries {
			b = binary.LittleEndian.AppendUint32(b, uint32(a))
		}
	}
	put(r.Rel64)
	put(r.Inv32)
	put(r.Rel32)
	return b
}

func TestParseRelocs(t *testing.T) {
	want := Relocs{
		Rel32: []uint64{0xffffffff81000010, 0xffffffff81000020},
		Inv32: []uint64{0xffffffff81000030},
		Rel64: []uint64{0xffffffff81000040, 0xffffffff81000050, 0xffffffff81000060},
	}
	got, err := parseRelocs(relocTail(want))
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("parseRelocs = %x, want %x", got, want)
	}
	if got, err := parseRelocs(relocTail(Relocs{})); err != nil || got.Len() != 0 {
		t.Errorf("three bare terminators: %v, %v", got, err)
	}
	if got, err := parseRelocs(nil); err != nil || got.Len() != 0 {
		t.Errorf("no tables: %v, %v", got, err)
	}
	for _, c := range []struct {
		name string
		tail []byte
		want string
	}{
		{"odd length", append(relocTail(want), 1), "not whole 32-bit words"},
		{"missing terminator", relocTail(want)[4:], "the 64-bit table has no 0 terminator"},
		{"no terminators", []byte{1, 0, 0, 0}, "the 32-bit table has no 0 terminator"},
		{"bytes before", append([]byte{9, 0, 0, 0}, relocTail(want)...), "4 bytes between the kernel ELF and the tables"},
	} {
		if _, err := parseRelocs(c.tail); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want %q", c.name, err, c.want)
		}
	}
}

// synthetic is a BzImage with only what Relocate reads: a 64 KiB kernel at the usual link
// address with one entry of each kind.
func synthetic() *BzImage {
	const text = 0xffffffff81000000
	return &BzImage{
		TextVA: text, LoadPhys: 0x1000000, RelocEnd: text + 0x8000,
		Loads: []*elf.Prog{{ProgHeader: elf.ProgHeader{Type: elf.PT_LOAD, Vaddr: text, Paddr: 0x1000000, Filesz: 0x10000, Memsz: 0x10000}}},
		Relocs: Relocs{
			Rel32: []uint64{text + 0x100},
			Inv32: []uint64{text + 0x200},
			Rel64: []uint64{text + 0x300},
		},
	}
}

func TestRelocateSynthetic(t *testing.T) {
	bz := synthetic()
	img := make([]byte, 0x10000)
	le := binary.LittleEndian
	le.PutUint32(img[0x100:], 0x81001234) // mov $0xffffffff81001234, …
	le.PutUint32(img[0x200:], 0x00012000) // a per-CPU offset, PC-relative
	le.PutUint64(img[0x300:], 0xffffffff82000000)
	const delta = 0x3e000000
	if err := bz.Relocate(img, delta); err != nil {
		t.Fatal(err)
	}
	if got := le.Uint32(img[0x100:]); got != 0xbf001234 {
		t.Errorf("32-bit: %#x, want 0xbf001234", got)
	}
	if got := le.Uint32(img[0x200:]); got != 0xc2012000 {
		t.Errorf("inverse 32-bit: %#x, want 0xc2012000 (0x12000 − delta, modulo 2³²)", got)
	}
	if got := le.Uint64(img[0x300:]); got != 0xffffffffc0000000 {
		t.Errorf("64-bit: %#x, want 0xffffffffc0000000", got)
	}

	for _, c := range []struct {
		name  string
		edit  func(*BzImage)
		image int
		delta int64
		want  string
	}{
		{"past __bss_start", func(b *BzImage) { b.Relocs.Rel64[0] = b.RelocEnd + 8 }, 0x10000, 0x200000,
			"64-bit relocation 0 at 0xffffffff81008008 lies outside the kernel [0xffffffff81000000, 0xffffffff81008000]"},
		{"below _text", func(b *BzImage) { b.Relocs.Rel32[0] = b.TextVA - 4 }, 0x10000, 0x200000, "32-bit relocation 0 at 0xffffffff80fffffc"},
		{"short image", func(*BzImage) {}, 0x202, 0x200000, "inverse 32-bit relocation 0 at 0xffffffff81000200 lies outside the kernel [0xffffffff81000000, 0xffffffff81008000] or the 0x202-byte image"},
		{"below the kernel map", func(*BzImage) {}, 0x10000, -0x2000000, "outside the kernel map"},
		{"past the kernel map", func(*BzImage) {}, 0x10000, 0x40000000, "outside the kernel map"},
		{"no tables", func(b *BzImage) { b.Relocs = Relocs{} }, 0x10000, 0x200000, "the kernel has no relocation tables"},
	} {
		bz := synthetic()
		c.edit(bz)
		img := bytes.Repeat([]byte{0xa5}, c.image)
		err := bz.Relocate(img, c.delta)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want %q", c.name, err, c.want)
		}
		if !bytes.Equal(img, bytes.Repeat([]byte{0xa5}, c.image)) {
			t.Errorf("%s: the refused relocation changed the image", c.name)
		}
	}
	noTables := synthetic()
	noTables.Relocs = Relocs{}
	if err := noTables.Relocate(img, 0); err != nil {
		t.Errorf("delta 0 without tables: %v", err)
	}
}

// TestRelocateRealKernel applies the setup kernel's own tables: delta 0 leaves the image as it
// is; the largest delta KASLR could choose changes every site by exactly delta and nothing else;
// a kernel moved out of the kernel map is refused.
func TestRelocateRealKernel(t *testing.T) {
	bz, _, _ := needKernel(t)
	orig := bz.Image()
	img := bytes.Clone(orig)
	if err := bz.Relocate(img, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(img, orig) {
		t.Error("Relocate with delta 0 changed the image")
	}
	// _text may go up to KERNEL_IMAGE_SIZE − the image's size above __START_KERNEL_map.
	top := int64(kernelImageSize - bz.ImageSize() - (bz.TextVA - startKernelMap))
	low := -int64(bz.TextVA - startKernelMap)
	for _, d := range []int64{top + 0x200000, low - 0x200000} {
		if err := bz.Relocate(img, d); err == nil || !strings.Contains(err.Error(), "outside the kernel map") {
			t.Errorf("delta %#x: %v; want it refused", d, err)
		}
	}
	for _, delta := range []int64{top, low} {
		img := bytes.Clone(orig)
		if err := bz.Relocate(img, delta); err != nil {
			t.Fatal(err)
		}
		le := binary.LittleEndian
		covered := make([]bool, len(img))
		wrong := 0
		for _, tb := range bz.Relocs.tables() {
			d := uint64(delta * tb.sign)
			for _, a := range tb.entries {
				off := a - bz.TextVA
				for i := off; i < off+tb.width; i++ {
					if covered[i] {
						t.Fatalf("%s site %#x overlaps another site", tb.name, a)
					}
					covered[i] = true
				}
				if tb.width == 4 && le.Uint32(img[off:]) != le.Uint32(orig[off:])+uint32(d) ||
					tb.width == 8 && le.Uint64(img[off:]) != le.Uint64(orig[off:])+d {
					wrong++
				}
			}
		}
		changedElsewhere := 0
		for i := range img {
			if !covered[i] && img[i] != orig[i] {
				changedElsewhere++
			}
		}
		if wrong > 0 || changedElsewhere > 0 {
			t.Errorf("delta %#x: %d sites not moved by exactly delta, %d bytes outside the sites changed", delta, wrong, changedElsewhere)
		}
	}
}

// TestRelocateMatchesKASLRGuest is the ground truth: a plain QEMU VM boots the setup's kernel
// with KASLR on, its decompressor relocating it with the same tables; the image laid out and
// relocated here with the guest's delta must hold what the guest's RAM holds at the relocation
// sites that the running kernel leaves alone. The guest tells its load address and delta over
// the command channel.
func TestRelocateMatchesKASLRGuest(t *testing.T) {
	testenv.SkipIfShort(t, "boots a KASLR guest under TCG")
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		testenv.Skip(t, "no qemu-system-x86_64")
	}
	bz, _, _ := needKernel(t)
	demo, err := plainvm.DemoImage()
	if err != nil {
		testenv.Skipf(t, "demo image: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	args := []string{
		"-machine", "pc", "-accel", "tcg", "-m", "256M", "-smp", "1",
		"-kernel", demo.Kernel, "-initrd", demo.Initrd,
		"-append", "console=ttyS0 panic=-1",
		"-nodefaults", "-display", "none", "-no-reboot",
	}
	args = append(args, plainvm.ChannelArgs(dir+"/console.log", dir+"/cmd.sock")...)
	args = append(args, plainvm.QMPArgs(dir+"/qmp.sock")...)
	vm, err := plainvm.Start(ctx, dir, args, plainvm.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Stop()
	start := time.Now()
	if err := vm.WaitReady(ctx, 0); err != nil {
		t.Fatal(err)
	}
	t.Logf("guest ready after %v", time.Since(start).Round(time.Millisecond))

	phys, textVA := guestLayout(ctx, t, vm)
	delta := int64(textVA - bz.TextVA)
	t.Logf("guest: _text %#x at physical %#x: delta %#x", textVA, phys, delta)
	if delta == 0 {
		t.Log("KASLR chose delta 0 this boot: the comparison cannot tell relocated from not")
	}

	// Read the kernel while the guest is paused: what is compared must come from one instant.
	tg, err := target.OpenQMP(ctx, vm.QMPSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	if err := tg.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	ram := make([]byte, bz.ImageSize())
	err = tg.Phys().ReadPhys(phys, ram)
	if rerr := tg.Resume(ctx); err == nil {
		err = rerr
	}
	if err != nil {
		t.Fatal(err)
	}

	orig := bz.Image()
	img := bytes.Clone(orig)
	if err := bz.Relocate(img, delta); err != nil {
		t.Fatal(err)
	}

	// Tally the sites by table and section; a site matches when all its bytes do.
	secs := kernelSections(bz)
	type key struct{ table, section string }
	type tally struct{ sites, match, unrelocMatch int }
	counts := map[key]*tally{}
	var keys []key
	for _, tb := range bz.Relocs.tables() {
		for _, a := range tb.entries {
			off := a - bz.TextVA
			k := key{tb.name, secs.find(a).Name}
			c := counts[k]
			if c == nil {
				c = &tally{}
				counts[k] = c
				keys = append(keys, k)
			}
			c.sites++
			if bytes.Equal(img[off:off+tb.width], ram[off:off+tb.width]) {
				c.match++
			}
			if bytes.Equal(orig[off:off+tb.width], ram[off:off+tb.width]) {
				c.unrelocMatch++
			}
		}
	}
	// Sites the running kernel leaves alone: read-only data (but for a few __ro_after_init
	// variables inside .rodata) and, at the relocation sites, the text: alternatives and the like
	// patch other bytes there. .data changes as the kernel runs; init sections are freed.
	var ro, text tally
	for _, k := range keys {
		c := counts[k]
		t.Logf("%-15s %-22s %7d sites %7d match (%6.2f%%) %7d match unrelocated",
			k.table, k.section, c.sites, c.match, 100*float64(c.match)/float64(c.sites), c.unrelocMatch)
		sum := &ro
		switch {
		case k.section == ".text":
			sum = &text
		case !secs.readOnly(k.section):
			continue
		}
		sum.sites += c.sites
		sum.match += c.match
		sum.unrelocMatch += c.unrelocMatch
	}
	for _, g := range []struct {
		name string
		c    tally
		min  int
	}{{"read-only data", ro, 10000}, {".text", text, 10000}} {
		t.Logf("%s: %d sites, %d match relocated (%.3f%%), %d match unrelocated",
			g.name, g.c.sites, g.c.match, 100*float64(g.c.match)/float64(g.c.sites), g.c.unrelocMatch)
		if g.c.sites < g.min {
			t.Errorf("only %d relocation sites in %s", g.c.sites, g.name)
		}
		if g.c.match*100 < g.c.sites*99 {
			t.Errorf("%d of %d sites in %s match the guest, want ≥ 99%%", g.c.match, g.c.sites, g.name)
		}
		if delta != 0 && g.c.unrelocMatch*100 > g.c.sites {
			t.Errorf("%d of %d sites in %s match the guest without relocation: the comparison proves nothing", g.c.unrelocMatch, g.c.sites, g.name)
		}
	}
}

// guestLayout asks the guest where its kernel is: the physical start of "Kernel code" in
// /proc/iomem and _text's virtual address in /proc/kallsyms.
func guestLayout(ctx context.Context, t *testing.T, vm *plainvm.VM) (phys, text uint64) {
	t.Helper()
	res, err := vm.Exec(ctx, "cat /proc/cmdline; cat /proc/iomem")
	if err != nil {
		t.Fatal(err)
	}
	out := string(res.Stdout)
	if cmdline, _, _ := strings.Cut(out, "\n"); strings.Contains(cmdline, "nokaslr") {
		t.Fatalf("guest command line %q turns KASLR off", cmdline)
	}
	for sc := bufio.NewScanner(strings.NewReader(out)); sc.Scan(); {
		rng, name, ok := strings.Cut(sc.Text(), " : ")
		if ok && name == "Kernel code" {
			lo, _, _ := strings.Cut(strings.TrimSpace(rng), "-")
			phys, err = strconv.ParseUint(lo, 16, 64)
			if err != nil {
				t.Fatalf("iomem line %q: %v", sc.Text(), err)
			}
		}
	}
	if phys == 0 {
		t.Fatalf("no Kernel code range (or zeros) in the guest's /proc/iomem:\n%s", out)
	}
	for _, cmd := range []string{"grep ' _text$' /proc/kallsyms", "echo 0 > /proc/sys/kernel/kptr_restrict && grep ' _text$' /proc/kallsyms"} {
		res, err := vm.Exec(ctx, cmd)
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(string(res.Stdout))
		if len(f) < 3 {
			t.Fatalf("%s: %q", cmd, res.Stdout)
		}
		if text, err = strconv.ParseUint(f[0], 16, 64); err != nil {
			t.Fatalf("%s: %q: %v", cmd, res.Stdout, err)
		}
		if text != 0 {
			return phys, text
		}
	}
	t.Fatal("the guest's kallsyms shows _text as 0 even with kptr_restrict 0")
	return 0, 0
}

// sections are the kernel's allocated sections, sorted by address in the kernel map.
type sections []*elf.Section

// kernelSections lists the allocated sections at their kernel-map addresses. The per-CPU
// section is linked at 0; the relocation tables name its load address in the kernel map (its
// physical link address + __START_KERNEL_map), so it is listed there.
func kernelSections(bz *BzImage) sections {
	var s sections
	for _, sec := range bz.ELF.Sections {
		if sec.Flags&elf.SHF_ALLOC == 0 || sec.Size == 0 {
			continue
		}
		if sec.Addr < bz.TextVA {
			moved := *sec
			for _, p := range bz.Loads {
				if p.Vaddr <= sec.Addr && sec.Addr < p.Vaddr+p.Memsz {
					moved.Addr = startKernelMap + p.Paddr + (sec.Addr - p.Vaddr)
				}
			}
			if moved.Addr < bz.TextVA {
				continue
			}
			sec = &moved
		}
		s = append(s, sec)
	}
	sort.Slice(s, func(i, j int) bool { return s[i].Addr < s[j].Addr })
	return s
}

// find returns the section holding addr, or a placeholder named after the gap.
func (s sections) find(addr uint64) *elf.Section {
	i := sort.Search(len(s), func(i int) bool { return s[i].Addr > addr }) - 1
	if i >= 0 && addr < s[i].Addr+s[i].Size {
		return s[i]
	}
	return &elf.Section{SectionHeader: elf.SectionHeader{Name: "(none)"}}
}

// readOnly reports whether the running kernel leaves a section's contents as the decompressor
// wrote them: allocated, neither code (alternatives, static calls and jump labels patch it) nor
// writable, nor init (freed after boot). .rodata counts although the linker marks it writable:
// that comes from the __ro_after_init data placed inside it.
func (s sections) readOnly(name string) bool {
	for _, sec := range s {
		if sec.Name != name {
			continue
		}
		if name == ".rodata" {
			return true
		}
		return sec.Flags&(elf.SHF_WRITE|elf.SHF_EXECINSTR) == 0 && !strings.HasPrefix(name, ".init") &&
			!strings.HasPrefix(name, ".x86_cpu_dev.init") && sec.Addr < initStart(s)
	}
	return false
}

// initStart is the address of .init.text: everything from there is freed or patched during boot.
func initStart(s sections) uint64 {
	for _, sec := range s {
		if sec.Name == ".init.text" {
			return sec.Addr
		}
	}
	return ^uint64(0)
}

// BenchmarkRelocate times applying the setup kernel's tables to its image, alternately by a
// delta and back.
func BenchmarkRelocate(b *testing.B) {
	bz, _, _ := needKernel(b)
	img := bz.Image()
	// ±0xe00000 keeps the kernel inside the map either way.
	const delta = 0xe00000
	sign := int64(1)
	for b.Loop() {
		if err := bz.Relocate(img, sign*delta); err != nil {
			b.Fatal(err)
		}
		sign = -sign
	}
}

// TestUndoRealKernel: the setup kernel's tables survive their encoding, and Undo gives back the
// linked bytes of any window of a relocated image, read with the margin its comment asks for;
// bad encodings are refused.
func TestUndoRealKernel(t *testing.T) {
	bz, _, _ := needKernel(t)
	enc, err := bz.Relocs.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var got Relocs
	if err := got.UnmarshalBinary(enc); err != nil {
		t.Fatal(err)
	}
	for i, tb := range got.tables() {
		want := slices.Sorted(slices.Values(bz.Relocs.tables()[i].entries))
		if !slices.Equal(tb.entries, want) {
			t.Fatalf("%s table: %d entries decoded, %d encoded, or they differ", tb.name, len(tb.entries), len(want))
		}
	}
	t.Logf("%d entries in %d bytes", got.Len(), len(enc))

	orig := bz.Image()
	img := bytes.Clone(orig)
	const delta = 0x2e400000
	if err := bz.Relocate(img, delta); err != nil {
		t.Fatal(err)
	}
	const margin = 8
	wrong, windows := 0, 0
	// Instruction-sized windows at every 13th byte of the text, 15 bytes each as the memo keeps them.
	for off := margin; off+15+margin < len(img) && off < 8<<20; off += 13 {
		w := bytes.Clone(img[off-margin : off+15+margin])
		got.Undo(bz.TextVA+uint64(off-margin), w, delta)
		windows++
		if !bytes.Equal(w[margin:margin+15], orig[off:off+15]) {
			wrong++
		}
	}
	if wrong > 0 {
		t.Errorf("%d of %d windows differ from the linked image after Undo", wrong, windows)
	}

	for _, c := range []struct {
		name string
		data []byte
		want string
	}{
		{"magic", []byte("HBRELOC0\x00\x00\x00"), "bad magic"},
		{"truncated", enc[:len(enc)/2], "relocation tables"},
		{"trailing", append(bytes.Clone(enc), 0), "1 trailing bytes"},
		{"huge count", []byte(relocsMagic + "\xff\xff\xff\x0f"), "entries in"},
	} {
		var r Relocs
		if err := r.UnmarshalBinary(c.data); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want %q", c.name, err, c.want)
		}
	}
}
