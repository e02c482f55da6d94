package memo

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"hybridbridge/decision"
)

// sample builds the same memo every time it is called, learning in the
// given order.
func sample(t testing.TB, reverse bool) *Memo {
	t.Helper()
	type step struct {
		pc uint64
		o  Observation
	}
	steps := []step{
		{0xffffffff81234567, Observation{Decision: decision.Redirect, Region: "init_pid_ns", View: "ps", Syscall: "getdents64", Bytes: movRIP, Time: t0}},
		{0xffffffff81234567, Observation{Decision: decision.Redirect, Region: "init_pid_ns", View: "ps", Syscall: "getdents64", Time: t0}},
		{0xffffffff81000010, Observation{Decision: decision.Local, Region: "stack", View: "ps", Syscall: "openat", Time: t0.Add(time.Second)}},
		{0xffffffff81000010, Observation{Decision: decision.Redirect, Region: "image-window", View: "ps", Syscall: "openat", Time: t0}},
		{0xffffffffc0201000, Observation{Decision: decision.Unknown, Region: "some_global", View: "lsmod", Syscall: "read", Bytes: []byte{0x90}, Time: t0}},
		{0x1000, Observation{Decision: decision.Local, Time: t0}}, // empty strings, tiny address
	}
	m := New(testKey)
	// Learns of distinct addresses commute; keep each address's own order.
	if reverse {
		for _, i := range []int{5, 4, 2, 3, 0, 1} {
			if _, err := m.Learn(steps[i].pc, steps[i].o); err != nil {
				t.Fatal(err)
			}
		}
	} else {
		for _, s := range steps {
			if _, err := m.Learn(s.pc, s.o); err != nil {
				t.Fatal(err)
			}
		}
	}
	m.Lookup(0xffffffff81234567, "ps", "getdents64")
	m.Lookup(0xffffffffc0201000, "lsmod", "read")
	m.Lookup(0xdead, "ps", "read")
	return m
}

func sameMemo(t *testing.T, a, b *Memo) {
	t.Helper()
	if a.Key() != b.Key() {
		t.Errorf("key %v != %v", a.Key(), b.Key())
	}
	ea, eb := a.Entries(), b.Entries()
	if len(ea) != len(eb) {
		t.Fatalf("%d entries != %d", len(ea), len(eb))
	}
	for i := range ea {
		x, y := ea[i], eb[i]
		if !x.FirstSeen.Equal(y.FirstSeen) {
			t.Errorf("%#x: first seen %v != %v", x.PC, x.FirstSeen, y.FirstSeen)
		}
		x.FirstSeen, y.FirstSeen = time.Time{}, time.Time{}
		if len(x.Bytes) == 0 && len(y.Bytes) == 0 {
			x.Bytes, y.Bytes = nil, nil
		}
		if !reflect.DeepEqual(x, y) {
			t.Errorf("entry differs:\n%+v\n%+v", x, y)
		}
	}
	if sa, sb := a.Stats(), b.Stats(); !reflect.DeepEqual(sa, sb) {
		t.Errorf("stats differ:\n%+v\n%+v", sa, sb)
	}
}

func TestRoundTripMemory(t *testing.T) {
	m := sample(t, false)
	data := m.Marshal()
	got, err := Unmarshal(data, testKey)
	if err != nil {
		t.Fatal(err)
	}
	sameMemo(t, m, got)
	if !bytes.Equal(got.Marshal(), data) {
		t.Error("re-marshal differs")
	}
	e, _ := got.Peek(0xffffffff81000010)
	if e.Decision != decision.Both || strings.Join(e.Regions, ",") != "image-window,stack" {
		t.Errorf("decoded entry %+v", e)
	}
	// Empty memo.
	if _, err := Unmarshal(New(testKey).Marshal(), testKey); err != nil {
		t.Error(err)
	}
}

func TestRoundTripFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "memo.bin")
	m := sample(t, false)
	if _, err := m.Save(path); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path, testKey)
	if err != nil {
		t.Fatal(err)
	}
	sameMemo(t, m, got)
	if got2, err := LoadAny(path); err != nil || got2.Key() != testKey {
		t.Errorf("LoadAny: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("stat %v, %v", fi, err)
	}
	// A loaded memo keeps learning and counting.
	got.Lookup(0xffffffff81234567, "ps", "getdents64")
	if e, _ := got.Peek(0xffffffff81234567); e.Hits != 2 {
		t.Errorf("hits after load = %d, want 2", e.Hits)
	}
}

func TestDeterministic(t *testing.T) {
	a, b := sample(t, false).Marshal(), sample(t, true).Marshal()
	if !bytes.Equal(a, b) {
		t.Error("equal content, different bytes")
	}
	dir := t.TempDir()
	p1, p2 := filepath.Join(dir, "1"), filepath.Join(dir, "2")
	sample(t, false).Save(p1)
	sample(t, true).Save(p2)
	f1, _ := os.ReadFile(p1)
	f2, _ := os.ReadFile(p2)
	if !bytes.Equal(f1, f2) || !bytes.Equal(f1, a) {
		t.Error("saved files differ")
	}
}

// fixCRC recomputes the trailer, as a writer of a different version would.
func fixCRC(b []byte) []byte {
	n := len(b) - crcSize
	binary.LittleEndian.PutUint32(b[n:], crc32.Checksum(b[:n], castagnoli))
	return b
}

func withVersion(b []byte, major, minor uint16) []byte {
	b = bytes.Clone(b)
	binary.LittleEndian.PutUint16(b[8:], major)
	binary.LittleEndian.PutUint16(b[10:], minor)
	return fixCRC(b)
}

func TestTamper(t *testing.T) {
	good := sample(t, false).Marshal()
	hlen := int(binary.LittleEndian.Uint32(good[12:]))
	payload := frameSize + hlen
	otherKernel := Key{Kernel: "sha256:ffff 6.1.0-other", Policy: testKey.Policy}
	otherPolicy := Key{Kernel: testKey.Kernel, Policy: "rules-v4"}
	rekey := func(k Key) []byte {
		m := sample(t, false)
		m2 := New(k)
		m2.entries, m2.stats = m.entries, m.stats
		return m2.Marshal()
	}
	flip := func(off int) []byte {
		b := bytes.Clone(good)
		b[off] ^= 0x40
		return b
	}

	for _, tc := range []struct {
		name  string
		data  []byte
		check func(error) bool
	}{
		{"payload byte flipped", flip(payload + 3), is[*ChecksumError]},
		{"header byte flipped", flip(frameSize + 2), is[*ChecksumError]},
		{"crc byte flipped", flip(len(good) - 1), is[*ChecksumError]},
		{"truncated by one", good[:len(good)-1], is[*SizeError]},
		{"truncated to half", good[:len(good)/2], is[*SizeError]},
		{"truncated into frame", good[:frameSize], is[*SizeError]},
		{"truncated into magic", good[:3], is[*SizeError]},
		{"empty", nil, is[*SizeError]},
		{"trailing data", append(bytes.Clone(good), 0), is[*SizeError]},
		{"length field corrupt", func() []byte {
			b := bytes.Clone(good)
			binary.LittleEndian.PutUint64(b[16:], 1<<63)
			return b
		}(), is[*SizeError]},
		{"wrong magic", flip(0), is[*MagicError]},
		{"gob file", []byte("\x0e\xff\x81\x03\x01\x01\x04Memo\x01\xff\x82\x00\x01\x02"), is[*MagicError]},
		{"major bumped", withVersion(good, FormatMajor+1, 0), is[*VersionError]},
		{"major zero", withVersion(good, 0, FormatMinor), is[*VersionError]},
		{"newer minor", withVersion(good, FormatMajor, FormatMinor+1), is[*VersionError]},
		{"major bumped, crc stale", func() []byte {
			b := bytes.Clone(good)
			b[8]++
			return b
		}(), is[*VersionError]},
		{"other kernel", rekey(otherKernel), func(err error) bool {
			var k *KeyMismatchError
			return errors.As(err, &k) && k.KernelChanged() && !k.PolicyChanged() && k.Got == otherKernel && k.Want == testKey
		}},
		{"other policy", rekey(otherPolicy), func(err error) bool {
			var k *KeyMismatchError
			return errors.As(err, &k) && !k.KernelChanged() && k.PolicyChanged()
		}},
		{"valid crc, bad decision", func() []byte {
			m := New(testKey)
			m.Learn(1, Observation{Decision: decision.Local, Time: t0})
			b := m.Marshal()
			p := frameSize + int(binary.LittleEndian.Uint32(b[12:]))
			// table: count 1, "" (len 0); entries: count 1, delta 1, decision.
			if !bytes.Equal(b[p:p+5], []byte{1, 0, 1, 1, byte(decision.Local)}) {
				t.Fatalf("unexpected payload % x", b[p:p+5])
			}
			b[p+4] = 9
			return fixCRC(b)
		}(), is[*FormatError]},
		{"valid crc, huge count", func() []byte {
			b := New(testKey).Marshal()
			p := frameSize + int(binary.LittleEndian.Uint32(b[12:]))
			b[p] = 0x7f // string table count > payload size
			return fixCRC(b)
		}(), is[*FormatError]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Unmarshal(tc.data, testKey)
			if m != nil || !tc.check(err) {
				t.Fatalf("got %v (%T)", err, err)
			}
			t.Log(err)
			// Each error is distinguishable from every other type.
			kinds := 0
			for _, f := range []func(error) bool{is[*MagicError], is[*SizeError], is[*ChecksumError], is[*VersionError], is[*KeyMismatchError], is[*FormatError]} {
				if f(err) {
					kinds++
				}
			}
			if kinds != 1 {
				t.Errorf("%d error kinds match", kinds)
			}

			// Through a file: same typed error, wrapped with the path;
			// LoadOrNew gives a fresh memo and the reason.
			path := filepath.Join(t.TempDir(), "memo.bin")
			if err := os.WriteFile(path, tc.data, 0o644); err != nil {
				t.Fatal(err)
			}
			_, err = Load(path, testKey)
			if !tc.check(err) || !strings.Contains(err.Error(), path) {
				t.Errorf("Load: %v", err)
			}
			fresh, reason := LoadOrNew(path, testKey)
			if fresh == nil || fresh.Len() != 0 || fresh.Key() != testKey || !tc.check(reason) {
				t.Errorf("LoadOrNew: %v, %v", fresh, reason)
			}
		})
	}
}

func is[T error](err error) bool {
	var target T
	return errors.As(err, &target)
}

// TestEveryTruncationAndFlip checks that no corruption panics or decodes.
func TestEveryTruncationAndFlip(t *testing.T) {
	good := sample(t, false).Marshal()
	for n := range len(good) {
		if _, err := Unmarshal(good[:n], testKey); err == nil {
			t.Fatalf("truncated to %d decoded", n)
		}
	}
	for i := range good {
		b := bytes.Clone(good)
		b[i] ^= 1
		if _, err := Unmarshal(b, testKey); err == nil {
			t.Fatalf("bit flip at %d decoded", i)
		}
	}
}

func TestLoadOrNew(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "memo.bin")
	m, err := LoadOrNew(path, testKey)
	if m == nil || m.Len() != 0 || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing: %v, %v", m, err)
	}
	if _, err := sample(t, false).Save(path); err != nil {
		t.Fatal(err)
	}
	if m, err = LoadOrNew(path, testKey); err != nil || m.Len() != 4 {
		t.Fatalf("present: %v, %v", m, err)
	}
	m, err = LoadOrNew(path, Key{Kernel: testKey.Kernel, Policy: "rules-v4"})
	if m.Len() != 0 || m.Key().Policy != "rules-v4" || !is[*KeyMismatchError](err) {
		t.Fatalf("rules changed: %v, %v", m, err)
	}
	t.Logf("memo rebuilt because: %v", err)
}

func TestSaveAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "memo.bin")
	old := sample(t, false)
	if _, err := old.Save(path); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	// Saves take a lock on a file beside the memo, which stays.
	onlyMemo := func() {
		t.Helper()
		ents, _ := os.ReadDir(dir)
		var names []string
		for _, e := range ents {
			if !strings.HasSuffix(e.Name(), ".lock") {
				names = append(names, e.Name())
			}
		}
		if len(names) != 1 || names[0] != "memo.bin" {
			t.Errorf("directory holds %v, want only memo.bin (and lock files)", names)
		}
		after, _ := os.ReadFile(path)
		if !bytes.Equal(before, after) {
			t.Error("previous file changed")
		}
	}

	t.Run("directory missing", func(t *testing.T) {
		if _, err := New(testKey).Save(filepath.Join(dir, "nope", "memo.bin")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("err = %v", err)
		}
		onlyMemo()
	})
	t.Run("file unreadable", func(t *testing.T) {
		// What cannot be read cannot be merged, and replacing it would
		// lose it: the save fails.
		block := filepath.Join(dir, "blocked")
		os.MkdirAll(filepath.Join(block, "x"), 0o755)
		defer os.RemoveAll(block)
		if _, err := New(testKey).Save(block); err == nil || !strings.Contains(err.Error(), "merge") {
			t.Errorf("save over a directory: %v", err)
		}
		if fi, err := os.Stat(filepath.Join(block, "x")); err != nil || !fi.IsDir() {
			t.Errorf("the directory in the way changed: %v", err)
		}
		os.RemoveAll(block)
		onlyMemo()
	})
	t.Run("merge", func(t *testing.T) {
		m := New(testKey)
		m.Learn(42, obs(decision.Local, "stack"))
		if _, err := m.Save(path); err != nil {
			t.Fatal(err)
		}
		got, err := Load(path, testKey)
		if err != nil || got.Len() != old.Len()+1 {
			t.Errorf("after merge: %v entries, %v; want %d", got.Len(), err, old.Len()+1)
		}
	})
}
