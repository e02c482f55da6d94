package memo

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/arch/x86/x86asm"
)

// Disassemble renders the instruction at pc in Intel syntax, or a
// placeholder when the bytes are missing or do not decode.
func Disassemble(pc uint64, code []byte) string {
	if len(code) == 0 {
		return "(no bytes)"
	}
	inst, err := x86asm.Decode(code, 64)
	// A lone prefix (a truncated copy) decodes without error as Op 0.
	if err != nil || inst.Op == 0 {
		return fmt.Sprintf("(bad: % x)", code)
	}
	return x86asm.IntelSyntax(inst, pc, nil)
}

// FormatEntry renders e as one console line:
//
//	symbol+off  disassembly  decision  region  seen/hits/misses  view/syscall
//
// symbolize turns an address into "symbol+0xoff"; nil prints the address.
func FormatEntry(e Entry, symbolize func(uint64) string) string {
	sym := ""
	if symbolize != nil {
		sym = symbolize(e.PC)
	}
	if sym == "" {
		sym = fmt.Sprintf("%#016x", e.PC)
	}
	region := orDash(e.Region)
	if len(e.Regions) > 0 {
		region = strings.Join(e.Regions, ",")
	}
	if e.RegionsCapped {
		region += ",..."
	}
	return fmt.Sprintf("%-36s  %-44s  %-8s  %-16s  %d/%d/%d  %s/%s",
		sym, Disassemble(e.PC, e.Bytes), e.Decision, region,
		e.Seen, e.Hits, e.Misses, orDash(e.View), orDash(e.Syscall))
}

// entryJSON is how an Entry appears in --json output. Addresses are hex
// strings because kernel addresses exceed the 2^53 that JSON numbers hold
// exactly in most readers; bytes are hex rather than base64 so they can be
// pasted into a disassembler.
type entryJSON struct {
	PC    string `json:"pc"`
	Bytes string `json:"bytes,omitempty"`
	*plainEntry
}

// plainEntry has Entry's fields but not its methods, to avoid recursion.
type plainEntry Entry

// MarshalJSON writes PC and Bytes as hex.
func (e Entry) MarshalJSON() ([]byte, error) {
	return json.Marshal(entryJSON{
		PC:         "0x" + strconv.FormatUint(e.PC, 16),
		Bytes:      hex.EncodeToString(e.Bytes),
		plainEntry: (*plainEntry)(&e),
	})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (e *Entry) UnmarshalJSON(b []byte) error {
	var j entryJSON
	j.plainEntry = (*plainEntry)(e)
	if err := json.Unmarshal(b, &j); err != nil {
		return fmt.Errorf("memo: entry: %w", err)
	}
	pc, err := strconv.ParseUint(strings.TrimPrefix(j.PC, "0x"), 16, 64)
	if err != nil {
		return fmt.Errorf("memo: entry pc %q: %w", j.PC, err)
	}
	e.PC = pc
	e.Bytes = nil
	if j.Bytes != "" {
		if e.Bytes, err = hex.DecodeString(j.Bytes); err != nil {
			return fmt.Errorf("memo: entry bytes: %w", err)
		}
	}
	return nil
}
