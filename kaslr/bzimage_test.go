package kaslr

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"hybridbridge/guest"
	"hybridbridge/internal/testenv"
)

// The setup's kernel (Debian 6.1.0-57-amd64) as measured when this was written: these are facts of that
// build.
const (
	wantRel32 = 76906
	wantInv32 = 8385
	wantRel64 = 137699
)

// kernel is the setup's bzImage, opened once: decompressing it takes seconds.
var kernel struct {
	once    sync.Once
	path    string
	release string
	bz      *BzImage
	err     error
}

// needKernel returns the setup's kernel, opened, with its path and the release the setup
// recorded for it.
func needKernel(t testing.TB) (*BzImage, string, string) {
	t.Helper()
	kernel.once.Do(func() {
		cache, err := guest.FindCacheDir()
		if err != nil {
			kernel.err = err
			return
		}
		kernel.path = filepath.Join(cache, "kernel", "vmlinuz")
		rel, err := os.ReadFile(filepath.Join(cache, "kernel", "release"))
		if err != nil {
			kernel.err = err
			return
		}
		kernel.release = strings.TrimSpace(string(rel))
		kernel.bz, kernel.err = OpenBzImage(kernel.path)
	})
	if errors.Is(kernel.err, guest.ErrNotSetUp) {
		testenv.Skip(t, kernel.err.Error())
	}
	if kernel.err != nil {
		t.Fatal(kernel.err)
	}
	return kernel.bz, kernel.path, kernel.release
}

func TestOpenBzImage(t *testing.T) {
	bz, path, release := needKernel(t)
	if bz.Path != path {
		t.Errorf("Path %q, want %q", bz.Path, path)
	}
	if bz.Release != release {
		t.Errorf("Release %q, want the setup's %q (version %q)", bz.Release, release, bz.Version)
	}
	h := bz.Header
	t.Logf("%s: protocol %#x, setup %d sectors, payload %#x+%#x, init_size %#x, alignment %#x, pref %#x, xloadflags %#x",
		bz.Version, h.Protocol, h.SetupSects, h.PayloadOffset, h.PayloadLength, h.InitSize, h.KernelAlignment, h.PrefAddress, h.XLoadFlags)
	if !h.Relocatable || h.KernelAlignment != 2<<20 || h.PrefAddress != 0x1000000 || h.XLoadFlags&1 == 0 {
		t.Errorf("header: relocatable %v, alignment %#x, pref_address %#x, xloadflags %#x; want a relocatable 64-bit kernel aligned to 2 MiB at 16 MiB",
			h.Relocatable, h.KernelAlignment, h.PrefAddress, h.XLoadFlags)
	}
	if uint64(h.InitSize) < bz.ImageSize() {
		t.Errorf("init_size %#x is smaller than the image's %#x bytes", h.InitSize, bz.ImageSize())
	}

	f := bz.ELF
	// vmlinux's entry is startup_64's physical address, at _text.
	if f.Machine != elf.EM_X86_64 || f.Class != elf.ELFCLASS64 || f.Entry != bz.LoadPhys {
		t.Errorf("ELF %v %v entry %#x; want x86-64 with entry at LOAD_PHYSICAL_ADDR %#x", f.Class, f.Machine, f.Entry, bz.LoadPhys)
	}
	if bz.TextVA != 0xffffffff81000000 || bz.LoadPhys != 0x1000000 {
		t.Errorf("_text %#x at physical %#x; want 0xffffffff81000000 at 0x1000000", bz.TextVA, bz.LoadPhys)
	}
	if len(bz.Loads) < 2 {
		t.Fatalf("%d PT_LOAD segments", len(bz.Loads))
	}
	for _, p := range bz.Loads {
		t.Logf("PT_LOAD off %#x vaddr %#x paddr %#x filesz %#x memsz %#x %v", p.Off, p.Vaddr, p.Paddr, p.Filesz, p.Memsz, p.Flags)
	}
	if bss := f.Section(".bss"); bss == nil || bz.RelocEnd != bss.Addr {
		t.Errorf("RelocEnd %#x is not __bss_start (the .bss section: %v)", bz.RelocEnd, bss)
	}
	if text := f.Section(".text"); text == nil || text.Addr != bz.TextVA {
		t.Errorf("TextVA %#x is not .text's start (%v)", bz.TextVA, text)
	}

	r := &bz.Relocs
	t.Logf("relocations: %d 32-bit, %d inverse 32-bit, %d 64-bit", len(r.Rel32), len(r.Inv32), len(r.Rel64))
	if len(r.Rel32) != wantRel32 || len(r.Inv32) != wantInv32 || len(r.Rel64) != wantRel64 {
		t.Errorf("tables have %d/%d/%d entries, want %d/%d/%d", len(r.Rel32), len(r.Inv32), len(r.Rel64), wantRel32, wantInv32, wantRel64)
	}
	// The tables end the payload exactly: ELF, then three terminators and the entries.
	if got, want := len(bz.VMLinux)+4*(r.Len()+3), int(binary.LittleEndian.Uint32(payloadTail(t, path, bz.Header))); got != want {
		t.Errorf("ELF + tables = %d bytes, the payload decompresses to %d", got, want)
	}

	img := bz.Image()
	for _, tb := range r.tables() {
		// arch/x86/tools/relocs sorts each table.
		if !slices.IsSorted(tb.entries) {
			t.Errorf("%s table is not sorted", tb.name)
		}
		outside, nonKernel := 0, 0
		for _, a := range tb.entries {
			if a < bz.TextVA || a+tb.width > bz.RelocEnd {
				outside++
				continue
			}
			if tb.sign < 0 {
				continue
			}
			// An absolute reference points into the kernel map, but for the few that hold a
			// physical address (sym − __START_KERNEL_map: early page tables, head code) or 0.
			var v uint64
			if tb.width == 4 {
				v = uint64(int64(int32(binary.LittleEndian.Uint32(img[a-bz.TextVA:]))))
			} else {
				v = binary.LittleEndian.Uint64(img[a-bz.TextVA:])
			}
			if v < startKernelMap || v >= startKernelMap+kernelImageSize {
				nonKernel++
			}
		}
		t.Logf("%s table: %d entries, %d outside [_text, __bss_start), %d hold no kernel-map address", tb.name, len(tb.entries), outside, nonKernel)
		if outside > 0 || nonKernel*1000 > len(tb.entries) {
			t.Errorf("%s table: %d of %d entries lie outside [_text, __bss_start), %d hold no kernel-map address (more than 0.1%%)",
				tb.name, outside, len(tb.entries), nonKernel)
		}
	}
}

// payloadTail returns the last four bytes of the bzImage's payload: its decompressed size.
func payloadTail(t *testing.T, path string, h SetupHeader) []byte {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	end := h.ProtectedModeOffset() + int(h.PayloadOffset+h.PayloadLength)
	return data[end-4 : end]
}

// errCompression stands for "a *CompressionError" in the table below.
var errCompression = errors.New("a *CompressionError")

// TestOpenBzImageErrors opens damaged copies of the setup's kernel and other files; each must be
// refused with one line that names the file and says what is wrong.
func TestOpenBzImageErrors(t *testing.T) {
	bz, path, _ := needKernel(t)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h := bz.Header
	payload := h.ProtectedModeOffset() + int(h.PayloadOffset)
	withMagic := func(magic ...byte) []byte {
		b := bytes.Clone(good)
		copy(b[payload:], magic)
		return b
	}
	cases := []struct {
		name  string
		data  []byte
		want  string
		isErr error
	}{
		{"text file", []byte("not a kernel\n"), "too short for a setup header", guest.ErrNotBzImage},
		{"ELF", append([]byte("\x7fELF"), make([]byte, 4096)...), "an ELF file", guest.ErrNotBzImage},
		{"no HdrS", func() []byte { b := bytes.Clone(good); b[offHeaderMagic] = 'X'; return b }(), `no "HdrS"`, guest.ErrNotBzImage},
		{"protocol 2.07", func() []byte { b := bytes.Clone(good); binary.LittleEndian.PutUint16(b[offProtocol:], 0x207); return b }(),
			"boot protocol 2.07 is older than 2.08", guest.ErrNotBzImage},
		{"truncated payload", good[:payload+int(h.PayloadLength)/2], "does not fit in the file", nil},
		{"gzip", withMagic(0x1f, 0x8b, 0x08), "payload compressed with gzip; only XZ is supported (it starts 1f 8b 08", errCompression},
		{"bzip2", withMagic('B', 'Z', 'h', '9'), "payload compressed with bzip2", errCompression},
		{"lzma", withMagic(0x5d, 0, 0, 0x80), "payload compressed with LZMA", errCompression},
		{"lzo", withMagic(0x89, 'L', 'Z', 'O', 0), "payload compressed with LZO", errCompression},
		{"lz4", withMagic(0x02, 0x21, 0x4c, 0x18), "payload compressed with LZ4", errCompression},
		{"zstd", withMagic(0x28, 0xb5, 0x2f, 0xfd), "payload compressed with zstd; only XZ is supported", errCompression},
		{"unknown", withMagic(0xde, 0xad, 0xbe, 0xef), "payload compressed with an unknown compression", errCompression},
		{"corrupt XZ data", func() []byte { b := bytes.Clone(good); b[payload+int(h.PayloadLength)/2] ^= 0x55; return b }(),
			"payload: xz: block 0 at 0xc:", nil},
		{"wrong size", func() []byte {
			b := bytes.Clone(good)
			end := payload + int(h.PayloadLength)
			binary.LittleEndian.PutUint32(b[end-4:], binary.LittleEndian.Uint32(b[end-4:])+4)
			return b
		}(), "the bzImage says", nil},
	}
	dir := t.TempDir()
	for _, c := range cases {
		p := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-"))
		if err := os.WriteFile(p, c.data, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := OpenBzImage(p)
		t.Logf("%s: %v", c.name, err)
		switch {
		case err == nil:
			t.Errorf("%s: opened", c.name)
		case !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), p) || strings.Contains(err.Error(), "\n"):
			t.Errorf("%s: %q; want one line naming %s and containing %q", c.name, err, p, c.want)
		case c.isErr == errCompression && !errors.As(err, new(*CompressionError)):
			t.Errorf("%s: %v is not a *CompressionError", c.name, err)
		case c.isErr != nil && c.isErr != errCompression && !errors.Is(err, c.isErr):
			t.Errorf("%s: %v does not wrap %v", c.name, err, c.isErr)
		}
	}
	if _, err := OpenBzImage(filepath.Join(dir, "missing")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// BenchmarkOpenBzImage times reading the file, decompressing the payload and reading the tables.
func BenchmarkOpenBzImage(b *testing.B) {
	_, path, _ := needKernel(b)
	for b.Loop() {
		if _, err := OpenBzImage(path); err != nil {
			b.Fatal(err)
		}
	}
}
