package guest

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
)

// Exec runs a shell command inside the guest over a fresh channel connection.
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
func (c CPUState) LA57() bool { return c.CR4&(1<<12) != 0 }

var regField = regexp.MustCompile(`\b(CR0|CR3|CR4|EFER)=([0-9a-fA-F]+)`)

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
	var st CPUState
	seen := map[string]bool{}
	for _, m := range regField.FindAllStringSubmatch(text, -1) {
		if seen[m[1]] {
			continue // only vCPU 0
		}
		seen[m[1]] = true
		v, err := strconv.ParseUint(m[2], 16, 64)
		if err != nil {
			return st, fmt.Errorf("info registers: %s=%s: %w", m[1], m[2], err)
		}
		switch m[1] {
		case "CR0":
			st.CR0 = v
		case "CR3":
			st.CR3 = v
		case "CR4":
			st.CR4 = v
		case "EFER":
			st.EFER = v
		}
	}
	if !seen["CR3"] || !seen["CR4"] {
		return st, fmt.Errorf("info registers: no CR3/CR4 in %.200q", text)
	}
	return st, nil
}
