package kaslr

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"hash/crc64"
	"io"

	"github.com/ulikunitz/xz/lzma"
)

// The kernel compresses its payload with `xz --check=crc32 --x86 --lzma2=…` (scripts/xz_wrap.sh):
// a filter chain of x86 BCJ then LZMA2. github.com/ulikunitz/xz reads only chains made of LZMA2
// alone (its readFilters refuses a second filter), so this file reads the XZ container itself
// (the .xz file format, version 1.0.4), hands each block's LZMA2 data to ulikunitz's raw LZMA2
// reader and undoes the BCJ filter by hand. Running the xz program instead would make the bridge
// depend on a host tool for every kernel it meets.

// XZ container constants (the .xz file format, sections 2 and 3).
const (
	xzHeaderSize  = 12
	xzFooterSize  = 12
	xzFilterBCJ86 = 0x04
	xzFilterLZMA2 = 0x21
	xzMaxVarint   = 9
)

var (
	xzMagic       = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
	xzFooterMagic = []byte{'Y', 'Z'}
	crc64Table    = crc64.MakeTable(crc64.ECMA)
)

// xzCheck is a stream's integrity check over each block's uncompressed data.
type xzCheck struct {
	name string
	size int
	hash func() hash.Hash
}

// xzChecks holds the check types the format defines that have a known hash; the reserved IDs are
// refused.
var xzChecks = map[byte]xzCheck{
	0x00: {"none", 0, nil},
	0x01: {"CRC32", 4, func() hash.Hash { return crc32.NewIEEE() }},
	0x04: {"CRC64", 8, func() hash.Hash { return crc64.New(crc64Table) }},
	0x0a: {"SHA-256", 32, sha256.New},
}

// xzRecord is one index record: where a block's bytes end and how much it decompresses to.
type xzRecord struct {
	unpadded, uncompressed uint64
}

// decodeXZ decompresses one XZ stream that fills src exactly (no stream padding, no second
// stream). It reads the index from the end first, so each block's extent is known before its
// LZMA2 data is decoded and a decoder that stops early or late is caught.
func decodeXZ(src []byte) ([]byte, error) {
	if len(src) < xzHeaderSize+xzFooterSize {
		return nil, fmt.Errorf("xz: %d bytes, too short for a stream", len(src))
	}
	if !bytes.Equal(src[:6], xzMagic) {
		return nil, errors.New("xz: no stream header magic")
	}
	flags := src[6:8]
	if crc32.ChecksumIEEE(flags) != binary.LittleEndian.Uint32(src[8:12]) {
		return nil, errors.New("xz: stream header CRC32 mismatch")
	}
	if flags[0] != 0 || flags[1]&0xf0 != 0 {
		return nil, fmt.Errorf("xz: unsupported stream flags % x", flags)
	}
	check, ok := xzChecks[flags[1]]
	if !ok {
		return nil, fmt.Errorf("xz: unsupported check type %#x", flags[1])
	}

	foot := src[len(src)-xzFooterSize:]
	if !bytes.Equal(foot[10:], xzFooterMagic) {
		return nil, errors.New("xz: no stream footer magic (truncated, or data after the stream)")
	}
	if crc32.ChecksumIEEE(foot[4:10]) != binary.LittleEndian.Uint32(foot[:4]) {
		return nil, errors.New("xz: stream footer CRC32 mismatch")
	}
	if !bytes.Equal(foot[8:10], flags) {
		return nil, errors.New("xz: stream footer flags differ from the header's")
	}
	indexSize := (uint64(binary.LittleEndian.Uint32(foot[4:8])) + 1) * 4
	indexEnd := uint64(len(src) - xzFooterSize)
	if indexSize > indexEnd-xzHeaderSize {
		return nil, fmt.Errorf("xz: index of %d bytes does not fit in the stream", indexSize)
	}
	records, err := readXZIndex(src[indexEnd-indexSize : indexEnd])
	if err != nil {
		return nil, err
	}

	var total uint64
	for _, r := range records {
		// Checked record by record, so the sum cannot wrap.
		if total += r.uncompressed; r.uncompressed > maxPayload || total > maxPayload {
			return nil, fmt.Errorf("xz: index declares more than %d uncompressed bytes", maxPayload)
		}
	}
	out := make([]byte, total)
	pos, done := uint64(xzHeaderSize), uint64(0)
	for i, r := range records {
		padded := (r.unpadded + 3) &^ 3
		if r.unpadded < uint64(check.size)+1 || padded > indexEnd-indexSize-pos {
			return nil, fmt.Errorf("xz: block %d: %d bytes do not fit before the index", i, r.unpadded)
		}
		if err := decodeXZBlock(out[done:done+r.uncompressed], src[pos:pos+padded], r.unpadded, check); err != nil {
			return nil, fmt.Errorf("xz: block %d at %#x: %w", i, pos, err)
		}
		pos += padded
		done += r.uncompressed
	}
	if pos != indexEnd-indexSize {
		return nil, fmt.Errorf("xz: %d bytes between the last block and the index", indexEnd-indexSize-pos)
	}
	return out, nil
}

// readXZIndex parses the index (section 4): indicator 0, record count, records, padding, CRC32.
func readXZIndex(idx []byte) ([]xzRecord, error) {
	fail := func(what string) error { return fmt.Errorf("xz: index: %s", what) }
	if len(idx) < 8 || idx[0] != 0 {
		return nil, fail("no index indicator")
	}
	body := idx[:len(idx)-4]
	if crc32.ChecksumIEEE(body) != binary.LittleEndian.Uint32(idx[len(idx)-4:]) {
		return nil, fail("CRC32 mismatch")
	}
	p := 1
	count, n := readVarint(body[p:])
	if n == 0 {
		return nil, fail("bad record count")
	}
	p += n
	// Each record takes at least two bytes, which bounds count before anything is allocated.
	if count == 0 || count > uint64(len(body)-p)/2 {
		return nil, fail(fmt.Sprintf("%d records in %d bytes", count, len(body)))
	}
	records := make([]xzRecord, count)
	for i := range records {
		var n1, n2 int
		records[i].unpadded, n1 = readVarint(body[p:])
		if n1 > 0 {
			records[i].uncompressed, n2 = readVarint(body[p+n1:])
		}
		if n1 == 0 || n2 == 0 {
			return nil, fail(fmt.Sprintf("record %d is malformed", i))
		}
		p += n1 + n2
	}
	if len(body)-p > 3 || !allZero(body[p:]) {
		return nil, fail("bad padding after the records")
	}
	return records, nil
}

// decodeXZBlock decodes one block into out, which it must fill exactly. block is the whole
// block: header, compressed data, padding to a multiple of 4, check; unpadded is its size without
// the padding, as the index records it.
func decodeXZBlock(out, block []byte, unpadded uint64, check xzCheck) error {
	size := uint64(len(out))
	hdrSize := (int(block[0]) + 1) * 4
	if block[0] == 0 || uint64(hdrSize+check.size) > unpadded {
		return fmt.Errorf("block header size %d does not fit", hdrSize)
	}
	hdr := block[:hdrSize]
	if crc32.ChecksumIEEE(hdr[:hdrSize-4]) != binary.LittleEndian.Uint32(hdr[hdrSize-4:]) {
		return errors.New("block header CRC32 mismatch")
	}
	flags := hdr[1]
	if flags&0x3c != 0 {
		return fmt.Errorf("reserved block flags %#x", flags)
	}
	p := 2
	compressed := unpadded - uint64(hdrSize+check.size)
	if !allZero(block[unpadded-uint64(check.size) : len(block)-check.size]) {
		return errors.New("block padding is not zero")
	}
	for _, present := range []struct {
		bit  byte
		want uint64
		what string
	}{{0x40, compressed, "compressed"}, {0x80, size, "uncompressed"}} {
		if flags&present.bit == 0 {
			continue
		}
		v, n := readVarint(hdr[p : hdrSize-4])
		if n == 0 {
			return fmt.Errorf("bad %s size in the block header", present.what)
		}
		if v != present.want {
			return fmt.Errorf("block header says %d %s bytes, the index %d", v, present.what, present.want)
		}
		p += n
	}

	var bcj bool
	var bcjStart uint32
	var dictCap int
	nFilters := int(flags&3) + 1
	for i := 0; i < nFilters; i++ {
		id, n1 := readVarint(hdr[p : hdrSize-4])
		var propSize uint64
		var n2 int
		if n1 > 0 {
			propSize, n2 = readVarint(hdr[p+n1 : hdrSize-4])
		}
		if n1 == 0 || n2 == 0 || propSize > uint64(hdrSize-4-p-n1-n2) {
			return fmt.Errorf("filter %d is malformed", i)
		}
		p += n1 + n2
		props := hdr[p : p+int(propSize)]
		p += int(propSize)
		last := i == nFilters-1
		switch {
		case id == xzFilterLZMA2 && last:
			if len(props) != 1 || props[0] > 40 {
				return fmt.Errorf("LZMA2 properties % x are invalid", props)
			}
			dictCap = lzma2DictSize(props[0])
		case id == xzFilterBCJ86 && !last && !bcj:
			switch len(props) {
			case 0:
			case 4:
				bcjStart = binary.LittleEndian.Uint32(props)
			default:
				return fmt.Errorf("x86 BCJ properties % x are invalid", props)
			}
			bcj = true
		default:
			return fmt.Errorf("filter chain has filter %#x at position %d; only [x86 BCJ,] LZMA2 is supported", id, i)
		}
	}
	if !allZero(hdr[p : hdrSize-4]) {
		return errors.New("block header padding is not zero")
	}

	// The dictionary never needs to be larger than the data; the kernel's is 32 MiB.
	dictCap = int(min(uint64(dictCap), max(size, lzma.MinDictCap)))
	in := bytes.NewReader(block[hdrSize : uint64(hdrSize)+compressed])
	r, err := lzma.Reader2Config{DictCap: dictCap}.NewReader2(in)
	if err != nil {
		return fmt.Errorf("LZMA2: %w", err)
	}
	if _, err := io.ReadFull(r, out); err != nil {
		return fmt.Errorf("LZMA2 (%d bytes expected): %w", size, err)
	}
	if n, err := r.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		return fmt.Errorf("LZMA2 data goes on past the %d bytes the index declares", size)
	}
	if in.Len() != 0 {
		return fmt.Errorf("LZMA2 data ends %d bytes before the block's check", in.Len())
	}
	if bcj {
		bcjX86Decode(out, bcjStart)
	}
	if check.hash != nil {
		h := check.hash()
		h.Write(out)
		want := block[len(block)-check.size:]
		// CRC32 and CRC64 are stored little-endian, SHA-256 as its bytes.
		sum := h.Sum(nil)
		if check.size <= 8 {
			for i, j := 0, len(sum)-1; i < j; i, j = i+1, j-1 {
				sum[i], sum[j] = sum[j], sum[i]
			}
		}
		if !bytes.Equal(sum, want) {
			return fmt.Errorf("%s of the decompressed data mismatch (corrupt payload)", check.name)
		}
	}
	return nil
}

// lzma2DictSize decodes the LZMA2 filter's one property byte (the format's section 5.3.1).
func lzma2DictSize(p byte) int {
	if p == 40 {
		return 1<<32 - 1
	}
	return (2 | int(p&1)) << (p/2 + 11)
}

// readVarint reads the format's multibyte integer (7 bits a byte, little-endian, at most 9
// bytes, no redundant trailing zero byte). n is 0 when b holds no valid one.
func readVarint(b []byte) (v uint64, n int) {
	for i := 0; i < len(b) && i < xzMaxVarint; i++ {
		v |= uint64(b[i]&0x7f) << (7 * i)
		if b[i]&0x80 == 0 {
			if i > 0 && b[i] == 0 {
				return 0, 0
			}
			return v, i + 1
		}
	}
	return 0, 0
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// bcjX86Decode undoes the x86 BCJ filter in place over a whole block: the encoder turned the
// relative targets of CALL (E8) and JMP (E9) into absolute ones so that repeated calls to one
// function compress well. This follows xz-embedded's bcj_x86 (linux/lib/xz/xz_dec_bcj.c, which
// the kernel's own decompressor runs), applied to the block in one piece: start is the filter's
// start offset property, the position the block's first byte stands for. The last four bytes are
// never converted, as the filter leaves them unconverted at the end of the stream.
func bcjX86Decode(buf []byte, start uint32) {
	// Indexed by the mask of recently seen E8/E9 bytes: whether a conversion is allowed, and which
	// byte of the operand to test.
	allowed := [8]bool{true, true, true, false, true, false, false, false}
	bitNum := [8]uint32{0, 1, 2, 2, 3, 3, 3, 3}
	msByte := func(b byte) bool { return b == 0x00 || b == 0xff }

	if len(buf) <= 4 {
		return
	}
	size := len(buf) - 4
	prevPos := -1
	var prevMask uint32
	for i := 0; i < size; i++ {
		if buf[i]&0xfe != 0xe8 {
			continue
		}
		dist := i - prevPos
		if dist > 3 {
			prevMask = 0
		} else {
			prevMask = (prevMask << (dist - 1)) & 7
			if prevMask != 0 {
				b := buf[i+4-int(bitNum[prevMask])]
				if !allowed[prevMask] || msByte(b) {
					prevPos = i
					prevMask = prevMask<<1 | 1
					continue
				}
			}
		}
		prevPos = i
		if !msByte(buf[i+4]) {
			prevMask = prevMask<<1 | 1
			continue
		}
		src := binary.LittleEndian.Uint32(buf[i+1:])
		var dest uint32
		for {
			dest = src - (start + uint32(i) + 5)
			if prevMask == 0 {
				break
			}
			j := bitNum[prevMask] * 8
			if !msByte(byte(dest >> (24 - j))) {
				break
			}
			src = dest ^ (1<<(32-j) - 1)
		}
		// Sign-extend bit 24 over the top byte: the filter only converts operands whose top byte
		// is 00 or FF, i.e. targets within ±16 MiB.
		dest &= 0x01ffffff
		dest |= -(dest & 0x01000000)
		binary.LittleEndian.PutUint32(buf[i+1:], dest)
		i += 4
	}
}
