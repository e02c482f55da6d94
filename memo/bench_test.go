package memo

import (
	"path/filepath"
	"testing"
	"time"

	"hybridbridge/decision"
)

// bigMemo resembles a trained memo: n instructions spread over 16 MiB of
// kernel text, a handful of regions, views and syscalls, most with bytes.
func bigMemo(tb testing.TB, n int) *Memo {
	tb.Helper()
	regions := []string{"init_pid_ns", "heap", "stack", "per-cpu", "image-window", "vmalloc", "module", "init_task"}
	views := []string{"ps", "lsmod", "netstat", "meminfo"}
	syscalls := []string{"getdents64", "read", "openat", "close"}
	m := New(testKey)
	for i := range n {
		pc := 0xffffffff81000000 + uint64(i)*167
		o := Observation{
			Decision: decision.Decision(1 + i%4), Region: regions[i%len(regions)],
			View: views[i%len(views)], Syscall: syscalls[i/7%len(syscalls)],
			Time: t0.Add(time.Duration(i) * time.Millisecond),
		}
		if i%10 != 0 {
			o.Bytes = movRIP
		}
		if _, err := m.Learn(pc, o); err != nil {
			tb.Fatal(err)
		}
		if i%5 == 0 {
			o.Region = regions[(i+1)%len(regions)]
			m.Learn(pc, o)
		}
	}
	return m
}

func BenchmarkLearn(b *testing.B) {
	m := New(testKey)
	o := Observation{Decision: decision.Redirect, Region: "init_pid_ns", View: "ps", Syscall: "getdents64", Bytes: movRIP, Time: t0}
	for i := 0; b.Loop(); i++ {
		m.Learn(0xffffffff81000000+uint64(i%100000)*7, o)
	}
}

func BenchmarkLookupHit(b *testing.B) {
	m := bigMemo(b, 100000)
	for i := 0; b.Loop(); i++ {
		m.Lookup(0xffffffff81000000+uint64(i%100000)*167, "ps", "getdents64")
	}
}

func BenchmarkLookupParallel(b *testing.B) {
	m := bigMemo(b, 100000)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			m.Lookup(0xffffffff81000000+uint64(i%100000)*167, "ps", "getdents64")
			i++
		}
	})
}

func BenchmarkMarshal100k(b *testing.B) {
	m := bigMemo(b, 100000)
	var n int
	for b.Loop() {
		n = len(m.Marshal())
	}
	b.ReportMetric(float64(n), "bytes")
}

func BenchmarkUnmarshal100k(b *testing.B) {
	data := bigMemo(b, 100000).Marshal()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Unmarshal(data, testKey); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSaveLoad100k(b *testing.B) {
	m := bigMemo(b, 100000)
	path := filepath.Join(b.TempDir(), "memo.bin")
	for b.Loop() {
		if _, err := m.Save(path); err != nil {
			b.Fatal(err)
		}
		if _, err := Load(path, testKey); err != nil {
			b.Fatal(err)
		}
	}
}
