package vmm

import (
	"context"
	"crypto/sha256"
	"testing"
)

func BenchmarkTranslate(b *testing.B) {
	for _, c := range []struct {
		name   string
		levels int
		size   uint64
	}{{"4level-4K", 4, PageSize4K}, {"4level-2M", 4, PageSize2M}, {"5level-4K", 5, PageSize4K}} {
		b.Run(c.name, func(b *testing.B) {
			tb := newTables(b, 2<<20, c.levels)
			tb.mapPage(kernelText, 0x200000, c.size, 0)
			w := tb.walker(0)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, _, _, err := w.Translate(kernelText + 0x123); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkTranslateFileView(b *testing.B) {
	tb := newTables(b, 2<<20, 4)
	tb.mapPage(kernelText, 0x200000, PageSize4K, 0)
	v, err := OpenFileView(writeTemp(b, tb.data), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	w, err := NewWalker(v, tb.root, 4)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, _, _, err := w.Translate(kernelText + 0x123); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVirtRead4K(b *testing.B) {
	tb := newTables(b, 4<<20, 4)
	tb.mapPage(kernelText, 0x200000, PageSize4K, 0)
	tb.mapPage(kernelText+0x1000, 0x300000, PageSize4K, 0)
	v := NewVirtView("kernel", tb.walker(0))
	buf := make([]byte, 4096)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := v.Read(kernelText+0x800, buf); err != nil { // spans two pages
			b.Fatal(err)
		}
	}
}

const hashBenchSize = 256 << 20

// BenchmarkHash hashes a 256 MiB guest-RAM file. "cold" maps the file afresh every time, so it
// pays the page faults of a first pass; "warm" rehashes one mapping, as a before/after check of
// a paused guest does.
func BenchmarkHash(b *testing.B) {
	path := writeTemp(b, pattern(hashBenchSize))
	ctx := context.Background()
	b.Run("cold", func(b *testing.B) {
		b.SetBytes(hashBenchSize)
		for i := 0; i < b.N; i++ {
			v, err := OpenFileView(path, nil)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := Hash(ctx, v); err != nil {
				b.Fatal(err)
			}
			v.Close()
		}
	})
	b.Run("warm", func(b *testing.B) {
		v, err := OpenFileView(path, nil)
		if err != nil {
			b.Fatal(err)
		}
		defer v.Close()
		if _, err := Hash(ctx, v); err != nil {
			b.Fatal(err)
		}
		b.SetBytes(hashBenchSize)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := Hash(ctx, v); err != nil {
				b.Fatal(err)
			}
		}
	})
	// The ceiling: SHA-256 of bytes already in memory.
	b.Run("sha256-of-slice", func(b *testing.B) {
		data := pattern(64 << 20)
		b.SetBytes(int64(len(data)))
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			sha256.Sum256(data)
		}
	})
}
