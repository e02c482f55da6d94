package target

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func readTestdata(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestMtreeRAMLayout(t *testing.T) {
	cases := []struct {
		file  string
		block string
		want  []blockRange
	}{
		// After the firmware ran, the pieces below 1 MiB that it write-protected show as "rom" but
		// are pc.ram all the same, contiguous with the rest: one range.
		{"mtree-pc-256M.txt", "pc.ram", []blockRange{{0, 0, 0x10000000}}},
		// q35 splits at 2 GiB; the part above 4 GiB comes from block offset 2 GiB.
		{"mtree-q35-4G.txt", "pc.ram", []blockRange{{0, 0, 0x80000000}, {0x100000000, 0x80000000, 0x80000000}}},
		// The VGA window cuts pc.ram; before the firmware runs, 768 KiB-1 MiB is pc.rom and pc.bios.
		{"mtree-pc-vga-prelaunch.txt", "pc.ram", []blockRange{{0, 0, 0xa0000}, {0x100000, 0x100000, 0xff00000}}},
		// -machine memory-backend=mem0 names the block after the backend; pc splits 4 GiB at 3 GiB.
		{"mtree-pc-backend-4G.txt", "mem0", []blockRange{{0, 0, 0xc0000}, {0x100000, 0x100000, 0xbff00000}, {0x100000000, 0xc0000000, 0x40000000}}},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			block, got, err := ramLayout(readTestdata(t, c.file))
			if err != nil {
				t.Fatal(err)
			}
			if block != c.block || !reflect.DeepEqual(got, c.want) {
				t.Errorf("ramLayout = %q %+v, want %q %+v", block, got, c.block, c.want)
			}
		})
	}
}

func TestMtreeFlatViews(t *testing.T) {
	views, err := parseMtree(readTestdata(t, "mtree-pc-256M.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if len(views) < 4 {
		t.Fatalf("%d FlatViews", len(views))
	}
	if want := []string{"memory", "cpu-memory-0", "cpu-memory-1"}; !reflect.DeepEqual(views[0].spaces, want) {
		t.Errorf("FlatView #0 spaces %q, want %q", views[0].spaces, want)
	}
	want := []flatRange{
		{start: 0, size: 0xc3000, kind: "ram", name: "pc.ram"},
		{start: 0xc3000, size: 0x25000, kind: "rom", name: "pc.ram", offset: 0xc3000},
	}
	if !reflect.DeepEqual(views[0].ranges[:2], want) {
		t.Errorf("first ranges %+v, want %+v", views[0].ranges[:2], want)
	}
	last := views[0].ranges[len(views[0].ranges)-1]
	if last != (flatRange{start: 0xfffc0000, size: 0x40000, kind: "rom", name: "pc.bios"}) {
		t.Errorf("last range %+v", last)
	}
}

func TestMtreeBad(t *testing.T) {
	cases := []struct{ name, text, want string }{
		{"empty", "", "no FlatView"},
		{"not mtree", "unknown command: 'info mtre'\r\n", "no FlatView"},
		{"no memory space", "FlatView #0\r\n AS \"I/O\", root: io\r\n Root memory region: io\r\n  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan\r\n",
			`no FlatView of address space "memory"`},
		{"no RAM", "FlatView #0\r\n AS \"memory\", root: system\r\n Root memory region: system\r\n  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios\r\n",
			"no pc.ram"},
		{"inverted range", "FlatView #0\r\n AS \"memory\", root: system\r\n  0000000000002000-0000000000000fff (prio 0, ram): pc.ram\r\n",
			"bad range"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := ramLayout(c.text)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want one containing %q", err, c.want)
			}
		})
	}
}

func TestMtreeGPA2HVA(t *testing.T) {
	// Answers of the pc guest of mtree-pc-256M.txt.
	cases := []struct {
		text      string
		gpa, hva  uint64
		block     string
		wantError string
	}{
		{"Host virtual address for 0x0 (pc.ram) is 0x7fd963e00000\r\n", 0, 0x7fd963e00000, "pc.ram", ""},
		{"Host virtual address for 0xc3000 (pc.ram) is 0x7fd963ec3000\r\n", 0xc3000, 0x7fd963ec3000, "pc.ram", ""},
		{"Host virtual address for 0x100000000 (mem0) is 0x7f50afe00000\r\n", 0x100000000, 0x7f50afe00000, "mem0", ""},
		{"No memory is mapped at address 0x10000000\r\n", 0, 0, "", "No memory is mapped"},
		{"Memory at address 0xfec00000 is not RAM\r\n", 0, 0, "", "is not RAM"},
	}
	for _, c := range cases {
		gpa, hva, block, err := parseGPA2HVA(c.text)
		if c.wantError != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantError) {
				t.Errorf("%q: error %v, want %q", c.text, err, c.wantError)
			}
			continue
		}
		if err != nil || gpa != c.gpa || hva != c.hva || block != c.block {
			t.Errorf("%q: %#x %#x %q %v", c.text, gpa, hva, block, err)
		}
	}
}

func TestMtreeRegisters(t *testing.T) {
	cases := []struct {
		file string
		want []CPUState
	}{
		{"registers-pc-smp2.txt", []CPUState{
			{CR0: 0x80050033, CR3: 0x575a000, CR4: 0x6f0, RIP: 0xffffffff81a592eb, GSBase: 0xffff88800f400000},
			{CR0: 0x80050033, CR3: 0x575a000, CR4: 0x6e0, RIP: 0xffffffff81a592eb, GSBase: 0xffff88800f500000},
		}},
		{"registers-q35-smp2.txt", []CPUState{
			{CR0: 0x80050033, CR3: 0x1009e6000, CR4: 0x6f0, RIP: 0xffffffff81a592eb, GSBase: 0xffff88817bc00000},
			{CR0: 0x80050033, CR3: 0x1009e6000, CR4: 0x6e0, RIP: 0xffffffff81a592eb, GSBase: 0xffff88817bd00000},
		}},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			got, err := parseRegistersAll(readTestdata(t, c.file))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("got %+v\nwant %+v", got, c.want)
			}
		})
	}

	all := readTestdata(t, "registers-pc-smp2.txt")
	// Plain "info registers" prints one vCPU without a CPU# header.
	cpu0 := all[strings.Index(all, "RAX="):strings.Index(all, "CPU#1")]
	got, err := parseRegistersAll(cpu0)
	if err != nil || len(got) != 1 || got[0].GSBase != 0xffff88800f400000 {
		t.Errorf("one vCPU without header: %+v, %v", got, err)
	}
	bad := []struct{ name, text, want string }{
		{"no CR3", strings.Replace(all, "CR3=", "CRx=", 1), "CPU#0 has no CR3"},
		{"no GS", strings.Replace(all, "\nGS =", "\nGX =", 2), "no GS segment line"},
		{"out of order", strings.Replace(all, "CPU#0", "CPU#2", 1), "CPU#2 where CPU#0 was expected"},
		{"empty", "", "has no RIP"},
	}
	for _, c := range bad {
		_, err := parseRegistersAll(c.text)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
	}
}
