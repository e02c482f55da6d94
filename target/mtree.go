package target

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// This file parses the human monitor's answers that a running QEMU's RAM layout and vCPU state
// come from. HMP text is not a stable interface; the parsers are tested on captures of QEMU 7.2
// (testdata/) and reject what they do not recognise rather than guess.

// flatView is one FlatView of "info mtree -f": the address spaces that share it and its ranges.
type flatView struct {
	spaces []string // the quoted names of its "AS" lines
	ranges []flatRange
}

// flatRange is one line of a FlatView: [start, start+size) of the address space is the region
// name from offset on.
type flatRange struct {
	start, size uint64
	kind        string // "ram", "rom", "i/o", "romd", ...
	name        string
	offset      uint64 // into the region; QEMU prints it only when it is not 0
}

var (
	mtreeRange = regexp.MustCompile(`^\s+([0-9a-f]+)-([0-9a-f]+) \(prio -?\d+, ([^)]*)\): (.*)$`)
	mtreeAS    = regexp.MustCompile(`^\s*AS "([^"]*)"`)
	mtreeAt    = regexp.MustCompile(` @([0-9a-f]+)`)
)

// parseMtree splits the text of "info mtree -f" into its FlatViews.
func parseMtree(text string) ([]flatView, error) {
	var views []flatView
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimRight(line, "\r")
		if strings.HasPrefix(line, "FlatView #") {
			views = append(views, flatView{})
			continue
		}
		if len(views) == 0 {
			continue
		}
		v := &views[len(views)-1]
		if m := mtreeAS.FindStringSubmatch(line); m != nil {
			v.spaces = append(v.spaces, m[1])
			continue
		}
		m := mtreeRange.FindStringSubmatch(line)
		if m == nil {
			continue // "Root memory region", "No rendered FlatView", blank lines
		}
		start, err1 := strconv.ParseUint(m[1], 16, 64)
		last, err2 := strconv.ParseUint(m[2], 16, 64)
		if err1 != nil || err2 != nil || last < start {
			return nil, fmt.Errorf("info mtree: bad range in %q", line)
		}
		r := flatRange{start: start, size: last - start + 1, kind: m[3], name: m[4]}
		// After the name come " @offset" and flags such as " [logging]".
		if at := mtreeAt.FindStringSubmatchIndex(r.name); at != nil {
			var err error
			if r.offset, err = strconv.ParseUint(r.name[at[2]:at[3]], 16, 64); err != nil {
				return nil, fmt.Errorf("info mtree: bad offset in %q: %w", line, err)
			}
			r.name = r.name[:at[0]]
		}
		r.name, _, _ = strings.Cut(r.name, " [")
		v.ranges = append(v.ranges, r)
	}
	if len(views) == 0 {
		return nil, fmt.Errorf("info mtree -f: no FlatView in %.120q", text)
	}
	return views, nil
}

// blockRange places Size bytes of a RAM block from byte Offset of the block at GuestPhys.
type blockRange struct {
	GuestPhys, Offset, Size uint64
}

// pcRAMBlock is the name of the main RAM block of QEMU's x86 machines (pc and q35) unless the
// command line gives the machine a memory backend of its own (-machine memory-backend=ID; then
// the block is named ID; libvirt names its backend pc.ram too).
const pcRAMBlock = "pc.ram"

// ramLayout finds the guest's RAM in "info mtree -f": the FlatView the CPUs see outside SMM
// (address space "memory"), its ranges of the main RAM block, merged where both the guest
// addresses and the block offsets run on. Parts of the block below 1 MiB are "rom" while the
// firmware write-protects them; they are RAM all the same. The block is pc.ram if the view has
// it, else whatever RAM block lies at guest-physical 1 MiB, where x86 machines always put the
// main RAM.
func ramLayout(text string) (string, []blockRange, error) {
	views, err := parseMtree(text)
	if err != nil {
		return "", nil, err
	}
	var mem *flatView
	for i := range views {
		for _, s := range views[i].spaces {
			if s == "memory" {
				mem = &views[i]
			}
		}
	}
	if mem == nil {
		return "", nil, errors.New(`info mtree -f: no FlatView of address space "memory"`)
	}
	block := ""
	for _, r := range mem.ranges {
		if r.kind == "ram" && r.start <= 1<<20 && 1<<20 < r.start+r.size {
			block = r.name
		}
	}
	for _, r := range mem.ranges {
		if r.name == pcRAMBlock {
			block = pcRAMBlock
		}
	}
	if block == "" {
		return "", nil, errors.New(`info mtree -f: no pc.ram and no RAM at guest-physical 1 MiB in address space "memory"`)
	}
	var out []blockRange
	for _, r := range mem.ranges {
		if r.name != block {
			continue
		}
		if n := len(out); n > 0 {
			p := &out[n-1]
			if p.GuestPhys+p.Size == r.start && p.Offset+p.Size == r.offset {
				p.Size += r.size
				continue
			}
		}
		out = append(out, blockRange{GuestPhys: r.start, Offset: r.offset, Size: r.size})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GuestPhys < out[j].GuestPhys })
	return block, out, nil
}

var gpa2hvaLine = regexp.MustCompile(`Host virtual address for 0x([0-9a-f]+) \(([^)]*)\) is 0x([0-9a-f]+)`)

// parseGPA2HVA reads the answer to "gpa2hva ADDR": the host address and the RAM block. Other
// answers ("No memory is mapped at address ...", "Memory at address ... is not RAM") come back as
// the error.
func parseGPA2HVA(text string) (gpa, hva uint64, block string, err error) {
	m := gpa2hvaLine.FindStringSubmatch(text)
	if m == nil {
		return 0, 0, "", fmt.Errorf("gpa2hva: %s", strings.TrimSpace(text))
	}
	gpa, err1 := strconv.ParseUint(m[1], 16, 64)
	hva, err2 := strconv.ParseUint(m[3], 16, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, "", fmt.Errorf("gpa2hva: %q: %w", strings.TrimSpace(text), err)
	}
	return gpa, hva, m[2], nil
}

var (
	cpuHeader = regexp.MustCompile(`(?m)^CPU#(\d+)\r?$`)
	cpuReg    = regexp.MustCompile(`\b(RIP|CR0|CR3|CR4)=([0-9a-f]+)`)
	cpuGS     = regexp.MustCompile(`(?m)^GS =[0-9a-f]{4} ([0-9a-f]+) `)
)

// parseRegistersAll reads every vCPU from "info registers -a", in the order printed (CPU#0
// first). The text of plain "info registers" (one vCPU, no header) is read as vCPU 0. HMP does
// not print IA32_KERNEL_GS_BASE, so HasKernelGSBase stays false.
func parseRegistersAll(text string) ([]CPUState, error) {
	heads := cpuHeader.FindAllStringSubmatchIndex(text, -1)
	type chunk struct {
		index int
		text  string
	}
	var chunks []chunk
	if len(heads) == 0 {
		chunks = []chunk{{0, text}}
	}
	for i, h := range heads {
		end := len(text)
		if i+1 < len(heads) {
			end = heads[i+1][0]
		}
		n, err := strconv.Atoi(text[h[2]:h[3]])
		if err != nil {
			return nil, fmt.Errorf("info registers -a: bad header %q: %w", text[h[0]:h[1]], err)
		}
		chunks = append(chunks, chunk{n, text[h[1]:end]})
	}
	var cpus []CPUState
	for _, c := range chunks {
		if c.index != len(cpus) {
			return nil, fmt.Errorf("info registers -a: CPU#%d where CPU#%d was expected", c.index, len(cpus))
		}
		regs := map[string]uint64{}
		for _, m := range cpuReg.FindAllStringSubmatch(c.text, -1) {
			if _, seen := regs[m[1]]; seen {
				continue
			}
			v, err := strconv.ParseUint(m[2], 16, 64)
			if err != nil {
				return nil, fmt.Errorf("info registers -a: CPU#%d %s=%s: %w", c.index, m[1], m[2], err)
			}
			regs[m[1]] = v
		}
		for _, name := range []string{"RIP", "CR0", "CR3", "CR4"} {
			if _, ok := regs[name]; !ok {
				return nil, fmt.Errorf("info registers -a: CPU#%d has no %s in %.200q", c.index, name, c.text)
			}
		}
		gs := cpuGS.FindStringSubmatch(c.text)
		if gs == nil {
			return nil, fmt.Errorf("info registers -a: CPU#%d has no GS segment line", c.index)
		}
		gsBase, err := strconv.ParseUint(gs[1], 16, 64)
		if err != nil {
			return nil, fmt.Errorf("info registers -a: CPU#%d GS base %s: %w", c.index, gs[1], err)
		}
		cpus = append(cpus, CPUState{CR0: regs["CR0"], CR3: regs["CR3"], CR4: regs["CR4"], RIP: regs["RIP"], GSBase: gsBase})
	}
	return cpus, nil
}
