package svm

import (
	"errors"
	"strings"
	"testing"
	"time"

	"hybridbridge/guest"
	"hybridbridge/internal/testenv"
	"hybridbridge/vmm"
)

// kernelSymbols is the SVM kernel's symbol table, which the snapshot build caches.
func kernelSymbols(t *testing.T) *vmm.Symbols {
	t.Helper()
	if buildErr != nil {
		t.Fatalf("SVM snapshot build failed: %v", buildErr)
	}
	cache, err := guest.FindCacheDir()
	if err != nil {
		testenv.Skip(t, err.Error())
	}
	syms, err := vmm.LoadSymbols(cache + "/symbols/" + snap.KernelID + ".kallsyms")
	if err != nil {
		testenv.Skipf(t, "the kernel's symbols: %v", err)
	}
	return syms
}

// TestOpenRejectsUnknownNames: a name in Options that the machine cannot place is an error when
// it opens, never a stop or a clock that silently does nothing.
func TestOpenRejectsUnknownNames(t *testing.T) {
	syms := kernelSymbols(t)
	tsc := func() uint64 { return snap.TSC }
	for _, c := range []struct {
		name string
		opts Options
		want string
	}{
		{"blocking entry not recorded, no symbols", Options{Blocking: []string{"hb_no_such_function"}}, "hb_no_such_function"},
		{"blocking entry unknown", Options{Symbols: syms, Blocking: []string{"hb_no_such_function"}}, "hb_no_such_function"},
		{"clock without symbols", Options{Clock: &ClockSource{Func: "read_tsc", TSC: tsc}}, "Options.Symbols"},
		{"clock source unknown", Options{Symbols: syms, Clock: &ClockSource{Func: "hb_no_such_function", TSC: tsc}}, "hb_no_such_function"},
		{"clock without a counter", Options{Symbols: syms, Clock: &ClockSource{Func: "read_tsc"}}, "no TSC"},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, err := Open(snap, c.opts)
			if err == nil {
				m.Close()
				t.Fatal("opened")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not mention %q", err, c.want)
			}
		})
	}
}

// TestBlockingEntriesAreTheCallers: the machine stops a sleeping call only where the caller says
// so; with no entries it has no opinion of its own, and an entry the snapshot does not record
// comes from Symbols.
func TestBlockingEntriesAreTheCallers(t *testing.T) {
	m := open(t, Options{Blocking: []string{}, Unicorn: &UnicornOptions{Budget: 2_000_000}})
	err := sleepOneSecond(t, m)
	t.Logf("nanosleep with no blocking entries: %v", err)
	// Without entries the call runs on into the scheduler. It usually spins out its budget; on
	// one freshly built snapshot it returned 0 instead. Either way it is not stopped as blocked,
	// which is what this half checks.
	if errors.Is(err, ErrBlocked) || m.Stats().Blocked != 0 {
		t.Fatalf("nanosleep: %v (%d blocked), want no stop as blocked", err, m.Stats().Blocked)
	}

	syms := kernelSymbols(t)
	const entry = "schedule"
	if _, ok := snap.Symbols[entry]; ok {
		t.Fatalf("the snapshot records %s: the test needs a symbol it does not", entry)
	}
	m = open(t, Options{Symbols: syms, Blocking: []string{entry}})
	err = sleepOneSecond(t, m)
	var se *StopError
	if !errors.As(err, &se) || !errors.Is(err, ErrBlocked) || se.Detail != "reached "+entry {
		t.Fatalf("nanosleep: %v, want ErrBlocked at %s", err, entry)
	}
}

// TestClockSourceReadsTheCallersCounter: /proc/uptime follows the counter the caller gives the
// clock source, not the time passing, while the machine's other RDTSCs keep their own clock.
func TestClockSourceReadsTheCallersCounter(t *testing.T) {
	// Past the capture, so the timekeeper's last update is behind the counter whatever it was.
	counter := snap.TSC + 10*snap.TSCKHz*1000
	m := open(t, Options{Symbols: kernelSymbols(t), Clock: &ClockSource{Func: "read_tsc", TSC: func() uint64 { return counter }}})
	read := func() float64 { return uptime(t, m) }
	u1 := read()
	time.Sleep(200 * time.Millisecond)
	u2 := read()
	counter += snap.TSCKHz * 1000 // one second
	u3 := read()
	t.Logf("uptime %.2f, %.2f after a pause, %.2f a counted second later; %d TSC reads", u1, u2, u3, m.Stats().TSCReads)
	if u2 != u1 {
		t.Errorf("uptime moved from %.2f to %.2f with the counter still", u1, u2)
	}
	// /proc/uptime shows centiseconds, cut: each reading is up to 0.01 s short.
	if d := u3 - u1; d < 0.985 || d > 1.015 {
		t.Errorf("uptime advanced %.2f s for one second of counter", d)
	}
}

// TestClockSourceWithoutRDTSC: a clock source whose read function has no RDTSC of its own (a
// guest's HPET, read_hpet) is answered at the function's entry: its caller gets the counter and
// goes on. ktime_get_real_seconds stands in for it here: time(2) returns what it returns.
func TestClockSourceWithoutRDTSC(t *testing.T) {
	const want = 1_234_567
	m := open(t, Options{Symbols: kernelSymbols(t), Clock: &ClockSource{Func: "ktime_get_real_seconds", TSC: func() uint64 { return want }}})
	for i := range 2 {
		got, err := m.Syscall(SysTime, 0)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("time() call %d = %d, want the counter %d", i, got, want)
		}
		if err := m.Reset(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.ReadFile("/proc/version"); err != nil {
		t.Fatalf("the machine after the answered calls: %v", err)
	}
	if n := m.Stats().TSCReads; n < 2 {
		t.Errorf("%d counter reads counted, want 2", n)
	}
}
