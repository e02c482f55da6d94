package svm

import (
	"testing"
	"time"

	"hybridbridge/emu"
)

// BenchmarkOpen measures loading the snapshot into a new Unicorn engine (map, hooks, CPU state).
func BenchmarkOpen(b *testing.B) {
	for i := 0; i < b.N; i++ {
		m := open(b, Options{})
		m.Close()
	}
}

// BenchmarkReset measures putting back the pages a ReadDir of /proc wrote and reloading the CPU
// state: on a plain machine (the kernel's PAGEMAP_SCAN finds the written pages) and on one with
// memory hooks (its C write log lists them). The next operation's faults are not included.
func BenchmarkReset(b *testing.B) {
	for _, c := range []struct {
		name string
		opts Options
	}{{"pagemap-scan", Options{}}, {"write-log", Options{Unicorn: &UnicornOptions{Swaps: true}}}} {
		b.Run(c.name, func(b *testing.B) {
			m := open(b, c.opts)
			pages := 0
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				if _, err := m.ReadDir("/proc"); err != nil {
					b.Fatal(err)
				}
				before := m.Stats().ResetPages
				b.StartTimer()
				if err := m.Reset(); err != nil {
					b.Fatal(err)
				}
				pages += m.Stats().ResetPages - before
			}
			b.ReportMetric(float64(pages)/float64(b.N), "pages/op")
		})
	}
}

// syscallCases are the injected operations measured per kind.
var syscallCases = []struct {
	name string
	run  func(m *Machine, fd int) error
}{
	{"getpid", func(m *Machine, _ int) error { _, err := m.Syscall(SysGetpid); return err }},
	{"pread64-proc-1-stat", func(m *Machine, fd int) error { _, err := m.Pread(fd, 4096, 0); return err }},
	{"open-read-close-proc-version", func(m *Machine, _ int) error { _, err := m.ReadFile("/proc/version"); return err }},
	{"readdir-proc", func(m *Machine, _ int) error { _, err := m.ReadDir("/proc"); return err }},
	{"read-proc-modules", func(m *Machine, _ int) error { _, err := m.ReadFile("/proc/modules"); return err }},
}

// BenchmarkSyscall reports, per kind, wall time warm (repeated on one machine) and cold (first
// run in a freshly opened machine: code translation included), and the instructions executed,
// counted exactly on a separate machine with instruction counting on.
func BenchmarkSyscall(b *testing.B) {
	for _, c := range syscallCases {
		b.Run(c.name, func(b *testing.B) {
			counted := open(b, Options{Unicorn: &UnicornOptions{CountInstructions: true}})
			fd, err := counted.Open("/proc/1/stat", oRDONLY)
			if err != nil {
				b.Fatal(err)
			}
			before := counted.Stats()
			if err := c.run(counted, fd); err != nil {
				b.Fatal(err)
			}
			after := counted.Stats()
			insns := after.Instructions - before.Instructions
			calls := after.Syscalls - before.Syscalls

			cold := open(b, Options{})
			cfd, err := cold.Open("/proc/1/stat", oRDONLY)
			if err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			if err := c.run(cold, cfd); err != nil {
				b.Fatal(err)
			}
			coldTime := time.Since(start)

			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := c.run(cold, cfd); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(insns), "insns/op")
			b.ReportMetric(float64(calls), "syscalls/op")
			b.ReportMetric(float64(coldTime.Microseconds()), "cold-µs")
			warm := b.Elapsed().Seconds() / float64(b.N)
			b.ReportMetric(float64(insns)/warm/1e6, "M-insns/s")
		})
	}
}

// BenchmarkHookedSyscall is BenchmarkSyscall's warm runs with a memory hook on one page nothing
// touches: what Unicorn's slow path (taken by every access once any memory hook exists) costs
// real kernel code.
func BenchmarkHookedSyscall(b *testing.B) {
	for _, c := range syscallCases {
		for _, hooked := range []bool{false, true} {
			name := c.name + "/plain"
			if hooked {
				name = c.name + "/hooked"
			}
			b.Run(name, func(b *testing.B) {
				m := open(b, Options{})
				if hooked {
					f, err := m.Engine().NewMemFilter(16, func(emu.MemAccess, uint64, int, int64) {})
					if err == nil {
						err = f.Hook(emu.HookMemRead|emu.HookMemWrite, 0xfff000, 0xffffff)
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				fd, err := m.Open("/proc/1/stat", oRDONLY)
				if err != nil {
					b.Fatal(err)
				}
				if err := c.run(m, fd); err != nil {
					b.Fatal(err)
				}
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if err := c.run(m, fd); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
