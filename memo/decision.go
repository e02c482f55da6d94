package memo

import "fmt"

// Decision says where an instruction's memory access must be served from.
//
// The zero value is deliberately invalid: an Observation whose Decision was
// never set must not be mistaken for Local, which would silently hide guest
// state.
type Decision uint8

const (
	// Invalid is the zero value; Learn rejects it.
	Invalid Decision = iota
	// Local: the access reads/writes the secure VM's own memory.
	Local
	// Redirect: the access reads the inspected guest's (private copy of) memory.
	Redirect
	// Both: the instruction was seen doing both (semi-redirectable); replay
	// must decide per access, e.g. by address.
	Both
	// Unknown: the access touched a kernel global that is in neither the
	// redirect nor the keep-local list. It is kept so the gap stays visible
	// (in the memo, the console and the statistics) and is never replayed.
	Unknown
)

var decisionNames = [...]string{Invalid: "invalid", Local: "local", Redirect: "redirect", Both: "both", Unknown: "unknown"}

// String returns the lower-case name used in files, JSON and the console.
func (d Decision) String() string {
	if int(d) < len(decisionNames) {
		return decisionNames[d]
	}
	return fmt.Sprintf("decision(%d)", uint8(d))
}

// Valid reports whether d is one of Local, Redirect, Both, Unknown.
func (d Decision) Valid() bool { return d >= Local && d <= Unknown }

// Replayable reports whether Fast-Bridge may act on d without falling back
// to Slow-Bridge.
func (d Decision) Replayable() bool { return d >= Local && d <= Both }

// Merge combines the decision already memoized for an instruction with a new
// observation of it. The rules:
//
//   - Unknown absorbs everything: once an instruction touched an unclassified
//     global it stays visible until the rule table classifies that global,
//     and a rule change changes Key.Policy, which discards the memo anyway.
//   - Equal decisions stay as they are.
//   - Otherwise (Local vs Redirect, or either vs Both) the result is Both.
//   - Invalid is an identity, so merging into a fresh entry yields the new
//     decision.
func Merge(have, obs Decision) Decision {
	switch {
	case have == Unknown || obs == Unknown:
		return Unknown
	case have == Invalid:
		return obs
	case obs == Invalid || have == obs:
		return have
	default:
		return Both
	}
}

// MarshalText makes decisions readable in JSON output and as map keys.
func (d Decision) MarshalText() ([]byte, error) {
	if !d.Valid() {
		return nil, fmt.Errorf("memo: cannot marshal %v", d)
	}
	return []byte(d.String()), nil
}

// UnmarshalText accepts the names produced by MarshalText.
func (d *Decision) UnmarshalText(b []byte) error {
	for i, n := range decisionNames {
		if Decision(i).Valid() && n == string(b) {
			*d = Decision(i)
			return nil
		}
	}
	return fmt.Errorf("memo: unknown decision %q", b)
}

// ParseDecision is UnmarshalText for flag and console input.
func ParseDecision(s string) (Decision, error) {
	var d Decision
	err := d.UnmarshalText([]byte(s))
	return d, err
}
