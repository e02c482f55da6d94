package svm

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	"hybridbridge/guest"
	"hybridbridge/guest/gdbstub"
	"hybridbridge/vmm"
)

// steering is guest.Config.Started for the SVM's boot: QEMU was started with -S, so nothing has
// run yet. Under the gdbstub it keeps the SVM's kernel off the pages of its image that a guest's
// kernel gives to its page allocator (keepImage), and for a KASLR layout puts the kernel into that
// layout (layoutBoot). It leaves the VM running.
//
// Why keep them: a guest's kernel frees its init sections, the gaps between sections, the unused
// decrypted bss and the unused brk, and reuses those pages like any others, for module code among
// them. The SVM's image occupies the same physical range. Were the SVM's kernel to reuse them too,
// the same frame would hold the SVM's objects and the guest's, and only each access's provenance
// could tell whose it meant; an instruction fetch asks nobody. Kept unused, those frames are the
// guest's alone and the overlay maps the guest's RAM there, as over the reserved ranges.
type steering struct {
	gdbSock  string
	syms     *vmm.Symbols // the SVM's, in the layout it boots into
	textPhys uint64       // where _text lies physically
	layout   *layoutBoot  // nil for a nokaslr SVM
	report   func(string)

	kept []PhysSpan // the image pages kept from the page allocator, in the order the boot met them
	done bool
	// percpuDone is set once the per-CPU chunks are kept out of the top of vmalloc (freePercpuTop).
	percpuDone bool
}

// PercpuTop is the top of the vmalloc area the SVM leaves to the guest's per-CPU chunks: one
// page directory pointer entry (VMALLOC_END + 1 is 1 GiB-aligned), grafted whole.
const PercpuTop = 1 << 30

func (s *steering) addr(name string) (uint64, error) {
	a, ok := s.syms.Addr(name)
	if !ok {
		return 0, fmt.Errorf("symbol %s missing", name)
	}
	return a, nil
}

func (s *steering) steer(ctx context.Context, g *guest.Guest) error {
	c, err := gdbstub.Dial(ctx, s.gdbSock)
	if err != nil {
		return err
	}
	defer c.Close()
	if s.layout != nil {
		if err := s.layout.enter(ctx, c, g); err != nil {
			return err
		}
	}
	st := &stops{c: c, at: map[uint64]stop{}}
	if err := s.keepImage(ctx, st); err != nil {
		return err
	}
	if err := s.freePercpuTop(ctx, st); err != nil {
		return err
	}
	if s.layout != nil {
		if err := s.layout.stopForBases(ctx, st); err != nil {
			return err
		}
	}
	if err := st.run(ctx, func() bool { return s.done }); err != nil {
		return err
	}
	if err := c.Close(); err != nil {
		return err
	}
	// The gdbstub leaves the VM stopped when its client goes; the monitor resumes it.
	q, err := guest.DialQMP(ctx, g.QMPSocket())
	if err != nil {
		return err
	}
	defer q.Close()
	if _, err := q.Run(ctx, "cont", nil); err != nil {
		return fmt.Errorf("resume the SVM: %w", err)
	}
	return nil
}

// keepImage sets the stops that keep the image's unused pages out of the SVM's page allocator:
//   - once the brk is final (early_alloc_pgt_buf, the last to extend it, returns; reserve_brk runs
//     next), _brk_end is moved to __brk_limit, so reserve_brk reserves the brk whole;
//   - every free_reserved_area of a range in the image returns at once, without freeing:
//     free_init_pages, its caller, has made the range writable and not executable in both of the
//     kernel's mappings by then, as the guest's kernel has its freed pages;
//   - at pti_finalize, right after free_initmem and mark_rodata_ro, the boot has freed all it
//     frees of its image, and steering ends.
func (s *steering) keepImage(ctx context.Context, st *stops) error {
	text, err := s.addr("_text")
	if err != nil {
		return err
	}
	end, err := s.addr("_end")
	if err != nil {
		return err
	}
	phys := func(va uint64) uint64 { return va - text + s.textPhys }
	entries := map[string]uint64{}
	for _, name := range []string{"early_alloc_pgt_buf", "_brk_end", "__brk_base", "__brk_limit", "free_reserved_area", "pti_finalize"} {
		if entries[name], err = s.addr(name); err != nil {
			return err
		}
	}
	le := binary.LittleEndian
	keepBrk := func(ctx context.Context, _ map[string]uint64) error {
		raw, err := st.c.ReadMemory(ctx, entries["_brk_end"], 8)
		if err != nil {
			return err
		}
		used, limit := le.Uint64(raw), entries["__brk_limit"]
		if used < entries["__brk_base"] || used > limit {
			return fmt.Errorf("_brk_end %#x is outside the brk [%#x, %#x)", used, entries["__brk_base"], limit)
		}
		var buf [8]byte
		le.PutUint64(buf[:], limit)
		if err := writeChecked(ctx, st.c, entries["_brk_end"], buf[:]); err != nil {
			return fmt.Errorf("set _brk_end: %w", err)
		}
		if from := pageUp(used); from < limit {
			s.kept = append(s.kept, PhysSpan{phys(from), phys(limit)})
			s.report(fmt.Sprintf("keeping the unused brk (%d KiB) for the guest", (limit-from)>>10))
		}
		return nil
	}
	if err := st.add(ctx, entries["early_alloc_pgt_buf"], "early_alloc_pgt_buf", true, func(ctx context.Context, regs map[string]uint64) error {
		return st.atReturn(ctx, regs, "early_alloc_pgt_buf", keepBrk)
	}); err != nil {
		return err
	}
	if err := st.add(ctx, entries["free_reserved_area"], "free_reserved_area", false, func(ctx context.Context, regs map[string]uint64) error {
		// free_reserved_area(start, end, poison, what): System V arguments.
		begin, stop := regs["rdi"], regs["rsi"]
		if begin >= end || stop <= text {
			return nil // not the image (the initrd): let it free
		}
		if begin < text || stop > end || begin >= stop {
			return fmt.Errorf("free_reserved_area(%#x, %#x) straddles the image [%#x, %#x)", begin, stop, text, end)
		}
		what, err := st.c.ReadMemory(ctx, regs["rcx"], 64)
		if err != nil {
			return err
		}
		if n := bytes.IndexByte(what, 0); n >= 0 {
			what = what[:n]
		}
		// free_reserved_area frees the whole pages inside [begin, end).
		if lo, hi := pageUp(begin), stop&^4095; lo < hi {
			s.kept = append(s.kept, PhysSpan{phys(lo), phys(hi)})
			s.report(fmt.Sprintf("keeping %s (%d KiB) for the guest", what, (hi-lo)>>10))
		}
		return st.returnNow(ctx, regs, 0) // no page freed
	}); err != nil {
		return err
	}
	return st.add(ctx, entries["pti_finalize"], "pti_finalize", true, func(ctx context.Context, _ map[string]uint64) error {
		s.done = true
		// A boot that made no per-CPU chunk of its own by now makes them later, lower too.
		return s.percpuTop(ctx, st.c)
	})
}

// freePercpuTop keeps the SVM's own per-CPU chunks out of the top PercpuTop bytes of its vmalloc
// area, which the overlay leaves to the guest's (Session's per-CPU grafts). Both kernels place
// those chunks top-down from the same VMALLOC_END, so without this the guest's chunk and the
// SVM's would be at one address, and a guest per-CPU pointer summed over CPUs would read the
// SVM's counters. The kernel sizes each chunk's area by pcpu_group_sizes: growing the only
// group's size by PercpuTop puts every chunk that much lower, the extra left unmapped at the top
// of its area (a chunk's units are at its area's start, pcpu_group_offsets). It is done at the
// first chunk's creation, or at pti_finalize if none was made by then.
func (s *steering) freePercpuTop(ctx context.Context, st *stops) error {
	create, err := s.addr("pcpu_create_chunk")
	if err != nil {
		return err
	}
	return st.add(ctx, create, "pcpu_create_chunk", false, func(ctx context.Context, _ map[string]uint64) error {
		return s.percpuTop(ctx, st.c)
	})
}

// percpuTop grows the per-CPU group's area size once (freePercpuTop).
func (s *steering) percpuTop(ctx context.Context, c *gdbstub.Client) error {
	if s.percpuDone {
		return nil
	}
	le := binary.LittleEndian
	var at [3]uint64
	for i, name := range []string{"pcpu_group_sizes", "pcpu_nr_groups", "pcpu_atom_size"} {
		a, err := s.addr(name)
		if err != nil {
			return err
		}
		at[i] = a
	}
	raw, err := c.ReadMemory(ctx, at[1], 4)
	if err != nil {
		return err
	}
	if n := le.Uint32(raw); n != 1 {
		return fmt.Errorf("the SVM's per-CPU allocator has %d groups; one expected (a single NUMA node)", n)
	}
	if raw, err = c.ReadMemory(ctx, at[2], 4); err != nil { // an int
		return err
	}
	if atom := uint64(le.Uint32(raw)); atom == 0 || PercpuTop%atom != 0 {
		return fmt.Errorf("per-CPU atom size %#x does not divide %#x", atom, PercpuTop)
	}
	if raw, err = c.ReadMemory(ctx, at[0], 8); err != nil {
		return err
	}
	sizes := le.Uint64(raw)
	if raw, err = c.ReadMemory(ctx, sizes, 8); err != nil {
		return fmt.Errorf("pcpu_group_sizes[0] at %#x: %w", sizes, err)
	}
	size := le.Uint64(raw)
	if size == 0 || size >= PercpuTop {
		return fmt.Errorf("per-CPU group size %#x: not set yet, or already grown", size)
	}
	var buf [8]byte
	le.PutUint64(buf[:], size+PercpuTop)
	if err := writeChecked(ctx, c, sizes, buf[:]); err != nil {
		return fmt.Errorf("grow the per-CPU group size: %w", err)
	}
	s.percpuDone = true
	s.report(fmt.Sprintf("leaving the top %d MiB of vmalloc to the guest's per-CPU chunks", PercpuTop>>20))
	return nil
}

func pageUp(a uint64) uint64 { return (a + 4095) &^ 4095 }

// writeChecked writes b at the virtual address va and reads it back.
func writeChecked(ctx context.Context, c *gdbstub.Client, va uint64, b []byte) error {
	if err := c.WriteMemory(ctx, va, b); err != nil {
		return err
	}
	got, err := c.ReadMemory(ctx, va, len(b))
	if err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	if !bytes.Equal(got, b) {
		return fmt.Errorf("reads %x after writing %x", got, b)
	}
	return nil
}

// stops are breakpoints handled in whatever order the boot reaches them.
type stops struct {
	c  *gdbstub.Client
	at map[uint64]stop
}

type stop struct {
	what string
	once bool // removed when reached
	fn   func(ctx context.Context, regs map[string]uint64) error
}

func (st *stops) add(ctx context.Context, addr uint64, what string, once bool, fn func(context.Context, map[string]uint64) error) error {
	if _, ok := st.at[addr]; ok {
		return fmt.Errorf("two stops at %#x (%s and %s)", addr, st.at[addr].what, what)
	}
	if err := st.c.SetBreakpoint(ctx, addr); err != nil {
		return fmt.Errorf("breakpoint at %s: %w", what, err)
	}
	st.at[addr] = stop{what: what, once: once, fn: fn}
	return nil
}

// atReturn, at a function's entry, adds a stop where it returns.
func (st *stops) atReturn(ctx context.Context, regs map[string]uint64, what string, fn func(context.Context, map[string]uint64) error) error {
	raw, err := st.c.ReadMemory(ctx, regs["rsp"], 8)
	if err != nil {
		return fmt.Errorf("%s's return address: %w", what, err)
	}
	return st.add(ctx, binary.LittleEndian.Uint64(raw), what+"'s return", true, fn)
}

// returnNow, at a function's entry, returns rax from it without running it.
func (st *stops) returnNow(ctx context.Context, regs map[string]uint64, rax uint64) error {
	rsp := regs["rsp"]
	raw, err := st.c.ReadMemory(ctx, rsp, 8)
	if err != nil {
		return fmt.Errorf("return address: %w", err)
	}
	if err := st.c.WriteRegister(ctx, "rax", rax); err != nil {
		return err
	}
	if err := st.c.WriteRegister(ctx, "rsp", rsp+8); err != nil {
		return err
	}
	return st.c.WriteRegister(ctx, "rip", binary.LittleEndian.Uint64(raw))
}

// run resumes the VM and handles each stop until done, then removes the remaining breakpoints.
func (st *stops) run(ctx context.Context, done func() bool) error {
	for !done() {
		if _, err := st.c.Continue(ctx); err != nil {
			return fmt.Errorf("run to the next of %s: %w", st.pending(), err)
		}
		regs, err := st.c.ReadRegisters(ctx)
		if err != nil {
			return err
		}
		rip := regs["rip"]
		s, ok := st.at[rip]
		if !ok {
			return fmt.Errorf("stopped at %#x, at none of %s", rip, st.pending())
		}
		if s.once {
			if err := st.c.ClearBreakpoint(ctx, rip); err != nil {
				return err
			}
			delete(st.at, rip)
		}
		if err := s.fn(ctx, regs); err != nil {
			return fmt.Errorf("at %s: %w", s.what, err)
		}
	}
	for addr, s := range st.at {
		if s.once {
			return fmt.Errorf("the boot never reached %s", s.what)
		}
		if err := st.c.ClearBreakpoint(ctx, addr); err != nil {
			return err
		}
	}
	return nil
}

func (st *stops) pending() string {
	var names []string
	for _, s := range st.at {
		names = append(names, s.what)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}
