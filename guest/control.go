package guest

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"hybridbridge/vmm"
)

// Exec runs a shell command inside the guest over a fresh channel connection. QEMU serves one
// connection to the channel at a time, so commands that must run at the same time share one
// Channel (DialChannel) rather than call Exec from several goroutines.
func (g *Guest) Exec(ctx context.Context, command string) (*Result, error) {
	ch, err := DialChannel(ctx, g.ChannelSocket())
	if err != nil {
		return nil, fmt.Errorf("guest %q: %w", g.Meta.Name, err)
	}
	defer ch.Close()
	res, err := ch.Exec(ctx, command)
	if err != nil {
		return nil, fmt.Errorf("guest %q: %w", g.Meta.Name, err)
	}
	return res, nil
}

// Monitor connects to the guest's QMP socket. The caller closes it.
func (g *Guest) Monitor(ctx context.Context) (*QMP, error) {
	q, err := DialQMP(ctx, g.QMPSocket())
	if err != nil {
		return nil, fmt.Errorf("guest %q: %w", g.Meta.Name, err)
	}
	return q, nil
}

func (g *Guest) qmp(ctx context.Context, command string) (json.RawMessage, error) {
	q, err := g.Monitor(ctx)
	if err != nil {
		return nil, err
	}
	defer q.Close()
	return q.Run(ctx, command, nil)
}

// Pause stops the guest's CPUs; its memory stays still until Resume.
func (g *Guest) Pause(ctx context.Context) error {
	_, err := g.qmp(ctx, "stop")
	return err
}

// Resume restarts the guest's CPUs.
func (g *Guest) Resume(ctx context.Context) error {
	_, err := g.qmp(ctx, "cont")
	return err
}

// ResumeIfPaused resumes the guest if it is paused, and says whether it was. Tests sharing one guest
// call it after each test, so one that stopped between a pause and its resume leaves the next a
// running guest.
func (g *Guest) ResumeIfPaused(ctx context.Context) (bool, error) {
	st, err := g.Status(ctx)
	if err != nil || st != "paused" {
		return false, err
	}
	return true, g.Resume(ctx)
}

// Status returns QEMU's run state, e.g. "running" or "paused".
func (g *Guest) Status(ctx context.Context) (string, error) {
	ret, err := g.qmp(ctx, "query-status")
	if err != nil {
		return "", err
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(ret, &st); err != nil {
		return "", fmt.Errorf("query-status: %w", err)
	}
	return st.Status, nil
}

// CPUState is the part of vCPU 0's state that reading guest memory needs.
type CPUState struct {
	CR0, CR3, CR4, EFER uint64
}

// LA57 reports 5-level paging.
func (c CPUState) LA57() bool { return vmm.PagingLevels(c.CR4) == 5 }

var regField = regexp.MustCompile(`\b(RAX|RBX|RCX|RDX|RSI|RDI|RBP|RSP|R8 |R9 |R10|R11|R12|R13|R14|R15|RIP|RFL|CR0|CR2|CR3|CR4|EFER)=([0-9a-fA-F]+)`)

// InfoRegisterValues extracts the general, control and EFER registers of the first CPU from the
// text of QEMU's "info registers", keyed by lower-case name ("rax", "r8", "rfl", "cr3", "efer").
func InfoRegisterValues(text string) (map[string]uint64, error) {
	out := map[string]uint64{}
	for _, m := range regField.FindAllStringSubmatch(text, -1) {
		name := strings.ToLower(strings.TrimSpace(m[1]))
		if _, seen := out[name]; seen {
			continue // only vCPU 0
		}
		v, err := strconv.ParseUint(m[2], 16, 64)
		if err != nil {
			return nil, fmt.Errorf("info registers: %s=%s: %w", m[1], m[2], err)
		}
		out[name] = v
	}
	return out, nil
}

// CPU reads vCPU 0's control registers. QMP has no command for them, so this parses the human
// monitor's "info registers". Any process's CR3 serves for kernel addresses: the kernel half of
// every page table is shared (the guests run without PTI).
func (g *Guest) CPU(ctx context.Context) (CPUState, error) {
	q, err := g.Monitor(ctx)
	if err != nil {
		return CPUState{}, err
	}
	defer q.Close()
	text, err := q.HMP(ctx, "info registers")
	if err != nil {
		return CPUState{}, err
	}
	return parseRegisters(text)
}

func parseRegisters(text string) (CPUState, error) {
	r, err := InfoRegisterValues(text)
	if err != nil {
		return CPUState{}, err
	}
	cr3, ok1 := r["cr3"]
	cr4, ok2 := r["cr4"]
	if !ok1 || !ok2 {
		return CPUState{}, fmt.Errorf("info registers: no CR3/CR4 in %.200q", text)
	}
	return CPUState{CR0: r["cr0"], CR3: cr3, CR4: cr4, EFER: r["efer"]}, nil
}
