package vmm

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"

	"hybridbridge/internal/atomicfile"
)

// Symbol is one line of /proc/kallsyms.
type Symbol struct {
	Addr   uint64
	Type   byte   // nm-style type letter: T/t text, D/d data, B/b bss, R/r rodata, A absolute...
	Name   string // not unique: static functions of different files share names
	Module string // "" for the kernel image, else the module name without brackets
}

// Symbols is a parsed kernel symbol table, immutable once parsed.
type Symbols struct {
	syms   []Symbol         // file order
	byName map[string][]int // indices into syms, file order
	byAddr []int            // indices into syms sorted by address, ties in file order
}

// ParseKallsyms parses the text of /proc/kallsyms: "ffffffff81000000 T _stext", with
// "\t[module]" after symbols of loaded modules.
func ParseKallsyms(r io.Reader) (*Symbols, error) {
	s := &Symbols{byName: make(map[string][]int)}
	sc := bufio.NewScanner(r)
	nonzero := false
	for line := 1; sc.Scan(); line++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) < 3 || len(f) > 4 || len(f[1]) != 1 {
			return nil, fmt.Errorf("kallsyms line %d: want \"address type name [module]\", got %q", line, sc.Text())
		}
		addr, err := strconv.ParseUint(f[0], 16, 64)
		if err != nil {
			return nil, fmt.Errorf("kallsyms line %d: address: %w", line, err)
		}
		sym := Symbol{Addr: addr, Type: f[1][0], Name: f[2]}
		if len(f) == 4 {
			mod, ok := strings.CutPrefix(f[3], "[")
			if mod, ok = strings.CutSuffix(mod, "]"); !ok || mod == "" {
				return nil, fmt.Errorf("kallsyms line %d: module %q is not [name]", line, f[3])
			}
			sym.Module = mod
		}
		nonzero = nonzero || addr != 0
		s.byName[sym.Name] = append(s.byName[sym.Name], len(s.syms))
		s.syms = append(s.syms, sym)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading kallsyms: %w", err)
	}
	if len(s.syms) == 0 {
		return nil, errors.New("kallsyms: no symbols")
	}
	// Unprivileged readers get every address as 0 rather than an error; a table like that
	// would make every lookup silently wrong.
	if !nonzero {
		return nil, fmt.Errorf("kallsyms: all %d addresses are zero: kptr_restrict hid them "+
			"(read /proc/kallsyms as root, or set kernel.kptr_restrict=0)", len(s.syms))
	}
	s.byAddr = make([]int, len(s.syms))
	for i := range s.byAddr {
		s.byAddr[i] = i
	}
	sort.SliceStable(s.byAddr, func(i, j int) bool { return s.syms[s.byAddr[i]].Addr < s.syms[s.byAddr[j]].Addr })
	return s, nil
}

// Len returns the number of symbols.
func (s *Symbols) Len() int { return len(s.syms) }

// Addr returns the address of the first symbol called name, in kallsyms order.
func (s *Symbols) Addr(name string) (uint64, bool) {
	idx := s.byName[name]
	if len(idx) == 0 {
		return 0, false
	}
	return s.syms[idx[0]].Addr, true
}

// All returns every symbol called name, in kallsyms order.
func (s *Symbols) All(name string) []Symbol {
	idx := s.byName[name]
	out := make([]Symbol, len(idx))
	for i, j := range idx {
		out[i] = s.syms[j]
	}
	return out
}

// LookupSymbol returns the symbol at or nearest below addr and addr's offset from it. Among
// symbols sharing that address (aliases) it picks the first in kallsyms order. There is no upper
// bound: an address past the last symbol of a region still resolves, and the caller judges
// whether the offset is plausible.
func (s *Symbols) LookupSymbol(addr uint64) (Symbol, uint64, bool) {
	i := sort.Search(len(s.byAddr), func(i int) bool { return s.syms[s.byAddr[i]].Addr > addr }) - 1
	if i < 0 {
		return Symbol{}, 0, false
	}
	at := s.syms[s.byAddr[i]].Addr
	for i > 0 && s.syms[s.byAddr[i-1]].Addr == at {
		i--
	}
	sym := s.syms[s.byAddr[i]]
	return sym, addr - sym.Addr, true
}

// Lookup returns the name of the symbol at or nearest below addr and the offset from it.
func (s *Symbols) Lookup(addr uint64) (name string, offset uint64, ok bool) {
	sym, off, ok := s.LookupSymbol(addr)
	return sym.Name, off, ok
}

// Format renders addr as "name+0x1f" ("name+0x1f [module]" inside a module), or as bare hex
// when no symbol precedes it.
func (s *Symbols) Format(addr uint64) string {
	sym, off, ok := s.LookupSymbol(addr)
	if !ok {
		return fmt.Sprintf("%#x", addr)
	}
	out := fmt.Sprintf("%s+%#x", sym.Name, off)
	if sym.Module != "" {
		out += " [" + sym.Module + "]"
	}
	return out
}

// WriteTo writes the table back in kallsyms format and order, so that ParseKallsyms reads it
// back unchanged.
func (s *Symbols) WriteTo(w io.Writer) (int64, error) {
	bw := bufio.NewWriter(w)
	var n int64
	for _, sym := range s.syms {
		k, err := fmt.Fprintf(bw, "%016x %c %s", sym.Addr, sym.Type, sym.Name)
		n += int64(k)
		if err == nil && sym.Module != "" {
			k, err = fmt.Fprintf(bw, "\t[%s]", sym.Module)
			n += int64(k)
		}
		if err == nil {
			err = bw.WriteByte('\n')
			n++
		}
		if err != nil {
			return n, err
		}
	}
	return n, bw.Flush()
}

// Save writes the table to path as kallsyms text, replacing the file atomically so a concurrent
// LoadSymbols never sees half a file. A cache is only valid for the boot it came from: KASLR
// moves the kernel on every boot. The file is the owner's alone: kernel addresses are what
// /proc/kallsyms hides from other users.
func (s *Symbols) Save(path string) error {
	err := atomicfile.Write(path, 0o600, func(w io.Writer) error {
		_, err := s.WriteTo(w)
		return err
	})
	if err != nil {
		return fmt.Errorf("saving symbols: %w", err)
	}
	return nil
}

// LoadSymbols reads a table written by Save, or a copy of /proc/kallsyms.
func LoadSymbols(path string) (*Symbols, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("loading symbols: %w", err)
	}
	defer f.Close()
	s, err := ParseKallsyms(f)
	if err != nil {
		return nil, fmt.Errorf("loading symbols from %s: %w", path, err)
	}
	return s, nil
}

// Shifted returns the table of the same kernel running with its image moved by delta: symbols
// of the kernel image in [lo, hi) move, the rest (per-CPU offsets, absolute values, modules)
// keep their addresses. It is how KASLR's text offset applies to a nokaslr table.
func (s *Symbols) Shifted(lo, hi uint64, delta int64) *Symbols {
	out := &Symbols{syms: make([]Symbol, len(s.syms)), byName: s.byName, byAddr: make([]int, len(s.syms))}
	for i, sym := range s.syms {
		if sym.Module == "" && sym.Addr >= lo && sym.Addr < hi {
			sym.Addr += uint64(delta)
		}
		out.syms[i] = sym
		out.byAddr[i] = i
	}
	sort.SliceStable(out.byAddr, func(i, j int) bool { return out.syms[out.byAddr[i]].Addr < out.syms[out.byAddr[j]].Addr })
	return out
}

// Each calls fn for every symbol in address order, until fn returns false.
func (s *Symbols) Each(fn func(Symbol) bool) {
	for _, i := range s.byAddr {
		if !fn(s.syms[i]) {
			return
		}
	}
}
