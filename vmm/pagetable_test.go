package vmm

import (
	"errors"
	"strings"
	"testing"
)

// tables builds x86-64 page tables in a byte slice that backs a BytesView.
type tables struct {
	t      testing.TB
	data   []byte
	next   uint64 // next free page for a table
	root   uint64
	levels int
}

const tablesArena = 1 << 20 // tables live in the first MiB of test memory

func newTables(t testing.TB, size uint64, levels int) *tables {
	t.Helper()
	b := &tables{t: t, data: make([]byte, size), next: 0x1000, levels: levels}
	b.root = b.alloc()
	return b
}

func (b *tables) alloc() uint64 {
	if b.next >= tablesArena {
		b.t.Fatal("test page-table arena full")
	}
	pa := b.next
	b.next += 0x1000
	return pa
}

func (b *tables) get(pa uint64) uint64 {
	var v uint64
	for i := 7; i >= 0; i-- {
		v = v<<8 | uint64(b.data[pa+uint64(i)])
	}
	return v
}

func (b *tables) set(pa, v uint64) {
	for i := 0; i < 8; i++ {
		b.data[pa+uint64(i)] = byte(v >> (8 * i))
	}
}

// slot returns the physical address of the entry for va at level, creating intermediate tables
// (present, writable, user) on the way.
func (b *tables) slot(va uint64, level int) uint64 {
	table := b.root
	for l := b.levels; ; l-- {
		at := table + (va>>levelShift(l)&511)*8
		if l == level {
			return at
		}
		e := b.get(at)
		if e&PTEPresent == 0 {
			e = b.alloc() | PTEPresent | PTEWrite | PTEUser
			b.set(at, e)
		}
		table = e & PTEAddrMask
	}
}

// mapPage maps one page of size (4K, 2M or 1G) with the given leaf bits (present is implied).
func (b *tables) mapPage(va, pa, size, bits uint64) {
	level := map[uint64]int{PageSize4K: 1, PageSize2M: 2, PageSize1G: 3}[size]
	if level == 0 {
		b.t.Fatalf("bad page size %#x", size)
	}
	if level > 1 {
		bits |= PTEPageSize
	}
	b.set(b.slot(va, level), pa|bits|PTEPresent)
}

func (b *tables) walker(cr3Extra uint64) *Walker {
	b.t.Helper()
	view, err := NewBytesView("test-ram", b.data, nil)
	if err != nil {
		b.t.Fatal(err)
	}
	w, err := NewWalker(view, b.root|cr3Extra, b.levels)
	if err != nil {
		b.t.Fatal(err)
	}
	return w
}

const (
	kernelText = 0xffffffff81000000
	la57Direct = 0xff11000000000000 // LA57 direct-map base
)

func TestTranslate(t *testing.T) {
	rw := PTEWrite
	tests := []struct {
		name     string
		levels   int
		cr3Extra uint64
		build    func(b *tables)
		va       uint64
		wantPA   uint64
		wantSize uint64
		wantFlag Flags
		wantErr  error
		errText  string
	}{
		{name: "4K", levels: 4, va: 0x401234, wantPA: 0x20234, wantSize: PageSize4K, wantFlag: FlagWrite | FlagUser | FlagExec,
			build: func(b *tables) { b.mapPage(0x401000, 0x20000, PageSize4K, rw|PTEUser) }},
		{name: "2M", levels: 4, va: kernelText + 0x12345, wantPA: 0x1012345, wantSize: PageSize2M, wantFlag: FlagExec | FlagGlobal,
			build: func(b *tables) { b.mapPage(kernelText, 0x1000000, PageSize2M, PTEGlobal) }},
		{name: "1G", levels: 4, va: 0xffff888000000000 + 0x3456789, wantPA: 0x43456789, wantSize: PageSize1G, wantFlag: FlagWrite | FlagAccessed | FlagDirty,
			build: func(b *tables) {
				b.mapPage(0xffff888000000000, 0x40000000, PageSize1G, rw|PTENoExec|PTEAccessed|PTEDirty)
			}},
		{name: "5-level 4K", levels: 5, va: la57Direct + 0x7ff, wantPA: 0x307ff, wantSize: PageSize4K, wantFlag: FlagWrite,
			build: func(b *tables) { b.mapPage(la57Direct, 0x30000, PageSize4K, rw|PTENoExec) }},
		{name: "5-level 2M low half above 47 bits", levels: 5, va: 0x00ff_0000_0020_0010, wantPA: 0x200010, wantSize: PageSize2M, wantFlag: FlagExec,
			build: func(b *tables) { b.mapPage(0x00ff_0000_0020_0000, 0x200000, PageSize2M, 0) }},
		{name: "CR3 PCID and no-flush bits ignored", levels: 4, cr3Extra: 1<<63 | 0x5a5, va: 0x1000, wantPA: 0x9000, wantSize: PageSize4K, wantFlag: FlagExec,
			build: func(b *tables) { b.mapPage(0x1000, 0x9000, PageSize4K, 0) }},
		{name: "NX, pkey and software bits stay out of the address", levels: 4, va: 0x5008, wantPA: 0x7f000008, wantSize: PageSize4K, wantFlag: FlagWrite,
			build: func(b *tables) { b.mapPage(0x5000, 0x7f000000, PageSize4K, rw|PTENoExec|0xf<<59|0x7f<<52) }},
		{name: "PAT bit 12 of a 2M page stays out of the address", levels: 4, va: 0x600000, wantPA: 0xa00000, wantSize: PageSize2M, wantFlag: FlagExec,
			build: func(b *tables) { b.mapPage(0x600000, 0xa00000|1<<12, PageSize2M, 0) }},
		{name: "PAT bit 7 of a PTE is not a page size", levels: 4, va: 0x7000, wantPA: 0xb000, wantSize: PageSize4K, wantFlag: FlagExec,
			build: func(b *tables) { b.mapPage(0x7000, 0xb000, PageSize4K, 1<<7) }},
		{name: "NX and read-only in upper levels apply to the page", levels: 4, va: 0x8000, wantPA: 0xc000, wantSize: PageSize4K, wantFlag: FlagUser,
			build: func(b *tables) {
				b.mapPage(0x8000, 0xc000, PageSize4K, rw|PTEUser)
				b.set(b.slot(0x8000, 2), b.get(b.slot(0x8000, 2))|PTENoExec)
				b.set(b.slot(0x8000, 4), b.get(b.slot(0x8000, 4))&^PTEWrite)
			}},
		{name: "non-canonical 4-level", levels: 4, va: 0x0000_8000_0000_0000, wantErr: ErrNonCanonical},
		{name: "non-canonical upper 4-level", levels: 4, va: 0xfff0_7fff_ffff_f000, wantErr: ErrNonCanonical},
		{name: "non-canonical 5-level", levels: 5, va: 0x0100_0000_0000_0000, wantErr: ErrNonCanonical},
		{name: "canonical in 5-level only, unmapped", levels: 5, va: 0x0000_8000_0000_0000, wantErr: ErrNotPresent, errText: "PML5E"},
		{name: "PS in PML4E is reserved", levels: 4, va: 0x1000, wantErr: ErrReservedBit,
			build: func(b *tables) { b.set(b.slot(0x1000, 4), 0x40000000|PTEPresent|PTEPageSize) }},
		{name: "table outside RAM", levels: 4, va: 0x1000, wantErr: ErrNotBacked,
			build: func(b *tables) { b.set(b.slot(0x1000, 3), 0x7000_0000|PTEPresent) }},
	}
	// A page that is missing at each level in turn.
	for level := 1; level <= 5; level++ {
		levels := max(4, level)
		tests = append(tests, struct {
			name     string
			levels   int
			cr3Extra uint64
			build    func(b *tables)
			va       uint64
			wantPA   uint64
			wantSize uint64
			wantFlag Flags
			wantErr  error
			errText  string
		}{name: "not present at " + levelName(level), levels: levels, va: kernelText, wantErr: ErrNotPresent, errText: levelName(level),
			build: func(b *tables) {
				b.mapPage(kernelText, 0x5000, PageSize4K, 0)
				at := b.slot(kernelText, level)
				b.set(at, b.get(at)&^PTEPresent)
			}})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := newTables(t, 2<<20, tc.levels)
			if tc.build != nil {
				tc.build(b)
			}
			w := b.walker(tc.cr3Extra)
			pa, size, flags, err := w.Translate(tc.va)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Translate(%#x) = %#x, %v; want error %v", tc.va, pa, err, tc.wantErr)
				}
				var fe *FaultError
				if !errors.As(err, &fe) || fe.Addr != tc.va || fe.View != "test-ram" {
					t.Errorf("error %v does not carry view test-ram and address %#x", err, tc.va)
				}
				if !strings.Contains(err.Error(), tc.errText) {
					t.Errorf("error %q does not mention %q", err, tc.errText)
				}
				return
			}
			if err != nil {
				t.Fatalf("Translate(%#x): %v", tc.va, err)
			}
			if pa != tc.wantPA || size != tc.wantSize || flags != tc.wantFlag {
				t.Errorf("Translate(%#x) = %#x, %#x, %v; want %#x, %#x, %v", tc.va, pa, size, flags, tc.wantPA, tc.wantSize, tc.wantFlag)
			}
		})
	}
}

func TestLookup(t *testing.T) {
	b := newTables(t, 2<<20, 4)
	b.mapPage(0x1000, 0x3000, PageSize4K, PTEWrite)
	w := b.walker(0)
	if pa, size, _, err := w.Lookup(0x1010); err != nil || pa != 0x3010 || size != PageSize4K {
		t.Errorf("Lookup(mapped) = %#x, %#x, %v", pa, size, err)
	}
	if pa, size, flags, err := w.Lookup(0x2000); err != nil || pa != 0 || size != 0 || flags != 0 {
		t.Errorf("Lookup(unmapped) = %#x, %#x, %v, %v; want zeros and no error", pa, size, flags, err)
	}
	if _, _, _, err := w.Lookup(1 << 47); !errors.Is(err, ErrNonCanonical) {
		t.Errorf("Lookup(non-canonical) error = %v", err)
	}
}

func TestPKey(t *testing.T) {
	b := newTables(t, 2<<20, 4)
	b.mapPage(0x1000, 0x3000, PageSize4K, 0xb<<59)
	var got []Mapping
	if err := b.walker(0).Mappings(0, ^uint64(0), func(m Mapping) error { got = append(got, m); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].PKey != 0xb || got[0].PA != 0x3000 {
		t.Errorf("got %+v, want one mapping with pkey 0xb at 0x3000", got)
	}
}

func TestMappings(t *testing.T) {
	for _, levels := range []int{4, 5} {
		b := newTables(t, 2<<20, levels)
		upper := ^uint64(0) << (12 + 9*levels - 1)
		b.mapPage(0x1000, 0x5000, PageSize4K, PTEUser)
		b.mapPage(0x3000, 0x2000, PageSize4K, PTEUser|PTEWrite)
		b.mapPage(0x40000000, 0x80000000, PageSize1G, 0)
		b.mapPage(upper, 0x200000, PageSize2M, PTENoExec|PTEWrite)
		b.mapPage(kernelText, 0x1000000, PageSize2M, PTEGlobal)
		b.mapPage(kernelText+PageSize2M+0x1000, 0x6000, PageSize4K, 0)
		w := b.walker(0)
		all := []Mapping{
			{VA: 0x1000, PA: 0x5000, Size: PageSize4K, Flags: FlagUser | FlagExec},
			{VA: 0x3000, PA: 0x2000, Size: PageSize4K, Flags: FlagUser | FlagWrite | FlagExec},
			{VA: 0x40000000, PA: 0x80000000, Size: PageSize1G, Flags: FlagExec},
			{VA: upper, PA: 0x200000, Size: PageSize2M, Flags: FlagWrite},
			{VA: kernelText, PA: 0x1000000, Size: PageSize2M, Flags: FlagExec | FlagGlobal},
			{VA: kernelText + PageSize2M + 0x1000, PA: 0x6000, Size: PageSize4K, Flags: FlagExec},
		}
		windows := []struct {
			name        string
			first, last uint64
			want        []Mapping
		}{
			{"everything", 0, ^uint64(0), all},
			{"lower half, partial leaves included whole", 0x1fff, 0x40000000, all[:3]},
			{"across the non-canonical hole", 0x40000000 + PageSize1G, upper + 5, all[3:4]},
			{"kernel image", kernelText + 1, kernelText + PageSize2M + 0x1000, all[4:]},
			{"empty", 0x2000, 0x2fff, nil},
		}
		for _, win := range windows {
			var got []Mapping
			err := w.Mappings(win.first, win.last, func(m Mapping) error {
				m.Entry, m.PKey = 0, 0 // compared separately
				got = append(got, m)
				return nil
			})
			if err != nil {
				t.Fatalf("%d-level %s: %v", levels, win.name, err)
			}
			if len(got) != len(win.want) {
				t.Fatalf("%d-level %s: got %d mappings %+v, want %+v", levels, win.name, len(got), got, win.want)
			}
			for i := range got {
				if got[i] != win.want[i] {
					t.Errorf("%d-level %s: mapping %d = %+v, want %+v", levels, win.name, i, got[i], win.want[i])
				}
			}
		}
		stop := errors.New("stop")
		n := 0
		if err := w.Mappings(0, ^uint64(0), func(Mapping) error { n++; return stop }); err != stop || n != 1 {
			t.Errorf("visitor error: got %v after %d calls, want stop after 1", err, n)
		}
	}
}

func TestMappingsBadTable(t *testing.T) {
	b := newTables(t, 2<<20, 4)
	b.mapPage(0x1000, 0x5000, PageSize4K, 0)
	b.set(b.slot(kernelText, 3), 0x7000_0000|PTEPresent) // PD outside RAM
	err := b.walker(0).Mappings(0, ^uint64(0), func(Mapping) error { return nil })
	var fe *FaultError
	if !errors.As(err, &fe) || fe.Op != opWalk || !errors.Is(err, ErrNotBacked) || fe.Addr != kernelText&^(PageSize1G-1) {
		t.Errorf("got %v, want a walk fault at %#x wrapping ErrNotBacked", err, uint64(kernelText&^(PageSize1G-1)))
	}
}

func TestFlagsString(t *testing.T) {
	if got := (FlagWrite | FlagExec | FlagGlobal | FlagDirty).String(); got != "rwxsg-d" {
		t.Errorf("String() = %q", got)
	}
}
