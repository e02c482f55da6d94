package ui

import (
	"fmt"
	"strings"

	"charm.land/bubbles/v2/key"
	tea "charm.land/bubbletea/v2"
	"golang.org/x/arch/x86/x86asm"

	"hybridbridge/decision"
)

// historyLen is how many refreshes the per-view sparklines remember.
const historyLen = 40

// memoPane shows the memo: size and decisions, the most used instructions, and per-view hit
// rates over the last refreshes.
type memoPane struct {
	frame   *Frame
	history map[string][]float64 // per view, one hit rate per refresh; -1: no lookups
	order   []string             // views in first-seen order
	off     int
	width   int
	height  int
}

func newMemoPane() *memoPane { return &memoPane{history: make(map[string][]float64)} }

func (p *memoPane) name() string     { return "Memo" }
func (p *memoPane) capturing() bool  { return false }
func (p *memoPane) setSize(w, h int) { p.width, p.height = w, h }
func (p *memoPane) click(int)        {}
func (p *memoPane) scroll(n int)     { p.off = max(0, p.off+n) }

func (p *memoPane) count() (int, int) {
	if p.frame == nil {
		return 0, -1
	}
	return p.frame.Memo.Entries, p.frame.Memo.Entries
}

func (p *memoPane) setFrame(f *Frame) {
	p.frame = f
	for _, v := range f.Views {
		if _, ok := p.history[v.Name]; !ok {
			p.order = append(p.order, v.Name)
		}
		rate := -1.0
		if v.Lookups > 0 {
			rate = float64(v.Hits) / float64(v.Lookups)
		}
		h := append(p.history[v.Name], rate)
		if len(h) > historyLen {
			h = h[len(h)-historyLen:]
		}
		p.history[v.Name] = h
	}
}

func (p *memoPane) key(msg tea.KeyPressMsg, k KeyMap) (bool, tea.Cmd) {
	switch {
	case key.Matches(msg, k.Up):
		p.scroll(-1)
	case key.Matches(msg, k.Down):
		p.scroll(1)
	case key.Matches(msg, k.PageUp):
		p.scroll(-p.height)
	case key.Matches(msg, k.PageDown):
		p.scroll(p.height)
	case key.Matches(msg, k.Home):
		p.off = 0
	default:
		return false, nil
	}
	return true, nil
}

func (p *memoPane) view(s *Styles) string {
	if p.frame == nil {
		return scrollText("waiting for the first refresh...", 0, p.width, p.height)
	}
	m := p.frame.Memo
	var b strings.Builder
	fmt.Fprintf(&b, "%s %d memoized instructions", s.Value.Render("memo:"), m.Entries)
	d := m.Decisions
	fmt.Fprintf(&b, " (%v %d, %v %d, %v %d, %v %d)", decision.Both, d.Both, decision.Local, d.Local,
		decision.Redirect, d.Redirect, decision.Unknown, d.Unknown)
	b.WriteByte('\n')
	if rate, ok := m.HitRate(); ok {
		fmt.Fprintf(&b, "lookups %d, hits %d, misses %d, hit rate %.1f%%\n", m.Lookups, m.Hits, m.Misses, 100*rate)
	} else {
		b.WriteString("lookups 0: no engine has consulted the memo yet (Slow-Bridge learns it; Fast-Bridge looks it up)\n")
	}
	b.WriteString("\n" + s.Value.Render("hit rate per view, one mark per refresh (· no lookups)") + "\n")
	for _, v := range p.order {
		h := p.history[v]
		last := "-"
		if n := len(h); n > 0 && h[n-1] >= 0 {
			last = fmt.Sprintf("%.1f%%", 100*h[n-1])
		}
		fmt.Fprintf(&b, "  %-8s %-*s %s\n", v, historyLen, sparkline(h), last)
	}
	section := func(title string, es []MemoEntry) {
		if len(es) == 0 {
			b.WriteString("\n" + s.Value.Render(title+":") + s.Dim.Render(" none yet") + "\n")
			return
		}
		b.WriteString("\n" + s.Value.Render(title) + "\n")
		fmt.Fprintf(&b, "  %-34s %-36s %-8s %8s %8s %8s  %s\n", "SYMBOL+OFF", "INSTRUCTION", "DECISION", "SEEN", "HITS", "MISSES", "FIRST VIEW")
		for _, e := range es {
			sym := e.Symbol
			if sym == "" {
				sym = fmt.Sprintf("%#x", e.PC)
			}
			fmt.Fprintf(&b, "  %-34s %-36s %-8s %8d %8d %8d  %s/%s\n", clip(sym, 34), clip(e.Disassembly, 36), e.Decision, e.Seen, e.Hits, e.Misses, orDash(e.View), orDash(e.Syscall))
		}
	}
	section("top instructions by hits", m.TopHits)
	section("top instructions by misses", m.TopMisses)
	section("most executed memoized instructions", m.TopSeen)
	return scrollText(b.String(), p.off, p.width, p.height)
}

// sparkline draws one cell per value in [0,1]; negative values (no data) draw as a dot.
func sparkline(vals []float64) string {
	const bars = "▁▂▃▄▅▆▇█"
	levels := []rune(bars)
	var b strings.Builder
	for _, v := range vals {
		if v < 0 {
			b.WriteRune('·')
			continue
		}
		i := int(v * float64(len(levels)-1))
		b.WriteRune(levels[max(0, min(i, len(levels)-1))])
	}
	return b.String()
}

func clip(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// eventDetails is the detail view of a fall-back: the instruction in its neighbourhood,
// disassembled from the code the event carries, and the reason.
func eventDetails(e Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "fall-back at %s (%#x)\n\n", eventSymbol(e), e.PC)
	fmt.Fprintf(&b, "  time        %s\n  view        %s\n  syscall     %s\n  instruction %s\n  reason      %s\n\n",
		e.Time.Format("15:04:05.000"), orDash(e.View), orDash(e.Syscall), orDash(e.Disassembly), orDash(e.Reason))
	b.WriteString(disassembleAround(e.CodeAddr, e.Code, e.PC, 8))
	return b.String()
}

// disassembleAround decodes code (which starts at addr, an instruction boundary) and returns up
// to ctx instructions either side of pc, pc marked with ">".
func disassembleAround(addr uint64, code []byte, pc uint64, ctx int) string {
	if len(code) == 0 {
		return "  (no code bytes captured around this instruction)\n"
	}
	type line struct {
		pc   uint64
		text string
	}
	var lines []line
	at := -1
	for off := 0; off < len(code); {
		a := addr + uint64(off)
		inst, err := x86asm.Decode(code[off:], 64)
		if err != nil || inst.Len == 0 {
			lines = append(lines, line{a, fmt.Sprintf("(bad: % x)", code[off:min(off+4, len(code))])})
			off++
			continue
		}
		if a == pc {
			at = len(lines)
		}
		lines = append(lines, line{a, fmt.Sprintf("%-30s %s", fmt.Sprintf("% x", code[off:off+inst.Len]), x86asm.IntelSyntax(inst, a, nil))})
		off += inst.Len
	}
	from, to := 0, len(lines)
	if at >= 0 {
		from, to = max(0, at-ctx), min(len(lines), at+ctx+1)
	}
	var b strings.Builder
	if at < 0 {
		fmt.Fprintf(&b, "  (%#x is not an instruction boundary of the captured code)\n", pc)
	}
	for i := from; i < to; i++ {
		mark := "  "
		if i == at {
			mark = "> "
		}
		fmt.Fprintf(&b, "%s%#x  %s\n", mark, lines[i].pc, lines[i].text)
	}
	return b.String()
}
