package memo

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"slices"
	"strings"
	"time"

	"hybridbridge/decision"
)

const (
	// FormatMajor changes when an old reader cannot read the new
	// encoding; FormatMinor when a newer reader can still read older
	// files of the same major version.
	FormatMajor uint16 = 1
	FormatMinor uint16 = 0

	magic = "HBMEMO\x00\n"
	// frameSize is magic + major + minor + header length + payload length.
	frameSize = len(magic) + 2 + 2 + 4 + 8
	crcSize   = 4

	// Entry flag bits.
	flagRegionsCapped = 1 << 0
	flagHasTime       = 1 << 1
)

// castagnoli is read-only after initialization.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Marshal encodes the memo in the file format. Equal content gives equal
// bytes: entries are sorted by address, strings and statistics by name.
func (m *Memo) Marshal() []byte {
	// The read lock is held throughout, rather than copying entries out
	// first: copying and sorting 100k Entry values cost more than the
	// encoding itself. Lookups (read lock) proceed meanwhile; Learn waits.
	m.mu.RLock()
	defer m.mu.RUnlock()
	pcs := m.sortedPCsLocked()
	scopes := make([]scope, 0, len(m.stats))
	for s := range m.stats {
		scopes = append(scopes, s)
	}
	slices.SortFunc(scopes, func(a, b scope) int {
		if c := strings.Compare(a.view, b.view); c != 0 {
			return c
		}
		return strings.Compare(a.syscall, b.syscall)
	})

	// Regions, views and syscalls repeat across thousands of entries, so
	// they are stored once in a string table and referenced by index.
	index := make(map[string]uint64)
	for _, r := range m.entries {
		index[r.region] = 0
		index[r.view] = 0
		index[r.syscall] = 0
		for _, g := range r.regions {
			index[g] = 0
		}
	}
	for _, s := range scopes {
		index[s.view] = 0
		index[s.syscall] = 0
	}
	table := make([]string, 0, len(index))
	for s := range index {
		table = append(table, s)
	}
	slices.Sort(table)
	for i, s := range table {
		index[s] = uint64(i)
	}

	header := appendString(nil, m.key.Kernel)
	header = appendString(header, m.key.Policy)

	p := make([]byte, 0, 64+40*len(pcs))
	p = binary.AppendUvarint(p, uint64(len(table)))
	for _, s := range table {
		p = appendString(p, s)
	}
	p = binary.AppendUvarint(p, uint64(len(pcs)))
	var prev uint64
	for _, pc := range pcs {
		e := m.entries[pc].entry(pc)
		// Sorted addresses are stored as deltas: kernel text is dense,
		// so most deltas fit in one or two bytes.
		p = binary.AppendUvarint(p, e.PC-prev)
		prev = e.PC
		var flags byte
		if e.RegionsCapped {
			flags |= flagRegionsCapped
		}
		if !e.FirstSeen.IsZero() {
			flags |= flagHasTime
		}
		p = append(p, byte(e.Decision), flags)
		p = binary.AppendUvarint(p, index[e.Region])
		p = binary.AppendUvarint(p, uint64(len(e.Regions)))
		for _, r := range e.Regions {
			p = binary.AppendUvarint(p, index[r])
		}
		p = binary.AppendUvarint(p, index[e.View])
		p = binary.AppendUvarint(p, index[e.Syscall])
		p = binary.AppendUvarint(p, e.Seen)
		p = binary.AppendUvarint(p, e.Hits)
		p = binary.AppendUvarint(p, e.Misses)
		if flags&flagHasTime != 0 {
			p = binary.AppendVarint(p, e.FirstSeen.UnixNano())
		}
		p = append(p, byte(len(e.Bytes)))
		p = append(p, e.Bytes...)
	}
	p = binary.AppendUvarint(p, uint64(len(scopes)))
	for _, s := range scopes {
		c := m.stats[s].snapshot()
		p = binary.AppendUvarint(p, index[s.view])
		p = binary.AppendUvarint(p, index[s.syscall])
		p = binary.AppendUvarint(p, c.Lookups)
		p = binary.AppendUvarint(p, c.Hits)
		p = binary.AppendUvarint(p, c.Misses)
		p = binary.AppendUvarint(p, c.Learned)
	}

	out := make([]byte, 0, frameSize+len(header)+len(p)+crcSize)
	out = append(out, magic...)
	out = binary.LittleEndian.AppendUint16(out, FormatMajor)
	out = binary.LittleEndian.AppendUint16(out, FormatMinor)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(header)))
	out = binary.LittleEndian.AppendUint64(out, uint64(len(p)))
	out = append(out, header...)
	out = append(out, p...)
	return binary.LittleEndian.AppendUint32(out, crc32.Checksum(out, castagnoli))
}

// Unmarshal decodes a memo encoded by Marshal and rejects it unless it was
// trained for key. Errors are *MagicError, *SizeError, *ChecksumError,
// *VersionError, *KeyMismatchError or *FormatError.
func Unmarshal(data []byte, key Key) (*Memo, error) { return unmarshal(data, &key) }

// UnmarshalAny is Unmarshal without the key check, for tools that display
// a memo file whatever it was trained for; Memo.Key tells.
func UnmarshalAny(data []byte) (*Memo, error) { return unmarshal(data, nil) }

func unmarshal(data []byte, want *Key) (*Memo, error) {
	size := uint64(len(data))
	if size < uint64(len(magic)) {
		return nil, &SizeError{Got: size, Want: uint64(frameSize + crcSize)}
	}
	if string(data[:len(magic)]) != magic {
		return nil, &MagicError{Got: bytes.Clone(data[:len(magic)])}
	}
	if size < uint64(frameSize+crcSize) {
		return nil, &SizeError{Got: size, Want: uint64(frameSize + crcSize)}
	}
	// The version comes before the lengths: only for a version we read
	// do we know that the framing means what we think.
	major := binary.LittleEndian.Uint16(data[8:])
	minor := binary.LittleEndian.Uint16(data[10:])
	if major != FormatMajor || minor > FormatMinor {
		return nil, &VersionError{Major: major, Minor: minor}
	}
	hlen := uint64(binary.LittleEndian.Uint32(data[12:]))
	plen := binary.LittleEndian.Uint64(data[16:])
	room := size - uint64(frameSize+crcSize)
	if hlen > room || plen > room-hlen {
		// Saturate rather than overflow when reporting a huge length.
		want := uint64(frameSize+crcSize) + hlen
		if plen > ^uint64(0)-want {
			want = ^uint64(0)
		} else {
			want += plen
		}
		return nil, &SizeError{Got: size, Want: want}
	}
	if end := uint64(frameSize+crcSize) + hlen + plen; end != size {
		return nil, &SizeError{Got: size, Want: end}
	}
	body := data[:size-crcSize]
	stored := binary.LittleEndian.Uint32(data[size-crcSize:])
	if sum := crc32.Checksum(body, castagnoli); sum != stored {
		return nil, &ChecksumError{Stored: stored, Computed: sum}
	}

	h := &decoder{section: "header", b: data[frameSize : uint64(frameSize)+hlen]}
	key := Key{Kernel: h.str(), Policy: h.str()}
	if err := h.finish(); err != nil {
		return nil, err
	}
	if want != nil && key != *want {
		return nil, &KeyMismatchError{Want: *want, Got: key}
	}
	return decodePayload(key, data[uint64(frameSize)+hlen:size-crcSize])
}

func decodePayload(key Key, payload []byte) (*Memo, error) {
	d := &decoder{section: "payload", b: payload}
	table := make([]string, d.count(1))
	for i := range table {
		table[i] = d.str()
	}
	str := func() string {
		i := d.uvarint()
		if i >= uint64(len(table)) {
			d.fail(fmt.Sprintf("string index %d out of %d", i, len(table)))
			return ""
		}
		return table[i]
	}

	m := New(key)
	// An entry takes at least 11 bytes, a bound that keeps a crafted count
	// from allocating more than the file could hold.
	n := d.count(11)
	m.entries = make(map[uint64]*record, n)
	var pc uint64
	for i := 0; i < n && d.err == nil; i++ {
		delta := d.uvarint()
		if i > 0 && delta == 0 {
			d.fail("entry addresses not strictly increasing")
		}
		pc += delta
		r := &record{decision: decision.Decision(d.byte())}
		if !r.decision.Valid() {
			d.fail(fmt.Sprintf("invalid decision %d", r.decision))
		}
		flags := d.byte()
		r.regionsCapped = flags&flagRegionsCapped != 0
		r.region = str()
		if nr := d.count(1); nr > 0 {
			if nr < 2 || nr > MaxRegions {
				d.fail(fmt.Sprintf("%d regions", nr))
			}
			r.regions = make([]string, nr)
			for j := range r.regions {
				r.regions[j] = str()
			}
		}
		r.view, r.syscall = str(), str()
		r.seen = d.uvarint()
		r.hits.Store(d.uvarint())
		r.misses.Store(d.uvarint())
		if flags&flagHasTime != 0 {
			r.firstSeen = time.Unix(0, d.varint()).UTC()
		}
		nb := int(d.byte())
		if nb > MaxInsnBytes {
			d.fail(fmt.Sprintf("%d instruction bytes", nb))
		}
		if b := d.bytes(uint64(nb)); nb > 0 {
			r.bytes = bytes.Clone(b)
		}
		r.synced, r.base = true, r.counts()
		m.entries[pc] = r
	}
	ns := d.count(6)
	m.baseStats = make(map[scope]Counters, ns)
	for i := 0; i < ns && d.err == nil; i++ {
		s := scope{str(), str()}
		c := m.countersLocked(s)
		c.lookups.Store(d.uvarint())
		c.hits.Store(d.uvarint())
		c.misses.Store(d.uvarint())
		c.learned.Store(d.uvarint())
		m.baseStats[s] = c.snapshot()
	}
	if err := d.finish(); err != nil {
		return nil, err
	}
	return m, nil
}

// Load reads a memo saved for key. Besides I/O errors (fs.ErrNotExist for a
// missing file), it returns the typed errors of Unmarshal, wrapped with the
// path.
func Load(path string, key Key) (*Memo, error) {
	m, _, err := load(path, &key)
	return m, err
}

// LoadAny is Load without the key check (see UnmarshalAny).
func LoadAny(path string) (*Memo, error) {
	m, _, err := load(path, nil)
	return m, err
}

// load also returns the file's content when it was read but rejected.
func load(path string, key *Key) (*Memo, []byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("memo: load: %w", err)
	}
	m, err := unmarshal(data, key)
	if err != nil {
		return nil, data, fmt.Errorf("memo: load %s: %w", path, err)
	}
	m.syncPath = absPath(path)
	return m, nil, nil
}

// LoadOrNew loads the memo at path for key. If that fails for any reason
// (missing, corrupt, other version, other key, unreadable) it returns a new
// empty memo and the reason, which is not fatal: the caller reports "memo
// rebuilt because: ..." and trains from scratch. Saving will replace the
// rejected file without reporting it again; a file that changes to
// something else unreadable by then is reported by Save.
func LoadOrNew(path string, key Key) (*Memo, error) {
	m, rejected, err := load(path, &key)
	if err != nil {
		m = New(key)
		m.syncPath = absPath(path)
		if rejected != nil {
			fp := fingerprintOf(rejected)
			m.rejected = &fp
		}
		return m, err
	}
	return m, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// decoder reads the varint encoding; the first error sticks and later
// reads return zero values, so decoding code needs no error checks per
// field.
type decoder struct {
	section string
	b       []byte
	off     int
	err     error
}

func (d *decoder) fail(reason string) {
	if d.err == nil {
		d.err = &FormatError{Section: d.section, Offset: d.off, Reason: reason}
	}
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b[d.off:])
	if n <= 0 {
		d.fail("bad unsigned varint")
		return 0
	}
	d.off += n
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b[d.off:])
	if n <= 0 {
		d.fail("bad signed varint")
		return 0
	}
	d.off += n
	return v
}

func (d *decoder) byte() byte {
	b := d.bytes(1)
	if b == nil {
		return 0
	}
	return b[0]
}

// bytes returns the next n bytes, aliasing the input.
func (d *decoder) bytes(n uint64) []byte {
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)-d.off) {
		d.fail(fmt.Sprintf("%d bytes wanted, %d left", n, len(d.b)-d.off))
		return nil
	}
	b := d.b[d.off : d.off+int(n)]
	d.off += int(n)
	return b
}

func (d *decoder) str() string { return string(d.bytes(d.uvarint())) }

// count reads an element count and checks that the remaining input can
// hold that many elements of at least minSize bytes each.
func (d *decoder) count(minSize int) int {
	n := d.uvarint()
	if left := uint64(len(d.b) - d.off); n > left/uint64(minSize) {
		d.fail(fmt.Sprintf("count %d exceeds remaining %d bytes", n, left))
		return 0
	}
	return int(n)
}

func (d *decoder) finish() error {
	if d.err == nil && d.off != len(d.b) {
		d.fail(fmt.Sprintf("%d trailing bytes", len(d.b)-d.off))
	}
	return d.err
}
