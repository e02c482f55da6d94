package kaslr

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The testdata files were made with XZ Utils 5.4.1 from x86.bin, 16 KiB of code-like bytes
// (snippets repeated from a small pool so LZMA2 finds matches, CALL/JMP rel32 with near targets,
// runs of E8/E9 close together):
//
//	x86-crc32.xz         xz --check=crc32 --x86 --lzma2=dict=1MiB         (the kernel's chain)
//	x86-start-sha256.xz  xz --check=sha256 --x86=start=4660 --lzma2=dict=64KiB
//	x86-blocks-crc64.xz  xz --check=crc64 --block-size=4000 --x86 --lzma2=preset=6
//	lzma2-none.xz        xz --check=none --lzma2
//	delta.xz             the first 256 bytes, xz --check=crc32 --delta=dist=4 --lzma2
//	x86-small.xz         the first 64 bytes, xz --check=crc32 --x86 --lzma2
func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestDecodeXZ(t *testing.T) {
	want := readTestdata(t, "x86.bin")
	for _, name := range []string{"x86-crc32.xz", "x86-start-sha256.xz", "x86-blocks-crc64.xz", "lzma2-none.xz"} {
		got, err := decodeXZ(readTestdata(t, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: decoded %d bytes differ from x86.bin (%d bytes)", name, len(got), len(want))
		}
	}
}

// TestBCJConverts guards against a BCJ decoder that does nothing: undoing the filter must change
// the data LZMA2 yields, or the test above would pass with the filter skipped.
func TestBCJConverts(t *testing.T) {
	want := readTestdata(t, "x86.bin")
	src := readTestdata(t, "x86-crc32.xz")
	// Rewrite the block header without the BCJ filter: LZMA2 alone yields the filtered bytes,
	// and the check then fails on them.
	hdr := src[xzHeaderSize:]
	size := (int(hdr[0]) + 1) * 4
	if hdr[2] != xzFilterBCJ86 {
		t.Fatalf("x86-crc32.xz: first filter %#x, want x86 BCJ", hdr[2])
	}
	if _, err := decodeXZ(withoutBCJ(t, src, size)); err == nil || !strings.Contains(err.Error(), "CRC32 of the decompressed data mismatch") {
		t.Fatalf("without the BCJ step: %v, want a CRC32 mismatch", err)
	}
	raw, err := decodeXZBlockNoCheck(withoutBCJ(t, src, size))
	if err != nil {
		t.Fatal(err)
	}
	changed := 0
	for i := range raw {
		if raw[i] != want[i] {
			changed++
		}
	}
	bcjX86Decode(raw, 0)
	if !bytes.Equal(raw, want) {
		t.Fatal("bcjX86Decode over the filtered bytes does not give x86.bin")
	}
	if changed < 1000 {
		t.Errorf("the filter changed only %d bytes of %d", changed, len(raw))
	}
	t.Logf("BCJ changed %d of %d bytes", changed, len(raw))
}

// withoutBCJ returns a copy of the single-block stream src whose block header (size bytes) lists
// only the LZMA2 filter, keeping the header's size.
func withoutBCJ(t *testing.T, src []byte, size int) []byte {
	t.Helper()
	out := bytes.Clone(src)
	hdr := out[xzHeaderSize : xzHeaderSize+size]
	// flags: one filter; then LZMA2's ID, property size and property, zero padding, CRC32.
	lzma2 := bytes.Clone(hdr[4:7])
	if lzma2[0] != xzFilterLZMA2 {
		t.Fatalf("second filter %#x, want LZMA2", lzma2[0])
	}
	hdr[1] = 0
	copy(hdr[2:], lzma2)
	clear(hdr[5 : size-4])
	binary.LittleEndian.PutUint32(hdr[size-4:], crc32.ChecksumIEEE(hdr[:size-4]))
	return out
}

// decodeXZBlockNoCheck decodes a single-block stream, skipping its check.
func decodeXZBlockNoCheck(src []byte) ([]byte, error) {
	foot := src[len(src)-xzFooterSize:]
	indexSize := (uint64(binary.LittleEndian.Uint32(foot[4:8])) + 1) * 4
	recs, err := readXZIndex(src[uint64(len(src)-xzFooterSize)-indexSize : len(src)-xzFooterSize])
	if err != nil {
		return nil, err
	}
	check := xzChecks[src[7]]
	check.hash = nil
	r := recs[0]
	out := make([]byte, r.uncompressed)
	return out, decodeXZBlock(out, src[xzHeaderSize:xzHeaderSize+(r.unpadded+3)&^3], r.unpadded, check)
}

// TestDecodeXZErrors damages a good stream in each part the decoder checks.
func TestDecodeXZErrors(t *testing.T) {
	good := readTestdata(t, "x86-crc32.xz")
	indexSize := int(binary.LittleEndian.Uint32(good[len(good)-8:])+1) * 4
	checkEnd := len(good) - xzFooterSize - indexSize
	edit := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	flip := func(off int) []byte {
		return edit(func(b []byte) []byte {
			if off < 0 {
				off += len(b)
			}
			b[off] ^= 0x40
			return b
		})
	}
	cases := []struct {
		name string
		src  []byte
		want string
	}{
		{"empty", nil, "too short"},
		{"magic", flip(1), "no stream header magic"},
		{"stream flags", flip(7), "stream header CRC32 mismatch"},
		{"truncated", good[:len(good)-100], "no stream footer magic"},
		{"trailing data", append(bytes.Clone(good), 0, 0, 0, 0), "no stream footer magic"},
		{"footer CRC", flip(-7), "stream footer CRC32 mismatch"},
		{"index", flip(-xzFooterSize - 6), "index: CRC32 mismatch"},
		{"block header", flip(xzHeaderSize + 3), "block header CRC32 mismatch"},
		{"data", flip(len(good) / 2), "block 0"},
		{"check", flip(checkEnd - 2), "CRC32 of the decompressed data mismatch"},
		{"delta filter", readTestdata(t, "delta.xz"), "filter chain has filter 0x3 at position 0; only [x86 BCJ,] LZMA2 is supported"},
	}
	for _, c := range cases {
		_, err := decodeXZ(c.src)
		t.Logf("%s: %v", c.name, err)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v; want one line containing %q", c.name, err, c.want)
		}
	}
}

// TestBCJShort feeds the filter inputs too short to convert and degenerate runs; none may panic,
// and nothing within the last four bytes changes.
func TestBCJShort(t *testing.T) {
	for n := 0; n <= 6; n++ {
		for _, fill := range []byte{0x00, 0xe8, 0xe9, 0xff} {
			buf := bytes.Repeat([]byte{fill}, n)
			orig := bytes.Clone(buf)
			bcjX86Decode(buf, 0)
			if n <= 4 && !bytes.Equal(buf, orig) {
				t.Errorf("%d × %#x: changed to % x", n, fill, buf)
			}
		}
	}
	buf := bytes.Repeat([]byte{0xe8}, 4096)
	bcjX86Decode(buf, 0xfffffff0)
}

func TestReadVarint(t *testing.T) {
	for _, c := range []struct {
		in   []byte
		v    uint64
		n    int
		what string
	}{
		{[]byte{0x00}, 0, 1, "zero"},
		{[]byte{0x7f}, 0x7f, 1, "one byte"},
		{[]byte{0xb7, 0xdf, 0xef, 0x03}, 8122295, 4, "the kernel's unpadded size"},
		{[]byte{0x80, 0x00}, 0, 0, "redundant zero byte"},
		{[]byte{0x80}, 0, 0, "unterminated"},
		{bytes.Repeat([]byte{0xff}, 10), 0, 0, "too long"},
	} {
		if v, n := readVarint(c.in); v != c.v || n != c.n {
			t.Errorf("%s: readVarint(% x) = %d, %d; want %d, %d", c.what, c.in, v, n, c.v, c.n)
		}
	}
}

// FuzzDecodeXZ checks that no input makes the decoder panic or return data with an error.
func FuzzDecodeXZ(f *testing.F) {
	// Small seeds: with the 10 KiB ones the fuzzer barely runs.
	for _, name := range []string{"x86-small.xz", "delta.xz"} {
		f.Add(readTestdata(f, name))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		out, err := decodeXZ(src)
		if err != nil && out != nil {
			t.Fatalf("error %v with %d bytes of output", err, len(out))
		}
	})
}
