package memo

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"hybridbridge/decision"
)

// Key names what a memo is valid for. Decisions learned under one key are
// never replayed under another: a different kernel build has different
// instruction addresses, and a different rule table may classify the same
// global differently. The on-disk format version is checked separately
// (VersionError), so it is not part of the key.
type Key struct {
	// Kernel identifies the kernel build, e.g. a hash of the kernel text
	// plus its version banner.
	Kernel string `json:"kernel"`
	// Policy identifies the rule tables (redirect / keep-local lists, taint
	// rules); bump it whenever a rule changes.
	Policy string `json:"policy"`
}

func (k Key) String() string { return fmt.Sprintf("kernel %q, policy %q", k.Kernel, k.Policy) }

const (
	// MaxInsnBytes is the longest x86 instruction.
	MaxInsnBytes = 15
	// MaxRegions bounds the distinct regions kept per entry: a generic
	// helper (memcpy, list_add) can touch hundreds of globals, and the
	// first few are enough to explain a Both decision.
	MaxRegions = 64
	// maxPending bounds misses remembered for instructions not learned
	// yet, so a stream of lookups that are never followed by training
	// cannot grow the memo without limit.
	maxPending = 1 << 16
)

// Observation is one access seen by Slow-Bridge.
type Observation struct {
	Decision decision.Decision
	// Region is the global ("init_pid_ns") or region class ("heap",
	// "stack", "per-cpu", "struct-pages", "vmalloc", "module") touched.
	Region string
	// View and Syscall name the introspection command ("ps") and the
	// injected syscall ("getdents64") that ran the instruction.
	View, Syscall string
	// Bytes are the instruction's bytes (at most MaxInsnBytes), kept so
	// the memo can be shown without the kernel image. Optional.
	Bytes []byte
	// Time is when it was seen; zero means now.
	Time time.Time
}

// Entry is the memoized decision for one instruction. Slices in an Entry
// returned by the Memo are shared with it and must not be modified.
type Entry struct {
	PC       uint64            `json:"pc"`
	Decision decision.Decision `json:"decision"`
	// Region is the first region or global seen.
	Region string `json:"region"`
	// Regions lists every distinct region, sorted, when there was more
	// than one; at most MaxRegions, RegionsCapped says some were dropped.
	Regions       []string `json:"regions,omitempty"`
	RegionsCapped bool     `json:"regions_capped,omitempty"`
	// Seen counts training observations; Hits and Misses count lookups
	// that could or could not be replayed (an Unknown entry is a miss).
	Seen   uint64 `json:"seen"`
	Hits   uint64 `json:"hits"`
	Misses uint64 `json:"misses"`
	// View, Syscall and FirstSeen describe the first observation.
	View      string    `json:"view"`
	Syscall   string    `json:"syscall"`
	FirstSeen time.Time `json:"first_seen"`
	Bytes     []byte    `json:"bytes,omitempty"`
}

// record is the mutable form of an Entry.
type record struct {
	// decision, region, regions, regionsCapped, view, syscall, firstSeen,
	// bytes and seen are written only with Memo.mu held for writing.
	// regions and bytes are copy-on-write, so Entries can share them.
	decision      decision.Decision
	region        string
	regions       []string
	regionsCapped bool
	view, syscall string
	firstSeen     time.Time
	bytes         []byte
	seen          uint64
	// hits and misses change under the read lock. This must be accessed
	// atomically.
	hits, misses atomic.Uint64
	// synced says the record was in the memo file when it was last loaded
	// or saved, with the counts in base; Save merges only what was counted
	// since. Written only with Memo.mu held for writing.
	synced bool
	base   entryCounts
}

// entryCounts are an entry's counters.
type entryCounts struct{ seen, hits, misses uint64 }

// counts snapshots r's counters. Precondition: mu must be held (read or write).
func (r *record) counts() entryCounts {
	return entryCounts{seen: r.seen, hits: r.hits.Load(), misses: r.misses.Load()}
}

// entry snapshots r. Precondition: mu must be held (read or write).
func (r *record) entry(pc uint64) Entry {
	return Entry{
		PC: pc, Decision: r.decision, Region: r.region,
		Regions: r.regions, RegionsCapped: r.regionsCapped,
		Seen: r.seen, Hits: r.hits.Load(), Misses: r.misses.Load(),
		View: r.view, Syscall: r.syscall, FirstSeen: r.firstSeen, Bytes: r.bytes,
	}
}

// addRegion records that r was also seen touching region.
// Precondition: mu must be held for writing.
func (r *record) addRegion(region string) {
	switch {
	case region == "" || region == r.region:
		return
	case r.region == "":
		r.region = region
		return
	}
	set := r.regions
	if set == nil {
		set = []string{r.region}
	}
	i, found := slices.BinarySearch(set, region)
	if found {
		return
	}
	if len(set) >= MaxRegions {
		r.regionsCapped = true
		return
	}
	r.regions = slices.Insert(slices.Clone(set), i, region)
}

// scope is a (view, syscall) pair the statistics are kept for.
type scope struct{ view, syscall string }

// counters are per-scope statistics. Each field must be accessed atomically.
type counters struct {
	lookups, hits, misses, learned atomic.Uint64
}

func (c *counters) snapshot() Counters {
	return Counters{Lookups: c.lookups.Load(), Hits: c.hits.Load(), Misses: c.misses.Load(), Learned: c.learned.Load()}
}

// Memo is the training memo for one Key. It is safe for concurrent use:
// Lookup takes only the read lock on its hit path, so Fast-Bridge workers do
// not serialize on each other.
type Memo struct {
	// key is immutable.
	key Key

	mu sync.RWMutex
	// entries maps instruction address to its record. Precondition for
	// adding or removing: mu must be held for writing.
	entries map[uint64]*record
	// stats maps scope to its counters; entries are added under the write
	// lock, the counters inside change under the read lock.
	stats map[scope]*counters
	// pending counts misses of instructions not learned yet; Learn moves
	// them to the new entry. Precondition: mu must be held for writing.
	pending map[uint64]uint64
	// version changes whenever an entry is added, changed or removed.
	version atomic.Uint64

	// What Save needs to merge with the file (see save.go); all written
	// only with mu held for writing.
	//
	// syncPath is the file this memo was last loaded from or saved to;
	// the records' base counts and baseStats describe that file then.
	syncPath  string
	baseStats map[scope]Counters
	// dropped are the addresses Delete forgot since then; Save removes
	// them from the file too.
	dropped map[uint64]struct{}
	// cleared says Clear ran since then: Save replaces the file's content.
	cleared bool
	// rejected identifies the file content LoadOrNew could not read (nil
	// if it read it, or found none); the caller reported it already, so
	// Save replaces that content without reporting it again.
	rejected *fingerprint
}

// New returns an empty memo for key.
func New(key Key) *Memo {
	return &Memo{
		key:     key,
		entries: make(map[uint64]*record),
		stats:   make(map[scope]*counters),
		pending: make(map[uint64]uint64),
	}
}

// Key returns the key the memo was created or loaded for.
func (m *Memo) Key() Key { return m.key }

// ErrInvalidObservation is returned by Learn for an observation that cannot
// be memoized (invalid decision, over-long instruction bytes).
var ErrInvalidObservation = errors.New("invalid observation")

// Learn merges one Slow-Bridge observation of the instruction at pc into
// the memo (see Merge for the decision rules) and returns the result.
func (m *Memo) Learn(pc uint64, o Observation) (Entry, error) {
	if !o.Decision.Valid() {
		return Entry{}, fmt.Errorf("memo: learn %#x: %w: decision %v", pc, ErrInvalidObservation, o.Decision)
	}
	if len(o.Bytes) > MaxInsnBytes {
		return Entry{}, fmt.Errorf("memo: learn %#x: %w: %d instruction bytes", pc, ErrInvalidObservation, len(o.Bytes))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.entries[pc]
	if r == nil {
		t := o.Time
		if t.IsZero() {
			t = time.Now()
		}
		r = &record{
			decision: o.Decision, region: o.Region,
			view: o.View, syscall: o.Syscall,
			// Strip the monotonic reading and location so an entry
			// compares equal to itself after a save/load round trip.
			firstSeen: t.Round(0).UTC(),
			bytes:     slices.Clone(o.Bytes),
			seen:      1,
		}
		if n, ok := m.pending[pc]; ok {
			r.misses.Store(n)
			delete(m.pending, pc)
		}
		m.entries[pc] = r
		m.version.Add(1)
		m.countersLocked(scope{o.View, o.Syscall}).learned.Add(1)
		return r.entry(pc), nil
	}
	before := r.entry(pc)
	r.decision = decision.Merge(r.decision, o.Decision)
	r.seen++
	r.addRegion(o.Region)
	if len(r.bytes) == 0 && len(o.Bytes) > 0 {
		r.bytes = slices.Clone(o.Bytes)
	}
	after := r.entry(pc)
	if after.Decision != before.Decision || after.Region != before.Region ||
		len(after.Regions) != len(before.Regions) || after.RegionsCapped != before.RegionsCapped {
		m.version.Add(1)
	}
	return after, nil
}

// Version changes whenever an entry is added, its decision or regions change, or it is removed:
// decisions cached from the memo are valid while it stays the same.
func (m *Memo) Version() uint64 { return m.version.Load() }

// countersLocked returns the counters of s, creating them.
// Precondition: mu must be held for writing.
func (m *Memo) countersLocked(s scope) *counters {
	c := m.stats[s]
	if c == nil {
		c = new(counters)
		m.stats[s] = c
	}
	return c
}

// Lookup returns the memoized entry for pc as run by view/syscall and
// whether Fast-Bridge may replay it. It counts a hit, or a miss when pc is
// not memoized or its decision is Unknown (then the entry is still returned,
// so the caller can report which global is unclassified).
func (m *Memo) Lookup(pc uint64, view, syscall string) (Entry, bool) {
	s := scope{view, syscall}
	m.mu.RLock()
	c := m.stats[s]
	for c == nil {
		// Re-check under the read lock: Clear may run in between.
		m.mu.RUnlock()
		m.mu.Lock()
		m.countersLocked(s)
		m.mu.Unlock()
		m.mu.RLock()
		c = m.stats[s]
	}
	c.lookups.Add(1)
	r := m.entries[pc]
	if r == nil {
		c.misses.Add(1)
		m.mu.RUnlock()
		// A miss means a fall-back to Slow-Bridge, milliseconds of work,
		// so the write lock costs nothing here.
		m.mu.Lock()
		if r := m.entries[pc]; r != nil {
			r.misses.Add(1) // learned meanwhile
		} else if _, ok := m.pending[pc]; ok || len(m.pending) < maxPending {
			m.pending[pc]++
		}
		m.mu.Unlock()
		return Entry{}, false
	}
	defer m.mu.RUnlock()
	e := r.entry(pc)
	if !r.decision.Replayable() {
		c.misses.Add(1)
		e.Misses = r.misses.Add(1)
		return e, false
	}
	c.hits.Add(1)
	e.Hits = r.hits.Add(1)
	return e, true
}

// Peek returns the entry for pc without counting a lookup.
func (m *Memo) Peek(pc uint64) (Entry, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	r := m.entries[pc]
	if r == nil {
		return Entry{}, false
	}
	return r.entry(pc), true
}

// AddHits counts n more hits of pc's decision that were replayed without a lookup (a cache of
// decisions outside the memo), for its per-instruction count; the per-view lookup counts are
// not changed. An unknown pc is ignored.
func (m *Memo) AddHits(pc, n uint64) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if r := m.entries[pc]; r != nil {
		r.hits.Add(n)
	}
}

// Delete forgets pc, so its next lookup misses. It reports whether pc was
// memoized.
func (m *Memo) Delete(pc uint64) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.entries[pc]
	delete(m.entries, pc)
	delete(m.pending, pc)
	if ok {
		m.version.Add(1)
	}
	// Even an address this memo does not hold may be in the file, learned
	// by another process: forgetting it means there too.
	if m.dropped == nil {
		m.dropped = make(map[uint64]struct{})
	}
	m.dropped[pc] = struct{}{}
	return ok
}

// Len returns the number of memoized instructions.
func (m *Memo) Len() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.entries)
}

// Entries returns all entries sorted by address.
func (m *Memo) Entries() []Entry {
	m.mu.RLock()
	defer m.mu.RUnlock()
	pcs := m.sortedPCsLocked()
	out := make([]Entry, len(pcs))
	for i, pc := range pcs {
		out[i] = m.entries[pc].entry(pc)
	}
	return out
}

// sortedPCsLocked returns the memoized addresses in increasing order.
// Sorting addresses rather than Entry values is several times faster.
// Precondition: mu must be held (read or write).
func (m *Memo) sortedPCsLocked() []uint64 {
	pcs := make([]uint64, 0, len(m.entries))
	for pc := range m.entries {
		pcs = append(pcs, pc)
	}
	slices.Sort(pcs)
	return pcs
}

// Clear forgets all entries and statistics; the key stays. The next Save
// replaces the file's content, including what other processes saved to it,
// rather than merging with it: clearing is how a user asks for retraining.
func (m *Memo) Clear() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.entries = make(map[uint64]*record)
	m.stats = make(map[scope]*counters)
	m.pending = make(map[uint64]uint64)
	m.dropped = nil
	m.cleared = true
	m.version.Add(1)
}

// Counters are lookup statistics for a scope.
type Counters struct {
	Lookups uint64 `json:"lookups"`
	Hits    uint64 `json:"hits"`
	Misses  uint64 `json:"misses"`
	// Learned counts entries created (first seen) in the scope.
	Learned uint64 `json:"learned"`
	// HitRate is Hits/Lookups, 0 without lookups. It is a field rather
	// than a method so --json output carries it.
	HitRate float64 `json:"hit_rate"`
}

func (c *Counters) add(o Counters) {
	c.Lookups += o.Lookups
	c.Hits += o.Hits
	c.Misses += o.Misses
	c.Learned += o.Learned
}

func (c *Counters) rate() {
	c.HitRate = 0
	if c.Lookups > 0 {
		c.HitRate = float64(c.Hits) / float64(c.Lookups)
	}
}

// ViewStats are the statistics of one view.
type ViewStats struct {
	Counters
	// Entries counts the memoized instructions first seen in this view.
	Entries  int                 `json:"entries"`
	Syscalls map[string]Counters `json:"syscalls"`
}

// Stats is a snapshot of the memo's statistics.
type Stats struct {
	Key       Key                  `json:"key"`
	Entries   int                  `json:"entries"`
	Decisions decision.Counts      `json:"decisions"` // memoized instructions
	Total     Counters             `json:"total"`
	Views     map[string]ViewStats `json:"views"`
}

// Stats returns the statistics, in total and per view and syscall.
func (m *Memo) Stats() Stats {
	st := Stats{Key: m.key, Views: make(map[string]ViewStats)}
	view := func(name string) ViewStats {
		v, ok := st.Views[name]
		if !ok {
			v.Syscalls = make(map[string]Counters)
		}
		return v
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	st.Entries = len(m.entries)
	for _, r := range m.entries {
		st.Decisions.Add(r.decision, 1)
		v := view(r.view)
		v.Entries++
		st.Views[r.view] = v
	}
	for s, c := range m.stats {
		sc := c.snapshot()
		sc.rate()
		v := view(s.view)
		v.add(sc)
		v.rate()
		v.Syscalls[s.syscall] = sc
		st.Views[s.view] = v
		st.Total.add(sc)
	}
	st.Total.rate()
	return st
}

// FormatStats renders s for the console: one line in total, one per view
// and one per syscall, sorted by name.
func FormatStats(s Stats) string {
	var b strings.Builder
	line := func(indent, name string, c Counters, extra string) {
		// Without lookups there is no hit rate: a view trained only by Slow-Bridge is not 0 % hit.
		rate := "  n/a"
		if c.Lookups > 0 {
			rate = fmt.Sprintf("%5.1f%%", 100*c.HitRate)
		}
		fmt.Fprintf(&b, "%s%-20s lookups %8d  hits %8d  misses %6d  hit rate %6s  learned %6d%s\n",
			indent, name, c.Lookups, c.Hits, c.Misses, rate, c.Learned, extra)
	}
	fmt.Fprintf(&b, "memo for %v: %d entries (local %d, redirect %d, both %d, unknown %d)\n",
		s.Key, s.Entries, s.Decisions.Local, s.Decisions.Redirect, s.Decisions.Both, s.Decisions.Unknown)
	line("", "total", s.Total, "")
	for _, vn := range slices.Sorted(maps.Keys(s.Views)) {
		v := s.Views[vn]
		line("  ", orDash(vn), v.Counters, fmt.Sprintf("  entries %d", v.Entries))
		for _, sn := range slices.Sorted(maps.Keys(v.Syscalls)) {
			line("    ", orDash(sn), v.Syscalls[sn], "")
		}
	}
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
