package memo

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"hybridbridge/decision"
)

var (
	testKey = Key{Kernel: "sha256:0123abcd 6.1.0-test", Policy: "rules-v3"}
	t0      = time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)
)

// movRIP is "mov rax, qword ptr [rip+0x1000]".
var movRIP = []byte{0x48, 0x8b, 0x05, 0x00, 0x10, 0x00, 0x00}

func obs(d decision.Decision, region string) Observation {
	return Observation{Decision: d, Region: region, View: "ps", Syscall: "getdents64", Time: t0}
}

func TestLearnMergesThroughMemo(t *testing.T) {
	for _, tc := range []struct {
		seq  []decision.Decision
		want decision.Decision
	}{
		{[]decision.Decision{decision.Local}, decision.Local},
		{[]decision.Decision{decision.Redirect, decision.Redirect}, decision.Redirect},
		{[]decision.Decision{decision.Local, decision.Redirect}, decision.Both},
		{[]decision.Decision{decision.Redirect, decision.Local, decision.Redirect}, decision.Both},
		{[]decision.Decision{decision.Redirect, decision.Unknown, decision.Local}, decision.Unknown},
		{[]decision.Decision{decision.Unknown, decision.Redirect}, decision.Unknown},
	} {
		m := New(testKey)
		var e Entry
		for _, d := range tc.seq {
			var err error
			if e, err = m.Learn(0x1000, obs(d, "init_pid_ns")); err != nil {
				t.Fatal(err)
			}
		}
		if e.Decision != tc.want || e.Seen != uint64(len(tc.seq)) {
			t.Errorf("%v: got %v seen %d, want %v seen %d", tc.seq, e.Decision, e.Seen, tc.want, len(tc.seq))
		}
	}
}

func TestLearnRejects(t *testing.T) {
	m := New(testKey)
	if _, err := m.Learn(1, Observation{}); err == nil {
		t.Error("zero decision accepted")
	}
	if _, err := m.Learn(1, Observation{Decision: decision.Local, Bytes: make([]byte, 16)}); err == nil {
		t.Error("16 instruction bytes accepted")
	}
	if m.Len() != 0 {
		t.Errorf("Len = %d after rejected learns", m.Len())
	}
}

func TestLearnKeepsFirstAndCopies(t *testing.T) {
	m := New(testKey)
	buf := append([]byte(nil), movRIP...)
	m.Learn(0x10, Observation{Decision: decision.Redirect, Region: "init_pid_ns", View: "ps", Syscall: "getdents64", Time: t0})
	m.Learn(0x10, Observation{Decision: decision.Redirect, Region: "init_pid_ns", View: "lsmod", Syscall: "read", Bytes: buf, Time: t0.Add(time.Hour)})
	buf[0] = 0xcc // the caller reuses its buffer
	e, _ := m.Peek(0x10)
	if e.View != "ps" || e.Syscall != "getdents64" || !e.FirstSeen.Equal(t0) {
		t.Errorf("first-seen fields overwritten: %+v", e)
	}
	if string(e.Bytes) != string(movRIP) {
		t.Errorf("bytes % x, want % x (copied from first observation that had them)", e.Bytes, movRIP)
	}
	// A zero Time means now.
	before := time.Now()
	e, _ = m.Learn(0x20, Observation{Decision: decision.Local})
	if e.FirstSeen.Before(before.Add(-time.Second)) || e.FirstSeen.Location() != time.UTC {
		t.Errorf("FirstSeen = %v", e.FirstSeen)
	}
}

func TestRegions(t *testing.T) {
	m := New(testKey)
	m.Learn(1, obs(decision.Local, "heap"))
	m.Learn(1, obs(decision.Local, "heap"))
	if e, _ := m.Peek(1); e.Region != "heap" || e.Regions != nil {
		t.Fatalf("one region: %+v", e)
	}
	m.Learn(1, obs(decision.Redirect, "init_pid_ns"))
	m.Learn(1, obs(decision.Redirect, "")) // no region: nothing to add
	m.Learn(1, obs(decision.Redirect, "init_task"))
	e, _ := m.Peek(1)
	if e.Region != "heap" || strings.Join(e.Regions, ",") != "heap,init_pid_ns,init_task" || e.RegionsCapped {
		t.Fatalf("regions: %+v", e)
	}
	snapshot := e.Regions
	for i := range MaxRegions + 2 {
		m.Learn(1, obs(decision.Redirect, fmt.Sprintf("g%02d", i)))
	}
	e, _ = m.Peek(1)
	if len(e.Regions) != MaxRegions || !e.RegionsCapped {
		t.Errorf("capping: %d regions, capped %v", len(e.Regions), e.RegionsCapped)
	}
	if strings.Join(snapshot, ",") != "heap,init_pid_ns,init_task" {
		t.Errorf("returned slice modified after the fact: %v", snapshot)
	}
	// An empty first region is filled by the first real one.
	m.Learn(2, obs(decision.Local, ""))
	m.Learn(2, obs(decision.Local, "stack"))
	if e, _ := m.Peek(2); e.Region != "stack" || e.Regions != nil {
		t.Errorf("empty first region: %+v", e)
	}
}

func TestLookupCounts(t *testing.T) {
	m := New(testKey)
	m.Learn(0x100, obs(decision.Redirect, "init_pid_ns"))
	m.Learn(0x200, obs(decision.Unknown, "some_global"))

	if e, ok := m.Lookup(0x100, "ps", "getdents64"); !ok || e.Decision != decision.Redirect || e.Hits != 1 {
		t.Errorf("hit: %+v %v", e, ok)
	}
	// Unknown is returned (so the caller can name the global) but misses.
	if e, ok := m.Lookup(0x200, "ps", "getdents64"); ok || e.Region != "some_global" || e.Misses != 1 {
		t.Errorf("unknown: %+v %v", e, ok)
	}
	// A miss before training is credited to the entry once it is learned.
	if _, ok := m.Lookup(0x300, "ps", "read"); ok {
		t.Error("unlearned pc hit")
	}
	m.Lookup(0x300, "ps", "read")
	e, _ := m.Learn(0x300, Observation{Decision: decision.Local, Region: "stack", View: "ps", Syscall: "read", Time: t0})
	if e.Misses != 2 {
		t.Errorf("pending misses = %d, want 2", e.Misses)
	}
	m.Lookup(0x300, "lsmod", "read")
	if !m.Delete(0x300) || m.Delete(0x300) {
		t.Error("Delete")
	}
	if _, ok := m.Lookup(0x300, "lsmod", "read"); ok {
		t.Error("deleted pc hit")
	}

	st := m.Stats()
	if st.Entries != 2 || st.Decisions != (decision.Counts{Redirect: 1, Unknown: 1}) {
		t.Errorf("entries/decisions: %+v", st)
	}
	if want := (Counters{Lookups: 6, Hits: 2, Misses: 4, Learned: 3, HitRate: 2.0 / 6}); st.Total != want {
		t.Errorf("total %+v, want %+v", st.Total, want)
	}
	ps := st.Views["ps"]
	if ps.Lookups != 4 || ps.Hits != 1 || ps.Misses != 3 || ps.Learned != 3 || ps.Entries != 2 || ps.HitRate != 0.25 {
		t.Errorf("ps: %+v", ps)
	}
	if c := ps.Syscalls["read"]; c != (Counters{Lookups: 2, Misses: 2, Learned: 1}) {
		t.Errorf("ps/read: %+v", c)
	}
	if c := st.Views["lsmod"].Syscalls["read"]; c.Lookups != 2 || c.Hits != 1 || c.HitRate != 0.5 {
		t.Errorf("lsmod/read: %+v", c)
	}
	out := FormatStats(st)
	for _, want := range []string{"2 entries", "redirect 1", "unknown 1", "getdents64", "lsmod", "hit rate  33.3%"} {
		if !strings.Contains(out, want) {
			t.Errorf("FormatStats lacks %q:\n%s", want, out)
		}
	}

	m.Clear()
	if m.Len() != 0 || m.Stats().Total != (Counters{}) || m.Key() != testKey {
		t.Error("Clear")
	}
}

func TestEntriesSorted(t *testing.T) {
	m := New(testKey)
	for _, pc := range []uint64{0xffffffff81000300, 5, 0xffffffff81000100, 7} {
		m.Learn(pc, obs(decision.Local, "stack"))
	}
	es := m.Entries()
	for i := 1; i < len(es); i++ {
		if es[i-1].PC >= es[i].PC {
			t.Fatalf("not sorted: %#x before %#x", es[i-1].PC, es[i].PC)
		}
	}
	if len(es) != 4 || m.Len() != 4 {
		t.Errorf("len %d/%d", len(es), m.Len())
	}
}

// TestConcurrent is meant for -race: learners, lookers-up, savers and
// a clearer at once.
func TestConcurrent(t *testing.T) {
	m := New(testKey)
	var wg sync.WaitGroup
	const n = 2000
	for w := range 4 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := range n {
				d := decision.Local
				if (i+w)%3 == 0 {
					d = decision.Redirect
				}
				if _, err := m.Learn(uint64(i%500), Observation{Decision: d, Region: "heap", View: fmt.Sprint("v", w), Syscall: "read", Time: t0}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			for i := range n {
				m.Lookup(uint64(i%700), fmt.Sprint("v", i%3), "read")
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 20 {
			if _, err := UnmarshalAny(m.Marshal()); err != nil {
				t.Error(err)
			}
			m.Stats()
			m.Entries()
		}
	}()
	wg.Wait()
	m.Delete(3)
	st := m.Stats()
	if st.Total.Lookups != 4*n || st.Total.Hits+st.Total.Misses != st.Total.Lookups {
		t.Errorf("totals %+v", st.Total)
	}
	if m.Len() != 499 {
		t.Errorf("Len = %d, want 499", m.Len())
	}
}

// TestVersion: the version moves exactly when what a cached decision rests on changes.
func TestVersion(t *testing.T) {
	m := New(testKey)
	v := m.Version()
	step := func(what string, changes bool, do func()) {
		t.Helper()
		do()
		if got := m.Version(); (got != v) != changes {
			t.Errorf("%s: version %d -> %d, want changed=%v", what, v, got, changes)
		}
		v = m.Version()
	}
	learn := func(d decision.Decision, region string) func() {
		return func() {
			if _, err := m.Learn(0x1000, obs(d, region)); err != nil {
				t.Fatal(err)
			}
		}
	}
	step("new entry", true, learn(decision.Local, "jiffies"))
	step("same observation", false, learn(decision.Local, "jiffies"))
	step("another region", true, learn(decision.Local, "tk_core"))
	step("decision merged", true, learn(decision.Redirect, "jiffies"))
	step("lookup", false, func() { m.Lookup(0x1000, "ps", "read") })
	step("delete of an unknown address", false, func() { m.Delete(0x2000) })
	step("delete", true, func() { m.Delete(0x1000) })
	step("clear", true, m.Clear)
}

// A view whose decisions were only learned (no Fast-Bridge lookups yet) has no hit rate: memo
// stats says n/a, not 0 %.
func TestFormatStatsWithoutLookups(t *testing.T) {
	m := New(testKey)
	if _, err := m.Learn(0x100, Observation{Decision: decision.Local, Region: "init_task", View: "ps", Syscall: "read"}); err != nil {
		t.Fatal(err)
	}
	out := FormatStats(m.Stats())
	if !strings.Contains(out, "hit rate    n/a") || strings.Contains(out, "0.0%") {
		t.Errorf("a memo without lookups:\n%s", out)
	}
}
