package taint

import (
	"encoding/binary"
	"slices"
)

const (
	pageShift = 12
	pageSize  = 1 << pageShift
	pageMask  = pageSize - 1
)

// PhysRange gives the initial label of guest-physical memory in
// [Begin, End): the label a byte has until the tracked code writes it.
type PhysRange struct {
	Begin, End uint64
	Label      Label
}

// page holds one label per byte of a 4 KiB physical page.
type page struct {
	b [pageSize]byte
	// shared pages are the read-only uniform pages of shadowMem.uniform,
	// referenced by every page that still has one initial label
	// throughout; the first write copies them.
	shared bool
}

type cacheEntry struct {
	key uint64 // page frame number + 1, so the zero entry matches nothing
	p   *page
}

// shadowMem is the sparse shadow of guest-physical memory, keyed by
// physical page. Pages are created on first touch from the initial ranges;
// pages with one initial label throughout share one read-only page until
// written, so reading large GVM or SVM areas costs no memory.
type shadowMem struct {
	pages   map[uint64]*page
	cache   [64]cacheEntry // direct-mapped by frame number: stack, data and code pages alternate
	ranges  []PhysRange    // as configured; the first range containing a byte wins
	def     Label          // label of bytes in no range
	uniform [1 << labelBits]*page
}

func newShadowMem(ranges []PhysRange, def Label) shadowMem {
	return shadowMem{pages: make(map[uint64]*page), ranges: slices.Clone(ranges), def: def}
}

func (s *shadowMem) reset() {
	clear(s.pages)
	s.cache = [64]cacheEntry{}
}

// initial is the label of physical byte p before any tracked write.
func (s *shadowMem) initial(p uint64) Label {
	for _, r := range s.ranges {
		if r.Begin <= p && p < r.End {
			return r.Label
		}
	}
	return s.def
}

func (s *shadowMem) uniformPage(l Label) *page {
	l &= 1<<labelBits - 1
	if s.uniform[l] == nil {
		p := &page{shared: true}
		for i := range p.b {
			p.b[i] = byte(l)
		}
		s.uniform[l] = p
	}
	return s.uniform[l]
}

// create builds the initial shadow of frame pfn.
func (s *shadowMem) create(pfn uint64) *page {
	base := pfn << pageShift
	end := base + pageSize
	// Uniform unless some range boundary falls inside the page.
	split := false
	for _, r := range s.ranges {
		if r.Begin > base && r.Begin < end || r.End > base && r.End < end {
			split = true
			break
		}
	}
	if !split {
		return s.uniformPage(s.initial(base))
	}
	p := new(page)
	for i := range p.b {
		p.b[i] = byte(s.initial(base + uint64(i)))
	}
	return p
}

// get returns the page of frame pfn for reading.
func (s *shadowMem) get(pfn uint64) *page {
	c := &s.cache[pfn&63]
	if c.key == pfn+1 {
		return c.p
	}
	p := s.pages[pfn]
	if p == nil {
		p = s.create(pfn)
		s.pages[pfn] = p
	}
	*c = cacheEntry{pfn + 1, p}
	return p
}

// getWritable returns the page of frame pfn for writing, copying a shared
// page first.
func (s *shadowMem) getWritable(pfn uint64) *page {
	p := s.get(pfn)
	if p.shared {
		q := new(page)
		q.b = p.b
		s.pages[pfn] = q
		s.cache[pfn&63] = cacheEntry{pfn + 1, q}
		p = q
	}
	return p
}

// load returns the labels of n (1..8) bytes at p. A run that crosses into
// the next page continues at p2 (the physical address of the next page's
// first byte, which need not be p's neighbour).
func (s *shadowMem) load(p, p2 uint64, n int) uint64 {
	off := p & pageMask
	pg := s.get(p >> pageShift)
	if off+8 <= pageSize {
		return binary.LittleEndian.Uint64(pg.b[off:]) & mask8(n)
	}
	var v uint64
	for i := 0; i < n; i++ {
		if off == pageSize {
			pg, off = s.get(p2>>pageShift), p2&pageMask
		}
		v |= uint64(pg.b[off]) << (8 * uint(i))
		off++
	}
	return v
}

// store sets the labels of n (1..8) bytes at p (continuing at p2, as load).
func (s *shadowMem) store(p, p2 uint64, n int, v uint64) {
	off := p & pageMask
	pg := s.getWritable(p >> pageShift)
	if n == 8 && off+8 <= pageSize {
		binary.LittleEndian.PutUint64(pg.b[off:], v)
		return
	}
	for i := 0; i < n; i++ {
		if off == pageSize {
			pg, off = s.getWritable(p2>>pageShift), p2&pageMask
		}
		pg.b[off] = byte(v >> (8 * uint(i)))
		off++
	}
}
