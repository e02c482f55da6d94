// Package decision is where a kernel access's data is served from: the secure VM's own memory
// or the inspected guest's. The taint engine makes decisions, the memo stores them per
// instruction and the bridge carries them out and counts them; they share this one type so that
// no conversion between them can drift.
package decision

import "fmt"

// Decision says where a memory access must be served from.
//
// The zero value is deliberately invalid: a decision that was never made must not be mistaken
// for Local, which would silently hide guest state.
//
// The numeric values are what memo files store: renumbering them changes the meaning of every
// file already written.
type Decision uint8

const (
	// Invalid is the zero value; the memo rejects it.
	Invalid Decision = iota
	// Local: the access reads/writes the secure VM's own memory.
	Local
	// Redirect: the access reads the inspected guest's (private copy of) memory.
	Redirect
	// Both: an instruction was seen doing both (semi-redirectable); replay must decide per
	// access, e.g. by address. A single access is never decided Both.
	Both
	// Unknown: no rule places the access — a kernel global in neither the redirect nor the
	// keep-local list, or an address the taint engine could not model. It executes on the
	// secure VM's copy and is kept so the gap stays visible (in the memo, the console and the
	// statistics); the memo never replays it.
	Unknown
)

var names = [...]string{Invalid: "invalid", Local: "local", Redirect: "redirect", Both: "both", Unknown: "unknown"}

// String returns the lower-case name used in files, JSON and the console.
func (d Decision) String() string {
	if int(d) < len(names) {
		return names[d]
	}
	return fmt.Sprintf("decision(%d)", uint8(d))
}

// Valid reports whether d is one of Local, Redirect, Both, Unknown.
func (d Decision) Valid() bool { return d >= Local && d <= Unknown }

// Replayable reports whether Fast-Bridge may act on d without falling back to Slow-Bridge.
func (d Decision) Replayable() bool { return d >= Local && d <= Both }

// Merge combines the decision already known for an instruction with a new observation of it.
// The rules:
//
//   - Unknown absorbs everything: once an instruction touched an unclassified global it stays
//     visible until the rule table classifies that global, and a rule change changes the memo's
//     key, which discards the memo anyway.
//   - Equal decisions stay as they are.
//   - Otherwise (Local vs Redirect, or either vs Both) the result is Both.
//   - Invalid is an identity, so merging into a fresh entry yields the new decision.
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
		return nil, fmt.Errorf("decision: cannot marshal %v", d)
	}
	return []byte(d.String()), nil
}

// UnmarshalText accepts the names produced by MarshalText.
func (d *Decision) UnmarshalText(b []byte) error {
	for i, n := range names {
		if Decision(i).Valid() && n == string(b) {
			*d = Decision(i)
			return nil
		}
	}
	return fmt.Errorf("decision: unknown decision %q", b)
}

// Parse is UnmarshalText for flag and console input.
func Parse(s string) (Decision, error) {
	var d Decision
	err := d.UnmarshalText([]byte(s))
	return d, err
}

// Counts are accesses (or memoized instructions) by decision.
type Counts struct {
	Local    int `json:"local"`
	Redirect int `json:"redirect"`
	// Both counts memoized instructions only: each access is decided one way.
	Both    int `json:"both"`
	Unknown int `json:"unknown"`
}

// Add counts n more with decision d. Invalid is not counted: nothing decided carries it.
func (c *Counts) Add(d Decision, n int) {
	switch d {
	case Local:
		c.Local += n
	case Redirect:
		c.Redirect += n
	case Both:
		c.Both += n
	case Unknown:
		c.Unknown += n
	}
}

// Minus is what c counted beyond o, for the work done between two readings.
func (c Counts) Minus(o Counts) Counts {
	return Counts{Local: c.Local - o.Local, Redirect: c.Redirect - o.Redirect, Both: c.Both - o.Both, Unknown: c.Unknown - o.Unknown}
}
