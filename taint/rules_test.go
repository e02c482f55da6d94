package taint

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/arch/x86/x86asm"

	"hybridbridge/decision"
	"hybridbridge/emu"
)

// testGlobals stands in for the per-global lists: one page of globals to
// redirect, one to keep local, everything else unknown.
func testGlobals(a *Access) decision.Decision {
	switch a.Phys &^ pageMask {
	case dataPhys:
		return decision.Redirect
	case dataPhys + pageSize:
		return decision.Local
	}
	return decision.Unknown
}

func testConfig() Config {
	return Config{
		Image:  []VirtRange{{kernelVirt, kernelVirt + 2<<20}},
		Memory: []PhysRange{{gvmBegin, gvmEnd, LabelGVM}},
		Policy: VMST{Globals: testGlobals},
		Record: true,
	}
}

var gprNames = func() map[string]int {
	m := map[string]int{}
	for r := x86asm.RAX; r <= x86asm.R15; r++ {
		m[strings.ToLower(r.String())] = int(r - x86asm.RAX)
	}
	return m
}()

var emuGPR = [numGPR]emu.Reg{emu.RAX, emu.RCX, emu.RDX, emu.RBX, emu.RSP, emu.RBP, emu.RSI, emu.RDI,
	emu.R8, emu.R9, emu.R10, emu.R11, emu.R12, emu.R13, emu.R14, emu.R15}

// regNamed resolves rax..r15 and xmm0..15 to their x86asm register.
func regNamed(name string) (x86asm.Reg, bool) {
	if i, ok := gprNames[name]; ok {
		return x86asm.RAX + x86asm.Reg(i), true
	}
	if n, ok := strings.CutPrefix(name, "xmm"); ok {
		if i, err := strconv.Atoi(n); err == nil && i >= 0 && i < numXMM {
			return x86asm.X0 + x86asm.Reg(i), true
		}
	}
	return 0, false
}

// parseLabels reads "G" (every one of n bytes) or runs "G*3,-*5".
func parseLabels(s string, n int) ([]Label, error) {
	if !strings.ContainsAny(s, "*,") {
		l, err := ParseLabel(s)
		if err != nil {
			return nil, err
		}
		out := make([]Label, n)
		for i := range out {
			out[i] = l
		}
		return out, nil
	}
	var out []Label
	for _, run := range strings.Split(s, ",") {
		ls, cs, ok := strings.Cut(run, "*")
		if !ok {
			return nil, fmt.Errorf("run %q lacks *count", run)
		}
		l, err := ParseLabel(ls)
		if err != nil {
			return nil, err
		}
		c, err := strconv.Atoi(cs)
		if err != nil {
			return nil, fmt.Errorf("run %q: %v", run, err)
		}
		for ; c > 0; c-- {
			out = append(out, l)
		}
	}
	return out, nil
}

func labelsString(ls []Label) string {
	var runs []string
	for i := 0; i < len(ls); {
		j := i
		for j < len(ls) && ls[j] == ls[i] {
			j++
		}
		runs = append(runs, fmt.Sprintf("%v*%d", ls[i], j-i))
		i = j
	}
	return strings.Join(runs, ",")
}

// specialNames names what x86asm cannot decode (see compiler.special).
var specialNames = map[string]string{
	"f30f1efa": "ENDBR64", "f30f1efb": "ENDBR32", "0f01ca": "CLAC", "0f01cb": "STAC",
}

// disasm renders code as x86asm's default syntax, for checking that each
// testdata line's bytes are the instructions it names.
func disasm(b []byte) string {
	var parts []string
next:
	for len(b) > 0 {
		for h, name := range specialNames {
			if p, _ := hex.DecodeString(h); len(b) >= len(p) && string(b[:len(p)]) == string(p) {
				parts = append(parts, name)
				b = b[len(p):]
				continue next
			}
		}
		in, err := x86asm.Decode(b, 64)
		if err != nil || in.Len == 0 {
			parts = append(parts, "?")
			break
		}
		parts = append(parts, in.String())
		b = b[in.Len:]
	}
	return strings.Join(parts, "; ")
}

type ruleCase struct {
	line                     int
	name, asm, setup, expect string
	code                     []byte
}

func readRuleCases(t *testing.T, path string) []ruleCase {
	f, err := os.Open(path)
	must(t, err)
	defer f.Close()
	var cases []ruleCase
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, "|")
		if len(f) != 5 {
			t.Fatalf("%s:%d: %d fields, want 5", path, n, len(f))
		}
		for i := range f {
			f[i] = strings.TrimSpace(f[i])
		}
		code, err := hex.DecodeString(f[2])
		if err != nil {
			t.Fatalf("%s:%d: code: %v", path, n, err)
		}
		cases = append(cases, ruleCase{line: n, name: f[0], asm: f[1], code: code, setup: f[3], expect: f[4]})
	}
	must(t, sc.Err())
	return cases
}

// TestRules runs every testdata/rules.txt case as a program in Unicorn
// with the tracker attached.
func TestRules(t *testing.T) {
	for _, c := range readRuleCases(t, "testdata/rules.txt") {
		t.Run(c.name, func(t *testing.T) {
			if got := disasm(c.code); got != c.asm {
				t.Fatalf("line %d: bytes decode to %q, the line says %q", c.line, got, c.asm)
			}
			runRuleCase(t, c)
		})
	}
}

func runRuleCase(t *testing.T, c ruleCase) {
	m := newMachine(t)
	tr := New(testConfig())
	must(t, tr.Attach(m.e))
	begin, end := m.loadCode(c.code)

	for _, tok := range strings.Fields(c.setup) {
		if err := applySetup(m, tr, tok); err != nil {
			t.Fatalf("line %d: setup %q: %v", c.line, tok, err)
		}
	}
	var before [numGPR]uint64
	var beforeX [numXMM]vec
	before, beforeX = tr.regs.gpr, tr.regs.xmm

	if err := m.e.Start(begin, end, 1000); err != nil {
		t.Fatalf("line %d: Start: %v", c.line, err)
	}
	if m.e.StopReason() != emu.StopUntil {
		t.Fatalf("line %d: stopped by %v", c.line, m.e.StopReason())
	}
	tr.Drain()
	st := tr.Stats()
	accs := tr.TakeAccesses()
	if t.Failed() {
		return
	}

	wantGPR, wantX := before, beforeX
	var unmod map[string]uint64
	for _, tok := range strings.Fields(c.expect) {
		k, v, _ := strings.Cut(tok, "=")
		switch k {
		case "acc":
			var got strings.Builder
			for _, a := range accs {
				got.WriteString(map[decision.Decision]string{decision.Local: "L", decision.Redirect: "R", decision.Unknown: "U"}[a.Decision])
			}
			if v == "-" {
				v = ""
			}
			if got.String() != v {
				t.Errorf("line %d: decisions %q, want %q\n%s", c.line, got.String(), v, accessList(accs))
			}
			continue
		case "why":
			var got []string
			for _, a := range accs {
				got = append(got, a.Reason.String())
			}
			if strings.Join(got, ",") != v {
				t.Errorf("line %d: reasons %v, want %s\n%s", c.line, got, v, accessList(accs))
			}
			continue
		case "unmod":
			mn, n, _ := strings.Cut(v, ":")
			cnt, _ := strconv.ParseUint(n, 10, 64)
			unmod = map[string]uint64{mn: cnt}
			continue
		}
		name, labels, ok := strings.Cut(tok, ":")
		if !ok {
			t.Fatalf("line %d: bad expectation %q", c.line, tok)
		}
		if phys, ok := strings.CutPrefix(name, "["); ok {
			p, err := strconv.ParseUint(strings.TrimSuffix(phys, "]"), 0, 64)
			must(t, err)
			want, err := parseLabels(labels, 8)
			must(t, err)
			if got := tr.MemLabels(p, len(want)); labelsString(got) != labelsString(want) {
				t.Errorf("line %d: [%#x] = %s, want %s", c.line, p, labelsString(got), labelsString(want))
			}
			continue
		}
		r, ok := regNamed(name)
		if !ok {
			t.Fatalf("line %d: unknown register %q", c.line, name)
		}
		ri := infoOf(r)
		want, err := parseLabels(labels, int(ri.size))
		must(t, err)
		if len(want) != int(ri.size) {
			t.Fatalf("line %d: %s: %d labels for %d bytes", c.line, name, len(want), ri.size)
		}
		var wv vec
		for i, l := range want {
			wv = wv.or(vec{lo: uint64(l)}.shift(i))
		}
		if ri.class == rcXMM {
			wantX[ri.idx] = wv
		} else {
			wantGPR[ri.idx] = wv.lo
		}
	}
	for i := range wantGPR {
		if got := tr.regs.gpr[i]; got != wantGPR[i] {
			t.Errorf("line %d: %s = %s, want %s", c.line, strings.ToLower((x86asm.RAX + x86asm.Reg(i)).String()),
				labelsString(vec{lo: got}.labels(8)), labelsString(vec{lo: wantGPR[i]}.labels(8)))
		}
	}
	for i := range wantX {
		if got := tr.regs.xmm[i]; got != wantX[i] {
			t.Errorf("line %d: xmm%d = %s, want %s", c.line, i, labelsString(got.labels(16)), labelsString(wantX[i].labels(16)))
		}
	}
	if len(st.Unmodelled) != len(unmod) || func() bool {
		for k, n := range unmod {
			if st.Unmodelled[k] != n {
				return true
			}
		}
		return false
	}() {
		t.Errorf("line %d: unmodelled %v, want %v", c.line, st.Unmodelled, unmod)
	}
	if st.Incomplete != 0 || len(st.Mismatched) != 0 || st.UndecodableAddrs != 0 {
		t.Errorf("line %d: incomplete %d, mismatched %v, undecodable %d", c.line, st.Incomplete, st.Mismatched, st.UndecodableAddrs)
	}
}

func accessList(accs []Access) string {
	var b strings.Builder
	for i := range accs {
		fmt.Fprintf(&b, "\t%v\n", &accs[i])
	}
	return b.String()
}

// applySetup applies one setup token: reg=VALUE[:LABELS], reg:LABELS,
// [phys]:LABELS or [phys]=VALUE.
func applySetup(m *machine, tr *Tracker, tok string) error {
	name, rest, isVal := strings.Cut(tok, "=")
	var labels string
	if isVal {
		rest, labels, _ = strings.Cut(rest, ":")
	} else {
		name, labels, _ = strings.Cut(tok, ":")
	}
	if phys, ok := strings.CutPrefix(name, "["); ok {
		p, err := strconv.ParseUint(strings.TrimSuffix(phys, "]"), 0, 64)
		if err != nil {
			return err
		}
		if isVal {
			v, err := strconv.ParseUint(rest, 0, 64)
			if err != nil {
				return err
			}
			binary.LittleEndian.PutUint64(m.ram[p:], v)
			return nil
		}
		ls, err := parseLabels(labels, 8)
		if err != nil {
			return err
		}
		for i, l := range ls {
			tr.SetMemLabel(p+uint64(i), 1, l)
		}
		return nil
	}
	r, ok := regNamed(name)
	if !ok {
		return fmt.Errorf("unknown register %q", name)
	}
	ri := infoOf(r)
	if isVal {
		if ri.class != rcGPR {
			return fmt.Errorf("values only for GPRs")
		}
		v, err := strconv.ParseUint(rest, 0, 64)
		if err != nil {
			return err
		}
		if err := m.e.SetReg(emuGPR[ri.idx], v); err != nil {
			return err
		}
	}
	if labels == "" {
		return nil
	}
	ls, err := parseLabels(labels, int(ri.size))
	if err != nil {
		return err
	}
	if len(ls) != int(ri.size) {
		return fmt.Errorf("%d labels for %d bytes", len(ls), ri.size)
	}
	var v vec
	for i, l := range ls {
		v = v.or(vec{lo: uint64(l)}.shift(i))
	}
	if ri.class == rcXMM {
		tr.regs.xmm[ri.idx] = v
	} else {
		tr.regs.gpr[ri.idx] = v.lo
	}
	return nil
}
