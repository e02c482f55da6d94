package memo

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"hybridbridge/decision"
	"hybridbridge/internal/atomicfile"
)

// Saving a memo file that several processes use.
//
// The console and any number of CLI views may run at once against the same
// kernel build, each holding the memo in memory between its load and its
// save. If each wrote its whole memory, the last writer would erase what the
// others learned meanwhile. Save therefore merges: under an exclusive flock
// on "<file>.lock" it reads the file as it is now, merges into it what this
// memo learned since it last loaded or saved that file, writes the result
// atomically (the file is always one complete, checksummed memo) and takes
// the result as its own content, so the caller sees what the others learned.
//
// Lock and merge was chosen over an append-only journal: the file stays one
// checksummed snapshot that Load and `memo show` read as before; there is no
// compaction to schedule and no torn tail to recover after a crash; and saves
// are rare (one per view run or console refresh), so rewriting the whole file
// under the lock costs little. Readers take no lock: the rename is atomic.
//
// Merging is three-way. The records remember their counts as of the last load
// or save of the file (the base), so only what this process counted since is
// added to what the file holds now, and saving twice never counts twice:
//
//   - Decisions combine with decision.Merge, the rule Learn applies to a new
//     observation: Local and Redirect seen by two processes become Both,
//     Unknown absorbs everything. A conflict is never settled by who saved
//     last, which would replay a decision the other process saw violated.
//   - Regions are united (at most MaxRegions; RegionsCapped if either was
//     capped). The first region, view, syscall, bytes and time are those of
//     the earlier first sighting.
//   - Seen, hits and misses, per entry, and the per-view and per-syscall
//     counters are the file's plus this process's increase since the base.
//   - An entry that was in the base but is no longer in the file was
//     removed by someone else (`memo clear`): it stays removed unless this
//     process has seen it again since, and then it keeps only those counts.
//   - An address given to Delete is removed from the file too, unless this
//     process learned it again afterwards; after Clear the file's content is
//     replaced, not merged.
//
// A file that cannot be read as a memo for this key (corrupt, another format
// version or key) cannot be merged with. Save then writes this memo with its
// full counts over it and says so in SaveResult.Replaced, unless it is the
// very content that LoadOrNew already rejected (and its caller reported). A
// file that cannot be read at all (permissions, I/O) fails the save instead:
// replacing it would lose what it holds.

// SaveResult tells what Save found in the file.
type SaveResult struct {
	// Merged counts instructions taken from the file that this memo did
	// not hold: learned by other processes meanwhile.
	Merged int
	// Removed counts instructions this memo forgot because they were
	// removed from the file meanwhile.
	Removed int
	// Replaced is why the file's content was overwritten instead of merged
	// with: one of the typed errors of Load, wrapped with the path. Nil when
	// it was merged, missing, or already rejected by LoadOrNew.
	Replaced error
}

// Save merges the memo into the file at path and writes it atomically (see
// above): a crash or failure leaves either the previous file or the new one,
// never a mix. On success the memo holds the merged content. Lookups and
// Learn wait while the file is written.
func (m *Memo) Save(path string) (SaveResult, error) {
	unlock, err := lockFile(path)
	if err != nil {
		return SaveResult{}, fmt.Errorf("memo: save %s: %w", path, err)
	}
	defer unlock()
	data, err := os.ReadFile(path)
	missing := errors.Is(err, fs.ErrNotExist)
	if err != nil && !missing {
		return SaveResult{}, fmt.Errorf("memo: save %s: read the file to merge with: %w", path, err)
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	var res SaveResult
	var disk *Memo
	useBase := false
	switch {
	case m.cleared:
		// Replace whatever is there, as asked.
	case missing:
		useBase = true // removed meanwhile: the base says what to forget
	default:
		d, derr := unmarshal(data, &m.key)
		if derr == nil {
			disk, useBase = d, true
		} else if m.rejected == nil || *m.rejected != fingerprintOf(data) {
			res.Replaced = fmt.Errorf("memo %s: %w", path, derr)
		}
	}
	// Counts since the base only mean something against the file the base
	// was read from.
	useBase = useBase && m.syncPath == absPath(path)
	out := m.mergeLocked(disk, useBase, &res)
	encoded := out.Marshal()
	// 0644: a memo is not secret, and tools run under other users may want to show it.
	err = atomicfile.WriteBytes(path, encoded, 0o644)
	if err != nil {
		return SaveResult{}, fmt.Errorf("memo: save %s: %w", path, err)
	}
	m.adoptLocked(out, absPath(path))
	return res, nil
}

// mergeLocked returns the memo to write: the file's content disk (nil if
// none or unreadable) merged with m. Without useBase all of m's counts are
// new to the file. Precondition: m.mu must be held for writing.
func (m *Memo) mergeLocked(disk *Memo, useBase bool, res *SaveResult) *Memo {
	out := New(m.key)
	var theirs map[uint64]*record
	if disk != nil {
		theirs = disk.entries
	}
	add := func(pc uint64, r *record) {
		r.synced, r.base = true, r.counts()
		out.entries[pc] = r
	}
	for pc, o := range m.entries {
		d := theirs[pc]
		if _, ok := m.dropped[pc]; ok {
			d = nil // learned again after Delete: only this process's sightings count
		}
		var base entryCounts
		if useBase && o.synced {
			base = o.base
			if d == nil && o.seen <= base.seen {
				res.Removed++
				continue
			}
		}
		mine := o.counts().minus(base)
		if d == nil {
			add(pc, o.cloneWith(mine))
			continue
		}
		add(pc, combine(d, o, d.counts().plus(mine)))
	}
	for pc, d := range theirs {
		if _, ok := m.entries[pc]; ok {
			continue
		}
		if _, ok := m.dropped[pc]; ok {
			continue
		}
		add(pc, d.cloneWith(d.counts()))
		res.Merged++
	}

	stats := make(map[scope]Counters)
	if disk != nil {
		for s, c := range disk.stats {
			stats[s] = c.snapshot()
		}
	}
	for s, c := range m.stats {
		mine := c.snapshot()
		if useBase {
			mine = mine.minus(m.baseStats[s])
		}
		stats[s] = stats[s].plus(mine)
	}
	for s, c := range stats {
		oc := out.countersLocked(s)
		oc.lookups.Store(c.Lookups)
		oc.hits.Store(c.Hits)
		oc.misses.Store(c.Misses)
		oc.learned.Store(c.Learned)
	}
	return out
}

// adoptLocked makes the just written memo out m's content, its counts the new
// base. Precondition: m.mu must be held for writing.
func (m *Memo) adoptLocked(out *Memo, path string) {
	changed := len(out.entries) != len(m.entries)
	for pc, r := range out.entries {
		o := m.entries[pc]
		if o == nil || o.decision != r.decision || o.region != r.region ||
			len(o.regions) != len(r.regions) || o.regionsCapped != r.regionsCapped {
			changed = true
		}
		// Misses of an address that another process has learned meanwhile
		// belong to its entry now; they count as new to the file.
		if n, ok := m.pending[pc]; ok {
			r.misses.Add(n)
			delete(m.pending, pc)
		}
	}
	m.entries = out.entries
	m.stats = out.stats
	m.baseStats = make(map[scope]Counters, len(out.stats))
	for s, c := range out.stats {
		m.baseStats[s] = c.snapshot()
	}
	m.syncPath = path
	m.dropped = nil
	m.cleared = false
	m.rejected = nil
	if changed {
		m.version.Add(1)
	}
}

// cloneWith returns a copy of r with the counts c, not synced. Slices are
// shared: they are copy-on-write. Precondition: the memo holding r must be
// locked (read or write), or not shared yet.
func (r *record) cloneWith(c entryCounts) *record {
	n := &record{
		decision: r.decision, region: r.region, regions: r.regions, regionsCapped: r.regionsCapped,
		view: r.view, syscall: r.syscall, firstSeen: r.firstSeen, bytes: r.bytes, seen: c.seen,
	}
	n.hits.Store(c.hits)
	n.misses.Store(c.misses)
	return n
}

// combine merges two records of one instruction into a new one with the
// counts c. The earlier first sighting describes the entry; on a tie, a.
func combine(a, b *record, c entryCounts) *record {
	first, second := a, b
	if b.firstSeen.Before(a.firstSeen) {
		first, second = b, a
	}
	n := first.cloneWith(c)
	n.decision = decision.Merge(a.decision, b.decision)
	n.addRegion(second.region)
	for _, g := range second.regions {
		n.addRegion(g)
	}
	n.regionsCapped = n.regionsCapped || second.regionsCapped
	if len(n.bytes) == 0 {
		n.bytes = second.bytes
	}
	return n
}

func (c entryCounts) plus(o entryCounts) entryCounts {
	return entryCounts{seen: c.seen + o.seen, hits: c.hits + o.hits, misses: c.misses + o.misses}
}

// minus saturates at zero: a count in the file can be lower than the base if
// the file was replaced meanwhile, and there is nothing to take away then.
func (c entryCounts) minus(o entryCounts) entryCounts {
	return entryCounts{seen: sub(c.seen, o.seen), hits: sub(c.hits, o.hits), misses: sub(c.misses, o.misses)}
}

func (c Counters) plus(o Counters) Counters {
	return Counters{Lookups: c.Lookups + o.Lookups, Hits: c.Hits + o.Hits, Misses: c.Misses + o.Misses, Learned: c.Learned + o.Learned}
}

func (c Counters) minus(o Counters) Counters {
	return Counters{Lookups: sub(c.Lookups, o.Lookups), Hits: sub(c.Hits, o.Hits), Misses: sub(c.Misses, o.Misses), Learned: sub(c.Learned, o.Learned)}
}

func sub(a, b uint64) uint64 {
	if a < b {
		return 0
	}
	return a - b
}

// Remove deletes the memo file at path under the lock Save takes, so that a
// save running meanwhile cannot write back what was just removed. Processes
// that still hold the memo forget, on their next save, the instructions they
// have not seen again since (see Save). A missing file is not an error.
func Remove(path string) error {
	unlock, err := lockFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // no folder, so no memo
	}
	if err != nil {
		return fmt.Errorf("memo: remove %s: %w", path, err)
	}
	defer unlock()
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("memo: remove: %w", err)
	}
	return nil
}

// lockFile takes an exclusive flock on path+".lock", waiting for other
// holders, and returns its release. The lock file is never removed: a
// process waiting on it would then hold a lock on a file no one else opens.
// flock rather than fcntl locks: two Memos of one process exclude each other
// too, as each opens the file anew.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil // closing releases the lock
}

// fingerprint identifies a file's content.
type fingerprint struct {
	size int
	crc  uint32
}

func fingerprintOf(data []byte) fingerprint {
	return fingerprint{size: len(data), crc: crc32.Checksum(data, castagnoli)}
}

// absPath makes the paths of one file compare equal however they were given.
func absPath(path string) string {
	if abs, err := filepath.Abs(path); err == nil {
		return abs
	}
	return filepath.Clean(path)
}
