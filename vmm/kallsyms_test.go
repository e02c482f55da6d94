package vmm

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func loadTestSymbols(t *testing.T) *Symbols {
	t.Helper()
	s, err := LoadSymbols("testdata/kallsyms")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestKallsymsByName(t *testing.T) {
	s := loadTestSymbols(t)
	if s.Len() != 15 {
		t.Errorf("Len = %d, want 15", s.Len())
	}
	if a, ok := s.Addr("init_task"); !ok || a != 0xffffffff82a00000 {
		t.Errorf("Addr(init_task) = %#x, %v", a, ok)
	}
	if _, ok := s.Addr("no_such_symbol"); ok {
		t.Error("Addr of a missing symbol succeeded")
	}
	// Static symbols repeat: Addr gives the first, All all of them, modules included.
	if a, _ := s.Addr("cleanup_module_notes"); a != 0xffffffff81ad0000 {
		t.Errorf("Addr(cleanup_module_notes) = %#x, want the first", a)
	}
	all := s.All("cleanup_module_notes")
	if len(all) != 3 || all[1].Addr != 0xffffffff81b00000 || all[2].Module != "virtio" || all[2].Type != 't' {
		t.Errorf("All(cleanup_module_notes) = %+v", all)
	}
	if got := s.All("virtio_dev_probe"); len(got) != 1 || got[0] != (Symbol{0xffffffffc0002000, 't', "virtio_dev_probe", "virtio"}) {
		t.Errorf("module symbol = %+v", got)
	}
}

func TestKallsymsLookup(t *testing.T) {
	s := loadTestSymbols(t)
	tests := []struct {
		addr   uint64
		name   string
		off    uint64
		format string
	}{
		{0xffffffff81000000, "startup_64", 0, "startup_64+0x0"}, // aliases: first in file order
		{0xffffffff8100006f, "startup_64", 0x6f, "startup_64+0x6f"},
		{0xffffffff81000070, "secondary_startup_64", 0, "secondary_startup_64+0x0"},
		{0xffffffff81002abc, "do_one_initcall", 0xabc, "do_one_initcall+0xabc"},
		{0xffffffff81b00010, "cleanup_module_notes", 0x10, "cleanup_module_notes+0x10"},
		{0xffffffffc0002123, "cleanup_module_notes", 3, "cleanup_module_notes+0x3 [virtio]"},
		{0xffffffffc0003000, "init_module", 0, "init_module+0x0 [virtio]"},
		{0x1008, "cpu_debug_store", 8, "cpu_debug_store+0x8"},
	}
	for _, tc := range tests {
		name, off, ok := s.Lookup(tc.addr)
		if !ok || name != tc.name || off != tc.off {
			t.Errorf("Lookup(%#x) = %s+%#x, %v; want %s+%#x", tc.addr, name, off, ok, tc.name, tc.off)
		}
		if got := s.Format(tc.addr); got != tc.format {
			t.Errorf("Format(%#x) = %q, want %q", tc.addr, got, tc.format)
		}
	}
	// Nothing precedes an address below the lowest symbol.
	only, err := ParseKallsyms(strings.NewReader("ffffffff81000000 T _stext\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, ok := only.Lookup(0xffffffff80ffffff); ok {
		t.Error("Lookup below the first symbol succeeded")
	}
	if got := only.Format(0x1234); got != "0x1234" {
		t.Errorf("Format without symbol = %q", got)
	}
}

func TestKallsymsRejects(t *testing.T) {
	_, err := LoadSymbols("testdata/kallsyms-restricted")
	if err == nil || !strings.Contains(err.Error(), "kptr_restrict") || !strings.Contains(err.Error(), "testdata/kallsyms-restricted") {
		t.Errorf("all-zero addresses: error %v, want one naming kptr_restrict and the file", err)
	}
	for _, bad := range []string{
		"",
		"\n\n",
		"ffffffff81000000 T\n",
		"ffffffff81000000 TT _stext\n",
		"zzzz T _stext\n",
		"ffffffff81000000 T _stext virtio\n",
		"ffffffff81000000 T _stext\t[]\n",
		"ffffffff81000000 T _stext\t[virtio] extra\n",
	} {
		if _, err := ParseKallsyms(strings.NewReader(bad)); err == nil {
			t.Errorf("ParseKallsyms(%q) succeeded", bad)
		}
	}
}

func TestKallsymsSaveLoad(t *testing.T) {
	s := loadTestSymbols(t)
	path := filepath.Join(t.TempDir(), "kallsyms.cache")
	if err := s.Save(path); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile("testdata/kallsyms")
	if err != nil {
		t.Fatal(err)
	}
	// The sample ends with a blank line, which parsing skips.
	if !bytes.Equal(got, bytes.TrimSuffix(orig, []byte("\n"))) {
		t.Errorf("saved text differs from the input:\n%s", got)
	}
	back, err := LoadSymbols(path)
	if err != nil {
		t.Fatal(err)
	}
	if back.Len() != s.Len() || back.Format(0xffffffffc0002123) != s.Format(0xffffffffc0002123) {
		t.Error("loaded table differs")
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("Save left %d files behind", len(entries))
	}
}

// TestKallsymsShifted: the image's symbols move by the offset, per-CPU and module ones stay, and
// lookups by address follow; the original table is unchanged.
func TestKallsymsShifted(t *testing.T) {
	s := loadTestSymbols(t)
	const delta = 0x3e00000
	sh := s.Shifted(0xffffffff80000000, 0xffffffffc0000000, delta)
	for name, want := range map[string]uint64{
		"_text":             0xffffffff81000000 + delta,
		"init_task":         0xffffffff82a00000 + delta,
		"_end":              0xffffffff82c00000 + delta,
		"cpu_debug_store":   0x1000,
		"virtio_dev_probe":  0xffffffffc0002000,
		"fixed_percpu_data": 0,
	} {
		if got, ok := sh.Addr(name); !ok || got != want {
			t.Errorf("shifted %s = %#x, %v; want %#x", name, got, ok, want)
		}
	}
	if name, off, ok := sh.Lookup(0xffffffff81002abc + delta); !ok || name != "do_one_initcall" || off != 0xabc {
		t.Errorf("shifted Lookup = %s+%#x, %v", name, off, ok)
	}
	if a, _ := s.Addr("_text"); a != 0xffffffff81000000 {
		t.Errorf("the original table moved: _text %#x", a)
	}
	if got := sh.All("cleanup_module_notes"); len(got) != 3 || got[0].Addr != 0xffffffff81ad0000+delta || got[2].Addr != 0xffffffffc0002120 {
		t.Errorf("shifted All(cleanup_module_notes) = %+v", got)
	}
}
